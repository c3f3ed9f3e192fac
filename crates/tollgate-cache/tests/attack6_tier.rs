//! Adversary 6: the shared cache tier behind moka, attacked with hostile
//! in-process tiers on paused time. Two layers sharing one tier act as two
//! replicas.
//!
//! The tier here behaves like Redis where it matters: a command that was
//! sent is executed even if its caller stops waiting (a put or delete that
//! "answers late" still lands), and every entry has a TTL on tokio's clock.
//!
//! Tests marked `#[ignore = "BROKEN: ..."]` fail today and name the promise
//! they break; the others are guards.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::header::{AGE, AUTHORIZATION, CACHE_CONTROL};
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Full};
use tokio::sync::Notify;
use tokio::time::Instant;
use tollgate_cache::{
    CacheLayer, CacheStatus, CacheTier, Freshness, FromTier, TierFuture, DEFAULT_TIER_TIMEOUT,
    TIER_RETRY,
};
use tower::{service_fn, Layer, ServiceExt};

// ---------------------------------------------------------------------------
// A tier with knobs.

/// Rewrites what a get returns.
type Mangle = Box<dyn Fn(Bytes) -> Bytes + Send + Sync>;

#[derive(Default)]
struct Knobs {
    entries: Mutex<HashMap<String, (Bytes, Instant)>>,
    gets: AtomicUsize,
    puts: AtomicUsize,
    deletes: AtomicUsize,
    /// Each get waits this long before reading.
    get_delay: Mutex<Duration>,
    /// Each get never answers.
    get_never: AtomicBool,
    /// Each get panics.
    get_panics: AtomicBool,
    /// Each delete is executed this long after it is sent (it lands even
    /// if the caller stopped waiting).
    delete_delay: Mutex<Duration>,
    /// Only the first delete is slow, by this much.
    first_delete_delay: Mutex<Option<Duration>>,
    /// Signalled when a delete is sent.
    delete_sent: Notify,
    /// Applied to what a get returns.
    mangle: Mutex<Option<Mangle>>,
}

#[derive(Clone, Default)]
struct KnobTier(Arc<Knobs>);

impl std::ops::Deref for KnobTier {
    type Target = Knobs;
    fn deref(&self) -> &Knobs {
        &self.0
    }
}

impl Knobs {
    fn live_keys(&self) -> usize {
        let now = Instant::now();
        self.entries
            .lock()
            .expect("lock")
            .values()
            .filter(|(_, until)| now < *until)
            .count()
    }
}

impl CacheTier for KnobTier {
    fn get(&self, key: &str) -> TierFuture<Option<Bytes>> {
        let this = self.clone();
        let key = key.to_owned();
        if this.get_panics.load(Ordering::SeqCst) {
            panic!("hostile tier: get panics");
        }
        Box::pin(async move {
            this.gets.fetch_add(1, Ordering::SeqCst);
            if this.get_never.load(Ordering::SeqCst) {
                std::future::pending::<()>().await;
            }
            let delay = *this.get_delay.lock().expect("lock");
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let value = this
                .entries
                .lock()
                .expect("lock")
                .get(&key)
                .filter(|(_, until)| Instant::now() < *until)
                .map(|(v, _)| v.clone());
            let value = match (&*this.mangle.lock().expect("lock"), value) {
                (Some(f), Some(v)) => Some(f(v)),
                (_, v) => v,
            };
            Ok(value)
        })
    }

    fn put(&self, key: &str, value: Bytes, ttl: Duration) -> TierFuture<()> {
        self.puts.fetch_add(1, Ordering::SeqCst);
        self.entries
            .lock()
            .expect("lock")
            .insert(key.to_owned(), (value, Instant::now() + ttl));
        Box::pin(async { Ok(()) })
    }

    fn delete(&self, key: &str) -> TierFuture<()> {
        let n = self.deletes.fetch_add(1, Ordering::SeqCst);
        let mut delay = *self.delete_delay.lock().expect("lock");
        if n == 0 {
            if let Some(first) = *self.first_delete_delay.lock().expect("lock") {
                delay = first;
            }
        }
        self.delete_sent.notify_one();
        let this = self.clone();
        let key = key.to_owned();
        // Like a command sent to Redis: it is executed whether or not the
        // caller waits for the answer.
        let landed = tokio::spawn(async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            this.entries.lock().expect("lock").remove(&key);
        });
        Box::pin(async move {
            landed.await?;
            Ok(())
        })
    }
}

// ---------------------------------------------------------------------------
// An upstream whose resource has a version, bumped by every unsafe request.

struct Api {
    calls: Arc<AtomicUsize>,
    version: Arc<AtomicUsize>,
}

type Up = tower::util::BoxCloneSyncService<Request<()>, Response<Full<Bytes>>, Infallible>;

