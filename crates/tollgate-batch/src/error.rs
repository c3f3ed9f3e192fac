//! What a caller of a batched call can get instead of its item.

use std::fmt;
use std::time::Duration;

/// Why a single-item call through [`Batch`](crate::Batch) got no item.
#[derive(Clone, thiserror::Error)]
#[non_exhaustive]
pub enum BatchError {
    /// The batched call succeeded but its answer had no item for this key.
    /// Only this caller gets it; the others in the batch get their items.
    #[error("batch: the batched answer has no item for this key")]
    Missing,
    /// The batched call failed; every caller in the batch gets this, with
    /// the call's error as the source.
    #[error("batch: the batched call failed")]
    Failed(#[source] SharedError),
    /// The batcher was shut down (its runtime stopped) before answering,
    /// or the call was made outside a tokio runtime.
    #[error("batch: the batcher stopped before answering")]
    Closed,
    /// [`max_pending`](crate::BatchLayer::max_pending) callers were
    /// already waiting for their batch to be sent: this call was refused at
    /// once, and nothing was asked for it. Named as the concurrency pool's
    /// `TooManyPending` is.
    #[error("batch: too many callers waiting for a batch (limit {max_pending})")]
    TooManyPending {
        /// The limit that was reached.
        max_pending: usize,
    },
    /// The caller had no answer within
    /// [`max_wait`](crate::BatchLayer::max_wait) of its call. It left its
    /// batch: its key is not asked for if no other caller wants it.
    #[error("batch: no answer within {waited:?}")]
    TimedOut {
        /// How long the caller waited.
        waited: Duration,
    },
}

impl fmt::Debug for BatchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BatchError::Missing => f.write_str("Missing"),
            BatchError::Failed(e) => f.debug_tuple("Failed").field(e).finish(),
            BatchError::Closed => f.write_str("Closed"),
            BatchError::TooManyPending { max_pending } => f
                .debug_struct("TooManyPending")
                .field("max_pending", max_pending)
                .finish(),
            BatchError::TimedOut { waited } => {
                f.debug_struct("TimedOut").field("waited", waited).finish()
            }
        }
    }
}

/// The batched call's error, shared by every caller of the batch: one type
/// for the whole workspace, kept here at its old path.
pub use tollgate_core::SharedError;
