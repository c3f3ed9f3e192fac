//! Adversarial tests of the rate limiter through the facade, against
//! FakeApi over loopback: over-admission across client clones, deadlines
//! with learned pauses, dropped calls, typed errors, no key text.
#![cfg(feature = "limit")]

use std::time::Duration;

use http::StatusCode;
use tokio::time::Instant;
use tollgate::{Client, ErrorKind};
use tollgate_limit::{KeyBy, Quota, RateLimitLayer};
use tollgate_testkit::{FakeApi, Fault};

fn paced(interval_ms: u64) -> Quota {
    Quota::per(1, Duration::from_millis(interval_ms)).expect("valid")
}

#[tokio::test(start_paused = true)]
async fn clones_of_a_client_never_over_admit() {
    let api = FakeApi::start().await.expect("start");
    let client = Client::builder(api.url())
        .rate_limit(
            RateLimitLayer::new(Quota::window(3, Duration::from_secs(60)).expect("valid")).reject(),
        )
        .build()
        .expect("client");
    let calls: Vec<_> = (1..=30)
        .map(|id| {
            let client = client.clone();
            tokio::spawn(async move { client.get(format!("/posts/{id}")).send().await })
        })
        .collect();
    let mut refused = 0;
    for call in calls {
        match call.await.expect("task") {
            Ok(res) => assert_eq!(res.status(), 200),
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::RateLimited);
                assert!(e
                    .retry_after()
                    .is_some_and(|d| d <= Duration::from_secs(60)));
                refused += 1;
            }
        }
    }
    assert_eq!(api.hits("/posts/*"), 3);
    assert_eq!(refused, 27);
}

/// A pause learned while calls are queued: the caller behind the head has a
/// 500 ms timeout; whatever the limiter does, the facade's call ends by then.
#[tokio::test(start_paused = true)]
async fn a_queued_call_ends_by_its_timeout_when_a_pause_is_learned() {
    let api = FakeApi::start().await.expect("start");
    api.inject(
        "/posts/1",
        Fault::status(StatusCode::TOO_MANY_REQUESTS)
            .times(1)
            .delay(Duration::from_millis(50))
            .retry_after("10"),
    );
    let layer = RateLimitLayer::new(paced(100));
    let client = Client::builder(api.url())
        .rate_limit(layer.clone())
        .timeout(Duration::from_millis(500))
        .build()
        .expect("client");
    let started = Instant::now();
    let calls: Vec<_> = (0..3)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move {
                for _ in 0..i {
                    tokio::task::yield_now().await;
                }
                let out = client.get("/posts/1").send().await;
                (out.map(|r| r.status()), started.elapsed())
            })
        })
        .collect();
    for call in calls {
        let (out, took) = call.await.expect("task");
        assert!(
            took <= Duration::from_millis(510),
            "{out:?} ended after {took:?}"
        );
        if let Err(e) = out {
            assert!(
                matches!(e.kind(), ErrorKind::Timeout | ErrorKind::WaitTooLong),
                "{e}"
            );
        }
    }
    assert_eq!(layer.waiting(), 0);
    assert_eq!(api.hits("/posts/*"), 1, "only the first reached the API");
}

/// Calls dropped while waiting for a permit free their places: the ones
/// behind them are served at the quota's pace, and nothing is left waiting.
#[tokio::test(start_paused = true)]
async fn dropped_calls_free_their_places() {
    let api = FakeApi::start().await.expect("start");
    let layer = RateLimitLayer::new(paced(100));
    let client = Client::builder(api.url())
        .rate_limit(layer.clone())
        .build()
        .expect("client");
    client.get("/posts/1").send().await.expect("at once");
    let started = Instant::now();
    let mut calls = Vec::new();
    for i in 0..6 {
        let client = client.clone();
        calls.push(tokio::spawn(async move {
            client.get(format!("/posts/{}", i + 2)).send().await
        }));
        tokio::task::yield_now().await;
    }
    assert_eq!(layer.waiting(), 6);
    for i in [0, 2, 4] {
        calls[i].abort();
    }
    let mut served = 0;
    for call in calls {
        if let Ok(res) = call.await {
            assert_eq!(res.expect("served").status(), 200);
            served += 1;
        }
    }
    assert_eq!(served, 3);
    assert!(started.elapsed() <= Duration::from_millis(310));
    assert_eq!(layer.waiting(), 0);
    assert_eq!(api.hits("/posts/*"), 4);
}

#[tokio::test(start_paused = true)]
async fn refusals_have_their_kinds() {
    let api = FakeApi::start().await.expect("start");
    let client = Client::builder(api.url())
        .rate_limit(
            RateLimitLayer::new(paced(1_000))
                .max_wait(Duration::from_millis(1_500))
                .max_queue(1),
        )
        .build()
        .expect("client");
    client.get("/posts/1").send().await.expect("at once");
    let waiter = tokio::spawn({
        let client = client.clone();
        async move { client.get("/posts/2").send().await }
    });
    tokio::task::yield_now().await;
    let e = client
        .get("/posts/3")
        .send()
        .await
        .expect_err("2 s away, and the queue is full");
    assert!(
        matches!(e.kind(), ErrorKind::WaitTooLong | ErrorKind::QueueFull),
        "{e}"
    );
    waiter.await.expect("task").expect("served");
}

/// Keyed by an API key header: keys isolated, and neither errors nor their
/// Debug output carry the key.
#[tokio::test(start_paused = true)]
async fn keyed_by_api_key_isolates_and_never_shows_it() {
    const SECRET: &str = "sk_live_ATTACKSECRET";
    let api = FakeApi::start().await.expect("start");
    let client = Client::builder(api.url())
        .rate_limit(
            RateLimitLayer::new(Quota::window(1, Duration::from_secs(60)).expect("valid"))
                .reject()
                .keyed_by(KeyBy::header(http::HeaderName::from_static("x-api-key"))),
        )
        .build()
        .expect("client");
    client
        .get("/posts/1")
        .header("x-api-key", SECRET)
        .send()
        .await
        .expect("first");
    let e = client
        .get("/posts/1")
        .header("x-api-key", SECRET)
        .send()
        .await
        .expect_err("over the limit");
    assert_eq!(e.kind(), ErrorKind::RateLimited);
    let shown = format!("{e} {e:?}");
    assert!(!shown.contains("ATTACKSECRET"), "{shown}");
    client
        .get("/posts/1")
        .header("x-api-key", "another")
        .send()
        .await
        .expect("another key is untouched");
}
