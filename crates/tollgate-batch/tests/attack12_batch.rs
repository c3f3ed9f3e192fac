//! Adversarial tests of the batcher (attack 12): runtimes that shut down,
//! cancellation at the flush, a panicking batched call, lingers of 0 and
//! of decades, floods of callers that leave, odd answers, and a
//! multi-threaded random test of "each caller gets its item's answer or one
//! error". A test marked `LIMITATION` shows a documented limit; the rest
//! are guards (the adversary's two `BROKEN` ones, a flush timer that died
//! with its runtime, are fixed by the timer's guard).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use proptest::prelude::*;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tollgate_batch::{BatchError, BatchLayer};
use tower::{service_fn, BoxError, Layer, Service, ServiceExt};

type Calls = Arc<Mutex<Vec<Vec<u64>>>>;

/// A batch service answering `id * 10` for each id, each call holding one
/// permit of `gate` (a closed gate hangs the call), recording each batch.
fn gated(
    gate: Arc<Semaphore>,
) -> (
    Calls,
    impl Service<Vec<u64>, Response = HashMap<u64, u64>, Error = BoxError, Future = impl Send>
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

fn open() -> Arc<Semaphore> {
    Arc::new(Semaphore::new(Semaphore::MAX_PERMITS))
}

async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

/// Polls a future once with a no-op waker.
fn poll_once<F: Future + Unpin>(f: &mut F) -> Option<F::Output> {
    let mut cx = Context::from_waker(Waker::noop());
    match Pin::new(f).poll(&mut cx) {
        Poll::Ready(out) => Some(out),
        Poll::Pending => None,
    }
}

fn runtime(paused: bool) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(paused)
        .build()
        .expect("runtime")
}

// ---------------------------------------------------------------------------
// Runtimes that shut down
// ---------------------------------------------------------------------------

/// A `Batch` kept across runtimes (a client in a `static`, used by several
/// `#[tokio::test]`s, each with its own runtime): the flush timer of the
/// batch being gathered runs on the runtime of the caller that started the
/// batch. When that runtime shuts down, the timer is gone, but
/// `Gathering::timer` still holds its `AbortHandle`, so no caller ever
/// starts another: every later caller with fewer than `max_batch` keys
/// waits forever (or, with `max_wait`, times out every time).
#[test]
fn a_batch_started_on_a_runtime_that_shut_down_is_still_flushed_for_callers_on_another() {
    let (calls, upstream) = gated(open());
    let batcher = BatchLayer::new(10, Duration::from_millis(5)).layer(upstream);
    {
        let first = runtime(false);
        first.block_on(async {
            let mut call = batcher.clone().oneshot(1);
            assert!(poll_once(&mut call).is_none(), "gathering");
            // The caller goes away with its runtime.
        });
        drop(first);
    }
    let second = runtime(true);
    second.block_on(async {
        let started = Instant::now();
        let answer =
            tokio::time::timeout(Duration::from_secs(3600), batcher.clone().oneshot(2)).await;
        assert!(
            matches!(answer, Ok(Ok(20))),
            "a caller on a live runtime got {answer:?} after {:?}; batches sent: {:?}; \
             keys waiting: {}",
            started.elapsed(),
            calls.lock().expect("lock"),
            batcher.waiting(),
        );
    });
}

/// Same root cause, as a caller on the first runtime sees it: its call
/// was made there, its runtime ended, and it is awaited on another one.
/// It must end (its item, or `Closed`), not wait forever.
#[test]
fn a_caller_whose_batch_timer_died_with_its_runtime_does_not_hang() {
    let (_, upstream) = gated(open());
    let batcher = BatchLayer::new(10, Duration::from_millis(5)).layer(upstream);
    let first = runtime(false);
    let mut call = batcher.clone().oneshot(1);
    first.block_on(async {
        assert!(poll_once(&mut call).is_none(), "gathering");
    });
    drop(first);
    let second = runtime(true);
    second.block_on(async {
        let answer = tokio::time::timeout(Duration::from_secs(3600), &mut call).await;
        assert!(
            matches!(answer, Ok(Ok(10) | Err(BatchError::Closed))),
            "got {answer:?} (Err(Elapsed) is a hang)"
        );
    });
}

