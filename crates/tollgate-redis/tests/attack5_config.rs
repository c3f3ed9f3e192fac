//! Attacks on the store's configuration edges: timeouts of zero and
//! `Duration::MAX`, namespaces that could break the Redis Cluster hash tag,
//! hostile keys, quotas at the ends of their ranges.

#![allow(clippy::unwrap_used, reason = "tests")]

mod common;

use common::redis;
use std::time::Duration;

use http::{Request, Response};
use tokio::time::Instant;
use tollgate_limit::{Quota, RateLimitStore};
use tollgate_redis::{BuildError, Degraded, Mode, RedisRateLimitStore, MAX_WINDOW_COUNT};
use tower::{service_fn, ServiceBuilder, ServiceExt};

const SEC: u64 = 1_000_000_000;

/// CRC16/XMODEM, Redis Cluster's key hash.
fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in bytes {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// The Redis Cluster slot of a key name (the hash tag rule: the text
/// between the first `{` and the first `}` after it, when not empty).
fn slot(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let tagged = bytes.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = &bytes[open + 1..];
        let close = rest.iter().position(|&b| b == b'}')?;
        (close > 0).then(|| &rest[..close])
    });
    crc16(tagged.unwrap_or(bytes)) % 16_384
}

/// The store for `namespace`, or `None` when the namespace is refused at
/// build (braces: a typed error, which also keeps the hash tag whole).
fn two_quota_store(url: String, namespace: &str) -> Option<RedisRateLimitStore> {
    let built = RedisRateLimitStore::builder(url)
        .namespace(namespace)
        .quota(Quota::per_second(10).unwrap())
        .quota(Quota::window(100, Duration::from_secs(60)).unwrap())
        .build();
    match built {
        Ok(store) => Some(store),
        Err(e) => {
            assert!(namespace.contains(['{', '}']), "{namespace:?}: {e}");
            assert!(e.to_string().contains("namespace"), "{e}");
            None
        }
    }
}

/// The hash tag is what lets one script touch every quota of a key in
/// Redis Cluster. Namespaces with braces of their own must not move it.
#[tokio::test]
async fn every_key_of_one_caller_key_lands_in_one_cluster_slot_whatever_the_namespace() {
    for namespace in ["tollgate", "", "{", "}", "}{", "a{b}c", "{{}}", "x}{y"] {
        let Some(store) = two_quota_store("redis://127.0.0.1:1".into(), namespace) else {
            continue;
        };
        let keys = store.redis_keys("caller-key");
        let slots: Vec<u16> = keys.iter().map(|k| slot(k)).collect();
        assert!(
            slots.windows(2).all(|w| w[0] == w[1]),
            "namespace {namespace:?}: keys {keys:?} in slots {slots:?}"
        );
    }
}

#[tokio::test]
async fn an_empty_brace_pair_in_the_namespace_keeps_a_keys_quotas_in_one_cluster_slot() {
    let Some(store) = two_quota_store("redis://127.0.0.1:1".into(), "svc{}") else {
        return;
    };
    let keys = store.redis_keys("caller-key");
    let slots: Vec<u16> = keys.iter().map(|k| slot(k)).collect();
    assert!(
        slots.windows(2).all(|w| w[0] == w[1]),
        "keys {keys:?} in slots {slots:?}: one script over them is CROSSSLOT in a cluster"
    );
}

/// Two namespaces must never share state, even when one namespace plus
/// `:` looks like a prefix of the other.
#[tokio::test]
async fn namespaces_that_prefix_each_other_never_share_a_quota() {
    let redis = redis();
    let quota = Quota::window(1, Duration::from_secs(3_600)).unwrap();
    let a = RedisRateLimitStore::builder(redis.url())
        // Not a test of timeouts: room for a loaded machine.
        .timeout(std::time::Duration::from_secs(2))
        .namespace("a")
        .quota(quota)
        .build()
        .unwrap();
    let b = RedisRateLimitStore::builder(redis.url())
        // Not a test of timeouts: room for a loaded machine.
        .timeout(std::time::Duration::from_secs(2))
        .namespace("a:rl1r")
        .quota(quota)
        .build()
        .unwrap();
    for key in a.redis_keys("k") {
        assert!(!b.redis_keys("k").contains(&key));
    }
    assert_eq!(a.check("k", 0).await.unwrap(), Ok(()));
    assert_eq!(b.check("k", 0).await.unwrap(), Ok(()));
}

