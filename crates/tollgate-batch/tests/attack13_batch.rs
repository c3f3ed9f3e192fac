//! Adversary 13: the flush timer's guard (`TimerGuard`), the timer spawned
//! outside the lock (`Timer::Starting`) and the atomic batch generation,
//! under runtimes that shut down at every point while callers on other
//! runtimes and threads keep coming. Each test's name says the promise;
//! all are guards.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tollgate_batch::{Batch, BatchError, BatchLayer};
use tower::{service_fn, BoxError, Layer, Service, ServiceExt};

/// Answers `id * 10` for each id, after `delay` (real time).
fn service(
    delay: Duration,
) -> impl Service<Vec<u64>, Response = HashMap<u64, u64>, Error = BoxError, Future = impl Send>
       + Clone
       + Send
       + 'static {
    service_fn(move |ids: Vec<u64>| async move {
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        Ok::<_, BoxError>(ids.into_iter().map(|id| (id, id * 10)).collect())
    })
}

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Three threads keep making and ending runtimes (each ended at a random
/// point: while its callers gather, while its timer sleeps, while its
/// batch is in flight), while a long-lived runtime's callers keep loading.
/// Every live caller ends (its item, or `Closed` for a batch whose timer or
/// call died with another runtime), none hangs, and at the end nothing is
/// pending, nothing waits, no slot is held, and a full `max_pending` of new
/// callers is admitted and answered.
#[test]
fn runtimes_ending_at_every_point_lose_no_live_caller_and_leak_no_pending_place() {
    const MAX_PENDING: usize = 256;
    let batch: Batch<_, u64, u64> = BatchLayer::new(8, Duration::from_millis(2))
        .max_pending(MAX_PENDING)
        .max_in_flight(2)
        .layer(service(Duration::from_millis(1)));
    let stop = Arc::new(AtomicBool::new(false));
    let mut churners = Vec::new();
    for t in 0..3u64 {
        let (batch, stop) = (batch.clone(), stop.clone());
        churners.push(std::thread::spawn(move || {
            let mut round = 0u64;
            while !stop.load(Ordering::Acquire) {
                round += 1;
                let rt = current_thread();
                let b = batch.clone();
                // Ends after 0 to ~4 ms: before, during or after the
                // linger of 2 ms and the call of 1 ms.
                let life = Duration::from_micros((round * 7919 + t * 104_729) % 4_000);
                rt.block_on(async move {
                    for i in 0..20u64 {
                        let mut b = b.clone();
                        tokio::spawn(async move {
                            let _ = b.ready().await.expect("ready").call(i % 11).await;
                        });
                    }
                    tokio::time::sleep(life).await;
                });
                drop(rt);
            }
            round
        }));
    }
    let live = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (ok, closed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    live.block_on(async {
        let mut tasks = Vec::new();
        for w in 0..16u64 {
            let (batch, ok, closed) = (batch.clone(), ok.clone(), closed.clone());
            tasks.push(tokio::spawn(async move {
                for i in 0..150u64 {
                    let id = (w * 150 + i) % 23;
                    let answer =
                        tokio::time::timeout(Duration::from_secs(10), batch.clone().oneshot(id))
                            .await
                            .unwrap_or_else(|_| panic!("caller {w}/{i} hung"));
                    match answer {
                        Ok(v) => {
                            assert_eq!(v, id * 10, "another caller's item");
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(BatchError::Closed) => {
                            closed.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(BatchError::TooManyPending { .. }) => {
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                        Err(e) => panic!("caller {w}/{i}: {e}"),
                    }
                }
            }));
        }
        for task in tasks {
            task.await.expect("a live caller panicked");
        }
    });
    stop.store(true, Ordering::Release);
    let rounds: u64 = churners
        .into_iter()
        .map(|t| t.join().expect("a churning thread panicked"))
        .sum();
    assert!(
        rounds > 10,
        "too few runtimes ended to test anything: {rounds}"
    );
    assert!(
        ok.load(Ordering::Relaxed) > 1000,
        "live callers mostly failed: ok {}, closed {}",
        ok.load(Ordering::Relaxed),
        closed.load(Ordering::Relaxed)
    );
    // Nothing left behind by the runtimes that ended.
    live.block_on(async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while (batch.pending(), batch.in_flight()) != (0, 0) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "left behind: pending {}, in flight {}, waiting {}",
                batch.pending(),
                batch.in_flight(),
                batch.waiting()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // A full `max_pending` of new callers is admitted and answered.
        let all = futures_join(&batch, MAX_PENDING as u64).await;
        for (id, answer) in all {
            assert_eq!(answer.expect("admitted and answered"), (id % 97) * 10);
        }
        assert_eq!(batch.pending(), 0);
    });
}

/// `n` loads at once, each of id `i % 97`.
async fn futures_join<S>(batch: &Batch<S, u64, u64>, n: u64) -> Vec<(u64, Result<u64, BatchError>)>
where
    S: Service<Vec<u64>, Response = HashMap<u64, u64>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
{
    let mut handles = Vec::new();
    for i in 0..n {
        let fut = batch.clone().oneshot(i % 97);
        handles.push(tokio::spawn(async move { (i, fut.await) }));
    }
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.expect("join"));
    }
    out
}

/// A caller whose runtime ends while its batch's timer is being started
/// (the spawn on a runtime shutting down drops the timer at once): the
/// guard answers the batch `Closed` from inside the spawn, without the
/// caller holding the lock (no deadlock), and the next caller, on a live
/// runtime, starts a new batch that is answered.
#[test]
fn a_timer_spawned_on_a_runtime_shutting_down_answers_closed_without_deadlock() {
    let batch: Batch<_, u64, u64> =
        BatchLayer::new(100, Duration::from_millis(1)).layer(service(Duration::ZERO));
    for _ in 0..50 {
        let rt = current_thread();
        let handle = rt.handle().clone();
        // A runtime that is shut down: its handle still spawns, and drops
        // each task at once.
        rt.shutdown_background();
        let b = batch.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _enter = handle.enter();
            let fut = b.clone().call(7);
            let _ = tx.send(fut);
        });
        let fut = rx
            .recv_timeout(Duration::from_secs(5))
            .expect("the call returned (no deadlock in the guard)");
        let live = current_thread();
        let answer = live.block_on(async {
            tokio::time::timeout(Duration::from_secs(5), fut)
                .await
                .expect("the caller of a dead timer hung")
        });
        assert!(matches!(answer, Err(BatchError::Closed)), "{answer:?}");
        assert_eq!(batch.pending(), 0);
        let next = live.block_on(async {
            tokio::time::timeout(Duration::from_secs(5), batch.clone().oneshot(8))
                .await
                .expect("the next caller hung")
        });
        assert_eq!(next.expect("answered"), 80);
    }
}