/// A batch in flight on a runtime that shuts down: its callers (awaited
/// elsewhere) get `Closed`, not a hang, and its in-flight slot comes back.
#[test]
fn a_batch_in_flight_when_its_runtime_shuts_down_answers_closed_not_a_hang() {
    let gate = Arc::new(Semaphore::new(0));
    let (calls, upstream) = gated(gate.clone());
    let batcher = BatchLayer::new(2, Duration::from_secs(1))
        .max_in_flight(1)
        .layer(upstream);
    let first = runtime(true);
    let (mut a, mut b) = first.block_on(async {
        let mut a = batcher.clone().oneshot(1);
        let mut b = batcher.clone().oneshot(2);
        assert!(poll_once(&mut a).is_none());
        assert!(poll_once(&mut b).is_none());
        settle().await;
        assert_eq!(batcher.in_flight(), 1, "the batch is in flight");
        (a, b)
    });
    drop(first);
    assert_eq!(*calls.lock().expect("lock"), vec![vec![1, 2]]);
    let second = runtime(true);
    second.block_on(async {
        for call in [&mut a, &mut b] {
            let answer = tokio::time::timeout(Duration::from_secs(60), call).await;
            assert!(matches!(answer, Ok(Err(BatchError::Closed))), "{answer:?}");
        }
        assert_eq!((batcher.in_flight(), batcher.pending()), (0, 0));
        gate.add_permits(10);
        assert_eq!(batcher.clone().oneshot(3).await.expect("item"), 30);
    });
}

// ---------------------------------------------------------------------------
// Cancellation
// ---------------------------------------------------------------------------

/// Both callers of a full batch drop their futures between the size flush
/// (in `call`) and the batch task's first poll: nothing is asked for.
#[tokio::test(start_paused = true)]
async fn callers_dropped_at_the_instant_of_a_size_flush_are_not_asked_for() {
    let (calls, upstream) = gated(open());
    let mut batcher = BatchLayer::new(2, Duration::from_secs(1)).layer(upstream);
    let a = batcher.call(1);
    let b = batcher.call(2); // full: the batch is handed to its task here
    assert_eq!(batcher.waiting(), 0, "flushed by size");
    drop((a, b));
    assert_eq!(batcher.pending(), 0, "both gave their place back");
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        calls.lock().expect("lock").is_empty(),
        "asked for {:?} with no caller left",
        calls.lock().expect("lock")
    );
    assert_eq!(batcher.in_flight(), 0);
}

/// One of two callers of the same key leaves at the flush: the key is
/// asked for once and the one left gets it.
#[tokio::test(start_paused = true)]
async fn a_duplicate_caller_leaving_at_the_flush_leaves_the_other_its_item() {
    let (calls, upstream) = gated(open());
    let mut batcher = BatchLayer::new(2, Duration::from_secs(1)).layer(upstream);
    let a = batcher.call(7);
    let a_again = batcher.call(7);
    let b = batcher.call(8); // full
    drop(a);
    assert_eq!(a_again.await.expect("7"), 70);
    assert_eq!(b.await.expect("8"), 80);
    assert_eq!(*calls.lock().expect("lock"), vec![vec![7, 8]]);
}

