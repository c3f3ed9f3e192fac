//! AuthLayer over request bodies it does not own: hyper's `Incoming`
//! (forwarded by a proxy) and axum's `Body`, against FakeApi on 127.0.0.1.
//! A static credential needs no replay; a refreshing one replays a 401
//! only when the body is whole in memory, and otherwise returns the 401
//! rather than resending an empty body.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, StatusCode, Uri};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tollgate_auth::{token_fn, Auth, AuthLayer, Token};
use tollgate_core::ReplayableBody;
use tollgate_testkit::FakeApi;
use tower::{Layer, ServiceExt};

const JSON: &str = r#"{"title":"x"}"#;

/// Chunks of unknown total size: a stream.
struct Chunks(Vec<&'static str>);

impl Body for Chunks {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.0.is_empty() {
            return Poll::Ready(None);
        }
        let chunk = self.0.remove(0);
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(chunk.as_bytes())))))
    }
}

fn put<B>(api: &FakeApi, body: B) -> Request<B> {
    Request::put(format!("{}/posts/1", api.url()))
        .header("content-type", "application/json")
        .body(body)
        .expect("request")
}

fn seen(api: &FakeApi) -> (Option<String>, Bytes) {
    let last = api.last_request("/posts/1").expect("seen");
    (last.header("authorization").map(str::to_owned), last.body)
}

/// A token source handing out `stale` first, then `good`, counting fetches.
fn rotating(fetches: Arc<AtomicUsize>) -> AuthLayer {
    AuthLayer::token_source(token_fn(move || {
        let n = fetches.fetch_add(1, Ordering::SeqCst);
        async move { Ok(Token::bearer(if n == 0 { "stale" } else { "good" })?) }
    }))
}

#[tokio::test]
async fn a_static_credential_goes_with_a_forwarded_incoming_body() {
    let api = FakeApi::start().await.expect("start");
    api.require_bearer("s3cret");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let proxy = format!("http://{}", listener.local_addr().expect("addr"));
    let upstream = api.url();
    let hyper = Client::builder(TokioExecutor::new()).build_http::<Incoming>();
    let auth: Auth<Client<HttpConnector, Incoming>> = AuthLayer::bearer("s3cret")
        .expect("valid")
        .origin(upstream.parse().expect("origin"))
        .layer(hyper);
    tokio::spawn(async move {
        while let Ok((io, _)) = listener.accept().await {
            let (auth, upstream) = (auth.clone(), upstream.clone());
            let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
                let path = req.uri().path_and_query().map(|p| p.to_string());
                let uri = format!("{upstream}{}", path.unwrap_or_default());
                *req.uri_mut() = uri.parse::<Uri>().expect("uri");
                auth.clone().oneshot(req)
            });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(io), service)
                    .await;
            });
        }
    });

    let client = Client::builder(TokioExecutor::new()).build_http::<Chunks>();
    let req = Request::put(format!("{proxy}/posts/1"))
        .header("content-type", "application/json")
        .body(Chunks(vec![r#"{"title":"#, r#""x"}"#]))
        .expect("request");
    let res = client.request(req).await.expect("proxied");
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        seen(&api),
        (Some("Bearer s3cret".into()), Bytes::from(JSON))
    );
}

#[tokio::test]
async fn a_static_credential_goes_with_a_streaming_axum_body() {
    let api = FakeApi::start().await.expect("start");
    api.require_bearer("s3cret");
    let hyper = Client::builder(TokioExecutor::new()).build_http::<axum::body::Body>();
    let auth = AuthLayer::bearer("s3cret")
        .expect("valid")
        .any_origin()
        .layer(hyper);
    let body = axum::body::Body::new(Chunks(vec![JSON]));
    let res = auth.oneshot(put(&api, body)).await.expect("response");
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        seen(&api),
        (Some("Bearer s3cret".into()), Bytes::from(JSON))
    );
}

#[tokio::test]
async fn a_refused_token_with_a_streaming_body_returns_the_401_unreplayed() {
    let api = FakeApi::start().await.expect("start");
    api.require_bearer("good");
    let fetches = Arc::new(AtomicUsize::new(0));
    let hyper = Client::builder(TokioExecutor::new()).build_http::<axum::body::Body>();
    let auth = rotating(fetches.clone()).any_origin().layer(hyper);
    for body in [
        axum::body::Body::new(Chunks(vec![JSON])),
        // Of known size, but not whole in memory by its type: not replayed
        // by auth alone (the retry layer above would buffer it).
        axum::body::Body::from(JSON),
    ] {
        api.reset_counts();
        let res = auth
            .clone()
            .oneshot(put(&api, body))
            .await
            .expect("the 401");
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(api.hits("/posts/1"), 1, "sent once, never resent empty");
    }
}

#[tokio::test]
async fn a_refused_token_with_a_body_in_memory_is_replayed_with_the_same_bytes() {
    let api = FakeApi::start().await.expect("start");
    api.require_bearer("good");
    let fetches = Arc::new(AtomicUsize::new(0));
    let hyper = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let auth = rotating(fetches.clone()).any_origin().layer(hyper);
    let res = auth
        .oneshot(put(&api, Full::new(Bytes::from(JSON))))
        .await
        .expect("response");
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(api.hits("/posts/1"), 2);
    assert_eq!(fetches.load(Ordering::SeqCst), 2);
    assert_eq!(seen(&api), (Some("Bearer good".into()), Bytes::from(JSON)));
}

#[tokio::test]
async fn an_axum_body_made_replayable_first_is_replayed_after_a_401() {
    // What the retry layer does above auth: buffer a body of known size
    // into a `ReplayableBody`, which auth then replays.
    let api = FakeApi::start().await.expect("start");
    api.require_bearer("good");
    let fetches = Arc::new(AtomicUsize::new(0));
    let hyper = Client::builder(TokioExecutor::new()).build_http::<ReplayableBody>();
    let auth = rotating(fetches.clone()).any_origin().layer(hyper);
    let body = ReplayableBody::buffer(axum::body::Body::from(JSON), 1024)
        .await
        .expect("read");
    assert!(body.is_replayable());
    let res = auth.oneshot(put(&api, body)).await.expect("response");
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(api.hits("/posts/1"), 2, "the 401 and its one replay");
    assert_eq!(seen(&api), (Some("Bearer good".into()), Bytes::from(JSON)));
    let body = res.into_body().collect().await.expect("body").to_bytes();
    assert!(!body.is_empty());
}
