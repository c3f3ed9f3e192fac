//! Adversarial tests of the rate limiter over a store that answers later
//! (slow, failing, hanging, eager, panicking, naming odd times): bounded
//! waits, one outcome per call, FIFO, cancel-safety and learned pauses on
//! the slow path, on paused tokio time (the multi-thread race uses a quota
//! whose period no test outlives instead).

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use tokio::time::Instant;
use tollgate_limit::{
    MemoryStore, QueueFull, Quota, RateLimitLayer, RateLimitStore, RateLimited, StoreError,
    StoreFuture, UnixNanos, WaitTooLong,
};
use tower::{service_fn, BoxError, Layer, Service, ServiceBuilder, ServiceExt};

type CheckFn = dyn Fn(&Arc<MemoryStore>, &str, UnixNanos, usize) -> StoreFuture<Result<(), UnixNanos>>
    + Send
    + Sync;
type EstimateFn = dyn Fn(&MemoryStore, &str, UnixNanos, u64) -> Option<UnixNanos> + Send + Sync;
type PauseFn =
    dyn Fn(&Arc<MemoryStore>, &str, UnixNanos, UnixNanos) -> StoreFuture<()> + Send + Sync;

/// A store whose every answer a test scripts, over a `MemoryStore`; counts
/// the checks it was asked (the count is the last argument of `check`), and
/// after `GIVE_UP` checks fails them all, so that a layer that spins on it
/// ends instead of hanging the test.
struct Scripted {
    memory: Arc<MemoryStore>,
    asked: Arc<AtomicUsize>,
    check: Box<CheckFn>,
    estimate: Box<EstimateFn>,
    pause: Box<PauseFn>,
}

const GIVE_UP: usize = 10_000;

impl Scripted {
    fn new(quota: &Quota) -> Scripted {
        Scripted {
            memory: Arc::new(MemoryStore::new(quota, 1_000)),
            asked: Arc::default(),
            check: Box::new(|m, key, now, _| later_check(m, key, now, Duration::ZERO)),
            estimate: Box::new(|_, _, _, _| None),
            pause: Box::new(|m, key, now, until| {
                m.pause_sync(key, now, until);
                StoreFuture::ready(())
            }),
        }
    }

    fn check(
        mut self,
        f: impl Fn(&Arc<MemoryStore>, &str, UnixNanos, usize) -> StoreFuture<Result<(), UnixNanos>>
            + Send
            + Sync
            + 'static,
    ) -> Self {
        self.check = Box::new(f);
        self
    }

    fn estimate(
        mut self,
        f: impl Fn(&MemoryStore, &str, UnixNanos, u64) -> Option<UnixNanos> + Send + Sync + 'static,
    ) -> Self {
        self.estimate = Box::new(f);
        self
    }

    fn pause(
        mut self,
        f: impl Fn(&Arc<MemoryStore>, &str, UnixNanos, UnixNanos) -> StoreFuture<()>
            + Send
            + Sync
            + 'static,
    ) -> Self {
        self.pause = Box::new(f);
        self
    }
}

impl RateLimitStore for Scripted {
    fn check(&self, key: &str, now: UnixNanos) -> StoreFuture<Result<(), UnixNanos>> {
        let n = self.asked.fetch_add(1, Ordering::SeqCst);
        if n >= GIVE_UP {
            return StoreFuture::failed(StoreError::new("the layer spun on the store"));
        }
        (self.check)(&self.memory, key, now, n)
    }

    fn estimate(&self, key: &str, now: UnixNanos, ahead: u64) -> Option<UnixNanos> {
        (self.estimate)(&self.memory, key, now, ahead)
    }

    fn pause(&self, key: &str, now: UnixNanos, until: UnixNanos) -> StoreFuture<()> {
        (self.pause)(&self.memory, key, now, until)
    }
}

/// The memory store's decision, answered after `delay` (a yield when zero):
/// a lazy remote round trip.
fn later_check(
    m: &Arc<MemoryStore>,
    key: &str,
    now: UnixNanos,
    delay: Duration,
) -> StoreFuture<Result<(), UnixNanos>> {
    let (m, key) = (Arc::clone(m), key.to_owned());
    StoreFuture::later(async move {
        if delay.is_zero() {
            tokio::task::yield_now().await;
        } else {
            tokio::time::sleep(delay).await;
        }
        Ok(m.check_sync(&key, now))
    })
}

type Log = Arc<Mutex<Vec<Instant>>>;

