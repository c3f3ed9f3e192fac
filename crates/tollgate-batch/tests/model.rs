//! A model-based test of the batcher: random sequences of load, drop a
//! caller, advance (paused) time and finish a batched call, checked against
//! a reference model of its promises after every step:
//!
//! - every caller gets exactly one outcome (its own item, or a typed
//!   error), and none is left hanging once the upstream answers;
//! - a key none of whose callers is still there is never asked for;
//! - callers waiting for their batch never exceed `max_pending`, and a call
//!   is refused only when they are at it;
//! - batched calls in flight never exceed `max_in_flight`; no batch is
//!   larger than `max_batch` or asks for a key twice;
//! - a caller never waits past `max_wait`.
//!
//! Callers' futures are polled by hand (no-op waker) after each step; the
//! batcher's own tasks run when the test yields.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use proptest::prelude::*;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tollgate_batch::{Batch, BatchError, BatchLayer};
use tower::{service_fn, BoxError, Layer, ServiceExt};

type Call = Pin<Box<dyn Future<Output = Result<u64, BatchError>> + Send>>;
type Answer = oneshot::Sender<Result<HashMap<u64, u64>, BoxError>>;

/// What the upstream saw and holds.
#[derive(Default)]
struct Upstream {
    /// Live callers per key, as the test knows them (kept by the test).
    live: HashMap<u64, usize>,
    /// Calls in flight: their keys and where to answer.
    in_flight: Vec<(Vec<u64>, Answer)>,
    /// Violations seen inside the upstream (checked by the test).
    errors: Vec<String>,
    /// Batched calls made.
    calls: usize,
}

#[derive(Clone, Debug)]
enum Op {
    Load(u64),
    /// Drops the n-th (modulo) caller still waiting.
    Drop(usize),
    /// Advances paused time by this many milliseconds.
    Advance(u64),
    /// Answers the n-th (modulo) batched call in flight: every key but 5
    /// (missing), or a failure.
    Finish(usize, bool),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (0u64..8).prop_map(Op::Load),
        2 => any::<usize>().prop_map(Op::Drop),
        3 => (0u64..25).prop_map(Op::Advance),
        3 => (any::<usize>(), proptest::bool::weighted(0.8)).prop_map(|(n, ok)| Op::Finish(n, ok)),
    ]
}

struct Caller {
    key: u64,
    call: Option<Call>,
    started: Instant,
}

struct Config {
    max_batch: usize,
    max_delay: Duration,
    max_in_flight: usize,
    max_pending: usize,
    max_wait: Option<Duration>,
}

async fn settle() {
    for _ in 0..8 {
        tokio::task::yield_now().await;
    }
}

fn finish(upstream: &Arc<Mutex<Upstream>>, n: usize, ok: bool) {
    let mut up = upstream.lock().expect("lock");
    if up.in_flight.is_empty() {
        return;
    }
    let i = n % up.in_flight.len();
    let (keys, answer) = up.in_flight.remove(i);
    let result = if ok {
        Ok(keys
            .iter()
            .filter(|k| **k != 5)
            .map(|k| (*k, k * 10))
            .collect())
    } else {
        Err("upstream failed".into())
    };
    let _ = answer.send(result);
}

/// Polls each caller once; checks each outcome; forgets callers that ended.
fn poll_all(
    callers: &mut [Caller],
    upstream: &Arc<Mutex<Upstream>>,
    max_wait: Option<Duration>,
) -> Result<(), TestCaseError> {
    let mut cx = Context::from_waker(Waker::noop());
    for (id, caller) in callers.iter_mut().enumerate() {
        let Some(call) = caller.call.as_mut() else {
            continue;
        };
        let Poll::Ready(outcome) = call.as_mut().poll(&mut cx) else {
            if let Some(wait) = max_wait {
                prop_assert!(
                    caller.started.elapsed() < wait,
                    "caller {id} waits past max_wait"
                );
            }
            continue;
        };
        caller.call = None;
        upstream
            .lock()
            .expect("lock")
            .live
            .entry(caller.key)
            .and_modify(|n| *n -= 1);
        match outcome {
            Ok(item) => prop_assert_eq!(item, caller.key * 10, "caller {} got another's item", id),
            Err(BatchError::Missing) => prop_assert_eq!(caller.key, 5),
            Err(BatchError::Failed(e)) => prop_assert_eq!(e.to_string(), "upstream failed"),
            Err(BatchError::TimedOut { waited }) => {
                let wait = max_wait.expect("timed out without max_wait");
                prop_assert!(waited >= wait, "timed out early: {waited:?} < {wait:?}");
            }
            Err(other) => prop_assert!(false, "caller {id}: unexpected {other:?}"),
        }
    }
    Ok(())
}

