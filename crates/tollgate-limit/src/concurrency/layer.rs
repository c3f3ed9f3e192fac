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
    pub(crate) max_queue: Option<usize>,
    pub(crate) queue_timeout: Option<Duration>,
    pub(crate) waiting: AtomicUsize,
}

impl fmt::Debug for ConcurrencyLimitLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = &*self.pool;
        f.debug_struct("ConcurrencyLimitLayer")
            .field("max_in_flight", &p.max_in_flight)
            .field("max_queue", &p.max_queue)
            .field("queue_timeout", &p.queue_timeout)
            .field("available", &p.semaphore.available_permits())
            .finish()
    }
}

impl ConcurrencyLimitLayer {
    /// At most `max_in_flight` requests at once; the queue is unbounded and
    /// waits have no limit until [`max_queue`](Self::max_queue) and
    /// [`queue_timeout`](Self::queue_timeout) say otherwise.
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
                max_queue: None,
                queue_timeout: None,
                waiting: AtomicUsize::new(0),
            }),
        }
    }

    fn with(self, f: impl FnOnce(&mut Pool)) -> Self {
        let p = &*self.pool;
        let mut pool = Pool {
            semaphore: Arc::clone(&p.semaphore),
            max_in_flight: p.max_in_flight,
            max_queue: p.max_queue,
            queue_timeout: p.queue_timeout,
            waiting: AtomicUsize::new(0),
        };
        f(&mut pool);
        ConcurrencyLimitLayer {
            pool: Arc::new(pool),
        }
    }

    /// At most `max` calls wait for a slot; more fail at once with
    /// [`PoolQueueFull`](crate::concurrency::PoolQueueFull). Zero means
    /// never wait. Named as [`RateLimitLayer::max_queue`](crate::RateLimitLayer::max_queue)
    /// is: the same idea, how many callers may wait.
    pub fn max_queue(self, max: usize) -> Self {
        self.with(|p| p.max_queue = Some(max))
    }

    /// A call that waited this long without a slot fails with
    /// [`PoolQueueTimeout`](crate::concurrency::PoolQueueTimeout).
    pub fn queue_timeout(self, timeout: Duration) -> Self {
        self.with(|p| p.queue_timeout = Some(timeout))
    }

    /// Slots free right now.
    pub fn available(&self) -> usize {
        self.pool.semaphore.available_permits()
    }

    /// Calls waiting for a slot right now (as
    /// [`RateLimitLayer::waiting`](crate::RateLimitLayer::waiting) counts
    /// the callers waiting for a permit).
    pub fn waiting(&self) -> usize {
        self.pool.waiting.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The old name of [`max_queue`](Self::max_queue).
    #[deprecated(
        since = "0.1.0",
        note = "renamed `max_queue`, as the rate limiter says"
    )]
    pub fn max_pending(self, max: usize) -> Self {
        self.max_queue(max)
    }

    /// The old name of [`queue_timeout`](Self::queue_timeout).
    #[deprecated(since = "0.1.0", note = "renamed `queue_timeout`")]
    pub fn pending_timeout(self, timeout: Duration) -> Self {
        self.queue_timeout(timeout)
    }

    /// The old name of [`waiting`](Self::waiting).
    #[deprecated(since = "0.1.0", note = "renamed `waiting`, as the rate limiter says")]
    pub fn pending(&self) -> usize {
        self.waiting()
    }
}

impl<S> Layer<S> for ConcurrencyLimitLayer {
    type Service = ConcurrencyLimit<S>;

    fn layer(&self, inner: S) -> ConcurrencyLimit<S> {
        ConcurrencyLimit::new(inner, self.clone())
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::time::Duration;

    use http::{Request, Response};
    use tower::{service_fn, Service, ServiceExt};

    use super::ConcurrencyLimitLayer;
    use crate::concurrency::{PoolQueueFull, PoolQueueTimeout};

    fn slow_pool(
        layer: &ConcurrencyLimitLayer,
    ) -> impl Service<
        Request<()>,
        Response = Response<crate::PermitBody<()>>,
        Error = tower::BoxError,
        Future: Send,
    > + Clone
           + Send
           + 'static {
        tower::Layer::layer(
            layer,
            service_fn(|_req: Request<()>| async {
                tokio::time::sleep(Duration::from_secs(1)).await;
                Ok::<_, Infallible>(Response::new(()))
            }),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn max_queue_bounds_the_callers_waiting_for_a_slot() {
        let layer = ConcurrencyLimitLayer::new(1).max_queue(1);
        let pool = slow_pool(&layer);
        let running = tokio::spawn(pool.clone().oneshot(Request::new(())));
        tokio::task::yield_now().await;
        let queued = tokio::spawn(pool.clone().oneshot(Request::new(())));
        tokio::task::yield_now().await;
        assert_eq!(layer.waiting(), 1);
        let refused = pool
            .clone()
            .oneshot(Request::new(()))
            .await
            .expect_err("refused");
        assert_eq!(
            refused.downcast_ref::<PoolQueueFull>().map(|e| e.max_queue),
            Some(1)
        );
        assert!(running.await.is_ok_and(|r| r.is_ok()));
        assert!(queued.await.is_ok_and(|r| r.is_ok()));
        assert_eq!(layer.waiting(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn queue_timeout_bounds_a_callers_wait_for_a_slot() {
        let layer = ConcurrencyLimitLayer::new(1).queue_timeout(Duration::from_millis(250));
        let pool = slow_pool(&layer);
        let running = tokio::spawn(pool.clone().oneshot(Request::new(())));
        tokio::task::yield_now().await;
        let err = pool
            .clone()
            .oneshot(Request::new(()))
            .await
            .expect_err("timed out");
        assert_eq!(
            err.downcast_ref::<PoolQueueTimeout>(),
            Some(&PoolQueueTimeout {
                waited: Duration::from_millis(250)
            })
        );
        assert!(running.await.is_ok_and(|r| r.is_ok()));
    }

    #[tokio::test(start_paused = true)]
    #[allow(deprecated, reason = "the old names must keep working")]
    async fn the_old_names_still_configure_the_same_pool() {
        let layer = ConcurrencyLimitLayer::new(1)
            .max_pending(0)
            .pending_timeout(Duration::from_secs(1));
        assert_eq!(layer.pool.max_queue, Some(0));
        assert_eq!(layer.pool.queue_timeout, Some(Duration::from_secs(1)));
        let pool = slow_pool(&layer);
        let running = tokio::spawn(pool.clone().oneshot(Request::new(())));
        tokio::task::yield_now().await;
        assert_eq!(layer.pending(), 0);
        let refused = pool
            .clone()
            .oneshot(Request::new(()))
            .await
            .expect_err("refused");
        // The old type names are aliases: a downcast by either finds it.
        assert!(refused.is::<crate::concurrency::TooManyPending>());
        assert!(refused.is::<PoolQueueFull>());
        assert!(running.await.is_ok_and(|r| r.is_ok()));
        let _: Option<crate::concurrency::PendingTimeout> = None::<PoolQueueTimeout>;
    }
}
