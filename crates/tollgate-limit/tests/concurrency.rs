//! ConcurrencyLimitLayer against in-process services, with tokio's clock
//! paused so queue waits and timeouts are exact.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use http_body_util::BodyExt;
use tokio::time::Instant;
use tollgate_limit::{ConcurrencyLimitLayer, PoolQueueFull, PoolQueueTimeout, QueueWait};
use tower::{service_fn, Layer, Service, ServiceExt};

type Body = http_body_util::Full<bytes::Bytes>;

/// A service that takes `work` per call and records how many calls were in
/// it at once, and in which order calls started.
#[derive(Clone, Default)]
struct Probe {
    now: Arc<AtomicUsize>,
    max: Arc<AtomicUsize>,
    order: Arc<Mutex<Vec<u32>>>,
}

impl Probe {
    fn service(
        &self,
        work: Duration,
    ) -> impl Service<
        Request<u32>,
        Response = Response<Body>,
        Error = std::convert::Infallible,
        Future = impl Send,
    > + Clone
           + Send {
        let probe = self.clone();
        service_fn(move |req: Request<u32>| {
            let probe = probe.clone();
            async move {
                let n = probe.now.fetch_add(1, Ordering::SeqCst) + 1;
                probe.max.fetch_max(n, Ordering::SeqCst);
                probe.order.lock().expect("lock").push(*req.body());
                tokio::time::sleep(work).await;
                probe.now.fetch_sub(1, Ordering::SeqCst);
                Ok(Response::new(Body::from("ok")))
            }
        })
    }
}

fn req(n: u32) -> Request<u32> {
    Request::new(n)
}

/// Whether the call succeeded; the response (and its slot) is dropped at once.
async fn succeeded<T, E>(call: impl std::future::Future<Output = Result<T, E>>) -> bool {
    call.await.is_ok()
}

#[tokio::test(start_paused = true)]
async fn never_more_than_the_limit_in_flight_and_served_in_order() {
    let probe = Probe::default();
    let svc = ConcurrencyLimitLayer::new(3).layer(probe.service(Duration::from_millis(100)));
    let mut tasks = Vec::new();
    for n in 0..10 {
        let call = svc.clone().oneshot(req(n));
        tasks.push(tokio::spawn(async move {
            let res = call.await.expect("response");
            let wait = res
                .extensions()
                .get::<QueueWait>()
                .copied()
                .expect("wait recorded");
            // Reading the body to its end gives the slot back.
            res.into_body().collect().await.expect("body");
            wait
        }));
        tokio::task::yield_now().await;
    }
    let started = Instant::now();
    let mut waits = Vec::new();
    for t in tasks {
        waits.push(t.await.expect("task").0);
    }
    assert_eq!(probe.max.load(Ordering::SeqCst), 3);
    assert_eq!(
        *probe.order.lock().expect("lock"),
        (0..10).collect::<Vec<_>>(),
        "first come, first served"
    );
    assert_eq!(waits.iter().filter(|w| w.is_zero()).count(), 3);
    assert_eq!(
        waits[9],
        Duration::from_millis(300),
        "the tenth waited for three rounds"
    );
    assert!(started.elapsed() >= Duration::from_millis(400));
}

#[tokio::test(start_paused = true)]
async fn a_full_queue_refuses_at_once() {
    let probe = Probe::default();
    let svc = ConcurrencyLimitLayer::new(1)
        .max_queue(1)
        .layer(probe.service(Duration::from_secs(1)));
    let first = tokio::spawn(svc.clone().oneshot(req(0)));
    tokio::task::yield_now().await;
    let second = tokio::spawn(svc.clone().oneshot(req(1)));
    tokio::task::yield_now().await;
    let started = Instant::now();
    let err = svc.clone().oneshot(req(2)).await.expect_err("queue full");
    assert_eq!(started.elapsed(), Duration::ZERO, "refused without waiting");
    assert_eq!(
        err.downcast_ref::<PoolQueueFull>(),
        Some(&PoolQueueFull { max_queue: 1 })
    );
    assert!(first.await.expect("task").is_ok());
    assert!(second.await.expect("task").is_ok());
}

