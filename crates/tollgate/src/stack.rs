//! The facade's stack: every layer a call passes, top to bottom, built in
//! this one file in the order `docs/ARCHITECTURE.md` draws it.
//!
//! ```text
//!  1 trace span        `call` below: one `http.request` span per call
//!  2 total timeout     `call` below: one deadline over every attempt, every
//!                      wait and the body read (handed down as `Deadline`)
//!  3 cache             `Layers::cache`; its fast path, `Stack::cache_fast_path`,
//!                      answers a fresh hit before the service is entered
//!  4 redirects         `Layers::redirect`: each hop a new request through
//!                      everything below (tower-http's follow-redirect)
//!  5 retry             `Layers::retry`, with each attempt's body read whole
//!                      just below it (`buffer::Buffer`; a streaming call's
//!                      body passes unread, `call_streaming`)
//!  6 (circuit breaker) a slot: joins with its own issue
//!  7 rate limit        `Layers::rate_limit`
//!  - users' layers     `Layers::user` (`ClientBuilder::layer`): each
//!                      attempt, before a credential is put on it
//!  8 auth              `Layers::auth`
//!  9 attempt timeout   `Layers::attempt_timeout`
//! 10 concurrency pool  `Layers::concurrency`
//! 10b decompression    `Layers::decompression` (features `gzip`, `deflate`,
//!                      `brotli`, `zstd`): sends `Accept-Encoding`, decodes
//!                      the body, so every limit above counts decoded bytes
//! 11 transport         hyper-util (`transport.rs`) or `ClientBuilder::transport`
//! ```
//!
//! Wiring a new layer: a field in [`Layers`], one line in [`Layers::build`]
//! at its position, and the builder method that sets the field.
//!
//! A layer that is off is absent, not a no-op: each layer that is on is one
//! stage, boxed over the stages below it, and one that is off leaves no
//! stage. There is no branch per combination, and a call passes only the
//! layers switched on: the default client is the transport boxed once. The
//! price is one box per layer that is on. Measured against the branches
//! this replaced (one concrete type per combination of the layers that
//! change the body type, tower's `option_layer` for the others, boxed once),
//! with `scripts/bench-instructions`, in instructions per request at
//! concurrency 1: the default client 39,998 before and 39,159 after, with
//! retry 45,765 and 45,049, a cache miss 75,550 and 74,057 (absent layers no
//! longer cost a wrapper each); an `Either` per position that stayed in the
//! call's type when off cost ~1,500 more instead.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body as HttpBody;
use http_body_util::BodyExt;
use tokio::time::Instant;
use tower::util::BoxCloneSyncService;
use tower::{BoxError, Layer, Service, ServiceExt};
use tracing::Instrument;

use crate::error::{classify, Error, ErrorKind, TimedOut};
use crate::transport::{RequestBody, ResponseBody};

/// The type-erased service the facade sends requests through.
pub(crate) type Boxed = BoxCloneSyncService<Request<RequestBody>, Response<ResponseBody>, BoxError>;

/// The service a layer given to
/// [`ClientBuilder::layer`](crate::ClientBuilder::layer) wraps: the rest of
/// one attempt's way down, the concurrency pool and the transport. It takes
/// the facade's request body ([`RequestBody`], whole in memory or streamed
/// once) and
/// answers with its response body ([`ResponseBody`]).
pub type AttemptService = Boxed;

/// A layer given to `ClientBuilder::layer`, type-erased.
pub(crate) type UserLayer = Arc<dyn Fn(AttemptService) -> AttemptService + Send + Sync>;

/// The layers of a feature that is off: a type with no values, so a
/// position's field is always `None` and the stack is written once for
/// every set of features.
#[derive(Clone, Debug)]
#[allow(dead_code, reason = "used only with some features off")]
pub(crate) enum FeatureOff {}

impl<S> Layer<S> for FeatureOff {
    type Service = S;

    fn layer(&self, _: S) -> S {
        match *self {}
    }
}

