//! RetryLayer against in-process services: what the upstream received on
//! each attempt, shared state across clones, readiness.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{HeaderValue, Method, Request, Response, StatusCode};
use tollgate_retry::{ReplayableBody, RetryBudget, RetryLayer, RetryRecord, Stopped};
use tower::{service_fn, Layer, Service, ServiceExt};

type Seen = Arc<Mutex<Vec<Option<HeaderValue>>>>;

/// Answers 503 `failures` times, then 200, recording each request's
/// Idempotency-Key.
fn flaky(
    failures: usize,
    seen: Seen,
) -> impl Service<
    Request<ReplayableBody>,
    Response = Response<String>,
    Error = std::convert::Infallible,
> + Clone {
    service_fn(move |req: Request<ReplayableBody>| {
        let seen = seen.clone();
        async move {
            let mut log = seen.lock().expect("lock");
            log.push(req.headers().get("idempotency-key").cloned());
            let status = if log.len() <= failures {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::OK
            };
            Ok(Response::builder()
                .status(status)
                .body(String::new())
                .expect("response"))
        }
    })
}

fn post() -> Request<String> {
    Request::post("http://api.test/orders")
        .body("{}".to_owned())
        .expect("request")
}

#[tokio::test(start_paused = true)]
async fn every_attempt_carries_the_same_idempotency_key() {
    let seen = Seen::default();
    let svc = RetryLayer::new()
        .with_idempotency_key()
        .layer(flaky(2, seen.clone()));
    let res = svc.oneshot(post()).await.expect("response");
    assert_eq!(res.status(), StatusCode::OK);
    let keys = seen.lock().expect("lock").clone();
    assert_eq!(keys.len(), 3);
    assert!(keys[0].is_some());
    assert!(keys.iter().all(|k| k == &keys[0]));
}

#[tokio::test(start_paused = true)]
async fn a_callers_own_idempotency_key_is_kept() {
    let seen = Seen::default();
    let svc = RetryLayer::new()
        .with_idempotency_key()
        .layer(flaky(1, seen.clone()));
    let mut req = post();
    req.headers_mut()
        .insert("idempotency-key", HeaderValue::from_static("order-42"));
    svc.oneshot(req).await.expect("response");
    let keys = seen.lock().expect("lock").clone();
    assert_eq!(keys, vec![Some(HeaderValue::from_static("order-42")); 2]);
}

#[tokio::test(start_paused = true)]
async fn get_carries_no_idempotency_key() {
    let seen = Seen::default();
    let svc = RetryLayer::new()
        .with_idempotency_key()
        .layer(flaky(0, seen.clone()));
    svc.oneshot(Request::get("/x").body(String::new()).expect("request"))
        .await
        .expect("response");
    assert_eq!(seen.lock().expect("lock").clone(), vec![None]);
}

