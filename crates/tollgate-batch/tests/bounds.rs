//! The batcher's bounds, with tokio's clock paused: callers waiting
//! (`max_pending`), batches in flight, the caller's wait (`timeout`),
//! dropped callers, and every setter at 0, 1 and MAX.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Semaphore;
use tollgate_batch::{BatchError, BatchLayer};
use tower::{service_fn, BoxError, Layer, ServiceExt};

type Calls = Arc<Mutex<Vec<Vec<u64>>>>;

/// A batch service answering `id * 10`, each call holding one permit of
/// `gate` (closed gate: the call hangs), recording each batch.
fn gated(
    gate: Arc<Semaphore>,
) -> (
    Calls,
    impl tower::Service<Vec<u64>, Response = HashMap<u64, u64>, Error = BoxError, Future = impl Send>
        + Clone
        + Send
        + 'static,
) {
    let calls: Calls = Arc::default();
    let c = calls.clone();
    let service = service_fn(move |ids: Vec<u64>| {
        c.lock().expect("lock").push(ids.clone());
        let gate = gate.clone();
        async move {
            let _permit = gate.acquire().await?;
            Ok::<_, BoxError>(ids.into_iter().map(|id| (id, id * 10)).collect())
        }
    });
    (calls, service)
}

async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn max_in_flight_at_usize_max_does_not_panic() {
    let (_, upstream) = gated(Arc::new(Semaphore::new(Semaphore::MAX_PERMITS)));
    let batcher = BatchLayer::new(2, Duration::from_millis(1))
        .max_in_flight(usize::MAX)
        .layer(upstream);
    assert_eq!(batcher.oneshot(4).await.expect("item"), 40);
}

#[tokio::test(start_paused = true)]
async fn a_key_whose_callers_left_while_its_batch_waited_for_a_slot_is_not_asked_for() {
    let gate = Arc::new(Semaphore::new(0));
    let (calls, upstream) = gated(gate.clone());
    let batcher = BatchLayer::new(1, Duration::from_millis(1))
        .max_in_flight(1)
        .layer(upstream);
    // 1 is in flight (hung); 2 waits for the slot, then its caller leaves.
    let first = tokio::spawn(batcher.clone().oneshot(1));
    settle().await;
    let second = tokio::spawn(batcher.clone().oneshot(2));
    settle().await;
    second.abort();
    settle().await;
    gate.add_permits(10);
    assert_eq!(first.await.expect("task").expect("item"), 10);
    settle().await;
    assert_eq!(
        *calls.lock().expect("lock"),
        vec![vec![1]],
        "2 had no caller left when a slot came"
    );
}

#[tokio::test(start_paused = true)]
async fn callers_beyond_max_pending_are_refused_at_once_and_a_dropped_one_frees_its_place() {
    let (calls, upstream) = gated(Arc::new(Semaphore::new(100)));
    let batcher = BatchLayer::new(100, Duration::from_secs(1))
        .max_pending(3)
        .layer(upstream);
    let a = tokio::spawn(batcher.clone().oneshot(1));
    let b = tokio::spawn(batcher.clone().oneshot(2));
    let c = tokio::spawn(batcher.clone().oneshot(2));
    settle().await;
    assert_eq!(batcher.pending(), 3);
    let refused = batcher.clone().oneshot(4).await;
    assert!(
        matches!(refused, Err(BatchError::TooManyPending { max_pending: 3 })),
        "{refused:?}"
    );
    c.abort();
    settle().await;
    assert_eq!(
        batcher.pending(),
        2,
        "the dropped caller gave its place back"
    );
    let d = tokio::spawn(batcher.clone().oneshot(5));
    assert_eq!(a.await.expect("task").expect("item"), 10);
    assert_eq!(b.await.expect("task").expect("item"), 20);
    assert_eq!(d.await.expect("task").expect("item"), 50);
    assert_eq!(batcher.pending(), 0);
    assert_eq!(
        *calls.lock().expect("lock"),
        vec![vec![1, 2, 5]],
        "4 was never asked for"
    );
}

#[tokio::test(start_paused = true)]
async fn the_default_bounds_pending_callers() {
    let (_, upstream) = gated(Arc::new(Semaphore::new(0)));
    let batcher = BatchLayer::new(usize::MAX, Duration::from_secs(3600)).layer(upstream);
    let mut waiting = Vec::new();
    for id in 0..tollgate_batch::DEFAULT_MAX_PENDING as u64 {
        let mut call = Box::pin(batcher.clone().oneshot(id));
        assert!(futures_poll(&mut call).is_none(), "caller {id} waits");
        waiting.push(call);
    }
    let refused = batcher.clone().oneshot(u64::MAX).await;
    assert!(
        matches!(refused, Err(BatchError::TooManyPending { .. })),
        "{refused:?}"
    );
}

/// Polls a future once.
fn futures_poll<F: std::future::Future + Unpin>(f: &mut F) -> Option<F::Output> {
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    match std::pin::Pin::new(f).poll(&mut cx) {
        std::task::Poll::Ready(out) => Some(out),
        std::task::Poll::Pending => None,
    }
}

