//! Adversary 4: "was it sent?" over real connections, through a
//! `FaultProxy` in front of FakeApi. A POST that reached the upstream is
//! never sent again (the upstream's hit count says how often it arrived);
//! a GET is retried; a POST with an idempotency key is retried with the
//! same key and the same, whole body.
#![cfg(feature = "retry")]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::Request;
use tollgate::{Client, ErrorKind, RequestBody};
use tollgate_retry::{Backoff, Jitter, RetryLayer};
use tollgate_testkit::{FakeApi, FaultProxy, ProxyFault};
use tower::util::MapRequestLayer;

fn fast_retry() -> RetryLayer {
    RetryLayer::new()
        .backoff(
            Backoff::exponential(Duration::from_millis(5))
                .expect("valid")
                .jitter(Jitter::None),
        )
        .no_budget()
        .max_retries(2)
}

async fn setup() -> (FakeApi, FaultProxy) {
    let api = FakeApi::start().await.expect("start");
    let proxy = FaultProxy::start(api.addr()).await.expect("proxy");
    (api, proxy)
}

#[tokio::test]
async fn a_post_the_upstream_handled_is_never_sent_again() {
    for fault in [
        ProxyFault::reset_after(0),
        ProxyFault::reset_after(20),
        ProxyFault::reset_after(150),
        ProxyFault::close_before_response(),
    ] {
        let (api, proxy) = setup().await;
        proxy.inject(fault.times(1));
        let client = Client::builder(proxy.url())
            .retry(fast_retry())
            .build()
            .expect("client");
        let result = client
            .post("/posts")
            .json(&serde_json::json!({"title": "once"}))
            .send()
            .await;
        assert_eq!(
            api.hits("/posts"),
            1,
            "{fault:?}: the POST reached the upstream more than once ({result:?})"
        );
        if let Err(err) = result {
            assert_ne!(err.kind(), ErrorKind::Connect, "{fault:?}: {err}");
        }
    }
}

#[tokio::test]
async fn a_get_cut_the_same_ways_is_retried_and_answered() {
    for fault in [
        ProxyFault::reset_after(0),
        ProxyFault::reset_after(150),
        ProxyFault::close_before_response(),
    ] {
        let (api, proxy) = setup().await;
        proxy.inject(fault.times(1));
        let client = Client::builder(proxy.url())
            .retry(fast_retry())
            .build()
            .expect("client");
        let res = client.get("/posts/1").send().await.expect("retried");
        assert_eq!(res.status(), 200, "{fault:?}");
        assert_eq!(api.hits("/posts/1"), 2, "{fault:?}");
    }
}

/// With an idempotency key, a POST whose answer was lost is retried: the
/// same key and the same whole body each time.
#[tokio::test]
async fn an_idempotent_post_is_retried_with_its_key_and_whole_body() {
    let (api, proxy) = setup().await;
    proxy.inject(ProxyFault::reset_after(0).times(1));
    let sent = Arc::new(Mutex::new(Vec::new()));
    let record = {
        let sent = Arc::clone(&sent);
        MapRequestLayer::new(move |req: Request<RequestBody>| {
            let key = req
                .headers()
                .get("idempotency-key")
                .map(|v| v.to_str().unwrap_or("?").to_owned());
            sent.lock().expect("lock").push(key);
            req
        })
    };
    let client = Client::builder(proxy.url())
        .retry(fast_retry().with_idempotency_key())
        .layer(record)
        .build()
        .expect("client");
    let body = serde_json::json!({"title": "x".repeat(100_000)});
    let res = client
        .post("/posts")
        .json(&body)
        .send()
        .await
        .expect("retried");
    assert_eq!(res.status(), 201);
    assert_eq!(api.hits("/posts"), 2);
    let keys = sent.lock().expect("lock").clone();
    assert_eq!(keys.len(), 2);
    assert!(keys[0].is_some() && keys[0] == keys[1], "{keys:?}");
    let last = api.last_request("/posts").expect("seen");
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&last.body).expect("json"),
        body,
        "the retry carried the whole body"
    );
}
