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
pub(crate) const ENTRY_OVERHEAD: usize = 1_200;

/// Bytes counted for each stored header besides its name and value: the
/// header map's bucket and index, and the value's own allocation.
const HEADER_OVERHEAD: usize = 128;

/// `Age` values of under a minute, as static header values.
const SMALL_AGES: [&str; 60] = [
    "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16",
    "17", "18", "19", "20", "21", "22", "23", "24", "25", "26", "27", "28", "29", "30", "31", "32",
    "33", "34", "35", "36", "37", "38", "39", "40", "41", "42", "43", "44", "45", "46", "47", "48",
    "49", "50", "51", "52", "53", "54", "55", "56", "57", "58", "59",
];

/// `t + d`, saturating at 2^32 s (twice the longest freshness honoured,
/// about 136 years) from `t`, or at `t` itself on a clock that cannot hold
/// even that.
pub(crate) fn later(t: Instant, d: Duration) -> Instant {
    const FAR: Duration = Duration::from_secs(1 << 32);
    t.checked_add(d.min(FAR))
        .or_else(|| t.checked_add(FAR))
        .unwrap_or(t)
}

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
    /// Whether it may be served stale when the upstream fails (not if
    /// `must-revalidate`, ...).
    pub(crate) serve_stale: bool,
    pub(crate) vary: Vary,
}

impl Stored {
    pub(crate) fn is_fresh(&self, now: Instant) -> bool {
        !self.must_revalidate && now < self.fresh_until
    }

    pub(crate) fn can_serve_stale(&self, now: Instant) -> bool {
        self.serve_stale && now < self.stale_until
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
        let age = (self.initial_age + now.saturating_duration_since(self.stored_at)).as_secs();
        // Most ages are under a minute: no allocation for those.
        match SMALL_AGES.get(age as usize) {
            Some(text) => HeaderValue::from_static(text),
            None => HeaderValue::from(age),
        }
    }

    /// Bytes counted against the cache's capacity.
    pub(crate) fn weight(&self) -> usize {
        let headers: usize = self
            .headers
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + HEADER_OVERHEAD)
            .sum();
        self.body.len() + headers + self.vary.weight() + ENTRY_OVERHEAD
    }

    /// The headers of a stored response minus the `Age` it came with (the
    /// cache computes its own).
    ///
    /// An `Age: 0` takes its place, so that a response from the cache sets
    /// its own `Age` in place rather than growing a copied header map.
    ///
    /// Delta-seconds too large for any integer are 2^31 s (RFC 9111
    /// §1.2.2); anything but digits is no age at all.
    pub(crate) fn strip_age(headers: &mut HeaderMap) -> Duration {
        let age = headers
            .remove(AGE)
            .and_then(|v| {
                let text = v.to_str().ok()?.trim().to_owned();
                if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                Some(text.parse::<u64>().unwrap_or(u64::MAX))
            })
            .unwrap_or(0);
        headers.insert(AGE, HeaderValue::from_static("0"));
        Duration::from_secs(age).min(crate::policy::MAX_FRESHNESS)
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
    pub(crate) weight: u32,
}

impl UriEntry {
    pub(crate) fn new(variants: Vec<Variant>, key_len: usize) -> UriEntry {
        let weight = variants.iter().map(|v| v.stored.weight()).sum::<usize>() + key_len;
        UriEntry {
            variants,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::MAX_FRESHNESS;

    fn age_of(value: &str) -> Duration {
        let mut headers = HeaderMap::new();
        headers.insert(AGE, HeaderValue::from_str(value).expect("value"));
        let age = Stored::strip_age(&mut headers);
        assert_eq!(headers[AGE], "0");
        age
    }

    #[test]
    fn an_age_is_read_clamped_and_never_panics() {
        assert_eq!(age_of("30"), Duration::from_secs(30));
        assert_eq!(age_of(" 7 "), Duration::from_secs(7));
        assert_eq!(age_of("99999999999999999999999999"), MAX_FRESHNESS);
        assert_eq!(age_of("4294967296"), MAX_FRESHNESS);
        for bad in ["-5", "1.5", "", "abc", "+3"] {
            assert_eq!(age_of(bad), Duration::ZERO, "{bad:?}");
        }
    }

    #[test]
    fn later_saturates() {
        let now = Instant::now();
        assert_eq!(later(now, Duration::ZERO), now);
        assert_eq!(
            later(now, Duration::from_nanos(1)),
            now + Duration::from_nanos(1)
        );
        assert!(later(now, Duration::MAX) > now + MAX_FRESHNESS);
    }
}
