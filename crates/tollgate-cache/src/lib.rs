//! Response caching for HTTP clients as a tower layer.
//!
//! [`CacheLayer`] keeps responses in a [moka] cache bounded in bytes, fresh
//! for a fixed TTL or by HTTP's rules ([`Freshness`]), revalidates stale
//! ones with `ETag` / `Last-Modified`, serves stale ones when the upstream
//! fails if asked to, coalesces concurrent misses into one upstream request,
//! and never serves one credential's response to another. What it did is a
//! [`CacheStatus`] in each response's extensions. See [`CacheLayer`] for the
//! rules and an example.
//!
//! # Readiness
//!
//! `poll_ready` is the inner service's. A hit is answered in `call`
//! without touching the inner service; waiting for another request's fetch
//! happens inside the response future, and a dropped request hands the
//! fetch to the next one waiting.
//!
//! # In the stack
//!
//! In the `tollgate` facade this is layer 3, above retry and rate limiting:
//! a hit costs no attempt and no permit.
//!
//! [moka]: https://docs.rs/moka
#![deny(missing_docs)]

mod body;
mod entry;
mod flight;
mod key;
mod layer;
mod policy;
mod service;
mod status;
mod store;
mod tier;

pub use body::CacheBody;
pub use key::normalize_uri;
pub use layer::{
    CacheBuilder, CacheLayer, CacheStats, DEFAULT_KEEP_FOR_REVALIDATION, DEFAULT_MAX_BYTES,
    DEFAULT_MAX_ENTRY_BYTES, DEFAULT_REMEMBER_UNCACHEABLE,
};
pub use policy::{Freshness, MAX_FRESHNESS};
pub use service::{Cache, ResponseFuture};
pub use status::{Bypass, CacheStatus, CacheTtl, CoalescedError, FromTier};
pub use tier::{CacheTier, TierFuture, DEFAULT_TIER_TIMEOUT, TIER_FORMAT_VERSION, TIER_RETRY};
pub use tollgate_core::Partition;

/// The README's example, compiled and run as a doc test so it stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
