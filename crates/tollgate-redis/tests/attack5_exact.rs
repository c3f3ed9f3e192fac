//! Attack on "the same decisions as in process, exact to the nanosecond":
//! random quotas (smooth with any burst, windows; periods from a
//! microsecond to a century) and random walks of checks and pauses, at
//! times up to the end of `u64`, decided by the Redis store (the callers'
//! clock, no deny cache) and by the in-process `MemoryStore`, answer for
//! answer.

#![allow(clippy::unwrap_used, reason = "tests")]

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use tollgate_limit::rate::MemoryStore;
use tollgate_limit::{Quota, RateLimitStore};
use tollgate_redis::{Clock, RedisRateLimitStore};
use tollgate_testkit::{RedisServer, HOW_TO_GET_REDIS};

#[derive(Clone, Debug)]
enum Op {
    /// A check after a gap (in units chosen by `Gap`).
    Check { key: u8, gap: Gap },
    /// A pause from now for `len` ns (or to the end of time).
    Pause { key: u8, gap: Gap, len: Option<u64> },
}

#[derive(Clone, Copy, Debug)]
enum Gap {
    None,
    One,
    /// A fraction (per mille) of the quota's interval or period.
    Interval(u16),
    /// Close to the end of u64: `u64::MAX - n`, n ≥ 1 (the last
    /// nanosecond itself is pinned by its own test below).
    End(u32),
}

fn gap() -> impl Strategy<Value = Gap> {
    prop_oneof![
        3 => Just(Gap::None),
        2 => Just(Gap::One),
        8 => (0u16..3_000).prop_map(Gap::Interval),
        1 => (1u32..1_000_000).prop_map(Gap::End),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0u8..2, gap()).prop_map(|(key, gap)| Op::Check { key, gap }),
        1 => (0u8..2, gap(), prop_oneof![
            4 => (1u64..10_000_000_000).prop_map(Some),
            1 => Just(None),
        ])
            .prop_map(|(key, gap, len)| Op::Pause { key, gap, len }),
    ]
}

fn quota() -> impl Strategy<Value = Quota> {
    let period = prop_oneof![
        Just(Duration::from_micros(1)),
        Just(Duration::from_millis(1)),
        Just(Duration::from_secs(1)),
        Just(Duration::from_secs(3_600)),
        Just(Duration::from_secs(100 * 365 * 86_400)),
        (1u64..10_000_000_000).prop_map(Duration::from_nanos),
    ];
    prop_oneof![
        (1u32..1_000, period.clone(), 1u32..2_000).prop_filter_map(
            "a valid smooth quota",
            |(count, period, burst)| Quota::per(count, period).ok()?.with_burst(burst).ok()
        ),
        (1u32..40, period).prop_filter_map("a valid window", |(count, period)| {
            Quota::window(count, period).ok()
        }),
    ]
}

fn step(q: &Quota) -> u64 {
    let period = u64::try_from(q.period().as_nanos()).unwrap_or(u64::MAX);
    match q.kind() {
        tollgate_limit::QuotaKind::Smooth => (period / u64::from(q.count())).max(1),
        _ => period,
    }
}

