//! Users' own tower layers (`ClientBuilder::layer`), over loopback to
//! FakeApi: they sit below retry, the rate limiter, auth and the attempt
//! timeout, above the concurrency pool and the transport, so they see each
//! attempt once, as it is sent.

#[cfg(any(feature = "retry", feature = "limit"))]
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use http::{HeaderName, HeaderValue, Request, StatusCode};
use tollgate::{Client, RequestBody};
use tollgate_testkit::FakeApi;
use tower::util::MapRequestLayer;
use tower_http::set_header::SetRequestHeaderLayer;

/// A layer that counts the requests passing it.
#[cfg(any(all(feature = "retry", feature = "cache"), feature = "limit"))]
fn counting(
    calls: &Arc<AtomicUsize>,
) -> MapRequestLayer<impl Fn(Request<RequestBody>) -> Request<RequestBody> + Clone> {
    let calls = Arc::clone(calls);
    MapRequestLayer::new(move |req: Request<RequestBody>| {
        calls.fetch_add(1, Ordering::SeqCst);
        req
    })
}

#[tokio::test]
async fn a_user_layer_changes_every_request_without_replacing_the_transport() {
    let api = FakeApi::start().await.expect("start");
    let client = Client::builder(api.url())
        .layer(SetRequestHeaderLayer::overriding(
            HeaderName::from_static("x-tenant"),
            HeaderValue::from_static("acme"),
        ))
        .build()
        .expect("client");
    for _ in 0..2 {
        let res = client.get("/posts/1").send().await.expect("sent");
        assert_eq!(res.status(), StatusCode::OK);
        let seen = api.last_request("/posts/1").expect("recorded");
        assert_eq!(seen.header("x-tenant"), Some("acme"));
    }
}

#[tokio::test]
async fn layers_added_first_are_outermost() {
    let api = FakeApi::start().await.expect("start");
    let order = Arc::new(Mutex::new(Vec::new()));
    let mark = |name: &'static str| {
        let order = Arc::clone(&order);
        MapRequestLayer::new(move |req: Request<RequestBody>| {
            order.lock().expect("lock").push(name);
            req
        })
    };
    let client = Client::builder(api.url())
        .layer(mark("first"))
        .layer(mark("second"))
        .build()
        .expect("client");
    client.get("/posts/1").send().await.expect("sent");
    assert_eq!(*order.lock().expect("lock"), ["first", "second"]);
}

#[tokio::test]
async fn a_layer_that_changes_the_response_body_type_fits() {
    // tower-http's trace layer wraps the response body in its own type.
    let api = FakeApi::start().await.expect("start");
    let client = Client::builder(api.url())
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .build()
        .expect("client");
    let res = client.get("/posts/1").send().await.expect("sent");
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.data().expect("json")["id"], 1);
}

#[cfg(feature = "retry")]
mod with_retry {
    use std::time::Duration;

    use super::*;
    use tollgate_retry::{Backoff, Jitter, RetryLayer};
    use tollgate_testkit::Fault;

    fn quick() -> RetryLayer {
        let backoff = Backoff::exponential(Duration::from_millis(50))
            .expect("valid")
            .jitter(Jitter::None);
        RetryLayer::new().backoff(backoff)
    }

