//! RetryLayer alone over a real hyper-util client, against FakeApi on
//! 127.0.0.1, with tokio's clock paused so waits are exact and instant.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::time::Instant;
use tollgate_retry::{Backoff, Jitter, RetryError, RetryLayer, RetryReason, RetryRecord, Stopped};
use tollgate_testkit::{FakeApi, Fault};
use tower::{ServiceBuilder, ServiceExt};

type Body = Full<Bytes>;

fn fixed_backoff(ms: u64) -> Backoff {
    Backoff::exponential(Duration::from_millis(ms))
        .expect("valid")
        .jitter(Jitter::None)
}

// The client's body type is the retry layer's: any body in, a replayable
// (or streaming) one out.
type Stack = tollgate_retry::Retry<
    tower::timeout::Timeout<
        Client<hyper_util::client::legacy::connect::HttpConnector, tollgate_retry::ReplayableBody>,
    >,
>;

fn client(layer: RetryLayer) -> Stack {
    let hyper = Client::builder(TokioExecutor::new()).build_http();
    ServiceBuilder::new()
        .layer(layer)
        .timeout(Duration::from_secs(5))
        .service(hyper)
}

fn req(api: &FakeApi, method: Method, path: &str) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(format!("{}{path}", api.url()))
        .body(Full::new(Bytes::from_static(b"{}")))
        .expect("request")
}

fn record<B>(res: &http::Response<B>) -> RetryRecord {
    res.extensions()
        .get::<RetryRecord>()
        .cloned()
        .expect("record present")
}

