//! The records each layer leaves on a response, in its extensions: what it
//! did, for the caller (the `tollgate` facade's `Summary`, or your code).
//!
//! They live here, not in the layer that writes them, because they cross
//! crates: a reader (the facade, a user's own layer, a test) can read them
//! without depending on the layer, and the layer crates re-export them at
//! their old paths.

use std::fmt;
use std::time::Duration;

/// The time a call waited for its rate-limit permit, in the response's
/// extensions.
///
/// Written by the rate limiter (`tollgate_limit::rate`), zero when a permit
/// was free; read by the facade into `Summary::permit_wait`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PermitWait(pub Duration);

/// The time a call waited in the concurrency pool's queue, in the
/// response's extensions.
///
/// Written by the pool (`tollgate_limit::ConcurrencyLimit`), zero when a
/// slot was free; read by the facade into `Summary::queue_wait`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueWait(pub Duration);

/// What the cache did for a response, in the response's extensions.
///
/// Written by the cache layer (`tollgate_cache`), on every response that
/// went through it; read by the facade into `Summary::cache` and
/// `Summary::from_cache`.
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
    /// to be (the cache's `Bypass` extension, `Cache-Control: no-store`), or it was conditional
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_found_in_a_responses_extensions() {
        let mut response = http::Response::new(());
        response
            .extensions_mut()
            .insert(PermitWait(Duration::from_millis(5)));
        response.extensions_mut().insert(QueueWait::default());
        response.extensions_mut().insert(CacheStatus::Coalesced);
        let ext = response.extensions();
        assert_eq!(
            ext.get::<PermitWait>(),
            Some(&PermitWait(Duration::from_millis(5)))
        );
        assert_eq!(ext.get::<QueueWait>(), Some(&QueueWait(Duration::ZERO)));
        assert!(ext.get::<CacheStatus>().is_some_and(|s| s.is_from_cache()));
        assert_eq!(CacheStatus::Bypass.to_string(), "bypass");
    }
}
