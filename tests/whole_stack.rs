//! The facade with every layer on (cache, retry, rate limit, auth, pool and,
//! for batched endpoints, the batcher), in the order `docs/ARCHITECTURE.md`
//! draws, calling `FakeApi` over real HTTP on 127.0.0.1 on paused time.
//!
//! Each test asserts what each layer recorded on the response (the
//! `Summary`: attempts, cache status, permit wait, queue wait, tracking id;
//! the `RetryRecord`; the elapsed time) and that the order holds: every
//! attempt takes its own permit and its own credential, a cache hit takes
//! no permit, no pool slot and no attempt, a 401 replay takes no second
//! permit.
//!
//! The transport under the stack is a hyper-util client over loopback,
//! wrapped to record what went on the wire for each attempt (the facade's
//! `ClientBuilder::transport`): `FakeApi` keeps only the last request of a
//! route, and an injected fault answers before it checks credentials.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use http::{Request, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::time::Instant;
use tollgate::{BatchSpec, Client, ClientBuilder, ErrorKind};
use tollgate_cache::{CacheLayer, CacheStatus};
use tollgate_limit::{ConcurrencyLimitLayer, Quota, RateLimitLayer};
use tollgate_retry::{Backoff, Jitter, RetryLayer, RetryReason, RetryRecord};
use tollgate_testkit::{FakeApi, Fault};

const TOKEN: &str = "s3cret-token";

/// One request as it went on the wire.
#[derive(Clone, Debug)]
struct Sent {
    path: String,
    authorization: Option<String>,
    request_id: Option<String>,
    at: Instant,
}

type Log = Arc<Mutex<Vec<Sent>>>;

fn sent(log: &Log) -> Vec<Sent> {
    log.lock().unwrap_or_else(PoisonError::into_inner).clone()
}

/// A real hyper-util client over loopback that logs each request it sends.
fn recording_transport(
    log: Log,
) -> impl tower::Service<
    Request<tollgate::RequestBody>,
    Response = http::Response<hyper::body::Incoming>,
    Error = hyper_util::client::legacy::Error,
    Future: Send + 'static,
> + Clone
       + Send
       + Sync
       + 'static {
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build::<_, tollgate::RequestBody>(HttpConnector::new());
    tower::service_fn(move |req: Request<tollgate::RequestBody>| {
        let header = |name: &str| {
            req.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let entry = Sent {
            path: req.uri().path().to_owned(),
            authorization: header("authorization"),
            request_id: header("x-request-id"),
            at: Instant::now(),
        };
        log.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(entry);
        client.request(req)
    })
}

/// Exactly this backoff, no jitter: waits can be asserted to the tick.
fn retry_every_100ms() -> RetryLayer {
    let backoff = Backoff::exponential(Duration::from_millis(100))
        .expect("a valid backoff")
        .jitter(Jitter::None);
    RetryLayer::new().max_retries(2).backoff(backoff)
}

/// Every layer on, in the facade's order (which the builder fixes, not the
/// order of these calls).
fn whole_stack(
    api: &FakeApi,
    log: &Log,
    quota: Quota,
    pool: &ConcurrencyLimitLayer,
) -> ClientBuilder {
    Client::builder(api.url())
        .timeout(Duration::from_secs(60))
        .cache(CacheLayer::new(Duration::from_secs(60)))
        .retry(retry_every_100ms())
        .rate_limit(RateLimitLayer::new(quota))
        .bearer_auth(TOKEN)
        .concurrency_limit(pool.clone())
        .transport(recording_transport(Arc::clone(log)))
}