/// Answers `v<version> <METHOD> <path> for <authorization>`; every
/// `x-reply-NAME` request header comes back as a `NAME` response header.
fn api() -> (Api, Up) {
    let calls = Arc::new(AtomicUsize::new(0));
    let version = Arc::new(AtomicUsize::new(0));
    let (c, v) = (calls.clone(), version.clone());
    let service = service_fn(move |req: Request<()>| {
        c.fetch_add(1, Ordering::SeqCst);
        let unsafe_method = !matches!(*req.method(), Method::GET | Method::HEAD);
        let version = if unsafe_method {
            v.fetch_add(1, Ordering::SeqCst) + 1
        } else {
            v.load(Ordering::SeqCst)
        };
        async move {
            let auth = req
                .headers()
                .get(AUTHORIZATION)
                .map_or("-", |v| v.to_str().unwrap_or("?"))
                .to_owned();
            let body = if req.method() == Method::HEAD {
                String::new()
            } else {
                format!(
                    "v{version} {} {} for {auth}",
                    req.method(),
                    req.uri().path()
                )
            };
            let mut response = Response::new(Full::new(Bytes::from(body)));
            response
                .headers_mut()
                .insert("x-version", version.to_string().parse().expect("value"));
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
    (
        Api { calls, version },
        tower::util::BoxCloneSyncService::new(service),
    )
}

fn replica(tier: &KnobTier, freshness: Freshness) -> CacheLayer {
    CacheLayer::builder(freshness)
        .tier(Arc::new(tier.clone()))
        .build()
}

fn fixed(secs: u64) -> Freshness {
    Freshness::Fixed(Duration::from_secs(secs))
}

fn get(path: &str) -> http::request::Builder {
    Request::get(format!("http://api.test{path}"))
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
    String::from_utf8_lossy(&bytes).into_owned()
}

async fn send(layer: &CacheLayer, up: &Up, request: Request<()>) -> (CacheStatus, bool, String) {
    let response = layer
        .layer(up.clone())
        .oneshot(request)
        .await
        .expect("response");
    let s = status(&response);
    let t = from_tier(&response);
    (s, t, body(response).await)
}

fn as_w(path: &str) -> Request<()> {
    get(path)
        .header(AUTHORIZATION, "Bearer w")
        .body(())
        .expect("req")
}

// ---------------------------------------------------------------------------
// Writes.

/// A write drops memory first, then deletes the tier's keys one round trip
/// at a time (public GET, own GET, public HEAD, own HEAD). A read on the
/// writer's replica that looks in the tier while the first delete is in
/// flight still finds the writer's own old entry there (its delete has not
/// been sent) and files it in memory under a current ticket. After the
/// write has answered, the writer reads its own pre-write data from memory
/// for the whole freshness.
#[tokio::test(start_paused = true)]
#[ignore = "LIMITATION (documented in tollgate-cache's tier docs): a read racing the write's one-at-a-time tier deletes refills memory with the pre-write entry (read-your-writes)"]
async fn read_your_writes_holds_when_a_read_races_the_writes_tier_deletes() {
    let tier = KnobTier::default();
    let (api, up) = api();
    let a = replica(&tier, fixed(60));
    let (_, _, before) = send(&a, &up, as_w("/p/1")).await;
    assert!(before.starts_with("v0 "), "{before}");
    assert_eq!(tier.live_keys(), 1);
    // Each delete takes 2 ms to run, like a round trip to a busy Redis.
    *tier.delete_delay.lock().expect("lock") = Duration::from_millis(2);

    let writer = {
        let a = a.clone();
        let up = up.clone();
        tokio::spawn(async move {
            let put = Request::put("http://api.test/p/1")
                .header(AUTHORIZATION, "Bearer w")
                .body(())
                .expect("req");
            a.layer(up).oneshot(put).await.expect("write")
        })
    };
    // The write reached the upstream; memory is dropped; the first tier
    // delete is in flight.
    tier.delete_sent.notified().await;
    let (_, _, racing) = send(&a, &up, as_w("/p/1")).await;
    // Concurrent with the write: either answer is fine for this one.
    let _ = racing;
    writer.await.expect("writer");
    assert_eq!(api.version.load(Ordering::SeqCst), 1);

    // The write has answered: the writer must now read what follows it.
    let (status, tiered, after) = send(&a, &up, as_w("/p/1")).await;
    assert!(
        after.starts_with("v1 "),
        "read after the write got pre-write data: {after:?} ({status:?}, from tier: {tiered})"
    );
}

/// A write whose first tier delete is slow (a Redis hiccup past the 10 ms
/// `tier_timeout`; the `DEL` still runs) marks the tier failing, and the
/// remaining deletes of the same write are skipped as "resting". The
/// writer's own entry (and the public HEAD one) stay in the tier, and
/// once the tier is asked again every replica serves the pre-write
/// response to the writer.
#[tokio::test(start_paused = true)]
#[ignore = "LIMITATION (documented in tollgate-cache's tier docs): one slow tier delete rests the tier and silently skips the write's other deletes; the writer's old entry survives"]
async fn a_write_drops_the_writers_tier_entry_even_when_one_delete_is_slow() {
    let tier = KnobTier::default();
    let (api, up) = api();
    let a = replica(&tier, fixed(60));
    let b = replica(&tier, fixed(60));
    send(&a, &up, get("/p/1").body(()).expect("req")).await;
    send(&a, &up, as_w("/p/1")).await;
    assert_eq!(tier.live_keys(), 2);
    *tier.first_delete_delay.lock().expect("lock") = Some(DEFAULT_TIER_TIMEOUT * 2);

    let put = Request::put("http://api.test/p/1")
        .header(AUTHORIZATION, "Bearer w")
        .body(())
        .expect("req");
    a.layer(up.clone()).oneshot(put).await.expect("write");
    assert_eq!(api.version.load(Ordering::SeqCst), 1);

    tokio::time::advance(TIER_RETRY + Duration::from_millis(100)).await;
    // Let the late delete land.
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(
        tier.live_keys(),
        1,
        "the slow delete landed; the next was never sent"
    );
    let (status, tiered, after) = send(&b, &up, as_w("/p/1")).await;
    assert!(
        after.starts_with("v1 "),
        "another replica served the writer pre-write data after the write: {after:?} \
         ({status:?}, from tier: {tiered}; {} tier keys live, {} deletes sent)",
        tier.live_keys(),
        tier.deletes.load(Ordering::SeqCst)
    );
}

// ---------------------------------------------------------------------------
// Time.

/// Replica A's clock is 30 s ahead of B's. A fills an entry fresh for
/// 60 s; 50 s later B reads it from the tier (the tier's own TTL has not
/// run out, as in Redis): B counts only 20 s elapsed, sends `Age: 20`, and
/// keeps it fresh in memory until 90 s after it was fetched: 30 s of stale
/// served as fresh. (`docs` call this "shifted by the skew"; it breaks
/// RFC 9111 all the same. Redis could be the one clock: its TTL, or
/// `TIME`.)
#[tokio::test(start_paused = true)]
#[ignore = "LIMITATION (documented in tollgate-cache's tier docs): replica clock skew (reader behind writer) serves stale as fresh and under-reports Age (wall-clock aging)"]
async fn clock_skew_between_replicas_never_serves_stale_as_fresh() {
    let tier = KnobTier::default();
    let (api, up) = api();
    // A's wall clock is read now; B's 30 s of tokio time later, so A is
    // 30 s ahead of B.
    let a = replica(&tier, fixed(60));
    tokio::time::advance(Duration::from_secs(30)).await;
    let b = replica(&tier, fixed(60));

    send(&a, &up, get("/p/1").body(()).expect("req")).await;
    tokio::time::advance(Duration::from_secs(50)).await;
    let response = b
        .layer(up.clone())
        .oneshot(get("/p/1").body(()).expect("req"))
        .await
        .expect("b");
    assert!(from_tier(&response));
    let age = response.headers()[AGE].to_str().expect("age").to_owned();

    tokio::time::advance(Duration::from_secs(15)).await;
    // 65 s after the fetch: the entry is 5 s stale.
    let (late, _, _) = send(&b, &up, get("/p/1").body(()).expect("req")).await;
    assert_eq!(
        (age.as_str(), late),
        ("50", CacheStatus::Miss),
        "Age across replicas, and no stale served as fresh (upstream calls: {})",
        api.calls.load(Ordering::SeqCst)
    );
}

// ---------------------------------------------------------------------------
// Hostile answers.

/// A tier that panics in `get` (a bug in a tier, not an error it
/// reports) unwinds through the request: the caller gets a panic instead
/// of the upstream's answer.
#[tokio::test(start_paused = true)]
#[ignore = "LIMITATION (documented in tollgate-cache's tier docs): a panicking CacheTier::get unwinds through the request instead of being a miss"]
async fn a_tier_that_panics_fails_no_request() {
    let tier = KnobTier::default();
    let (_api, up) = api();
    let a = replica(&tier, fixed(60));
    tier.get_panics.store(true, Ordering::SeqCst);
    let service = a.layer(up);
    let outcome =
        tokio::spawn(async move { service.oneshot(get("/p/1").body(()).expect("req")).await })
            .await;
    assert!(
        matches!(outcome, Ok(Ok(_))),
        "the request must go on without the tier"
    );
}

/// No checksum in the encoding: a bit flipped in the stored body (Redis
/// memory, a proxy, a partial overwrite) decodes fine and is served as a
/// hit with a body the upstream never sent.
#[tokio::test(start_paused = true)]
async fn a_bit_flipped_entry_is_a_miss_never_a_wrong_response() {
    let tier = KnobTier::default();
    let (_api, up) = api();
    let a = replica(&tier, fixed(60));
    let b = replica(&tier, fixed(60));
    let (_, _, original) = send(&a, &up, get("/p/1").body(()).expect("req")).await;
    *tier.mangle.lock().expect("lock") = Some(Box::new(|v: Bytes| {
        let mut v = v.to_vec();
        let last = v.len() - 1;
        v[last] ^= 0x01;
        Bytes::from(v)
    }));
    let (status, tiered, served) = send(&b, &up, get("/p/1").body(()).expect("req")).await;
    assert_eq!(
        served, original,
        "served {status:?} (from tier: {tiered}) a body nobody sent"
    );
}

/// Truncated, extended or length-bombed encodings: never a panic, never
/// an error, never a wrong body; always the upstream's answer.
#[test]
fn truncated_extended_and_length_bombed_entries_are_misses() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let tier = KnobTier::default();
        let (api, up) = api();
        let a = replica(&tier, fixed(60));
        let (_, _, original) = send(&a, &up, get("/p/1").body(()).expect("req")).await;
        let stored = tier
            .entries
            .lock()
            .expect("lock")
            .values()
            .next()
            .expect("one")
            .0
            .clone();
        // Offsets of version 1: version(1) key(2+64) written(8) age(8)
        // fresh(8) flags(1) status(2) http(1) = 95: the header count.
        let header_count = 1 + 2 + 64 + 8 + 8 + 8 + 1 + 2 + 1;
        let mut cases: Vec<Bytes> = Vec::new();
        for cut in [
            0,
            1,
            3,
            66,
            67,
            90,
            header_count,
            header_count + 4,
            stored.len() - 1,
        ] {
            cases.push(stored.slice(..cut));
        }
        let mut longer = stored.to_vec();
        longer.extend_from_slice(b"\0\0\0\0");
        cases.push(Bytes::from(longer));
        let mut bomb = stored.to_vec();
        bomb[header_count..header_count + 4].copy_from_slice(&u32::MAX.to_be_bytes());
        cases.push(Bytes::from(bomb));
        let mut body_bomb = stored.to_vec();
        let n = body_bomb.len();
        let body_len = n - original.len() - 4;
        body_bomb[body_len..body_len + 4].copy_from_slice(&u32::MAX.to_be_bytes());
        cases.push(Bytes::from(body_bomb));
        let mut version = stored.to_vec();
        version[0] = 0;
        cases.push(Bytes::from(version));
        for (i, case) in cases.into_iter().enumerate() {
            *tier.mangle.lock().expect("lock") = Some(Box::new(move |_| case.clone()));
            let b = replica(&tier, fixed(60));
            let before = api.calls.load(Ordering::SeqCst);
            let (status, tiered, served) = send(&b, &up, get("/p/1").body(()).expect("req")).await;
            assert_eq!(status, CacheStatus::Miss, "case {i}");
            assert!(!tiered, "case {i}");
            assert_eq!(served, original, "case {i}: the upstream's answer");
            assert_eq!(api.calls.load(Ordering::SeqCst), before + 1, "case {i}");
        }
    });
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]

    /// Any prefix of a real entry followed by arbitrary bytes: never a
    /// panic or an error, and the body served is the upstream's.
    #[test]
    fn a_real_prefix_with_garbage_after_it_never_panics_nor_serves_a_wrong_body(
        cut in 0usize..200,
        tail in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let tier = KnobTier::default();
            let (_api, up) = api();
            let a = replica(&tier, fixed(60));
            let (_, _, original) = send(&a, &up, get("/p/1").body(()).expect("req")).await;
            let stored = tier.entries.lock().expect("lock").values().next().expect("one").0.clone();
            let cut = cut.min(stored.len());
            let mut mangled = stored[..cut].to_vec();
            mangled.extend_from_slice(&tail);
            let mangled = Bytes::from(mangled);
            *tier.mangle.lock().expect("lock") = Some(Box::new(move |_| mangled.clone()));
            let b = replica(&tier, fixed(60));
            let (_, _, served) = send(&b, &up, get("/p/1").body(()).expect("req")).await;
            assert_eq!(served, original);
        });
    }
}

