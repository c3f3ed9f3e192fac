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
