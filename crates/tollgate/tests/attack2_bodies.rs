//! Adversarial tests of body buffering below retry and the read timeout:
//! trickles against the deadline, non-idempotent methods, the body limit
//! with and without retry under the cache, and cut bodies under the cache.
//! FakeApi over loopback, paused time.
#![cfg(all(feature = "retry", feature = "cache", feature = "limit"))]

use std::time::Duration;

use serde_json::json;
use tokio::time::Instant;
use tollgate::{ApiResponse, Client, Error, ErrorKind};
use tollgate_cache::CacheLayer;
use tollgate_retry::{Backoff, Jitter, RetryLayer};
use tollgate_testkit::{FakeApi, Fault};

fn quick() -> RetryLayer {
    let backoff = Backoff::exponential(Duration::from_millis(50))
        .expect("valid")
        .jitter(Jitter::None);
    RetryLayer::new().backoff(backoff).no_budget()
}

async fn ends<F: std::future::Future<Output = Result<ApiResponse, Error>>>(
    call: F,
) -> (Result<ApiResponse, Error>, Duration) {
    let started = Instant::now();
    let result = tokio::time::timeout(Duration::from_secs(3600), call)
        .await
        .expect("the call never ended");
    (result, started.elapsed())
}

/// A body that trickles forever within the read timeout still ends at the
/// call's deadline, retry or not.
#[tokio::test(start_paused = true)]
async fn a_trickle_within_the_read_timeout_ends_at_the_deadline() {
    let api = FakeApi::start().await.expect("start");
    api.inject("/posts/1", Fault::trickle_body(Duration::from_millis(900)));
    let client = Client::builder(api.url())
        .retry(quick().max_retries(5))
        .read_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(3))
        .build()
        .expect("client");
    let (result, waited) = ends(client.get("/posts/1").send()).await;
    let e = result
        .map(|r| r.status())
        .expect_err("outlasts the deadline");
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e:?}");
    assert!(waited <= Duration::from_millis(3100), "{waited:?}");
}

/// A stalled body on every attempt: the retries stop at the deadline.
#[tokio::test(start_paused = true)]
async fn stalled_bodies_on_every_attempt_end_at_the_deadline() {
    let api = FakeApi::start().await.expect("start");
    api.inject("/posts/1", Fault::stall_body());
    let client = Client::builder(api.url())
        .retry(quick().max_retries(10))
        .read_timeout(Duration::from_secs(1))
        .timeout(Duration::from_millis(2500))
        .build()
        .expect("client");
    let (result, waited) = ends(client.get("/posts/1").send()).await;
    let err = result.expect_err("always stalled");
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err:?}");
    assert!(waited <= Duration::from_millis(2600), "{waited:?}");
    assert!(api.hits("/posts/1") >= 2, "retried after the read timeout");
}

/// PATCH is not idempotent either: a cut or stalled body sends it once.
#[tokio::test(start_paused = true)]
async fn a_patch_with_a_cut_or_stalled_body_is_sent_once() {
    let api = FakeApi::start().await.expect("start");
    let client = Client::builder(api.url())
        .retry(quick().max_retries(3))
        .read_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    api.inject("/posts/1", Fault::cut_body().times(1));
    let r = client
        .patch("/posts/1")
        .json(&json!({"title": "x"}))
        .send()
        .await;
    assert!(r.is_err(), "{r:?}");
    assert_eq!(api.hits("/posts/1"), 1);
    api.inject("/posts/1", Fault::stall_body().times(1));
    let r = client
        .patch("/posts/1")
        .json(&json!({"title": "x"}))
        .send()
        .await;
    assert!(r.is_err(), "{r:?}");
    assert_eq!(api.hits("/posts/1"), 2);
}