// ---------------------------------------------------------------------------
// Slow, silent and cancelled.

/// A get that answers after the timeout: the request went upstream at the
/// timeout, and the late answer is neither served nor filed in memory.
#[tokio::test(start_paused = true)]
async fn a_late_tier_answer_is_neither_used_nor_stored() {
    let tier = KnobTier::default();
    let (api, up) = api();
    let a = replica(&tier, fixed(60));
    let b = replica(&tier, fixed(60));
    send(&a, &up, get("/p/1").body(()).expect("req")).await;
    api.version.store(7, Ordering::SeqCst);
    *tier.get_delay.lock().expect("lock") = DEFAULT_TIER_TIMEOUT * 3;
    let start = Instant::now();
    let (status, tiered, served) = send(&b, &up, get("/p/1").body(()).expect("req")).await;
    assert!(start.elapsed() <= DEFAULT_TIER_TIMEOUT + Duration::from_millis(1));
    assert_eq!((status, tiered), (CacheStatus::Miss, false));
    assert!(served.starts_with("v7 "), "{served}");
    tokio::time::advance(DEFAULT_TIER_TIMEOUT * 5).await;
    let (status, _, again) = send(&b, &up, get("/p/1").body(()).expect("req")).await;
    assert_eq!(status, CacheStatus::Hit);
    assert!(
        again.starts_with("v7 "),
        "memory holds the upstream's, not the late tier's: {again}"
    );
}