fn check(config: &Config, ops: &[Op]) -> Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("runtime");
    rt.block_on(async {
        let upstream: Arc<Mutex<Upstream>> = Arc::default();
        let up = upstream.clone();
        let (max_batch, max_in_flight) = (config.max_batch, config.max_in_flight);
        let service = service_fn(move |keys: Vec<u64>| {
            let (tx, rx) = oneshot::channel();
            let mut state = up.lock().expect("lock");
            state.calls += 1;
            let mut unique = keys.clone();
            unique.sort_unstable();
            unique.dedup();
            if unique.len() != keys.len() || keys.len() > max_batch || keys.is_empty() {
                state.errors.push(format!("bad batch {keys:?}"));
            }
            for key in &keys {
                if state.live.get(key).copied().unwrap_or(0) == 0 {
                    state
                        .errors
                        .push(format!("{key} asked for with no caller left"));
                }
            }
            state.in_flight.push((keys, tx));
            let n = state.in_flight.len();
            if n > max_in_flight {
                state.errors.push(format!("{n} batches in flight"));
            }
            async move { rx.await.map_err(BoxError::from)? }
        });
        let mut layer = BatchLayer::new(config.max_batch, config.max_delay)
            .max_in_flight(config.max_in_flight)
            .max_pending(config.max_pending);
        if let Some(wait) = config.max_wait {
            layer = layer.max_wait(wait);
        }
        let batcher: Batch<_, u64, u64> = layer.layer(service);
        let mut callers: Vec<Caller> = Vec::new();

        for op in ops {
            match op {
                Op::Load(key) => {
                    let before = batcher.pending();
                    let mut call: Call = Box::pin(batcher.clone().oneshot(*key));
                    let mut cx = Context::from_waker(Waker::noop());
                    upstream
                        .lock()
                        .expect("lock")
                        .live
                        .entry(*key)
                        .and_modify(|n| *n += 1)
                        .or_insert(1);
                    match call.as_mut().poll(&mut cx) {
                        Poll::Ready(Err(BatchError::TooManyPending { max_pending })) => {
                            prop_assert_eq!(max_pending, config.max_pending);
                            prop_assert_eq!(before, config.max_pending, "refused below the limit");
                            upstream
                                .lock()
                                .expect("lock")
                                .live
                                .entry(*key)
                                .and_modify(|n| *n -= 1);
                        }
                        Poll::Ready(other) => {
                            // Answered at its first poll: only a zero wait.
                            prop_assert!(
                                matches!(other, Err(BatchError::TimedOut { .. })),
                                "{other:?} at the first poll"
                            );
                            upstream
                                .lock()
                                .expect("lock")
                                .live
                                .entry(*key)
                                .and_modify(|n| *n -= 1);
                        }
                        Poll::Pending => {
                            prop_assert!(before < config.max_pending, "accepted at the limit");
                            callers.push(Caller {
                                key: *key,
                                call: Some(call),
                                started: Instant::now(),
                            });
                        }
                    }
                }
                Op::Drop(n) => {
                    let waiting: Vec<usize> = (0..callers.len())
                        .filter(|i| callers[*i].call.is_some())
                        .collect();
                    if let Some(&id) = waiting.get(n % waiting.len().max(1)) {
                        callers[id].call = None;
                        let key = callers[id].key;
                        upstream
                            .lock()
                            .expect("lock")
                            .live
                            .entry(key)
                            .and_modify(|n| *n -= 1);
                    }
                }
                Op::Advance(ms) => tokio::time::advance(Duration::from_millis(*ms)).await,
                Op::Finish(n, ok) => finish(&upstream, *n, *ok),
            }
            settle().await;
            poll_all(&mut callers, &upstream, config.max_wait)?;
            let waiting = callers.iter().filter(|c| c.call.is_some()).count();
            prop_assert!(
                batcher.pending() <= config.max_pending,
                "pending {}",
                batcher.pending()
            );
            prop_assert!(
                batcher.pending() <= waiting,
                "pending {} > callers {waiting}",
                batcher.pending()
            );
            prop_assert!(batcher.in_flight() <= config.max_in_flight);
            let errors = std::mem::take(&mut upstream.lock().expect("lock").errors);
            prop_assert!(errors.is_empty(), "after {:?}: {:?}", op, errors);
        }

        // Drain: answer everything, let every timer fire; no caller hangs.
        for _ in 0..200 {
            if callers.iter().all(|c| c.call.is_none()) {
                break;
            }
            while !upstream.lock().expect("lock").in_flight.is_empty() {
                finish(&upstream, 0, true);
                settle().await;
            }
            tokio::time::advance(config.max_delay + Duration::from_millis(1)).await;
            settle().await;
            poll_all(&mut callers, &upstream, config.max_wait)?;
            let errors = std::mem::take(&mut upstream.lock().expect("lock").errors);
            prop_assert!(errors.is_empty(), "draining: {:?}", errors);
        }
        let hanging: Vec<u64> = callers
            .iter()
            .filter(|c| c.call.is_some())
            .map(|c| c.key)
            .collect();
        prop_assert!(
            hanging.is_empty(),
            "callers left without an outcome: {hanging:?}"
        );
        prop_assert_eq!(batcher.pending(), 0);
        // A batch whose callers left once it was sent still ends.
        while !upstream.lock().expect("lock").in_flight.is_empty() {
            finish(&upstream, 0, true);
            settle().await;
        }
        prop_assert_eq!(batcher.in_flight(), 0);
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn the_batcher_matches_its_model(
        max_batch in 1usize..5,
        max_delay in 0u64..20,
        max_in_flight in 1usize..4,
        max_pending in 1usize..8,
        max_wait in proptest::option::of(0u64..80),
        ops in proptest::collection::vec(op(), 1..80),
    ) {
        let config = Config {
            max_batch,
            max_delay: Duration::from_millis(max_delay),
            max_in_flight,
            max_pending,
            max_wait: max_wait.map(Duration::from_millis),
        };
        check(&config, &ops)?;
    }
}