/// Every caller of a batch in flight leaves: the call goes on (it was
/// sent), its slot comes back when it ends, and the next batch is served.
#[tokio::test(start_paused = true)]
async fn a_batch_whose_callers_all_left_in_flight_frees_its_slot_when_it_ends() {
    let gate = Arc::new(Semaphore::new(0));
    let (calls, upstream) = gated(gate.clone());
    let batcher = BatchLayer::new(1, Duration::ZERO)
        .max_in_flight(1)
        .layer(upstream);
    let gone = tokio::spawn(batcher.clone().oneshot(1));
    settle().await;
    assert_eq!(batcher.in_flight(), 1);
    gone.abort();
    settle().await;
    let next = tokio::spawn(batcher.clone().oneshot(2));
    settle().await;
    assert_eq!(batcher.pending(), 1, "2 waits for the slot");
    gate.add_permits(2);
    assert_eq!(next.await.expect("task").expect("item"), 20);
    assert_eq!(*calls.lock().expect("lock"), vec![vec![1], vec![2]]);
    assert_eq!((batcher.in_flight(), batcher.pending()), (0, 0));
}

/// Callers that call and leave, over and over, while the batch never goes
/// (a linger of an hour, no size bound): what they leave behind stays
/// bounded, and the few who stay are the only keys asked for.
#[tokio::test(start_paused = true)]
async fn a_flood_of_callers_that_leave_keeps_the_gathering_bounded() {
    let (calls, upstream) = gated(open());
    let mut batcher = BatchLayer::new(usize::MAX, Duration::from_secs(3600))
        .max_pending(8)
        .layer(upstream);
    let stay: Vec<_> = (0..4).map(|k| batcher.call(k)).collect();
    let mut most = 0;
    for i in 0..100_000u64 {
        // Distinct keys, and one hot key asked for again and again.
        drop(batcher.call(1_000 + i));
        drop(batcher.call(999));
        most = most.max(batcher.waiting());
        assert!(batcher.pending() <= 8);
    }
    assert!(most <= 64, "up to {most} keys kept for 4 callers");
    assert_eq!(batcher.pending(), 4);
    for (k, call) in stay.into_iter().enumerate() {
        assert_eq!(call.await.expect("item"), k as u64 * 10);
    }
    assert_eq!(*calls.lock().expect("lock"), vec![vec![0, 1, 2, 3]]);
}

/// Every clone of the batcher dropped while callers wait: their batch is
/// still sent and answered.
#[tokio::test(start_paused = true)]
async fn dropping_every_clone_of_the_batcher_still_answers_its_callers() {
    let (calls, upstream) = gated(open());
    let mut batcher = BatchLayer::new(10, Duration::from_millis(5)).layer(upstream);
    let a = batcher.call(1);
    let b = batcher.call(2);
    drop(batcher);
    let answers = tokio::time::timeout(Duration::from_secs(60), async { (a.await, b.await) })
        .await
        .expect("hang");
    assert!(matches!(answers, (Ok(10), Ok(20))), "{answers:?}");
    assert_eq!(*calls.lock().expect("lock"), vec![vec![1, 2]]);
}