/// A get that never answers costs each request at most the timeout.
#[tokio::test(start_paused = true)]
async fn a_tier_that_never_answers_costs_at_most_the_timeout() {
    let tier = KnobTier::default();
    let (_api, up) = api();
    let a = replica(&tier, fixed(60));
    tier.get_never.store(true, Ordering::SeqCst);
    let start = Instant::now();
    let (status, _, _) = send(&a, &up, get("/p/1").body(()).expect("req")).await;
    assert_eq!(status, CacheStatus::Miss);
    assert!(start.elapsed() <= DEFAULT_TIER_TIMEOUT + Duration::from_millis(1));
    let start = Instant::now();
    send(&a, &up, get("/p/2").body(()).expect("req")).await;
    assert!(
        start.elapsed() < Duration::from_millis(1),
        "resting: not asked"
    );
}

/// The leader of a flight is dropped while it waits for the tier: its
/// followers still each get an answer, the tier's.
#[tokio::test(start_paused = true)]
async fn cancelling_the_leader_mid_tier_lookup_leaves_its_followers_an_answer() {
    let tier = KnobTier::default();
    let (api, up) = api();
    let a = replica(&tier, fixed(60));
    let b = replica(&tier, fixed(60));
    let (_, _, original) = send(&a, &up, get("/p/1").body(()).expect("req")).await;
    *tier.get_delay.lock().expect("lock") = Duration::from_millis(5);
    let service = b.layer(up.clone());
    let leader = tokio::spawn(service.clone().oneshot(get("/p/1").body(()).expect("req")));
    tokio::task::yield_now().await;
    let followers: Vec<_> = (0..5)
        .map(|_| tokio::spawn(service.clone().oneshot(get("/p/1").body(()).expect("req"))))
        .collect();
    tokio::task::yield_now().await;
    tokio::time::advance(Duration::from_millis(1)).await;
    leader.abort();
    for follower in followers {
        let response = tokio::time::timeout(Duration::from_secs(1), follower)
            .await
            .expect("a follower is never wedged")
            .expect("task")
            .expect("response");
        assert_eq!(body(response).await, original);
    }
    assert_eq!(api.calls.load(Ordering::SeqCst), 1, "nobody went upstream");
}

