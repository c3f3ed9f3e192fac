//! A second tier behind moka, shared by replicas: [`CacheTier`], the keys
//! entries are filed under there, and the versioned encoding they travel
//! in.
//!
//! The layer knows nothing of Redis: a tier is anything that can get, put
//! with a TTL and delete bytes by key (`tollgate_redis::RedisCacheTier` is
//! one).

use std::fmt;
use std::future::Future;
use std::hash::Hasher;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version};
use sha2::{Digest, Sha256};
use tokio::time::Instant;
use tollgate_core::{Credential, Partition};
use tower::BoxError;

use crate::entry::{later, Stored};
use crate::key::{is_credential, Vary};
use crate::store::Counters;

/// The default for [`CacheBuilder::tier_timeout`](crate::CacheBuilder::tier_timeout): 10 ms.
pub const DEFAULT_TIER_TIMEOUT: Duration = Duration::from_millis(10);

/// How long a failing tier is left alone before it is asked again.
pub const TIER_RETRY: Duration = Duration::from_millis(500);

/// The first byte of every encoded entry. An entry of any other version is a
/// miss.
pub const TIER_FORMAT_VERSION: u8 = 1;

/// What a [`CacheTier`] answers: a boxed future, owning what it needs.
pub type TierFuture<T> = Pin<Box<dyn Future<Output = Result<T, BoxError>> + Send + 'static>>;

/// A second cache tier behind the in-memory one, typically shared by the
/// replicas of a service (Redis: `tollgate_redis::RedisCacheTier`).
///
/// The layer calls it with keys it derived itself (64 hex digits, a SHA-256
/// of the method, the normalized URI and the request's credentials: a key
/// never holds a URL or a credential in clear) and values it encoded itself
/// (versioned, see [`CacheBuilder::tier`](crate::CacheBuilder::tier)). The
/// tier only stores bytes: every rule (freshness, partitions, `Vary`,
/// versions) is checked by the layer on the way back, so a tier that
/// answers garbage, stale data or another key's entry costs a miss, never a
/// wrong response.
///
/// Every call is bounded by the layer's
/// [`tier_timeout`](crate::CacheBuilder::tier_timeout); an error or a
/// timeout is counted and the request goes on without the tier. Values
/// carry a checksum (a damaged one is a miss), and the values of
/// credential headers a response varies on are never written (the key
/// already holds their hash).
///
/// # Limits
///
/// An adversary found these, kept as ignored `LIMITATION` tests
/// (`tests/attack6_tier.rs`, `tollgate-redis/tests/attack6_cache_tier.rs`):
///
/// - **Writes and invalidation are best effort across the tier.** A write
///   deletes the tier's copies one at a time inside its response future:
///   a read racing those deletes, a caller that drops the write's future,
///   a delete slower than the timeout (the tier then rests and the write's
///   other deletes are skipped) can leave the pre-write entry in the tier
///   until its freshness ends. [`CacheLayer::invalidate`](crate::CacheLayer::invalidate)
///   returns before its tier deletes are sent. Do not rely on the tier for
///   read-your-writes; entries end with their freshness.
/// - **Ages are on the replicas' wall clocks**: a reader whose clock is
///   behind the writer's sees the entry younger than it is (by the skew)
///   and may serve it as fresh past its end by as much.
/// - **Callers coalesced behind a flight's leader** get its response
///   without its `Age` header (also without a tier).
/// - **Origin-form URIs** (`/p/1` with a `Host` header) are keyed by the
///   URI alone, in memory and in the tier: give the cache absolute URIs
///   (the facade does), or a namespace per upstream.
/// - **A tier must not panic**: a panic in `get` unwinds through the
///   request.
pub trait CacheTier: Send + Sync + 'static {
    /// The value stored under `key`, if any.
    fn get(&self, key: &str) -> TierFuture<Option<Bytes>>;
    /// Stores `value` under `key` for `ttl` (at least 1 ms), replacing
    /// what was there.
    fn put(&self, key: &str, value: Bytes, ttl: Duration) -> TierFuture<()>;
    /// Drops what is stored under `key` (nothing there is not an error).
    fn delete(&self, key: &str) -> TierFuture<()>;
}

