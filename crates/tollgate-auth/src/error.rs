//! Errors of requests that needed a token.

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tower::BoxError;

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

/// An error shared by the requests that waited on one refresh.
#[derive(Clone)]
pub struct SharedError(Arc<dyn StdError + Send + Sync>);

impl SharedError {
    pub(crate) fn new(error: BoxError) -> Self {
        SharedError(Arc::from(error))
    }
}

impl fmt::Debug for SharedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for SharedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&*self.0, f)
    }
}

impl StdError for SharedError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.0.source()
    }
}
