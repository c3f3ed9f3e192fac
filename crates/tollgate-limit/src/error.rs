//! The limit layers' errors.

use std::fmt;
use std::time::Duration;

/// The pool's queue is full: the call was refused at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TooManyPending {
    /// The queue limit that was reached.
    pub max_pending: usize,
}

impl fmt::Display for TooManyPending {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "too many requests waiting for the pool (limit {})",
            self.max_pending
        )
    }
}

impl std::error::Error for TooManyPending {}

/// A call waited in the pool's queue longer than allowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PendingTimeout {
    /// How long it waited.
    pub waited: Duration,
}

impl fmt::Display for PendingTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "waited {:?} in the pool's queue without a slot",
            self.waited
        )
    }
}

impl std::error::Error for PendingTimeout {}

/// Over the limit in reject mode: the request was refused at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimited {
    /// When a request would be admitted again.
    pub retry_after: Duration,
}

impl fmt::Display for RateLimited {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rate limited; retry after {:?}", self.retry_after)
    }
}

impl std::error::Error for RateLimited {}

/// The next permit is further away than the allowed wait: refused at once,
/// without waiting first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WaitTooLong {
    /// The wait the next permit needs.
    pub needed: Duration,
    /// The allowed wait.
    pub max: Duration,
}

impl fmt::Display for WaitTooLong {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the next rate-limit permit is {:?} away, over the {:?} allowed",
            self.needed, self.max
        )
    }
}

impl std::error::Error for WaitTooLong {}

/// Too many callers already wait for a permit: refused at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueFull {
    /// The queue limit that was reached.
    pub max_queue: usize,
}

impl fmt::Display for QueueFull {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "too many callers waiting for a rate-limit permit (limit {})",
            self.max_queue
        )
    }
}

impl std::error::Error for QueueFull {}