#[tokio::test]
async fn hostile_keys_each_get_their_own_quota_and_never_reach_redis() {
    let redis = redis();
    let store = RedisRateLimitStore::builder(redis.url())
        // Not a test of timeouts: room for a loaded machine.
        .timeout(std::time::Duration::from_secs(2))
        .quota(Quota::window(1, Duration::from_secs(3_600)).unwrap())
        .build()
        .unwrap();
    let huge = "x".repeat(1 << 20);
    let keys = [
        String::new(),
        "{".to_owned(),
        "}".to_owned(),
        "{}".to_owned(),
        "a\r\nFLUSHALL\r\n".to_owned(),
        "\u{1}ff00".to_owned(),
        "\u{0}".to_owned(),
        "é\u{10FFFF}".to_owned(),
        huge.clone(),
    ];
    for key in &keys {
        assert_eq!(
            store.check(key, 0).await.unwrap(),
            Ok(()),
            "first of {:.8?}",
            key
        );
    }
    for key in &keys {
        assert!(
            store.check(key, 0).await.unwrap().is_err(),
            "second of {:.8?}: one per hour",
            key
        );
        for name in store.redis_keys(key) {
            assert!(name.len() < 200, "the key's text leaked into {name:.80}");
            if key.len() > 1 {
                assert!(!name.contains(key.as_str()), "{name}");
            }
        }
    }
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let size: u64 = redis::cmd("DBSIZE").query_async(&mut conn).await.unwrap();
    // Two keys per caller key (state and grants), and nothing else.
    assert_eq!(size, 2 * keys.len() as u64);
    let _ = huge;
}

#[tokio::test]
async fn a_timeout_of_duration_max_never_panics() {
    let redis = redis();
    let store = RedisRateLimitStore::builder(redis.url())
        .quota(Quota::per_second(10).unwrap())
        .timeout(Duration::MAX)
        .build()
        .unwrap();
    assert_eq!(store.check("k", 0).await.unwrap(), Ok(()));
    let layer = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| store.layer()));
    let layer = layer.expect("layer() panicked on a timeout of Duration::MAX");
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service(service_fn(|_r: Request<String>| async {
            Ok::<_, std::convert::Infallible>(Response::new(String::new()))
        }));
    assert!(svc.oneshot(Request::new(String::new())).await.is_ok());
}

#[tokio::test]
async fn a_timeout_of_duration_max_decides_in_redis() {
    let redis = redis();
    let store = RedisRateLimitStore::builder(redis.url())
        .quota(Quota::window(1, Duration::from_secs(60)).unwrap())
        .timeout(Duration::MAX)
        .build()
        .unwrap();
    assert_eq!(store.check("k", 0).await.unwrap(), Ok(()));
    assert!(store.check("k", 0).await.unwrap().is_err());
    assert_eq!(store.mode(), Mode::Shared);
}

/// A timeout of zero can never be met by a network round trip: every
/// call degrades, and the probe (bounded by the same timeout) never finds
/// Redis back. The builder takes it silently.
#[tokio::test]
async fn a_zero_timeout_is_refused_at_build_or_still_reaches_redis() {
    let redis = redis();
    let built = RedisRateLimitStore::builder(redis.url())
        .quota(Quota::per_second(10).unwrap())
        .timeout(Duration::ZERO)
        .degraded(Degraded::FailClosed)
        .build();
    let Ok(store) = built else { return };
    let mut decided = false;
    for _ in 0..5 {
        if store.check("k", 0).await.is_ok() {
            decided = true;
        }
        // The probe runs every 100 ms on Redis's real clock.
        tokio::time::sleep(Duration::from_millis(120)).await;
    }
    assert!(
        decided && store.mode() == Mode::Shared,
        "Redis is up, yet every call failed closed: {:?}",
        store.stats()
    );
}

