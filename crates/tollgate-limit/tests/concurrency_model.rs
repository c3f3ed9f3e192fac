//! A model-based test of the concurrency pool: random sequences of acquire,
//! drop a waiter, drop a holder and advance (paused) time, each compared
//! with a small reference model of the pool's promises: in flight never
//! above the limit, the queue never above `max_pending`, slots granted in
//! FIFO order, a dropped waiter frees its place, `pending_timeout` honoured
//! to the instant.
//!
//! Each call's future is polled by hand (with a no-op waker) right after
//! each step, so the test sees every grant and every timeout as soon as the
//! pool makes it.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use http::{Request, Response};
use proptest::prelude::*;
use tokio::time::Instant;
use tollgate_limit::{ConcurrencyLimitLayer, PermitBody, PoolQueueFull, PoolQueueTimeout};
use tower::{service_fn, BoxError, Layer, Service, ServiceExt};

type Call = Pin<Box<dyn Future<Output = Result<Response<PermitBody<()>>, BoxError>> + Send>>;

/// One caller, as the test sees it.
enum Real {
    /// Waiting for a slot: its future, polled after every step.
    Waiting(Call),
    /// Holds a slot: the response (its body holds the permit).
    Holding { _response: Response<PermitBody<()>> },
    /// Left: refused, timed out or dropped.
    Gone,
}

/// One caller, as the model says it should be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expected {
    Waiting,
    Holding,
    Refused,
    TimedOut,
    Dropped,
}

#[derive(Clone, Debug)]
enum Op {
    Acquire,
    /// Drops the n-th (modulo) caller still waiting.
    DropWaiter(usize),
    /// Drops the n-th (modulo) caller holding a slot.
    DropHolder(usize),
    /// Advances paused time by this many milliseconds.
    Advance(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => Just(Op::Acquire),
        2 => any::<usize>().prop_map(Op::DropWaiter),
        3 => any::<usize>().prop_map(Op::DropHolder),
        2 => (0u64..40).prop_map(Op::Advance),
    ]
}

/// The reference model: a count of holders and a FIFO queue of waiters
/// with their deadlines.
struct Model {
    limit: usize,
    max_pending: Option<usize>,
    pending_timeout: Option<Duration>,
    holders: usize,
    queue: VecDeque<(usize, Option<Instant>)>,
    callers: Vec<Expected>,
    /// The order in which the model granted slots.
    grants: Vec<usize>,
}

impl Model {
    fn acquire(&mut self, id: usize, now: Instant) {
        if self.holders < self.limit && self.queue.is_empty() {
            self.holders += 1;
            self.grants.push(id);
            self.callers.push(Expected::Holding);
        } else if self.max_pending.is_some_and(|max| self.queue.len() >= max) {
            self.callers.push(Expected::Refused);
        } else {
            let deadline = self.pending_timeout.map(|t| now + t);
            self.queue.push_back((id, deadline));
            self.callers.push(Expected::Waiting);
        }
    }

    fn grant(&mut self) {
        while self.holders < self.limit {
            let Some((id, _)) = self.queue.pop_front() else {
                break;
            };
            self.holders += 1;
            self.grants.push(id);
            self.callers[id] = Expected::Holding;
        }
    }

    fn drop_waiter(&mut self, id: usize) {
        self.queue.retain(|(w, _)| *w != id);
        self.callers[id] = Expected::Dropped;
    }

    fn drop_holder(&mut self, id: usize) {
        self.holders -= 1;
        self.callers[id] = Expected::Dropped;
        self.grant();
    }

    fn advance(&mut self, now: Instant) {
        let callers = &mut self.callers;
        self.queue.retain(|(id, deadline)| {
            let expired = deadline.is_some_and(|d| d <= now);
            if expired {
                callers[*id] = Expected::TimedOut;
            }
            !expired
        });
    }
}

/// Polls every waiting caller once; records grants in the order seen.
fn poll_all(real: &mut [Real], grants: &mut Vec<usize>, timeouts: &mut Vec<(usize, Duration)>) {
    let mut cx = Context::from_waker(Waker::noop());
    for (id, caller) in real.iter_mut().enumerate() {
        let Real::Waiting(call) = caller else {
            continue;
        };
        match call.as_mut().poll(&mut cx) {
            Poll::Pending => {}
            Poll::Ready(Ok(response)) => {
                grants.push(id);
                *caller = Real::Holding {
                    _response: response,
                };
            }
            Poll::Ready(Err(e)) => {
                if let Some(t) = e.downcast_ref::<PoolQueueTimeout>() {
                    timeouts.push((id, t.waited));
                } else if e.is::<PoolQueueFull>() {
                    timeouts.push((id, Duration::MAX));
                } else {
                    panic!("caller {id}: unexpected error {e}");
                }
                *caller = Real::Gone;
            }
        }
    }
}