/// A tier with the layer's bookkeeping around it: the timeout, the
/// failing/healthy state, and a clock other processes can read.
pub(crate) struct Tier {
    tier: Arc<dyn CacheTier>,
    timeout: Duration,
    /// The system clock when the layer was built, and tokio's then: the
    /// wall clock is read once and moved by tokio's, so paused-time tests
    /// move it too.
    wall: (SystemTime, Instant),
    /// While failing: when to ask again.
    retry_at: Mutex<Option<Instant>>,
    /// Whether the last call failed (for logging once per transition).
    failing: AtomicBool,
}

impl fmt::Debug for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tier")
            .field("timeout", &self.timeout)
            .field("failing", &self.failing.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Tier {
    pub(crate) fn new(tier: Arc<dyn CacheTier>, timeout: Duration) -> Tier {
        Tier {
            tier,
            timeout,
            wall: (SystemTime::now(), Instant::now()),
            retry_at: Mutex::new(None),
            failing: AtomicBool::new(false),
        }
    }

    /// Milliseconds since the UNIX epoch, now.
    pub(crate) fn wall_ms(&self, now: Instant) -> u64 {
        let wall = self.wall.0 + now.saturating_duration_since(self.wall.1);
        wall.duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    /// Whether the tier failed lately and is being left alone.
    fn resting(&self, counters: &Counters) -> bool {
        let retry_at = self.retry_at.lock().unwrap_or_else(PoisonError::into_inner);
        match *retry_at {
            Some(at) if Instant::now() < at => {
                Counters::bump(&counters.tier_skipped);
                true
            }
            _ => false,
        }
    }

    fn failed(&self, counters: &Counters, what: &str, error: &dyn fmt::Display) {
        Counters::bump(&counters.tier_errors);
        *self.retry_at.lock().unwrap_or_else(PoisonError::into_inner) =
            Some(later(Instant::now(), TIER_RETRY));
        if !self.failing.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                target: "tollgate_cache",
                operation = what,
                error = %error,
                "cache tier failing: serving from memory and upstream only"
            );
        }
    }

    fn answered(&self) {
        if self.failing.swap(false, Ordering::Relaxed) {
            *self.retry_at.lock().unwrap_or_else(PoisonError::into_inner) = None;
            tracing::info!(target: "tollgate_cache", "cache tier answering again");
        }
    }

    /// Runs one call within the timeout (made only if the tier is not
    /// resting); `None` on an error, a timeout, or while resting.
    async fn call<T>(
        &self,
        counters: &Counters,
        what: &str,
        call: impl FnOnce(&dyn CacheTier) -> TierFuture<T>,
    ) -> Option<T> {
        if self.resting(counters) {
            return None;
        }
        let future = call(&*self.tier);
        match tokio::time::timeout(self.timeout, future).await {
            Ok(Ok(value)) => {
                self.answered();
                Some(value)
            }
            Ok(Err(error)) => {
                self.failed(counters, what, &error);
                None
            }
            Err(_) => {
                self.failed(
                    counters,
                    what,
                    &format_args!("no answer within {:?}", self.timeout),
                );
                None
            }
        }
    }

    /// What the tier holds under `key`; `None` if it did not answer (an
    /// error, a timeout, or resting).
    pub(crate) async fn get(&self, counters: &Counters, key: &str) -> Option<Option<Bytes>> {
        self.call(counters, "get", |t| t.get(key)).await
    }

    pub(crate) async fn put(&self, counters: &Counters, key: &str, value: Bytes, ttl: Duration) {
        let put = self.call(counters, "put", |t| t.put(key, value, ttl));
        if put.await.is_some() {
            Counters::bump(&counters.tier_writes);
        }
    }

    pub(crate) async fn delete(&self, counters: &Counters, key: &str) {
        self.call(counters, "delete", |t| t.delete(key)).await;
    }

    /// Deletes `keys`, one bounded call each, on a task of its own (for
    /// the synchronous `invalidate`); nothing without a runtime.
    pub(crate) fn delete_later(self: &Arc<Self>, counters: Arc<Counters>, keys: Vec<String>) {
        if keys.is_empty() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let tier = self.clone();
        runtime.spawn(async move {
            for key in keys {
                tier.delete(&counters, &key).await;
            }
        });
    }
}

