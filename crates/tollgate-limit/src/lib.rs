//! Limits for HTTP clients and servers as tower layers.
//!
//! This crate holds [`ConcurrencyLimitLayer`], the concurrency pool: at most
//! N requests in flight, a FIFO queue bounded in length and in time, and the
//! time each call waited on its response.
//!
//! And [`RateLimitLayer`] (see [`rate`]): permits per time under a [`Quota`]
//! (smooth GCRA, at most `burst + rate · t` in any interval `t`; or a strict
//! window, at most `n` in any window of length `period`), waited for first
//! come first served with bounded waits and queues, or refused at once in
//! reject mode, keyed, shared by clones, and paused by the upstream's
//! answers. The algorithms ([`gcra`], [`window`]) know nothing of tower or
//! clocks, and each bound is proven by a property test.
//!
//! See the [`concurrency`] module for the rules and an example.
//!
//! # Readiness
//!
//! Unlike tower's limit layers, which reserve capacity in `poll_ready`, these
//! layers' `poll_ready` is the inner service's, and the wait happens inside
//! the response future. The wait can then be bounded (queue limits, timeouts),
//! timed and recorded on the response, and a cloned, idle or dropped service
//! never holds capacity it is not using.
#![deny(missing_docs)]

mod call;
pub mod concurrency;
#[cfg(feature = "conformance")]
pub mod conformance;
mod error;
pub mod gcra;
mod quota;
pub mod rate;
pub mod window;

pub use concurrency::{ConcurrencyLimit, ConcurrencyLimitLayer, PermitBody, QueueWait};
/// The pool's errors under their old names.
#[allow(deprecated)]
pub use error::{PendingTimeout, TooManyPending};
pub use error::{PoolQueueFull, PoolQueueTimeout, QueueFull, RateLimited, WaitTooLong};
pub use quota::{InvalidQuota, Quota, QuotaKind};
pub use rate::{
    KeyBy, MemoryStore, PermitWait, RateLimit, RateLimitLayer, RateLimitStore, StoreError,
    StoreFuture, StoreTimedOut, UnixNanos,
};

/// The README's example, compiled and run as a doc test so it stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
