//! Replicas of a Tollgate client sharing one quota through Redis, over real
//! HTTP on loopback to the testkit's FakeApi.

#![allow(clippy::unwrap_used, reason = "tests")]

use std::time::Duration;

use http::StatusCode;
use tollgate::{Client, ErrorKind};
use tollgate_limit::Quota;
use tollgate_redis::{Degraded, Mode, RedisRateLimitStore};
use tollgate_testkit::{FakeApi, Fault, RedisServer, HOW_TO_GET_REDIS};

fn replica(api: &FakeApi, store: &RedisRateLimitStore) -> Client {
    Client::builder(api.url())
        .rate_limit(store.layer().max_wait(Duration::from_secs(1)))
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replicas_429_pauses_the_other_before_it_sends_anything() {
    let redis = RedisServer::start().expect(HOW_TO_GET_REDIS);
    let api = FakeApi::start().await.unwrap();
    api.inject(
        "/posts/1",
        Fault::status(StatusCode::TOO_MANY_REQUESTS)
            .retry_after("30")
            .times(1),
    );
    let quota = Quota::per_second(100).unwrap();
    let store_a = RedisRateLimitStore::builder(redis.url())
        // Not a test of timeouts: room for a loaded machine.
        .timeout(std::time::Duration::from_secs(2))
        .quota(quota)
        .build()
        .unwrap();
    let store_b = RedisRateLimitStore::builder(redis.url())
        // Not a test of timeouts: room for a loaded machine.
        .timeout(std::time::Duration::from_secs(2))
        .quota(quota)
        .build()
        .unwrap();
    let (a, b) = (replica(&api, &store_a), replica(&api, &store_b));

    let first = a.get("/posts/1").send().await.unwrap();
    assert_eq!(first.status(), StatusCode::TOO_MANY_REQUESTS);
    // Replica b never saw the 429; Redis tells it the upstream said 30 s,
    // past its wait of 1 s: refused at once, nothing sent.
    let err = b.get("/posts/1").send().await.expect_err("paused");
    assert_eq!(err.kind(), ErrorKind::WaitTooLong, "{err}");
    assert_eq!(api.hits("/posts/1"), 1);
    assert_eq!(store_a.stats().pauses, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_fails_closed_with_a_typed_error_and_sends_nothing() {
    let mut redis = RedisServer::start().expect(HOW_TO_GET_REDIS);
    let api = FakeApi::start().await.unwrap();
    let store = RedisRateLimitStore::builder(redis.url())
        // Not a test of timeouts: room for a loaded machine.
        .timeout(std::time::Duration::from_secs(2))
        .quota(Quota::per_second(100).unwrap())
        .degraded(Degraded::FailClosed)
        .build()
        .unwrap();
    let client = replica(&api, &store);
    assert!(client
        .get("/posts/1")
        .send()
        .await
        .unwrap()
        .status()
        .is_success());
    redis.stop();
    for _ in 0..3 {
        let err = client.get("/posts/1").send().await.expect_err("closed");
        assert_eq!(err.kind(), ErrorKind::LimiterUnavailable, "{err}");
    }
    assert_eq!(api.hits("/posts/1"), 1);
    assert_eq!(store.mode(), Mode::Degraded);
}
