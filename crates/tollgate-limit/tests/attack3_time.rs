//! Adversarial tests of the limiter's absolute time base (`UnixNanos`, the
//! system clock read once at build plus tokio's monotonic time): paused
//! time advanced by years and centuries, deadlines before the limiter was
//! built or far beyond what it can count, on paused tokio time.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use tokio::time::Instant;
use tollgate_limit::{
    MemoryStore, Quota, RateLimitLayer, RateLimitStore, RateLimited, StoreError, StoreFuture,
    UnixNanos, WaitTooLong,
};
use tower::{service_fn, BoxError, Layer, Service, ServiceExt};

const YEAR: u64 = 365 * 86_400;

/// The memory store, recording the times it is asked at; it fails every
/// check after `GIVE_UP`, so that a layer spinning on it ends instead of
/// hanging the test.
struct Recording {
    memory: MemoryStore,
    asked: AtomicUsize,
    times: Mutex<Vec<UnixNanos>>,
}

const GIVE_UP: usize = 10_000;

impl Recording {
    fn new(quota: &Quota) -> Arc<Recording> {
        Arc::new(Recording {
            memory: MemoryStore::new(quota, 100),
            asked: AtomicUsize::new(0),
            times: Mutex::new(Vec::new()),
        })
    }
}

impl RateLimitStore for Recording {
    fn check(&self, key: &str, now: UnixNanos) -> StoreFuture<Result<(), UnixNanos>> {
        if self.asked.fetch_add(1, Ordering::SeqCst) >= GIVE_UP {
            return StoreFuture::failed(StoreError::new("the layer spun on the store"));
        }
        self.times.lock().expect("lock").push(now);
        StoreFuture::ready(self.memory.check_sync(key, now))
    }
    fn estimate(&self, key: &str, now: UnixNanos, ahead: u64) -> Option<UnixNanos> {
        Some(self.memory.estimate_sync(key, now, ahead))
    }
    fn pause(&self, key: &str, now: UnixNanos, until: UnixNanos) -> StoreFuture<()> {
        self.memory.pause_sync(key, now, until);
        StoreFuture::ready(())
    }
}

fn ok_upstream(
    calls: Arc<AtomicUsize>,
) -> impl Service<
    Request<()>,
    Response = Response<()>,
    Error = std::convert::Infallible,
    Future = impl Send,
> + Clone
       + Send {
    service_fn(move |_req: Request<()>| {
        calls.fetch_add(1, Ordering::SeqCst);
        async { Ok(Response::new(())) }
    })
}

fn get() -> Request<()> {
    Request::get("http://api.test/x").body(()).expect("request")
}

async fn bounded<F>(f: F) -> Option<Result<Response<()>, BoxError>>
where
    F: std::future::Future<Output = Result<Response<()>, BoxError>>,
{
    tokio::time::timeout(Duration::from_secs(60), f).await.ok()
}

#[tokio::test(start_paused = true)]
async fn the_store_sees_the_system_clock_not_a_process_start() {
    let quota = Quota::per_second(10).expect("valid");
    let store = Recording::new(&quota);
    let svc = RateLimitLayer::new(quota)
        .store(Arc::clone(&store) as Arc<dyn RateLimitStore>)
        .layer(ok_upstream(Arc::default()));
    let system = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_nanos() as u64;
    svc.clone().oneshot(get()).await.expect("served");
    tokio::time::advance(Duration::from_secs(3_600)).await;
    svc.clone().oneshot(get()).await.expect("served");
    let times = store.times.lock().expect("lock").clone();
    assert!(
        times[0].abs_diff(system) < 60 * 1_000_000_000,
        "{times:?} vs {system}"
    );
    assert_eq!(
        times.last().copied().expect("asked") - times[0],
        3_600 * 1_000_000_000,
        "paused time moves the absolute base exactly"
    );
}