async fn delays(seed: u64) -> Vec<Duration> {
    let svc = RetryLayer::new()
        .seed(seed)
        .no_budget()
        .layer(flaky(3, Seen::default()));
    let res = svc
        .oneshot(Request::get("/x").body(String::new()).expect("request"))
        .await
        .expect("response");
    res.extensions()
        .get::<RetryRecord>()
        .expect("record")
        .retries
        .iter()
        .map(|e| e.delay)
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_seed_makes_the_jitter_reproducible() {
    let a = delays(99).await;
    assert_eq!(a.len(), 3);
    assert_eq!(a, delays(99).await);
    assert_ne!(a, delays(100).await);
    // Full jitter under the default 100 ms doubling ceilings.
    for (n, d) in a.iter().enumerate() {
        assert!(*d <= Duration::from_millis(100 << n), "{n}: {d:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn clones_share_one_budget() {
    // One retry allowed in all (floor 1/s over 1 s, no ratio).
    let budget = RetryBudget::new(Duration::from_secs(1), 1, 0.0).expect("valid");
    let layer = RetryLayer::new().budget(budget);
    let always_503 = service_fn(|_req: Request<ReplayableBody>| async {
        Ok::<_, std::convert::Infallible>(
            Response::builder()
                .status(StatusCode::SERVICE_UNAVAILABLE)
                .body(String::new())
                .expect("response"),
        )
    });
    let a = layer.layer(always_503);
    let b = a.clone();
    let get = || Request::get("/x").body(String::new()).expect("request");
    let first = a.oneshot(get()).await.expect("response");
    let second = b.oneshot(get()).await.expect("response");
    let rec = |r: &Response<String>| {
        r.extensions()
            .get::<RetryRecord>()
            .cloned()
            .expect("record")
    };
    assert_eq!(rec(&first).attempts, 2);
    assert_eq!(rec(&first).stopped, Some(Stopped::Budget));
    assert_eq!(
        rec(&second).attempts,
        1,
        "the clone found the shared budget spent"
    );
    assert_eq!(rec(&second).stopped, Some(Stopped::Budget));
}

#[tokio::test(start_paused = true)]
async fn readiness_is_the_inner_services_and_is_awaited_before_each_retry() {
    let (mock, mut handle) = tower_test::mock::pair::<Request<ReplayableBody>, Response<String>>();
    let mut svc = RetryLayer::new().seed(5).layer(mock);

    handle.allow(0);
    assert!(
        poll_ready_once(&mut svc).is_pending(),
        "not ready while the inner service is not"
    );

    handle.allow(1);
    ServiceExt::<Request<String>>::ready(&mut svc)
        .await
        .expect("ready");
    let call = tokio::spawn(svc.call(Request::get("/x").body(String::new()).expect("request")));
    let (_, reply) = handle.next_request().await.expect("first attempt");
    reply.send_response(
        Response::builder()
            .status(503)
            .body(String::new())
            .expect("response"),
    );

    // The retry waits for readiness: no second request until allowed.
    tokio::time::sleep(Duration::from_secs(20)).await;
    let early = tokio::time::timeout(Duration::from_secs(1), handle.next_request()).await;
    assert!(
        early.is_err(),
        "no attempt while the inner service is not ready"
    );
    handle.allow(1);
    let (req, reply) = handle.next_request().await.expect("second attempt");
    assert_eq!(req.method(), Method::GET);
    reply.send_response(Response::new(String::from("ok")));
    let res = call.await.expect("task").expect("response");
    assert_eq!(res.body(), "ok");
}

/// Polls `poll_ready` once.
fn poll_ready_once<S: Service<Request<String>>>(svc: &mut S) -> std::task::Poll<()> {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    svc.poll_ready(&mut cx).map(|_| ())
}

/// Always 503, counting the attempts and the bodies they carried.
fn always_503(
    bodies: Arc<Mutex<Vec<bytes::Bytes>>>,
) -> impl Service<Request<ReplayableBody>, Response = Response<String>, Error = tower::BoxError> + Clone
{
    use http_body_util::BodyExt;
    service_fn(move |req: Request<ReplayableBody>| {
        let bodies = bodies.clone();
        async move {
            let body = req.into_body().collect().await?.to_bytes();
            bodies.lock().expect("lock").push(body);
            Ok(Response::builder()
                .status(StatusCode::SERVICE_UNAVAILABLE)
                .body(String::new())
                .expect("response"))
        }
    })
}

#[tokio::test(start_paused = true)]
async fn a_streaming_body_is_sent_exactly_once_and_the_record_says_why() {
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};

    let bodies = Arc::default();
    // Over the replay limit: it streams.
    let svc = RetryLayer::new()
        .max_replay_body(3)
        .layer(always_503(Arc::clone(&bodies)));
    let req = Request::put("/upload")
        .body(Full::new(Bytes::from("data")).boxed_unsync())
        .expect("request");
    let res = svc.oneshot(req).await.expect("the 503, not an error");
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(*bodies.lock().expect("lock"), vec![Bytes::from("data")]);
    let record = res.extensions().get::<RetryRecord>().expect("record");
    assert_eq!(record.attempts, 1);
    assert_eq!(record.stopped, Some(Stopped::BodyNotReplayable));
}

#[tokio::test(start_paused = true)]
async fn a_boxed_body_of_known_size_within_the_limit_is_replayed() {
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};

    let bodies = Arc::default();
    let svc = RetryLayer::new()
        .no_budget()
        .max_retries(2)
        .layer(always_503(Arc::clone(&bodies)));
    let req = Request::put("/upload")
        .body(Full::new(Bytes::from("data")).boxed_unsync())
        .expect("request");
    let res = svc.oneshot(req).await.expect("the last 503");
    assert_eq!(
        res.extensions().get::<RetryRecord>().map(|r| r.attempts),
        Some(3)
    );
    assert_eq!(*bodies.lock().expect("lock"), vec![Bytes::from("data"); 3]);
}

#[tokio::test(start_paused = true)]
async fn a_wait_already_scheduled_below_ends_at_the_same_instant() {
    use tokio::time::Instant;
    use tollgate_retry::NotBefore;

    // A stand-in for the rate limiter below: on a 429 it has paused itself
    // until `until` and says so on the response.
    let until = Instant::now() + Duration::from_millis(1500);
    let calls = Arc::new(Mutex::new(Vec::new()));
    let log = calls.clone();
    let svc = RetryLayer::new().layer(service_fn(move |_req: Request<ReplayableBody>| {
        let log = log.clone();
        async move {
            let mut log = log.lock().expect("lock");
            log.push(Instant::now());
            let mut res = Response::builder().status(if log.len() == 1 { 429 } else { 200 });
            if log.len() == 1 {
                // The header says 3 s, but the layer below already counted from
                // an earlier instant: its deadline wins.
                res = res.header("retry-after", "3");
            }
            let mut res = res.body(String::new()).expect("response");
            res.extensions_mut().insert(NotBefore(until));
            Ok::<_, std::convert::Infallible>(res)
        }
    }));
    let res = svc
        .oneshot(Request::get("/x").body(String::new()).expect("request"))
        .await
        .expect("response");
    assert_eq!(res.status(), StatusCode::OK);
    let times = calls.lock().expect("lock").clone();
    assert_eq!(times.len(), 2);
    assert_eq!(
        times[1], until,
        "the retry started exactly when the lower layer's wait ended"
    );
}

#[tokio::test(start_paused = true)]
async fn idempotency_keys_do_not_follow_the_jitter_seed() {
    // Two layers seeded alike (two replicas of one service, say) must not
    // send the same keys: a server would take one call for the other's
    // replay and drop it.
    let (a, b) = (Seen::default(), Seen::default());
    let first = RetryLayer::new()
        .with_idempotency_key()
        .seed(42)
        .layer(flaky(0, a.clone()));
    let second = RetryLayer::new()
        .with_idempotency_key()
        .seed(42)
        .layer(flaky(0, b.clone()));
    first.oneshot(post()).await.expect("response");
    second.oneshot(post()).await.expect("response");
    let (a, b) = (
        a.lock().expect("lock")[0].clone(),
        b.lock().expect("lock")[0].clone(),
    );
    assert!(a.is_some() && b.is_some());
    assert_ne!(a, b);
}

#[tokio::test(start_paused = true)]
async fn durations_at_zero_one_and_max_never_panic() {
    for total in [Duration::ZERO, Duration::from_nanos(1), Duration::MAX] {
        for cap in [Duration::ZERO, Duration::from_nanos(1), Duration::MAX] {
            let seen = Seen::default();
            let svc = RetryLayer::new()
                .max_total_time(total)
                .max_retry_after(cap)
                .max_retries(u32::MAX)
                .layer(flaky(2, seen.clone()));
            let req = Request::get("http://api.test/x")
                .body(String::new())
                .expect("request");
            // Every combination ends with one outcome, quickly on paused
            // time: a response (retried or not) or an error.
            let res = tokio::time::timeout(Duration::from_secs(3600), svc.oneshot(req)).await;
            assert!(res.is_ok(), "total {total:?}, cap {cap:?}: still running");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn ten_thousand_gets_to_an_always_failing_upstream_stay_within_the_budget() {
    // RELIABILITY.md, Retry 4: three retries each would be 40,000 attempts;
    // the default budget (20% of requests plus 10 per second) allows at
    // most 10,000 · 1.2 + 10 · 100 s over the 100 s the calls take.
    let attempts = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = Arc::clone(&attempts);
    let svc = RetryLayer::new().max_retries(3).seed(11).layer(service_fn(
        move |_req: Request<ReplayableBody>| {
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            async {
                Ok::<_, std::convert::Infallible>(
                    Response::builder()
                        .status(StatusCode::SERVICE_UNAVAILABLE)
                        .body(String::new())
                        .expect("response"),
                )
            }
        },
    ));
    let requests: u64 = 10_000;
    let mut tasks = Vec::with_capacity(10_000);
    for i in 0..requests {
        let req = Request::get("http://api.test/x")
            .body(String::new())
            .expect("request");
        tasks.push(tokio::spawn(svc.clone().oneshot(req)));
        if i % 100 == 99 {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    for t in tasks {
        let res = t.await.expect("task").expect("a response");
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
    let attempts = attempts.load(std::sync::atomic::Ordering::Relaxed);
    let bound = requests + requests / 5 + 10 * 100;
    assert!(
        attempts <= bound,
        "{attempts} attempts for {requests} requests (bound {bound})"
    );
    assert!(attempts > requests, "some retries were allowed");
}

#[test]
fn backoff_and_budget_settings_at_zero_one_and_max_are_values_or_typed_errors() {
    use tollgate_retry::Backoff;
    let mut rng = fastrand::Rng::with_seed(1);
    for base in [Duration::ZERO, Duration::from_nanos(1), Duration::MAX] {
        let Ok(backoff) = Backoff::exponential(base) else {
            continue;
        };
        for cap in [Duration::ZERO, Duration::from_nanos(1), Duration::MAX] {
            for factor in [0.0, 1.0, 2.0, f64::MAX, f64::INFINITY, f64::NAN, -1.0] {
                let Ok(b) = backoff.clone().cap(cap).and_then(|b| b.factor(factor)) else {
                    continue;
                };
                for retry in [0, 1, 63, 64, u32::MAX] {
                    let d = b.delay(retry, &mut rng);
                    assert!(d <= b.ceiling(retry), "{base:?} {cap:?} {factor} {retry}");
                }
            }
        }
    }
    for ttl in [Duration::ZERO, Duration::from_nanos(1), Duration::MAX] {
        for min in [0, 1, u32::MAX] {
            for ratio in [0.0, 0.2, 1.0, 1000.0, f64::MAX, f64::NAN, -1.0] {
                if let Ok(budget) = RetryBudget::new(ttl, min, ratio) {
                    budget.deposit();
                    let _ = budget.try_withdraw();
                }
            }
        }
    }
}

/// A body of known size whose bytes are not there yet at the first poll,
/// as a request read from a socket.
struct Arriving {
    waited: bool,
    data: Option<bytes::Bytes>,
}

impl http_body::Body for Arriving {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        if !std::mem::replace(&mut self.waited, true) {
            cx.waker().wake_by_ref();
            return std::task::Poll::Pending;
        }
        std::task::Poll::Ready(self.data.take().map(|d| Ok(http_body::Frame::data(d))))
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.data.as_ref().map_or(0, |d| d.len() as u64))
    }
}

#[tokio::test(start_paused = true)]
async fn a_body_still_arriving_is_read_first_then_replayed() {
    let bodies = Arc::default();
    let svc = RetryLayer::new()
        .no_budget()
        .max_retries(1)
        .layer(always_503(Arc::clone(&bodies)));
    let body = Arriving {
        waited: false,
        data: Some(bytes::Bytes::from("late")),
    };
    let req = Request::put("/upload").body(body).expect("request");
    let res = svc.oneshot(req).await.expect("the last 503");
    assert_eq!(
        res.extensions().get::<RetryRecord>().map(|r| r.attempts),
        Some(2)
    );
    assert_eq!(
        *bodies.lock().expect("lock"),
        vec![bytes::Bytes::from("late"); 2]
    );
}

#[test]
fn the_service_offers_its_layer_and_inner_accessors() {
    let layer = tollgate_retry::Retry::<()>::layer().max_retries(1);
    let mut retry = layer.layer(7u8);
    *retry.get_mut() += 1;
    assert_eq!(*retry.get_ref(), 8);
    assert_eq!(retry.into_inner(), 8);
}

#[tokio::test(start_paused = true)]
async fn with_no_retries_allowed_a_streamed_body_stops_at_the_maximum() {
    use http_body_util::{BodyExt, Full};

    let svc = RetryLayer::new()
        .max_retries(0)
        .max_replay_body(0)
        .layer(always_503(Arc::default()));
    let req = Request::put("/upload")
        .body(Full::new(bytes::Bytes::from("data")).boxed_unsync())
        .expect("request");
    let res = svc.oneshot(req).await.expect("the 503");
    let record = res.extensions().get::<RetryRecord>().expect("record");
    assert_eq!(record.stopped, Some(Stopped::MaxRetries));
}
