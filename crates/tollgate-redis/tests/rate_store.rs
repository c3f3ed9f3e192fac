//! The Redis rate-limit store against a real redis-server: what the
//! conformance suite does not reach (Redis's clock, several quotas, the
//! key layout, formats, secrets, the deny cache, degradation and recovery).

#![allow(clippy::unwrap_used, reason = "tests")]

mod common;

use common::{blackhole, raw, redis};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tollgate_limit::{Quota, RateLimitStore};
use tollgate_redis::{Clock, Degraded, Mode, RedisRateLimitStore};
use tollgate_testkit::{RedisServer, HOW_TO_GET_REDIS};

const SEC: u64 = 1_000_000_000;

async fn check(store: &RedisRateLimitStore, key: &str, now: u64) -> Result<(), u64> {
    store.check(key, now).await.expect("redis decided")
}

#[tokio::test]
async fn replicas_on_redis_time_share_one_quota_whatever_their_clocks_say() {
    let redis = redis();
    let quota = Quota::per_minute(2).unwrap().with_burst(2).unwrap();
    let a = RedisRateLimitStore::builder(redis.url())
        // Not a test of timeouts: room for a loaded machine.
        .timeout(std::time::Duration::from_secs(2))
        .quota(quota)
        .build()
        .unwrap();
    let b = RedisRateLimitStore::builder(redis.url())
        // Not a test of timeouts: room for a loaded machine.
        .timeout(std::time::Duration::from_secs(2))
        .quota(quota)
        .build()
        .unwrap();
    // Replica a's clock reads 2027, b's reads a few seconds after 1970:
    // Redis's TIME decides, and each answer is on the asker's clock.
    let (now_a, now_b) = (1_800_000_000 * SEC, 5 * SEC);
    assert_eq!(check(&a, "k", now_a).await, Ok(()));
    assert_eq!(check(&b, "k", now_b).await, Ok(()));
    let at_a = check(&a, "k", now_a)
        .await
        .expect_err("the burst of two is spent");
    let at_b = check(&b, "k", now_b + 1).await.expect_err("for b too");
    for (at, now) in [(at_a, now_a), (at_b, now_b + 1)] {
        let wait = at - now;
        assert!(
            (29 * SEC..=30 * SEC).contains(&wait),
            "one permit every 30 s: told to wait {wait} ns"
        );
    }
}

#[tokio::test]
async fn a_call_refused_by_one_quota_spends_nothing_of_another() {
    let redis = redis();
    let hourly = Quota::per(2, Duration::from_secs(3_600))
        .unwrap()
        .with_burst(2)
        .unwrap();
    let window = Quota::window(1, Duration::from_secs(3_600)).unwrap();
    let both = RedisRateLimitStore::builder(redis.url())
        // Not a test of timeouts: room for a loaded machine.
        .timeout(std::time::Duration::from_secs(2))
        .quota(hourly)
        .quota(window)
        .build()
        .unwrap();
    let hourly_only = RedisRateLimitStore::builder(redis.url())
        // Not a test of timeouts: room for a loaded machine.
        .timeout(std::time::Duration::from_secs(2))
        .quota(hourly)
        .build()
        .unwrap();
    assert_eq!(check(&both, "k", 0).await, Ok(()), "both quotas have room");
    for _ in 0..5 {
        assert!(check(&both, "k", 0).await.is_err(), "the window is spent");
    }
    // The refusals spent nothing of the hourly quota: its second permit is
    // still there (the same state in Redis: same namespace, same quota).
    assert_eq!(check(&hourly_only, "k", 0).await, Ok(()));
    assert!(check(&hourly_only, "k", 0).await.is_err());
}

