//! Adversary 4: users' layers (`ClientBuilder::layer`) that misbehave —
//! point a request at another origin, never become ready, panic, answer
//! themselves, fail, or hold a call that is then dropped — over loopback to
//! FakeApi. The stack around them must keep its promises: one outcome per
//! call, credentials only to the client's origin, and a client that still
//! works afterwards.

#![cfg(all(feature = "retry", feature = "auth", feature = "limit"))]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, Uri};
use http_body_util::Full;
use tollgate::{AttemptService, Client, ErrorKind, RequestBody};
use tollgate_retry::{Backoff, Jitter, RetryLayer};
use tollgate_testkit::FakeApi;
use tower::util::MapRequestLayer;
use tower::{BoxError, Service};

fn fast_retry(max: u32) -> RetryLayer {
    RetryLayer::new()
        .backoff(
            Backoff::exponential(Duration::from_millis(5))
                .expect("valid")
                .jitter(Jitter::None),
        )
        .no_budget()
        .max_retries(max)
}

/// A user layer that sends every request to another origin (a test
/// double, a "shadow" host, a mistaken rewrite). Auth sits above it and
/// has already put the client's bearer token on the request, so the token
/// goes to a host it was never meant for. The stack's own docs say
/// credentials are dropped on a change of origin (for redirects); nothing
/// checks the origin below auth.
#[tokio::test]

async fn a_user_layer_pointing_elsewhere_never_carries_the_credential_there() {
    let api = FakeApi::start().await.expect("start");
    let other = FakeApi::start().await.expect("start other");
    let other_authority: http::uri::Authority =
        other.addr().to_string().parse().expect("authority");
    let rewrite = MapRequestLayer::new(move |mut req: Request<RequestBody>| {
        let mut parts = req.uri().clone().into_parts();
        parts.authority = Some(other_authority.clone());
        *req.uri_mut() = Uri::from_parts(parts).expect("uri");
        req
    });
    let client = Client::builder(api.url())
        .bearer_auth("s3cret-canary")
        .layer(rewrite)
        .build()
        .expect("client");
    let _ = client.get("/posts/1").send().await;
    let seen = other
        .last_request("/posts/1")
        .expect("the other origin was called");
    assert_eq!(
        seen.header("authorization"),
        None,
        "the credential reached another origin"
    );
}

/// A layer that is never ready.
#[derive(Clone)]
struct NeverReady;

impl Service<Request<RequestBody>> for NeverReady {
    type Response = Response<Full<Bytes>>;
    type Error = BoxError;
    type Future = std::future::Ready<Result<Response<Full<Bytes>>, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Pending
    }

    fn call(&mut self, _: Request<RequestBody>) -> Self::Future {
        std::future::ready(Err("called without being ready".into()))
    }
}

/// With the default total timeout, the same layer ends in a timeout: one
/// outcome.
#[tokio::test(start_paused = true)]
async fn a_never_ready_user_layer_ends_at_the_total_timeout() {
    let api = FakeApi::start().await.expect("start");
    let client = Client::builder(api.url())
        .timeout(Duration::from_secs(5))
        .retry(fast_retry(2))
        .bearer_auth("t")
        .layer(tower::layer::layer_fn(|_inner: AttemptService| NeverReady))
        .build()
        .expect("client");
    let outcome =
        tokio::time::timeout(Duration::from_secs(60), client.get("/posts/1").send()).await;
    let err = outcome.expect("ended").expect_err("never ready");
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
}

/// A layer that panics in `call` on its first request, then passes
/// requests on.
#[derive(Clone)]
struct PanicsOnce {
    inner: AttemptService,
    calls: Arc<AtomicUsize>,
}

impl Service<Request<RequestBody>> for PanicsOnce {
    type Response = <AttemptService as Service<Request<RequestBody>>>::Response;
    type Error = BoxError;
    type Future = <AttemptService as Service<Request<RequestBody>>>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<RequestBody>) -> Self::Future {
        if self.calls.fetch_add(1, Ordering::SeqCst) == 0 {
            panic!("a user layer's bug");
        }
        self.inner.call(req)
    }
}

/// A user layer that panics after the pool gave it a slot (the pool's
/// readiness is polled through the layer): the panic is the caller's, but
/// the client — its one pool slot, its rate limiter, its token — still
/// serves the next call.
#[tokio::test]
async fn a_client_still_works_after_a_user_layer_panicked() {
    let api = FakeApi::start().await.expect("start");
    api.require_bearer("t");
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = {
        let calls = Arc::clone(&calls);
        tower::layer::layer_fn(move |inner: AttemptService| PanicsOnce {
            inner,
            calls: Arc::clone(&calls),
        })
    };
    let client = Client::builder(api.url())
        .retry(fast_retry(2))
        .bearer_auth("t")
        .concurrency_limit(tollgate_limit::ConcurrencyLimitLayer::new(1))
        .layer(layer)
        .build()
        .expect("client");
    let c = client.clone();
    let first = tokio::spawn(async move { c.get("/posts/1").send().await }).await;
    assert!(
        first.is_err_and(|e| e.is_panic()),
        "the panic is the caller's"
    );
    let next = tokio::time::timeout(Duration::from_secs(10), client.get("/posts/1").send())
        .await
        .expect("the pool slot came back")
        .expect("answered");
    assert_eq!(next.status(), StatusCode::OK);
}

