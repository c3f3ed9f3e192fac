//! More attacks: a Redis process stopped (SIGSTOP) and resumed, a
//! connection that flaps under load, unreadable state in the lenient
//! modes, TLS spoken to a clear-text Redis, local shares at the ends.
//!
//! Real time throughout: the store's timeouts and its probe run on tokio's
//! clock while Redis runs on its own; paused time would fire them at once.

#![allow(clippy::unwrap_used, reason = "tests")]

mod common;

use common::{raw, redis};
use std::time::Duration;

use tokio::time::Instant;
use tollgate_limit::{Quota, RateLimitStore};
use tollgate_redis::{Degraded, Mode, RedisRateLimitStore};
use tollgate_testkit::{FaultMix, FaultProxy, ProxyFault};

const SEC: u64 = 1_000_000_000;

/// The redis-server's process id, from `INFO server`.
async fn pid(url: &str) -> String {
    let mut conn = raw(url).await;
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(&mut conn)
        .await
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .unwrap()
        .trim()
        .to_owned()
}

async fn signal(pid: &str, sig: &str) {
    let status = tokio::process::Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid)
        .status()
        .await
        .unwrap();
    assert!(status.success());
}

/// Redis frozen (SIGSTOP: a long fork, a swapped-out host, a paused VM)
/// with requests in flight on the open connection, then thawed: no caller
/// waits past the timeout, the answers that arrive late for dropped calls
/// never reach another caller, and shared mode returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_then_thawed_redis_bounds_every_caller_and_keeps_answers_in_step() {
    let redis = redis();
    let store = RedisRateLimitStore::builder(redis.url())
        .quota(Quota::window(3, Duration::from_secs(3_600)).unwrap())
        .timeout(Duration::from_millis(50))
        .degraded(Degraded::FailOpen)
        .deny_cache_keys(0)
        .build()
        .unwrap();
    assert_eq!(store.check("a", 0).await.unwrap(), Ok(()));
    let pid = pid(&redis.url()).await;
    signal(&pid, "STOP").await;
    for i in 0..5 {
        let started = Instant::now();
        assert_eq!(store.check("a", i).await.unwrap(), Ok(()), "fail open");
        assert!(
            started.elapsed() < Duration::from_millis(600),
            "{:?}",
            started.elapsed()
        );
    }
    assert_eq!(store.mode(), Mode::Degraded);
    signal(&pid, "CONT").await;
    let back = Instant::now();
    // The probe runs every 100 ms of real time.
    while store.mode() != Mode::Shared {
        assert!(
            back.elapsed() < Duration::from_secs(2),
            "{:?}",
            store.stats()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let answers: Vec<bool> = {
        let mut v = Vec::new();
        for _ in 0..4 {
            v.push(store.check("z", SEC).await.unwrap().is_ok());
        }
        v
    };
    assert_eq!(
        answers,
        [true, true, true, false],
        "each answer for its own call"
    );
    let mut conn = raw(&redis.url()).await;
    let grants: usize = redis::cmd("LLEN")
        .arg(&store.redis_keys("a")[2])
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(grants <= 3, "{grants}");
}

/// A connection that resets or closes at random under 16 concurrent
/// callers, failing closed: never more permits than the quota, no caller
/// held long, and shared mode back once the network heals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flapping_connection_under_load_never_admits_more_than_the_quota() {
    let redis = redis();
    let proxy = FaultProxy::start(redis.addr()).await.unwrap();
    let store = RedisRateLimitStore::builder(format!("redis://{}", proxy.addr()))
        .quota(Quota::window(25, Duration::from_secs(3_600)).unwrap())
        .timeout(Duration::from_millis(50))
        .degraded(Degraded::FailClosed)
        .deny_cache_keys(0)
        .build()
        .unwrap();
    assert_eq!(store.check("warm-up", 0).await.unwrap(), Ok(()));
    proxy.mix(
        FaultMix::new(13)
            .with(ProxyFault::reset_after(0), 0.2)
            .with(ProxyFault::close_before_response(), 0.1)
            .with(ProxyFault::latency(Duration::from_millis(80)), 0.1),
    );
    let mut tasks = Vec::new();
    for t in 0..16u64 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut admitted = 0;
            for i in 0..10u64 {
                let started = Instant::now();
                if let Ok(Ok(())) = store.check("k", t * 100 + i).await {
                    admitted += 1;
                }
                let waited = started.elapsed();
                assert!(waited < Duration::from_millis(800), "{waited:?}");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            admitted
        }));
    }
    let mut admitted = 0;
    for t in tasks {
        admitted += t.await.unwrap();
    }
    assert!(admitted <= 25, "{admitted} admitted for a window of 25");
    assert!(proxy.stats().faults() > 0, "the attack injected nothing");
    proxy.clear_faults();
    let back = Instant::now();
    while store.mode() != Mode::Shared {
        assert!(
            back.elapsed() < Duration::from_secs(2),
            "{:?}",
            store.stats()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stats = store.stats();
    assert!(stats.degradations >= stats.recoveries);
    assert!(stats.degradations <= stats.recoveries + 1, "{stats:?}");
}

/// State of another format is a typed error in every mode: fail open and
/// local share must not admit over state they cannot read, nor count it as
/// an outage.
#[tokio::test]
async fn unreadable_state_is_a_typed_error_in_the_lenient_modes_too() {
    let redis = redis();
    let mut conn = raw(&redis.url()).await;
    for mode in [Degraded::FailOpen, Degraded::LocalShare { replicas: 2 }] {
        let store = RedisRateLimitStore::builder(redis.url())
            // Not a test of timeouts: room for a loaded machine.
            .timeout(std::time::Duration::from_secs(2))
            .quota(Quota::per_second(10).unwrap())
            .quota(Quota::window(10, Duration::from_secs(60)).unwrap())
            .degraded(mode)
            .build()
            .unwrap();
        let keys = store.redis_keys("k");
        for (key, value) in [
            (&keys[1], "2:5:0"),
            (&keys[1], "1:99999999999:0"),
            (&keys[1], "1:5:1000000000"),
            (&keys[1], "1:-5:0"),
            (&keys[1], "garbage"),
        ] {
            let _: () = redis::cmd("DEL")
                .arg(&keys[..])
                .query_async(&mut conn)
                .await
                .unwrap();
            let _: () = redis::cmd("SET")
                .arg(key)
                .arg(value)
                .query_async(&mut conn)
                .await
                .unwrap();
            let answer = store.check("k", 0).await;
            assert!(answer.is_err(), "{mode:?}: {value:?} decided {answer:?}");
        }
        // A window's grants held as a string, its state as a string.
        for (key, value) in [(&keys[4], "x"), (&keys[3], "1:0:0")] {
            let _: () = redis::cmd("DEL")
                .arg(&keys[..])
                .query_async(&mut conn)
                .await
                .unwrap();
            let _: () = redis::cmd("SET")
                .arg(key)
                .arg(value)
                .query_async(&mut conn)
                .await
                .unwrap();
            let answer = store.check("k", 0).await;
            assert!(
                answer.is_err(),
                "{mode:?}: {key} = {value:?} decided {answer:?}"
            );
        }
        // A window state of another version.
        let _: () = redis::cmd("DEL")
            .arg(&keys[..])
            .query_async(&mut conn)
            .await
            .unwrap();
        let _: () = redis::cmd("HSET")
            .arg(&keys[3])
            .arg("v")
            .arg("2")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(store.check("k", 0).await.is_err(), "{mode:?}");
        assert_eq!(store.mode(), Mode::Shared, "not an outage");
        assert_eq!(store.stats().degradations, 0);
        let _: () = redis::cmd("DEL")
            .arg(&keys[..])
            .query_async(&mut conn)
            .await
            .unwrap();
    }
}

/// `rediss://` spoken to a clear-text Redis: an outage decided within the
/// timeout, never a hang nor a panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_spoken_to_a_clear_text_redis_is_an_outage_within_the_timeout() {
    let redis = redis();
    let url = redis.url().replace("redis://", "rediss://");
    let store = RedisRateLimitStore::builder(url)
        .quota(Quota::per_second(10).unwrap())
        .timeout(Duration::from_millis(50))
        .degraded(Degraded::FailOpen)
        .build()
        .unwrap();
    let started = Instant::now();
    assert_eq!(store.check("k", 0).await.unwrap(), Ok(()));
    assert!(started.elapsed() < Duration::from_millis(600));
    assert_eq!(store.mode(), Mode::Degraded);
}