#[tokio::test]
async fn the_key_never_reaches_redis_and_every_key_expires() {
    let redis = redis();
    let store = RedisRateLimitStore::builder(redis.url())
        // Not a test of timeouts: room for a loaded machine.
        .timeout(std::time::Duration::from_secs(2))
        .quota(Quota::per_second(10).unwrap())
        .quota(Quota::window(5, Duration::from_secs(2)).unwrap())
        .namespace("ns")
        .build()
        .unwrap();
    let secret = "sk_live_SECRET_token_42";
    assert_eq!(check(&store, secret, 0).await, Ok(()));
    let mut conn = raw(&redis.url()).await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(!keys.is_empty());
    for key in &keys {
        assert!(!key.contains("SECRET"), "a key in clear: {key}");
        assert!(key.starts_with("ns:rl1r:{"), "layout: {key}");
        let ttl: i64 = redis::cmd("PTTL")
            .arg(key)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(ttl > 0 && ttl <= 3_000, "{key} expires in {ttl} ms");
        let value: redis::Value = redis::cmd("DUMP")
            .arg(key)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(!format!("{value:?}").contains("SECRET"));
    }
    // One hash tag per key: a Redis Cluster puts a key's quotas in one slot.
    let tags: std::collections::HashSet<&str> = keys
        .iter()
        .map(|k| &k[k.find('{').unwrap()..=k.find('}').unwrap()])
        .collect();
    assert_eq!(tags.len(), 1, "{keys:?}");
    assert_eq!(
        store.redis_keys(secret).len(),
        5,
        "the pause, then two keys per quota"
    );
}

#[tokio::test]
async fn state_of_another_format_is_a_typed_error_never_a_decision() {
    let redis = redis();
    let store = RedisRateLimitStore::builder(redis.url())
        // Not a test of timeouts: room for a loaded machine.
        .timeout(std::time::Duration::from_secs(2))
        .quota(Quota::per_second(1).unwrap())
        .quota(Quota::window(1, Duration::from_secs(1)).unwrap())
        .degraded(Degraded::FailOpen)
        .build()
        .unwrap();
    let keys = store.redis_keys("k");
    let mut conn = raw(&redis.url()).await;
    // A pause of another format too.
    let _: () = redis::cmd("SET")
        .arg(&keys[0])
        .arg("9:1:1")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(store.check("k", 0).await.is_err());
    let _: () = redis::cmd("DEL")
        .arg(&keys[0])
        .query_async(&mut conn)
        .await
        .unwrap();
    for (key, value) in [
        (&keys[1], "2:1:0"),
        (&keys[1], "1:garbage"),
        (&keys[1], ""),
        (&keys[1], "1:99999999999999999999999:0"),
    ] {
        let _: () = redis::cmd("SET")
            .arg(key)
            .arg(value)
            .query_async(&mut conn)
            .await
            .unwrap();
        let err = store.check("k", 0).await.expect_err("unreadable state");
        assert!(err.to_string().contains("format"), "{err}");
        assert_eq!(store.mode(), Mode::Shared, "not an outage: no fail-open");
    }
    let _: () = redis::cmd("DEL")
        .arg(&keys[1])
        .query_async(&mut conn)
        .await
        .unwrap();
    // A window's state of another type or version.
    let _: () = redis::cmd("HSET")
        .arg(&keys[3])
        .arg("v")
        .arg("7")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(store.check("k", 0).await.is_err());
    let _: () = redis::cmd("DEL")
        .arg(&keys[3])
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg(&keys[4])
        .arg("x")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        store.check("k", 0).await.is_err(),
        "grants of the wrong type"
    );
}

#[tokio::test]
async fn a_pause_learned_by_one_replica_holds_back_the_others() {
    let redis = redis();
    let quota = Quota::per_second(100).unwrap();
    let a = RedisRateLimitStore::builder(redis.url())
        // Not a test of timeouts: room for a loaded machine.
        .timeout(std::time::Duration::from_secs(2))
        .quota(quota)
        .build()
        .unwrap();
    let b = RedisRateLimitStore::builder(redis.url())
        // Not a test of timeouts: room for a loaded machine.
        .timeout(std::time::Duration::from_secs(2))
        .quota(quota)
        .build()
        .unwrap();
    a.pause("api", 1_000 * SEC, 1_005 * SEC).await.unwrap();
    // b's clock is elsewhere; Redis knows the pause ends in 5 s.
    let at = check(&b, "api", 7 * SEC).await.expect_err("paused");
    assert!(
        (12 * SEC - 50_000_000..=12 * SEC + 10_000_000).contains(&at),
        "{at}"
    );
    // A shorter pause never shortens it.
    b.pause("api", 7 * SEC, 8 * SEC).await.unwrap();
    let b2 = RedisRateLimitStore::builder(redis.url())
        // Not a test of timeouts: room for a loaded machine.
        .timeout(std::time::Duration::from_secs(2))
        .quota(quota)
        .build()
        .unwrap();
    assert!(check(&b2, "api", 0).await.expect_err("still paused") >= 4 * SEC);
    assert_eq!(a.stats().pauses, 1);
}

