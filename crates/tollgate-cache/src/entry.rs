//! What is stored: a response, when it stops being fresh, and how to
//! revalidate it.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{AGE, ETAG, LAST_MODIFIED};
use http::{HeaderMap, HeaderValue, Method, StatusCode, Version};
use tokio::time::Instant;

use crate::key::Vary;

/// Bytes counted for each stored response besides its body and headers: the
/// entry's own fields, its `Arc`, the variant list, and moka's bookkeeping
/// for the key (measured by `benches/cache_memory.rs`).
pub(crate) const ENTRY_OVERHEAD: usize = 400;

/// A stored response.
#[derive(Debug)]
pub(crate) struct Stored {
    pub(crate) status: StatusCode,
    pub(crate) version: Version,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
    /// When it was received.
    pub(crate) stored_at: Instant,
    /// Its age when received (the `Age` header it came with).
    pub(crate) initial_age: Duration,
    /// Fresh until then; stale after.
    pub(crate) fresh_until: Instant,
    /// Served stale when the upstream fails, until then.
    pub(crate) stale_until: Instant,
    /// `no-cache`: revalidate before every reuse.
    pub(crate) must_revalidate: bool,
    pub(crate) vary: Vary,
}

impl Stored {
    pub(crate) fn is_fresh(&self, now: Instant) -> bool {
        !self.must_revalidate && now < self.fresh_until
    }

    pub(crate) fn can_serve_stale(&self, now: Instant) -> bool {
        now < self.stale_until
    }

    pub(crate) fn etag(&self) -> Option<&HeaderValue> {
        self.headers.get(ETAG)
    }

    pub(crate) fn last_modified(&self) -> Option<&HeaderValue> {
        self.headers.get(LAST_MODIFIED)
    }

    pub(crate) fn has_validators(&self) -> bool {
        self.etag().is_some() || self.last_modified().is_some()
    }

    /// The `Age` to send with it now.
    pub(crate) fn age(&self, now: Instant) -> HeaderValue {
        let age = self.initial_age + now.saturating_duration_since(self.stored_at);
        HeaderValue::from(age.as_secs())
    }

    /// Bytes counted against the cache's capacity.
    pub(crate) fn weight(&self) -> usize {
        let headers: usize = self
            .headers
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + 64)
            .sum();
        self.body.len() + headers + self.vary.weight() + ENTRY_OVERHEAD
    }

    /// The headers of a stored response minus the `Age` it came with (the
    /// cache computes its own).
    pub(crate) fn strip_age(headers: &mut HeaderMap) -> Duration {
        let age = headers
            .remove(AGE)
            .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok())
            .unwrap_or(0);
        Duration::from_secs(age.min(u64::from(u32::MAX)))
    }
}

/// One stored response for one method, credential identity and set of
/// `Vary` values.
#[derive(Debug, Clone)]
pub(crate) struct Variant {
    pub(crate) method: Method,
    pub(crate) identity: u128,
    pub(crate) stored: Arc<Stored>,
}

/// Everything stored for one URI. Replaced as a whole when a variant is
/// added, so moka weighs it again; invalidating the URI drops them all.
#[derive(Debug)]
pub(crate) struct UriEntry {
    pub(crate) variants: Vec<Variant>,
    /// How long moka keeps it: the longest any variant stays useful (fresh,
    /// revalidatable or servable stale), from its insertion.
    pub(crate) keep: Duration,
    pub(crate) weight: u32,
}

impl UriEntry {
    pub(crate) fn new(variants: Vec<Variant>, now: Instant, key_len: usize) -> UriEntry {
        let keep = variants
            .iter()
            .map(|v| v.stored.stale_until.saturating_duration_since(now))
            .max()
            .unwrap_or_default();
        let weight = variants.iter().map(|v| v.stored.weight()).sum::<usize>() + key_len;
        UriEntry {
            variants,
            keep,
            weight: u32::try_from(weight).unwrap_or(u32::MAX),
        }
    }

    pub(crate) fn find(
        &self,
        method: &Method,
        identity: u128,
        request: &HeaderMap,
    ) -> Option<&Arc<Stored>> {
        self.variants
            .iter()
            .find(|v| {
                v.method == *method && v.identity == identity && v.stored.vary.matches(request)
            })
            .map(|v| &v.stored)
    }
}