/// Dropping a request at every point of its life (tier lookup, upstream,
/// tier write) never wedges its key, and what is stored afterwards is the
/// upstream's answer.
#[tokio::test(start_paused = true)]
async fn cancelling_at_every_await_never_wedges_the_key() {
    for cancel_after in 0..12u64 {
        let tier = KnobTier::default();
        *tier.get_delay.lock().expect("lock") = Duration::from_millis(3);
        let (api, _) = api();
        let c = api.calls.clone();
        let slow = tower::util::BoxCloneSyncService::new(service_fn(move |req: Request<()>| {
            c.fetch_add(1, Ordering::SeqCst);
            async move {
                tokio::time::sleep(Duration::from_millis(3)).await;
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(format!(
                    "fresh {}",
                    req.uri().path()
                )))))
            }
        }));
        let a = replica(&tier, fixed(60));
        let first = tokio::spawn(
            a.layer(slow.clone())
                .oneshot(get("/p/1").body(()).expect("req")),
        );
        tokio::time::advance(Duration::from_millis(cancel_after)).await;
        first.abort();
        let _ = first.await;
        let response = tokio::time::timeout(
            Duration::from_secs(1),
            a.layer(slow.clone())
                .oneshot(get("/p/1").body(()).expect("req")),
        )
        .await
        .unwrap_or_else(|_| panic!("wedged after a cancel at {cancel_after} ms"))
        .expect("response");
        assert_eq!(
            body(response).await,
            "fresh /p/1",
            "cancel at {cancel_after} ms"
        );
        let b = replica(&tier, fixed(60));
        let response = b
            .layer(slow)
            .oneshot(get("/p/1").body(()).expect("req"))
            .await
            .expect("response");
        assert_eq!(
            body(response).await,
            "fresh /p/1",
            "cancel at {cancel_after} ms"
        );
    }
}

/// 64 tasks on one key of one replica: one tier lookup, one upstream call,
/// one answer for all.
#[tokio::test(start_paused = true)]
async fn sixty_four_tasks_on_one_key_ask_the_tier_and_the_upstream_once() {
    let tier = KnobTier::default();
    *tier.get_delay.lock().expect("lock") = Duration::from_millis(2);
    let (api, up) = api();
    let a = replica(&tier, fixed(60));
    let service = a.layer(up);
    let tasks: Vec<_> = (0..64)
        .map(|_| tokio::spawn(service.clone().oneshot(get("/p/1").body(()).expect("req"))))
        .collect();
    for task in tasks {
        let response = task.await.expect("task").expect("response");
        assert_eq!(body(response).await, "v0 GET /p/1 for -");
    }
    assert_eq!(tier.gets.load(Ordering::SeqCst), 1);
    assert_eq!(api.calls.load(Ordering::SeqCst), 1);
    assert_eq!(tier.puts.load(Ordering::SeqCst), 1);
}

// ---------------------------------------------------------------------------
// What reaches the tier, and for whom.

/// HEAD and GET are separate entries across replicas: a HEAD never gets a
/// GET's body from the tier (nor the reverse).
#[tokio::test(start_paused = true)]
async fn head_and_get_never_share_a_tier_entry() {
    let tier = KnobTier::default();
    let (_api, up) = api();
    let a = replica(&tier, fixed(60));
    let b = replica(&tier, fixed(60));
    send(&a, &up, get("/p/1").body(()).expect("req")).await;
    let head = Request::head("http://api.test/p/1").body(()).expect("req");
    let (status, tiered, served) = send(&b, &up, head).await;
    assert_eq!(
        (status, tiered, served.as_str()),
        (CacheStatus::Miss, false, "")
    );
    let c = replica(&tier, fixed(60));
    let head = Request::head("http://api.test/p/2").body(()).expect("req");
    send(&a, &up, head).await;
    let (status, _, served) = send(&c, &up, get("/p/2").body(()).expect("req")).await;
    assert_eq!(status, CacheStatus::Miss);
    assert_eq!(served, "v0 GET /p/2 for -");
}

/// `Cache-Control: no-cache` on a request: it skips the tier and goes
/// upstream.
#[tokio::test(start_paused = true)]
async fn a_no_cache_request_never_takes_the_tiers_entry() {
    let tier = KnobTier::default();
    let (api, up) = api();
    let a = replica(&tier, fixed(60));
    let b = replica(&tier, fixed(60));
    send(&a, &up, get("/p/1").body(()).expect("req")).await;
    api.version.store(3, Ordering::SeqCst);
    let gets = tier.gets.load(Ordering::SeqCst);
    let request = get("/p/1")
        .header(CACHE_CONTROL, "no-cache")
        .body(())
        .expect("req");
    let (status, tiered, served) = send(&b, &up, request).await;
    assert!(!tiered, "{status:?}");
    assert!(served.starts_with("v3 "), "{served}");
    assert_eq!(tier.gets.load(Ordering::SeqCst), gets);
}

/// What the memory would never store or share (public `private`,
/// `Set-Cookie`, `Vary: *`, `no-store`) never reaches the tier.
#[tokio::test(start_paused = true)]
async fn private_set_cookie_vary_star_and_no_store_never_reach_the_tier() {
    let tier = KnobTier::default();
    let (_api, up) = api();
    let a = replica(
        &tier,
        Freshness::Http {
            default_ttl: Some(Duration::from_secs(60)),
        },
    );
    for (i, (name, value)) in [
        ("x-reply-cache-control", "private, max-age=60"),
        ("x-reply-set-cookie", "sid=alice"),
        ("x-reply-vary", "*"),
        ("x-reply-cache-control", "no-store"),
    ]
    .into_iter()
    .enumerate()
    {
        let request = get(&format!("/p/{i}"))
            .header(name, value)
            .body(())
            .expect("req");
        send(&a, &up, request).await;
    }
    assert_eq!(tier.puts.load(Ordering::SeqCst), 0);
    // A request with `Authorization` may keep `private` under its own key,
    // and only its own credential reads it back.
    let request = get("/p/9")
        .header(AUTHORIZATION, "Bearer w")
        .header("x-reply-cache-control", "private, max-age=60")
        .body(())
        .expect("req");
    send(&a, &up, request).await;
    let b = replica(
        &tier,
        Freshness::Http {
            default_ttl: Some(Duration::from_secs(60)),
        },
    );
    let request = get("/p/9")
        .header("x-reply-cache-control", "private, max-age=60")
        .body(())
        .expect("req");
    let (_, tiered, served) = send(&b, &up, request).await;
    assert!(!tiered);
    assert_eq!(served, "v0 GET /p/9 for -");
}

