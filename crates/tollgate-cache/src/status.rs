//! What the cache did, and what a request can ask of it.

use std::time::Duration;

pub use tollgate_core::CacheStatus;

/// In a request's extensions: skip the cache for this request (neither read
/// nor stored). The facade's `RequestBuilder::no_cache` sets it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Bypass;

/// In a request's extensions: store this request's response for this long,
/// whatever the layer's freshness rule says (`no-store` is still honoured).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheTtl(pub Duration);

/// The error of a request that waited for another's identical request,
/// which failed: that request's error, shared (one type for the whole
/// workspace, [`tollgate_core::SharedError`], under its old name here). Its
/// `Display`, `Debug` and `source` are that error's own;
/// [`get`](tollgate_core::SharedError::get) gives the error itself. The
/// request that led the fetch gets the same error, so every caller reads
/// one failure the same way.
pub type CoalescedError = tollgate_core::SharedError;

/// In a response's extensions, beside [`CacheStatus::Hit`]: the response
/// came from the cache's second tier
/// ([`CacheBuilder::tier`](crate::CacheBuilder::tier)), not from memory.
/// It was fetched upstream by another replica (or by this one, before its
/// memory lost it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FromTier;
