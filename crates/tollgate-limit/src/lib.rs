//! Limits for HTTP clients and servers as tower layers.
//!
//! This crate holds [`ConcurrencyLimitLayer`], the concurrency pool: at most
//! N requests in flight, a FIFO queue bounded in length and in time, and the
//! time each call waited on its response.
//!
//! It also holds the rate limiter's core, which knows nothing of tower or
//! clocks: [`Quota`] (smooth or window, validated when built), [`gcra`] (at
//! most `burst + rate · t` in any interval `t`) and [`window`] (at most `n`
//! in any window of length `period`), each bound proven by a property test.
//! The `RateLimitLayer` that waits on them (FIFO, bounded, keyed, learning
//! from the upstream) is the next part to land here.
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

pub mod concurrency;
mod error;
pub mod gcra;
mod quota;
pub mod window;

pub use concurrency::{ConcurrencyLimit, ConcurrencyLimitLayer, PermitBody, QueueWait};
pub use error::{PendingTimeout, TooManyPending};
pub use quota::{InvalidQuota, Quota, QuotaKind};

/// The README's example, compiled and run as a doc test so it stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