/// Batches beyond `max_in_flight` are sent in the order they were made,
/// whether each went by size or by delay.
#[tokio::test(start_paused = true)]
async fn batches_waiting_for_a_slot_go_first_come_first_served() {
    let gate = Arc::new(Semaphore::new(0));
    let (calls, upstream) = gated(gate.clone());
    let batcher = BatchLayer::new(2, Duration::from_millis(5))
        .max_in_flight(1)
        .layer(upstream);
    let mut callers = Vec::new();
    // [1] by delay (in flight), [2, 3] by size, [4] by delay, [5, 6] by size.
    for keys in [&[1][..], &[2, 3], &[4], &[5, 6]] {
        for &k in keys {
            callers.push(tokio::spawn(batcher.clone().oneshot(k)));
        }
        settle().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for _ in 0..4 {
        gate.add_permits(1);
        settle().await;
    }
    for (k, caller) in (1u64..).zip(callers) {
        assert_eq!(caller.await.expect("task").expect("item"), k * 10);
    }
    assert_eq!(
        *calls.lock().expect("lock"),
        vec![vec![1], vec![2, 3], vec![4], vec![5, 6]]
    );
}

/// A batch in flight whose every caller left holds its in-flight slot
/// until the inner call ends: over an upstream that hangs (and without
/// `max_wait`), the slots are gone for good and the next caller waits
/// forever. Documented: the caller's deadline "default: no bound of its
/// own; the inner service bounds its call".
#[tokio::test(start_paused = true)]
#[ignore = "LIMITATION: BatchLayer docs (the caller's deadline row): without max_wait the inner service bounds its call, so a hung batch whose callers all left keeps its in-flight slot"]
async fn a_hung_batch_whose_callers_all_left_gives_its_slot_back() {
    let gate = Arc::new(Semaphore::new(0));
    let (_, upstream) = gated(gate.clone());
    let batcher = BatchLayer::new(1, Duration::ZERO)
        .max_in_flight(1)
        .layer(upstream);
    let gone = tokio::spawn(batcher.clone().oneshot(1));
    settle().await;
    gone.abort();
    settle().await;
    let next = tokio::time::timeout(Duration::from_secs(3600), batcher.clone().oneshot(2)).await;
    assert!(
        next.is_ok(),
        "the next caller waited an hour for a slot nobody needs"
    );
}

// ---------------------------------------------------------------------------
// Numbers
// ---------------------------------------------------------------------------

/// A linger of zero: the batch goes at the next turn, with no time passing,
/// and callers in the same turn share it.
#[tokio::test(start_paused = true)]
async fn a_zero_linger_flushes_without_time_passing() {
    let (calls, upstream) = gated(open());
    let batcher = BatchLayer::new(100, Duration::ZERO).layer(upstream);
    let started = Instant::now();
    let (a, b, c) = tokio::join!(
        batcher.clone().oneshot(1),
        batcher.clone().oneshot(2),
        batcher.clone().oneshot(3)
    );
    assert_eq!((a.expect("1"), b.expect("2"), c.expect("3")), (10, 20, 30));
    assert_eq!(started.elapsed(), Duration::ZERO);
    assert_eq!(*calls.lock().expect("lock"), vec![vec![1, 2, 3]]);
}

/// A linger of fifty years (beyond tokio's timer wheel, some 2.2 years, but
/// not beyond the clock): the batch goes exactly then, not early.
#[tokio::test(start_paused = true)]
async fn a_fifty_year_linger_flushes_exactly_then() {
    let fifty_years = Duration::from_secs(50 * 365 * 24 * 3600);
    let (_, upstream) = gated(open());
    let batcher = BatchLayer::new(100, fifty_years).layer(upstream);
    let started = Instant::now();
    assert_eq!(batcher.oneshot(4).await.expect("item"), 40);
    assert_eq!(started.elapsed(), fifty_years);
}

/// `max_delay(Duration::MAX)`: a batch below `max_batch` is never sent, so
/// a caller without `max_wait` waits forever. Documented: "a duration so
/// long that it overflows the clock means never".
#[tokio::test(start_paused = true)]
#[ignore = "LIMITATION: BatchLayer docs, # Numbers (and the README): a max_delay that overflows the clock means never, so a partial batch without max_wait waits forever"]
async fn a_linger_that_overflows_the_clock_still_answers_a_partial_batch() {
    let (_, upstream) = gated(open());
    let batcher = BatchLayer::new(2, Duration::MAX).layer(upstream);
    let answer = tokio::time::timeout(
        Duration::from_secs(100 * 365 * 24 * 3600),
        batcher.oneshot(4),
    )
    .await;
    assert!(matches!(answer, Ok(Ok(40))), "{answer:?}");
}

/// Every bound at 1 at once: one batch in flight, one caller waiting for
/// the slot, the next refused; a `max_wait` of zero times out at once and
/// is not asked for.
#[tokio::test(start_paused = true)]
async fn every_bound_at_one_and_a_zero_wait() {
    let gate = Arc::new(Semaphore::new(0));
    let (calls, upstream) = gated(gate.clone());
    let batcher = BatchLayer::new(0, Duration::ZERO)
        .max_in_flight(0)
        .max_pending(0)
        .layer(upstream.clone());
    let first = tokio::spawn(batcher.clone().oneshot(1));
    settle().await;
    let second = tokio::spawn(batcher.clone().oneshot(2));
    settle().await;
    let third = batcher.clone().oneshot(3).await;
    assert!(
        matches!(third, Err(BatchError::TooManyPending { max_pending: 1 })),
        "{third:?}"
    );
    gate.add_permits(2);
    assert_eq!(first.await.expect("task").expect("1"), 10);
    assert_eq!(second.await.expect("task").expect("2"), 20);

    let impatient = BatchLayer::new(1, Duration::ZERO)
        .max_wait(Duration::ZERO)
        .layer(upstream);
    let answer = impatient.clone().oneshot(9).await;
    assert!(
        matches!(answer, Err(BatchError::TimedOut { waited }) if waited == Duration::ZERO),
        "{answer:?}"
    );
    settle().await;
    let seen = calls.lock().expect("lock").clone();
    assert_eq!(seen, vec![vec![1], vec![2]], "9 timed out before its call");
    assert_eq!(impatient.pending(), 0);
}

// ---------------------------------------------------------------------------
// Answers
// ---------------------------------------------------------------------------

/// A batch service whose answer is `answer(ids)`.
fn answering<F>(
    answer: F,
) -> impl Service<Vec<u64>, Response = HashMap<u64, u64>, Error = BoxError, Future = impl Send>
       + Clone
       + Send
       + 'static
where
    F: Fn(Vec<u64>) -> Result<HashMap<u64, u64>, BoxError> + Clone + Send + Sync + 'static,
{
    service_fn(move |ids: Vec<u64>| {
        let answer = answer.clone();
        async move { answer(ids) }
    })
}

/// An empty answer is `Missing` for every caller, never a success; keys not
/// asked for in an answer reach no one; each caller gets its own key's
/// value whatever the answer's order.
#[tokio::test(start_paused = true)]
async fn empty_and_foreign_answers_give_each_caller_the_truth() {
    let empty =
        BatchLayer::new(3, Duration::from_millis(1)).layer(answering(|_| Ok(HashMap::new())));
    let (a, b) = tokio::join!(empty.clone().oneshot(1), empty.clone().oneshot(1));
    assert!(matches!(a, Err(BatchError::Missing)), "{a:?}");
    assert!(matches!(b, Err(BatchError::Missing)), "{b:?}");

    // Every id answered with the value of another (the answer is keyed, so
    // order cannot mix them up), plus ids never asked for.
    let shuffled = BatchLayer::new(3, Duration::from_millis(1)).layer(answering(|ids| {
        let mut out: HashMap<u64, u64> = (500..600).map(|k| (k, 0)).collect();
        out.extend(ids.iter().rev().map(|&id| (id, id * 10)));
        Ok(out)
    }));
    let (a, b, c) = tokio::join!(
        shuffled.clone().oneshot(3),
        shuffled.clone().oneshot(1),
        shuffled.clone().oneshot(2)
    );
    assert_eq!((a.expect("3"), b.expect("1"), c.expect("2")), (30, 10, 20));
}

/// An inner service whose `poll_ready` fails: each caller of the batch gets
/// `Failed` with that error, once, and no call is made.
#[tokio::test(start_paused = true)]
async fn a_failed_poll_ready_fails_every_caller_of_the_batch_once() {
    #[derive(Clone)]
    struct NotReady(Arc<Mutex<usize>>);
    impl Service<Vec<u64>> for NotReady {
        type Response = HashMap<u64, u64>;
        type Error = BoxError;
        type Future = std::future::Ready<Result<HashMap<u64, u64>, BoxError>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
            Poll::Ready(Err("inner not ready".into()))
        }
        fn call(&mut self, _: Vec<u64>) -> Self::Future {
            *self.0.lock().expect("lock") += 1;
            std::future::ready(Ok(HashMap::new()))
        }
    }
    let called = Arc::new(Mutex::new(0));
    let batcher = BatchLayer::new(2, Duration::from_millis(1)).layer(NotReady(called.clone()));
    let (a, b) = tokio::time::timeout(Duration::from_secs(60), async {
        tokio::join!(batcher.clone().oneshot(1), batcher.clone().oneshot(2))
    })
    .await
    .expect("hang");
    for answer in [a, b] {
        match answer {
            Err(BatchError::Failed(e)) => assert_eq!(e.to_string(), "inner not ready"),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(*called.lock().expect("lock"), 0);
    assert_eq!((batcher.in_flight(), batcher.pending()), (0, 0));
}

/// A batched call that panics: each of its callers gets one error (not a
/// hang, not a success), the slot comes back, and the batcher goes on.
#[tokio::test(start_paused = true)]
async fn a_panicking_batched_call_fails_its_callers_and_the_batcher_goes_on() {
    let batcher = BatchLayer::new(2, Duration::from_millis(1))
        .max_in_flight(1)
        .layer(answering(|ids| {
            quiet_expected_panics();
            assert!(!ids.contains(&13), "the upstream panics on 13");
            Ok(ids.into_iter().map(|id| (id, id * 10)).collect())
        }));
    let (a, b) = tokio::time::timeout(Duration::from_secs(60), async {
        tokio::join!(batcher.clone().oneshot(13), batcher.clone().oneshot(14))
    })
    .await
    .expect("the callers of a panicked batch hang");
    assert!(matches!(a, Err(BatchError::Closed)), "{a:?}");
    assert!(matches!(b, Err(BatchError::Closed)), "{b:?}");
    assert_eq!((batcher.in_flight(), batcher.pending()), (0, 0));
    // By delay (a timer task) and by size.
    assert_eq!(batcher.clone().oneshot(15).await.expect("15"), 150);
    let (c, d) = tokio::join!(batcher.clone().oneshot(16), batcher.clone().oneshot(17));
    assert_eq!((c.expect("16"), d.expect("17")), (160, 170));
}

/// Keeps the panics these tests cause on purpose out of the output.
fn quiet_expected_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let text = info.to_string();
            if !text.contains("poisoned batch") && !text.contains("the upstream panics on 13") {
                default(info);
            }
        }));
    });
}

