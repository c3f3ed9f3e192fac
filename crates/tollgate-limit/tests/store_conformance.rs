//! The in-process store passes the shared conformance suite through the
//! async trait, on the absolute time base; and a store that answers later
//! (a boxed future per call, as a remote store's) passes it through the
//! layer's slow path too.

#![cfg(feature = "conformance")]

use std::sync::Arc;

use tollgate_limit::{conformance, MemoryStore, RateLimitStore, StoreFuture, UnixNanos};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_memory_store_conforms() {
    conformance::run(|quota| async move {
        Arc::new(MemoryStore::new(&quota, 1_000)) as Arc<dyn RateLimitStore>
    })
    .await;
}

/// A store that answers every call later, after a yield: what a remote
/// store looks like to the layer.
struct Later(Arc<MemoryStore>);

impl RateLimitStore for Later {
    fn check(&self, key: &str, now: UnixNanos) -> StoreFuture<Result<(), UnixNanos>> {
        let (store, key) = (Arc::clone(&self.0), key.to_owned());
        StoreFuture::later(async move {
            tokio::task::yield_now().await;
            Ok(store.check_sync(&key, now))
        })
    }

    fn estimate(&self, _key: &str, _now: UnixNanos, _ahead: u64) -> Option<UnixNanos> {
        None
    }

    fn pause(&self, key: &str, now: UnixNanos, until: UnixNanos) -> StoreFuture<()> {
        let (store, key) = (Arc::clone(&self.0), key.to_owned());
        StoreFuture::later(async move {
            tokio::task::yield_now().await;
            store.pause_sync(&key, now, until);
            Ok(())
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_store_that_answers_later_conforms() {
    conformance::run(|quota| async move {
        Arc::new(Later(Arc::new(MemoryStore::new(&quota, 1_000)))) as Arc<dyn RateLimitStore>
    })
    .await;
}

// The suite can fail: stores that break a promise are caught.

/// Admits everything: no limit at all.
struct Open;

impl RateLimitStore for Open {
    fn check(&self, _key: &str, _now: UnixNanos) -> StoreFuture<Result<(), UnixNanos>> {
        StoreFuture::ready(Ok(()))
    }
    fn estimate(&self, _key: &str, now: UnixNanos, _ahead: u64) -> Option<UnixNanos> {
        Some(now)
    }
    fn pause(&self, _key: &str, _now: UnixNanos, _until: UnixNanos) -> StoreFuture<()> {
        StoreFuture::ready(())
    }
}

/// Limits, but forgets every pause.
struct Forgetful(MemoryStore);

impl RateLimitStore for Forgetful {
    fn check(&self, key: &str, now: UnixNanos) -> StoreFuture<Result<(), UnixNanos>> {
        StoreFuture::ready(self.0.check_sync(key, now))
    }
    fn estimate(&self, key: &str, now: UnixNanos, ahead: u64) -> Option<UnixNanos> {
        Some(self.0.estimate_sync(key, now, ahead))
    }
    fn pause(&self, _key: &str, _now: UnixNanos, _until: UnixNanos) -> StoreFuture<()> {
        StoreFuture::ready(())
    }
}

/// Limits, but two racing callers can take the same permit (a read, a
/// yield, then a write: the race a remote store without a script has).
struct Racy(Arc<std::sync::Mutex<MemoryStore>>);

impl RateLimitStore for Racy {
    fn check(&self, key: &str, now: UnixNanos) -> StoreFuture<Result<(), UnixNanos>> {
        let (store, key) = (Arc::clone(&self.0), key.to_owned());
        StoreFuture::later(async move {
            let free = store.lock().expect("lock").estimate_sync(&key, now, 0) <= now;
            tokio::task::yield_now().await;
            if free {
                let _ = store.lock().expect("lock").check_sync(&key, now);
                Ok(Ok(()))
            } else {
                Ok(store.lock().expect("lock").check_sync(&key, now))
            }
        })
    }
    fn estimate(&self, key: &str, now: UnixNanos, ahead: u64) -> Option<UnixNanos> {
        Some(self.0.lock().expect("lock").estimate_sync(key, now, ahead))
    }
    fn pause(&self, key: &str, now: UnixNanos, until: UnixNanos) -> StoreFuture<()> {
        self.0.lock().expect("lock").pause_sync(key, now, until);
        StoreFuture::ready(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[should_panic(expected = "conformance smooth_burst_then_one_per_interval")]
async fn a_store_without_a_limit_fails_the_suite() {
    conformance::run(|_quota| async move { Arc::new(Open) as Arc<dyn RateLimitStore> }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[should_panic(expected = "conformance a_pause_holds_back_then_resumes_without_a_burst")]
async fn a_store_that_forgets_pauses_fails_the_suite() {
    conformance::run(|quota| async move {
        Arc::new(Forgetful(MemoryStore::new(&quota, 1_000))) as Arc<dyn RateLimitStore>
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[should_panic(expected = "conformance concurrent_checks_never_share_a_permit")]
async fn a_store_whose_checks_race_fails_the_suite() {
    conformance::run(|quota| async move {
        Arc::new(Racy(Arc::new(std::sync::Mutex::new(MemoryStore::new(
            &quota, 1_000,
        ))))) as Arc<dyn RateLimitStore>
    })
    .await;
}