#[cfg(feature = "cache")]
type CacheLayer = tollgate_cache::CacheLayer;
#[cfg(not(feature = "cache"))]
type CacheLayer = FeatureOff;
#[cfg(feature = "redirect")]
pub(crate) type RedirectLayer = crate::redirect::RedirectLayer;
#[cfg(not(feature = "redirect"))]
pub(crate) type RedirectLayer = FeatureOff;
#[cfg(any(
    feature = "gzip",
    feature = "deflate",
    feature = "brotli",
    feature = "zstd"
))]
pub(crate) type DecompressionLayer = crate::decode::DecompressionLayer;
#[cfg(not(any(
    feature = "gzip",
    feature = "deflate",
    feature = "brotli",
    feature = "zstd"
)))]
pub(crate) type DecompressionLayer = FeatureOff;
#[cfg(feature = "retry")]
type RetryLayer = tollgate_retry::RetryLayer;
#[cfg(not(feature = "retry"))]
type RetryLayer = FeatureOff;
#[cfg(feature = "limit")]
type RateLimitLayer = tollgate_limit::RateLimitLayer;
#[cfg(not(feature = "limit"))]
type RateLimitLayer = FeatureOff;
#[cfg(feature = "auth")]
type AuthLayer = tollgate_auth::AuthLayer;
#[cfg(not(feature = "auth"))]
type AuthLayer = FeatureOff;
#[cfg(feature = "limit")]
type ConcurrencyLimitLayer = tollgate_limit::ConcurrencyLimitLayer;
#[cfg(not(feature = "limit"))]
type ConcurrencyLimitLayer = FeatureOff;

/// The layers a builder switched on, one field per position, `None` when
/// off. [`build`](Layers::build) stacks them.
#[derive(Clone, Default)]
pub(crate) struct Layers {
    pub(crate) cache: Option<CacheLayer>,
    pub(crate) redirect: Option<RedirectLayer>,
    pub(crate) retry: Option<RetryLayer>,
    pub(crate) rate_limit: Option<RateLimitLayer>,
    pub(crate) auth: Option<AuthLayer>,
    pub(crate) attempt_timeout: Option<Duration>,
    /// First added, outermost.
    pub(crate) user: Vec<UserLayer>,
    pub(crate) concurrency: Option<ConcurrencyLimitLayer>,
    pub(crate) decompression: Option<DecompressionLayer>,
}

/// The built stack: the service (3 to 11, a boxed stage per layer that is
/// on), the cache's fast path, and what the layers want from the call above
/// them.
pub(crate) struct Stack {
    service: Boxed,
    /// Layer 3, to answer a fresh hit before the service is entered.
    #[cfg(feature = "cache")]
    fast_path: Option<tollgate_cache::CacheLayer>,
    /// Whether a layer wants the call's deadline as a `Deadline` request
    /// extension: retry starts no retry past it, the rate limiter grants no
    /// permit beyond it.
    pub(crate) wants_deadline: bool,
    /// Whether an auth layer is in the stack (it applies a request's own
    /// credential; without one, the request builder does).
    pub(crate) has_auth: bool,
}

impl Layers {
    /// Stacks the layers over `transport`, top to bottom; 1 and 2 are
    /// [`call`], around it.
    pub(crate) fn build<T, B>(self, transport: T, max_body: usize) -> Stack
    where
        T: Service<Request<RequestBody>, Response = Response<B>> + Clone + Send + Sync + 'static,
        T::Error: Into<BoxError>,
        T::Future: Send + 'static,
        B: HttpBody<Data = Bytes, Error: Into<BoxError>> + Send + 'static,
    {
        let wants_deadline = self.retry.is_some() || self.rate_limit.is_some();
        let has_auth = self.auth.is_some();
        #[cfg(feature = "cache")]
        let fast_path = self.cache.clone();
        // Top to bottom, one line per position; a layer that is off leaves
        // no stage. 1 (trace span) and 2 (total timeout) are `call`, around
        // the result.
        let redirects_decided = decides_every_redirect(self.redirect.as_ref());
        let mut stages: Vec<Option<Stage>> = Vec::with_capacity(8);
        // 3 cache
        stages.push(stage(self.cache));
        // 4 redirects: above retry, so each hop is a new request through
        //   everything below (a permit each, auth's origin check each).
        stages.push(stage(self.redirect));
        // 5 retry, over the body buffer
        stages.push(stage(self.retry.map(|retry| RetryStage {
            retry,
            max_body,
            redirects_decided,
        })));
        // 6 circuit breaker: joins here, below retry (an open circuit is final
        //   to it) and above the rate limiter (refusing spends no permit).
        // 7 rate limit
        stages.push(stage(self.rate_limit));
        // users' layers (`ClientBuilder::layer`), first added outermost:
        //   above auth, so that a layer never sees a credential, and auth's
        //   origin check sees whatever URI a layer leaves.
        stages.extend(self.user.into_iter().map(user_stage));
        // 8 auth
        stages.push(stage(self.auth));
        // 9 attempt timeout
        let attempt_timeout = self.attempt_timeout.map(crate::buffer::AttemptTimeoutLayer);
        stages.push(stage(attempt_timeout));
        // 10 concurrency pool
        stages.push(stage(self.concurrency));
        // 10b decompression: just above the transport, so the body every
        //   layer above reads (the retry buffer, the cache, the call's body
        //   limit) is the decoded one: a decompression bomb meets the limit.
        stages.push(stage(self.decompression));
        // 11 transport, at the bottom
        let service = stages
            .into_iter()
            .flatten()
            .rev()
            .fold(boxed(transport), |inner, stage| stage(inner));
        Stack {
            service,
            #[cfg(feature = "cache")]
            fast_path,
            wants_deadline,
            has_auth,
        }
    }
}

