//! The second tier behind moka, attacked with in-process tiers on paused
//! time: two layers sharing one tier act as two replicas. A map tier (with
//! TTLs on tokio's clock), a slow one, a failing one, one answering
//! garbage, and a hostile one answering another key's entry.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::header::{AGE, AUTHORIZATION};
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Full};
use tokio::time::Instant;
use tollgate_cache::{
    CacheLayer, CacheStatus, CacheTier, Freshness, FromTier, Partition, TierFuture,
    DEFAULT_TIER_TIMEOUT, TIER_FORMAT_VERSION, TIER_RETRY,
};
use tower::{service_fn, Layer, ServiceExt};

/// A tier in a map, with TTLs on tokio's clock; counts its calls and keeps
/// the TTL of each put.
#[derive(Clone, Default)]
struct MapTier(Arc<MapState>);

impl std::ops::Deref for MapTier {
    type Target = MapState;
    fn deref(&self) -> &MapState {
        &self.0
    }
}

#[derive(Default)]
struct MapState {
    entries: Mutex<HashMap<String, (Bytes, Instant)>>,
    gets: AtomicUsize,
    puts: Mutex<Vec<(String, Duration)>>,
    deletes: AtomicUsize,
    /// Each get waits this long first.
    delay: Mutex<Duration>,
}

impl MapState {
    fn gets(&self) -> usize {
        self.gets.load(Ordering::SeqCst)
    }
    fn puts(&self) -> Vec<(String, Duration)> {
        self.puts.lock().expect("lock").clone()
    }
    fn values(&self) -> Vec<Bytes> {
        self.entries
            .lock()
            .expect("lock")
            .values()
            .map(|(v, _)| v.clone())
            .collect()
    }
    fn set_all(&self, value: &Bytes) {
        for entry in self.entries.lock().expect("lock").values_mut() {
            entry.0 = value.clone();
        }
    }
}

impl CacheTier for MapTier {
    fn get(&self, key: &str) -> TierFuture<Option<Bytes>> {
        let this = self.clone();
        let key = key.to_owned();
        Box::pin(async move {
            this.gets.fetch_add(1, Ordering::SeqCst);
            let delay = *this.delay.lock().expect("lock");
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let entries = this.entries.lock().expect("lock");
            Ok(entries
                .get(&key)
                .filter(|(_, until)| Instant::now() < *until)
                .map(|(v, _)| v.clone()))
        })
    }

    fn put(&self, key: &str, value: Bytes, ttl: Duration) -> TierFuture<()> {
        self.puts.lock().expect("lock").push((key.to_owned(), ttl));
        self.entries
            .lock()
            .expect("lock")
            .insert(key.to_owned(), (value, Instant::now() + ttl));
        Box::pin(async { Ok(()) })
    }

    fn delete(&self, key: &str) -> TierFuture<()> {
        self.deletes.fetch_add(1, Ordering::SeqCst);
        self.entries.lock().expect("lock").remove(key);
        Box::pin(async { Ok(()) })
    }
}

/// Answers every get with the last value put, whatever its key: a tier
/// that mixes up partitions.
#[derive(Default)]
struct HostileTier(Mutex<Option<Bytes>>);

impl CacheTier for HostileTier {
    fn get(&self, _key: &str) -> TierFuture<Option<Bytes>> {
        let last = self.0.lock().expect("lock").clone();
        Box::pin(async move { Ok(last) })
    }
    fn put(&self, _key: &str, value: Bytes, _ttl: Duration) -> TierFuture<()> {
        *self.0.lock().expect("lock") = Some(value);
        Box::pin(async { Ok(()) })
    }
    fn delete(&self, _key: &str) -> TierFuture<()> {
        Box::pin(async { Ok(()) })
    }
}

/// Fails every call while `down`.
#[derive(Clone, Default)]
struct FlakyTier(Arc<FlakyState>);

impl std::ops::Deref for FlakyTier {
    type Target = FlakyState;
    fn deref(&self) -> &FlakyState {
        &self.0
    }
}

#[derive(Default)]
struct FlakyState {
    down: AtomicBool,
    calls: AtomicUsize,
    inner: MapTier,
}