    /// The value a user layer sets is made afresh for each pass, so the
    /// server seeing `pass-1`, `pass-2`, `pass-3` shows that the layer is
    /// below retry and that its header reached the server on every attempt.
    #[tokio::test(start_paused = true)]
    async fn a_header_set_by_a_user_layer_reaches_the_server_on_every_retry_attempt() {
        let api = FakeApi::start().await.expect("start");
        api.inject(
            "/posts/1",
            Fault::status(StatusCode::SERVICE_UNAVAILABLE).times(2),
        );
        let passes = Arc::new(AtomicUsize::new(0));
        let make = {
            let passes = Arc::clone(&passes);
            move |_: &Request<RequestBody>| {
                let n = passes.fetch_add(1, Ordering::SeqCst) + 1;
                HeaderValue::try_from(format!("pass-{n}")).ok()
            }
        };
        let client = Client::builder(api.url())
            .retry(quick())
            .layer(SetRequestHeaderLayer::overriding(
                HeaderName::from_static("x-pass"),
                make,
            ))
            .build()
            .expect("client");
        let call = tokio::spawn(async move { client.get("/posts/1").send().await });
        // Attempts are 50 ms apart (paused time): look at each one as the
        // server records it.
        for attempt in 1..=3 {
            while api.hits("/posts/1") < attempt {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let seen = api.last_request("/posts/1").expect("recorded");
            let expected = format!("pass-{attempt}");
            assert_eq!(seen.header("x-pass"), Some(expected.as_str()));
        }
        let res = call.await.expect("joined").expect("sent");
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.summary().attempts, 3);
        assert_eq!(passes.load(Ordering::SeqCst), 3);
    }

    /// A counting layer sees one pass per attempt, and never a cache hit.
    #[cfg(feature = "cache")]
    #[tokio::test(start_paused = true)]
    async fn a_counting_layer_sees_each_attempt_and_no_cache_hit() {
        let api = FakeApi::start().await.expect("start");
        api.inject(
            "/posts/1",
            Fault::status(StatusCode::SERVICE_UNAVAILABLE).times(2),
        );
        let calls = Arc::new(AtomicUsize::new(0));
        let client = Client::builder(api.url())
            .cache(tollgate_cache::CacheLayer::new(Duration::from_secs(60)))
            .retry(quick())
            .layer(counting(&calls))
            .build()
            .expect("client");
        let res = client.get("/posts/1").send().await.expect("sent");
        assert_eq!((res.status(), res.summary().attempts), (StatusCode::OK, 3));
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert_eq!(api.hits("/posts/1"), 3);

        let hit = client.get("/posts/1").send().await.expect("hit");
        assert!(hit.summary().from_cache);
        assert_eq!(calls.load(Ordering::SeqCst), 3, "a hit never reaches it");
        assert_eq!(api.hits("/posts/1"), 3);
    }
}

/// Below auth: the layer sees the credential as it is sent, marked
/// sensitive.
#[cfg(feature = "auth")]
#[tokio::test]
async fn a_user_layer_never_sees_the_auth_layers_credential() {
    let api = FakeApi::start().await.expect("start");
    api.require_bearer("s3cret");
    let seen = Arc::new(Mutex::new(None));
    let record = {
        let seen = Arc::clone(&seen);
        MapRequestLayer::new(move |req: Request<RequestBody>| {
            let auth = req.headers().get(http::header::AUTHORIZATION);
            *seen.lock().expect("lock") = Some(auth.map(HeaderValue::is_sensitive));
            req
        })
    };
    let client = Client::builder(api.url())
        .bearer_auth("s3cret")
        .layer(record)
        .build()
        .expect("client");
    let res = client.get("/posts/1").send().await.expect("sent");
    // The server got the credential; the layer, above auth, did not.
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(*seen.lock().expect("lock"), Some(None));
}

/// Below the rate limiter: a call refused for want of a permit never
/// reaches the layer.
#[cfg(feature = "limit")]
#[tokio::test]
async fn a_call_the_rate_limiter_refuses_never_reaches_a_user_layer() {
    use tollgate_limit::{Quota, RateLimitLayer};

    let api = FakeApi::start().await.expect("start");
    let calls = Arc::new(AtomicUsize::new(0));
    let client = Client::builder(api.url())
        .rate_limit(RateLimitLayer::new(Quota::per_minute(1).expect("quota")).reject())
        .layer(counting(&calls))
        .build()
        .expect("client");
    client.get("/posts/1").send().await.expect("the one permit");
    let refused = client.get("/posts/1").send().await.expect_err("no permit");
    assert_eq!(refused.kind(), tollgate::ErrorKind::RateLimited);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}
