//! AuthLayer over in-process services, with tokio's clock paused: token
//! expiry and refresh skew, single-flight under concurrency, cancellation.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::header::AUTHORIZATION;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use tollgate_auth::{token_fn, AuthLayer, Token};
use tower::{service_fn, BoxError, Layer, Service, ServiceExt};

/// A token source handing out `t1`, `t2`, ... each living `lifetime`, after
/// `delay`; it counts its calls.
fn source(lifetime: Duration, delay: Duration) -> (Arc<AtomicUsize>, AuthLayer) {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let layer = AuthLayer::token_source(token_fn(move || {
        let n = c.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            tokio::time::sleep(delay).await;
            Ok(Token::bearer(format!("t{n}"))?.expires_in(lifetime))
        }
    }))
    .any_origin();
    (calls, layer)
}

/// Echoes the Authorization header it got.
fn echo() -> impl Service<
    Request<Full<Bytes>>,
    Response = Response<String>,
    Error = Infallible,
    Future = impl Send,
> + Clone
       + Send
       + 'static {
    service_fn(|req: Request<Full<Bytes>>| async move {
        let seen = req
            .headers()
            .get(AUTHORIZATION)
            .map(|v| v.to_str().unwrap_or("?").to_owned())
            .unwrap_or_default();
        Ok::<_, Infallible>(Response::new(seen))
    })
}

fn get() -> Request<Full<Bytes>> {
    Request::get("http://api.test/x")
        .body(Full::default())
        .expect("request")
}

#[tokio::test(start_paused = true)]
async fn tokens_are_refreshed_within_the_skew_of_their_expiry() {
    let (calls, layer) = source(Duration::from_secs(60), Duration::ZERO);
    let service = layer.refresh_skew(Duration::from_secs(10)).layer(echo());
    let seen = service.clone().oneshot(get()).await.expect("response");
    assert_eq!(seen.into_body(), "Bearer t1");

    tokio::time::advance(Duration::from_secs(49)).await;
    let seen = service.clone().oneshot(get()).await.expect("response");
    assert_eq!(
        seen.into_body(),
        "Bearer t1",
        "11 s of 60 left: still fresh"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    tokio::time::advance(Duration::from_secs(2)).await;
    let seen = service.clone().oneshot(get()).await.expect("response");
    assert_eq!(
        seen.into_body(),
        "Bearer t2",
        "9 s left, skew 10 s: refreshed"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn n_waiting_requests_cause_exactly_one_refresh() {
    let (calls, layer) = source(Duration::from_secs(3600), Duration::from_millis(200));
    let service = layer.layer(echo());
    let tasks: Vec<_> = (0..50)
        .map(|_| tokio::spawn(service.clone().oneshot(get())))
        .collect();
    for task in tasks {
        let response = task.await.expect("task").expect("response");
        assert_eq!(response.into_body(), "Bearer t1");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn a_hung_token_source_fails_after_the_timeout() {
    let (_, layer) = source(Duration::from_secs(60), Duration::from_secs(3600));
    let service = layer.refresh_timeout(Duration::from_secs(2)).layer(echo());
    let started = tokio::time::Instant::now();
    let err = service.oneshot(get()).await.expect_err("timed out");
    assert_eq!(err.to_string(), "auth: token refresh timed out after 2s");
    assert_eq!(started.elapsed(), Duration::from_secs(2));
}

#[tokio::test(start_paused = true)]
async fn a_dropped_request_leaves_its_refresh_to_the_next() {
    let (calls, layer) = source(Duration::from_secs(3600), Duration::from_millis(100));
    let service = layer.layer(echo());
    let first = tokio::spawn(service.clone().oneshot(get()));
    let second = tokio::spawn(service.clone().oneshot(get()));
    tokio::task::yield_now().await;
    first.abort();
    let response = second.await.expect("task").expect("response");
    // The refresh the first one began went on without it: one fetch.
    assert_eq!(response.into_body(), "Bearer t1");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn concurrent_401s_to_one_token_cause_one_refresh() {
    let (calls, layer) = source(Duration::from_secs(3600), Duration::from_millis(10));
    // The upstream refuses t1 and accepts anything newer.
    let refused = Arc::new(Mutex::new(0usize));
    let r = refused.clone();
    let upstream = service_fn(move |req: Request<Full<Bytes>>| {
        let r = r.clone();
        async move {
            let ok = req
                .headers()
                .get(AUTHORIZATION)
                .is_some_and(|v| v != "Bearer t1");
            if !ok {
                *r.lock().expect("lock") += 1;
            }
            let mut response = Response::new(String::new());
            if !ok {
                *response.status_mut() = StatusCode::UNAUTHORIZED;
            }
            Ok::<_, BoxError>(response)
        }
    });
    let service = layer.layer(upstream);
    service
        .clone()
        .oneshot(get())
        .await
        .expect("t1 fetched, refused, t2 fetched");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    let tasks: Vec<_> = (0..10)
        .map(|_| tokio::spawn(service.clone().oneshot(get())))
        .collect();
    for task in tasks {
        assert_eq!(
            task.await.expect("task").expect("response").status(),
            StatusCode::OK
        );
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(*refused.lock().expect("lock"), 1);
}

#[test]
fn the_service_offers_its_layer_and_inner_accessors() {
    let credential = tollgate_auth::Credential::bearer("t").expect("valid");
    let layer = tollgate_auth::Auth::<()>::layer(credential);
    let mut auth = layer.layer(7u8);
    *auth.get_mut() += 1;
    assert_eq!(*auth.get_ref(), 8);
    assert_eq!(auth.into_inner(), 8);
}