/// TTLs at the edges: 1 ms is written as 1 ms and is gone after it; an
/// enormous one is written (clamped), read back, and never panics.
#[tokio::test(start_paused = true)]
async fn tiny_and_huge_ttls() {
    let tier = KnobTier::default();
    let (api, up) = api();
    let a = replica(&tier, Freshness::Fixed(Duration::from_millis(1)));
    let b = replica(&tier, Freshness::Fixed(Duration::from_millis(1)));
    send(&a, &up, get("/p/1").body(()).expect("req")).await;
    assert_eq!(tier.puts.load(Ordering::SeqCst), 1);
    tokio::time::advance(Duration::from_millis(1)).await;
    let (status, _, _) = send(&b, &up, get("/p/1").body(()).expect("req")).await;
    assert_eq!(status, CacheStatus::Miss);

    let a = replica(&tier, Freshness::Fixed(Duration::MAX));
    let b = replica(&tier, Freshness::Fixed(Duration::MAX));
    send(&a, &up, get("/p/2").body(()).expect("req")).await;
    tokio::time::advance(Duration::from_secs(3600 * 24 * 365)).await;
    let (status, tiered, _) = send(&b, &up, get("/p/2").body(()).expect("req")).await;
    assert_eq!((status, tiered), (CacheStatus::Hit, true));
    let _ = api;
}

// ---------------------------------------------------------------------------
// Invalidation and size.

/// `invalidate` drops memory at once but sends the tier's deletes on a
/// task of its own and returns: a read made right after it (same replica,
/// same task) finds memory empty, asks the tier before that task has run,
/// gets the invalidated entry back, and files it in memory again under a
/// current ticket. The invalidation is undone for the entry's whole
/// freshness.
#[tokio::test(start_paused = true)]
#[ignore = "LIMITATION (documented in tollgate-cache's tier docs): invalidate returns before its tier deletes run; a read right after it re-fills memory with the invalidated entry"]
async fn a_read_right_after_invalidate_never_gets_the_invalidated_entry() {
    let tier = KnobTier::default();
    let (api, up) = api();
    let a = replica(&tier, fixed(60));
    send(&a, &up, get("/p/1").body(()).expect("req")).await;
    // The resource changed behind the cache's back; the application says so.
    api.version.store(1, Ordering::SeqCst);
    a.invalidate(&"http://api.test/p/1".parse().expect("uri"));
    let (status, tiered, served) = send(&a, &up, get("/p/1").body(()).expect("req")).await;
    assert!(
        served.starts_with("v1 "),
        "served the invalidated entry: {served:?} ({status:?}, from tier: {tiered})"
    );
    // And it did not stick in memory either.
    tokio::time::sleep(Duration::from_millis(1)).await;
    let (_, _, again) = send(&a, &up, get("/p/1").body(()).expect("req")).await;
    assert!(again.starts_with("v1 "), "{again:?}");
}

/// The per-entry limit on the way back: an encoding at the reader's
/// `max_entry_bytes` is used; one byte over is a miss, not an error.
#[tokio::test(start_paused = true)]
async fn a_tier_entry_at_the_limit_is_used_and_one_byte_over_is_a_miss() {
    let tier = KnobTier::default();
    let (api, up) = api();
    let a = replica(&tier, fixed(60));
    send(&a, &up, get("/p/1").body(()).expect("req")).await;
    let size = tier
        .entries
        .lock()
        .expect("lock")
        .values()
        .next()
        .expect("one")
        .0
        .len();
    let at = CacheLayer::builder(fixed(60))
        .tier(Arc::new(tier.clone()))
        .max_entry_bytes(size)
        .build();
    let (_, tiered, _) = send(&at, &up, get("/p/1").body(()).expect("req")).await;
    assert!(tiered, "an entry exactly at the limit is read");
    let under = CacheLayer::builder(fixed(60))
        .tier(Arc::new(tier.clone()))
        .max_entry_bytes(size - 1)
        .build();
    let calls = api.calls.load(Ordering::SeqCst);
    let (status, tiered, served) = send(&under, &up, get("/p/1").body(()).expect("req")).await;
    assert_eq!((status, tiered), (CacheStatus::Miss, false));
    assert!(served.starts_with("v0 "));
    assert_eq!(api.calls.load(Ordering::SeqCst), calls + 1);
}

