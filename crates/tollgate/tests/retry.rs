//! The facade with its retry layer, against FakeApi over loopback.
#![cfg(feature = "retry")]

use std::time::Duration;

use http::StatusCode;
use serde_json::json;
use tollgate::{Client, ErrorKind};
use tollgate_retry::{Backoff, Jitter, RetryLayer};
use tollgate_testkit::{FakeApi, Fault};

fn quick() -> RetryLayer {
    let backoff = Backoff::exponential(Duration::from_millis(50))
        .expect("valid")
        .jitter(Jitter::None);
    RetryLayer::new().backoff(backoff)
}

async fn setup(layer: RetryLayer) -> (FakeApi, Client) {
    let api = FakeApi::start().await.expect("start");
    let client = Client::builder(api.url())
        .retry(layer)
        .build()
        .expect("client");
    (api, client)
}

#[tokio::test(start_paused = true)]
async fn attempts_show_in_the_summary_and_the_record() {
    let (api, client) = setup(quick()).await;
    api.inject(
        "/posts/1",
        Fault::status(StatusCode::SERVICE_UNAVAILABLE).times(2),
    );
    let res = client.get("/posts/1").send().await.expect("sent");
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.summary().attempts, 3);
    assert_eq!(res.to_json()["attempts"], 3);
    assert_eq!(api.hits("/posts/1"), 3);
}

#[tokio::test(start_paused = true)]
async fn a_post_is_sent_once_whatever_the_upstream_answers() {
    let (api, client) = setup(quick()).await;
    api.inject("/posts", Fault::status(StatusCode::SERVICE_UNAVAILABLE));
    let res = client
        .post("/posts")
        .json(&json!({"title": "x"}))
        .send()
        .await
        .expect("sent");
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(res.summary().attempts, 1);
    assert_eq!(api.hits("/posts"), 1);
}

#[tokio::test(start_paused = true)]
async fn a_too_long_retry_after_is_explained_by_error_for_status() {
    let (api, client) = setup(quick().max_retry_after(Duration::from_secs(60))).await;
    api.inject(
        "/posts/1",
        Fault::status(StatusCode::TOO_MANY_REQUESTS).retry_after("3600"),
    );
    let err = client
        .get("/posts/1")
        .send()
        .await
        .expect("sent")
        .error_for_status()
        .expect_err("429");
    assert_eq!(err.kind(), ErrorKind::Status);
    assert_eq!(err.retry_after(), Some(Duration::from_secs(3600)));
    let text = err.to_string();
    assert!(text.contains("3600s") && text.contains("60s"), "{text}");
    assert_eq!(api.hits("/posts/1"), 1);
}

#[tokio::test(start_paused = true)]
async fn the_total_deadline_spans_every_attempt_and_wait() {
    let backoff = Backoff::exponential(Duration::from_millis(400))
        .expect("valid")
        .jitter(Jitter::None);
    let api = FakeApi::start().await.expect("start");
    let client = Client::builder(api.url())
        .retry(
            RetryLayer::new()
                .backoff(backoff)
                .max_retries(10)
                .no_budget(),
        )
        .timeout(Duration::from_secs(1))
        .build()
        .expect("client");
    api.inject("/posts/1", Fault::status(StatusCode::SERVICE_UNAVAILABLE));
    let started = tokio::time::Instant::now();
    let res = client
        .get("/posts/1")
        .send()
        .await
        .expect("the last response, not a timeout");
    assert!(started.elapsed() < Duration::from_secs(1));
    // Waits of 400 ms, then 800 ms would pass the 1 s deadline: 2 attempts.
    assert_eq!(res.summary().attempts, 2);
    let err = res.error_for_status().expect_err("503");
    assert!(err.to_string().contains("deadline"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn hung_attempts_are_cut_by_the_attempt_timeout_and_retried() {
    let api = FakeApi::start().await.expect("start");
    let client = Client::builder(api.url())
        .retry(quick())
        .attempt_timeout(Duration::from_millis(500))
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    api.inject(
        "/users/1",
        Fault::latency(Duration::from_secs(3600)).times(1),
    );
    let res = client
        .get("/users/1")
        .send()
        .await
        .expect("second attempt answers");
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.summary().attempts, 2);
}

#[tokio::test(start_paused = true)]
async fn a_failure_after_retries_keeps_its_kind_and_says_how_many_attempts() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let client = Client::builder(format!("http://{addr}"))
        .retry(quick().max_retries(2))
        .build()
        .expect("client");
    let err = client.get("/posts/1").send().await.expect_err("refused");
    assert_eq!(err.kind(), ErrorKind::Connect, "{err:?}");
    assert!(err.to_string().contains("after 3 attempts"), "{err}");
}