#[tokio::test]
async fn quotas_at_the_ends_of_their_ranges_decide_without_error() {
    let redis = redis();
    let cases = [
        Quota::per(1, Duration::from_nanos(1)).unwrap(),
        Quota::per(u32::MAX, Duration::from_secs(200 * 365 * 86_400)).unwrap(),
        Quota::per(1, Duration::from_secs(200 * 365 * 86_400)).unwrap(),
        Quota::per(u32::MAX, Duration::from_nanos(u64::from(u32::MAX))).unwrap(),
        Quota::window(1, Duration::from_nanos(1)).unwrap(),
        Quota::window(1, Duration::MAX).unwrap(),
        Quota::window(MAX_WINDOW_COUNT, Duration::from_secs(u64::MAX)).unwrap(),
        Quota::window(
            MAX_WINDOW_COUNT,
            Duration::from_nanos(u64::from(MAX_WINDOW_COUNT)),
        )
        .unwrap(),
    ];
    for (i, quota) in cases.into_iter().enumerate() {
        let store = RedisRateLimitStore::builder(redis.url())
            // Not a test of timeouts: room for a loaded machine.
            .timeout(std::time::Duration::from_secs(2))
            .namespace(format!("quota-{i}"))
            .quota(quota)
            .build()
            .unwrap();
        for now in [0, SEC, u64::MAX / 2, u64::MAX - 1, u64::MAX] {
            let answer = store.check("k", now).await;
            let answer = answer.unwrap_or_else(|e| panic!("{quota:?} at {now}: {e}"));
            if let Err(at) = answer {
                assert!(at >= now, "{quota:?}: refused until {at}, before now {now}");
            }
        }
    }
    let over = RedisRateLimitStore::builder(redis.url())
        // Not a test of timeouts: room for a loaded machine.
        .timeout(std::time::Duration::from_secs(2))
        .quota(Quota::window(MAX_WINDOW_COUNT + 1, Duration::from_secs(1)).unwrap())
        .build();
    assert!(matches!(over, Err(BuildError::WindowTooLarge(_))));
}

/// One permit per hour, asked for by one caller at Redis's real time: the
/// second is refused for about an hour, not for `u64::MAX` nor for zero.
#[tokio::test]
async fn a_slow_quota_refuses_for_its_interval_on_redis_time() {
    let redis = redis();
    let store = RedisRateLimitStore::builder(redis.url())
        // Not a test of timeouts: room for a loaded machine.
        .timeout(std::time::Duration::from_secs(2))
        .quota(Quota::per(1, Duration::from_secs(3_600)).unwrap())
        .build()
        .unwrap();
    let now = 1_000 * SEC;
    assert_eq!(store.check("k", now).await.unwrap(), Ok(()));
    let at = store
        .check("k", now)
        .await
        .unwrap()
        .expect_err("one per hour");
    let wait = at - now;
    assert!((3_599 * SEC..=3_600 * SEC).contains(&wait), "{wait}");
    let started = Instant::now();
    // The deny cache answers now, at once.
    assert_eq!(store.check("k", now).await.unwrap(), Err(at));
    assert!(started.elapsed() < Duration::from_millis(50));
}

/// Building the store outside a tokio runtime (a sync `main` that builds
/// its clients before starting the runtime, a `lazy_static`): the docs ask
/// for a runtime, but a misuse must be a typed error, not a panic from
/// inside redis-rs.
#[test]
fn building_outside_a_runtime_is_a_typed_error_never_a_panic() {
    let built = std::panic::catch_unwind(|| {
        RedisRateLimitStore::builder("redis://127.0.0.1:1")
            .quota(Quota::per_second(1).unwrap())
            .build()
            .is_ok()
    });
    assert!(built.is_ok(), "build() panicked outside a runtime");
}
