//! Errors of requests that needed a token.

use std::time::Duration;

/// Why a request got no credential: its token could not be refreshed.
///
/// Every request that waited for one refresh gets a clone of its error, so
/// a failing token endpoint is asked once, not once per request; requests
/// that come during the back-off after it get the same error at once.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// The token source failed; the source's error is kept.
    #[error("auth: token refresh failed")]
    RefreshFailed(#[source] SharedError),
    /// The token source did not answer in time.
    #[error("auth: token refresh timed out after {0:?}")]
    RefreshTimedOut(Duration),
}

/// The error shared by the requests that waited on one refresh: one type
/// for the whole workspace, kept here at its old path.
pub use tollgate_core::SharedError;