#[tokio::test(start_paused = true)]
async fn a_flaky_endpoint_succeeds_on_the_third_attempt() {
    let api = FakeApi::start().await.expect("start");
    api.inject(
        "/posts/1",
        Fault::status(StatusCode::SERVICE_UNAVAILABLE).times(2),
    );
    let res = client(RetryLayer::new().seed(1))
        .oneshot(req(&api, Method::GET, "/posts/1"))
        .await
        .expect("response");
    assert_eq!(res.status(), StatusCode::OK);
    let r = record(&res);
    assert_eq!(r.attempts, 3);
    assert_eq!(r.retries.len(), 2);
    assert!(r
        .retries
        .iter()
        .all(|e| e.reason == RetryReason::Status(StatusCode::SERVICE_UNAVAILABLE)));
    assert_eq!(api.hits("/posts/1"), 3);
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_waited_out_exactly_as_a_floor_under_the_backoff() {
    let api = FakeApi::start().await.expect("start");
    api.inject(
        "/posts/1",
        Fault::status(StatusCode::TOO_MANY_REQUESTS)
            .times(1)
            .retry_after("2"),
    );
    let started = Instant::now();
    let res = client(RetryLayer::new().backoff(fixed_backoff(10)))
        .oneshot(req(&api, Method::GET, "/posts/1"))
        .await
        .expect("response");
    let waited = started.elapsed();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(
        waited >= Duration::from_secs(2),
        "the next attempt started after {waited:?}"
    );
    assert!(waited < Duration::from_millis(2100), "{waited:?}");
    let r = record(&res);
    assert_eq!(r.retries[0].delay, Duration::from_secs(2));
    assert!(r.retries[0].from_retry_after);
}

#[tokio::test(start_paused = true)]
async fn a_retry_after_above_the_cap_is_returned_at_once() {
    let api = FakeApi::start().await.expect("start");
    api.inject(
        "/posts/1",
        Fault::status(StatusCode::SERVICE_UNAVAILABLE).retry_after("3600"),
    );
    let started = Instant::now();
    let res = client(RetryLayer::new().max_retry_after(Duration::from_secs(30)))
        .oneshot(req(&api, Method::GET, "/posts/1"))
        .await
        .expect("response");
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(
        record(&res).stopped,
        Some(Stopped::RetryAfterTooLong {
            requested: Duration::from_secs(3600),
            cap: Duration::from_secs(30)
        })
    );
    assert_eq!(api.hits("/posts/1"), 1);
}

#[tokio::test(start_paused = true)]
async fn post_is_sent_once_and_put_max_attempts_times() {
    let api = FakeApi::start().await.expect("start");
    api.inject("/posts/*", Fault::status(StatusCode::SERVICE_UNAVAILABLE));
    let svc = client(
        RetryLayer::new()
            .max_retries(3)
            .no_budget()
            .backoff(fixed_backoff(5)),
    );
    let post = svc
        .clone()
        .oneshot(req(&api, Method::POST, "/posts"))
        .await
        .expect("response");
    assert_eq!(post.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        api.hits("/posts"),
        1,
        "a POST without the opt-in is never retried"
    );
    let put = svc
        .oneshot(req(&api, Method::PUT, "/posts/1"))
        .await
        .expect("response");
    assert_eq!(put.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(api.hits("/posts/1"), 4);
    assert_eq!(record(&put).stopped, Some(Stopped::MaxRetries));
}

#[tokio::test(start_paused = true)]
async fn post_with_idempotency_key_is_retried_carrying_the_key() {
    let api = FakeApi::start().await.expect("start");
    api.inject("/posts", Fault::status(StatusCode::BAD_GATEWAY).times(2));
    let res = client(
        RetryLayer::new()
            .with_idempotency_key()
            .backoff(fixed_backoff(5)),
    )
    .oneshot(req(&api, Method::POST, "/posts"))
    .await
    .expect("response");
    assert_eq!(res.status(), StatusCode::CREATED);
    assert_eq!(api.hits("/posts"), 3);
    let key = api.last_request("/posts").expect("seen").headers["idempotency-key"].clone();
    assert_eq!(key.len(), 32);
}

#[tokio::test(start_paused = true)]
async fn a_dropped_connection_is_retried_for_get() {
    let api = FakeApi::start().await.expect("start");
    api.inject("/users/1", Fault::drop_connection().times(1));
    let res = client(RetryLayer::new().backoff(fixed_backoff(5)))
        .oneshot(req(&api, Method::GET, "/users/1"))
        .await
        .expect("response");
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(record(&res).retries[0].reason, RetryReason::Reset);
}

#[tokio::test(start_paused = true)]
async fn an_attempt_timeout_below_is_retried() {
    let api = FakeApi::start().await.expect("start");
    api.inject("/users/2", Fault::latency(Duration::from_secs(60)).times(1));
    let res = client(RetryLayer::new().backoff(fixed_backoff(5)))
        .oneshot(req(&api, Method::GET, "/users/2"))
        .await
        .expect("response");
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(record(&res).retries[0].reason, RetryReason::Timeout);
}

#[tokio::test(start_paused = true)]
async fn connect_errors_are_retried_for_any_method_then_reported_with_the_record() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let request = Request::post(format!("http://{addr}/posts"))
        .body(Full::new(Bytes::new()))
        .expect("request");
    let err = client(RetryLayer::new().max_retries(2).backoff(fixed_backoff(5)))
        .oneshot(request)
        .await
        .expect_err("nothing listens");
    let retry = err.downcast_ref::<RetryError>().expect("a RetryError");
    assert_eq!(retry.record.attempts, 3);
    assert!(retry
        .record
        .retries
        .iter()
        .all(|e| e.reason == RetryReason::Connect));
    assert_eq!(
        tollgate_retry::error_kind(&**retry.last_error()),
        Some(RetryReason::Connect)
    );
}

#[tokio::test(start_paused = true)]
async fn no_retry_starts_past_the_deadline() {
    let api = FakeApi::start().await.expect("start");
    api.inject("/posts/1", Fault::status(StatusCode::SERVICE_UNAVAILABLE));
    let layer = RetryLayer::new()
        .backoff(fixed_backoff(400))
        .max_total_time(Duration::from_secs(1));
    let res = client(layer)
        .oneshot(req(&api, Method::GET, "/posts/1"))
        .await
        .expect("response");
    // Waits of 400 ms then 800 ms: the second would end past 1 s.
    assert_eq!(api.hits("/posts/1"), 2);
    assert_eq!(
        record(&res).stopped,
        Some(Stopped::Deadline {
            wait: Duration::from_millis(800)
        })
    );
}

#[tokio::test(start_paused = true)]
async fn dropping_the_call_during_backoff_stops_further_attempts() {
    let api = FakeApi::start().await.expect("start");
    api.inject("/posts/1", Fault::status(StatusCode::SERVICE_UNAVAILABLE));
    let call = client(RetryLayer::new().backoff(fixed_backoff(1000))).oneshot(req(
        &api,
        Method::GET,
        "/posts/1",
    ));
    let outcome = tokio::time::timeout(Duration::from_millis(500), call).await;
    assert!(outcome.is_err(), "still waiting in backoff");
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(api.hits("/posts/1"), 1);
}

#[tokio::test(start_paused = true)]
async fn the_budget_caps_amplification_against_an_always_failing_upstream() {
    let api = FakeApi::start().await.expect("start");
    api.inject("*", Fault::status(StatusCode::SERVICE_UNAVAILABLE));
    let svc = client(
        RetryLayer::new()
            .max_retries(3)
            .backoff(fixed_backoff(1))
            .seed(3),
    );
    let requests: u64 = 1000;
    let mut tasks = Vec::new();
    for i in 0..requests {
        let svc = svc.clone();
        let r = req(&api, Method::GET, &format!("/posts/{}", i % 100 + 1));
        tasks.push(tokio::spawn(async move { svc.oneshot(r).await }));
        if i % 50 == 49 {
            // Spread the calls over time like real traffic (10 s in all).
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    let mut stopped_by_budget = 0;
    for t in tasks {
        let res = t.await.expect("task").expect("response");
        if record(&res).stopped == Some(Stopped::Budget) {
            stopped_by_budget += 1;
        }
    }
    let attempts = api.total_hits();
    // Default budget: 20% of requests plus 10 per second over a 10 s window.
    let bound = requests + requests / 5 + 10 * 10;
    assert!(
        attempts <= bound,
        "{attempts} attempts for {requests} requests (bound {bound})"
    );
    assert!(attempts > requests, "some retries were allowed");
    assert!(stopped_by_budget > 0);
}