#[tokio::test(start_paused = true)]
async fn a_retried_miss_passes_every_layer_and_each_records_its_part() {
    let api = FakeApi::start().await.expect("start");
    api.require_bearer(TOKEN);
    api.inject(
        "/posts/1",
        Fault::status(StatusCode::SERVICE_UNAVAILABLE).times(1),
    );
    let log = Log::default();
    // One permit a second, no burst: the retry's permit is a second after
    // the first attempt's.
    let quota = Quota::per_second(1).expect("a valid quota");
    let pool = ConcurrencyLimitLayer::new(1);
    let client = whole_stack(&api, &log, quota, &pool)
        .build()
        .expect("client");

    let started = Instant::now();
    let res = client.get("/posts/1").send().await.expect("a response");

    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.data().expect("json")["id"], 1);
    let summary = res.summary();
    // Cache (3): a miss, downloaded by this call.
    assert_eq!(summary.cache, Some(CacheStatus::Miss));
    assert!(!summary.from_cache);
    // Retry (4): two attempts, the second after exactly the 100 ms backoff.
    assert_eq!(summary.attempts, 2);
    let record = res
        .extensions()
        .get::<RetryRecord>()
        .expect("retry leaves its record");
    assert_eq!(record.attempts, 2);
    assert_eq!(record.retries.len(), 1);
    assert_eq!(
        record.retries[0].reason,
        RetryReason::Status(StatusCode::SERVICE_UNAVAILABLE)
    );
    assert_eq!(record.retries[0].delay, Duration::from_millis(100));
    // Rate limit (5), below retry: the second attempt took a permit of its
    // own, a second after the first, so it waited 1 s - 100 ms for it.
    assert_eq!(summary.permit_wait, Duration::from_millis(900));
    // Pool (8): its one slot was free for each attempt.
    assert_eq!(summary.queue_wait, Duration::ZERO);
    assert_eq!(pool.available(), 1, "the slot was given back");
    // The whole call: backoff, then the permit.
    assert_eq!(res.elapsed(), Duration::from_secs(1));
    assert_eq!(started.elapsed(), Duration::from_secs(1));

    // Auth (6), below retry: each attempt went out with the credential,
    // and with the call's one tracking id.
    let wire = sent(&log);
    assert_eq!(wire.len(), 2, "{wire:?}");
    let bearer = format!("Bearer {TOKEN}");
    for attempt in &wire {
        assert_eq!(attempt.path, "/posts/1");
        assert_eq!(attempt.authorization.as_deref(), Some(bearer.as_str()));
        assert_eq!(attempt.request_id, summary.request_id);
    }
    assert!(summary.request_id.is_some());
    assert_eq!(wire[1].at - wire[0].at, Duration::from_secs(1));
    assert_eq!(api.hits("/posts/1"), 2);
}

#[tokio::test(start_paused = true)]
async fn a_cache_hit_takes_no_permit_no_pool_slot_and_no_attempt() {
    let api = FakeApi::start().await.expect("start");
    api.require_bearer(TOKEN);
    // The second call holds the pool's only slot for ten seconds.
    api.inject("/posts/2", Fault::latency(Duration::from_secs(10)));
    let log = Log::default();
    // Two permits a minute, refused beyond: a hit that took a permit would
    // be refused.
    let quota = Quota::window(2, Duration::from_secs(60)).expect("a valid quota");
    let pool = ConcurrencyLimitLayer::new(1);
    let client = Client::builder(api.url())
        .timeout(Duration::from_secs(60))
        .cache(CacheLayer::new(Duration::from_secs(60)))
        .retry(retry_every_100ms())
        .rate_limit(RateLimitLayer::new(quota).reject())
        .bearer_auth(TOKEN)
        .concurrency_limit(pool.clone())
        .transport(recording_transport(Arc::clone(&log)))
        .build()
        .expect("client");

    let first = client.get("/posts/1").send().await.expect("a response");
    assert_eq!(first.summary().cache, Some(CacheStatus::Miss));
    assert_eq!(first.summary().attempts, 1);

    let slow = tokio::spawn({
        let client = client.clone();
        async move { client.get("/posts/2").send().await }
    });
    while pool.available() > 0 {
        tokio::task::yield_now().await;
    }

    // Both permits spent, the only slot held: the hit is answered anyway,
    // at once, from memory.
    let started = Instant::now();
    let hit = client.get("/posts/1").send().await.expect("a hit");
    assert_eq!(started.elapsed(), Duration::ZERO, "it waited for nothing");
    assert_eq!(hit.status(), StatusCode::OK);
    assert_eq!(hit.bytes(), first.bytes());
    let summary = hit.summary();
    assert_eq!(summary.cache, Some(CacheStatus::Hit));
    assert!(summary.from_cache);
    assert_eq!(summary.attempts, 0, "no attempt of its own");
    assert_eq!(summary.permit_wait, Duration::ZERO);
    assert_eq!(summary.queue_wait, Duration::ZERO);
    assert!(hit.extensions().get::<RetryRecord>().is_none());
    assert_eq!(api.hits("/posts/1"), 1, "the upstream was not asked again");
    assert_eq!(pool.available(), 0, "the slow call still holds the slot");

    // The permits really are spent: a call that needs one is refused.
    let refused = client
        .get("/posts/3")
        .send()
        .await
        .expect_err("no permit left");
    assert_eq!(refused.kind(), ErrorKind::RateLimited);
    assert_eq!(api.hits("/posts/3"), 0);

    let slow = slow.await.expect("joined").expect("the slow call");
    assert_eq!(slow.status(), StatusCode::OK);
    assert_eq!(slow.elapsed(), Duration::from_secs(10));
    assert_eq!(pool.available(), 1);
    let paths: Vec<_> = sent(&log).into_iter().map(|s| s.path).collect();
    assert_eq!(paths, ["/posts/1", "/posts/2"]);
}

