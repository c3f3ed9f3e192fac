//! [`ConcurrencyLimitLayer`].

use std::fmt;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tower::Layer;

use super::service::ConcurrencyLimit;

/// Bounds the requests in flight; see the [module docs](super).
#[derive(Clone)]
pub struct ConcurrencyLimitLayer {
    pub(crate) pool: Arc<Pool>,
}

pub(crate) struct Pool {
    pub(crate) semaphore: Arc<Semaphore>,
    pub(crate) max_in_flight: usize,
    pub(crate) max_pending: Option<usize>,
    pub(crate) pending_timeout: Option<Duration>,
    pub(crate) pending: AtomicUsize,
}

impl fmt::Debug for ConcurrencyLimitLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = &*self.pool;
        f.debug_struct("ConcurrencyLimitLayer")
            .field("max_in_flight", &p.max_in_flight)
            .field("max_pending", &p.max_pending)
            .field("pending_timeout", &p.pending_timeout)
            .field("available", &p.semaphore.available_permits())
            .finish()
    }
}

impl ConcurrencyLimitLayer {
    /// At most `max_in_flight` requests at once; the queue is unbounded and
    /// waits have no limit until [`max_pending`](Self::max_pending) and
    /// [`pending_timeout`](Self::pending_timeout) say otherwise.
    ///
    /// The number is clamped, never a panic: 0 (no request could ever run)
    /// is taken as 1, and anything above tokio's semaphore limit
    /// (`usize::MAX >> 3`) as that limit.
    pub fn new(max_in_flight: usize) -> Self {
        let max_in_flight = max_in_flight.clamp(1, Semaphore::MAX_PERMITS);
        ConcurrencyLimitLayer {
            pool: Arc::new(Pool {
                semaphore: Arc::new(Semaphore::new(max_in_flight)),
                max_in_flight,
                max_pending: None,
                pending_timeout: None,
                pending: AtomicUsize::new(0),
            }),
        }
    }

    fn with(self, f: impl FnOnce(&mut Pool)) -> Self {
        let p = &*self.pool;
        let mut pool = Pool {
            semaphore: Arc::clone(&p.semaphore),
            max_in_flight: p.max_in_flight,
            max_pending: p.max_pending,
            pending_timeout: p.pending_timeout,
            pending: AtomicUsize::new(0),
        };
        f(&mut pool);
        ConcurrencyLimitLayer {
            pool: Arc::new(pool),
        }
    }

    /// At most `max` calls wait for a slot; more fail at once with
    /// [`TooManyPending`](crate::TooManyPending). Zero means never wait.
    pub fn max_pending(self, max: usize) -> Self {
        self.with(|p| p.max_pending = Some(max))
    }

    /// A call that waited this long without a slot fails with
    /// [`PendingTimeout`](crate::PendingTimeout).
    pub fn pending_timeout(self, timeout: Duration) -> Self {
        self.with(|p| p.pending_timeout = Some(timeout))
    }

    /// Slots free right now.
    pub fn available(&self) -> usize {
        self.pool.semaphore.available_permits()
    }

    /// Calls waiting for a slot right now.
    pub fn pending(&self) -> usize {
        self.pool.pending.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl<S> Layer<S> for ConcurrencyLimitLayer {
    type Service = ConcurrencyLimit<S>;

    fn layer(&self, inner: S) -> ConcurrencyLimit<S> {
        ConcurrencyLimit::new(inner, self.clone())
    }
}