impl CacheTier for FlakyTier {
    fn get(&self, key: &str) -> TierFuture<Option<Bytes>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.down.load(Ordering::SeqCst) {
            return Box::pin(async { Err("connection refused".into()) });
        }
        self.inner.get(key)
    }
    fn put(&self, key: &str, value: Bytes, ttl: Duration) -> TierFuture<()> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.down.load(Ordering::SeqCst) {
            return Box::pin(async { Err("connection refused".into()) });
        }
        self.inner.put(key, value, ttl)
    }
    fn delete(&self, key: &str) -> TierFuture<()> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.down.load(Ordering::SeqCst) {
            return Box::pin(async { Err("connection refused".into()) });
        }
        self.inner.delete(key)
    }
}

/// An upstream answering with the path, the `Authorization` and the
/// `Accept-Language` it saw; every `x-reply-NAME` request header comes back
/// as a `NAME` response header. Counts its calls.
fn upstream() -> (
    Arc<AtomicUsize>,
    impl tower::Service<
            Request<()>,
            Response = Response<Full<Bytes>>,
            Error = Infallible,
            Future = impl Send,
        > + Clone
        + Send
        + 'static,
) {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let service = service_fn(move |req: Request<()>| {
        c.fetch_add(1, Ordering::SeqCst);
        async move {
            let header = |name: &str| {
                req.headers()
                    .get(name)
                    .map_or("-", |v| v.to_str().unwrap_or("?"))
                    .to_owned()
            };
            let body = format!(
                "{} {} for {} in {}",
                req.method(),
                req.uri().path(),
                header("authorization"),
                header("accept-language")
            );
            let mut response = Response::new(Full::new(Bytes::from(body)));
            for (name, value) in req.headers() {
                if let Some(reply) = name.as_str().strip_prefix("x-reply-") {
                    response.headers_mut().append(
                        http::HeaderName::try_from(reply).expect("name"),
                        value.clone(),
                    );
                }
            }
            Ok::<_, Infallible>(response)
        }
    });
    (calls, service)
}

fn get(path: &str) -> http::request::Builder {
    Request::get(format!("http://api.test{path}"))
}

fn replica(tier: Arc<dyn CacheTier>, freshness: Freshness) -> CacheLayer {
    CacheLayer::builder(freshness).tier(tier).build()
}

fn fixed(secs: u64) -> Freshness {
    Freshness::Fixed(Duration::from_secs(secs))
}

fn status<B>(response: &Response<B>) -> CacheStatus {
    *response.extensions().get::<CacheStatus>().expect("status")
}

fn from_tier<B>(response: &Response<B>) -> bool {
    response.extensions().get::<FromTier>().is_some()
}

async fn body<B>(response: Response<B>) -> String
where
    B: http_body::Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    String::from_utf8(bytes.to_vec()).expect("utf-8")
}

#[tokio::test(start_paused = true)]
async fn a_replica_answers_from_the_tier_what_another_fetched() {
    let tier = MapTier::default();
    let (calls, up) = upstream();
    let a = replica(Arc::new(tier.clone()), fixed(60));
    let b = replica(Arc::new(tier.clone()), fixed(60));
    let first = a
        .layer(up.clone())
        .oneshot(get("/p/1").body(()).expect("req"))
        .await
        .expect("a");
    assert_eq!(status(&first), CacheStatus::Miss);
    assert_eq!(tier.puts().len(), 1, "a fill writes the tier");
    let first = body(first).await;

    let other = b
        .layer(up.clone())
        .oneshot(get("/p/1").body(()).expect("req"))
        .await
        .expect("b");
    assert_eq!(status(&other), CacheStatus::Hit);
    assert!(from_tier(&other), "a tier hit says so");
    assert_eq!(other.headers()[AGE], "0");
    assert_eq!(body(other).await, first);
    assert_eq!(calls.load(Ordering::SeqCst), 1, "B never went upstream");
    assert_eq!(tier.puts().len(), 1, "a tier hit is not written back");

    // The tier hit filled B's memory: the next one never asks the tier.
    let gets = tier.gets();
    let again = b
        .layer(up)
        .oneshot(get("/p/1").body(()).expect("req"))
        .await
        .expect("b");
    assert_eq!(status(&again), CacheStatus::Hit);
    assert!(!from_tier(&again), "a memory hit is not a tier hit");
    assert_eq!(tier.gets(), gets);
    let stats = b.stats();
    assert_eq!((stats.hits, stats.tier_hits, stats.misses), (2, 1, 0));
    assert_eq!(a.stats().tier_misses, 1, "A looked first and found nothing");
}

