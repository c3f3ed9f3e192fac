//! Adversarial tests of the store conformance suite: stores that break a
//! promise of `RateLimitStore` in ways the layer meets, but only outside
//! what the suite looks at (its keys, its times, its keys' shapes, a
//! pause on the empty key, estimates with a burst left, an answer that
//! never comes). A suite that passes them can be fooled.

#![cfg(feature = "conformance")]

use std::sync::Arc;
use std::time::Duration;

use tollgate_limit::{conformance, MemoryStore, Quota, RateLimitStore, StoreFuture, UnixNanos};

const MS: u64 = 1_000_000;

/// A memory store whose check, estimate and pause a test may bend.
struct Bent {
    memory: MemoryStore,
    quota: Quota,
    /// Keys the store really limits; every other key is admitted.
    limits_key: fn(&str) -> bool,
    /// Times are cut to whole milliseconds before deciding.
    millis: bool,
    /// Below this time everything is admitted (a wrap in `now - period`).
    open_below: UnixNanos,
    /// Pauses on the empty key are lost.
    drops_unkeyed_pauses: bool,
    /// Estimates ignore the burst left.
    burstless_estimate: bool,
}

impl Bent {
    fn new(quota: Quota) -> Bent {
        Bent {
            memory: MemoryStore::new(&quota, 1_000),
            quota,
            limits_key: |_| true,
            millis: false,
            open_below: 0,
            drops_unkeyed_pauses: false,
            burstless_estimate: false,
        }
    }

    fn time(&self, now: UnixNanos) -> UnixNanos {
        if self.millis {
            now - now % MS
        } else {
            now
        }
    }

    /// The quota's interval (a window's step).
    fn interval(&self) -> u64 {
        let period = u64::try_from(self.quota.period().as_nanos()).unwrap_or(u64::MAX);
        period / u64::from(self.quota.count()).max(1)
    }
}

impl RateLimitStore for Bent {
    fn check(&self, key: &str, now: UnixNanos) -> StoreFuture<Result<(), UnixNanos>> {
        if !(self.limits_key)(key) || now < self.open_below {
            return StoreFuture::ready(Ok(()));
        }
        StoreFuture::ready(self.memory.check_sync(key, self.time(now)))
    }

    fn estimate(&self, key: &str, now: UnixNanos, ahead: u64) -> Option<UnixNanos> {
        let now = self.time(now);
        if self.burstless_estimate {
            let first = self.memory.estimate_sync(key, now, 0);
            return Some(first.saturating_add(ahead.saturating_mul(self.interval())));
        }
        Some(self.memory.estimate_sync(key, now, ahead))
    }

    fn pause(&self, key: &str, now: UnixNanos, until: UnixNanos) -> StoreFuture<()> {
        if !(self.drops_unkeyed_pauses && key.is_empty()) {
            self.memory.pause_sync(key, self.time(now), until);
        }
        StoreFuture::ready(())
    }
}

async fn run_suite(bend: fn(Bent) -> Bent) {
    conformance::run(move |quota| async move {
        Arc::new(bend(Bent::new(quota))) as Arc<dyn RateLimitStore>
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unbent_store_passes_the_suite() {
    run_suite(|b| b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[should_panic(expected = "conformance")]

async fn a_store_that_limits_only_the_suites_keys_fails_the_suite() {
    // What it does to real keys: no limit at all.
    let bent = Bent {
        limits_key: |k| k.is_empty() || k.starts_with("conformance-"),
        ..Bent::new(Quota::per_minute(1).expect("valid"))
    };
    for _ in 0..100 {
        assert_eq!(
            bent.check("api.test:443", 1)
                .now_or_later()
                .ok()
                .map(|r| r.ok()),
            Some(Some(Ok(())))
        );
    }
    run_suite(|b| Bent {
        limits_key: |k| k.is_empty() || k.starts_with("conformance-"),
        ..b
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[should_panic(expected = "conformance")]

async fn a_store_that_drops_pauses_of_the_unkeyed_limiter_fails_the_suite() {
    run_suite(|b| Bent {
        drops_unkeyed_pauses: true,
        ..b
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[should_panic(expected = "conformance")]

async fn a_store_whose_estimates_ignore_the_burst_fails_the_suite() {
    // What it does: with a burst of 5 untouched, the caller behind 3 others
    // is served at once, but is estimated 300 ms away (refused under a
    // max_wait of 100 ms).
    let quota = Quota::per_second(10)
        .expect("valid")
        .with_burst(5)
        .expect("valid");
    let bent = Bent {
        burstless_estimate: true,
        ..Bent::new(quota)
    };
    let t0 = conformance::T0;
    assert_eq!(bent.memory.estimate_sync("k", t0, 3), t0, "the truth");
    assert_eq!(
        bent.estimate("k", t0, 3),
        Some(t0 + 300 * MS),
        "the store's estimate"
    );
    run_suite(|b| Bent {
        burstless_estimate: true,
        ..b
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[should_panic(expected = "conformance")]
async fn a_store_that_truncates_times_to_milliseconds_fails_the_suite() {
    // Caught (a window's steps are not whole milliseconds). What it does:
    // 1000/s without a burst admits two permits 100 µs apart.
    let bent = Bent {
        millis: true,
        ..Bent::new(Quota::per_second(1_000).expect("valid"))
    };
    let t0 = conformance::T0;
    let first = bent
        .check("k", t0 + 900_000)
        .now_or_later()
        .ok()
        .map(|r| r.ok());
    let second = bent.check("k", t0 + MS).now_or_later().ok().map(|r| r.ok());
    assert_eq!(first, Some(Some(Ok(()))));
    assert_eq!(
        second,
        Some(Some(Ok(()))),
        "two permits 100 µs apart under 1 per ms"
    );
    run_suite(|b| Bent { millis: true, ..b }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[should_panic(expected = "conformance")]

async fn a_store_that_admits_everything_near_time_zero_fails_the_suite() {
    run_suite(|b| Bent {
        open_below: 1 << 50,
        ..b
    })
    .await;
}

/// Never answers a check.
struct Silent;

impl RateLimitStore for Silent {
    fn check(&self, _key: &str, _now: UnixNanos) -> StoreFuture<Result<(), UnixNanos>> {
        StoreFuture::later(std::future::pending())
    }
    fn estimate(&self, _key: &str, _now: UnixNanos, _ahead: u64) -> Option<UnixNanos> {
        None
    }
    fn pause(&self, _key: &str, _now: UnixNanos, _until: UnixNanos) -> StoreFuture<()> {
        StoreFuture::ready(())
    }
}

#[tokio::test(start_paused = true)]
#[should_panic(expected = "conformance")]

async fn a_store_that_never_answers_fails_the_suite_by_name() {
    let run = conformance::run(|_quota| async { Arc::new(Silent) as Arc<dyn RateLimitStore> });
    if tokio::time::timeout(Duration::from_secs(24 * 3_600), run)
        .await
        .is_err()
    {
        panic!("the suite was still waiting for the store after a day");
    }
}