#[tokio::test(start_paused = true)]
async fn a_call_waits_for_a_permit_then_for_a_slot_and_records_both() {
    let api = FakeApi::start().await.expect("start");
    api.require_bearer(TOKEN);
    // Every call to /posts/* takes a second upstream.
    api.inject("/posts/*", Fault::latency(Duration::from_secs(1)));
    let log = Log::default();
    // Two permits at once, then two a second: the third call's permit comes
    // 500 ms in, and the pool's two slots are busy until 1 s.
    let quota = Quota::per_second(2).expect("a valid quota");
    let pool = ConcurrencyLimitLayer::new(2);
    let client = whole_stack(&api, &log, quota, &pool)
        .build()
        .expect("client");

    let started = Instant::now();
    let calls: Vec<_> = (1..=3)
        .map(|id| {
            let client = client.clone();
            tokio::spawn(async move { client.get(format!("/posts/{id}")).send().await })
        })
        .collect();
    let mut summaries = Vec::new();
    for call in calls {
        let res = call.await.expect("joined").expect("a response");
        assert_eq!(res.status(), StatusCode::OK);
        summaries.push((res.summary().clone(), res.elapsed()));
    }
    let (third, elapsed) = &summaries[2];
    // The limiter (5) is above the pool (8): the permit first, 500 ms, then
    // the slot, the remaining 500 ms until a call in flight ends.
    assert_eq!(third.permit_wait, Duration::from_millis(500));
    assert_eq!(third.queue_wait, Duration::from_millis(500));
    assert_eq!(*elapsed, Duration::from_secs(2));
    for (summary, _) in &summaries[..2] {
        assert_eq!(summary.permit_wait, Duration::ZERO);
        assert_eq!(summary.queue_wait, Duration::ZERO);
    }
    for (summary, _) in &summaries {
        assert_eq!(summary.cache, Some(CacheStatus::Miss));
        assert_eq!(summary.attempts, 1);
    }
    assert_eq!(started.elapsed(), Duration::from_secs(2));
    assert!(sent(&log)
        .iter()
        .all(|s| s.authorization.as_deref() == Some(format!("Bearer {TOKEN}").as_str())));
}