#[tokio::test]
async fn the_deny_cache_answers_a_refused_key_at_once_until_its_time() {
    let redis = redis();
    let store = RedisRateLimitStore::builder(redis.url())
        // Not a test of timeouts: room for a loaded machine.
        .timeout(std::time::Duration::from_secs(2))
        .quota(Quota::per_minute(1).unwrap())
        .clock(Clock::Caller)
        .build()
        .unwrap();
    assert_eq!(check(&store, "k", 0).await, Ok(()));
    assert_eq!(check(&store, "k", 0).await, Err(60 * SEC));
    let before = store.stats();
    for now in [1, SEC, 60 * SEC - 1] {
        // Ready at once, with no round trip.
        let answer = store.check("k", now).now_or_later().expect("ready");
        assert_eq!(answer.unwrap(), Err(60 * SEC));
    }
    let after = store.stats();
    assert_eq!(after.deny_cache - before.deny_cache, 3);
    assert_eq!(after.shared, before.shared, "Redis was not asked");
    assert_eq!(store.estimate("k", 0, 3), Some(60 * SEC));
    // At its time Redis is asked again (a round trip: not ready at once).
    let asked = store
        .check("k", 60 * SEC)
        .now_or_later()
        .expect_err("later");
    assert_eq!(asked.await.unwrap(), Ok(()));
    // Another key is not held back.
    assert_eq!(check(&store, "other", 1).await, Ok(()));
}

#[tokio::test]
async fn a_full_deny_cache_forgets_nothing_it_must_hold() {
    let redis = redis();
    let store = RedisRateLimitStore::builder(redis.url())
        // Not a test of timeouts: room for a loaded machine.
        .timeout(std::time::Duration::from_secs(2))
        .quota(Quota::per_minute(1).unwrap())
        .clock(Clock::Caller)
        .deny_cache_keys(16)
        .build()
        .unwrap();
    for i in 0..200 {
        let key = format!("k{i}");
        assert_eq!(check(&store, &key, 0).await, Ok(()));
        assert_eq!(check(&store, &key, 0).await, Err(60 * SEC));
    }
    // Every key is still refused, from the cache or from Redis.
    for i in 0..200 {
        assert_eq!(check(&store, &format!("k{i}"), 1).await, Err(60 * SEC));
    }
}