fn check(
    limit: usize,
    max_pending: Option<usize>,
    pending_timeout: Option<Duration>,
    ops: &[Op],
) -> Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut layer = ConcurrencyLimitLayer::new(limit);
        if let Some(max) = max_pending {
            layer = layer.max_queue(max);
        }
        if let Some(t) = pending_timeout {
            layer = layer.queue_timeout(t);
        }
        let upstream = service_fn(|_req: Request<()>| async {
            Ok::<_, std::convert::Infallible>(Response::new(()))
        });
        let service = layer.layer(upstream);
        let mut model = Model {
            limit,
            max_pending,
            pending_timeout,
            holders: 0,
            queue: VecDeque::new(),
            callers: Vec::new(),
            grants: Vec::new(),
        };
        let mut real: Vec<Real> = Vec::new();
        let mut grants = Vec::new();
        let mut ended: Vec<(usize, Duration)> = Vec::new();
        for op in ops {
            match op {
                Op::Acquire => {
                    let id = real.len();
                    model.acquire(id, Instant::now());
                    let call: Call = Box::pin(service.clone().oneshot(Request::new(())));
                    real.push(Real::Waiting(call));
                }
                Op::DropWaiter(n) => {
                    let waiting: Vec<usize> = (0..real.len())
                        .filter(|i| matches!(real[*i], Real::Waiting(_)))
                        .collect();
                    if waiting.is_empty() {
                        continue;
                    }
                    let id = waiting[n % waiting.len()];
                    real[id] = Real::Gone;
                    model.drop_waiter(id);
                }
                Op::DropHolder(n) => {
                    let holding: Vec<usize> = (0..real.len())
                        .filter(|i| matches!(real[*i], Real::Holding { .. }))
                        .collect();
                    if holding.is_empty() {
                        continue;
                    }
                    let id = holding[n % holding.len()];
                    real[id] = Real::Gone;
                    model.drop_holder(id);
                }
                Op::Advance(ms) => {
                    tokio::time::advance(Duration::from_millis(*ms)).await;
                }
            }
            // A waiter whose deadline has come is out, whatever the step
            // (a zero pending_timeout times out at the first poll).
            model.advance(Instant::now());
            poll_all(&mut real, &mut grants, &mut ended);

            // The bounds.
            let in_flight = limit - layer.available();
            prop_assert!(in_flight <= limit, "in flight {in_flight} > {limit}");
            prop_assert_eq!(in_flight, model.holders, "in flight, after {:?}", op);
            if let Some(max) = max_pending {
                prop_assert!(
                    layer.waiting() <= max,
                    "pending {} > {max}",
                    layer.waiting()
                );
            }
            prop_assert_eq!(
                layer.waiting(),
                model.queue.len(),
                "pending, after {:?}",
                op
            );
            // FIFO: the pool granted slots in the model's order.
            prop_assert_eq!(&grants, &model.grants, "grant order, after {:?}", op);
            // Each caller is where the model says.
            for (id, caller) in real.iter().enumerate() {
                let expected = model.callers[id];
                let ok = match caller {
                    Real::Waiting(_) => expected == Expected::Waiting,
                    Real::Holding { .. } => expected == Expected::Holding,
                    Real::Gone => matches!(
                        expected,
                        Expected::Refused | Expected::TimedOut | Expected::Dropped
                    ),
                };
                prop_assert!(ok, "caller {id}: model {expected:?}, after {op:?}");
            }
        }
        // Refusals and timeouts: the right ones, and each waited its due.
        for (id, waited) in &ended {
            match model.callers[*id] {
                Expected::Refused => prop_assert_eq!(*waited, Duration::MAX),
                Expected::TimedOut => {
                    let t = pending_timeout.expect("a timeout implies pending_timeout");
                    prop_assert!(*waited >= t, "caller {id} waited {waited:?} < {t:?}");
                }
                other => prop_assert!(false, "caller {id} ended, model says {other:?}"),
            }
        }
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn the_pool_matches_its_model(
        limit in 1usize..4,
        max_pending in proptest::option::of(0usize..5),
        pending_timeout in proptest::option::of(0u64..60),
        ops in proptest::collection::vec(op(), 1..80),
    ) {
        check(limit, max_pending, pending_timeout.map(Duration::from_millis), &ops)?;
    }
}

/// A queued call that has not been polled yet is still in the pool's
/// queue (it counts in `pending()`), so a newer call must not take the slot
/// that frees meanwhile.
#[tokio::test(start_paused = true)]
async fn a_queued_call_not_yet_polled_is_not_overtaken() {
    let layer = ConcurrencyLimitLayer::new(1);
    let upstream = service_fn(|req: Request<u32>| async move {
        Ok::<_, std::convert::Infallible>(Response::new(*req.body()))
    });
    let mut service = layer.layer(upstream);
    let holder = service
        .ready()
        .await
        .expect("ready")
        .call(Request::new(1))
        .await;
    let holder = holder.expect("slot");
    // Queued behind the holder: counted as pending, not yet polled.
    let older = service.ready().await.expect("ready").call(Request::new(2));
    assert_eq!(layer.waiting(), 1);
    drop(holder);
    let newer = service.ready().await.expect("ready").call(Request::new(3));
    let mut cx = Context::from_waker(Waker::noop());
    let mut newer = Box::pin(newer);
    // Kept: a response holds its slot until dropped.
    let newer = newer.as_mut().poll(&mut cx);
    let overtook = matches!(newer, Poll::Ready(Ok(_)));
    let mut older = Box::pin(older);
    let older = older.as_mut().poll(&mut cx);
    let older_got_it = matches!(older, Poll::Ready(Ok(_)));
    assert!(
        older_got_it && !overtook,
        "the newer call overtook the queued one (older granted: {older_got_it}, newer granted: {overtook})"
    );
}