#[tokio::test(start_paused = true)]
async fn a_401_replay_happens_inside_auth_with_no_second_permit_and_no_second_attempt() {
    let api = FakeApi::start().await.expect("start");
    api.issue_tokens("client-1", "hunter2", 3600);
    let log = Log::default();
    // Two permits a minute, refused beyond.
    let quota = Quota::window(2, Duration::from_secs(60)).expect("a valid quota");
    let client = Client::builder(api.url())
        .cache(CacheLayer::new(Duration::from_secs(60)))
        .retry(retry_every_100ms())
        .rate_limit(RateLimitLayer::new(quota).reject())
        .oauth2_client_credentials(format!("{}/oauth/token", api.url()), "client-1", "hunter2")
        .concurrency_limit(ConcurrencyLimitLayer::new(1))
        .transport(recording_transport(Arc::clone(&log)))
        .build()
        .expect("client");

    let first = client.get("/posts/1").send().await.expect("first");
    assert_eq!(first.status(), StatusCode::OK);
    api.revoke_tokens();
    let second = client.get("/posts/2").send().await.expect("replayed");
    assert_eq!(
        second.status(),
        StatusCode::OK,
        "a 401, a refresh, a replay"
    );
    assert_eq!(second.summary().attempts, 1, "the replay is not an attempt");
    assert_eq!(second.summary().cache, Some(CacheStatus::Miss));
    let wire: Vec<_> = sent(&log)
        .into_iter()
        .filter(|s| s.path == "/posts/2")
        .collect();
    assert_eq!(wire.len(), 2, "the 401 and the replay went on the wire");
    assert!(
        wire[0].authorization != wire[1].authorization,
        "the replay carried the refreshed token"
    );
    // Two calls, two permits: the replay took none, so a third call is the
    // one refused.
    let third = client.get("/posts/3").send().await.expect_err("no permit");
    assert_eq!(third.kind(), ErrorKind::RateLimited);
}

#[tokio::test(start_paused = true)]
async fn a_batched_load_is_one_call_through_the_whole_stack_per_batch() {
    let api = FakeApi::start().await.expect("start");
    api.require_bearer(TOKEN);
    api.inject(
        "/metadata",
        Fault::status(StatusCode::SERVICE_UNAVAILABLE).times(1),
    );
    let log = Log::default();
    let quota = Quota::per_second(1).expect("a valid quota");
    let pool = ConcurrencyLimitLayer::new(1);
    let client = whole_stack(&api, &log, quota, &pool)
        .build()
        .expect("client");
    let metadata = client.batched(BatchSpec::get("/metadata").max_delay(Duration::from_millis(10)));

    let started = Instant::now();
    let (one, two, missing) = tokio::join!(metadata.load(1), metadata.load(2), metadata.load(5000));
    assert_eq!(one.expect("item 1")["id"], 1);
    assert_eq!(two.expect("item 2")["id"], 2);
    assert_eq!(
        missing.expect_err("no such id").kind(),
        ErrorKind::NotInBatch
    );
    // The batcher is above the stack: its one batched call was retried
    // (503, then 200), each attempt with a permit of its own (the second a
    // second after the first) and with the credential.
    let wire = sent(&log);
    assert_eq!(wire.len(), 2, "{wire:?}");
    assert!(wire.iter().all(|s| s.path == "/metadata"
        && s.authorization.as_deref() == Some(format!("Bearer {TOKEN}").as_str())));
    assert_eq!(wire[1].at - wire[0].at, Duration::from_secs(1));
    assert_eq!(
        started.elapsed(),
        Duration::from_millis(10) + Duration::from_secs(1)
    );
    let last = api.last_request("/metadata").expect("recorded");
    let query = last.uri.query().unwrap_or_default();
    for id in ["id=1", "id=2", "id=5000"] {
        assert!(query.contains(id), "{query}");
    }

    // The same batch again is a cache hit: no request, no permit.
    let before = Instant::now();
    let (one, two, _) = tokio::join!(metadata.load(1), metadata.load(2), metadata.load(5000));
    assert_eq!((one.is_ok(), two.is_ok()), (true, true));
    assert_eq!(
        before.elapsed(),
        Duration::from_millis(10),
        "only the gathering"
    );
    assert_eq!(sent(&log).len(), 2);
}
