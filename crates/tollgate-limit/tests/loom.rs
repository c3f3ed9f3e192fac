//! The unkeyed smooth limiter takes permits with a compare-and-swap, no
//! lock: loom explores every interleaving of callers (and of a pause
//! learned at the same time) and checks that no two callers ever take the
//! same permit.
//!
//! `RUSTFLAGS="--cfg tollgate_loom" cargo test -p tollgate-limit --test loom --release`
#![cfg(tollgate_loom)]

use loom::sync::Arc;
use loom::thread;
use tollgate_limit::{MemoryStore, Quota, RateLimitStore};

#[test]
fn concurrent_callers_never_take_more_than_the_burst() {
    loom::model(|| {
        // One permit per second, a burst of 2; the clock frozen at 0.
        let quota = Quota::per_second(1)
            .expect("valid")
            .with_burst(2)
            .expect("valid");
        let store = Arc::new(MemoryStore::new(&quota, 1));
        let threads: Vec<_> = (0..3)
            .map(|_| {
                let store = Arc::clone(&store);
                thread::spawn(move || usize::from(store.check_sync("", 0).is_ok()))
            })
            .collect();
        let granted: usize = threads.into_iter().map(|t| t.join().expect("thread")).sum();
        assert_eq!(granted, 2, "exactly the burst, never more");
    });
}

#[test]
fn a_pause_racing_a_caller_is_never_lost() {
    loom::model(|| {
        let quota = Quota::per_second(1).expect("valid");
        let store = Arc::new(MemoryStore::new(&quota, 1));
        let pauser = {
            let store = Arc::clone(&store);
            thread::spawn(move || store.pause_sync("", 0, 10_000_000_000))
        };
        let caller = {
            let store = Arc::clone(&store);
            thread::spawn(move || store.check_sync("", 0).is_ok())
        };
        pauser.join().expect("thread");
        let _ = caller.join().expect("thread");
        // Whatever the order, the pause holds from then on.
        assert_eq!(store.check_sync("", 1), Err(10_000_000_000));
    });
}
