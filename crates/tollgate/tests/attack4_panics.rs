//! Adversary 4: a user's layer whose response future panics while other
//! calls wait on it (a coalesced cache miss), and one whose `poll_ready`
//! fails. Every call ends with one outcome; no waiter hangs.
#![cfg(all(feature = "cache", feature = "retry"))]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, StatusCode};
use tollgate::{AttemptService, Client, RequestBody};
use tollgate_cache::CacheLayer;
use tollgate_testkit::FakeApi;
use tower::{BoxError, Service};

/// Passes requests on; the first one's future sleeps, then panics.
#[derive(Clone)]
struct PanicsLater {
    inner: AttemptService,
    calls: Arc<AtomicUsize>,
}

impl Service<Request<RequestBody>> for PanicsLater {
    type Response = <AttemptService as Service<Request<RequestBody>>>::Response;
    type Error = BoxError;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, BoxError>> + Send>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<RequestBody>) -> Self::Future {
        let first = self.calls.fetch_add(1, Ordering::SeqCst) == 0;
        let fut = self.inner.call(req);
        Box::pin(async move {
            if first {
                tokio::time::sleep(Duration::from_millis(100)).await;
                panic!("a user layer's bug, mid-flight");
            }
            fut.await
        })
    }
}

/// Two identical GETs coalesce onto one cache miss; the leader's attempt
/// panics in a user layer. The leader's task panics; the follower gets
/// an answer (or an error), never waits for ever.
#[tokio::test]
async fn a_panicking_leader_never_strands_the_coalesced_followers() {
    let api = FakeApi::start().await.expect("start");
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = {
        let calls = Arc::clone(&calls);
        tower::layer::layer_fn(move |inner: AttemptService| PanicsLater {
            inner,
            calls: Arc::clone(&calls),
        })
    };
    let client = Client::builder(api.url())
        .no_timeout()
        .cache(CacheLayer::new(Duration::from_secs(60)))
        .layer(layer)
        .build()
        .expect("client");
    let leader = {
        let c = client.clone();
        tokio::spawn(async move { c.get("/posts/1").send().await })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    let follower = {
        let c = client.clone();
        tokio::spawn(async move { c.get("/posts/1").send().await })
    };
    let led = leader.await;
    assert!(led.is_err_and(|e| e.is_panic()));
    let followed = tokio::time::timeout(Duration::from_secs(10), follower)
        .await
        .expect("the follower ended")
        .expect("no panic in the follower");
    if let Ok(res) = followed {
        assert_eq!(res.status(), StatusCode::OK);
    }
}

/// A layer whose `poll_ready` fails: one error per call, and the next
/// call is tried afresh (not stuck on the failed service).
#[derive(Clone)]
struct FailsReadyOnce {
    inner: AttemptService,
    calls: Arc<AtomicUsize>,
}

impl Service<Request<RequestBody>> for FailsReadyOnce {
    type Response = <AttemptService as Service<Request<RequestBody>>>::Response;
    type Error = BoxError;
    type Future = <AttemptService as Service<Request<RequestBody>>>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        if self.calls.fetch_add(1, Ordering::SeqCst) == 0 {
            return Poll::Ready(Err("the layer's own set-up failed".into()));
        }
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<RequestBody>) -> Self::Future {
        self.inner.call(req)
    }
}

#[tokio::test]
async fn a_failing_poll_ready_is_one_error_and_the_client_recovers() {
    let api = FakeApi::start().await.expect("start");
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = {
        let calls = Arc::clone(&calls);
        tower::layer::layer_fn(move |inner: AttemptService| FailsReadyOnce {
            inner,
            calls: Arc::clone(&calls),
        })
    };
    let client = Client::builder(api.url())
        .retry(tollgate_retry::RetryLayer::new().no_budget().max_retries(2))
        .layer(layer)
        .build()
        .expect("client");
    let first = tokio::time::timeout(Duration::from_secs(10), client.get("/posts/1").send())
        .await
        .expect("one outcome");
    if let Err(err) = &first {
        assert!(!err.to_string().is_empty());
    }
    let next = client.get("/posts/1").send().await.expect("recovered");
    assert_eq!(next.status(), StatusCode::OK);
}