// ---------------------------------------------------------------------------
// Model: many threads, callers aborted at random, answers of every shape
// ---------------------------------------------------------------------------

/// What a batch with these ids does: a key `% 11 == 0` fails the whole
/// batch, `% 13 == 0` panics it, `% 7 == 0` is left out of the answer, and
/// every answer carries keys never asked for.
fn verdict(ids: &[u64]) -> Result<HashMap<u64, u64>, BoxError> {
    quiet_expected_panics();
    if ids.iter().any(|k| k % 13 == 0) {
        panic!("poisoned batch {ids:?}");
    }
    if ids.iter().any(|k| k % 11 == 0) {
        return Err(format!("batch {ids:?} refused").into());
    }
    let mut out: HashMap<u64, u64> = (10_000..10_010).map(|k| (k, 1)).collect();
    out.extend(ids.iter().filter(|k| *k % 7 != 0).map(|&k| (k, k * 10)));
    Ok(out)
}

#[derive(Debug, Clone)]
struct Arrival {
    key: u64,
    /// Microseconds before the call.
    at: u64,
    /// Abort the caller this many microseconds after its call.
    abort_after: Option<u64>,
}

fn arrival() -> impl Strategy<Value = Arrival> {
    (
        0u64..40,
        0u64..3_000,
        proptest::option::weighted(0.3, 0u64..3_000),
    )
        .prop_map(|(key, at, abort_after)| Arrival {
            key,
            at,
            abort_after,
        })
}