#[tokio::test(start_paused = true)]
async fn callers_waiting_for_a_slot_are_pending_and_callers_in_flight_are_not() {
    let gate = Arc::new(Semaphore::new(0));
    let (_, upstream) = gated(gate.clone());
    let batcher = BatchLayer::new(1, Duration::from_millis(1))
        .max_in_flight(1)
        .max_pending(1)
        .layer(upstream);
    let first = tokio::spawn(batcher.clone().oneshot(1));
    settle().await;
    assert_eq!((batcher.in_flight(), batcher.pending()), (1, 0));
    let second = tokio::spawn(batcher.clone().oneshot(2));
    settle().await;
    assert_eq!((batcher.in_flight(), batcher.pending()), (1, 1));
    let third = batcher.clone().oneshot(3).await;
    assert!(matches!(
        third,
        Err(BatchError::TooManyPending { max_pending: 1 })
    ));
    gate.add_permits(2);
    assert_eq!(first.await.expect("task").expect("item"), 10);
    assert_eq!(second.await.expect("task").expect("item"), 20);
    assert_eq!((batcher.in_flight(), batcher.pending()), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn a_caller_behind_a_hung_batch_times_out_after_max_wait_and_is_not_asked_for() {
    let gate = Arc::new(Semaphore::new(0));
    let (calls, upstream) = gated(gate.clone());
    let batcher = BatchLayer::new(1, Duration::from_millis(1))
        .max_in_flight(1)
        .max_wait(Duration::from_secs(5))
        .layer(upstream);
    let started = tokio::time::Instant::now();
    let hung = tokio::spawn(batcher.clone().oneshot(1));
    settle().await;
    let behind = batcher.clone().oneshot(2).await;
    assert!(
        matches!(behind, Err(BatchError::TimedOut { waited }) if waited == Duration::from_secs(5)),
        "{behind:?}"
    );
    assert_eq!(started.elapsed(), Duration::from_secs(5));
    assert_eq!(batcher.pending(), 0, "the timed-out caller left");
    let hung = hung.await.expect("task");
    assert!(matches!(hung, Err(BatchError::TimedOut { .. })), "{hung:?}");
    gate.add_permits(10);
    settle().await;
    assert_eq!(
        *calls.lock().expect("lock"),
        vec![vec![1]],
        "2 never went out"
    );
}

#[tokio::test(start_paused = true)]
async fn a_caller_that_times_out_while_gathering_leaves_its_batch() {
    let (calls, upstream) = gated(Arc::new(Semaphore::new(10)));
    let batcher = BatchLayer::new(10, Duration::from_secs(10))
        .max_wait(Duration::from_secs(1))
        .layer(upstream);
    let early = batcher.clone().oneshot(1).await;
    assert!(
        matches!(early, Err(BatchError::TimedOut { .. })),
        "{early:?}"
    );
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert!(
        calls.lock().expect("lock").is_empty(),
        "nobody wanted 1 any more"
    );
}

#[tokio::test(start_paused = true)]
async fn a_caller_dropped_in_flight_leaves_the_others_their_answers() {
    let gate = Arc::new(Semaphore::new(0));
    let (calls, upstream) = gated(gate.clone());
    let batcher = BatchLayer::new(2, Duration::from_secs(1)).layer(upstream);
    let kept = tokio::spawn(batcher.clone().oneshot(1));
    let dropped = tokio::spawn(batcher.clone().oneshot(2));
    settle().await;
    assert_eq!(batcher.in_flight(), 1);
    dropped.abort();
    settle().await;
    gate.add_permits(1);
    assert_eq!(kept.await.expect("task").expect("item"), 10);
    assert_eq!(*calls.lock().expect("lock"), vec![vec![1, 2]]);
    assert_eq!((batcher.in_flight(), batcher.pending()), (0, 0));
}

#[test]
fn a_call_outside_a_runtime_is_closed_not_a_panic() {
    let (_, upstream) = gated(Arc::new(Semaphore::new(1)));
    let mut batcher = BatchLayer::new(1, Duration::ZERO).layer(upstream);
    let mut call = tower::Service::call(&mut batcher, 1);
    assert!(matches!(
        futures_poll(&mut call),
        Some(Err(BatchError::Closed))
    ));
    assert_eq!(batcher.pending(), 0);
}

/// Every setter at 0, 1 and MAX: no panic, and a caller that is answered
/// gets its own item or a typed error.
#[tokio::test(start_paused = true)]
async fn every_setter_at_zero_one_and_max_does_not_panic() {
    let counts = [0, 1, usize::MAX];
    let delays = [Duration::ZERO, Duration::from_nanos(1), Duration::MAX];
    let waits = [
        None,
        Some(Duration::ZERO),
        Some(Duration::from_nanos(1)),
        Some(Duration::MAX),
    ];
    for max_batch in counts {
        for max_delay in delays {
            for max_in_flight in counts {
                for max_pending in counts {
                    for max_wait in waits {
                        let (_, upstream) = gated(Arc::new(Semaphore::new(100)));
                        let mut layer = BatchLayer::new(max_batch, max_delay)
                            .max_in_flight(max_in_flight)
                            .max_pending(max_pending);
                        if let Some(wait) = max_wait {
                            layer = layer.max_wait(wait);
                        }
                        let _ = format!("{layer:?}");
                        let batcher = layer.layer(upstream);
                        let calls = (1..=3).map(|id| {
                            let b = batcher.clone();
                            tokio::spawn(async move {
                                tokio::time::timeout(Duration::from_secs(60), b.oneshot(id)).await
                            })
                        });
                        let calls: Vec<_> = calls.collect();
                        for (id, call) in (1u64..).zip(calls) {
                            match call.await.expect("no panic") {
                                Ok(Ok(item)) => assert_eq!(item, id * 10),
                                Ok(Err(
                                    BatchError::TooManyPending { .. } | BatchError::TimedOut { .. },
                                )) => {}
                                Ok(Err(other)) => panic!("unexpected {other:?}"),
                                // Never flushed (delay MAX, batch not full):
                                // documented, not a panic.
                                Err(_) => assert_eq!(max_delay, Duration::MAX),
                            }
                        }
                    }
                }
            }
        }
    }
}

#[tokio::test(start_paused = true)]
async fn the_timer_of_a_batch_sent_by_size_does_not_cut_the_next_one_short() {
    let (calls, upstream) = gated(Arc::new(Semaphore::new(100)));
    let batcher = BatchLayer::new(2, Duration::from_millis(10)).layer(upstream);
    let started = tokio::time::Instant::now();
    let (a, b) = tokio::join!(batcher.clone().oneshot(1), batcher.clone().oneshot(2));
    assert_eq!((a.expect("1"), b.expect("2")), (10, 20));
    tokio::time::sleep(Duration::from_millis(5)).await;
    let c = tokio::spawn(batcher.clone().oneshot(3));
    tokio::time::sleep(Duration::from_millis(7)).await;
    assert_eq!(
        calls.lock().expect("lock").len(),
        1,
        "3 has waited 7 ms of 10"
    );
    assert_eq!(c.await.expect("task").expect("item"), 30);
    assert_eq!(started.elapsed(), Duration::from_millis(15));
}

#[tokio::test(start_paused = true)]
async fn no_flush_timer_outlives_its_batch() {
    let (calls, upstream) = gated(Arc::new(Semaphore::new(1000)));
    let batcher = BatchLayer::new(2, Duration::MAX).layer(upstream);
    for pair in 0..100u64 {
        let (a, b) = tokio::join!(
            batcher.clone().oneshot(pair * 2),
            batcher.clone().oneshot(pair * 2 + 1)
        );
        assert_eq!((a.expect("a"), b.expect("b")), (pair * 20, pair * 20 + 10));
    }
    settle().await;
    assert_eq!(calls.lock().expect("lock").len(), 100);
    let tasks = tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks();
    assert_eq!(tasks, 0, "timers of batches sent by size still sleep");
}

/// A batch service answering `id * 10` after one yield, counting the calls
/// in it at once (`now`) and the most ever (`most`).
fn counting(
    now: Arc<std::sync::atomic::AtomicUsize>,
    most: Arc<std::sync::atomic::AtomicUsize>,
) -> impl tower::Service<Vec<u64>, Response = HashMap<u64, u64>, Error = BoxError, Future = impl Send>
       + Clone
       + Send
       + 'static {
    use std::sync::atomic::Ordering;
    service_fn(move |ids: Vec<u64>| {
        let (now, most) = (now.clone(), most.clone());
        async move {
            let in_flight = now.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(in_flight, Ordering::SeqCst);
            tokio::task::yield_now().await;
            now.fetch_sub(1, Ordering::SeqCst);
            Ok::<_, BoxError>(ids.into_iter().map(|id| (id, id * 10)).collect())
        }
    })
}

/// Many tasks on several threads, some giving up: the bounds hold, every
/// caller ends, and nothing stays counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_bounds_hold_across_threads() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let now = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let upstream = counting(now.clone(), most.clone());
    let batcher = BatchLayer::new(8, Duration::ZERO)
        .max_in_flight(2)
        .max_pending(16)
        .layer(upstream);
    let tasks: Vec<_> = (0..16u64)
        .map(|t| {
            let batcher = batcher.clone();
            tokio::spawn(async move {
                let mut refused = 0;
                for i in 0..200u64 {
                    let id = (t * 7 + i) % 23;
                    let call = batcher.clone().oneshot(id);
                    if i % 5 == 0 {
                        // Gives up at once: polled once, then dropped.
                        let _ = futures_poll(&mut Box::pin(call));
                        continue;
                    }
                    match call.await {
                        Ok(item) => assert_eq!(item, id * 10),
                        Err(BatchError::TooManyPending { max_pending: 16 }) => refused += 1,
                        Err(other) => panic!("{other:?}"),
                    }
                    assert!(batcher.pending() <= 16);
                }
                refused
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("no panic");
    }
    assert!(
        most.load(Ordering::SeqCst) <= 2,
        "{} in flight",
        most.load(Ordering::SeqCst)
    );
    assert_eq!(batcher.pending(), 0);
}
