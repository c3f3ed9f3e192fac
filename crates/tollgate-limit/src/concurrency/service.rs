//! [`ConcurrencyLimit`].

use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower::{BoxError, Service};

use super::future::ResponseFuture;
use super::layer::{ConcurrencyLimitLayer, Pool};
use crate::error::PoolQueueFull;

/// Bounds the requests in flight through the inner service; made by
/// [`ConcurrencyLimitLayer`].
///
/// # Clone
///
/// Clones share one pool: two clones of a service limited to 4 run at most 4
/// requests between them.
#[derive(Clone)]
pub struct ConcurrencyLimit<S> {
    inner: S,
    pool: Arc<Pool>,
}

impl<S: fmt::Debug> fmt::Debug for ConcurrencyLimit<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConcurrencyLimit")
            .field("inner", &self.inner)
            .field("max_in_flight", &self.pool.max_in_flight)
            .finish_non_exhaustive()
    }
}

impl<S> ConcurrencyLimit<S> {
    /// Wraps `inner` in the layer's pool.
    pub fn new(inner: S, layer: ConcurrencyLimitLayer) -> Self {
        ConcurrencyLimit {
            inner,
            pool: layer.pool,
        }
    }

    /// A layer allowing `max_in_flight` requests at once.
    pub fn layer(max_in_flight: usize) -> ConcurrencyLimitLayer {
        ConcurrencyLimitLayer::new(max_in_flight)
    }

    tollgate_core::inner_accessors!();
}

impl<S, B, ResB> Service<Request<B>> for ConcurrencyLimit<S>
where
    S: Service<Request<B>, Response = Response<ResB>> + Clone,
    S::Error: Into<BoxError>,
{
    type Response = Response<super::PermitBody<ResB>>;
    type Error = BoxError;
    type Future = ResponseFuture<S, Request<B>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let pool = &self.pool;
        // A free slot: go now, with the service the caller polled ready.
        if let Ok(permit) = Arc::clone(&pool.semaphore).try_acquire_owned() {
            let clone = self.inner.clone();
            let mut ready = std::mem::replace(&mut self.inner, clone);
            return ResponseFuture::calling(ready.call(req), permit);
        }
        // Otherwise queue, if the queue has room. The service that was polled
        // ready stays here for the next call; the waiter takes a fresh clone
        // and polls it ready once it holds a slot, so it reserves nothing
        // below while it waits.
        let before = pool.waiting.fetch_add(1, Ordering::AcqRel);
        if let Some(max) = pool.max_queue {
            if before >= max {
                pool.waiting.fetch_sub(1, Ordering::AcqRel);
                return ResponseFuture::failed(Box::new(PoolQueueFull { max_queue: max }));
            }
        }
        ResponseFuture::waiting(Arc::clone(pool), self.inner.clone(), req)
    }
}
