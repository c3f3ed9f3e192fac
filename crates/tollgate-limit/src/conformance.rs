//! The conformance suite every [`RateLimitStore`] must pass (feature
//! `conformance`).
//!
//! One suite for every backend: the in-process [`MemoryStore`](crate::MemoryStore) runs it in
//! this crate's tests, and a shared backend (a Redis store, say) runs the
//! same checks through the same trait. It drives time through the `now`
//! each call takes, on the absolute [`UnixNanos`] base (around the year
//! 2027, and at the very end of `u64`); a store that keeps its own clock
//! runs it in a mode that takes the caller's time.
//!
//! ```
//! use std::sync::Arc;
//! use tollgate_limit::{conformance, MemoryStore, RateLimitStore};
//!
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
//! # async fn main() {
//! conformance::run(|quota| async move {
//!     Arc::new(MemoryStore::new(&quota, 1_000)) as Arc<dyn RateLimitStore>
//! })
//! .await;
//! # }
//! ```
//!
//! Each check builds a fresh store for its quota and uses keys of its own
//! (random per run, so a store shared between runs starts clean), and panics
//! with the check's name and what diverged. Run it on a multi-thread
//! runtime: one check races many tasks for the same permits.

use std::collections::hash_map::RandomState;
use std::future::Future;
use std::hash::BuildHasher;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::quota::{Quota, QuotaKind};
use crate::rate::{RateLimitStore, UnixNanos};

/// 2027-01-15 on the absolute base: far from 0, as real times are.
pub const T0: UnixNanos = 1_800_000_000_000_000_000;

const MS: u64 = 1_000_000;
const SEC: u64 = 1_000 * MS;

/// Runs every check against stores made by `make` (one per check, for the
/// quota given). Panics on the first divergence, naming the check.
pub async fn run<F, Fut>(mut make: F)
where
    F: FnMut(Quota) -> Fut,
    Fut: Future<Output = Arc<dyn RateLimitStore>>,
{
    let run = Run::new();
    let mut boxed = |quota| -> StoreMade<'_> { Box::pin(make(quota)) };
    let make: &mut Maker<'_> = &mut boxed;
    smooth_burst_then_one_per_interval(&run, make).await;
    a_refusal_takes_nothing(&run, make).await;
    a_window_holds_its_count_in_any_period(&run, make).await;
    keys_are_independent(&run, make).await;
    concurrent_checks_never_share_a_permit(&run, make).await;
    a_pause_holds_back_then_resumes_without_a_burst(&run, make).await;
    a_pause_is_never_shortened(&run, make).await;
    an_estimate_never_refuses_a_caller_served_in_time(&run, make).await;
    times_at_the_end_of_u64_neither_panic_nor_admit_everything(&run, make).await;
    random_sequences_stay_within_the_bound(&run, make).await;
}

type StoreMade<'a> = Pin<Box<dyn Future<Output = Arc<dyn RateLimitStore>> + 'a>>;
type Maker<'a> = dyn FnMut(Quota) -> StoreMade<'a> + 'a;

/// Per-run key names, so a store shared between runs starts clean. Keys
/// take the shapes real keys have (a host, a token, text that is not
/// ASCII, a long one), chosen from a random per-run number, so a store
/// cannot tell the suite's keys from real ones.
struct Run {
    tag: u64,
}

impl Run {
    fn new() -> Run {
        Run {
            tag: RandomState::new().hash_one(0u8),
        }
    }

    fn key(&self, check: &str, name: &str) -> String {
        let id = RandomState::new().hash_one((self.tag, check, name));
        match id % 5 {
            0 => format!("api-{id:x}.example.com:443"),
            1 => format!("sk_live_{id:016x}{:016x}", self.tag),
            2 => format!("клиент-{id}"),
            3 => format!("{id:x}").repeat(40),
            _ => format!("{id:x}"),
        }
    }
}

/// How long the suite waits for one answer of the store's before failing
/// the check by name (a store that never answers must not hang the suite).
pub const ANSWER_BOUND: Duration = Duration::from_secs(10);

fn quota(result: Result<Quota, crate::InvalidQuota>) -> Quota {
    match result {
        Ok(q) => q,
        Err(e) => panic!("conformance: a quota of the suite was refused: {e}"),
    }
}

async fn check(store: &dyn RateLimitStore, name: &str, key: &str, now: u64) -> Result<(), u64> {
    match tokio::time::timeout(ANSWER_BOUND, store.check(key, now)).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(e)) => panic!("conformance {name}: check({now}) failed: {e}"),
        Err(_) => panic!("conformance {name}: check({now}): no answer within {ANSWER_BOUND:?}"),
    }
}