/// A stalled POST under retry gives back its pool slot at the read timeout
/// and is not retried.
#[tokio::test(start_paused = true)]
async fn a_stalled_post_under_retry_frees_its_slot_and_is_sent_once() {
    let api = FakeApi::start().await.expect("start");
    api.inject("/posts", Fault::stall_body().times(1));
    let client = Client::builder(api.url())
        .no_timeout()
        .retry(quick().max_retries(3))
        .read_timeout(Duration::from_secs(2))
        .concurrency_limit(tollgate_limit::ConcurrencyLimitLayer::new(1))
        .build()
        .expect("client");
    let stalled = tokio::spawn({
        let client = client.clone();
        async move {
            client
                .post("/posts")
                .json(&json!({"title": "x"}))
                .send()
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(10)).await;
    let (result, waited) = ends(client.get("/posts/2").send()).await;
    assert_eq!(result.expect("the slot came back").status(), 200);
    assert!(waited < Duration::from_secs(3), "{waited:?}");
    let err = stalled.await.expect("joined").expect_err("stalled");
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err:?}");
    assert_eq!(api.hits("/posts"), 1);
}

/// A body over `max_response_body` is an error on every call, not only the
/// first: the cache must not turn it into a hit that skips the limit.
/// Without retry (no buffer below the cache).
#[tokio::test(start_paused = true)]
async fn a_body_over_the_limit_stays_an_error_under_the_cache_without_retry() {
    let api = FakeApi::start().await.expect("start");
    let client = Client::builder(api.url())
        .cache(CacheLayer::new(Duration::from_secs(60)))
        .max_response_body(16)
        .build()
        .expect("client");
    for i in 0..2 {
        let r = client.get("/posts/1").send().await;
        let err = r.map(|r| r.status()).expect_err(&format!("call {i}"));
        assert_eq!(err.kind(), ErrorKind::BodyTooLarge, "call {i}: {err:?}");
    }
}

/// The same with retry on.
#[tokio::test(start_paused = true)]
async fn a_body_over_the_limit_stays_an_error_under_the_cache_with_retry() {
    let api = FakeApi::start().await.expect("start");
    let client = Client::builder(api.url())
        .cache(CacheLayer::new(Duration::from_secs(60)))
        .retry(quick().max_retries(3))
        .max_response_body(16)
        .build()
        .expect("client");
    for i in 0..2 {
        let r = client.get("/posts/1").send().await;
        let err = r.map(|r| r.status()).expect_err(&format!("call {i}"));
        assert_eq!(err.kind(), ErrorKind::BodyTooLarge, "call {i}: {err:?}");
    }
    assert_eq!(api.hits("/posts/1"), 2, "never retried, never stored");
}

/// A cut body is never cached: with retry it is retried and the whole body
/// stored; without, the call fails and the next one goes upstream.
#[tokio::test(start_paused = true)]
async fn a_cut_body_is_never_stored_by_the_cache() {
    for retry in [false, true] {
        let api = FakeApi::start().await.expect("start");
        let mut builder = Client::builder(api.url())
            .cache(CacheLayer::new(Duration::from_secs(60)))
            .read_timeout(Duration::from_secs(1));
        if retry {
            builder = builder.retry(quick().max_retries(2));
        }
        let client = builder.build().expect("client");
        api.inject("/posts/1", Fault::cut_body().times(1));
        let first = client.get("/posts/1").send().await;
        if retry {
            assert_eq!(first.expect("retried").data().expect("json")["id"], 1);
        } else {
            assert!(first.is_err());
        }
        let second = client.get("/posts/1").send().await.expect("whole");
        assert_eq!(second.data().expect("whole json")["id"], 1, "retry {retry}");
        api.inject("/posts/1", Fault::stall_body().times(1));
    }
}

/// A stalled body with the cache and retry on: the waiters coalesced on it
/// end within the read timeout and the retries.
#[tokio::test(start_paused = true)]
async fn coalesced_waiters_on_a_stalled_body_end_with_retry_on() {
    let api = FakeApi::start().await.expect("start");
    api.inject("/posts/1", Fault::stall_body());
    let client = Client::builder(api.url())
        .no_timeout()
        .retry(quick().max_retries(1))
        .read_timeout(Duration::from_secs(2))
        .cache(CacheLayer::new(Duration::from_secs(60)))
        .build()
        .expect("client");
    let calls: Vec<_> = (0..3)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { ends(client.get("/posts/1").send()).await })
        })
        .collect();
    for call in calls {
        let (result, waited) = call.await.expect("joined");
        let e = result.expect_err("always stalled");
        assert_eq!(e.kind(), ErrorKind::Timeout, "{e:?}");
        // Two attempts of 2 s each and a backoff; never more than that
        // even for a waiter that asks again after the leader.
        assert!(waited < Duration::from_secs(10), "{waited:?}");
    }
}

/// A body of exactly `max_response_body` bytes is whole; one byte more is
/// too large, under retry and the cache or not.
#[tokio::test(start_paused = true)]
async fn the_body_limit_is_inclusive_at_its_exact_size() {
    let api = FakeApi::start().await.expect("start");
    let plain = Client::builder(api.url()).build().expect("client");
    let len = plain
        .get("/posts/1")
        .send()
        .await
        .expect("ok")
        .bytes()
        .len();
    for (retry, cache) in [(false, false), (true, false), (false, true), (true, true)] {
        let build = |max: usize| {
            let mut b = Client::builder(api.url()).max_response_body(max);
            if retry {
                b = b.retry(quick().max_retries(2));
            }
            if cache {
                b = b.cache(CacheLayer::new(Duration::from_secs(60)));
            }
            b.build().expect("client")
        };
        let exact = build(len).get("/posts/1").send().await;
        assert_eq!(
            exact.expect("exactly the limit").bytes().len(),
            len,
            "retry {retry} cache {cache}"
        );
        let err = build(len - 1)
            .get("/posts/1")
            .send()
            .await
            .map(|r| r.status())
            .expect_err("one byte over");
        assert_eq!(
            err.kind(),
            ErrorKind::BodyTooLarge,
            "retry {retry} cache {cache}"
        );
    }
}

