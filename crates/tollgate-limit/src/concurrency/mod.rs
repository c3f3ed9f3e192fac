//! The concurrency pool: at most N requests in flight, the rest wait in a
//! FIFO queue that is bounded in length and in time.
//!
//! ```
//! use std::time::Duration;
//! use http::{Request, Response};
//! use tower::{service_fn, Service, ServiceBuilder, ServiceExt};
//! use tollgate_limit::{ConcurrencyLimitLayer, QueueWait};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), tower::BoxError> {
//! let upstream = service_fn(|_req: Request<String>| async {
//!     tokio::time::sleep(Duration::from_millis(100)).await;
//!     Ok::<_, std::convert::Infallible>(Response::new(String::from("ok")))
//! });
//! let client = ServiceBuilder::new()
//!     .layer(
//!         ConcurrencyLimitLayer::new(2)
//!             .max_queue(100)
//!             .queue_timeout(Duration::from_secs(5)),
//!     )
//!     .service(upstream);
//!
//! // Three calls, two slots: the third waits for a slot, about 100 ms.
//! let mut calls = Vec::new();
//! for _ in 0..3 {
//!     let call = client.clone().oneshot(Request::new(String::new()));
//!     // Keep the wait; drop the response, and with it the slot.
//!     calls.push(tokio::spawn(async move {
//!         call.await.map(|res| res.extensions().get::<QueueWait>().copied().unwrap_or_default())
//!     }));
//! }
//! let mut waits = Vec::new();
//! for call in calls {
//!     waits.push(call.await??.0);
//! }
//! assert_eq!(waits.iter().filter(|w| w.is_zero()).count(), 2);
//! assert_eq!(waits[2], Duration::from_millis(100));
//! # Ok(()) }
//! ```
//!
//! # Rules
//!
//! - **In flight** means from the call until the response body ends or is
//!   dropped: a response whose body is still being read still occupies a
//!   connection upstream. The permit travels in the body ([`PermitBody`]).
//! - **Fair**: waiters are served first come, first served (tokio's semaphore
//!   is FIFO); a new call never overtakes a queued one.
//! - **Bounded**: beyond [`max_queue`](ConcurrencyLimitLayer::max_queue)
//!   waiters a call fails at once with [`PoolQueueFull`]; a waiter that has
//!   not got a slot after
//!   [`queue_timeout`](ConcurrencyLimitLayer::queue_timeout) fails with
//!   [`PoolQueueTimeout`].
//! - **Honest readiness**: `poll_ready` is the inner service's; the wait
//!   happens in the response future, and the inner service is polled ready
//!   again only once a slot is held, so a waiting call reserves nothing below.
//! - **Cancel-safe**: dropping a waiting call leaves the queue and frees its
//!   place; dropping a call in flight, or its response body, frees its slot.
//! - **Recorded**: every response carries [`QueueWait`], the time spent
//!   waiting for a slot (zero when one was free).
//! - **Shared**: clones of the layer and of its services share one pool.
//!
//! # Names
//!
//! The pool says what the rate limiter says for the same idea: `max_queue`
//! (how many callers may wait), `waiting()` (how many do). Its errors are
//! [`PoolQueueFull`] and [`PoolQueueTimeout`], distinct types from the rate
//! limiter's [`QueueFull`](crate::QueueFull), so a caller can tell which
//! queue refused it. The old names (`max_pending`, `pending_timeout`,
//! `pending()`, `TooManyPending`, `PendingTimeout`) still work: the
//! methods deprecated, the error types as aliases of the new ones.

mod body;
mod future;
mod layer;
mod service;

pub use body::PermitBody;
pub use future::ResponseFuture;
pub use layer::ConcurrencyLimitLayer;
pub use service::ConcurrencyLimit;

#[allow(deprecated)]
pub use crate::error::{PendingTimeout, TooManyPending};
pub use crate::error::{PoolQueueFull, PoolQueueTimeout};

/// The time a call waited in the pool's queue, in the response's
/// extensions: defined in `tollgate-core` (the records that cross crates
/// live there), kept here at its old path.
pub use tollgate_core::QueueWait;