#[tokio::test(start_paused = true)]
async fn only_the_flights_leader_asks_the_tier_and_its_followers_share_the_answer() {
    let tier = MapTier::default();
    let (calls, up) = upstream();
    let a = replica(Arc::new(tier.clone()), fixed(60));
    a.layer(up.clone())
        .oneshot(get("/p/1").body(()).expect("req"))
        .await
        .expect("a");
    *tier.delay.lock().expect("lock") = Duration::from_millis(2);
    let gets = tier.gets();

    let b = replica(Arc::new(tier.clone()), fixed(60));
    let service = b.layer(up);
    let burst: Vec<_> = (0..10)
        .map(|_| {
            let s = service.clone();
            tokio::spawn(async move { s.oneshot(get("/p/1").body(()).expect("req")).await })
        })
        .collect();
    let mut statuses = Vec::new();
    for task in burst {
        let response = task.await.expect("task").expect("response");
        statuses.push((status(&response), from_tier(&response)));
    }
    assert_eq!(
        tier.gets() - gets,
        1,
        "one look in the tier for ten requests"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1, "and none upstream");
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == (CacheStatus::Hit, true))
            .count(),
        1
    );
    assert_eq!(
        statuses
            .iter()
            .filter(|s| s.0 == CacheStatus::Coalesced)
            .count(),
        9,
        "{statuses:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn the_tier_ttl_is_the_remaining_freshness() {
    let tier = MapTier::default();
    let (_, up) = upstream();
    let http = replica(
        Arc::new(tier.clone()),
        Freshness::Http { default_ttl: None },
    );
    http.layer(up.clone())
        .oneshot(
            get("/aged")
                .header("x-reply-cache-control", "max-age=60")
                .header("x-reply-age", "20")
                .body(())
                .expect("req"),
        )
        .await
        .expect("fill");
    assert_eq!(
        tier.puts()[0].1,
        Duration::from_secs(40),
        "60 s fresh, 20 s old"
    );

    let fixed = replica(Arc::new(tier.clone()), fixed(30));
    fixed
        .layer(up)
        .oneshot(get("/fixed").body(()).expect("req"))
        .await
        .expect("fill");
    assert_eq!(tier.puts()[1].1, Duration::from_secs(30));
}

#[tokio::test(start_paused = true)]
async fn an_entry_with_no_freshness_left_is_not_written() {
    let tier = MapTier::default();
    let (_, up) = upstream();
    let layer = replica(
        Arc::new(tier.clone()),
        Freshness::Http { default_ttl: None },
    );
    // Stored for revalidation, never fresh: nothing for another replica.
    let response = layer
        .layer(up.clone())
        .oneshot(
            get("/no-cache")
                .header("x-reply-cache-control", "no-cache")
                .header("x-reply-etag", "\"v1\"")
                .body(())
                .expect("req"),
        )
        .await
        .expect("fill");
    assert_eq!(status(&response), CacheStatus::Miss);
    assert!(layer.stats().entries >= 1, "kept in memory to revalidate");
    // Already as old as its max-age.
    layer
        .layer(up)
        .oneshot(
            get("/old")
                .header("x-reply-cache-control", "max-age=10")
                .header("x-reply-age", "10")
                .header("x-reply-etag", "\"v1\"")
                .body(())
                .expect("req"),
        )
        .await
        .expect("fill");
    assert!(tier.puts().is_empty(), "{:?}", tier.puts());
    assert_eq!(layer.stats().tier_writes, 0);
}