async fn pause(store: &dyn RateLimitStore, name: &str, key: &str, now: u64, until: u64) {
    match tokio::time::timeout(ANSWER_BOUND, store.pause(key, now, until)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!("conformance {name}: pause failed: {e}"),
        Err(_) => panic!("conformance {name}: pause: no answer within {ANSWER_BOUND:?}"),
    }
}

/// Smooth 10/s with a burst of 3: three at once, then one every 100 ms,
/// each at exactly the time the refusal named.
async fn smooth_burst_then_one_per_interval(run: &Run, make: &mut Maker<'_>) {
    const NAME: &str = "smooth_burst_then_one_per_interval";
    // Near 0 too: the layer's time when the system clock reads 1970.
    for base in [T0, 0, 1] {
        let store = make(quota(quota(Quota::per_second(10)).with_burst(3))).await;
        let key = run.key(NAME, &format!("a{base}"));
        for i in 0..3 {
            assert_eq!(
                check(&*store, NAME, &key, base).await,
                Ok(()),
                "conformance {NAME}: permit {i} of the burst at {base}"
            );
        }
        let mut now = base;
        for i in 0..5 {
            let at = check(&*store, NAME, &key, now).await;
            assert_eq!(
                at,
                Err(now + 100 * MS),
                "conformance {NAME}: after the burst, refusal {i} names the next interval"
            );
            now += 100 * MS;
            assert_eq!(
                check(&*store, NAME, &key, now).await,
                Ok(()),
                "conformance {NAME}: the named time conforms"
            );
        }
    }
}

/// A refused check takes nothing: asking again names the same time.
async fn a_refusal_takes_nothing(run: &Run, make: &mut Maker<'_>) {
    const NAME: &str = "a_refusal_takes_nothing";
    for q in [
        quota(Quota::per_second(1)),
        quota(Quota::window(1, Duration::from_secs(1))),
    ] {
        let store = make(q).await;
        let key = run.key(NAME, &q.to_string());
        assert_eq!(check(&*store, NAME, &key, T0).await, Ok(()));
        for i in 0..100 {
            assert_eq!(
                check(&*store, NAME, &key, T0 + i * MS).await,
                Err(T0 + SEC),
                "conformance {NAME} ({q}): refusal {i} moved the next permit"
            );
        }
        assert_eq!(check(&*store, NAME, &key, T0 + SEC).await, Ok(()));
    }
}

/// A window of 3 per second: never a fourth within any second, and the
/// oldest permit's slot frees exactly one period after it.
async fn a_window_holds_its_count_in_any_period(run: &Run, make: &mut Maker<'_>) {
    const NAME: &str = "a_window_holds_its_count_in_any_period";
    for t0 in [T0, 0] {
        let store = make(quota(Quota::window(3, Duration::from_secs(1)))).await;
        let key = run.key(NAME, &format!("a{t0}"));
        for i in 0..3 {
            assert_eq!(
                check(&*store, NAME, &key, t0 + i * 10 * MS).await,
                Ok(()),
                "conformance {NAME}: permit {i}"
            );
        }
        assert_eq!(
            check(&*store, NAME, &key, t0 + 30 * MS).await,
            Err(t0 + SEC),
            "conformance {NAME}: a fourth within the period"
        );
        assert_eq!(
            check(&*store, NAME, &key, t0 + SEC - 1).await,
            Err(t0 + SEC),
            "conformance {NAME}: one nanosecond early"
        );
        assert_eq!(check(&*store, NAME, &key, t0 + SEC).await, Ok(()));
        assert_eq!(
            check(&*store, NAME, &key, t0 + SEC).await,
            Err(t0 + SEC + 10 * MS),
            "conformance {NAME}: the second slot frees one period after its permit"
        );
    }
}

/// Exhausting one key leaves every other key, and the empty key, alone.
async fn keys_are_independent(run: &Run, make: &mut Maker<'_>) {
    const NAME: &str = "keys_are_independent";
    let store = make(quota(Quota::per_minute(1))).await;
    let (a, b) = (run.key(NAME, "a"), run.key(NAME, "b"));
    assert_eq!(check(&*store, NAME, &a, T0).await, Ok(()));
    assert!(check(&*store, NAME, &a, T0).await.is_err());
    pause(&*store, NAME, &a, T0, T0 + 3_600 * SEC).await;
    assert_eq!(
        check(&*store, NAME, &b, T0).await,
        Ok(()),
        "conformance {NAME}: b after a was exhausted and paused"
    );
    assert_eq!(
        check(&*store, NAME, "", T0).await,
        Ok(()),
        "conformance {NAME}: the empty key after a and b"
    );
}