#[tokio::test(start_paused = true)]
async fn ten_years_on_the_limit_still_holds_and_waits_still_end() {
    let quota = Quota::window(2, Duration::from_secs(1)).expect("valid");
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = RateLimitLayer::new(quota).max_wait(Duration::from_secs(5));
    let svc = layer.clone().layer(ok_upstream(Arc::clone(&calls)));
    tokio::time::advance(Duration::from_secs(10 * YEAR)).await;
    let start = Instant::now();
    for _ in 0..3 {
        svc.clone().oneshot(get()).await.expect("served");
    }
    assert_eq!(Instant::now() - start, Duration::from_secs(1));
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[tokio::test(start_paused = true)]

async fn past_the_end_of_the_time_base_a_caller_is_refused_not_spun() {
    let quota = Quota::per_second(1).expect("valid");
    let store = Recording::new(&quota);
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = RateLimitLayer::new(quota)
        .store(Arc::clone(&store) as Arc<dyn RateLimitStore>)
        .max_wait(Duration::from_secs(1))
        .layer(ok_upstream(Arc::clone(&calls)));
    tokio::time::advance(Duration::from_secs(600 * YEAR)).await;
    let outcome = bounded(svc.clone().oneshot(get()))
        .await
        .expect("ended within a minute");
    let asked = store.asked.load(Ordering::SeqCst);
    match outcome {
        Ok(_) => panic!("served at the end of time (the suite says: refused)"),
        Err(e) => assert!(
            e.downcast_ref::<WaitTooLong>().is_some() || e.downcast_ref::<RateLimited>().is_some(),
            "wanted a refusal, got {e} after {asked} checks"
        ),
    }
    assert!(asked < 100, "asked {asked} times");
}

#[tokio::test(start_paused = true)]

async fn a_deadline_before_the_limiter_was_built_is_refused() {
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = RateLimitLayer::new(Quota::per_second(10).expect("valid"))
        .layer(ok_upstream(Arc::clone(&calls)));
    let mut req = get();
    req.extensions_mut().insert(tollgate_core::Deadline(
        Instant::now() - Duration::from_secs(10),
    ));
    let outcome = svc.oneshot(req).await;
    assert!(
        outcome.is_err(),
        "a call 10 s past its deadline was served ({} upstream call)",
        calls.load(Ordering::SeqCst)
    );
}

#[tokio::test(start_paused = true)]
async fn a_deadline_that_passed_after_the_limiter_was_built_is_refused() {
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = RateLimitLayer::new(Quota::per_second(10).expect("valid"))
        .layer(ok_upstream(Arc::clone(&calls)));
    tokio::time::advance(Duration::from_secs(60)).await;
    let mut req = get();
    req.extensions_mut().insert(tollgate_core::Deadline(
        Instant::now() - Duration::from_secs(10),
    ));
    assert!(svc.oneshot(req).await.is_err());
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn a_deadline_centuries_away_bounds_nothing_and_breaks_nothing() {
    let quota = Quota::window(1, Duration::from_secs(1)).expect("valid");
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = RateLimitLayer::new(quota)
        .max_wait(Duration::from_secs(5))
        .layer(ok_upstream(Arc::clone(&calls)));
    let far = Instant::now() + Duration::from_secs(1_000 * YEAR);
    let start = Instant::now();
    for _ in 0..3 {
        let mut req = get();
        req.extensions_mut().insert(tollgate_core::Deadline(far));
        bounded(svc.clone().oneshot(req))
            .await
            .expect("ended")
            .expect("served");
    }
    assert_eq!(Instant::now() - start, Duration::from_secs(2));
}

#[tokio::test(start_paused = true)]
async fn a_max_wait_of_centuries_is_no_bound_and_no_overflow() {
    let quota = Quota::window(1, Duration::from_secs(1)).expect("valid");
    let svc = RateLimitLayer::new(quota)
        .max_wait(Duration::MAX)
        .layer(ok_upstream(Arc::default()));
    let start = Instant::now();
    for _ in 0..3 {
        bounded(svc.clone().oneshot(get()))
            .await
            .expect("ended")
            .expect("served");
    }
    assert_eq!(Instant::now() - start, Duration::from_secs(2));
}

#[tokio::test(start_paused = true)]
async fn a_pause_of_centuries_is_capped_and_held() {
    // A 429 asking for centuries: capped at max_pause, which holds.
    let quota = Quota::per_second(100).expect("valid");
    let calls = Arc::new(AtomicUsize::new(0));
    let upstream = {
        let calls = Arc::clone(&calls);
        service_fn(move |_req: Request<()>| {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            async move {
                let mut res = Response::new(());
                if n == 0 {
                    *res.status_mut() = http::StatusCode::TOO_MANY_REQUESTS;
                    res.headers_mut().insert(
                        "retry-after",
                        http::HeaderValue::from_static("99999999999999999999"),
                    );
                }
                Ok::<_, std::convert::Infallible>(res)
            }
        })
    };
    let svc = RateLimitLayer::new(quota)
        .learn_from_upstream(true, Duration::from_secs(10))
        .layer(upstream);
    svc.clone().oneshot(get()).await.expect("answered");
    let start = Instant::now();
    bounded(svc.clone().oneshot(get()))
        .await
        .expect("ended")
        .expect("served");
    let waited = Instant::now() - start;
    assert!(
        waited >= Duration::from_secs(9) && waited <= Duration::from_secs(11),
        "{waited:?}"
    );
}