#[tokio::test(start_paused = true)]
async fn an_entry_ages_across_replicas_and_expires_when_it_would_have() {
    let tier = MapTier::default();
    let (calls, up) = upstream();
    let a = replica(Arc::new(tier.clone()), fixed(60));
    let b = replica(Arc::new(tier.clone()), fixed(60));
    let c = replica(Arc::new(tier.clone()), fixed(60));
    a.layer(up.clone())
        .oneshot(get("/p/1").body(()).expect("req"))
        .await
        .expect("a");
    tokio::time::advance(Duration::from_secs(50)).await;
    let late = b
        .layer(up.clone())
        .oneshot(get("/p/1").body(()).expect("req"))
        .await
        .expect("b");
    assert!(from_tier(&late));
    assert_eq!(late.headers()[AGE], "50", "the age it has at the writer");
    tokio::time::advance(Duration::from_secs(10)).await;
    let b_after = b
        .layer(up.clone())
        .oneshot(get("/p/1").body(()).expect("req"))
        .await
        .expect("b");
    assert_eq!(
        status(&b_after),
        CacheStatus::Miss,
        "B's copy ends when A's does"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    // The new fill is fresh again for C.
    let fresh = c
        .layer(up)
        .oneshot(get("/p/1").body(()).expect("req"))
        .await
        .expect("c");
    assert!(from_tier(&fresh));
    assert_eq!(fresh.headers()[AGE], "0");
}

#[tokio::test(start_paused = true)]
async fn credential_partitions_hold_across_replicas() {
    let tier = MapTier::default();
    let (calls, up) = upstream();
    let a = replica(Arc::new(tier.clone()), fixed(60));
    let b = replica(Arc::new(tier.clone()), fixed(60));
    let as_user = |who: &str| {
        get("/me")
            .header(AUTHORIZATION, format!("Bearer {who}"))
            .body(())
            .expect("req")
    };
    a.layer(up.clone())
        .oneshot(as_user("alice"))
        .await
        .expect("a");
    for (key, _) in tier.puts() {
        assert!(!key.contains("alice") && !key.contains("/me"), "{key}");
    }
    assert!(
        tier.values()
            .iter()
            .all(|v| !v.windows(5).any(|w| w == b"alice".as_slice())
                || v.windows(12).any(|w| w == b"for Bearer a".as_slice())),
        "only the body may name the user, never a key or header"
    );

    let bob = b
        .layer(up.clone())
        .oneshot(as_user("bob"))
        .await
        .expect("bob");
    assert_eq!(status(&bob), CacheStatus::Miss);
    assert_eq!(body(bob).await, "GET /me for Bearer bob in -");
    let anonymous = b
        .layer(up.clone())
        .oneshot(get("/me").body(()).expect("req"))
        .await
        .expect("anon");
    assert_eq!(status(&anonymous), CacheStatus::Miss);
    assert_eq!(calls.load(Ordering::SeqCst), 3);

    let alice = b
        .layer(up.clone())
        .oneshot(as_user("alice"))
        .await
        .expect("alice");
    assert!(
        from_tier(&alice),
        "the same credential shares across replicas"
    );
    assert_eq!(body(alice).await, "GET /me for Bearer alice in -");

    // A `tollgate_core::Credential` in the extensions partitions too.
    let with = |who: &str| {
        let mut r = get("/me").body(()).expect("req");
        r.extensions_mut().insert(tollgate_core_credential(who));
        r
    };
    a.layer(up.clone())
        .oneshot(with("carol"))
        .await
        .expect("carol");
    let dave = b
        .layer(up.clone())
        .oneshot(with("dave"))
        .await
        .expect("dave");
    assert!(!from_tier(&dave));
    let carol = b.layer(up).oneshot(with("carol")).await.expect("carol");
    assert!(from_tier(&carol));
}

fn tollgate_core_credential(who: &str) -> tollgate_core::Credential {
    tollgate_core::Credential::bearer(who).expect("valid")
}

#[tokio::test(start_paused = true)]
async fn a_partitioned_request_never_uses_the_tier() {
    // A `Partition` is a hash keyed per process: no other replica could
    // find its entries, so it stays in memory.
    let tier = MapTier::default();
    let (_, up) = upstream();
    let a = replica(Arc::new(tier.clone()), fixed(60));
    let mut req = get("/tenant").body(()).expect("req");
    req.extensions_mut().insert(Partition::of("t1"));
    a.layer(up).oneshot(req).await.expect("a");
    assert_eq!((tier.gets(), tier.puts().len()), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn vary_holds_across_replicas() {
    let tier = MapTier::default();
    let (calls, up) = upstream();
    let in_lang = |lang: &str| {
        get("/greeting")
            .header("accept-language", lang)
            .header("x-reply-vary", "accept-language")
            .body(())
            .expect("req")
    };
    let a = replica(Arc::new(tier.clone()), fixed(60));
    let b = replica(Arc::new(tier.clone()), fixed(60));
    let c = replica(Arc::new(tier.clone()), fixed(60));
    a.layer(up.clone())
        .oneshot(in_lang("fr"))
        .await
        .expect("fr");
    let de = b
        .layer(up.clone())
        .oneshot(in_lang("de"))
        .await
        .expect("de");
    assert_eq!(
        status(&de),
        CacheStatus::Miss,
        "French is no answer to German"
    );
    assert_eq!(body(de).await, "GET /greeting for - in de");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    // The tier keeps the latest variant of a key.
    let de = c.layer(up).oneshot(in_lang("de")).await.expect("de");
    assert!(from_tier(&de));
    assert_eq!(body(de).await, "GET /greeting for - in de");
}

#[tokio::test(start_paused = true)]
async fn garbage_and_other_versions_are_misses_never_errors() {
    let tier = MapTier::default();
    let (calls, up) = upstream();
    let a = replica(Arc::new(tier.clone()), fixed(60));
    a.layer(up.clone())
        .oneshot(get("/p/1").body(()).expect("req"))
        .await
        .expect("a");
    let good = tier.values().pop().expect("written");
    assert_eq!(good[0], TIER_FORMAT_VERSION);

    let mut next_version = good.to_vec();
    next_version[0] = TIER_FORMAT_VERSION + 1;
    let mut cut = good.to_vec();
    cut.truncate(good.len() - 3);
    let mut longer = good.to_vec();
    longer.push(0);
    let hostile_lengths = {
        let mut v = good.to_vec();
        v[1] = 0xff;
        v[2] = 0xff;
        v
    };
    for (i, bad) in [
        Bytes::new(),
        Bytes::from_static(b"not an entry at all"),
        Bytes::from(next_version),
        Bytes::from(cut),
        Bytes::from(longer),
        Bytes::from(hostile_lengths),
    ]
    .into_iter()
    .enumerate()
    {
        tier.set_all(&bad);
        let b = replica(Arc::new(tier.clone()), fixed(60));
        let response = b
            .layer(up.clone())
            .oneshot(get("/p/1").body(()).expect("req"))
            .await;
        let response = response.unwrap_or_else(|e| panic!("value {i} failed a request: {e}"));
        assert_eq!(status(&response), CacheStatus::Miss, "value {i}");
        assert_eq!(body(response).await, "GET /p/1 for - in -");
        assert_eq!(b.stats().tier_misses, 1, "value {i}");
        assert_eq!(b.stats().tier_errors, 0, "value {i}");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 7);
}

#[tokio::test(start_paused = true)]
async fn a_hostile_tier_answering_another_partitions_entry_is_a_miss() {
    let tier = Arc::new(HostileTier::default());
    let (calls, up) = upstream();
    let a = replica(tier.clone(), fixed(60));
    let b = replica(tier.clone(), fixed(60));
    let as_user = |who: &str| {
        get("/me")
            .header(AUTHORIZATION, format!("Bearer {who}"))
            .body(())
            .expect("req")
    };
    a.layer(up.clone())
        .oneshot(as_user("alice"))
        .await
        .expect("alice");
    let bob = b
        .layer(up.clone())
        .oneshot(as_user("bob"))
        .await
        .expect("bob");
    assert!(!from_tier(&bob));
    assert_eq!(
        body(bob).await,
        "GET /me for Bearer bob in -",
        "never Alice's"
    );
    // Nor another URI's, nor a credentialed entry for an anonymous request.
    let anonymous = b
        .layer(up.clone())
        .oneshot(get("/me").body(()).expect("req"))
        .await
        .expect("anon");
    assert_eq!(body(anonymous).await, "GET /me for - in -");
    let other = b
        .layer(up)
        .oneshot(get("/other").body(()).expect("req"))
        .await
        .expect("other");
    assert_eq!(body(other).await, "GET /other for - in -");
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    assert_eq!(b.stats().tier_hits, 0);
}

#[tokio::test(start_paused = true)]
async fn an_entry_over_the_size_limit_stays_out_of_the_tier() {
    let tier = MapTier::default();
    let (_, up) = upstream();
    // The body ("GET /p/1 for - in -", 19 bytes) fits; body, headers and
    // bookkeeping encoded do not.
    let small = CacheLayer::builder(fixed(60))
        .max_entry_bytes(40)
        .tier(Arc::new(tier.clone()))
        .build();
    small
        .layer(up.clone())
        .oneshot(get("/p/1").body(()).expect("req"))
        .await
        .expect("fill");
    assert_eq!(small.stats().entries, 1, "stored in memory");
    assert!(tier.puts().is_empty(), "not in the tier");

    // And an oversized value in the tier is a miss.
    let roomy = replica(Arc::new(tier.clone()), fixed(60));
    roomy
        .layer(up.clone())
        .oneshot(get("/p/2").body(()).expect("req"))
        .await
        .expect("fill");
    assert_eq!(tier.puts().len(), 1);
    let strict = CacheLayer::builder(fixed(60))
        .max_entry_bytes(40)
        .tier(Arc::new(tier.clone()))
        .build();
    let response = strict
        .layer(up)
        .oneshot(get("/p/2").body(()).expect("req"))
        .await
        .expect("ok");
    assert!(!from_tier(&response));
    assert_eq!(strict.stats().tier_misses, 1);
}

#[tokio::test(start_paused = true)]
async fn a_slow_tier_is_a_miss_within_the_timeout_then_left_alone_for_a_while() {
    let tier = MapTier::default();
    *tier.delay.lock().expect("lock") = Duration::from_secs(5);
    let (calls, up) = upstream();
    let a = replica(Arc::new(tier.clone()), fixed(60));
    let service = a.layer(up);
    let started = Instant::now();
    let response = service
        .clone()
        .oneshot(get("/p/1").body(()).expect("req"))
        .await
        .expect("ok");
    assert_eq!(status(&response), CacheStatus::Miss);
    assert_eq!(
        started.elapsed(),
        DEFAULT_TIER_TIMEOUT,
        "waited the timeout, no longer"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(a.stats().tier_errors, 1);
    assert!(
        tier.puts().is_empty(),
        "a failing tier is not written to at once"
    );

    // Left alone for a while: no wait at all.
    let started = Instant::now();
    service
        .clone()
        .oneshot(get("/p/2").body(()).expect("req"))
        .await
        .expect("ok");
    assert_eq!(started.elapsed(), Duration::ZERO);
    assert_eq!(tier.gets(), 1);
    assert!(a.stats().tier_skipped >= 1);
    assert_eq!(a.stats().tier_misses, 0, "no answer is not a miss");

    // Then asked again, and used once it answers in time.
    *tier.delay.lock().expect("lock") = Duration::ZERO;
    tokio::time::advance(TIER_RETRY).await;
    service
        .clone()
        .oneshot(get("/p/3").body(()).expect("req"))
        .await
        .expect("ok");
    assert_eq!(tier.gets(), 2);
    assert_eq!(tier.puts().len(), 1, "written again");
}

#[tokio::test(start_paused = true)]
async fn tier_errors_never_fail_a_request() {
    let tier = FlakyTier::default();
    tier.down.store(true, Ordering::SeqCst);
    let (calls, up) = upstream();
    let a = CacheLayer::builder(fixed(60))
        .tier(Arc::new(tier.clone()))
        .tier_timeout(Duration::from_millis(5))
        .build();
    let service = a.layer(up);
    for i in 0..3 {
        let r = service
            .clone()
            .oneshot(get(&format!("/p/{i}")).body(()).expect("req"))
            .await;
        assert_eq!(status(&r.expect("never fails")), CacheStatus::Miss);
    }
    // Memory still works.
    let hit = service
        .clone()
        .oneshot(get("/p/0").body(()).expect("req"))
        .await
        .expect("hit");
    assert_eq!(status(&hit), CacheStatus::Hit);
    let post = Request::post("http://api.test/p/0").body(()).expect("req");
    assert!(service.clone().oneshot(post).await.is_ok(), "a write too");
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    assert_eq!(a.stats().tier_errors, 1, "one failure, then left alone");

    tier.down.store(false, Ordering::SeqCst);
    tokio::time::advance(TIER_RETRY).await;
    service
        .clone()
        .oneshot(get("/p/9").body(()).expect("req"))
        .await
        .expect("ok");
    assert_eq!(a.stats().tier_writes, 1, "back in use by itself");
}

#[tokio::test(start_paused = true)]
async fn a_write_drops_the_tiers_copy_so_no_replica_reads_the_old_one() {
    let tier = MapTier::default();
    let (calls, up) = upstream();
    let a = replica(Arc::new(tier.clone()), fixed(60));
    let b = replica(Arc::new(tier.clone()), fixed(60));
    a.layer(up.clone())
        .oneshot(get("/p/1").body(()).expect("req"))
        .await
        .expect("fill");
    a.layer(up.clone())
        .oneshot(
            get("/p/1")
                .header(AUTHORIZATION, "Bearer w")
                .body(())
                .expect("req"),
        )
        .await
        .expect("fill");
    assert_eq!(tier.values().len(), 2);
    let write = Request::put("http://api.test/p/1")
        .header(AUTHORIZATION, "Bearer w")
        .body(())
        .expect("req");
    b.layer(up.clone()).oneshot(write).await.expect("write");
    assert!(
        tier.values().is_empty(),
        "the public and the writer's copies are gone"
    );
    // The writer's own replica does not find it in the tier either.
    let after = b
        .layer(up.clone())
        .oneshot(get("/p/1").body(()).expect("req"))
        .await
        .expect("read");
    assert_eq!(status(&after), CacheStatus::Miss);

    // `invalidate` drops the public copy too.
    let c = replica(Arc::new(tier.clone()), fixed(60));
    c.layer(up.clone())
        .oneshot(get("/p/2").body(()).expect("req"))
        .await
        .expect("fill");
    assert!(tier
        .puts()
        .iter()
        .any(|(_, ttl)| *ttl == Duration::from_secs(60)));
    let before = tier.values().len();
    c.invalidate(&"http://api.test/p/2".parse().expect("uri"));
    tokio::task::yield_now().await;
    tokio::task::yield_now().await;
    assert_eq!(tier.values().len(), before - 1);
    let _ = calls;
    let _ = Method::GET;
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

    /// Whatever the order of requests, the replica that serves them, the
    /// writes between them and the time that passes, each response is the
    /// one fetched with the request's own credential and language (or with
    /// none).
    #[test]
    fn no_replica_ever_serves_another_credentials_or_languages_response(
        calls in proptest::collection::vec(
            (0usize..3, 0usize..4, 0usize..2, 0usize..3, 0u8..10),
            1..40,
        )
    ) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .expect("runtime");
        rt.block_on(async {
            let tier = MapTier::default();
            let (_, up) = upstream();
            let replicas: Vec<CacheLayer> =
                (0..3).map(|_| replica(Arc::new(tier.clone()), fixed(5))).collect();
            let users = [None, Some("Bearer alice"), Some("Bearer bob"), Some("Basic Ym9iOg==")];
            let langs = ["fr", "de"];
            for (at, user, lang, path, what) in calls {
                let service = replicas[at].layer(up.clone());
                let mut request = get(&format!("/p{path}"))
                    .header("accept-language", langs[lang])
                    .header("x-reply-vary", "accept-language");
                if let Some(auth) = users[user] {
                    request = request.header(AUTHORIZATION, auth);
                }
                match what {
                    0 => {
                        let write = Request::post(format!("http://api.test/p{path}"))
                            .body(())
                            .expect("req");
                        service.oneshot(write).await.expect("write");
                    }
                    1 => tokio::time::advance(Duration::from_secs(2)).await,
                    _ => {
                        let response = service
                            .oneshot(request.body(()).expect("req"))
                            .await
                            .expect("response");
                        let expected = format!(
                            "GET /p{path} for {} in {}",
                            users[user].unwrap_or("-"),
                            langs[lang]
                        );
                        assert_eq!(body(response).await, expected);
                    }
                }
            }
        });
    }
}