/// Records when each call reached it; answers 429 with `Retry-After: 3` to
/// the first call when `first_429`.
fn upstream(
    log: Log,
    first_429: bool,
) -> impl Service<
    Request<()>,
    Response = Response<()>,
    Error = std::convert::Infallible,
    Future = impl Send,
> + Clone
       + Send {
    service_fn(move |_req: Request<()>| {
        let n = {
            let mut log = log.lock().expect("lock");
            log.push(Instant::now());
            log.len()
        };
        async move {
            let mut res = Response::new(());
            if first_429 && n == 1 {
                *res.status_mut() = StatusCode::TOO_MANY_REQUESTS;
                res.headers_mut()
                    .insert("retry-after", http::HeaderValue::from_static("3"));
            }
            Ok(res)
        }
    })
}

fn get() -> Request<()> {
    Request::get("http://api.test/x").body(()).expect("request")
}

fn window(count: u32, period: Duration) -> Quota {
    Quota::window(count, period).expect("valid")
}

/// Runs one call to its end, bounded by `bound` of (paused) time so that a
/// hang fails the test instead of stopping it.
async fn run_bounded<S>(
    svc: S,
    req: Request<()>,
    bound: Duration,
) -> Option<Result<Response<()>, BoxError>>
where
    S: Service<Request<()>, Response = Response<()>, Error = BoxError>,
{
    tokio::time::timeout(bound, svc.oneshot(req)).await.ok()
}

// ---------------------------------------------------------------- bounds

