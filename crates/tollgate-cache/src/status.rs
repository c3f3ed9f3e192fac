//! What the cache did, and what a request can ask of it.

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// What the cache did for a response, in the response's extensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CacheStatus {
    /// Served from the cache; nothing was sent upstream.
    Hit,
    /// Fetched upstream (and stored, if it could be).
    Miss,
    /// Another request for the same key was already fetching it; this one
    /// waited and got the same response.
    Coalesced,
    /// The stored response was stale; the upstream answered `304 Not
    /// Modified` to a conditional request, so it was served from the cache
    /// and renewed, without a body transfer.
    Revalidated,
    /// The upstream failed and the stale stored response was served, within
    /// the stale-if-error grace period.
    Stale,
    /// The cache was not used: not a cached method, the request asked not
    /// to be ([`Bypass`], `Cache-Control: no-store`), or it was conditional
    /// or a range request.
    Bypass,
}

impl CacheStatus {
    /// Whether the body came from the cache's memory rather than from this
    /// request's own download: `Hit`, `Coalesced`, `Revalidated`, `Stale`.
    pub fn is_from_cache(self) -> bool {
        matches!(
            self,
            CacheStatus::Hit
                | CacheStatus::Coalesced
                | CacheStatus::Revalidated
                | CacheStatus::Stale
        )
    }

    /// A short lowercase name (`"hit"`, `"miss"`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit => "hit",
            CacheStatus::Miss => "miss",
            CacheStatus::Coalesced => "coalesced",
            CacheStatus::Revalidated => "revalidated",
            CacheStatus::Stale => "stale",
            CacheStatus::Bypass => "bypass",
        }
    }
}

impl fmt::Display for CacheStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// In a request's extensions: skip the cache for this request (neither read
/// nor stored). The facade's `RequestBuilder::no_cache` sets it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Bypass;

/// In a request's extensions: store this request's response for this long,
/// whatever the layer's freshness rule says (`no-store` is still honoured).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheTtl(pub Duration);

/// The error of a request that waited for another's identical request,
/// which failed. Its [`source`](StdError::source) is that request's error.
#[derive(Clone)]
pub struct CoalescedError(pub(crate) Arc<dyn StdError + Send + Sync>);

impl fmt::Debug for CoalescedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("CoalescedError").field(&self.0).finish()
    }
}

impl fmt::Display for CoalescedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cache: the request this one waited for failed: {}",
            self.0
        )
    }
}

impl StdError for CoalescedError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&*self.0)
    }
}
