//! The shared vocabulary of the Tollgate layers.
//!
//! Each Tollgate middleware is its own crate, usable alone, and no layer
//! crate depends on another. What two layers must agree on lives here:
//!
//! | item | written by | read by |
//! |------|------------|---------|
//! | [`Deadline`] (request) | the facade's total timeout, or you | retry (no retry past it), the rate limiter (no permit past it) |
//! | [`NotBefore`] (response) | the rate limiter, when it schedules the server's `Retry-After` | retry (waits until the same instant: one wait, not two) |
//! | [`Credential`] (request) | you, or the facade's per-request credential | auth (sends it instead of the layer's), the cache (partitions by it) |
//! | [`Partition`] (request) | you, or the facade for a client with its own credentials | the cache (keeps partitions apart) |
//! | [`parse_retry_after`], [`upstream_pause`] | | retry and the rate limiter read the server's signals with the same parsers |
//! | [`ReplayableBody`], [`try_clone_request_any`] (and the older [`ReplayBody`], [`try_clone_request`], [`buffer_request`]) | retry (its inner service gets a `ReplayableBody`) | retry and auth replay request bodies by one rule: a body whole in memory, or of exact size within a limit, is buffered and sent again; any other is sent once |
//! | [`inner_accessors!`] | | every service: `get_ref`, `get_mut`, `into_inner` written once |
//! | [`PermitWait`] (response) | the rate limiter (time waited for a permit) | the facade's `Summary`, you |
//! | [`QueueWait`] (response) | the concurrency pool (time waited for a slot) | the facade's `Summary`, you |
//! | [`CacheStatus`] (response) | the cache (hit, miss, coalesced, ...) | the facade's `Summary`, you |
//! | [`read_body`], [`ReadBodyError`] | | auth (token responses), the facade (response bodies), the testkit: one bounded body reader |
//! | [`SharedError`], [`chain`] | auth (a refresh's error), the cache (a coalesced miss's), batch (a batched call's) | the facade's error kinds: one error handed to many callers, seen through |
//! | [`TransportFailure`] | | retry (was the request sent?) and the facade (its `ErrorKind`): one reading of transport failures |
//!
//! # Choices
//!
//! - [`read_body`] refuses a body whose declared size
//!   ([`size_hint`](http_body::Body::size_hint), which hyper sets from
//!   `Content-Length`) is over the limit before reading a byte, and any other
//!   as soon as it passes the limit; a body of exactly the limit is read. The
//!   body's own error is kept unchanged ([`ReadBodyError::Body`]).
//! - A [`SharedError`] is transparent, like an `io::Error` that wraps another
//!   (its `Display`, `Debug` and `source` are the shared error's own), so a
//!   printed chain shows nothing twice; walk chains with [`chain`], which
//!   yields the shared error itself and the error inside an `io::Error`, both
//!   of which `source()` steps over.
//! - [`TransportFailure::classify`] recognises hyper-util's client errors only
//!   with the `hyper-util` feature (off by default, to keep this crate light;
//!   the retry layer and the facade turn it on).
//!
//! ```
//! use std::time::{Duration, SystemTime};
//! use http::{HeaderMap, HeaderValue, StatusCode};
//! use tollgate_core::{parse_retry_after, upstream_pause, Deadline};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let now = SystemTime::now();
//! assert_eq!(parse_retry_after(&HeaderValue::from_static("30"), now), Some(Duration::from_secs(30)));
//! let mut headers = HeaderMap::new();
//! headers.insert("ratelimit", HeaderValue::from_static("\"day\";r=0;t=3600, \"minute\";r=50;t=30"));
//! assert_eq!(upstream_pause(StatusCode::OK, &headers, now), Some(Duration::from_secs(3600)));
//! // "No limit" is no deadline, never a panic.
//! assert!(Deadline::after(Duration::MAX).is_none());
//! # }
//! ```
#![deny(missing_docs)]

mod body;
mod credential;
mod extensions;
mod failure;
mod macros;
mod ratelimit;
mod records;
mod replay;
mod retry_after;
mod shared;

pub use body::{read_body, ReadBodyError};
pub use credential::{Credential, InvalidCredential};
pub use extensions::{Deadline, NotBefore, Partition};
pub use failure::TransportFailure;
pub use ratelimit::{may_signal, upstream_pause};
pub use records::{CacheStatus, PermitWait, QueueWait};
pub use replay::{
    buffer_request, try_clone_body, try_clone_request, try_clone_request_any, BodyTooLarge,
    BufferBody, ReplayBody, ReplayableBody, DEFAULT_MAX_REPLAY_BODY,
};
pub use retry_after::{parse_retry_after, MAX_RETRY_AFTER};
pub use shared::{chain, Chain, SharedError};