/// Nothing before a pause's end; then one permit, and the next one an
/// interval later (a burst at the end of a pause trips the upstream again).
async fn a_pause_holds_back_then_resumes_without_a_burst(run: &Run, make: &mut Maker<'_>) {
    const NAME: &str = "a_pause_holds_back_then_resumes_without_a_burst";
    for q in [
        quota(quota(Quota::per_second(10)).with_burst(5)),
        quota(Quota::window(10, Duration::from_secs(1))),
    ] {
        for key in [run.key(NAME, &q.to_string()), String::new()] {
            let store = make(q).await;
            let until = T0 + 5 * SEC;
            pause(&*store, NAME, &key, T0, until).await;
            for now in [T0, T0 + SEC, until - 1] {
                match check(&*store, NAME, &key, now).await {
                    Err(at) if at >= until => {}
                    other => panic!(
                        "conformance {NAME} ({q}): {} ns into a pause: {other:?}",
                        now - T0
                    ),
                }
            }
            assert_eq!(
                check(&*store, NAME, &key, until).await,
                Ok(()),
                "conformance {NAME} ({q}): the pause's end conforms"
            );
            match check(&*store, NAME, &key, until).await {
                Err(at) if at >= until + 100 * MS => {}
                other => panic!(
                    "conformance {NAME} ({q}, key {key:?}): a second permit at the pause's end: \
                 {other:?} (wanted a refusal until one interval later)"
                ),
            }
        }
    }
}

/// A shorter pause learned later never shortens one in force.
async fn a_pause_is_never_shortened(run: &Run, make: &mut Maker<'_>) {
    const NAME: &str = "a_pause_is_never_shortened";
    for q in [
        quota(Quota::per_second(10)),
        quota(Quota::window(10, Duration::from_secs(1))),
    ] {
        let store = make(q).await;
        let key = run.key(NAME, &q.to_string());
        pause(&*store, NAME, &key, T0, T0 + 5 * SEC).await;
        pause(&*store, NAME, &key, T0 + 10 * MS, T0 + SEC).await;
        match check(&*store, NAME, &key, T0 + 2 * SEC).await {
            Err(at) if at >= T0 + 5 * SEC => {}
            other => panic!("conformance {NAME} ({q}): {other:?}"),
        }
    }
}

/// An estimate, when the store gives one, is never later than the time the
/// permit really comes when everyone ahead takes theirs in turn (a later
/// estimate would refuse a caller that would have been served in time).
async fn an_estimate_never_refuses_a_caller_served_in_time(run: &Run, make: &mut Maker<'_>) {
    const NAME: &str = "an_estimate_never_refuses_a_caller_served_in_time";
    for q in [
        quota(quota(Quota::per_second(10)).with_burst(5)),
        quota(Quota::window(3, Duration::from_secs(1))),
    ] {
        for ahead in [0u64, 1, 3, 6] {
            for paused in [true, false] {
                let store = make(q).await;
                let key = run.key(NAME, &format!("{q}-{ahead}-{paused}"));
                if paused {
                    pause(&*store, NAME, &key, T0, T0 + 2 * SEC).await;
                }
                let Some(estimate) = store.estimate(&key, T0, ahead) else {
                    continue;
                };
                // Everyone ahead, then this caller, each at its first chance.
                let mut now = T0;
                let mut served = 0;
                let mut at = T0;
                while served <= ahead {
                    match check(&*store, NAME, &key, now).await {
                        Ok(()) => {
                            at = now;
                            served += 1;
                        }
                        Err(next) => {
                            assert!(next > now, "conformance {NAME}: a refusal named the past");
                            now = next;
                        }
                    }
                }
                assert!(
                    estimate <= at,
                    "conformance {NAME} ({q}, {ahead} ahead, paused {paused}): estimated {} ns, \
                 served at {} ns",
                    estimate - T0,
                    at - T0
                );
            }
        }
    }
}