impl Stack {
    /// Layer 3's fast path: a fresh response in the client's cache, answered
    /// without entering the service, by the cache layer's own key, identity
    /// and freshness rules (see `CacheLayer::answer`).
    #[cfg(feature = "cache")]
    pub(crate) fn cache_fast_path(
        &self,
        request: &mut Request<RequestBody>,
    ) -> Option<Response<Bytes>> {
        self.fast_path.as_ref()?.answer(request)
    }

    /// A handle on the service, for one call.
    pub(crate) fn service(&self) -> Boxed {
        self.service.clone()
    }
}

/// Layers 1 and 2 around the service: the call's span (entered on every
/// poll) and its total deadline, which bounds the exchange and the body read
/// that follows it, whole and at most `max_body` bytes.
///
/// A plain function, not an `async fn`: the request moves into the boxed
/// exchange at once, so the caller's future does not keep room for it.
pub(crate) fn call(
    service: Boxed,
    request: Request<RequestBody>,
    max_body: usize,
    deadline: Option<Duration>,
    started: Instant,
    span: tracing::Span,
    log_bodies: Option<std::num::NonZeroUsize>,
) -> impl Future<Output = Result<(http::response::Parts, Bytes), Error>> {
    let exchange = Box::pin(async move {
        let response = service.oneshot(request).await.map_err(classify)?;
        let (parts, body) = response.into_parts();
        let bytes = read_body(body, max_body)
            .await
            .map_err(|e| e.with_status(parts.status))?;
        // `ClientBuilder::log_bodies`: the body as read, in the call's span.
        if let Some(max) = log_bodies {
            let content_type = parts.headers.get(http::header::CONTENT_TYPE);
            crate::observe::log_body("response body", &bytes, content_type, max);
        }
        Ok::<_, Error>((parts, bytes))
    });
    // A deadline too far away for an `Instant` (`Duration::MAX`) is no
    // deadline.
    let total = match deadline.and_then(|d| Some((d, started.checked_add(d)?))) {
        Some((d, at)) => TotalTimeout::Bounded {
            inner: tokio::time::timeout_at(at, exchange),
            d,
        },
        None => TotalTimeout::Unbounded { inner: exchange },
    };
    total.instrument(span)
}

/// Layers 1 and 2 around the service for a streaming call: as [`call`], but
/// the deadline bounds the head only, and the body is handed back unread
/// (the caller's `StreamingResponse` keeps the deadline over its reading).
pub(crate) fn call_streaming(
    service: Boxed,
    request: Request<RequestBody>,
    deadline: Option<Duration>,
    started: Instant,
    span: tracing::Span,
) -> impl Future<Output = Result<Response<ResponseBody>, Error>> {
    let exchange = Box::pin(async move { service.oneshot(request).await.map_err(classify) });
    let total = match deadline.and_then(|d| Some((d, started.checked_add(d)?))) {
        Some((d, at)) => TotalTimeout::Bounded {
            inner: tokio::time::timeout_at(at, exchange),
            d,
        },
        None => TotalTimeout::Unbounded { inner: exchange },
    };
    total.instrument(span)
}

pin_project_lite::pin_project! {
    /// Layer 2 over the exchange: its total deadline, if any.
    #[project = TotalTimeoutProj]
    enum TotalTimeout<F> {
        Bounded { #[pin] inner: tokio::time::Timeout<F>, d: Duration },
        Unbounded { #[pin] inner: F },
    }
}

impl<F, T> Future for TotalTimeout<F>
where
    F: Future<Output = Result<T, Error>>,
{
    type Output = Result<T, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            TotalTimeoutProj::Bounded { inner, d } => {
                Poll::Ready(ready!(inner.poll(cx)).unwrap_or_else(|_| {
                    Err(Error::new(
                        ErrorKind::Timeout,
                        format!("no complete response within {d:?}"),
                    )
                    .with_source(TimedOut))
                }))
            }
            TotalTimeoutProj::Unbounded { inner } => inner.poll(cx),
        }
    }
}