/// A user layer that answers itself, with a response that carries none of
/// the records the transport or the pool would add: the call ends with
/// that answer, no layer above expects a record.
#[tokio::test]
async fn a_user_layer_answering_itself_is_one_clean_outcome() {
    let api = FakeApi::start().await.expect("start");
    let answer = tower::layer::layer_fn(|_inner: AttemptService| {
        tower::service_fn(|_req: Request<RequestBody>| async {
            Ok::<_, BoxError>(
                Response::builder()
                    .status(StatusCode::OK)
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from_static(b"{\"id\":42}")))
                    .expect("response"),
            )
        })
    });
    let client = Client::builder(api.url())
        .retry(fast_retry(2))
        .bearer_auth("t")
        .rate_limit(tollgate_limit::RateLimitLayer::new(
            tollgate_limit::Quota::per_second(100).expect("quota"),
        ))
        .concurrency_limit(tollgate_limit::ConcurrencyLimitLayer::new(2))
        .layer(answer)
        .build()
        .expect("client");
    let res = client.get("/posts/1").send().await.expect("answered");
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.data().expect("json")["id"], 42);
    assert_eq!(api.total_hits(), 0);
}

/// A user layer's own error (not a transport failure) on a POST: one
/// outcome, never retried, and not read as "never sent".
#[tokio::test]
async fn a_user_layers_own_error_is_final_for_a_post() {
    let api = FakeApi::start().await.expect("start");
    let calls = Arc::new(AtomicUsize::new(0));
    let failing = {
        let calls = Arc::clone(&calls);
        tower::layer::layer_fn(move |_inner: AttemptService| {
            let calls = Arc::clone(&calls);
            tower::service_fn(move |_req: Request<RequestBody>| {
                calls.fetch_add(1, Ordering::SeqCst);
                async { Err::<Response<Full<Bytes>>, BoxError>("signing failed".into()) }
            })
        })
    };
    let client = Client::builder(api.url())
        .retry(fast_retry(3).with_idempotency_key())
        .layer(failing)
        .build()
        .expect("client");
    let err = client
        .post("/posts")
        .body("payload")
        .send()
        .await
        .expect_err("the layer failed");
    assert_ne!(err.kind(), ErrorKind::Connect, "{err}");
    assert_eq!(calls.load(Ordering::SeqCst), 1, "never retried");
}

/// A POST to a port nothing listens on is refused at connect: never sent,
/// so retried whatever its method (each attempt passes a user layer once).
#[tokio::test]
async fn a_refused_post_is_retried_and_ends_as_connect() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let calls = Arc::new(AtomicUsize::new(0));
    let counting = {
        let calls = Arc::clone(&calls);
        MapRequestLayer::new(move |req: Request<RequestBody>| {
            calls.fetch_add(1, Ordering::SeqCst);
            req
        })
    };
    let client = Client::builder(format!("http://127.0.0.1:{port}"))
        .retry(fast_retry(2))
        .layer(counting)
        .build()
        .expect("client");
    let err = client
        .post("/posts")
        .body("payload")
        .send()
        .await
        .expect_err("refused");
    assert_eq!(err.kind(), ErrorKind::Connect, "{err}");
    assert_eq!(calls.load(Ordering::SeqCst), 3, "retried: never sent");
}

/// Cancel while a user layer is pending: the call times out while the
/// layer holds the response (and, below it, the pool's one slot); the next
/// call gets the slot.
#[tokio::test]
async fn dropping_a_call_held_by_a_user_layer_frees_the_pool() {
    let api = FakeApi::start().await.expect("start");
    let calls = Arc::new(AtomicUsize::new(0));
    let holding = {
        let calls = Arc::clone(&calls);
        tower::layer::layer_fn(move |inner: AttemptService| {
            let calls = Arc::clone(&calls);
            let inner = inner.clone();
            tower::service_fn(move |req: Request<RequestBody>| {
                let first = calls.fetch_add(1, Ordering::SeqCst) == 0;
                let mut inner = inner.clone();
                async move {
                    let res = tower::ServiceExt::ready(&mut inner)
                        .await?
                        .call(req)
                        .await?;
                    if first {
                        std::future::pending::<()>().await;
                    }
                    Ok::<_, BoxError>(res)
                }
            })
        })
    };
    let client = Client::builder(api.url())
        .timeout(Duration::from_millis(300))
        .concurrency_limit(tollgate_limit::ConcurrencyLimitLayer::new(1))
        .layer(holding)
        .build()
        .expect("client");
    let err = client.get("/posts/1").send().await.expect_err("held");
    assert_eq!(err.kind(), ErrorKind::Timeout);
    let res = client
        .get("/posts/1")
        .send()
        .await
        .expect("the slot came back");
    assert_eq!(res.status(), StatusCode::OK);
}
