//! Retry over request bodies it does not own: axum's `Body` and hyper's
//! `Incoming` (forwarded by a proxy), against FakeApi on 127.0.0.1. A body
//! that can be replayed is retried; one that streams is sent once, and its
//! failure comes back as it is, with the reason in the record.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, Uri};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tollgate_retry::{Backoff, Jitter, ReplayableBody, Retry, RetryLayer, RetryRecord, Stopped};
use tollgate_testkit::{FakeApi, Fault};
use tower::ServiceExt;

type Upstream = Client<HttpConnector, ReplayableBody>;

fn retry() -> Retry<Upstream> {
    let backoff = Backoff::exponential(Duration::from_millis(10))
        .expect("valid")
        .jitter(Jitter::None);
    let hyper = Client::builder(TokioExecutor::new()).build_http();
    let layer = RetryLayer::new()
        .backoff(backoff)
        .no_budget()
        .max_retries(2);
    tower::Layer::layer(&layer, hyper)
}

/// Chunks of unknown total size: a stream, as a browser upload or a
/// chunked request is.
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

fn record<B>(res: &Response<B>) -> RetryRecord {
    res.extensions()
        .get::<RetryRecord>()
        .cloned()
        .expect("the layer records what it did")
}

fn put<B>(api: &FakeApi, body: B) -> Request<B> {
    Request::put(format!("{}/posts/1", api.url()))
        .header("content-type", "application/json")
        .body(body)
        .expect("request")
}

fn sent_body(api: &FakeApi) -> Bytes {
    api.last_request("/posts/1").expect("seen").body
}

#[tokio::test(start_paused = true)]
async fn an_axum_body_of_known_size_is_retried_with_the_same_bytes() {
    let api = FakeApi::start().await.expect("start");
    api.inject(
        "/posts/1",
        Fault::status(StatusCode::SERVICE_UNAVAILABLE).times(1),
    );
    let body = axum::body::Body::from(r#"{"title":"x"}"#);
    let res = retry().oneshot(put(&api, body)).await.expect("response");
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(record(&res).attempts, 2);
    assert_eq!(api.hits("/posts/1"), 2);
    assert_eq!(sent_body(&api), r#"{"title":"x"}"#);
}

#[tokio::test(start_paused = true)]
async fn a_streaming_axum_body_is_sent_once_and_its_503_returned() {
    let api = FakeApi::start().await.expect("start");
    api.inject(
        "/posts/1",
        Fault::status(StatusCode::SERVICE_UNAVAILABLE).times(1),
    );
    let body = axum::body::Body::new(Chunks(vec![r#"{"title":"#, r#""x"}"#]));
    let res = retry().oneshot(put(&api, body)).await.expect("the 503");
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    let record = record(&res);
    assert_eq!(record.attempts, 1);
    assert_eq!(record.stopped, Some(Stopped::BodyNotReplayable));
    assert_eq!(api.hits("/posts/1"), 1);
    // The response is whole: nothing hangs after a streamed body.
    let text = res.into_body().collect().await.expect("body").to_bytes();
    assert!(!text.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_body_over_the_replay_limit_streams_once() {
    let api = FakeApi::start().await.expect("start");
    api.inject("/posts/1", Fault::status(StatusCode::BAD_GATEWAY).times(1));
    let hyper: Upstream = Client::builder(TokioExecutor::new()).build_http();
    let svc = tower::Layer::layer(&RetryLayer::new().max_replay_body(4), hyper);
    let body = axum::body::Body::from(r#"{"title":"x"}"#);
    let res = svc.oneshot(put(&api, body)).await.expect("the 502");
    assert_eq!(res.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(record(&res).stopped, Some(Stopped::BodyNotReplayable));
    assert_eq!(api.hits("/posts/1"), 1);
    assert_eq!(sent_body(&api), r#"{"title":"x"}"#);
}

/// A proxy on 127.0.0.1 that forwards each request, its `Incoming` body
/// untouched, through the retry layer to `api`.
async fn proxy(api: &FakeApi) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let upstream = api.url();
    let client = retry();
    tokio::spawn(async move {
        while let Ok((io, _)) = listener.accept().await {
            let client = client.clone();
            let upstream = upstream.clone();
            let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
                let path = req.uri().path_and_query().map(|p| p.to_string());
                let uri = format!("{upstream}{}", path.unwrap_or_default());
                *req.uri_mut() = uri.parse::<Uri>().expect("uri");
                client.clone().oneshot(req)
            });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(io), service)
                    .await;
            });
        }
    });
    format!("http://{addr}")
}

async fn through_proxy<B>(proxy: &str, body: B) -> (StatusCode, Bytes)
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<tower::BoxError>,
{
    let client = Client::builder(TokioExecutor::new()).build_http::<B>();
    let req = Request::builder()
        .method(Method::PUT)
        .uri(format!("{proxy}/posts/1"))
        .header("content-type", "application/json")
        .body(body)
        .expect("request");
    let res = client.request(req).await.expect("proxied response");
    let status = res.status();
    (
        status,
        res.into_body().collect().await.expect("body").to_bytes(),
    )
}

#[tokio::test(start_paused = true)]
async fn a_forwarded_incoming_body_with_a_length_is_retried() {
    let api = FakeApi::start().await.expect("start");
    let proxy = proxy(&api).await;
    api.inject(
        "/posts/1",
        Fault::status(StatusCode::SERVICE_UNAVAILABLE).times(1),
    );
    let body = Full::new(Bytes::from_static(br#"{"title":"x"}"#));
    let (status, _) = through_proxy(&proxy, body).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(api.hits("/posts/1"), 2);
    assert_eq!(sent_body(&api), r#"{"title":"x"}"#);
}

#[tokio::test(start_paused = true)]
async fn a_forwarded_chunked_incoming_body_is_sent_once_and_its_503_returned() {
    let api = FakeApi::start().await.expect("start");
    let proxy = proxy(&api).await;
    api.inject(
        "/posts/1",
        Fault::status(StatusCode::SERVICE_UNAVAILABLE).times(1),
    );
    let body = Chunks(vec![r#"{"title":"#, r#""x"}"#]);
    let (status, _) = through_proxy(&proxy, body).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(api.hits("/posts/1"), 1);
    assert_eq!(sent_body(&api), r#"{"title":"x"}"#);
    // The next streamed call goes through whole.
    let (status, _) = through_proxy(&proxy, Chunks(vec![r#"{"title":"y"}"#])).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(sent_body(&api), r#"{"title":"y"}"#);
}
