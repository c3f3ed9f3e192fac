//! Adversarial tests of the rate limiter composed with other layers with
//! `tower::ServiceBuilder` over `service_fn`: what the upstream sees is
//! what the limit promises, on paused tokio time.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use tokio::time::Instant;
use tollgate_limit::{ConcurrencyLimitLayer, Quota, RateLimitLayer};
use tower::{service_fn, ServiceBuilder, ServiceExt};

fn get() -> Request<()> {
    Request::get("http://api.test/x").body(()).expect("request")
}

#[tokio::test(start_paused = true)]
#[ignore = "LIMITATION: a limiter above a busy pool holds its bound where the permit is taken; queueing below it moves calls closer at the upstream (documented in the rate module; the facade keeps this order so that a waiter holds no pool slot)"]
async fn a_rate_limit_above_a_busy_pool_holds_at_the_upstream() {
    // The facade's order: the rate limit (5) above the pool (8). The first
    // call takes 1.9 s; the others are instant.
    let log: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let n = Arc::new(AtomicUsize::new(0));
    let upstream = {
        let (log, n) = (Arc::clone(&log), Arc::clone(&n));
        service_fn(move |_req: Request<()>| {
            log.lock().expect("lock").push(Instant::now());
            let slow = n.fetch_add(1, Ordering::SeqCst) == 0;
            async move {
                if slow {
                    tokio::time::sleep(Duration::from_millis(1_900)).await;
                }
                Ok::<_, std::convert::Infallible>(Response::new(String::new()))
            }
        })
    };
    let svc = ServiceBuilder::new()
        .layer(RateLimitLayer::new(
            Quota::window(1, Duration::from_secs(1)).expect("valid"),
        ))
        .layer(ConcurrencyLimitLayer::new(1))
        .service(upstream);
    let tasks: Vec<_> = (0..3)
        .map(|_| {
            let svc = svc.clone();
            tokio::spawn(async move {
                // The response (and its pool slot) is dropped at once.
                drop(svc.oneshot(get()).await.expect("served"));
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("task");
    }
    let log = log.lock().expect("lock").clone();
    for pair in log.windows(2) {
        assert!(
            pair[1] - pair[0] >= Duration::from_secs(1),
            "the upstream saw two calls {:?} apart under 1 per second: {log:?}",
            pair[1] - pair[0]
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_pool_above_the_rate_limit_holds_the_rate_at_the_upstream() {
    let log: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let upstream = {
        let log = Arc::clone(&log);
        service_fn(move |_req: Request<()>| {
            log.lock().expect("lock").push(Instant::now());
            async { Ok::<_, std::convert::Infallible>(Response::new(String::new())) }
        })
    };
    let svc = ServiceBuilder::new()
        .layer(ConcurrencyLimitLayer::new(2))
        .layer(RateLimitLayer::new(
            Quota::window(1, Duration::from_millis(100)).expect("valid"),
        ))
        .service(upstream);
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let svc = svc.clone();
            tokio::spawn(async move { drop(svc.oneshot(get()).await.expect("served")) })
        })
        .collect();
    for t in tasks {
        t.await.expect("task");
    }
    let log = log.lock().expect("lock").clone();
    assert_eq!(log.len(), 10);
    for pair in log.windows(2) {
        assert!(pair[1] - pair[0] >= Duration::from_millis(100), "{log:?}");
    }
}