/// The upstream of the model: records each batch, answers by `verdict`
/// after `latency_us`.
fn model_service(
    sent: Calls,
    latency_us: u64,
) -> impl Service<Vec<u64>, Response = HashMap<u64, u64>, Error = BoxError, Future = impl Send>
       + Clone
       + Send
       + 'static {
    service_fn(move |ids: Vec<u64>| {
        sent.lock().expect("lock").push(ids.clone());
        async move {
            tokio::time::sleep(Duration::from_micros(latency_us)).await;
            verdict(&ids)
        }
    })
}

fn check_model(
    max_batch: usize,
    max_in_flight: usize,
    latency_us: u64,
    arrivals: &[Arrival],
) -> Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let sent: Calls = Arc::default();
    let service = model_service(sent.clone(), latency_us);
    let batcher = BatchLayer::new(max_batch, Duration::from_micros(500))
        .max_in_flight(max_in_flight)
        .layer(service);
    let outcomes = rt.block_on(async {
        let mut tasks = Vec::new();
        for a in arrivals.iter().cloned() {
            let batcher = batcher.clone();
            let task = tokio::spawn(async move {
                tokio::time::sleep(Duration::from_micros(a.at)).await;
                batcher.oneshot(a.key).await
            });
            let abort = a.abort_after.map(|after| {
                let handle = task.abort_handle();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_micros(a.at + after)).await;
                    handle.abort();
                })
            });
            tasks.push((a, task, abort));
        }
        let mut outcomes = Vec::new();
        for (a, task, _abort) in tasks {
            match tokio::time::timeout(Duration::from_secs(10), task).await {
                Err(_) => return Err(format!("caller of {} hung", a.key)),
                Ok(Err(join)) if join.is_cancelled() => {}
                Ok(Err(join)) => return Err(format!("caller of {} panicked: {join}", a.key)),
                Ok(Ok(answer)) => outcomes.push((a.key, answer)),
            }
        }
        // Let the batcher's own tasks end.
        for _ in 0..200 {
            if batcher.in_flight() == 0 && batcher.pending() == 0 && batcher.waiting() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        Ok(outcomes)
    });
    let outcomes = outcomes.map_err(TestCaseError::fail)?;
    let sent = sent.lock().expect("lock").clone();
    for batch in &sent {
        let mut unique = batch.clone();
        unique.sort_unstable();
        unique.dedup();
        prop_assert_eq!(unique.len(), batch.len(), "a key twice in {:?}", batch);
        prop_assert!(!batch.is_empty() && batch.len() <= max_batch, "{:?}", batch);
    }
    let in_a_batch_that = |key: u64, pred: fn(&u64) -> bool| {
        sent.iter().any(|b| b.contains(&key) && b.iter().any(pred))
    };
    for (key, answer) in outcomes {
        match answer {
            Ok(v) => {
                prop_assert_eq!(v, key * 10, "key {} got another's item", key);
                prop_assert!(key % 7 != 0, "{} was never answered", key);
            }
            Err(BatchError::Missing) => prop_assert_eq!(key % 7, 0, "{} was answered", key),
            Err(BatchError::Failed(_)) => prop_assert!(
                in_a_batch_that(key, |k| k % 11 == 0),
                "{} failed outside a refused batch",
                key
            ),
            Err(BatchError::Closed) => prop_assert!(
                in_a_batch_that(key, |k| k % 13 == 0),
                "{} closed outside a panicking batch",
                key
            ),
            Err(other) => prop_assert!(false, "{} got {:?}", key, other),
        }
    }
    prop_assert_eq!(
        (batcher.in_flight(), batcher.pending()),
        (0, 0),
        "left behind"
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Each caller not aborted gets exactly its own item, `Missing` when its
    /// key was left out, or the one error of its batch; none hangs; no
    /// batch asks a key twice or exceeds `max_batch`.
    #[test]
    fn each_caller_gets_its_items_answer_or_one_error_across_threads(
        max_batch in 1usize..6,
        max_in_flight in 1usize..3,
        latency_us in 0u64..1_500,
        arrivals in proptest::collection::vec(arrival(), 1..60),
    ) {
        check_model(max_batch, max_in_flight, latency_us, &arrivals)?;
    }
}