/// The caller of a write gives up (a timeout above the cache) after the
/// upstream applied it, while the tier deletes are under way. Memory was
/// dropped, but the rest of the tier's deletes never run: the next read on
/// this very replica gets the pre-write entry back from the tier and files
/// it in memory again. Without a tier the same cancel leaves nothing
/// behind (memory is dropped in the poll that sees the answer).
#[tokio::test(start_paused = true)]
#[ignore = "LIMITATION (documented in tollgate-cache's tier docs): cancelling a write after the upstream applied it skips the remaining tier deletes; the pre-write entry comes back"]
async fn cancelling_a_write_mid_tier_deletes_never_brings_the_old_entry_back() {
    let tier = KnobTier::default();
    let (api, up) = api();
    let a = replica(&tier, fixed(60));
    send(&a, &up, as_w("/p/1")).await;
    *tier.delete_delay.lock().expect("lock") = Duration::from_millis(2);
    let writer = {
        let service = a.layer(up.clone());
        tokio::spawn(async move {
            let put = Request::put("http://api.test/p/1")
                .header(AUTHORIZATION, "Bearer w")
                .body(())
                .expect("req");
            service.oneshot(put).await
        })
    };
    tier.delete_sent.notified().await;
    writer.abort();
    let _ = writer.await;
    assert_eq!(
        api.version.load(Ordering::SeqCst),
        1,
        "the write was applied"
    );
    tokio::time::sleep(Duration::from_millis(5)).await;
    let (status, tiered, after) = send(&a, &up, as_w("/p/1")).await;
    assert!(
        after.starts_with("v1 "),
        "pre-write data after an applied write: {after:?} ({status:?}, from tier: {tiered})"
    );
}

/// An `Age` from the upstream travels with the entry: every replica sends
/// the same `Age`, and lets it go when the first would have.
#[tokio::test(start_paused = true)]
async fn an_upstream_age_carries_across_replicas() {
    let tier = KnobTier::default();
    let (_api, up) = api();
    let http = Freshness::Http { default_ttl: None };
    let a = replica(&tier, http);
    let b = replica(&tier, http);
    let request = || {
        get("/p/1")
            .header("x-reply-cache-control", "max-age=60")
            .header("x-reply-age", "30")
            .body(())
            .expect("req")
    };
    a.layer(up.clone()).oneshot(request()).await.expect("a");
    tokio::time::advance(Duration::from_secs(10)).await;
    let response = b.layer(up.clone()).oneshot(request()).await.expect("b");
    assert!(from_tier(&response));
    assert_eq!(response.headers()[AGE], "40");
    tokio::time::advance(Duration::from_secs(20)).await;
    let response = b.layer(up.clone()).oneshot(request()).await.expect("b");
    assert_eq!(status(&response), CacheStatus::Miss, "60 s of age: stale");
}

/// The followers of a flight whose leader found the entry in the tier get
/// the stored response as `Coalesced`, which drops `Age` ("fresh from
/// upstream"): a 50-second-old response is handed to them with no `Age`
/// at all, as if the origin had just sent it (RFC 9111 §4: a stored
/// response used without validation MUST carry its current age).
#[tokio::test(start_paused = true)]
#[ignore = "LIMITATION (documented in tollgate-cache's tier docs): followers of a leader's tier hit get the old entry as Coalesced with no Age header"]
async fn followers_of_a_tier_hit_get_the_entrys_age() {
    let tier = KnobTier::default();
    let (api, up) = api();
    let a = replica(&tier, fixed(60));
    let b = replica(&tier, fixed(60));
    send(&a, &up, get("/p/1").body(()).expect("req")).await;
    tokio::time::advance(Duration::from_secs(50)).await;
    *tier.get_delay.lock().expect("lock") = Duration::from_millis(2);
    let service = b.layer(up.clone());
    let tasks: Vec<_> = (0..4)
        .map(|_| tokio::spawn(service.clone().oneshot(get("/p/1").body(()).expect("req"))))
        .collect();
    let mut seen = Vec::new();
    for task in tasks {
        let response = task.await.expect("task").expect("response");
        seen.push((
            status(&response),
            response
                .headers()
                .get(AGE)
                .map(|v| v.to_str().expect("age").to_owned()),
        ));
    }
    assert_eq!(api.calls.load(Ordering::SeqCst), 1, "all from the tier");
    for (status, age) in &seen {
        assert_eq!(age.as_deref(), Some("50"), "{status:?}: {seen:?}");
    }
}

/// The same with nothing in the tier: the leader fetches a response the
/// upstream says is already 30 s old (`Age: 30`); the leader's caller sees
/// `Age: 30`, its followers see no `Age`. (Not the tier's own doing: the
/// `Coalesced` path drops `Age` whatever the entry's age.)
#[tokio::test(start_paused = true)]
#[ignore = "LIMITATION (documented in tollgate-cache's tier docs): Coalesced followers lose the upstream's Age (the leader gets Age: 30, followers none)"]
async fn followers_of_a_fetch_get_the_upstreams_age() {
    let tier = KnobTier::default();
    *tier.get_delay.lock().expect("lock") = Duration::from_millis(2);
    let (_api, up) = api();
    let a = replica(&tier, fixed(60));
    let service = a.layer(up);
    let request = || {
        get("/p/1")
            .header("x-reply-age", "30")
            .body(())
            .expect("req")
    };
    let tasks: Vec<_> = (0..4)
        .map(|_| tokio::spawn(service.clone().oneshot(request())))
        .collect();
    let mut seen = Vec::new();
    for task in tasks {
        let response = task.await.expect("task").expect("response");
        seen.push((
            status(&response),
            response
                .headers()
                .get(AGE)
                .map(|v| v.to_str().expect("age").to_owned()),
        ));
    }
    for (status, age) in &seen {
        assert_eq!(age.as_deref(), Some("30"), "{status:?}: {seen:?}");
    }
}