/// Local shares at the ends: 0 replicas is one, `u32::MAX` replicas still
/// leaves each one permit, never zero nor a panic.
#[tokio::test]
async fn local_shares_at_the_ends_of_the_replica_count_decide() {
    for replicas in [0, 1, 3, u32::MAX] {
        let store = RedisRateLimitStore::builder("redis://127.0.0.1:1")
            .quota(Quota::window(6, Duration::from_secs(3_600)).unwrap())
            .quota(Quota::per(u32::MAX, Duration::from_secs(3_600)).unwrap())
            .degraded(Degraded::LocalShare { replicas })
            .build()
            .unwrap();
        // A share is smooth, has no burst, and starts one of its intervals
        // after the outage (Redis may have granted a burst just before):
        // 6 an hour for 1 (or 0) replicas, 2 for 3, at least 1 for many.
        let interval = match replicas {
            0 | 1 => 600 * SEC,
            3 => 1_800 * SEC,
            _ => 3_600 * SEC,
        };
        let at = store
            .check("k", 0)
            .await
            .unwrap()
            .expect_err("not at the outage's start");
        assert_eq!(at, interval, "{replicas} replicas");
        let mut admitted = 0;
        for _ in 0..10 {
            if let Ok(Ok(())) = store.check("k", at).await {
                admitted += 1;
            }
        }
        assert_eq!(admitted, 1, "{replicas} replicas: one, never zero");
    }
}
