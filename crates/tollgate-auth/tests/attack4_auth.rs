//! Adversary 4: auth over any body (a 401 replays only bodies in memory,
//! never an empty one in place of a real one), cancelled while it waits
//! for a token, with a token source that panics. In-process services,
//! paused clock.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::header::AUTHORIZATION;
use http::{Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Full};
use tollgate_auth::{token_fn, AuthLayer, Token};
use tollgate_core::ReplayableBody;
use tower::{service_fn, BoxError, Layer, Service, ServiceExt};

/// What the inner service saw on each call: the Authorization values and
/// the body.
type Seen = Arc<Mutex<Vec<(Vec<String>, Bytes)>>>;

/// Answers 401 to the token `stale`, 200 to any other; records each call.
fn inner<B>(
    seen: &Seen,
) -> impl Service<Request<B>, Response = Response<Full<Bytes>>, Error = BoxError, Future = impl Send>
       + Clone
       + Send
       + 'static
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let seen = Arc::clone(seen);
    service_fn(move |req: Request<B>| {
        let seen = Arc::clone(&seen);
        async move {
            let auth: Vec<String> = req
                .headers()
                .get_all(AUTHORIZATION)
                .iter()
                .map(|v| {
                    assert!(v.is_sensitive(), "the credential is marked sensitive");
                    v.to_str().unwrap_or("?").to_owned()
                })
                .collect();
            let stale = auth.iter().any(|a| a == "Bearer stale");
            let body = req
                .into_body()
                .collect()
                .await
                .map_err(Into::into)?
                .to_bytes();
            seen.lock().expect("lock").push((auth, body));
            let status = if stale { 401 } else { 200 };
            Ok::<_, BoxError>(
                Response::builder()
                    .status(status)
                    .body(Full::new(Bytes::new()))
                    .expect("response"),
            )
        }
    })
}

/// `stale` first, then `good`.
fn rotating(fetches: &Arc<AtomicUsize>) -> AuthLayer {
    let fetches = Arc::clone(fetches);
    AuthLayer::token_source(token_fn(move || {
        let n = fetches.fetch_add(1, Ordering::SeqCst);
        async move { Ok(Token::bearer(if n == 0 { "stale" } else { "good" })?) }
    }))
    .any_origin()
}

async fn replayed<B>(body: B) -> Vec<(Vec<String>, Bytes)>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let seen: Seen = Arc::default();
    let fetches = Arc::new(AtomicUsize::new(0));
    let svc = rotating(&fetches).layer(inner::<B>(&seen));
    let req = Request::put("http://api.test/x").body(body).expect("req");
    let res = svc.oneshot(req).await.expect("answered");
    assert_eq!(res.status(), StatusCode::OK, "replayed with the new token");
    let seen = seen.lock().expect("lock").clone();
    seen
}

/// Every body in memory is replayed after a 401 whole, with the new token
/// only (one Authorization header, never the old and the new).
#[tokio::test]
async fn a_401_replays_bodies_in_memory_whole_with_one_new_token() {
    let runs = [
        replayed(Full::new(Bytes::from("payload"))).await,
        replayed(ReplayableBody::from("payload")).await,
        replayed(
            ReplayableBody::buffer(Full::new(Bytes::from("payload")).boxed_unsync(), 1024)
                .await
                .expect("buffered"),
        )
        .await,
    ];
    for seen in runs {
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert_eq!(seen[0].0, ["Bearer stale"]);
        assert_eq!(seen[1].0, ["Bearer good"], "one header, the new token");
        assert!(seen.iter().all(|(_, b)| b == "payload"), "{seen:?}");
    }
}

/// A streaming body (a boxed stream, a `ReplayableBody` that streams) is
/// sent once: its 401 comes back as it is, never resent empty.
#[tokio::test]
async fn a_401_to_a_streaming_body_is_returned_not_resent_empty() {
    for body in [
        ReplayableBody::streaming(Full::new(Bytes::from("payload"))),
        ReplayableBody::buffer(Full::new(Bytes::from("payload")).boxed_unsync(), 2)
            .await
            .expect("streams"),
    ] {
        let seen: Seen = Arc::default();
        let fetches = Arc::new(AtomicUsize::new(0));
        let svc = rotating(&fetches).layer(inner::<ReplayableBody>(&seen));
        let req = Request::put("http://api.test/x").body(body).expect("req");
        let res = svc.oneshot(req).await.expect("answered");
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
        let seen = seen.lock().expect("lock");
        assert_eq!(seen.len(), 1, "sent once");
        assert_eq!(seen[0].1, "payload");
    }
}

/// Cancel while auth waits for a token: nothing is sent for the dropped
/// call, the refresh is not lost, and the next call is served with the
/// token promptly.
#[tokio::test(start_paused = true)]
async fn dropping_a_call_waiting_for_a_token_loses_nothing() {
    let fetches = Arc::new(AtomicUsize::new(0));
    let layer = {
        let fetches = Arc::clone(&fetches);
        AuthLayer::token_source(token_fn(move || {
            fetches.fetch_add(1, Ordering::SeqCst);
            async {
                tokio::time::sleep(Duration::from_secs(2)).await;
                Ok(Token::bearer("good")?.expires_in(Duration::from_secs(3600)))
            }
        }))
        .any_origin()
    };
    let seen: Seen = Arc::default();
    let mut svc = layer.layer(inner::<Full<Bytes>>(&seen));
    let req = || {
        Request::get("http://api.test/x")
            .body(Full::new(Bytes::from("b")))
            .expect("req")
    };
    let first = svc.ready().await.expect("ready").call(req());
    let timed = tokio::time::timeout(Duration::from_secs(1), first).await;
    assert!(timed.is_err(), "still waiting for the token; dropped now");
    assert!(seen.lock().expect("lock").is_empty(), "nothing sent");
    let started = tokio::time::Instant::now();
    let res = svc
        .ready()
        .await
        .expect("ready")
        .call(req())
        .await
        .expect("answered");
    assert_eq!(res.status(), StatusCode::OK);
    assert!(
        started.elapsed() <= Duration::from_secs(2),
        "waited {:?}",
        started.elapsed()
    );
    assert_eq!(fetches.load(Ordering::SeqCst), 1, "the refresh carried on");
    assert_eq!(seen.lock().expect("lock").len(), 1);
}

/// A token source that panics is an error for the call, not a panic, and
/// the next call asks the source again.
#[tokio::test]
async fn a_panicking_token_source_is_an_error_not_a_panic() {
    let fetches = Arc::new(AtomicUsize::new(0));
    let layer = {
        let fetches = Arc::clone(&fetches);
        AuthLayer::token_source(token_fn(move || {
            let n = fetches.fetch_add(1, Ordering::SeqCst);
            async move {
                assert!(n > 0, "the token source's own bug");
                Ok(Token::bearer("good")?)
            }
        }))
        .any_origin()
    };
    let seen: Seen = Arc::default();
    let svc = layer.layer(inner::<Full<Bytes>>(&seen));
    let req = || {
        Request::get("http://api.test/x")
            .body(Full::new(Bytes::new()))
            .expect("req")
    };
    let err = svc.clone().oneshot(req()).await.expect_err("no token");
    assert!(!err.to_string().is_empty());
    assert!(seen.lock().expect("lock").is_empty());
    tokio::time::pause();
    tokio::time::advance(Duration::from_secs(120)).await;
    let res = svc.oneshot(req()).await.expect("the source asked again");
    assert_eq!(res.status(), StatusCode::OK);
}