/// A request in origin form (`/p/1`, the authority in `Host`), as a
/// gateway forwarding by `Host` sees them: the cache key is the URI
/// alone, so two hosts' `/p/1` are one entry, and through the shared tier
/// (one namespace for every service by default) a replica serving
/// `b.test` answers with what another fetched from `a.test`. The
/// effective request URI (RFC 9110 §7.1) includes the `Host`. (Memory
/// alone does the same within one layer; the tier spreads it to every
/// replica and service on the namespace.)
#[tokio::test(start_paused = true)]
#[ignore = "LIMITATION (documented in tollgate-cache's tier docs): the cache/tier key ignores Host for origin-form URIs; one host's response is served for another's"]
async fn an_origin_form_request_never_gets_another_hosts_response() {
    let tier = KnobTier::default();
    let echo = tower::util::BoxCloneSyncService::new(service_fn(|req: Request<()>| async move {
        let host = req
            .headers()
            .get(http::header::HOST)
            .map_or("-", |v| v.to_str().unwrap_or("?"))
            .to_owned();
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(format!(
            "{} on {host}",
            req.uri()
        )))))
    }));
    let a = replica(&tier, fixed(60));
    let b = replica(&tier, fixed(60));
    let on = |host: &str| {
        Request::get("/p/1")
            .header(http::header::HOST, host)
            .body(())
            .expect("req")
    };
    let first = a
        .layer(echo.clone())
        .oneshot(on("a.test"))
        .await
        .expect("a");
    assert_eq!(body(first).await, "/p/1 on a.test");
    let second = b.layer(echo).oneshot(on("b.test")).await.expect("b");
    let tiered = from_tier(&second);
    assert_eq!(body(second).await, "/p/1 on b.test", "from tier: {tiered}");
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

    /// Any single bit flipped anywhere in a real entry: never a panic and
    /// never an error. (What is served may differ from what was stored,
    /// body or status: see
    /// `a_bit_flipped_entry_is_a_miss_never_a_wrong_response`.)
    #[test]
    fn a_single_bit_flip_never_panics_nor_fails_the_request(bit in 0usize..4096) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let tier = KnobTier::default();
            let (_api, up) = api();
            let a = replica(&tier, fixed(60));
            send(&a, &up, get("/p/1").body(()).expect("req")).await;
            let stored = tier.entries.lock().expect("lock").values().next().expect("one").0.clone();
            let bit = bit % (stored.len() * 8);
            let mut flipped = stored.to_vec();
            flipped[bit / 8] ^= 1 << (bit % 8);
            let flipped = Bytes::from(flipped);
            *tier.mangle.lock().expect("lock") = Some(Box::new(move |_| flipped.clone()));
            let b = replica(&tier, fixed(60));
            let response = b
                .layer(up.clone())
                .oneshot(get("/p/1").body(()).expect("req"))
                .await;
            assert!(response.is_ok(), "bit {bit}: an error");
        });
    }
}

/// `Vary` on 200 request headers: written, read back and matched by a
/// replica with the same values; one value different is a miss.
#[tokio::test(start_paused = true)]
async fn vary_on_many_headers_holds_across_replicas() {
    let tier = KnobTier::default();
    let (_api, up) = api();
    let a = replica(&tier, fixed(60));
    let b = replica(&tier, fixed(60));
    let names: Vec<String> = (0..200).map(|i| format!("x-v{i}")).collect();
    let request = |last: &str| {
        let mut builder = get("/p/1").header("x-reply-vary", names.join(", "));
        for (i, name) in names.iter().enumerate() {
            let value = if i + 1 == names.len() {
                last.to_owned()
            } else {
                format!("v{i}")
            };
            builder = builder.header(name.as_str(), value);
        }
        builder.body(()).expect("req")
    };
    send(&a, &up, request("same")).await;
    assert_eq!(tier.puts.load(Ordering::SeqCst), 1);
    let (_, tiered, _) = send(&b, &up, request("same")).await;
    assert!(tiered);
    let c = replica(&tier, fixed(60));
    let (status, tiered, _) = send(&c, &up, request("other")).await;
    assert_eq!((status, tiered), (CacheStatus::Miss, false));
}

/// The same skip with a healthy tier: one read of an unrelated key was
/// slow a moment ago, so the tier is "resting" when a write comes in, and
/// the write sends none of its deletes. Nothing retries them; once the
/// rest is over every replica serves the pre-write entries, the writer
/// included.
#[tokio::test(start_paused = true)]
#[ignore = "LIMITATION (documented in tollgate-cache's tier docs): a write while the tier rests (after one unrelated slow read) sends no deletes at all; pre-write entries stay shared"]
async fn a_write_while_the_tier_rests_still_drops_the_tiers_entries() {
    let tier = KnobTier::default();
    let (api, up) = api();
    let a = replica(&tier, fixed(60));
    let b = replica(&tier, fixed(60));
    send(&a, &up, as_w("/p/1")).await;
    // One slow read of another key.
    *tier.get_delay.lock().expect("lock") = DEFAULT_TIER_TIMEOUT * 2;
    send(&a, &up, get("/other").body(()).expect("req")).await;
    *tier.get_delay.lock().expect("lock") = Duration::ZERO;
    let put = Request::put("http://api.test/p/1")
        .header(AUTHORIZATION, "Bearer w")
        .body(())
        .expect("req");
    a.layer(up.clone()).oneshot(put).await.expect("write");
    assert_eq!(api.version.load(Ordering::SeqCst), 1);
    tokio::time::advance(TIER_RETRY).await;
    let (status, tiered, after) = send(&b, &up, as_w("/p/1")).await;
    assert!(
        after.starts_with("v1 "),
        "pre-write data after the write: {after:?} ({status:?}, from tier: {tiered}; {} deletes sent)",
        tier.deletes.load(Ordering::SeqCst)
    );
}
