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
//! - **First come, first served**: callers that cannot have a permit at once
//!   wait in a FIFO lane of their key; only the head of a lane asks for a
//!   permit, when its time comes, and newcomers join the back of a lane that
//!   is not empty: nobody overtakes a waiter. A permit is taken only by the
//!   caller that uses it at once; nothing is reserved ahead.
//! - **Bounded waits**: [`max_wait`](RateLimitLayer::max_wait), and the call's
//!   deadline when an outer layer put a `tollgate_core::Deadline` in the
//!   request's extensions (the facade does), refuse at once, without sleeping
//!   first, a caller whose permit is further away
//!   ([`WaitTooLong`](crate::WaitTooLong)); [`max_queue`](RateLimitLayer::max_queue)
//!   bounds the waiters ([`QueueFull`](crate::QueueFull)).
//! - **Reject mode** for servers: [`reject`](RateLimitLayer::reject) refuses
//!   over-limit requests at once with [`RateLimited`](crate::RateLimited),
//!   which says when to retry.
//! - **Cancel-safe**: a waiter that is dropped leaves its lane at once and
//!   wakes the next; since it never held a permit, nothing it did loosens
//!   the limit (a model-based test drops waiters at random and checks the
//!   bound on what reached the upstream).
//! - **Keyed**: [`KeyBy`] (host, header, any function) gives each key its own
//!   limiter, in a table bounded in keys and in memory. Only idle keys are
//!   evicted, so a full table never resets an active key's limit; new keys
//!   that find no room share one overflow limiter (see [`MemoryStore`]).
//!   Keys are held as keyed hashes, and logs show only a short hash: a key
//!   may be a credential.
//! - **Taught by the upstream**: a 429 or 503 with `Retry-After`, a
//!   `RateLimit` field (the most restrictive of its policies) or
//!   `X-RateLimit-Remaining: 0` with a reset pause the limiter for every
//!   caller sharing it, those already waiting included (capped, 60 s by
//!   default; off with
//!   [`learn_from_upstream`](RateLimitLayer::learn_from_upstream)). After a
//!   pause, permits resume at the quota's rate, one interval apart, never as
//!   a burst: a burst at the end of a pause is what trips the upstream
//!   again. To match an upstream that allows bursts (nginx `limit_req
//!   burst=5`, say), give the quota the same burst with
//!   [`Quota::with_burst`](crate::Quota::with_burst). The response then
//!   carries `tollgate_core::NotBefore`, so a retry layer above waits until
//!   the same instant instead of waiting twice; when the server asked for
//!   more than the cap, it carries none, and retry sees the server's own
//!   delay (and, above its own cap, does not wait at all).
//! - **Recorded**: every response carries [`PermitWait`]. With the feature
//!   `metrics`, each learned pause is counted through the `metrics` crate
//!   facade: `tollgate.client.rate_limit.pauses` (counter) and
//!   `tollgate.client.rate_limit.pause_duration` (histogram, seconds: the
//!   pause applied, after the cap), both labelled with the
//!   `http.response.status_code` that asked and `capped` (`true` when the
//!   server asked for more than the cap). Never the key: it may be a
//!   credential.
//! - **Honest readiness**: `poll_ready` is the inner service's; the wait is in
//!   the response future, which polls the inner service ready only once its
//!   permit's time has come.
//! - **State behind a trait**: [`RateLimitStore`], asynchronous (a shared
//!   store is a network round trip away) with a synchronous fast path: each
//!   operation answers a [`StoreFuture`], ready at once (no allocation, no
//!   await) or later. [`MemoryStore`] in process is always ready. Times are
//!   [`UnixNanos`], absolute, so processes sharing a store can compare them.
//!   Every store passes the same conformance suite (`conformance`, feature
//!   `conformance`). A store that answers later is asked by the head of a
//!   lane, which keeps its place while it waits, so callers stay first come
//!   first served within a process; a store failure is a [`StoreError`] for
//!   that caller. Its answers are bounded by
//!   [`store_timeout`](RateLimitLayer::store_timeout) (50 ms by default) and
//!   by the caller's own `max_wait` and deadline; a yes that comes later is
//!   never used. A pause learned from the upstream is held by the layer
//!   itself while such a store records it. In reject mode callers ask such a
//!   store concurrently, outside any lane; a caller that only waits for the
//!   store's answer does not count against `max_queue`.
//! - **Order with a pool**: the bound holds where permits are taken. Below
//!   the limiter, anything that queues (a concurrency pool at its limit)
//!   delays some calls after their permit, and so can move two calls closer
//!   together at the upstream, by up to that queue's wait. A pool placed
//!   above the limiter avoids that, at a price: callers waiting for a permit
//!   then hold pool slots (a paused key can take every slot from the
//!   others). The facade keeps the pool below the limiter, so that a caller
//!   waiting for a permit holds no slot; a pool large enough that it rarely
//!   queues keeps the upstream's view of the quota exact.

mod future;
mod layer;
mod queue;
mod service;
mod store;

pub use future::ResponseFuture;
pub use layer::{KeyBy, KeyInput, RateLimitLayer, DEFAULT_MAX_KEYS, DEFAULT_STORE_TIMEOUT};
pub use service::RateLimit;
pub use store::{
    MemoryStore, RateLimitStore, StoreError, StoreFuture, StoreTimedOut, UnixNanos,
    DEFAULT_MAX_MEMORY,
};
pub use tollgate_core::upstream_pause;

/// The time a call waited for its rate-limit permit, in the response's
/// extensions (defined in `tollgate-core`, where the records that cross
/// crates live).
pub use tollgate_core::PermitWait;
