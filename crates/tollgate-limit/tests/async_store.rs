//! The layer over a store that answers later (a boxed future per call, as
//! a remote store's): the same order, bounds and learning as in process,
//! and a store failure is a typed error that ends the call.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use tokio::time::Instant;
use tollgate_limit::{
    MemoryStore, PermitWait, Quota, RateLimitLayer, RateLimitStore, StoreError, StoreFuture,
    UnixNanos, WaitTooLong,
};
use tower::{service_fn, Layer, Service, ServiceExt};

/// Answers every call after a 5 ms round trip (on tokio's clock), or fails
/// while `down` is set.
struct Remote {
    store: Arc<MemoryStore>,
    down: Arc<AtomicBool>,
    asked: Arc<AtomicUsize>,
}

impl Remote {
    fn new(quota: &Quota) -> Remote {
        Remote {
            store: Arc::new(MemoryStore::new(quota, 1_000)),
            down: Arc::default(),
            asked: Arc::default(),
        }
    }
}

impl RateLimitStore for Remote {
    fn check(&self, key: &str, now: UnixNanos) -> StoreFuture<Result<(), UnixNanos>> {
        self.asked.fetch_add(1, Ordering::Relaxed);
        let (store, key, down) = (
            Arc::clone(&self.store),
            key.to_owned(),
            Arc::clone(&self.down),
        );
        StoreFuture::later(async move {
            tokio::time::sleep(Duration::from_millis(5)).await;
            if down.load(Ordering::Relaxed) {
                return Err(StoreError::new("connection refused"));
            }
            Ok(store.check_sync(&key, now))
        })
    }

    fn estimate(&self, _key: &str, _now: UnixNanos, _ahead: u64) -> Option<UnixNanos> {
        None
    }

    fn pause(&self, key: &str, now: UnixNanos, until: UnixNanos) -> StoreFuture<()> {
        let (store, key) = (Arc::clone(&self.store), key.to_owned());
        StoreFuture::later(async move {
            tokio::time::sleep(Duration::from_millis(5)).await;
            store.pause_sync(&key, now, until);
            Ok(())
        })
    }
}

fn ok_upstream() -> impl Service<
    Request<()>,
    Response = Response<()>,
    Error = std::convert::Infallible,
    Future = impl Send,
> + Clone
       + Send {
    service_fn(|_req: Request<()>| async { Ok(Response::new(())) })
}

fn get() -> Request<()> {
    Request::get("http://api.test/x").body(()).expect("request")
}

fn window(count: u32, secs: u64) -> Quota {
    Quota::window(count, Duration::from_secs(secs)).expect("valid")
}

#[tokio::test(start_paused = true)]
async fn callers_wait_their_turn_first_come_first_served() {
    let quota = window(2, 1);
    let layer = RateLimitLayer::new(quota).store(Arc::new(Remote::new(&quota)));
    let svc = layer.layer(ok_upstream());
    let start = Instant::now();
    let tasks: Vec<_> = (0..5)
        .map(|_| {
            let svc = svc.clone();
            tokio::spawn(async move {
                let res = svc.oneshot(get()).await.expect("served");
                (
                    Instant::now() - start,
                    res.extensions().get::<PermitWait>().copied(),
                )
            })
        })
        .collect();
    let mut served = Vec::new();
    for t in tasks {
        served.push(t.await.expect("task").0);
    }
    served.sort();
    // Two per second, each decision one 5 ms round trip after its turn.
    assert!(served[1] < Duration::from_millis(100), "{served:?}");
    assert!(served[2] >= Duration::from_secs(1), "{served:?}");
    assert!(served[4] >= Duration::from_secs(2), "{served:?}");
    assert!(served[4] < Duration::from_millis(2_100), "{served:?}");
}

#[tokio::test(start_paused = true)]
async fn a_store_failure_is_a_typed_error_and_the_lane_moves_on() {
    let quota = window(100, 1);
    let remote = Remote::new(&quota);
    let down = Arc::clone(&remote.down);
    let svc = RateLimitLayer::new(quota)
        .store(Arc::new(remote))
        .layer(ok_upstream());
    down.store(true, Ordering::Relaxed);
    let err = svc.clone().oneshot(get()).await.expect_err("store down");
    let store_error = err.downcast_ref::<StoreError>().expect("a StoreError");
    assert!(store_error.to_string().contains("connection refused"));
    down.store(false, Ordering::Relaxed);
    svc.clone()
        .oneshot(get())
        .await
        .expect("served once the store is back");
}

#[tokio::test(start_paused = true)]
async fn a_caller_dropped_while_the_store_answers_leaves_its_lane() {
    let quota = window(1, 1);
    let svc = RateLimitLayer::new(quota)
        .store(Arc::new(Remote::new(&quota)))
        .layer(ok_upstream());
    // The first caller asks and is dropped before the answer.
    let first = svc.clone().oneshot(get());
    let dropped = tokio::time::timeout(Duration::from_millis(1), first).await;
    assert!(dropped.is_err(), "still waiting for the store");
    // The next one is not stuck behind it (its permit may have been spent:
    // a remote check can take a permit the caller never used, which only
    // ever errs on the side of fewer calls).
    let next = tokio::time::timeout(Duration::from_secs(5), svc.clone().oneshot(get())).await;
    assert!(next.is_ok(), "the lane moved on");
}

#[tokio::test(start_paused = true)]
async fn max_wait_refuses_from_the_store_answer() {
    let quota = window(1, 60);
    let svc = RateLimitLayer::new(quota)
        .store(Arc::new(Remote::new(&quota)))
        .max_wait(Duration::from_secs(1))
        .layer(ok_upstream());
    svc.clone().oneshot(get()).await.expect("first");
    let start = Instant::now();
    let err = svc.clone().oneshot(get()).await.expect_err("a minute away");
    assert!(err.downcast_ref::<WaitTooLong>().is_some(), "{err}");
    assert!(
        Instant::now() - start < Duration::from_millis(50),
        "refused without waiting"
    );
}

#[tokio::test(start_paused = true)]
async fn a_429_pauses_callers_through_a_store_that_answers_later() {
    let quota = Quota::per_second(100).expect("valid");
    let remote = Remote::new(&quota);
    let calls = Arc::new(AtomicUsize::new(0));
    let upstream = {
        let calls = Arc::clone(&calls);
        service_fn(move |_req: Request<()>| {
            let n = calls.fetch_add(1, Ordering::Relaxed);
            async move {
                let mut res = Response::new(());
                if n == 0 {
                    *res.status_mut() = StatusCode::TOO_MANY_REQUESTS;
                    res.headers_mut()
                        .insert("retry-after", http::HeaderValue::from_static("3"));
                }
                Ok::<_, std::convert::Infallible>(res)
            }
        })
    };
    let svc = RateLimitLayer::new(quota)
        .store(Arc::new(remote))
        .layer(upstream);
    let first = svc.clone().oneshot(get()).await.expect("answered");
    assert_eq!(first.status(), StatusCode::TOO_MANY_REQUESTS);
    // The pause is written in the background; give it its round trip.
    tokio::time::sleep(Duration::from_millis(10)).await;
    let start = Instant::now();
    let second = svc.clone().oneshot(get()).await.expect("served");
    assert_eq!(second.status(), StatusCode::OK);
    assert!(
        Instant::now() - start >= Duration::from_millis(2_900),
        "the second call waited out the pause: {:?}",
        Instant::now() - start
    );
}
