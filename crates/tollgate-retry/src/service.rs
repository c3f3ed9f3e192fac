//! The [`Retry`] service.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderValue, Request, Response};
use http_body::Body;
use tokio::time::Instant;
use tower::{BoxError, Service};

use crate::future::ResponseFuture;
use crate::layer::{Config, RetryLayer, IDEMPOTENCY_KEY};
use tollgate_core::Deadline;
use tollgate_core::{try_clone_request, ReplayableBody};

/// Retries failed attempts of the inner service; made by [`RetryLayer`].
///
/// It takes requests with any body `B` (`Full<Bytes>`, `String`, axum's
/// `Body`, hyper's `Incoming`, ...) and hands its inner service
/// `Request<`[`ReplayableBody`]`>`: the same body, buffered when it can be
/// replayed, streaming (and then sent once) when it cannot. See the
/// [crate docs](crate#bodies).
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

    tollgate_core::inner_accessors!();
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
    S: Service<Request<ReplayableBody>, Response = Response<ResB>> + Clone,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<ResB>;
    type Error = BoxError;
    type Future = ResponseFuture<S>;

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
        let method = req.method().clone();
        // The service that was polled ready takes this call; a fresh clone
        // stays behind for the caller's next poll_ready.
        let clone = self.inner.clone();
        let mut ready = std::mem::replace(&mut self.inner, clone);
        let (parts, body) = req.into_parts();
        let mut buffering = ReplayableBody::buffer(body, config.max_replay_body);
        // A body already in memory (or ended, or streamed) is ready at once:
        // the first attempt is made now, as without a body to read.
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match std::pin::Pin::new(&mut buffering).poll(&mut cx) {
            Poll::Ready(Ok(body)) => {
                let req = Request::from_parts(parts, body);
                // None for a streaming body: its request is sent once.
                let replay = try_clone_request(&req);
                let future = ready.call(req);
                ResponseFuture::new(future, ready, replay, method, config, deadline)
            }
            Poll::Ready(Err(e)) => ResponseFuture::failed(e, ready, method, config),
            // Read it inside the future, then call the service polled ready.
            Poll::Pending => {
                ResponseFuture::buffering(parts, buffering, ready, method, config, deadline)
            }
        }
    }
}
