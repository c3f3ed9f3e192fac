//! The rate limiter: permits per time, waited for in order, shared by
//! clones, optionally keyed, and taught by the upstream's answers.
//!
//! ```
//! use std::time::Duration;
//! use http::{Request, Response};
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//! use tollgate_limit::{PermitWait, Quota, RateLimitLayer};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), tower::BoxError> {
//! let upstream = service_fn(|_req: Request<String>| async {
//!     Ok::<_, std::convert::Infallible>(Response::new(String::new()))
//! });
//! // At most 2 calls in any second, callers waiting their turn.
//! let client = ServiceBuilder::new()
//!     .layer(RateLimitLayer::new(Quota::window(2, Duration::from_secs(1))?).max_wait(Duration::from_secs(5)))
//!     .service(upstream);
//!
//! let mut waits = Vec::new();
//! for _ in 0..3 {
//!     let res = client.clone().oneshot(Request::new(String::new())).await?;
//!     waits.push(res.extensions().get::<PermitWait>().copied().unwrap_or_default().0);
//! }
//! assert_eq!(waits, [Duration::ZERO, Duration::ZERO, Duration::from_secs(1)]);
//! # Ok(()) }
//! ```
//!
//! # Rules
//!
//! - **Quotas with stated guarantees**: [`Quota`](crate::Quota) (smooth GCRA,
//!   or a strict window).
//! - **First come, first served**: each caller reserves the next conforming
//!   permit in arrival order and sleeps until it; nobody overtakes a waiter.
//! - **Bounded waits**: [`max_wait`](RateLimitLayer::max_wait), and the call's
//!   deadline when an outer layer put a `tollgate_retry::Deadline` in the
//!   request's extensions (the facade does), refuse at once, without sleeping
//!   first, a caller whose permit is further away
//!   ([`WaitTooLong`](crate::WaitTooLong)); [`max_queue`](RateLimitLayer::max_queue)
//!   bounds the waiters ([`QueueFull`](crate::QueueFull)).
//! - **Reject mode** for servers: [`reject`](RateLimitLayer::reject) refuses
//!   over-limit requests at once with [`RateLimited`](crate::RateLimited),
//!   which says when to retry.
//! - **Cancel-safe**: a waiter that is dropped leaves the queue at once and
//!   gives its permit back when no later caller reserved after it
//!   (otherwise the permit stays used: the limit never loosens).
//! - **Keyed**: [`KeyBy`] (host, header, any function) gives each key its own
//!   limiter; the key table is bounded, idle keys evicted first.
//! - **Taught by the upstream**: a 429 or 503 with `Retry-After`, a
//!   `RateLimit` field or `X-RateLimit-Remaining: 0` with a reset pause the
//!   limiter for every caller sharing it (capped, 60 s by default; off with
//!   [`learn_from_upstream`](RateLimitLayer::learn_from_upstream)). The
//!   response then carries `tollgate_retry::NotBefore`, so a retry layer above
//!   waits until the same instant instead of waiting twice.
//! - **Recorded**: every response carries [`PermitWait`].
//! - **Honest readiness**: `poll_ready` is the inner service's; the wait is in
//!   the response future, which polls the inner service ready only once its
//!   permit's time has come.
//! - **State behind a trait**: [`RateLimitStore`]; [`MemoryStore`] in process.

mod feedback;
mod future;
mod layer;
mod service;
mod store;

pub use feedback::upstream_pause;
pub use future::ResponseFuture;
pub use layer::{KeyBy, KeyInput, RateLimitLayer, DEFAULT_MAX_KEYS};
pub use service::RateLimit;
pub use store::{MemoryStore, RateLimitStore, Reservation};

/// The time a call waited for its rate-limit permit, in the response's
/// extensions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PermitWait(pub std::time::Duration);
