//! Attacks on the degraded modes: callers cancelled mid-script, the
//! layer's bounds below the store's timeout, a slow Redis behind a proxy,
//! 64 callers racing an outage, flapping, the probe, pauses learned while
//! degraded.
//!
//! These run on real time: the store's timeouts and the probe run on
//! tokio's clock while Redis answers on its own, so paused time would fire
//! every timeout at once (each wall-clock wait says so).

#![allow(clippy::unwrap_used, reason = "tests")]

mod common;

use common::{raw, redis};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use tokio::time::Instant;
use tollgate_limit::{Quota, RateLimitStore};
use tollgate_redis::{Degraded, Mode, RedisRateLimitStore};
use tollgate_testkit::{FaultProxy, ProxyFault};
use tower::{service_fn, BoxError, ServiceBuilder, ServiceExt};

const SEC: u64 = 1_000_000_000;

/// One call through `layer` to an upstream that counts what reaches it.
async fn through(
    layer: tollgate_limit::RateLimitLayer,
    sent: &Arc<AtomicU64>,
) -> Result<Response<String>, BoxError> {
    let sent = Arc::clone(sent);
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service(service_fn(move |_r: Request<String>| {
            sent.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, std::convert::Infallible>(Response::new(String::new())) }
        }));
    svc.oneshot(Request::new(String::new())).await
}

/// A caller whose own `max_wait` is shorter than the store's timeout stops
/// waiting before the store does: the store's future is dropped, its
/// timeout never fires, the store never degrades. Fail open then never
/// admits anyone while Redis hangs.
#[tokio::test]
async fn fail_open_admits_while_redis_hangs_even_for_callers_with_short_waits() {
    let redis = redis();
    let proxy = FaultProxy::start(redis.addr()).await.unwrap();
    let store = RedisRateLimitStore::builder(format!("redis://{}", proxy.addr()))
        .quota(Quota::per_second(100).unwrap())
        .timeout(Duration::from_millis(50))
        .degraded(Degraded::FailOpen)
        .build()
        .unwrap();
    // Connected; then Redis hangs on the open connection (a partition, a
    // stopped process): no connection timeout will fire.
    assert_eq!(store.check("warm-up", 0).await.unwrap(), Ok(()));
    proxy.inject(ProxyFault::blackhole());
    let sent = Arc::new(AtomicU64::new(0));
    let mut outcomes = Vec::new();
    for _ in 0..10 {
        let layer = store.layer().max_wait(Duration::from_millis(10));
        outcomes.push(
            through(layer, &sent)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
        );
    }
    assert_eq!(
        store.mode(),
        Mode::Degraded,
        "Redis hung for ten calls: {outcomes:?}"
    );
    // Callers that gave up before the store's own timeout (50 ms) told
    // it Redis hung could not be admitted; every caller after is.
    assert!(
        outcomes[6..].iter().all(Result::is_ok),
        "fail open after the store's timeout: {outcomes:?}"
    );
    assert!(sent.load(Ordering::SeqCst) >= 4, "{outcomes:?}");
}

/// The same with the layer's `store_timeout` set below the store's own
/// timeout: every caller fails with `StoreTimedOut`, in fail-open mode.
#[tokio::test]
async fn fail_open_admits_while_redis_hangs_whatever_the_layers_store_timeout() {
    let redis = redis();
    let proxy = FaultProxy::start(redis.addr()).await.unwrap();
    let store = RedisRateLimitStore::builder(format!("redis://{}", proxy.addr()))
        .quota(Quota::per_second(100).unwrap())
        .timeout(Duration::from_millis(50))
        .degraded(Degraded::FailOpen)
        .build()
        .unwrap();
    // Connected; then Redis hangs on the open connection (a partition, a
    // stopped process): no connection timeout will fire.
    assert_eq!(store.check("warm-up", 0).await.unwrap(), Ok(()));
    proxy.inject(ProxyFault::blackhole());
    let sent = Arc::new(AtomicU64::new(0));
    let mut outcomes = Vec::new();
    for _ in 0..10 {
        let layer = store.layer().store_timeout(Duration::from_millis(10));
        outcomes.push(
            through(layer, &sent)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
        );
    }
    // Callers that gave up before the store's own timeout (50 ms) told
    // it Redis hung could not be admitted; every caller after is.
    assert!(
        outcomes[6..].iter().all(Result::is_ok),
        "fail open after the store's timeout: {outcomes:?}"
    );
    assert!(sent.load(Ordering::SeqCst) >= 4, "{outcomes:?}");
}

