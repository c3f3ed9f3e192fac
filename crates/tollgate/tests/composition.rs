//! Pairs of layers in the facade's order, each promise of one re-checked
//! with the other in the stack, against FakeApi over loopback on paused
//! time: one wait not two, a long `Retry-After` slept on by nobody, a 401
//! replay that takes no second permit, a cache hit that takes none at all.
#![cfg(all(
    feature = "retry",
    feature = "limit",
    feature = "auth",
    feature = "cache"
))]

use std::time::Duration;

use http::StatusCode;
use tokio::time::Instant;
use tollgate::{Client, ErrorKind};
use tollgate_cache::CacheLayer;
use tollgate_limit::{Quota, RateLimitLayer};
use tollgate_retry::RetryLayer;
use tollgate_testkit::{FakeApi, Fault};

#[tokio::test(start_paused = true)]
async fn an_hours_retry_after_is_slept_on_by_nobody_with_the_limiter_in_the_stack() {
    // Retry alone returns at once with the server's 3600 s. With the rate
    // limiter below it, the limiter's pause is capped (60 s): that capped
    // pause must not become a wait of retry's, and the caller must still
    // see the server's own delay.
    let api = FakeApi::start().await.expect("start");
    api.inject(
        "/posts/1",
        Fault::status(StatusCode::TOO_MANY_REQUESTS).retry_after("3600"),
    );
    let client = Client::builder(api.url())
        .timeout(Duration::from_secs(600))
        .retry(RetryLayer::new())
        .rate_limit(RateLimitLayer::new(Quota::per_second(100).expect("valid")))
        .build()
        .expect("client");
    let started = Instant::now();
    let res = client.get("/posts/1").send().await.expect("a response");
    assert_eq!(started.elapsed(), Duration::ZERO, "nobody slept");
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(res.summary().attempts, 1);
    assert_eq!(api.hits("/posts/1"), 1);
    let err = res.error_for_status().expect_err("a 429");
    assert_eq!(err.retry_after(), Some(Duration::from_secs(3600)));
}

#[tokio::test(start_paused = true)]
async fn a_401_replay_takes_no_second_permit() {
    let api = FakeApi::start().await.expect("start");
    api.issue_tokens("client-1", "hunter2", 3600);
    // Two permits a minute, refused beyond: a replay that took a permit
    // would leave none for the third call's... second.
    let client = Client::builder(api.url())
        .rate_limit(
            RateLimitLayer::new(Quota::window(2, Duration::from_secs(60)).expect("valid")).reject(),
        )
        .oauth2_client_credentials(format!("{}/oauth/token", api.url()), "client-1", "hunter2")
        .build()
        .expect("client");
    assert_eq!(
        client.get("/posts/1").send().await.expect("first").status(),
        200
    );
    api.revoke_tokens();
    let second = client.get("/posts/2").send().await.expect("replayed");
    assert_eq!(second.status(), 200, "a 401, one refresh, one replay");
    assert_eq!(
        api.hits("/posts/2"),
        2,
        "the upstream saw the 401 and the replay"
    );
    let third = client
        .get("/posts/3")
        .send()
        .await
        .expect_err("two permits used");
    assert_eq!(third.kind(), ErrorKind::RateLimited);
}

#[tokio::test(start_paused = true)]
async fn retries_take_permits_and_a_cache_hit_takes_none() {
    let api = FakeApi::start().await.expect("start");
    api.inject(
        "/posts/1",
        Fault::status(StatusCode::SERVICE_UNAVAILABLE).times(1),
    );
    let cache = CacheLayer::new(Duration::from_secs(60));
    let client = Client::builder(api.url())
        .cache(cache)
        .retry(RetryLayer::new())
        .rate_limit(
            RateLimitLayer::new(Quota::window(2, Duration::from_secs(60)).expect("valid")).reject(),
        )
        .build()
        .expect("client");
    // A 503 and its retry: two attempts, two permits.
    let res = client.get("/posts/1").send().await.expect("retried");
    assert_eq!(res.status(), 200);
    assert_eq!(res.summary().attempts, 2);
    // Cached: as many hits as we like, no permit, no request.
    for _ in 0..5 {
        let hit = client.get("/posts/1").send().await.expect("a hit");
        assert_eq!(hit.status(), 200);
    }
    assert_eq!(api.hits("/posts/1"), 2);
    // Anything else needs a permit, and both are spent.
    let err = client
        .get("/posts/2")
        .send()
        .await
        .expect_err("no permit left");
    assert_eq!(err.kind(), ErrorKind::RateLimited);
}