#[tokio::test(start_paused = true)]
async fn a_store_that_never_answers_is_cut_off_at_max_wait() {
    let quota = window(10, Duration::from_secs(1));
    let store =
        Scripted::new(&quota).check(|_, _, _, _| StoreFuture::later(std::future::pending()));
    let log = Log::default();
    // No store timeout: the caller's own bound must still hold.
    let svc = RateLimitLayer::new(quota)
        .store(Arc::new(store))
        .store_timeout(Duration::MAX)
        .max_wait(Duration::from_secs(1))
        .layer(upstream(Arc::clone(&log), false));
    let start = Instant::now();
    let outcome = run_bounded(svc, get(), Duration::from_secs(60)).await;
    let took = Instant::now() - start;
    let Some(outcome) = outcome else {
        panic!("the call was still waiting after {took:?} with max_wait 1 s");
    };
    let err = outcome.expect_err("no permit was ever granted");
    assert!(err.downcast_ref::<WaitTooLong>().is_some(), "{err}");
    assert!(took <= Duration::from_millis(1_010), "ended after {took:?}");
    assert!(log.lock().expect("lock").is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_store_that_never_answers_is_cut_off_at_the_deadline() {
    let quota = window(10, Duration::from_secs(1));
    let store =
        Scripted::new(&quota).check(|_, _, _, _| StoreFuture::later(std::future::pending()));
    let svc = RateLimitLayer::new(quota)
        .store(Arc::new(store))
        .layer(upstream(Log::default(), false));
    let mut req = get();
    req.extensions_mut().insert(tollgate_core::Deadline(
        Instant::now() + Duration::from_secs(2),
    ));
    let start = Instant::now();
    let outcome = run_bounded(svc, req, Duration::from_secs(60)).await;
    let took = Instant::now() - start;
    assert!(
        outcome.is_some(),
        "the call was still waiting after {took:?} with a deadline 2 s away"
    );
    assert!(took <= Duration::from_millis(2_010), "ended after {took:?}");
}

#[tokio::test(start_paused = true)]
async fn a_yes_that_comes_after_max_wait_does_not_make_the_caller_wait_longer() {
    let quota = window(10, Duration::from_secs(1));
    let store = Scripted::new(&quota)
        .check(|m, key, now, _| later_check(m, key, now, Duration::from_secs(5)));
    let log = Log::default();
    let svc = RateLimitLayer::new(quota)
        .store(Arc::new(store))
        .max_wait(Duration::from_secs(1))
        .layer(upstream(Arc::clone(&log), false));
    let start = Instant::now();
    let outcome = run_bounded(svc, get(), Duration::from_secs(60))
        .await
        .expect("ended");
    let took = Instant::now() - start;
    assert!(
        took <= Duration::from_millis(1_010),
        "the caller waited {took:?} under max_wait 1 s (outcome: {:?})",
        outcome.as_ref().map(|r| r.status())
    );
}

#[tokio::test(start_paused = true)]
async fn a_refusal_naming_the_past_neither_spins_nor_outlives_max_wait() {
    let quota = window(10, Duration::from_secs(1));
    // A store (with its own, slow clock, say) whose every refusal names a
    // time long gone.
    let store = Scripted::new(&quota).check(|_, _, _, _| StoreFuture::ready(Err(0)));
    let asked = Arc::clone(&store.asked);
    let svc = RateLimitLayer::new(quota)
        .store(Arc::new(store))
        .max_wait(Duration::from_secs(1))
        .layer(upstream(Log::default(), false));
    let start = Instant::now();
    let outcome = run_bounded(svc, get(), Duration::from_secs(60))
        .await
        .expect("ended");
    let took = Instant::now() - start;
    let asked = asked.load(Ordering::SeqCst);
    let err = outcome.expect_err("never a permit");
    assert!(
        err.downcast_ref::<WaitTooLong>().is_some(),
        "wanted WaitTooLong at max_wait, got {err} after {asked} checks in {took:?}"
    );
    assert!(took <= Duration::from_millis(1_010), "{took:?}");
    assert!(
        asked <= 1_100,
        "the store was asked {asked} times in {took:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_later_refusal_naming_now_does_not_spin_the_head() {
    let quota = window(10, Duration::from_secs(1));
    let store = Scripted::new(&quota).check(|_, _, now, _| {
        StoreFuture::later(async move {
            tokio::task::yield_now().await;
            Ok(Err(now))
        })
    });
    let asked = Arc::clone(&store.asked);
    let svc = RateLimitLayer::new(quota)
        .store(Arc::new(store))
        .max_wait(Duration::from_secs(1))
        .layer(upstream(Log::default(), false));
    let outcome = run_bounded(svc, get(), Duration::from_secs(60))
        .await
        .expect("ended");
    let asked = asked.load(Ordering::SeqCst);
    let err = outcome.expect_err("never a permit");
    assert!(
        err.downcast_ref::<WaitTooLong>().is_some(),
        "wanted WaitTooLong at max_wait, got {err} after {asked} checks"
    );
    assert!(asked <= 1_100, "the store was asked {asked} times");
}

#[tokio::test(start_paused = true)]
async fn a_refusal_at_the_end_of_time_is_refused_at_once_under_max_wait() {
    let quota = window(10, Duration::from_secs(1));
    let store = Scripted::new(&quota).check(|_, _, _, _| {
        StoreFuture::later(async {
            tokio::task::yield_now().await;
            Ok(Err(u64::MAX))
        })
    });
    let svc = RateLimitLayer::new(quota)
        .store(Arc::new(store))
        .max_wait(Duration::from_secs(1))
        .layer(upstream(Log::default(), false));
    let start = Instant::now();
    let err = run_bounded(svc, get(), Duration::from_secs(60))
        .await
        .expect("ended")
        .expect_err("refused");
    assert!(err.downcast_ref::<WaitTooLong>().is_some(), "{err}");
    assert!(Instant::now() - start < Duration::from_millis(10));
}

#[tokio::test(start_paused = true)]
async fn a_caller_behind_a_hanging_head_is_refused_at_its_max_wait() {
    let quota = window(10, Duration::from_secs(1));
    let store =
        Scripted::new(&quota).check(|_, _, _, _| StoreFuture::later(std::future::pending()));
    let svc = RateLimitLayer::new(quota)
        .store(Arc::new(store))
        .store_timeout(Duration::MAX)
        .max_wait(Duration::from_secs(1))
        .layer(upstream(Log::default(), false));
    let head = tokio::spawn(svc.clone().oneshot(get()));
    tokio::task::yield_now().await;
    let start = Instant::now();
    let err = run_bounded(svc, get(), Duration::from_secs(60))
        .await
        .expect("the second caller ended")
        .expect_err("refused");
    assert!(err.downcast_ref::<WaitTooLong>().is_some(), "{err}");
    assert!(Instant::now() - start <= Duration::from_millis(1_010));
    head.abort();
}

// ------------------------------------------------------------ refusals

#[tokio::test(start_paused = true)]
async fn reject_mode_over_a_later_store_refuses_with_rate_limited() {
    let quota = window(1, Duration::from_secs(60));
    let svc = RateLimitLayer::new(quota)
        .store(Arc::new(Scripted::new(&quota)))
        .reject()
        .layer(upstream(Log::default(), false));
    svc.clone()
        .oneshot(get())
        .await
        .expect("the first is served");
    let err = svc
        .clone()
        .oneshot(get())
        .await
        .expect_err("over the limit");
    let limited = err
        .downcast_ref::<RateLimited>()
        .unwrap_or_else(|| panic!("reject mode must say RateLimited, got: {err}"));
    assert!(limited.retry_after > Duration::from_secs(59));
}

#[tokio::test(start_paused = true)]
async fn reject_mode_over_a_later_store_serves_concurrent_callers_with_free_permits() {
    let quota = window(100, Duration::from_secs(1));
    let log = Log::default();
    let svc = RateLimitLayer::new(quota)
        .store(Arc::new(Scripted::new(&quota).estimate(
            |m, key, now, ahead| Some(m.estimate_sync(key, now, ahead)),
        )))
        .reject()
        .layer(upstream(Arc::clone(&log), false));
    let tasks: Vec<_> = (0..10)
        .map(|_| tokio::spawn(svc.clone().oneshot(get())))
        .collect();
    let mut refused = Vec::new();
    for t in tasks {
        if let Err(e) = t.await.expect("task") {
            refused.push(e.to_string());
        }
    }
    assert!(
        refused.is_empty(),
        "{} of 10 refused with 100 permits free: {:?}",
        refused.len(),
        refused.first()
    );
}

#[tokio::test(start_paused = true)]
async fn max_queue_zero_over_a_later_store_serves_a_caller_with_a_free_permit() {
    let quota = window(100, Duration::from_secs(1));
    let svc = RateLimitLayer::new(quota)
        .store(Arc::new(Scripted::new(&quota)))
        .max_queue(0)
        .layer(upstream(Log::default(), false));
    let outcome = svc.oneshot(get()).await;
    if let Err(e) = &outcome {
        assert!(
            e.downcast_ref::<QueueFull>().is_none(),
            "QueueFull for a lone caller with 100 permits free"
        );
    }
    outcome.expect("served");
}

/// A store that starts its round trip when asked (the request is on the
/// wire before the future is polled; the future only carries the answer
/// back), as one that spawns its command or sends it to a connection task
/// does.
fn eager_check(
    m: &Arc<MemoryStore>,
    key: &str,
    now: UnixNanos,
) -> StoreFuture<Result<(), UnixNanos>> {
    let answer = m.check_sync(key, now);
    StoreFuture::later(async move {
        tokio::task::yield_now().await;
        Ok(answer)
    })
}

#[tokio::test(start_paused = true)]
async fn an_eager_store_is_charged_one_permit_per_unkeyed_call() {
    let quota = window(2, Duration::from_secs(60));
    let log = Log::default();
    let svc = RateLimitLayer::new(quota)
        .store(Arc::new(
            Scripted::new(&quota).check(|m, key, now, _| eager_check(m, key, now)),
        ))
        .max_wait(Duration::from_secs(1))
        .layer(upstream(Arc::clone(&log), false));
    svc.clone().oneshot(get()).await.expect("first");
    let second = svc.clone().oneshot(get()).await;
    assert!(
        second.is_ok(),
        "the second of a quota of 2 was refused: {:?} ({} upstream call(s))",
        second.err().map(|e| e.to_string()),
        log.lock().expect("lock").len()
    );
}

// ------------------------------------------------------------ pauses

#[tokio::test(start_paused = true)]
async fn a_429_holds_back_the_next_call_while_the_pause_is_being_stored() {
    let quota = Quota::per_second(100).expect("valid");
    let store = Scripted::new(&quota).pause(|m, key, now, until| {
        let (m, key) = (Arc::clone(m), key.to_owned());
        StoreFuture::later(async move {
            tokio::time::sleep(Duration::from_millis(5)).await;
            m.pause_sync(&key, now, until);
            Ok(())
        })
    });
    let log = Log::default();
    let svc = RateLimitLayer::new(quota)
        .store(Arc::new(store))
        .layer(upstream(Arc::clone(&log), true));
    let first = svc.clone().oneshot(get()).await.expect("answered");
    assert_eq!(first.status(), StatusCode::TOO_MANY_REQUESTS);
    let start = Instant::now();
    svc.clone().oneshot(get()).await.expect("served");
    let waited = Instant::now() - start;
    assert!(
        waited >= Duration::from_millis(2_900),
        "the call after a 429 (Retry-After: 3) went out after {waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_429_holds_back_a_caller_already_waiting_on_a_later_store() {
    let quota = window(1, Duration::from_secs(1));
    let log = Log::default();
    let svc = RateLimitLayer::new(quota)
        .store(Arc::new(Scripted::new(&quota)))
        .layer(upstream(Arc::clone(&log), true));
    let first = svc.clone().oneshot(get()).await.expect("answered");
    assert_eq!(first.status(), StatusCode::TOO_MANY_REQUESTS);
    // Already waiting for the next window when the pause (written at once
    // by this store) lands.
    let second = tokio::spawn(svc.clone().oneshot(get()));
    second.await.expect("task").expect("served");
    let log = log.lock().expect("lock");
    assert!(log[1] - log[0] >= Duration::from_secs(3), "{log:?}");
}

// ----------------------------------------------------- panics, cancels

struct PanicOnce {
    memory: MemoryStore,
    panicked: AtomicBool,
}

impl RateLimitStore for PanicOnce {
    fn check(&self, key: &str, now: UnixNanos) -> StoreFuture<Result<(), UnixNanos>> {
        let panic = !self.panicked.swap(true, Ordering::SeqCst);
        let answer = if panic {
            Ok(())
        } else {
            self.memory.check_sync(key, now)
        };
        StoreFuture::later(async move {
            tokio::task::yield_now().await;
            assert!(!panic, "the store's future panics (its bug)");
            Ok(answer)
        })
    }
    fn estimate(&self, _key: &str, _now: UnixNanos, _ahead: u64) -> Option<UnixNanos> {
        None
    }
    fn pause(&self, key: &str, now: UnixNanos, until: UnixNanos) -> StoreFuture<()> {
        self.memory.pause_sync(key, now, until);
        StoreFuture::ready(())
    }
}

#[tokio::test(start_paused = true)]
async fn a_panicking_store_future_does_not_poison_the_lane() {
    let quota = window(10, Duration::from_secs(1));
    // Keyed: the unkeyed fast path would ask, drop the panicking future
    // unpolled and ask again (see an_eager_store_is_charged_...).
    let layer = RateLimitLayer::new(quota)
        .store(Arc::new(PanicOnce {
            memory: MemoryStore::new(&quota, 10),
            panicked: AtomicBool::new(false),
        }))
        .keyed_by(tollgate_limit::KeyBy::host());
    let log = Log::default();
    let svc = layer.clone().layer(upstream(Arc::clone(&log), false));
    let first = tokio::spawn(svc.clone().oneshot(get()));
    let second = tokio::spawn(svc.clone().oneshot(get()));
    assert!(first.await.is_err(), "the first caller's task panicked");
    let second = tokio::time::timeout(Duration::from_secs(5), second)
        .await
        .expect("the caller behind the panic was not stuck");
    second.expect("task").expect("served");
    assert_eq!(layer.waiting(), 0);
    assert_eq!(log.lock().expect("lock").len(), 1);
}

#[tokio::test(start_paused = true)]
async fn callers_dropped_at_every_await_leave_the_lane_and_never_loosen_the_bound() {
    // One permit a second; each decision one 5 ms round trip.
    let quota = window(1, Duration::from_secs(1));
    let layer = RateLimitLayer::new(quota)
        .store(Arc::new(Scripted::new(&quota).check(|m, key, now, _| {
            later_check(m, key, now, Duration::from_millis(5))
        })));
    let log = Log::default();
    let svc = layer.clone().layer(upstream(Arc::clone(&log), false));
    let start = Instant::now();
    let spawn = |svc: &tollgate_limit::RateLimit<_>| tokio::spawn(svc.clone().oneshot(get()));
    let a = spawn(&svc); // served at once (after one round trip)
    tokio::task::yield_now().await;
    let b = spawn(&svc); // next head: asks, then sleeps until 1 s
    let c = spawn(&svc); // behind b
    let d = spawn(&svc); // behind c
    let e = spawn(&svc); // behind d
    a.await.expect("task").expect("a");
    // d, not the head, leaves.
    tokio::time::sleep(Duration::from_millis(100)).await;
    d.abort();
    // b, the head, leaves while it sleeps for its permit.
    tokio::time::sleep(Duration::from_millis(100)).await;
    b.abort();
    // c becomes the head and asks; it leaves while its answer is on the way.
    tokio::time::sleep(Duration::from_millis(2)).await;
    c.abort();
    // e is served at the next permit, and nothing more reached the upstream.
    e.await.expect("task").expect("e");
    let log = log.lock().expect("lock").clone();
    assert_eq!(log.len(), 2, "{log:?}");
    assert!(log[1] - log[0] >= Duration::from_secs(1), "{log:?}");
    assert!(log[1] - start < Duration::from_millis(1_100), "{log:?}");
    assert_eq!(layer.waiting(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_failing_store_fails_every_waiter_in_turn_and_never_hangs() {
    let quota = window(1, Duration::from_secs(1));
    let down = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&down);
    let layer = RateLimitLayer::new(quota).store(Arc::new(Scripted::new(&quota).check(
        move |m, key, now, _| {
            let (m, key, down) = (Arc::clone(m), key.to_owned(), Arc::clone(&flag));
            StoreFuture::later(async move {
                tokio::time::sleep(Duration::from_millis(5)).await;
                if down.load(Ordering::SeqCst) {
                    Err(StoreError::new("connection reset"))
                } else {
                    Ok(m.check_sync(&key, now))
                }
            })
        },
    )));
    let svc = layer.clone().layer(upstream(Log::default(), false));
    svc.clone().oneshot(get()).await.expect("first");
    let waiters: Vec<_> = (0..5)
        .map(|_| tokio::spawn(svc.clone().oneshot(get())))
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    down.store(true, Ordering::SeqCst);
    for w in waiters {
        let outcome = tokio::time::timeout(Duration::from_secs(10), w)
            .await
            .expect("ended")
            .expect("task");
        let err = outcome.expect_err("the store is down");
        assert!(err.downcast_ref::<StoreError>().is_some(), "{err}");
    }
    assert_eq!(layer.waiting(), 0);
}

// ------------------------------------------------- order and the bound

#[tokio::test(start_paused = true)]
async fn a_late_yes_from_a_slow_store_does_not_crowd_the_upstream() {
    let quota = window(1, Duration::from_secs(1));
    // The first round trip takes 900 ms, the others a yield.
    let store = Scripted::new(&quota).check(|m, key, now, n| {
        let delay = if n == 0 {
            Duration::from_millis(900)
        } else {
            Duration::ZERO
        };
        later_check(m, key, now, delay)
    });
    let log = Log::default();
    // Keyed: the unkeyed fast path would drop the first, slow answer unread.
    let svc = RateLimitLayer::new(quota)
        .store(Arc::new(store))
        .keyed_by(tollgate_limit::KeyBy::host())
        .layer(upstream(Arc::clone(&log), false));
    let a = tokio::spawn(svc.clone().oneshot(get()));
    tokio::time::sleep(Duration::from_millis(10)).await;
    let b = tokio::spawn(svc.clone().oneshot(get()));
    // The late yes is not used: a fails at the store timeout (50 ms).
    let a = a
        .await
        .expect("task")
        .expect_err("a's yes came 900 ms late");
    let timed_out = a
        .downcast_ref::<StoreError>()
        .and_then(|e| std::error::Error::source(e))
        .and_then(|e| e.downcast_ref::<tollgate_limit::StoreTimedOut>());
    assert!(timed_out.is_some(), "{a}");
    b.await.expect("task").expect("b");
    let log = log.lock().expect("lock").clone();
    for pair in log.windows(2) {
        assert!(
            pair[1] - pair[0] >= Duration::from_millis(950),
            "the upstream saw two calls {:?} apart under 1 per second (store timeout 50 ms)",
            pair[1] - pair[0]
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_store_that_never_answers_fails_the_caller_at_the_store_timeout() {
    let quota = window(10, Duration::from_secs(1));
    let store =
        Scripted::new(&quota).check(|_, _, _, _| StoreFuture::later(std::future::pending()));
    let svc = RateLimitLayer::new(quota)
        .store(Arc::new(store))
        .layer(upstream(Log::default(), false));
    let start = Instant::now();
    let err = run_bounded(svc, get(), Duration::from_secs(60))
        .await
        .expect("ended")
        .expect_err("no answer");
    assert!(err.downcast_ref::<StoreError>().is_some(), "{err}");
    assert_eq!(
        Instant::now() - start,
        tollgate_limit::rate::DEFAULT_STORE_TIMEOUT
    );
}

#[tokio::test(start_paused = true)]
async fn callers_of_one_key_are_served_in_arrival_order_over_a_store_with_jittery_latency() {
    let quota = window(2, Duration::from_millis(100));
    let store = Scripted::new(&quota).check(|m, key, now, n| {
        // Latency that jumps between 0 and 7 ms.
        let delay = Duration::from_millis(((n * 7) % 8) as u64);
        later_check(m, key, now, delay)
    });
    let order = Arc::new(Mutex::new(Vec::new()));
    let inner = {
        let order = Arc::clone(&order);
        service_fn(move |req: Request<()>| {
            let id: usize = req.headers()["x-id"]
                .to_str()
                .expect("id")
                .parse()
                .expect("n");
            order.lock().expect("lock").push((id, Instant::now()));
            async { Ok::<_, std::convert::Infallible>(Response::new(())) }
        })
    };
    let svc = ServiceBuilder::new()
        .layer(RateLimitLayer::new(quota).store(Arc::new(store)))
        .service(inner);
    let mut tasks = Vec::new();
    for i in 0..20usize {
        let req = Request::get("http://api.test/x")
            .header("x-id", i.to_string())
            .body(())
            .expect("request");
        tasks.push(tokio::spawn(svc.clone().oneshot(req)));
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    for t in tasks {
        t.await.expect("task").expect("served");
    }
    let order = order.lock().expect("lock").clone();
    let ids: Vec<usize> = order.iter().map(|(id, _)| *id).collect();
    assert_eq!(ids, (0..20).collect::<Vec<_>>(), "first come first served");
    // The bound holds up to the store's latency (7 ms at most here): a
    // permit is taken when asked and used when the answer is back (see
    // a_late_yes_from_a_slow_store_does_not_crowd_the_upstream).
    for (i, &(_, at)) in order.iter().enumerate().skip(2) {
        assert!(
            at - order[i - 2].1 >= Duration::from_millis(93),
            "{order:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_tasks_over_a_later_store_never_share_a_permit() {
    // A window no test outlives: exactly its count may be served, however
    // the tasks race, are dropped or are refused.
    for keyed in [false, true] {
        let quota = window(10, Duration::from_secs(3_600));
        let mut layer = RateLimitLayer::new(quota)
            .store(Arc::new(Scripted::new(&quota).estimate(
                |m, key, now, ahead| Some(m.estimate_sync(key, now, ahead)),
            )))
            .max_wait(Duration::from_secs(1));
        if keyed {
            layer = layer.keyed_by(tollgate_limit::KeyBy::func(|_| Some("k".to_owned())));
        }
        let log = Log::default();
        let svc = layer.clone().layer(upstream(Arc::clone(&log), false));
        let tasks: Vec<_> = (0..200)
            .map(|i| {
                let svc = svc.clone();
                let task = tokio::spawn(async move { svc.oneshot(get()).await });
                if i % 3 == 0 {
                    task.abort();
                }
                task
            })
            .collect();
        let mut served = 0;
        for t in tasks {
            match t.await {
                Ok(Ok(_)) => served += 1,
                Ok(Err(e)) => assert!(e.downcast_ref::<WaitTooLong>().is_some(), "{e}"),
                Err(e) => assert!(e.is_cancelled(), "{e}"),
            }
        }
        let reached = log.lock().expect("lock").len();
        assert_eq!(served, reached);
        assert!(
            reached <= 10,
            "keyed {keyed}: {reached} calls under a quota of 10"
        );
        assert_eq!(layer.waiting(), 0, "keyed {keyed}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_refused_waiter_polled_again_never_calls_the_upstream() {
    let quota = window(1, Duration::from_secs(60));
    let log = Log::default();
    // Answers at once; no estimate, so a caller behind the head waits.
    let store =
        Scripted::new(&quota).check(|m, key, now, _| StoreFuture::ready(m.check_sync(key, now)));
    let svc = RateLimitLayer::new(quota)
        .store(Arc::new(store))
        .max_wait(Duration::from_secs(1))
        .layer(upstream(Arc::clone(&log), false));
    svc.clone().oneshot(get()).await.expect("first");
    tokio::time::sleep(Duration::from_millis(59_500)).await;
    let head = tokio::spawn(svc.clone().oneshot(get())); // served at 60 s
    tokio::task::yield_now().await;
    let mut behind = Box::pin(svc.clone().oneshot(get()));
    let first = behind.as_mut().await;
    assert!(first.is_err(), "its permit (120 s) is beyond its max_wait");
    head.await.expect("task").expect("head");
    // Polled again once a permit is free: a second outcome?
    tokio::time::sleep(Duration::from_secs(61)).await;
    let again = std::future::poll_fn(|cx| std::task::Poll::Ready(behind.as_mut().poll(cx))).await;
    let calls = log.lock().expect("lock").len();
    assert!(
        calls == 2 && !matches!(again, std::task::Poll::Ready(Ok(_))),
        "a refused call polled again reached the upstream ({calls} calls, {:?})",
        again.map(|r| r.map(|res| res.status()).map_err(|e| e.to_string()))
    );
}

/// Panics in `check` itself (not in its future) on the asks listed.
struct PanicsOnAsk {
    memory: MemoryStore,
    asked: AtomicUsize,
    panic_on: &'static [usize],
}

impl RateLimitStore for PanicsOnAsk {
    fn check(&self, key: &str, now: UnixNanos) -> StoreFuture<Result<(), UnixNanos>> {
        let n = self.asked.fetch_add(1, Ordering::SeqCst);
        assert!(!self.panic_on.contains(&n), "the store panics (its bug)");
        StoreFuture::ready(self.memory.check_sync(key, now))
    }
    fn estimate(&self, _key: &str, _now: UnixNanos, _ahead: u64) -> Option<UnixNanos> {
        None
    }
    fn pause(&self, key: &str, now: UnixNanos, until: UnixNanos) -> StoreFuture<()> {
        self.memory.pause_sync(key, now, until);
        StoreFuture::ready(())
    }
}

#[tokio::test(start_paused = true)]
async fn a_store_panicking_under_the_lane_lock_leaves_the_lane_usable() {
    // Keyed (no lock-free path): ask 0 serves a; ask 1 (b's arrival) says
    // wait; ask 2 (b as the head, under the lane's lock) panics; ask 3 (c's
    // arrival, under the lock too) panics; d is served in its turn.
    let quota = window(1, Duration::from_secs(1));
    let layer = RateLimitLayer::new(quota)
        .store(Arc::new(PanicsOnAsk {
            memory: MemoryStore::new(&quota, 10),
            asked: AtomicUsize::new(0),
            panic_on: &[2, 3],
        }))
        .keyed_by(tollgate_limit::KeyBy::host());
    let log = Log::default();
    let svc = layer.clone().layer(upstream(Arc::clone(&log), false));
    svc.clone().oneshot(get()).await.expect("a");
    let b = tokio::spawn(svc.clone().oneshot(get()));
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert!(b.await.is_err(), "b's task panicked with the store");
    let c = tokio::spawn(svc.clone().oneshot(get()));
    assert!(c.await.is_err(), "c's call panicked with the store");
    let d = tokio::time::timeout(Duration::from_secs(5), svc.clone().oneshot(get()))
        .await
        .expect("d is not stuck behind the panics");
    d.expect("d");
    assert_eq!(layer.waiting(), 0);
    assert_eq!(log.lock().expect("lock").len(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_pause_write_that_never_answers_does_not_leak_a_task_per_429() {
    let quota = Quota::per_second(1_000).expect("valid");
    let store = Scripted::new(&quota)
        .check(|m, key, now, _| StoreFuture::ready(m.check_sync(key, now)))
        .pause(|_, _, _, _| StoreFuture::later(std::future::pending()));
    let always_429 = service_fn(|_req: Request<()>| async {
        let mut res = Response::new(());
        *res.status_mut() = StatusCode::TOO_MANY_REQUESTS;
        res.headers_mut()
            .insert("retry-after", http::HeaderValue::from_static("1"));
        Ok::<_, std::convert::Infallible>(res)
    });
    let svc = RateLimitLayer::new(quota)
        .store(Arc::new(store))
        .layer(always_429);
    let before = tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks();
    for _ in 0..100 {
        let res = svc.clone().oneshot(get()).await.expect("answered");
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    }
    // An hour on, long after every pause asked for would have ended.
    tokio::time::sleep(Duration::from_secs(3_600)).await;
    let alive = tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
        - before;
    assert!(alive <= 1, "{alive} pause writes still alive an hour later");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_many_threads_callers_are_served_in_the_order_they_called() {
    // 1000 a second without a burst: 40 callers take 40 ms of real time.
    for later in [false, true] {
        for keyed in [false, true] {
            let quota = Quota::per_second(1_000)
                .expect("valid")
                .with_burst(1)
                .expect("valid");
            let mut layer = RateLimitLayer::new(quota);
            if later {
                layer = layer.store(Arc::new(Scripted::new(&quota)));
            }
            if keyed {
                layer = layer.keyed_by(tollgate_limit::KeyBy::host());
            }
            let order = Arc::new(Mutex::new(Vec::new()));
            let inner = {
                let order = Arc::clone(&order);
                service_fn(move |req: Request<()>| {
                    let id: usize = req.headers()["x-id"]
                        .to_str()
                        .expect("id")
                        .parse()
                        .expect("n");
                    order.lock().expect("lock").push(id);
                    async { Ok::<_, std::convert::Infallible>(Response::new(())) }
                })
            };
            let mut svc = layer.layer(inner);
            // Called in order here; polled on any thread.
            let mut futures = Vec::new();
            for i in 0..40usize {
                let req = Request::get("http://api.test/x")
                    .header("x-id", i.to_string())
                    .body(())
                    .expect("request");
                svc.ready().await.expect("ready");
                futures.push(tokio::spawn(svc.call(req)));
            }
            for f in futures {
                f.await.expect("task").expect("served");
            }
            let order = order.lock().expect("lock").clone();
            assert_eq!(
                order,
                (0..40).collect::<Vec<_>>(),
                "later {later}, keyed {keyed}"
            );
        }
    }
}