#[test]
fn the_redis_store_decides_exactly_as_the_memory_store_on_random_walks() {
    let redis = RedisServer::start().expect(HOW_TO_GET_REDIS);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let case = AtomicU64::new(0);
    let mut runner = TestRunner::new(Config {
        cases: 96,
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = (quota(), proptest::collection::vec(op(), 1..40));
    let outcome =
        runner.run(&strategy, |(q, ops)| {
            let n = case.fetch_add(1, Ordering::Relaxed);
            rt.block_on(async {
                let redis_store = RedisRateLimitStore::builder(redis.url())
                    .namespace(format!("exact{n}"))
                    .quota(q)
                    .clock(Clock::Caller)
                    .deny_cache_keys(0)
                    .timeout(Duration::from_secs(5))
                    .build()
                    .unwrap();
                let memory = MemoryStore::new(&q, 100);
                let mut now: u64 = 1_700_000_000_000_000_000;
                let mut paused_to_end = false;
                let unit = step(&q);
                let advance = |now: u64, gap: Gap| match gap {
                    Gap::None => now,
                    Gap::One => now.saturating_add(1),
                    Gap::Interval(per_mille) => now.saturating_add(
                        u64::try_from(u128::from(unit) * u128::from(per_mille) / 1_000)
                            .unwrap_or(u64::MAX),
                    ),
                    Gap::End(n) => now.max(u64::MAX - u64::from(n)),
                };
                for (i, op) in ops.iter().enumerate() {
                    match *op {
                        Op::Check { key, gap } => {
                            now = advance(now, gap).min(u64::MAX - 1); // MAX: its own test
                            let key = format!("k{key}");
                            let in_redis = redis_store.check(&key, now).await.map_err(|e| {
                                TestCaseError::fail(format!("op {i}: redis error {e}"))
                            })?;
                            let in_memory = memory.check_sync(&key, now);
                            // A pause to the end of time: in process the TAT
                            // saturates (pause end + tolerance passes u64), so
                            // it names a time up to the tolerance before the
                            // pause's end; Redis (its deny cache) names the
                            // pause's end. Later, never earlier, is allowed.
                            if let (Err(r), Err(m)) = (in_redis, in_memory) {
                                if r > m && paused_to_end {
                                    continue;
                                }
                            }
                            prop_assert_eq!(
                                in_redis,
                                in_memory,
                                "op {} ({:?}) at {} for {}: redis vs in process",
                                i,
                                op,
                                now,
                                q
                            );
                        }
                        Op::Pause { key, gap, len } => {
                            now = advance(now, gap).min(u64::MAX - 1);
                            let until = len.map_or(u64::MAX, |l| now.saturating_add(l));
                            paused_to_end |= until == u64::MAX;
                            let key = format!("k{key}");
                            redis_store.pause(&key, now, until).await.map_err(|e| {
                                TestCaseError::fail(format!("op {i}: redis error {e}"))
                            })?;
                            memory.pause_sync(&key, now, until);
                        }
                    }
                }
                Ok(())
            })
        });
    if let Err(e) = outcome {
        panic!("{e}");
    }
}

/// The walk's one divergence, pinned: a window whose grants are all long
/// past, asked at the very last nanosecond of `u64`. In process the
/// permit is given; the script refuses any full grant list at that instant
/// (its `now == MAX and len >= count` branch), old grants or not.
#[tokio::test]
async fn a_window_at_the_last_nanosecond_decides_as_in_process() {
    let redis = RedisServer::start().expect(HOW_TO_GET_REDIS);
    let q = Quota::window(1, Duration::from_millis(1)).unwrap();
    let store = RedisRateLimitStore::builder(redis.url())
        // Not a test of timeouts: room for a loaded machine.
        .timeout(std::time::Duration::from_secs(2))
        .quota(q)
        .clock(Clock::Caller)
        .deny_cache_keys(0)
        .build()
        .unwrap();
    let memory = MemoryStore::new(&q, 100);
    let t0 = 1_700_000_000_000_000_000;
    for now in [t0, u64::MAX] {
        let in_redis = store.check("k", now).await.unwrap();
        assert_eq!(in_redis, memory.check_sync("k", now), "at {now}");
    }
}

/// Found by the walk in CI: a pause shorter than a spent quota. The deny
/// cache held the pause's end (2 ns away) where in process the answer is
/// the window's end (an hour away): the caller woke early and asked again.
/// The pause's script now answers as a check would, and that is held.
#[tokio::test]
async fn a_short_pause_over_a_spent_quota_names_the_quotas_time() {
    let redis = RedisServer::start().expect(HOW_TO_GET_REDIS);
    let t0 = 1_700_000_000_000_000_000;
    for (name, q) in [
        (
            "window",
            Quota::window(1, Duration::from_secs(3_600)).unwrap(),
        ),
        ("smooth", Quota::per(1, Duration::from_secs(3_600)).unwrap()),
    ] {
        for deny_cache in [0, 100] {
            let store = RedisRateLimitStore::builder(redis.url())
                .namespace(format!("short-pause-{name}-{deny_cache}"))
                // Not a test of timeouts: room for a loaded machine.
                .timeout(Duration::from_secs(2))
                .quota(q)
                .clock(Clock::Caller)
                .deny_cache_keys(deny_cache)
                .build()
                .unwrap();
            let memory = MemoryStore::new(&q, 100);
            assert_eq!(store.check("k", t0).await.unwrap(), Ok(()));
            assert_eq!(memory.check_sync("k", t0), Ok(()));
            store.pause("k", t0, t0 + 2).await.unwrap();
            memory.pause_sync("k", t0, t0 + 2);
            let in_memory = memory.check_sync("k", t0);
            assert_eq!(in_memory, Err(t0 + 3_600_000_000_000), "{name}");
            for now in [t0, t0 + 1, t0 + 2, t0 + 3] {
                assert_eq!(
                    store.check("k", now).await.unwrap(),
                    memory.check_sync("k", now),
                    "{name}, deny cache {deny_cache}, at t0 + {}",
                    now - t0
                );
            }
        }
    }
}