#[tokio::test(start_paused = true)]
async fn a_limiter_pause_holds_back_callers_already_waiting() {
    // One permit per 100 ms, five callers queued. The first gets a 429 with
    // Retry-After: 2: the four already waiting must not go before the pause
    // ends, and then go at the quota's pace, not at once.
    let api = FakeApi::start().await.expect("start");
    api.inject(
        "/posts/1",
        Fault::status(StatusCode::TOO_MANY_REQUESTS)
            .times(1)
            .retry_after("2"),
    );
    let client = Client::builder(api.url())
        .rate_limit(RateLimitLayer::new(
            Quota::per_second(10)
                .expect("valid")
                .with_burst(1)
                .expect("valid"),
        ))
        .build()
        .expect("client");
    let started = Instant::now();
    let calls: Vec<_> = (0..5)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move {
                if i > 0 {
                    // Queued behind the first, in order.
                    tokio::task::yield_now().await;
                }
                let res = client.get("/posts/1").send().await.expect("sent");
                (res.status(), started.elapsed())
            })
        })
        .collect();
    let mut served = Vec::new();
    for call in calls {
        served.push(call.await.expect("task"));
    }
    served.sort_by_key(|s| s.1);
    assert_eq!(served[0].0, StatusCode::TOO_MANY_REQUESTS);
    let later: Vec<Duration> = served[1..].iter().map(|s| s.1).collect();
    let ms = Duration::from_millis;
    assert_eq!(later, vec![ms(2000), ms(2100), ms(2200), ms(2300)]);
}

#[tokio::test(start_paused = true)]
async fn a_retry_waiting_out_its_backoff_holds_no_pool_slot() {
    use tollgate_limit::ConcurrencyLimitLayer;
    use tollgate_retry::{Backoff, Jitter};
    let api = FakeApi::start().await.expect("start");
    api.inject(
        "/posts/1",
        Fault::status(StatusCode::SERVICE_UNAVAILABLE).times(1),
    );
    let client = Client::builder(api.url())
        .retry(
            RetryLayer::new().backoff(
                Backoff::exponential(Duration::from_secs(1))
                    .expect("valid")
                    .jitter(Jitter::None),
            ),
        )
        .concurrency_limit(ConcurrencyLimitLayer::new(1))
        .build()
        .expect("client");
    let started = Instant::now();
    let first = {
        let client = client.clone();
        tokio::spawn(async move { client.get("/posts/1").send().await })
    };
    // The first call got its 503 and waits 1 s before its retry.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let second = client.get("/posts/2").send().await.expect("served");
    assert_eq!(second.status(), 200);
    assert_eq!(
        second.summary().queue_wait,
        Duration::ZERO,
        "the slot was free"
    );
    assert!(started.elapsed() < Duration::from_secs(1));
    let first = first.await.expect("task").expect("retried");
    assert_eq!(first.status(), 200);
    assert_eq!(first.summary().attempts, 2);
}

