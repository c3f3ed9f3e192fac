//! [`RateLimit`].

use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use tower::{BoxError, Service};

use super::future::ResponseFuture;
use super::layer::{KeyInput, RateLimitLayer, Shared};
use crate::error::{QueueFull, RateLimited, WaitTooLong};

/// Rate limits the inner service; made by [`RateLimitLayer`].
///
/// # Clone
///
/// Clones share one limiter: two clones never get twice the rate.
#[derive(Clone)]
pub struct RateLimit<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S: fmt::Debug> fmt::Debug for RateLimit<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimit")
            .field("inner", &self.inner)
            .field("quota", &self.shared.quota)
            .finish_non_exhaustive()
    }
}

impl<S> RateLimit<S> {
    /// Wraps `inner` with the layer's limiter.
    pub fn new(inner: S, layer: RateLimitLayer) -> Self {
        RateLimit {
            inner,
            shared: layer.shared,
        }
    }

    /// A layer for `quota` ([`RateLimitLayer::new`]).
    pub fn layer(quota: crate::Quota) -> RateLimitLayer {
        RateLimitLayer::new(quota)
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, B, ResB> Service<Request<B>> for RateLimit<S>
where
    S: Service<Request<B>, Response = Response<ResB>> + Clone,
    S::Error: Into<BoxError>,
{
    type Response = Response<ResB>;
    type Error = BoxError;
    type Future = ResponseFuture<S, Request<B>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let shared = Arc::clone(&self.shared);
        let key = match &shared.key {
            Some(key) => (key.0)(&KeyInput {
                method: req.method(),
                uri: req.uri(),
                headers: req.headers(),
                extensions: req.extensions(),
            })
            .unwrap_or_default(),
            None => String::new(),
        };
        let now = shared.now();
        let mut latest = if shared.reject {
            now
        } else {
            shared.max_wait.map_or(u64::MAX, |w| {
                now.saturating_add(u64::try_from(w.as_nanos()).unwrap_or(u64::MAX))
            })
        };
        // The call's deadline, when an outer layer set one: a permit beyond
        // it is refused now rather than waited for until the deadline cuts
        // the call off.
        if let Some(deadline) = req.extensions().get::<tollgate_retry::Deadline>() {
            latest = latest.min(shared.nanos_at(deadline.0));
        }
        let reservation = match shared.store.reserve(&key, now, latest) {
            Ok(r) => r,
            Err(at) => {
                let needed = Duration::from_nanos(at - now);
                let allowed = Duration::from_nanos(latest.saturating_sub(now));
                let error: BoxError = if shared.reject {
                    Box::new(RateLimited {
                        retry_after: needed,
                    })
                } else {
                    Box::new(WaitTooLong {
                        needed,
                        max: allowed,
                    })
                };
                return ResponseFuture::failed(error);
            }
        };
        if reservation.at <= now {
            // A permit now: go with the service the caller polled ready.
            let clone = self.inner.clone();
            let mut ready = std::mem::replace(&mut self.inner, clone);
            return ResponseFuture::calling(ready.call(req), shared, key, Duration::ZERO);
        }
        let before = shared.waiting.fetch_add(1, Ordering::AcqRel);
        if let Some(max) = shared.max_queue {
            if before >= max {
                shared.waiting.fetch_sub(1, Ordering::AcqRel);
                shared.store.cancel(&key, reservation);
                return ResponseFuture::failed(Box::new(QueueFull { max_queue: max }));
            }
        }
        // Wait in the response future with a fresh clone, polled ready only
        // once the permit's time has come.
        ResponseFuture::waiting(shared, key, reservation, self.inner.clone(), req)
    }
}