/// At the very end of the time base the store saturates; it must neither
/// panic nor, saturated, admit everything.
async fn times_at_the_end_of_u64_neither_panic_nor_admit_everything(
    run: &Run,
    make: &mut Maker<'_>,
) {
    const NAME: &str = "times_at_the_end_of_u64_neither_panic_nor_admit_everything";
    for q in [
        quota(quota(Quota::per_second(1)).with_burst(2)),
        quota(Quota::window(2, Duration::from_secs(3_600))),
    ] {
        let store = make(q).await;
        let key = run.key(NAME, &q.to_string());
        for now in [u64::MAX - 10 * SEC, u64::MAX - 1, u64::MAX] {
            let mut admitted = 0;
            for _ in 0..10 {
                if check(&*store, NAME, &key, now).await.is_ok() {
                    admitted += 1;
                }
            }
            assert!(
                admitted <= 2,
                "conformance {NAME} ({q}): {admitted} of 10 admitted at {now}"
            );
        }
        pause(&*store, NAME, &key, u64::MAX - 1, u64::MAX).await;
        let _ = store.estimate(&key, u64::MAX, u64::MAX);
    }
}

/// Many tasks at once, one key, one instant: exactly the burst is admitted.
async fn concurrent_checks_never_share_a_permit(run: &Run, make: &mut Maker<'_>) {
    const NAME: &str = "concurrent_checks_never_share_a_permit";
    for q in [
        quota(quota(Quota::per_minute(10)).with_burst(10)),
        quota(Quota::window(10, Duration::from_secs(60))),
    ] {
        for key in [run.key(NAME, &q.to_string()), String::new()] {
            let store = make(q).await;
            let tasks: Vec<_> = (0..64)
                .map(|_| {
                    let store = Arc::clone(&store);
                    let key = key.clone();
                    tokio::spawn(async move { store.check(&key, T0).await })
                })
                .collect();
            let mut admitted = 0;
            for task in tasks {
                match task.await {
                    Ok(Ok(Ok(()))) => admitted += 1,
                    Ok(Ok(Err(_))) => {}
                    Ok(Err(e)) => panic!("conformance {NAME}: check failed: {e}"),
                    Err(e) => panic!("conformance {NAME}: a task failed: {e}"),
                }
            }
            assert_eq!(
                admitted,
                10,
                "conformance {NAME} ({q}, key {:?}): permits shared or lost",
                if key.is_empty() { "empty" } else { "keyed" }
            );
        }
    }
}

/// A seeded random walk over three keys (checks at random gaps, pauses now
/// and then): what was admitted keeps the quota's bound in every interval,
/// and every refusal names a later time.
async fn random_sequences_stay_within_the_bound(run: &Run, make: &mut Maker<'_>) {
    const NAME: &str = "random_sequences_stay_within_the_bound";
    for (seed, q) in [
        (1u64, quota(quota(Quota::per_second(5)).with_burst(3))),
        (2, quota(Quota::window(4, Duration::from_millis(500)))),
    ] {
        let store = make(q).await;
        let keys: Vec<String> = (0..3).map(|k| run.key(NAME, &format!("{q}-{k}"))).collect();
        let mut admitted: Vec<Vec<u64>> = vec![Vec::new(); keys.len()];
        let mut rng = seed;
        let mut now = T0;
        for _ in 0..1_500 {
            rng = rng
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let roll = rng >> 33;
            now += (roll % 120) * MS;
            let k = usize::try_from(roll % 3).unwrap_or(0);
            if roll % 97 == 0 {
                let until = now + (roll % 2_000) * MS;
                pause(&*store, NAME, &keys[k], now, until).await;
                continue;
            }
            match check(&*store, NAME, &keys[k], now).await {
                Ok(()) => admitted[k].push(now),
                Err(at) => assert!(at > now, "conformance {NAME}: a refusal named the past"),
            }
        }
        for times in &admitted {
            assert!(
                !times.is_empty(),
                "conformance {NAME} ({q}): a key never admitted"
            );
            for (i, &start) in times.iter().enumerate() {
                for (n, &end) in times[i..].iter().enumerate() {
                    let within = u64::try_from(n + 1).unwrap_or(u64::MAX);
                    let period = u64::try_from(q.period().as_nanos()).unwrap_or(u64::MAX);
                    let bound = match q.kind() {
                        // burst + (end - start) / interval
                        QuotaKind::Smooth => {
                            u64::from(q.burst())
                                + (end - start) / (period / u64::from(q.count()).max(1)).max(1)
                        }
                        QuotaKind::Window => {
                            if end - start < period {
                                u64::from(q.count())
                            } else {
                                u64::MAX
                            }
                        }
                    };
                    assert!(
                        within <= bound,
                        "conformance {NAME} ({q}): {within} admitted within {} ns (bound {bound})",
                        end - start
                    );
                }
            }
        }
    }
}