#[tokio::test(start_paused = true)]
async fn a_cache_hit_takes_no_pool_slot() {
    use tollgate_limit::ConcurrencyLimitLayer;
    let api = FakeApi::start().await.expect("start");
    api.inject("/posts/2", Fault::latency(Duration::from_secs(10)));
    let client = Client::builder(api.url())
        .cache(CacheLayer::new(Duration::from_secs(60)))
        .concurrency_limit(ConcurrencyLimitLayer::new(1))
        .build()
        .expect("client");
    client.get("/posts/1").send().await.expect("stored");
    // A slow call holds the only slot for 10 s...
    let slow = {
        let client = client.clone();
        tokio::spawn(async move { client.get("/posts/2").send().await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    // ...and a hit is answered at once all the same.
    let started = Instant::now();
    let hit = client.get("/posts/1").send().await.expect("a hit");
    assert_eq!(hit.status(), 200);
    assert_eq!(started.elapsed(), Duration::ZERO);
    assert_eq!(api.hits("/posts/1"), 1);
    slow.await.expect("task").expect("the slow call ends");
}

#[tokio::test(start_paused = true)]
async fn a_caller_waiting_for_a_permit_holds_no_pool_slot() {
    use http::HeaderName;
    use tollgate_limit::{ConcurrencyLimitLayer, KeyBy};
    let api = FakeApi::start().await.expect("start");
    let client = Client::builder(api.url())
        .rate_limit(
            RateLimitLayer::new(Quota::window(1, Duration::from_secs(10)).expect("valid"))
                .keyed_by(KeyBy::header(HeaderName::from_static("x-tenant"))),
        )
        .concurrency_limit(ConcurrencyLimitLayer::new(1))
        .build()
        .expect("client");
    client
        .get("/posts/1")
        .header("x-tenant", "a")
        .send()
        .await
        .expect("a's permit");
    // a's next call waits 10 s for its permit, above the pool...
    let waiting = {
        let client = client.clone();
        tokio::spawn(async move { client.get("/posts/1").header("x-tenant", "a").send().await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    // ...so b's call finds the pool's only slot free.
    let started = Instant::now();
    let b = client
        .get("/posts/2")
        .header("x-tenant", "b")
        .send()
        .await
        .expect("b served");
    assert_eq!(b.summary().queue_wait, Duration::ZERO);
    assert_eq!(started.elapsed(), Duration::ZERO);
    let a = waiting.await.expect("task").expect("a served later");
    assert_eq!(a.summary().permit_wait, Duration::from_secs(10));
}

#[tokio::test(start_paused = true)]
async fn an_attempt_timeout_gives_the_pool_slot_back() {
    use tollgate_limit::ConcurrencyLimitLayer;
    let api = FakeApi::start().await.expect("start");
    api.inject("/posts/1", Fault::latency(Duration::from_secs(3600)));
    let client = Client::builder(api.url())
        .attempt_timeout(Duration::from_secs(1))
        .concurrency_limit(ConcurrencyLimitLayer::new(1))
        .build()
        .expect("client");
    let hung = {
        let client = client.clone();
        tokio::spawn(async move { client.get("/posts/1").send().await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let next = client.get("/posts/2").send().await.expect("served");
    assert_eq!(next.status(), 200);
    assert_eq!(
        next.summary().queue_wait,
        Duration::from_millis(900),
        "the slot came back when the hung attempt timed out"
    );
    let err = hung.await.expect("task").expect_err("timed out");
    assert_eq!(err.kind(), ErrorKind::Timeout);
}

#[tokio::test(start_paused = true)]
async fn the_attempt_timeout_does_not_count_the_wait_for_a_permit() {
    // The attempt timeout (7) is below the rate limiter (5): a 2 s wait for
    // a permit is not an attempt that took 2 s.
    let api = FakeApi::start().await.expect("start");
    let client = Client::builder(api.url())
        .rate_limit(RateLimitLayer::new(
            Quota::window(1, Duration::from_secs(2)).expect("valid"),
        ))
        .attempt_timeout(Duration::from_secs(1))
        .build()
        .expect("client");
    client.get("/posts/1").send().await.expect("first");
    let second = client
        .get("/posts/2")
        .send()
        .await
        .expect("waited, then served");
    assert_eq!(second.status(), 200);
    assert_eq!(second.summary().permit_wait, Duration::from_secs(2));
}

/// A token source that takes 2 s to answer.
fn slow_tokens() -> impl tollgate_auth::TokenSource {
    tollgate_auth::token_fn(|| async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        Ok(tollgate_auth::Token::bearer("t0k3n")?)
    })
}

#[tokio::test(start_paused = true)]
async fn a_call_waiting_for_its_token_holds_no_pool_slot() {
    use tollgate_limit::ConcurrencyLimitLayer;
    let api = FakeApi::start().await.expect("start");
    // Two clients share one pool of one slot; the first waits 2 s for its
    // token above the pool, so the second finds the slot free.
    let pool = ConcurrencyLimitLayer::new(1);
    let authed = Client::builder(api.url())
        .token_source(slow_tokens())
        .concurrency_limit(pool.clone())
        .build()
        .expect("client");
    let plain = Client::builder(api.url())
        .concurrency_limit(pool)
        .build()
        .expect("client");
    let waiting = tokio::spawn(async move { authed.get("/posts/1").send().await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let other = plain.get("/posts/2").send().await.expect("served");
    assert_eq!(other.summary().queue_wait, Duration::ZERO);
    assert_eq!(started.elapsed(), Duration::ZERO);
    let res = waiting
        .await
        .expect("task")
        .expect("served after its token");
    assert_eq!(res.status(), 200);
}

#[tokio::test(start_paused = true)]
async fn a_slow_token_fetch_is_not_cut_by_the_attempt_timeout() {
    // Auth (6) is above the attempt timeout (7): fetching a token is not
    // part of an attempt; the call's own deadline still bounds it.
    let api = FakeApi::start().await.expect("start");
    let client = Client::builder(api.url())
        .token_source(slow_tokens())
        .attempt_timeout(Duration::from_secs(1))
        .build()
        .expect("client");
    let res = client.get("/posts/1").send().await.expect("served");
    assert_eq!(res.status(), 200);
}

#[tokio::test(start_paused = true)]
async fn a_timed_out_leader_shares_its_error_and_nothing_is_cached() {
    let api = FakeApi::start().await.expect("start");
    api.inject("/posts/1", Fault::latency(Duration::from_secs(10)).times(1));
    let client = Client::builder(api.url())
        .cache(CacheLayer::new(Duration::from_secs(60)))
        .attempt_timeout(Duration::from_secs(1))
        .build()
        .expect("client");
    let calls: Vec<_> = (0..3)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { client.get("/posts/1").send().await })
        })
        .collect();
    for call in calls {
        let err = call.await.expect("task").expect_err("the leader timed out");
        assert_eq!(err.kind(), ErrorKind::Timeout);
    }
    assert_eq!(api.hits("/posts/1"), 1, "one request for the three");
    let res = client
        .get("/posts/1")
        .send()
        .await
        .expect("not a cached error");
    assert_eq!(res.status(), 200);
    assert_eq!(api.hits("/posts/1"), 2);
}
