//! What the retry layer did, as put in the response's extensions.

use std::fmt;
use std::time::Duration;

use tower::BoxError;

use crate::policy::RetryReason;

/// One retry: why, and how long the layer waited before it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryEvent {
    /// What the previous attempt produced.
    pub reason: RetryReason,
    /// The wait before this retry (backoff or `Retry-After`).
    pub delay: Duration,
    /// Whether the wait came from the server's `Retry-After`.
    pub from_retry_after: bool,
}

/// Why the layer stopped retrying although the last attempt was retryable.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Stopped {
    /// The maximum number of retries was reached.
    MaxRetries,
    /// The retry budget was spent.
    Budget,
    /// The next wait would have passed the deadline.
    Deadline {
        /// The wait the next attempt needed.
        wait: Duration,
    },
    /// The request's body streamed (larger than
    /// [`max_replay_body`](crate::RetryLayer::max_replay_body), or of
    /// unknown size), so it could not be sent again: the request was sent
    /// once.
    BodyNotReplayable,
    /// The server asked to wait longer than the configured cap.
    RetryAfterTooLong {
        /// What the server asked for.
        requested: Duration,
        /// The cap.
        cap: Duration,
    },
}

impl fmt::Display for Stopped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stopped::MaxRetries => f.write_str("the maximum number of retries was reached"),
            Stopped::Budget => f.write_str("the retry budget is spent"),
            Stopped::BodyNotReplayable => {
                f.write_str("the request body streamed and cannot be sent again")
            }
            Stopped::Deadline { wait } => {
                write!(f, "waiting {wait:?} more would pass the deadline")
            }
            Stopped::RetryAfterTooLong { requested, cap } => write!(
                f,
                "the server asked to retry after {requested:?}, longer than the cap of {cap:?}"
            ),
        }
    }
}

/// The retry layer's record of one call, in the final response's
/// extensions (and in [`RetryError`] when the call ends in an error).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RetryRecord {
    /// Attempts made, the first included.
    pub attempts: u32,
    /// Each retry, in order.
    pub retries: Vec<RetryEvent>,
    /// Set when a retryable outcome was returned without retrying.
    pub stopped: Option<Stopped>,
}

/// The error of a call that was retried at least once and still failed.
///
/// Its [`source`](std::error::Error::source) is the last attempt's error,
/// so code walking the chain (to find a timeout, a connect error) still
/// finds it.
#[derive(Debug)]
pub struct RetryError {
    /// What the layer did.
    pub record: RetryRecord,
    source: BoxError,
}

impl RetryError {
    pub(crate) fn new(record: RetryRecord, source: BoxError) -> Self {
        RetryError { record, source }
    }

    /// The last attempt's error.
    pub fn last_error(&self) -> &BoxError {
        &self.source
    }
}

impl fmt::Display for RetryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "failed after {} attempts", self.record.attempts)?;
        if let Some(stopped) = &self.record.stopped {
            write!(f, " ({stopped})")?;
        }
        Ok(())
    }
}

impl std::error::Error for RetryError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}
