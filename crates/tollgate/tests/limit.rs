//! The facade with its concurrency pool, against FakeApi over loopback.
#![cfg(all(feature = "limit", feature = "retry"))]

use std::time::Duration;

use tokio::time::Instant;
use tollgate::{Client, ErrorKind};
use tollgate_limit::ConcurrencyLimitLayer;
use tollgate_testkit::{FakeApi, Fault};

#[tokio::test(start_paused = true)]
async fn calls_beyond_the_limit_wait_their_turn_and_say_how_long() {
    let api = FakeApi::start().await.expect("start");
    api.inject("/posts/*", Fault::latency(Duration::from_millis(100)));
    let client = Client::builder(api.url())
        .concurrency_limit(ConcurrencyLimitLayer::new(2))
        .build()
        .expect("client");
    let started = Instant::now();
    let calls: Vec<_> = (1..=6)
        .map(|id| {
            let client = client.clone();
            tokio::spawn(async move { client.get(format!("/posts/{id}")).send().await })
        })
        .collect();
    let mut waits = Vec::new();
    for call in calls {
        let res = call.await.expect("task").expect("response");
        assert_eq!(res.status(), 200);
        waits.push(res.summary().queue_wait);
        assert_eq!(
            res.to_json()["queue_wait_ms"],
            res.summary().queue_wait.as_secs_f64() * 1e3
        );
    }
    assert_eq!(api.hits("/posts/*"), 6);
    assert_eq!(waits.iter().filter(|w| w.is_zero()).count(), 2);
    assert!(
        waits.iter().any(|w| *w >= Duration::from_millis(200)),
        "{waits:?}"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "three rounds of two"
    );
}

#[tokio::test(start_paused = true)]
async fn a_full_queue_and_a_queue_timeout_are_typed_errors() {
    let api = FakeApi::start().await.expect("start");
    api.inject("/users/*", Fault::latency(Duration::from_secs(10)));
    let client = Client::builder(api.url())
        .concurrency_limit(
            ConcurrencyLimitLayer::new(1)
                .max_queue(1)
                .queue_timeout(Duration::from_millis(500)),
        )
        .build()
        .expect("client");
    let busy = tokio::spawn({
        let client = client.clone();
        async move { client.get("/users/1").send().await }
    });
    tokio::time::sleep(Duration::from_millis(10)).await;
    let queued = tokio::spawn({
        let client = client.clone();
        async move { client.get("/users/2").send().await }
    });
    tokio::time::sleep(Duration::from_millis(10)).await;
    let refused = client.get("/users/3").send().await.expect_err("queue full");
    assert_eq!(refused.kind(), ErrorKind::TooManyPending, "{refused:?}");
    let timed_out = queued.await.expect("task").expect_err("waited too long");
    assert_eq!(timed_out.kind(), ErrorKind::PendingTimeout, "{timed_out:?}");
    assert!(busy.await.expect("task").is_ok());
    assert_eq!(
        api.hits("/users/*"),
        1,
        "neither refused call reached the server"
    );
}

mod rate {
    use std::time::Duration;

    use http::StatusCode;
    use tokio::time::Instant;
    use tollgate::{Client, ErrorKind};
    use tollgate_limit::{Quota, RateLimitLayer};
    use tollgate_retry::RetryLayer;
    use tollgate_testkit::{FakeApi, Fault};

    #[tokio::test(start_paused = true)]
    async fn calls_are_paced_and_the_wait_is_in_the_summary() {
        let api = FakeApi::start().await.expect("start");
        let client = Client::builder(api.url())
            .rate_limit(RateLimitLayer::new(
                Quota::window(2, Duration::from_secs(1)).expect("valid"),
            ))
            .build()
            .expect("client");
        let mut waits = Vec::new();
        for id in 1..=5 {
            let res = client
                .get(format!("/posts/{id}"))
                .send()
                .await
                .expect("sent");
            assert_eq!(res.status(), 200);
            waits.push(res.summary().permit_wait);
        }
        let s = Duration::from_secs;
        assert_eq!(waits, vec![s(0), s(0), s(1), s(0), s(1)]);
        assert_eq!(api.hits("/posts/*"), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_after_is_waited_once_not_twice() {
        let api = FakeApi::start().await.expect("start");
        api.inject(
            "/posts/1",
            Fault::status(StatusCode::TOO_MANY_REQUESTS)
                .times(1)
                .retry_after("3"),
        );
        let client = Client::builder(api.url())
            .retry(RetryLayer::new())
            .rate_limit(RateLimitLayer::new(Quota::per_second(100).expect("valid")))
            .build()
            .expect("client");
        let started = Instant::now();
        let res = client.get("/posts/1").send().await.expect("sent");
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.summary().attempts, 2);
        let took = started.elapsed();
        assert!(
            took >= Duration::from_secs(3) && took < Duration::from_millis(3100),
            "{took:?}: one wait of 3 s, not two"
        );
        assert_eq!(
            res.summary().permit_wait,
            Duration::ZERO,
            "the limiter's pause had ended when the retry came"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_permit_beyond_the_calls_deadline_is_refused_at_once() {
        let api = FakeApi::start().await.expect("start");
        let client = Client::builder(api.url())
            .timeout(Duration::from_secs(2))
            .rate_limit(RateLimitLayer::new(
                Quota::window(1, Duration::from_secs(60)).expect("valid"),
            ))
            .build()
            .expect("client");
        client.get("/posts/1").send().await.expect("first");
        let started = Instant::now();
        let err = client
            .get("/posts/1")
            .send()
            .await
            .expect_err("the next permit is a minute away");
        assert_eq!(err.kind(), ErrorKind::WaitTooLong, "{err:?}");
        assert_eq!(
            started.elapsed(),
            Duration::ZERO,
            "refused without waiting out the 2 s deadline"
        );
        assert_eq!(api.hits("/posts/1"), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn refusals_are_typed_errors() {
        let api = FakeApi::start().await.expect("start");
        let quota = Quota::window(1, Duration::from_secs(60)).expect("valid");
        let rejecting = Client::builder(api.url())
            .rate_limit(RateLimitLayer::new(quota).reject())
            .build()
            .expect("client");
        rejecting.get("/posts/1").send().await.expect("first");
        let err = rejecting.get("/posts/1").send().await.expect_err("limited");
        assert_eq!(err.kind(), ErrorKind::RateLimited);
        assert_eq!(err.retry_after(), Some(Duration::from_secs(60)));

        let impatient = Client::builder(api.url())
            .rate_limit(RateLimitLayer::new(quota).max_wait(Duration::from_secs(1)))
            .build()
            .expect("client");
        impatient.get("/posts/1").send().await.expect("first");
        assert_eq!(
            impatient
                .get("/posts/1")
                .send()
                .await
                .expect_err("too long")
                .kind(),
            ErrorKind::WaitTooLong
        );
        assert_eq!(api.hits("/posts/1"), 2);
    }
}
