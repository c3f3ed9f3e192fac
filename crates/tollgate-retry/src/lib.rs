//! Retry for HTTP clients as a tower layer: [`RetryLayer`].
//!
//! The failure this layer exists to prevent is a client that ignores
//! `Retry-After` and retries aggressively, exhausting the API's quota and
//! taking its callers down with it. So it retries only what is safe to
//! retry, waits as the server asks, and caps how much extra load it can add.
//!
//! ```
//! use std::time::Duration;
//! use http::{Request, Response, StatusCode};
//! use tower::{service_fn, Service, ServiceBuilder, ServiceExt};
//! use tollgate_retry::{ReplayableBody, RetryLayer, RetryRecord};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), tower::BoxError> {
//! // An upstream that fails twice with 503, then answers. Below the retry
//! // layer, every request body is a `ReplayableBody`.
//! let calls = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
//! let counter = calls.clone();
//! let upstream = service_fn(move |_req: Request<ReplayableBody>| {
//!     let n = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
//!     async move {
//!         let status = if n < 2 { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK };
//!         Ok::<_, std::convert::Infallible>(Response::builder().status(status).body(String::new()).unwrap())
//!     }
//! });
//! let mut client = ServiceBuilder::new()
//!     .layer(RetryLayer::new().max_retries(3).seed(7))
//!     .service(upstream);
//!
//! let req = Request::get("/posts/1").body(String::new())?;
//! let res = ServiceExt::<Request<String>>::ready(&mut client).await?.call(req).await?;
//! assert_eq!(res.status(), StatusCode::OK);
//! let record = res.extensions().get::<RetryRecord>().expect("the layer records what it did");
//! assert_eq!(record.attempts, 3);
//! # Ok(()) }
//! ```
//!
//! # What is retried
//!
//! - **Methods**: by default only the idempotent ones (GET, HEAD, OPTIONS,
//!   TRACE, PUT, DELETE; RFC 9110 §9.2.2). POST and PATCH only after
//!   [`RetryLayer::with_idempotency_key`], which gives every attempt of a call
//!   the same `Idempotency-Key`. A connect error is retried whatever the
//!   method: nothing was sent.
//! - **Outcomes**: 408, 429, 500, 502, 503, 504; connect errors; connections
//!   reset or closed before a response; attempt timeouts (from a
//!   `tower::timeout` layer below). Never other 4xx, 501 or 505, nor TLS
//!   certificate failures. A custom [`predicate`](RetryLayer::predicate)
//!   decides first when set.
//! - **Only before the response is handed over**: a failure while the caller
//!   reads the body is the caller's; this layer never retries it.
//!
//! # When
//!
//! - **Backoff**: capped exponential with full jitter ([`Backoff`]), drawn
//!   from a random source that [`RetryLayer::seed`] makes reproducible.
//! - **`Retry-After`** on 429 and 503, in both forms, is a floor under the
//!   backoff: the wait is the longer of the two (`Retry-After: 0` from a
//!   struggling server does not make a tight loop).
//!   When a layer below (the rate limiter) has already scheduled that wait,
//!   it says until when with [`NotBefore`], and the retry waits until that
//!   same instant: one signal is never waited for twice.
//!   Longer than [`max_retry_after`](RetryLayer::max_retry_after) (60 s by
//!   default), it is not waited for: the response is returned at once and
//!   its [`RetryRecord`] says [`Stopped::RetryAfterTooLong`] with what the
//!   server asked.
//! - **Deadline**: no retry starts whose wait would pass
//!   [`max_total_time`](RetryLayer::max_total_time) or a [`Deadline`] in the
//!   request's extensions.
//!
//! # How much: the budget
//!
//! [`RetryBudget`] (shared by clones) allows retries of at most 20% of recent
//! requests plus 10 per second by default, so a failing upstream sees about
//! 1.2 times the original traffic rather than 4 times. When it is spent, the
//! failed response is returned as it is, with [`Stopped::Budget`].
//!
//! # Bodies
//!
//! [`Retry`] takes requests with **any** body (`Full<Bytes>`, `String`,
//! axum's `Body`, hyper's `Incoming` forwarded by a proxy, a boxed stream)
//! and hands its inner service a [`ReplayableBody`]. Before the first
//! attempt it decides, once:
//!
//! | the body | replayed? |
//! |----------|-----------|
//! | whole in memory already (`Full<Bytes>`, `Bytes`, `String`, `Empty<Bytes>`, a buffered `ReplayableBody`) | yes, whatever its size: each attempt shares the buffer |
//! | ended (`is_end_stream`), as a GET's | yes |
//! | of exact size (`size_hint`, e.g. from `Content-Length`) within [`max_replay_body`](RetryLayer::max_replay_body) (64 KiB by default) | yes: read into memory first, then sent |
//! | larger, or of unknown size (chunked, a stream) | no: streamed to the first attempt, sent **once** |
//!
//! When an attempt with a body that streamed fails in a way that would have
//! been retried, its outcome (the response, or the error in a
//! [`RetryError`]) is returned as it is, and its [`RetryRecord`] says
//! [`Stopped::BodyNotReplayable`]. Nothing is ever resent with an empty or
//! partial body.
//!
//! Reading a body into memory happens inside the response future, after
//! `poll_ready`: the inner service polled ready waits for it (bounded by
//! the limit; a caller's own timeout bounds a client that sends slowly). A
//! body that fails while read fails the call with its own error, and
//! nothing is sent; one that sends more than its declared size is a
//! [`BodyTooLarge`].
//!
//! Over axum's body, with a hyper-util client whose body type is
//! [`ReplayableBody`] (as it would run inside an axum handler forwarding
//! its request):
//!
//! ```
//! use axum::body::Body;
//! use http::{Request, StatusCode};
//! use hyper_util::client::legacy::Client;
//! use hyper_util::rt::TokioExecutor;
//! use tollgate_retry::{ReplayableBody, RetryLayer, RetryRecord};
//! use tollgate_testkit::{FakeApi, Fault};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower::BoxError> {
//! let api = FakeApi::start().await?;
//! api.inject("/posts/1", Fault::status(StatusCode::SERVICE_UNAVAILABLE).times(1));
//!
//! let hyper = Client::builder(TokioExecutor::new()).build_http::<ReplayableBody>();
//! let client = ServiceBuilder::new()
//!     .layer(RetryLayer::new().seed(1))
//!     .service(hyper);
//!
//! let req = Request::put(format!("{}/posts/1", api.url()))
//!     .header("content-type", "application/json")
//!     .body(Body::from(r#"{"title":"retried"}"#))?;
//! let res = client.oneshot(req).await?;
//! assert_eq!(res.status(), StatusCode::OK);
//! assert_eq!(res.extensions().get::<RetryRecord>().map(|r| r.attempts), Some(2));
//! assert_eq!(api.last_request("/posts/1").map(|r| r.body), Some(r#"{"title":"retried"}"#.into()));
//! # Ok(()) }
//! ```
//!
//! [`ReplayBody`], [`try_clone_request`] and [`buffer_request`] are kept
//! at their old paths; the layer no longer needs them.
//!
//! # Readiness and cancellation
//!
//! `poll_ready` is the inner service's. The backoff wait happens inside the
//! response future, which polls the inner service ready again before each
//! retry; dropping the future cancels the wait or the attempt in flight.
//!
//! # What it records
//!
//! The final response carries a [`RetryRecord`] in its extensions (attempts,
//! each retry's reason and delay, why it stopped). A call that still fails
//! after a retry fails with a [`RetryError`] carrying the record, whose
//! source is the last attempt's error. Each retry emits a `debug` event with
//! `http.request.resend_count`, the reason and the delay.
#![deny(missing_docs)]

mod backoff;
mod budget;
mod future;
mod layer;
mod policy;
mod record;
mod service;

pub use backoff::{Backoff, InvalidBackoff, Jitter};
pub use budget::{InvalidBudget, RetryBudget, FOLD_EVERY};
pub use future::ResponseFuture;
pub use layer::{RetryLayer, IDEMPOTENCY_KEY};
pub use policy::{
    error_kind, Outcome, Predicate, RetryReason, IDEMPOTENT_METHODS, RETRYABLE_STATUSES,
};
pub use record::{RetryError, RetryEvent, RetryRecord, Stopped};
// Shared with the other layers; kept here at their old paths.
pub use service::Retry;
pub use tollgate_core::{
    buffer_request, parse_retry_after, try_clone_request, BodyTooLarge, Deadline, NotBefore,
    ReplayBody, ReplayableBody, DEFAULT_MAX_REPLAY_BODY, MAX_RETRY_AFTER,
};

/// The README's example, compiled and run as a doc test so it stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