/// Feeds `Hash` implementations into SHA-256 (the same bytes in every
/// process of one build, unlike std's keyed hashers).
struct ShaHasher<'a>(&'a mut Sha256);

impl Hasher for ShaHasher<'_> {
    fn finish(&self) -> u64 {
        0 // never read: the digest is
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

fn put_field(sha: &mut Sha256, bytes: &[u8]) {
    sha.update((bytes.len() as u64).to_le_bytes());
    sha.update(bytes);
}

/// The key a request's entry is filed under in the tier: the hex SHA-256 of
/// the method, the normalized URI, and the request's credential headers
/// (names and values, in name order) and `Credential`. The same in every
/// replica of one build, so replicas share entries per credential; it
/// holds neither the URI nor a credential in clear. `None` for a request
/// with a [`Partition`]: a partition is a hash keyed per process, which no
/// other replica can reproduce, so such a request uses memory only.
pub(crate) fn tier_key(
    method: &Method,
    uri: &str,
    headers: &HeaderMap,
    extensions: &http::Extensions,
    extra: &[HeaderName],
) -> Option<String> {
    if extensions.get::<Partition>().is_some() {
        return None;
    }
    let mut sha = Sha256::new();
    sha.update(b"tollgate-cache tier key 1\0");
    put_field(&mut sha, method.as_str().as_bytes());
    put_field(&mut sha, uri.as_bytes());
    let mut sent: Vec<(&HeaderName, &HeaderValue)> = headers
        .iter()
        .filter(|(name, _)| is_credential(name, extra))
        .collect();
    // Stable: the values of one name keep their order.
    sent.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
    sha.update((sent.len() as u64).to_le_bytes());
    for (name, value) in sent {
        put_field(&mut sha, name.as_str().as_bytes());
        put_field(&mut sha, value.as_bytes());
    }
    match extensions.get::<Credential>() {
        Some(credential) => {
            sha.update([1]);
            std::hash::Hash::hash(credential, &mut ShaHasher(&mut sha));
        }
        None => sha.update([0]),
    }
    Some(hex(&sha.finalize()))
}

/// The tier key of a request with no credential.
pub(crate) fn public_key(method: &Method, uri: &str) -> String {
    tier_key(
        method,
        uri,
        &HeaderMap::new(),
        &http::Extensions::new(),
        &[],
    )
    .unwrap_or_default()
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    out
}

fn version_byte(version: Version) -> u8 {
    match version {
        Version::HTTP_09 => 0,
        Version::HTTP_10 => 1,
        Version::HTTP_2 => 3,
        Version::HTTP_3 => 4,
        _ => 2,
    }
}

fn version_of(byte: u8) -> Option<Version> {
    Some(match byte {
        0 => Version::HTTP_09,
        1 => Version::HTTP_10,
        2 => Version::HTTP_11,
        3 => Version::HTTP_2,
        4 => Version::HTTP_3,
        _ => return None,
    })
}

fn put_short(out: &mut BytesMut, bytes: &[u8]) -> Option<()> {
    out.put_u16(u16::try_from(bytes.len()).ok()?);
    out.put_slice(bytes);
    Some(())
}

fn put_long(out: &mut BytesMut, bytes: &[u8]) -> Option<()> {
    out.put_u32(u32::try_from(bytes.len()).ok()?);
    out.put_slice(bytes);
    Some(())
}

/// `stored` as the tier keeps it, as of `now` (`wall_ms` then), with
/// `fresh` of freshness left. `None` if a field is too long to encode.
///
/// The layout (version 1, big-endian): the version byte; the key (u16
/// length, bytes); the wall clock when written (u64 ms since the UNIX
/// epoch); the age then (u64 ms); the freshness left then (u64 ms); flags
/// (bit 0 `no-cache`, bit 1 may be served stale); the status (u16); the
/// HTTP version (u8); the headers (u32 count, then u16 name length, name,
/// u32 value length, value); the `Vary` values (u16 count, then u16 name
/// length, name, u16 value count, then u32 length and value each); the body
/// (u32 length, bytes); then the first 8 bytes of SHA-256 over all of it.
/// Nothing may follow. `Vary` values of credential headers (`extra` and the
/// built-in secret words) are not kept: the key holds them.
pub(crate) fn encode(
    key: &str,
    stored: &Stored,
    now: Instant,
    wall_ms: u64,
    fresh: Duration,
    extra: &[HeaderName],
) -> Option<Bytes> {
    let headers_len: usize = stored
        .headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 6)
        .sum();
    let mut out = BytesMut::with_capacity(64 + key.len() + headers_len + stored.body.len());
    out.put_u8(TIER_FORMAT_VERSION);
    put_short(&mut out, key.as_bytes())?;
    out.put_u64(wall_ms);
    let age = stored.initial_age + now.saturating_duration_since(stored.stored_at);
    out.put_u64(u64::try_from(age.as_millis()).unwrap_or(u64::MAX));
    out.put_u64(u64::try_from(fresh.as_millis()).unwrap_or(u64::MAX));
    out.put_u8(u8::from(stored.must_revalidate) | (u8::from(stored.serve_stale) << 1));
    out.put_u16(stored.status.as_u16());
    out.put_u8(version_byte(stored.version));
    out.put_u32(u32::try_from(stored.headers.len()).ok()?);
    for (name, value) in &stored.headers {
        put_short(&mut out, name.as_str().as_bytes())?;
        put_long(&mut out, value.as_bytes())?;
    }
    // The values of credential headers the response varies on never leave
    // the process: the tier key already holds their hash (a request with
    // other values has another key), so the entry need not carry them.
    let shared: Vec<_> = stored
        .vary
        .0
        .iter()
        .filter(|(name, _)| !is_credential(name, extra))
        .collect();
    out.put_u16(u16::try_from(shared.len()).ok()?);
    for (name, values) in shared {
        put_short(&mut out, name.as_str().as_bytes())?;
        out.put_u16(u16::try_from(values.len()).ok()?);
        for value in values {
            put_long(&mut out, value.as_bytes())?;
        }
    }
    put_long(&mut out, &stored.body)?;
    // A checksum of everything before it: a value damaged in the tier (a
    // flipped bit in the body or the status) is a miss, not a response
    // nobody sent.
    let sum = checksum(&out);
    out.put_slice(&sum);
    Some(out.freeze())
}