#[tokio::test]
async fn a_hung_redis_never_holds_a_caller_past_the_timeout_in_any_mode() {
    let (url, _task) = blackhole().await;
    let quota = Quota::per_minute(10).unwrap().with_burst(10).unwrap();
    for mode in [
        Degraded::FailClosed,
        Degraded::FailOpen,
        Degraded::LocalShare { replicas: 2 },
    ] {
        let store = RedisRateLimitStore::builder(url.clone())
            .quota(quota)
            .timeout(Duration::from_millis(50))
            .degraded(mode)
            .build()
            .unwrap();
        let started = Instant::now();
        let first = store.check("k", 0).await;
        let waited = started.elapsed();
        // The timeout, plus scheduling on a busy 2-core machine.
        assert!(waited < Duration::from_millis(500), "{mode:?}: {waited:?}");
        assert_eq!(store.mode(), Mode::Degraded);
        match mode {
            Degraded::FailClosed => {
                let err = first.expect_err("fail closed");
                assert!(err.to_string().contains("redis"), "{err}");
            }
            Degraded::FailOpen => {
                for _ in 0..100 {
                    assert_eq!(store.check("k", 0).await.unwrap(), Ok(()));
                }
            }
            Degraded::LocalShare { .. } => {
                // Half of 10 a minute for each of two replicas, smooth,
                // without a burst, from one interval (12 s) after the
                // outage began.
                assert_eq!(first.unwrap(), Err(12 * SEC));
                let mut admitted = 0;
                for _ in 0..20 {
                    // Degraded: answered at once, without Redis.
                    let answer = store.check("k", 12 * SEC).now_or_later().expect("ready");
                    admitted += usize::from(answer.unwrap().is_ok());
                }
                assert_eq!(admitted, 1);
                let at = store
                    .check("k", 12 * SEC)
                    .await
                    .unwrap()
                    .expect_err("no burst");
                assert_eq!(at, 24 * SEC);
            }
            _ => unreachable!(),
        }
        assert_eq!(store.stats().degradations, 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted_shared_mode_returns_by_itself() {
    let mut redis = redis();
    let store = RedisRateLimitStore::builder(redis.url())
        // Not a test of timeouts: room for a loaded machine.
        .timeout(std::time::Duration::from_secs(2))
        .quota(Quota::per_second(1_000).unwrap())
        .degraded(Degraded::LocalShare { replicas: 4 })
        .build()
        .unwrap();
    assert_eq!(check(&store, "k", 0).await, Ok(()));
    assert_eq!(store.mode(), Mode::Shared);
    redis.stop();
    let started = Instant::now();
    let _ = store.check("k", SEC).await.unwrap();
    assert!(started.elapsed() < Duration::from_millis(500));
    assert_eq!(store.mode(), Mode::Degraded);
    redis.restart().unwrap();
    let back = Instant::now();
    while store.mode() != Mode::Shared {
        assert!(
            back.elapsed() < Duration::from_secs(1),
            "shared mode not back within 1 s of the restart"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(check(&store, "k", 2 * SEC).await, Ok(()));
    let stats = store.stats();
    assert_eq!((stats.degradations, stats.recoveries), (1, 1));
    assert!(stats.shared >= 2);
}

#[tokio::test]
async fn secrets_stay_out_of_debug_and_errors() {
    let (url, _task) = blackhole().await;
    let url = url.replace("redis://", "redis://user:hunter2@");
    let store = RedisRateLimitStore::builder(url.clone())
        .quota(Quota::per_second(1).unwrap())
        .timeout(Duration::from_millis(20))
        .build()
        .unwrap();
    let err = store
        .check("sk_live_SECRET", 0)
        .await
        .expect_err("fails closed");
    for text in [
        format!("{store:?}"),
        format!("{:?}", RedisRateLimitStore::builder(url.clone())),
        err.to_string(),
        format!("{err:?}"),
    ] {
        assert!(!text.contains("hunter2"), "{text}");
        assert!(!text.contains("SECRET"), "{text}");
    }
}

#[tokio::test]
async fn bad_configurations_are_typed_errors() {
    assert!(RedisRateLimitStore::builder("redis://127.0.0.1:1")
        .build()
        .is_err());
    assert!(RedisRateLimitStore::builder("not a url")
        .quota(Quota::per_second(1).unwrap())
        .build()
        .is_err());
    let huge = Quota::window(2_000_000, Duration::from_secs(3_600)).unwrap();
    assert!(RedisRateLimitStore::builder("redis://127.0.0.1:1")
        .quota(huge)
        .build()
        .is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_over_tls_decides_like_one_in_clear() {
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let redis = RedisServer::start_tls(&cert.cert.pem(), &cert.signing_key.serialize_pem())
        .expect(HOW_TO_GET_REDIS);
    assert!(redis.url().starts_with("rediss://"));
    let store = RedisRateLimitStore::builder(redis.url())
        .quota(Quota::per_minute(1).unwrap())
        .tls_root_certificate(cert.cert.pem().into_bytes())
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    assert_eq!(check(&store, "k", 0).await, Ok(()));
    assert!(check(&store, "k", 0).await.is_err());
    // Without the root, the webpki roots do not trust the server: degraded.
    let untrusting = RedisRateLimitStore::builder(redis.url())
        .quota(Quota::per_minute(1).unwrap())
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    assert!(untrusting.check("k", 0).await.is_err());
    assert_eq!(untrusting.mode(), Mode::Degraded);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_replicas_never_share_a_permit() {
    let redis = redis();
    let quota = Quota::per_minute(50).unwrap().with_burst(50).unwrap();
    let stores: Vec<Arc<RedisRateLimitStore>> = (0..4)
        .map(|_| {
            Arc::new(
                RedisRateLimitStore::builder(redis.url())
                    .quota(quota)
                    .timeout(Duration::from_secs(5))
                    .build()
                    .unwrap(),
            )
        })
        .collect();
    let mut tasks = Vec::new();
    for i in 0..200 {
        let store = Arc::clone(&stores[i % 4]);
        tasks.push(tokio::spawn(
            async move { store.check("k", 0).await.unwrap() },
        ));
    }
    let mut admitted = 0;
    for task in tasks {
        admitted += usize::from(task.await.unwrap().is_ok());
    }
    assert_eq!(admitted, 50);
}

#[tokio::test]
async fn a_smooth_state_of_another_type_is_a_typed_error() {
    let redis = redis();
    let store = RedisRateLimitStore::builder(redis.url())
        // Not a test of timeouts: room for a loaded machine.
        .timeout(std::time::Duration::from_secs(2))
        .quota(Quota::per_second(1).unwrap())
        .build()
        .unwrap();
    let keys = store.redis_keys("k");
    let mut conn = raw(&redis.url()).await;
    let _: () = redis::cmd("HSET")
        .arg(&keys[1])
        .arg("v")
        .arg("1")
        .query_async(&mut conn)
        .await
        .unwrap();
    for _ in 0..3 {
        let err = store.check("k", 0).await.expect_err("a hash for a string");
        assert!(err.to_string().contains("format"), "{err}");
    }
}

/// The script's common case (one smooth quota, a check) is written
/// apart from the general path: it reads state of another format, version
/// or type as an error, never a decision, exactly as the general path does.
#[tokio::test]
async fn one_smooth_quota_reads_state_of_another_format_as_an_error_too() {
    let redis = redis();
    let store = RedisRateLimitStore::builder(redis.url())
        // Not a test of timeouts: room for a loaded machine.
        .timeout(std::time::Duration::from_secs(2))
        .quota(Quota::per_second(1).unwrap())
        .degraded(Degraded::FailOpen)
        .deny_cache_keys(0)
        .build()
        .unwrap();
    let keys = store.redis_keys("k");
    assert_eq!(keys.len(), 3, "{keys:?}");
    let mut conn = raw(&redis.url()).await;
    let set = |key: &str, value: &str| redis::cmd("SET").arg(key).arg(value).clone();
    for (key, value) in [
        (&keys[0], "9:1:1"),
        (&keys[0], "1:1"),
        (&keys[1], "2:1:0"),
        (&keys[1], "1:garbage"),
        (&keys[1], ""),
        (&keys[1], "1:99999999999999999999999:0"),
        (&keys[1], "1:1:1000000000"),
        (&keys[1], "1:18446744073:709551616"),
        (&keys[1], "01:1:0"),
    ] {
        let _: () = set(key, value).query_async(&mut conn).await.unwrap();
        let err = store.check("k", 0).await.expect_err(value);
        assert!(err.to_string().contains("format"), "{value}: {err}");
        assert_eq!(store.mode(), Mode::Shared, "not an outage: no fail-open");
        let _: () = redis::cmd("DEL")
            .arg(key)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    // The state of another type (MGET reads it as nothing).
    let _: () = redis::cmd("RPUSH")
        .arg(&keys[1])
        .arg("1:0:0")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(store.check("k", 0).await.is_err(), "a list at the state");
    let _: () = redis::cmd("DEL")
        .arg(&keys[1])
        .query_async(&mut conn)
        .await
        .unwrap();
    // The last nanosecond of u64 is a state it reads: refused to the end.
    let _: () = set(&keys[1], "1:18446744073:709551615")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(store.check("k", 0).await.unwrap().is_err());
    let _: () = redis::cmd("DEL")
        .arg(&keys[1])
        .query_async(&mut conn)
        .await
        .unwrap();
    // Readable state again: decisions again.
    assert_eq!(store.check("k", 0).await.unwrap(), Ok(()));
    assert!(store.check("k", 0).await.unwrap().is_err());
}

/// The script's command is built by the store (not redis-rs's
/// `ScriptInvocation`): a Redis that lost its scripts (`SCRIPT FLUSH`, a
/// restart) answers `NOSCRIPT`, and the store loads the script and asks
/// again: a decision, not an outage.
#[tokio::test]
async fn a_redis_that_lost_the_script_still_decides_without_an_outage() {
    let redis = redis();
    let store = RedisRateLimitStore::builder(redis.url())
        // Not a test of timeouts: room for a loaded machine.
        .timeout(std::time::Duration::from_secs(2))
        .quota(Quota::per_second(1).unwrap())
        .build()
        .unwrap();
    let mut conn = raw(&redis.url()).await;
    for key in ["a", "b", "c"] {
        let _: () = redis::cmd("SCRIPT")
            .arg("FLUSH")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(check(&store, key, 0).await, Ok(()));
        assert!(check(&store, key, 0).await.is_err(), "the key's one permit");
    }
    let stats = store.stats();
    assert_eq!((stats.shared, stats.degradations), (6, 0), "{stats:?}");
    assert_eq!(store.mode(), Mode::Shared);
}
