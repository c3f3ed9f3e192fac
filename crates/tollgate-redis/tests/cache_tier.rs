//! `RedisCacheTier` against a real `redis-server` (started by the test on
//! a free loopback port) and `FakeApi` over loopback HTTP: two cache layers
//! with memories of their own, sharing one Redis, act as two replicas.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::AUTHORIZATION;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::time::Instant;
use tollgate_cache::{
    Cache, CacheLayer, CacheStatus, Freshness, FromTier, DEFAULT_TIER_TIMEOUT, TIER_RETRY,
};
use tollgate_redis::RedisCacheTier;
use tollgate_testkit::{FakeApi, FaultProxy, ProxyFault, RedisServer, HOW_TO_GET_REDIS};
use tower::{Layer, ServiceExt};

type Hyper = Client<HttpConnector, Empty<Bytes>>;

const NAMESPACE: &str = "tier-test";

/// One replica: a cache layer of its own (its own memory) over a hyper
/// client, with `url`'s Redis as its tier. The tier timeout is generous
/// (the first call connects, and a loaded machine must not turn a test of
/// sharing into one of timeouts); the tests of failures set their own.
fn replica(url: &str, freshness: Freshness) -> (CacheLayer, Cache<Hyper>) {
    replica_within(url, freshness, Duration::from_secs(2))
}

fn replica_within(
    url: &str,
    freshness: Freshness,
    tier_timeout: Duration,
) -> (CacheLayer, Cache<Hyper>) {
    let tier = RedisCacheTier::builder(url)
        .namespace(NAMESPACE)
        .timeout(tier_timeout)
        .build()
        .expect("tier");
    let layer = CacheLayer::builder(freshness)
        .tier(Arc::new(tier))
        .tier_timeout(tier_timeout)
        .build();
    let service = layer.layer(Client::builder(TokioExecutor::new()).build_http());
    (layer, service)
}

fn fixed() -> Freshness {
    Freshness::Fixed(Duration::from_secs(60))
}

fn get(api: &FakeApi, path: &str) -> http::request::Builder {
    Request::get(format!("{}{path}", api.url()))
}

async fn send(service: &Cache<Hyper>, request: Request<Empty<Bytes>>) -> Response<Bytes> {
    let response = service.clone().oneshot(request).await.expect("response");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    Response::from_parts(parts, body)
}

fn status<B>(response: &Response<B>) -> CacheStatus {
    *response.extensions().get::<CacheStatus>().expect("status")
}

fn from_tier<B>(response: &Response<B>) -> bool {
    response.extensions().get::<FromTier>().is_some()
}

async fn redis(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("connect")
}