/// Callers dropped at every point of a script call (timeouts of 0, 1 ns,
/// then a few microseconds) leave the multiplexed connection in step: the
/// next answers are each for their own call, nothing was admitted beyond
/// the quota, and the store is still shared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_dropped_mid_script_never_loosen_the_quota_nor_desync_the_connection() {
    let redis = redis();
    let store = RedisRateLimitStore::builder(redis.url())
        // Not a test of timeouts: room for a loaded machine.
        .timeout(std::time::Duration::from_secs(2))
        .quota(Quota::window(5, Duration::from_secs(3_600)).unwrap())
        .deny_cache_keys(0)
        .build()
        .unwrap();
    let mut admitted = 0;
    for i in 0..200u64 {
        let cut = Duration::from_nanos(if i < 20 { i % 2 } else { (i * 997) % 400_000 });
        if let Ok(answer) = tokio::time::timeout(cut, store.check("k", 0)).await {
            admitted += usize::from(answer.unwrap().is_ok());
        }
    }
    let mut conn = raw(&redis.url()).await;
    let keys = store.redis_keys("k");
    let grants: usize = redis::cmd("LLEN")
        .arg(&keys[2])
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(grants <= 5, "{grants} grants for a window of 5");
    assert!(admitted <= grants);
    // The connection answers each call its own answer: a fresh key is
    // admitted, the spent one refused.
    for i in 0..20 {
        assert_eq!(store.check(&format!("fresh{i}"), 0).await.unwrap(), Ok(()));
        if grants == 5 {
            assert!(store.check("k", 0).await.unwrap().is_err());
        }
    }
    assert_eq!(store.mode(), Mode::Shared, "{:?}", store.stats());
}

/// Redis slowed by a proxy: each caller is answered within the timeout
/// (from Redis or the degraded mode), never after Redis's own delay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_redis_never_holds_a_caller_past_the_timeout() {
    let redis = redis();
    let proxy = FaultProxy::start(redis.addr()).await.unwrap();
    let store = RedisRateLimitStore::builder(proxy.url().replace("http://", "redis://"))
        .quota(Quota::per_second(1_000).unwrap())
        .timeout(Duration::from_millis(50))
        .degraded(Degraded::LocalShare { replicas: 2 })
        .build()
        .unwrap();
    assert_eq!(store.check("k", 0).await.unwrap(), Ok(()));
    proxy.inject(ProxyFault::latency(Duration::from_secs(2)));
    let mut tasks = Vec::new();
    for i in 0..64u64 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let started = Instant::now();
            let answer = store.check("k", i).await;
            (started.elapsed(), answer.is_ok())
        }));
    }
    for task in tasks {
        let (waited, ok) = task.await.unwrap();
        // 50 ms plus scheduling on a busy 2-core machine; far below 2 s.
        assert!(waited < Duration::from_millis(600), "waited {waited:?}");
        assert!(ok, "local share decides");
    }
    assert_eq!(store.mode(), Mode::Degraded);
    assert_eq!(store.stats().degradations, 1, "one outage, counted once");
}

/// 64 callers racing an outage and a recovery, three times over: each
/// outage is counted once, each recovery once, and the probe never runs
/// twice (two probes would count two recoveries).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_callers_racing_outages_count_each_outage_and_recovery_once() {
    let mut redis = redis();
    let store = RedisRateLimitStore::builder(redis.url())
        // Not a test of timeouts: room for a loaded machine.
        .timeout(std::time::Duration::from_secs(2))
        .quota(Quota::per_second(1_000_000).unwrap())
        .degraded(Degraded::FailOpen)
        .build()
        .unwrap();
    for round in 1..=3u64 {
        assert_eq!(store.check("k", 0).await.unwrap(), Ok(()));
        redis.stop();
        let mut tasks = Vec::new();
        for i in 0..64u64 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                store.check(&format!("k{}", i % 4), i).await.unwrap()
            }));
        }
        for task in tasks {
            assert_eq!(task.await.unwrap(), Ok(()), "fail open");
        }
        assert_eq!(store.mode(), Mode::Degraded);
        redis.restart().unwrap();
        let back = Instant::now();
        // The probe runs every 100 ms of real time.
        while store.mode() != Mode::Shared {
            assert!(back.elapsed() < Duration::from_secs(1), "round {round}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let stats = store.stats();
        assert_eq!(
            (stats.degradations, stats.recoveries),
            (round, round),
            "{stats:?}"
        );
    }
}