#[tokio::test(start_paused = true)]
async fn a_queued_call_times_out_and_the_call_in_flight_goes_on() {
    let probe = Probe::default();
    let svc = ConcurrencyLimitLayer::new(1)
        .queue_timeout(Duration::from_millis(250))
        .layer(probe.service(Duration::from_secs(1)));
    let first = tokio::spawn(svc.clone().oneshot(req(0)));
    tokio::task::yield_now().await;
    let err = svc.clone().oneshot(req(1)).await.expect_err("times out");
    let timeout = err
        .downcast_ref::<PoolQueueTimeout>()
        .expect("PoolQueueTimeout");
    assert_eq!(timeout.waited, Duration::from_millis(250));
    assert!(first.await.expect("task").is_ok());
    assert_eq!(
        *probe.order.lock().expect("lock"),
        vec![0],
        "the timed-out call never ran"
    );
}

#[tokio::test(start_paused = true)]
async fn dropping_a_waiting_call_frees_its_place() {
    let probe = Probe::default();
    let layer = ConcurrencyLimitLayer::new(1).max_queue(1);
    let svc = layer.layer(probe.service(Duration::from_secs(1)));
    // Each task drops its response (and so its slot) as soon as it has it.
    let first = tokio::spawn(succeeded(svc.clone().oneshot(req(0))));
    tokio::task::yield_now().await;
    let waiting = tokio::spawn(succeeded(svc.clone().oneshot(req(1))));
    tokio::task::yield_now().await;
    assert_eq!(layer.waiting(), 1);
    waiting.abort();
    let _ = waiting.await;
    assert_eq!(layer.waiting(), 0, "the dropped waiter left the queue");
    // Its place is free: another call may queue, and it is served next.
    let third = svc
        .clone()
        .oneshot(req(2))
        .await
        .expect("queued and served");
    drop(third);
    assert!(first.await.expect("task"));
    assert_eq!(*probe.order.lock().expect("lock"), vec![0, 2]);
}

#[tokio::test(start_paused = true)]
async fn the_slot_is_held_until_the_body_is_done() {
    let probe = Probe::default();
    let layer = ConcurrencyLimitLayer::new(1);
    let svc = layer.layer(probe.service(Duration::ZERO));
    let res = svc.clone().oneshot(req(0)).await.expect("response");
    assert_eq!(layer.available(), 0, "the unread body still holds the slot");
    let next = tokio::spawn(svc.clone().oneshot(req(1)));
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(!next.is_finished());
    let bytes = res.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(&bytes[..], b"ok");
    let second = next.await.expect("task").expect("response");
    assert_eq!(
        second.extensions().get::<QueueWait>(),
        Some(&QueueWait(Duration::from_secs(5)))
    );
    drop(second);
    assert_eq!(layer.available(), 1, "a dropped body gives the slot back");
}

#[tokio::test(start_paused = true)]
async fn clones_and_services_from_one_layer_share_the_pool() {
    let probe = Probe::default();
    let layer = ConcurrencyLimitLayer::new(2);
    let a = layer.layer(probe.service(Duration::from_millis(100)));
    let b = layer.layer(probe.service(Duration::from_millis(100)));
    let calls: Vec<_> = (0..6)
        .map(|n| {
            let svc = if n % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(async move { svc.oneshot(req(n)).await.map(drop) })
        })
        .collect();
    for c in calls {
        c.await.expect("task").expect("response");
    }
    assert_eq!(probe.max.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn readiness_is_the_inner_services() {
    let (mock, mut handle) = tower_test::mock::pair::<Request<u32>, Response<Body>>();
    let mut svc = ConcurrencyLimitLayer::new(4).layer(mock);
    handle.allow(0);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    assert!(
        svc.poll_ready(&mut cx).is_pending(),
        "not ready while the inner service is not"
    );
    handle.allow(1);
    assert!(svc.poll_ready(&mut cx).is_ready());
}

#[test]
fn the_service_offers_its_layer_and_inner_accessors() {
    use tollgate_limit::ConcurrencyLimit;
    let layer = ConcurrencyLimit::<()>::layer(2);
    let mut pool = layer.layer(7u8);
    *pool.get_mut() += 1;
    assert_eq!(*pool.get_ref(), 8);
    assert_eq!(pool.into_inner(), 8);
}