async fn keys(url: &str) -> Vec<String> {
    let mut connection = redis(url).await;
    redis::cmd("KEYS")
        .arg(format!("{NAMESPACE}:c1:*"))
        .query_async(&mut connection)
        .await
        .expect("KEYS")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_b_answers_from_redis_what_replica_a_fetched() {
    let server = RedisServer::start().expect(HOW_TO_GET_REDIS);
    let api = FakeApi::start().await.expect("fake api");
    let (_, a) = replica(&server.url(), fixed());
    let (b_layer, b) = replica(&server.url(), fixed());

    let first = send(&a, get(&api, "/posts/1").body(Empty::new()).expect("req")).await;
    assert_eq!(status(&first), CacheStatus::Miss);
    let second = send(&b, get(&api, "/posts/1").body(Empty::new()).expect("req")).await;
    assert_eq!(status(&second), CacheStatus::Hit);
    assert!(from_tier(&second));
    assert_eq!(second.body(), first.body());
    assert_eq!(
        second.headers().get("content-type"),
        first.headers().get("content-type")
    );
    assert_eq!(api.hits("/posts/1"), 1, "the upstream saw one request");
    assert_eq!(b_layer.stats().tier_hits, 1);

    let keys = keys(&server.url()).await;
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert!(keys[0].starts_with("tier-test:c1:{") && keys[0].ends_with('}'));
    assert!(!keys[0].contains("posts"), "no URI in clear: {}", keys[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ttl_in_redis_is_the_remaining_freshness() {
    let server = RedisServer::start().expect(HOW_TO_GET_REDIS);
    let api = FakeApi::start().await.expect("fake api");
    api.cache_control("/posts/*", "max-age=60");
    let (_, a) = replica(&server.url(), Freshness::Http { default_ttl: None });
    send(&a, get(&api, "/posts/1").body(Empty::new()).expect("req")).await;
    // A fixed 25 s layer writes the second.
    let (_, c) = replica(&server.url(), Freshness::Fixed(Duration::from_secs(25)));
    send(&c, get(&api, "/posts/2").body(Empty::new()).expect("req")).await;

    let mut connection = redis(&server.url()).await;
    let mut ttls = Vec::new();
    for key in keys(&server.url()).await {
        let pttl: i64 = redis::cmd("PTTL")
            .arg(&key)
            .query_async(&mut connection)
            .await
            .expect("PTTL");
        ttls.push(pttl);
    }
    ttls.sort_unstable();
    assert_eq!(ttls.len(), 2);
    assert!((24_000..=25_000).contains(&ttls[0]), "{ttls:?}");
    assert!((59_000..=60_000).contains(&ttls[1]), "{ttls:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credential_partitions_hold_across_replicas() {
    let server = RedisServer::start().expect(HOW_TO_GET_REDIS);
    let api = FakeApi::start().await.expect("fake api");
    let (_, a) = replica(&server.url(), fixed());
    let (_, b) = replica(&server.url(), fixed());
    let as_user = |who: &str| {
        get(&api, "/posts/1")
            .header(AUTHORIZATION, format!("Bearer {who}"))
            .body(Empty::new())
            .expect("req")
    };
    send(&a, as_user("alice")).await;
    let bob = send(&b, as_user("bob")).await;
    assert_eq!(status(&bob), CacheStatus::Miss, "never Alice's entry");
    let anonymous = send(&b, get(&api, "/posts/1").body(Empty::new()).expect("req")).await;
    assert_eq!(status(&anonymous), CacheStatus::Miss);
    assert_eq!(api.hits("/posts/1"), 3);
    let alice = send(&b, as_user("alice")).await;
    assert!(
        from_tier(&alice),
        "Alice's own entry, from the other replica"
    );
    assert_eq!(api.hits("/posts/1"), 3);
    for key in keys(&server.url()).await {
        assert!(!key.contains("alice") && !key.contains("bob"), "{key}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vary_holds_across_replicas() {
    let server = RedisServer::start().expect(HOW_TO_GET_REDIS);
    let api = FakeApi::start().await.expect("fake api");
    api.vary("/posts/*", "accept-language");
    let (_, a) = replica(&server.url(), fixed());
    let (_, b) = replica(&server.url(), fixed());
    let (_, c) = replica(&server.url(), fixed());
    let in_lang = |lang: &str| {
        get(&api, "/posts/1")
            .header("accept-language", lang)
            .body(Empty::new())
            .expect("req")
    };
    send(&a, in_lang("fr")).await;
    let de = send(&b, in_lang("de")).await;
    assert_eq!(
        status(&de),
        CacheStatus::Miss,
        "French is no answer to German"
    );
    assert_eq!(api.hits("/posts/1"), 2);
    let de = send(&c, in_lang("de")).await;
    assert!(from_tier(&de), "the same language is");
    assert_eq!(api.hits("/posts/1"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_value_put_in_redis_by_hand_is_a_miss() {
    let server = RedisServer::start().expect(HOW_TO_GET_REDIS);
    let api = FakeApi::start().await.expect("fake api");
    let (_, a) = replica(&server.url(), fixed());
    send(&a, get(&api, "/posts/1").body(Empty::new()).expect("req")).await;
    let mut connection = redis(&server.url()).await;
    for key in keys(&server.url()).await {
        let () = redis::cmd("SET")
            .arg(&key)
            .arg(b"\x01garbage that is no entry".as_slice())
            .query_async(&mut connection)
            .await
            .expect("SET");
    }
    let (b_layer, b) = replica(&server.url(), fixed());
    let response = send(&b, get(&api, "/posts/1").body(Empty::new()).expect("req")).await;
    assert_eq!(status(&response), CacheStatus::Miss);
    assert!(response.status().is_success());
    assert_eq!(api.hits("/posts/1"), 2);
    let stats = b_layer.stats();
    assert_eq!((stats.tier_misses, stats.tier_errors), (1, 0));
    // B's fill replaced the garbage: a third replica gets a real entry.
    let (_, c) = replica(&server.url(), fixed());
    let response = send(&c, get(&api, "/posts/1").body(Empty::new()).expect("req")).await;
    assert!(from_tier(&response));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_costs_no_request_and_its_return_brings_the_tier_back() {
    let mut server = RedisServer::start().expect(HOW_TO_GET_REDIS);
    let api = FakeApi::start().await.expect("fake api");
    let (a_layer, a) = replica(&server.url(), fixed());
    // B waits for the tier the default 10 ms at most.
    let (b_layer, b) = replica_within(&server.url(), fixed(), DEFAULT_TIER_TIMEOUT);
    send(&a, get(&api, "/posts/1").body(Empty::new()).expect("req")).await;

    server.stop();
    for i in 1..=20 {
        let path = format!("/posts/{i}");
        let started = Instant::now();
        let response = send(&b, get(&api, &path).body(Empty::new()).expect("req")).await;
        assert!(response.status().is_success(), "{path}");
        assert_eq!(status(&response), CacheStatus::Miss, "{path}");
        // The tier costs at most its timeout (10 ms); the rest is the
        // upstream over loopback. Generous for a loaded machine.
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "{path}: {:?}",
            started.elapsed()
        );
    }
    // And memory still serves.
    let hit = send(&b, get(&api, "/posts/3").body(Empty::new()).expect("req")).await;
    assert_eq!(status(&hit), CacheStatus::Hit);
    let stats = b_layer.stats();
    assert!(stats.tier_errors >= 1, "{stats:?}");
    assert!(stats.tier_skipped >= 1, "{stats:?}");

    server.restart().expect("restart");
    // Within a few rests the tier is used again, by itself.
    let deadline = Instant::now() + TIER_RETRY * 10;
    let mut n = 0;
    loop {
        n += 1;
        let path = format!("/comments/{n}");
        send(&a, get(&api, &path).body(Empty::new()).expect("req")).await;
        let shared = send(&b, get(&api, &path).body(Empty::new()).expect("req")).await;
        if from_tier(&shared) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the tier did not come back: {:?} {:?}",
            a_layer.stats(),
            b_layer.stats()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_never_answers_costs_a_request_only_the_tier_timeout() {
    let server = RedisServer::start().expect(HOW_TO_GET_REDIS);
    let api = FakeApi::start().await.expect("fake api");
    let proxy = FaultProxy::start(server.addr()).await.expect("proxy");
    let url = format!("redis://{}", proxy.addr());
    let tier = RedisCacheTier::builder(url.as_str())
        .namespace(NAMESPACE)
        .timeout(Duration::from_secs(5))
        .build()
        .expect("tier");
    let layer = CacheLayer::builder(fixed())
        .tier(Arc::new(tier))
        .tier_timeout(Duration::from_millis(20))
        .build();
    let service = layer.layer(Client::builder(TokioExecutor::new()).build_http());
    // Warm both connections (until the tier took a write: a loaded
    // machine may miss the first connect's 20 ms), then take Redis's
    // answers away.
    for i in 1..=20 {
        let path = format!("/posts/{i}");
        send(&service, get(&api, &path).body(Empty::new()).expect("req")).await;
        if layer.stats().tier_writes > 0 {
            break;
        }
        tokio::time::sleep(TIER_RETRY).await;
    }
    assert!(layer.stats().tier_writes > 0, "{:?}", layer.stats());
    proxy.inject(ProxyFault::blackhole());
    tokio::time::sleep(TIER_RETRY).await;
    let errors = layer.stats().tier_errors;
    let started = Instant::now();
    let response = send(
        &service,
        get(&api, "/posts/50").body(Empty::new()).expect("req"),
    )
    .await;
    let took = started.elapsed();
    assert!(response.status().is_success());
    assert!(took >= Duration::from_millis(20), "{took:?}");
    assert!(
        took < Duration::from_millis(300),
        "waited past the tier timeout: {took:?}"
    );
    assert_eq!(layer.stats().tier_errors, errors + 1);
}