/// Redis that answers PING but refuses every script (writes refused:
/// `min-replicas-to-write` without replicas, as after a failover to a
/// lone replica, or an ACL user without EVAL) has not come back: the
/// store must not flap between shared and degraded every probe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_pings_but_cannot_decide_is_one_outage_not_a_flapping_mode() {
    let redis = redis();
    let store = RedisRateLimitStore::builder(redis.url())
        // Not a test of timeouts: room for a loaded machine.
        .timeout(std::time::Duration::from_secs(2))
        .quota(Quota::per_second(1_000_000).unwrap())
        .degraded(Degraded::FailOpen)
        .build()
        .unwrap();
    assert_eq!(store.check("k", 0).await.unwrap(), Ok(()));
    let mut conn = raw(&redis.url()).await;
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("min-replicas-to-write")
        .arg("1")
        .query_async(&mut conn)
        .await
        .unwrap();
    // About seven probe intervals of real time, a caller every 20 ms.
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(700) {
        assert_eq!(store.check("k", 0).await.unwrap(), Ok(()), "fail open");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stats = store.stats();
    assert_eq!(stats.degradations, 1, "one outage: {stats:?}");
    assert_eq!(store.mode(), Mode::Degraded);
}

/// A pause the upstream asked for while Redis is down is held by this
/// replica after Redis comes back (the docs: held in the deny cache).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_learned_while_degraded_still_holds_after_redis_returns() {
    let mut redis = redis();
    let store = RedisRateLimitStore::builder(redis.url())
        // Not a test of timeouts: room for a loaded machine.
        .timeout(std::time::Duration::from_secs(2))
        .quota(Quota::per_second(1_000).unwrap())
        .degraded(Degraded::FailOpen)
        .build()
        .unwrap();
    assert_eq!(store.check("k", 0).await.unwrap(), Ok(()));
    redis.stop();
    assert_eq!(store.check("k", SEC).await.unwrap(), Ok(()), "fail open");
    assert_eq!(store.mode(), Mode::Degraded);
    store.pause("k", SEC, 60 * SEC).await.unwrap();
    assert_eq!(store.check("k", 2 * SEC).await.unwrap(), Err(60 * SEC));
    redis.restart().unwrap();
    let back = Instant::now();
    while store.mode() != Mode::Shared {
        assert!(back.elapsed() < Duration::from_secs(1));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(store.check("k", 3 * SEC).await.unwrap(), Err(60 * SEC));
}

/// The docs: "Pauses learned while degraded are held by the replica (deny
/// cache, local share)". A fail-open replica whose deny cache is full of
/// other keys' refusals drops the new pause: the next caller is admitted
/// inside the pause the upstream asked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_learned_while_degraded_holds_even_with_a_full_deny_cache() {
    let mut redis = redis();
    let store = RedisRateLimitStore::builder(redis.url())
        // Not a test of timeouts: room for a loaded machine.
        .timeout(std::time::Duration::from_secs(2))
        .quota(Quota::window(1, Duration::from_secs(3_600)).unwrap())
        .degraded(Degraded::FailOpen)
        .deny_cache_keys(16)
        .build()
        .unwrap();
    // Fill every shard of the deny cache with refusals an hour ahead.
    for i in 0..400 {
        let key = format!("other{i}");
        assert_eq!(store.check(&key, 0).await.unwrap(), Ok(()));
        assert!(store.check(&key, 0).await.unwrap().is_err());
    }
    redis.stop();
    assert_eq!(store.check("k", SEC).await.unwrap(), Ok(()), "fail open");
    assert_eq!(store.mode(), Mode::Degraded);
    store.pause("k", SEC, 60 * SEC).await.unwrap();
    assert_eq!(
        store.check("k", 2 * SEC).await.unwrap(),
        Err(60 * SEC),
        "the upstream asked for 59 s of quiet; this replica sends at once"
    );
}

/// A replica whose probe task died with the runtime that spawned it must
/// still find Redis back when used from another runtime.
#[test]
fn shared_mode_returns_when_the_runtime_that_degraded_the_store_is_gone() {
    let mut redis = redis();
    let first = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let store = first.block_on(async {
        RedisRateLimitStore::builder(redis.url())
            // Not a test of timeouts: room for a loaded machine.
            .timeout(std::time::Duration::from_secs(2))
            .quota(Quota::per_second(1_000).unwrap())
            .degraded(Degraded::FailOpen)
            .build()
            .unwrap()
    });
    redis.stop();
    first.block_on(async {
        assert_eq!(store.check("k", 0).await.unwrap(), Ok(()));
    });
    assert_eq!(store.mode(), Mode::Degraded);
    drop(first);
    redis.restart().unwrap();
    let second = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    second.block_on(async {
        let back = Instant::now();
        // The probe runs every 100 ms of real time.
        while back.elapsed() < Duration::from_millis(1_500) && store.mode() != Mode::Shared {
            let _ = store.check("k", SEC).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    assert_eq!(store.mode(), Mode::Shared, "{:?}", store.stats());
}