/// Reads a body into memory, at most `max` bytes (see
/// [`collect`](crate::buffer::collect)).
async fn read_body(body: ResponseBody, max: usize) -> Result<Bytes, Error> {
    crate::buffer::collect(body, max)
        .await
        .map_err(|e| match e {
            crate::buffer::ReadError::TooLarge => Error::new(
                ErrorKind::BodyTooLarge,
                format!("the body exceeds the limit of {max} bytes"),
            ),
            crate::buffer::ReadError::Failed(e) => crate::error::body_error(e),
        })
}

/// Layer 5: retry over the body buffer, which reads each attempt's body
/// whole, so that a body cut after the headers is retried (for the methods
/// retry allows) before the caller has seen anything.
#[derive(Clone)]
struct RetryStage {
    retry: RetryLayer,
    /// The redirect layer above follows or refuses every followable
    /// redirect (see `buffer`'s docs).
    #[cfg_attr(not(feature = "retry"), allow(dead_code))]
    redirects_decided: bool,
    #[cfg_attr(not(feature = "retry"), allow(dead_code))]
    max_body: usize,
}

#[cfg(feature = "retry")]
impl<S> Layer<S> for RetryStage {
    type Service = tollgate_retry::Retry<crate::buffer::Buffer<S>>;

    fn layer(&self, inner: S) -> Self::Service {
        self.retry.layer(crate::buffer::Buffer::new(
            inner,
            self.max_body,
            self.redirects_decided,
        ))
    }
}

#[cfg(not(feature = "retry"))]
impl<S> Layer<S> for RetryStage {
    type Service = S;

    fn layer(&self, _: S) -> S {
        match self.retry {}
    }
}

/// Whether the redirect layer, if any, follows or refuses every followable
/// redirect (the retry buffer then leaves their bodies unread).
fn decides_every_redirect(layer: Option<&RedirectLayer>) -> bool {
    #[cfg(feature = "redirect")]
    return layer.is_some_and(RedirectLayer::decides_every_redirect);
    #[cfg(not(feature = "redirect"))]
    return layer.is_some_and(|off| match *off {});
}

/// One position of the stack, type-erased: its layer over the rest, boxed.
type Stage = Box<dyn FnOnce(Boxed) -> Boxed>;

/// The stage of a layer given to `ClientBuilder::layer`.
#[allow(clippy::unnecessary_wraps, reason = "a stage like the others")]
fn user_stage(layer: UserLayer) -> Option<Stage> {
    Some(Box::new(move |inner| layer(inner)))
}

/// The stage of a layer that is on; nothing for one that is off.
fn stage<L, B>(layer: Option<L>) -> Option<Stage>
where
    L: Layer<Boxed> + 'static,
    L::Service:
        Service<Request<RequestBody>, Response = Response<B>> + Clone + Send + Sync + 'static,
    <L::Service as Service<Request<RequestBody>>>::Error: Into<BoxError>,
    <L::Service as Service<Request<RequestBody>>>::Future: Send + 'static,
    B: HttpBody<Data = Bytes, Error: Into<BoxError>> + Send + 'static,
{
    let layer = layer?;
    Some(Box::new(move |inner| boxed(layer.layer(inner))))
}

/// Erases a service (and its body type) into a [`Boxed`] one.
pub(crate) fn boxed<S, B>(service: S) -> Boxed
where
    S: Service<Request<RequestBody>, Response = Response<B>> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    B: HttpBody<Data = Bytes, Error: Into<BoxError>> + Send + 'static,
{
    BoxCloneSyncService::new(Erase(service))
}

/// Boxes the response body and the error in one step: one future adapter on
/// every call instead of tower's `map_response` and `map_err` chained.
#[derive(Clone)]
struct Erase<S>(S);

impl<S, B> Service<Request<RequestBody>> for Erase<S>
where
    S: Service<Request<RequestBody>, Response = Response<B>>,
    S::Error: Into<BoxError>,
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody>;
    type Error = BoxError;
    type Future = EraseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.0.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<RequestBody>) -> Self::Future {
        EraseFuture {
            inner: self.0.call(req),
        }
    }
}

pin_project_lite::pin_project! {
    struct EraseFuture<F> {
        #[pin]
        inner: F,
    }
}

impl<F, B, E> Future for EraseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Output = Result<Response<ResponseBody>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().inner.poll(cx) {
            Poll::Ready(Ok(res)) => {
                Poll::Ready(Ok(res.map(|b| b.map_err(Into::into).boxed_unsync())))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e.into())),
            Poll::Pending => Poll::Pending,
        }
    }
}
