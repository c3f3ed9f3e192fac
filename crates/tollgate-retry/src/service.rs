//! The [`Retry`] service.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderValue, Request, Response};
use tokio::time::Instant;
use tower::{BoxError, Service};

use crate::future::ResponseFuture;
use crate::layer::{Config, RetryLayer, IDEMPOTENCY_KEY};
use tollgate_core::Deadline;
use tollgate_core::{try_clone_request, ReplayBody};

/// Retries failed attempts of the inner service; made by [`RetryLayer`].
///
/// # Clone
///
/// Clones share the layer's retry budget and random source.
#[derive(Clone)]
pub struct Retry<S> {
    inner: S,
    pub(crate) config: Arc<Config>,
}

impl<S: fmt::Debug> fmt::Debug for Retry<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Retry")
            .field("inner", &self.inner)
            .field("max_retries", &self.config.max_retries)
            .finish_non_exhaustive()
    }
}

impl<S> Retry<S> {
    /// Wraps `inner` with the layer's settings.
    pub fn new(inner: S, layer: RetryLayer) -> Self {
        Retry {
            inner,
            config: layer.config,
        }
    }

    /// A layer with the default settings ([`RetryLayer::new`]).
    pub fn layer() -> RetryLayer {
        RetryLayer::new()
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

/// A random idempotency key: 128 bits as 32 hex digits, from the thread's
/// own random source, never from the jitter's (which
/// [`RetryLayer::seed`](crate::RetryLayer::seed) makes predictable: two
/// processes seeded alike would send the same keys, and a server would take
/// one call for the other's replay).
fn idempotency_key() -> HeaderValue {
    let (a, b) = (fastrand::u64(..), fastrand::u64(..));
    match HeaderValue::try_from(format!("{a:016x}{b:016x}")) {
        Ok(v) => v,
        Err(_) => unreachable!("hex digits are a valid header value"),
    }
}

impl<S, B, ResB> Service<Request<B>> for Retry<S>
where
    S: Service<Request<B>, Response = Response<ResB>> + Clone,
    S::Error: Into<BoxError>,
    B: ReplayBody,
{
    type Response = Response<ResB>;
    type Error = BoxError;
    type Future = ResponseFuture<S, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let config = Arc::clone(&self.config);
        if let Some(budget) = &config.budget {
            budget.deposit();
        }
        if config.idempotency_key
            && !crate::policy::IDEMPOTENT_METHODS.contains(req.method())
            && !req.headers().contains_key(IDEMPOTENCY_KEY)
        {
            req.headers_mut().insert(IDEMPOTENCY_KEY, idempotency_key());
        }
        // A total too long for the clock (`Duration::MAX` for "no limit")
        // is no deadline at all.
        let own = config.max_total.and_then(|t| Instant::now().checked_add(t));
        let outer = req.extensions().get::<Deadline>().map(|d| d.0);
        let deadline = match (own, outer) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        // None for a streaming body: such a request is sent exactly once.
        let replay = try_clone_request(&req);
        // The service that was polled ready takes this call; a fresh clone
        // stays behind for the caller's next poll_ready.
        let clone = self.inner.clone();
        let mut ready = std::mem::replace(&mut self.inner, clone);
        let method = req.method().clone();
        let future = ready.call(req);
        ResponseFuture::new(future, ready, replay, method, config, deadline)
    }
}