/// The first 8 bytes of SHA-256 over an encoded entry.
fn checksum(bytes: &[u8]) -> [u8; 8] {
    let digest = Sha256::digest(bytes);
    let mut sum = [0u8; 8];
    sum.copy_from_slice(&digest[..8]);
    sum
}

/// Reads an encoded entry, never panicking on any input.
struct Reader {
    bytes: Bytes,
}

impl Reader {
    fn take(&mut self, n: usize) -> Option<Bytes> {
        (self.bytes.len() >= n).then(|| self.bytes.split_to(n))
    }

    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }

    fn u16(&mut self) -> Option<u16> {
        let b = self.take(2)?;
        Some(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Option<u32> {
        let b = self.take(4)?;
        Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Option<u64> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(&b);
        Some(u64::from_be_bytes(a))
    }

    fn short(&mut self) -> Option<Bytes> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }

    fn long(&mut self) -> Option<Bytes> {
        let n = usize::try_from(self.u32()?).ok()?;
        self.take(n)
    }

    fn name(&mut self) -> Option<HeaderName> {
        HeaderName::from_bytes(&self.short()?).ok()
    }

    fn value(&mut self) -> Option<HeaderValue> {
        HeaderValue::from_maybe_shared(self.long()?).ok()
    }
}

/// An entry read back from the tier, as of `now` (`wall_ms` then): the
/// stored response with its age and freshness moved on by the time since
/// it was written (a clock behind the writer's counts as no time), or
/// `None` for anything but a well-formed entry of this version filed under
/// `key` with freshness left. `retention`: how long past freshness this
/// process keeps it, from its headers.
pub(crate) fn decode(
    bytes: Bytes,
    key: &str,
    now: Instant,
    wall_ms: u64,
    retention: impl Fn(&HeaderMap) -> Duration,
) -> Option<Stored> {
    let mut bytes = bytes;
    let at = bytes.len().checked_sub(8)?;
    let sum = bytes.split_off(at);
    if checksum(&bytes) != *sum {
        return None;
    }
    let mut r = Reader { bytes };
    if r.u8()? != TIER_FORMAT_VERSION {
        return None;
    }
    if *r.short()? != *key.as_bytes() {
        return None;
    }
    let written = r.u64()?;
    let age = Duration::from_millis(r.u64()?);
    let fresh = Duration::from_millis(r.u64()?);
    let flags = r.u8()?;
    let status = StatusCode::from_u16(r.u16()?).ok()?;
    let version = version_of(r.u8()?)?;
    let count = r.u32()?;
    let mut headers = HeaderMap::new();
    for _ in 0..count {
        let name = r.name()?;
        let value = r.value()?;
        headers.append(name, value);
    }
    let vary_count = r.u16()?;
    let mut vary = Vec::new();
    for _ in 0..vary_count {
        let name = r.name()?;
        let n = r.u16()?;
        let mut values = Vec::new();
        for _ in 0..n {
            values.push(r.value()?);
        }
        vary.push((name, values));
    }
    let body = r.long()?;
    if !r.bytes.is_empty() {
        return None;
    }
    let elapsed = Duration::from_millis(wall_ms.saturating_sub(written));
    let left = fresh.checked_sub(elapsed).filter(|d| !d.is_zero())?;
    let must_revalidate = flags & 1 != 0;
    let fresh_until = later(now, left.min(crate::policy::MAX_FRESHNESS));
    let stale_until = later(fresh_until, retention(&headers));
    Some(Stored {
        status,
        version,
        headers,
        body,
        stored_at: now,
        initial_age: (age + elapsed).min(crate::policy::MAX_FRESHNESS),
        fresh_until,
        stale_until,
        must_revalidate,
        serve_stale: flags & 2 != 0,
        vary: Vary(vary),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn stored(now: Instant) -> Stored {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        headers.append("x-many", HeaderValue::from_static("1"));
        headers.append("x-many", HeaderValue::from_static("2"));
        headers.insert("etag", HeaderValue::from_static("\"v1\""));
        Stored {
            status: StatusCode::CREATED,
            version: Version::HTTP_2,
            headers,
            body: Bytes::from_static(b"{\"id\":1}"),
            stored_at: now,
            initial_age: Duration::from_secs(5),
            fresh_until: now + Duration::from_secs(60),
            stale_until: now + Duration::from_secs(60),
            must_revalidate: false,
            serve_stale: true,
            vary: Vary(vec![(
                HeaderName::from_static("accept-language"),
                vec![HeaderValue::from_static("fr")],
            )]),
        }
    }

    #[test]
    fn an_entry_round_trips_and_ages_by_the_wall_clock() {
        let now = Instant::now();
        let s = stored(now);
        let bytes = encode("k", &s, now, 1_000_000, Duration::from_secs(60), &[]).expect("encodes");
        assert_eq!(bytes[0], TIER_FORMAT_VERSION);
        // Read 10 s later by another process.
        let back = decode(bytes, "k", now, 1_010_000, |_| Duration::ZERO).expect("decodes");
        assert_eq!(back.status, StatusCode::CREATED);
        assert_eq!(back.version, Version::HTTP_2);
        assert_eq!(back.headers, s.headers);
        assert_eq!(back.body, s.body);
        assert_eq!(back.initial_age, Duration::from_secs(15));
        assert_eq!(back.fresh_until, now + Duration::from_secs(50));
        assert!(back.serve_stale && !back.must_revalidate);
        let mut fr = HeaderMap::new();
        fr.insert("accept-language", HeaderValue::from_static("fr"));
        assert!(back.vary.matches(&fr));
        assert!(!back.vary.matches(&HeaderMap::new()));
    }

    #[test]
    fn another_key_another_version_no_freshness_or_trailing_bytes_is_no_entry() {
        let now = Instant::now();
        let bytes =
            encode("k", &stored(now), now, 1_000, Duration::from_secs(60), &[]).expect("ok");
        assert!(decode(bytes.clone(), "other", now, 1_000, |_| Duration::ZERO).is_none());
        assert!(decode(bytes.clone(), "k", now, 61_000, |_| Duration::ZERO).is_none());
        let mut v2 = BytesMut::from(&bytes[..]);
        v2[0] = 2;
        assert!(decode(v2.freeze(), "k", now, 1_000, |_| Duration::ZERO).is_none());
        let mut longer = BytesMut::from(&bytes[..]);
        longer.put_u8(0);
        assert!(decode(longer.freeze(), "k", now, 1_000, |_| Duration::ZERO).is_none());
        // A reader whose clock is behind the writer's counts no time.
        assert!(decode(bytes, "k", now, 0, |_| Duration::ZERO).is_some());
    }

    #[test]
    fn keys_separate_methods_uris_and_credentials_and_hide_them() {
        let get = Method::GET;
        let ext = http::Extensions::new();
        let mut alice = HeaderMap::new();
        alice.insert("authorization", HeaderValue::from_static("Bearer alice"));
        let mut bob = HeaderMap::new();
        bob.insert("authorization", HeaderValue::from_static("Bearer bob"));
        let a = tier_key(&get, "http://h/x", &alice, &ext, &[]).expect("key");
        assert_eq!(a.len(), 64);
        assert!(!a.contains("alice") && !a.contains("h/x"));
        assert_eq!(
            Some(&a),
            tier_key(&get, "http://h/x", &alice, &ext, &[]).as_ref()
        );
        assert_ne!(
            Some(&a),
            tier_key(&get, "http://h/x", &bob, &ext, &[]).as_ref()
        );
        assert_ne!(a, public_key(&get, "http://h/x"));
        assert_ne!(
            public_key(&Method::HEAD, "http://h/x"),
            public_key(&get, "http://h/x")
        );
        assert_ne!(
            public_key(&get, "http://h/y"),
            public_key(&get, "http://h/x")
        );
        let mut with_credential = http::Extensions::new();
        with_credential.insert(Credential::bearer("alice").expect("valid"));
        let c = tier_key(&get, "http://h/x", &HeaderMap::new(), &with_credential, &[]);
        assert_ne!(c, Some(public_key(&get, "http://h/x")));
        let mut partitioned = http::Extensions::new();
        partitioned.insert(Partition::of("t1"));
        assert_eq!(
            tier_key(&get, "http://h/x", &HeaderMap::new(), &partitioned, &[]),
            None
        );
    }

    proptest! {
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let now = Instant::now();
            let _ = decode(Bytes::from(bytes), "k", now, 0, |_| Duration::ZERO);
        }

        #[test]
        fn every_cut_of_an_entry_is_no_entry(cut in 0usize..200) {
            let now = Instant::now();
            let bytes = encode("k", &stored(now), now, 0, Duration::from_secs(60), &[]).expect("ok");
            let cut = cut.min(bytes.len() - 1);
            prop_assert!(decode(bytes.slice(..cut), "k", now, 0, |_| Duration::ZERO).is_none());
        }
    }
}