/// A HEAD declares the body's length but has none: never too large.
#[tokio::test(start_paused = true)]
async fn a_head_is_never_too_large() {
    let api = FakeApi::start().await.expect("start");
    let client = Client::builder(api.url())
        .retry(quick().max_retries(2))
        .max_response_body(4)
        .build()
        .expect("client");
    let res = client
        .request(http::Method::HEAD, "/posts/1")
        .send()
        .await
        .expect("a HEAD has no body");
    assert!(res.bytes().is_empty());
}

/// Without retry, with and without the cache (whose own buffering reads the
/// body inside the stack): a trickle within the read timeout still ends at
/// the deadline, with one outcome, a timeout.
#[tokio::test(start_paused = true)]
async fn a_trickle_ends_at_the_deadline_without_retry_with_or_without_cache() {
    for cache in [false, true] {
        let api = FakeApi::start().await.expect("start");
        api.inject("/posts/1", Fault::trickle_body(Duration::from_millis(900)));
        let mut b = Client::builder(api.url())
            .read_timeout(Duration::from_secs(1))
            .timeout(Duration::from_secs(3));
        if cache {
            b = b.cache(CacheLayer::new(Duration::from_secs(60)));
        }
        let client = b.build().expect("client");
        let (result, waited) = ends(client.get("/posts/1").send()).await;
        let e = result
            .map(|r| r.status())
            .expect_err("the trickle outlasts the deadline");
        assert_eq!(e.kind(), ErrorKind::Timeout, "cache {cache}: {e:?}");
        assert!(
            waited <= Duration::from_millis(3100),
            "cache {cache}: {waited:?}"
        );
    }
}

/// PUT and DELETE are idempotent: a cut body is retried. A POST with an
/// idempotency key is retried after a stalled body too.
#[tokio::test(start_paused = true)]
async fn idempotent_methods_and_keyed_posts_are_retried_after_a_bad_body() {
    let api = FakeApi::start().await.expect("start");
    let client = Client::builder(api.url())
        .retry(quick().max_retries(2).with_idempotency_key())
        .read_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    for method in [http::Method::PUT, http::Method::DELETE] {
        let before = api.hits("/posts/1");
        api.inject("/posts/1", Fault::cut_body().times(1));
        let res = client
            .request(method.clone(), "/posts/1")
            .json(&json!({"id": 1, "title": "x"}))
            .send()
            .await;
        assert!(res.is_ok(), "{method}: {res:?}");
        assert_eq!(api.hits("/posts/1") - before, 2, "{method}");
    }
    api.inject("/posts", Fault::stall_body().times(1));
    let res = client
        .post("/posts")
        .json(&json!({"title": "x"}))
        .send()
        .await
        .expect("retried after the read timeout");
    assert_eq!(res.status(), 201);
    assert_eq!(api.hits("/posts"), 2);
}

/// One cache shared by a client with a large body limit and one with a
/// small one: a hit stored by the first is still too large for the second.
#[tokio::test(start_paused = true)]
async fn a_hit_stored_under_a_larger_limit_is_too_large_for_a_smaller_one() {
    let api = FakeApi::start().await.expect("start");
    let cache = CacheLayer::new(Duration::from_secs(60));
    let large = Client::builder(api.url())
        .cache(cache.clone())
        .build()
        .expect("client");
    let small = Client::builder(api.url())
        .cache(cache.clone())
        .retry(quick().max_retries(2))
        .max_response_body(16)
        .build()
        .expect("client");
    large.get("/posts/1").send().await.expect("stored");
    let err = small
        .get("/posts/1")
        .send()
        .await
        .map(|r| r.status())
        .expect_err("too large");
    assert_eq!(err.kind(), ErrorKind::BodyTooLarge, "{err:?}");
    assert_eq!(api.hits("/posts/1"), 1, "never sent upstream for it");
    // Observed: the refused hit is counted twice (once by `answer`, once by
    // the layer the call then goes through).
    assert!(cache.stats().hits >= 1);
}

/// A head slower than the read timeout: the POST reached the server, so it
/// is sent once; a GET is retried.
#[tokio::test(start_paused = true)]
async fn a_slow_head_past_the_read_timeout_sends_a_post_once() {
    let api = FakeApi::start().await.expect("start");
    let client = Client::builder(api.url())
        .retry(quick().max_retries(2))
        .read_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    api.inject("/posts", Fault::latency(Duration::from_secs(10)).times(1));
    let (result, waited) = ends(client.post("/posts").json(&json!({"t": 1})).send()).await;
    let err = result.map(|r| r.status()).expect_err("timed out");
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err:?}");
    assert!(waited < Duration::from_secs(2), "{waited:?}");
    assert_eq!(api.hits("/posts"), 1);
    api.inject("/posts/1", Fault::latency(Duration::from_secs(10)).times(1));
    let res = client.get("/posts/1").send().await.expect("retried");
    assert_eq!(res.summary().attempts, 2);
}
