//! Adversary 4: retry over bodies that lie (size hints, trailers, endless
//! streams), cancelled mid-buffer, and sent once when they must be.
//! In-process services (`tower::service_fn`): what the inner service is
//! handed is what would go on the wire.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full};
use tollgate_retry::{Backoff, Jitter, ReplayableBody, RetryLayer, RetryRecord, Stopped};
use tower::{service_fn, BoxError, Layer, Service, ServiceExt};

/// A body scripted frame by frame, with the size hint it declares.
struct Scripted {
    frames: Vec<Result<Frame<Bytes>, std::io::Error>>,
    hint: SizeHint,
    polled: Arc<AtomicUsize>,
    // After the script: more frames of this data, for ever (an endless body).
    endless: Option<Bytes>,
    pending_forever: bool,
}

impl Body for Scripted {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        self.polled.fetch_add(1, Ordering::SeqCst);
        if !self.frames.is_empty() {
            return Poll::Ready(Some(self.frames.remove(0)));
        }
        if self.pending_forever {
            return Poll::Pending;
        }
        match &self.endless {
            Some(chunk) => Poll::Ready(Some(Ok(Frame::data(chunk.clone())))),
            None => Poll::Ready(None),
        }
    }

    fn size_hint(&self) -> SizeHint {
        self.hint
    }
}

fn scripted(frames: Vec<Result<Frame<Bytes>, std::io::Error>>, hint: SizeHint) -> Scripted {
    Scripted {
        frames,
        hint,
        polled: Arc::default(),
        endless: None,
        pending_forever: false,
    }
}

fn exact(n: u64) -> SizeHint {
    SizeHint::with_exact(n)
}

fn data(s: &'static str) -> Result<Frame<Bytes>, std::io::Error> {
    Ok(Frame::data(Bytes::from_static(s.as_bytes())))
}

fn layer() -> RetryLayer {
    RetryLayer::new()
        .backoff(
            Backoff::exponential(std::time::Duration::from_millis(10))
                .expect("valid")
                .jitter(Jitter::None),
        )
        .no_budget()
        .max_retries(2)
}

/// What the inner service saw: each attempt's body, read whole, with the
/// bytes of its trailers.
type Seen = Arc<Mutex<Vec<(Bytes, usize)>>>;

/// An inner service that records each body and answers 503 (retryable for
/// idempotent methods) the first `fail` times, then 200.
fn recording(
    seen: &Seen,
    fail: usize,
) -> impl Service<
    Request<ReplayableBody>,
    Response = Response<Full<Bytes>>,
    Error = BoxError,
    Future = impl Send,
> + Clone {
    let seen = Arc::clone(seen);
    service_fn(move |req: Request<ReplayableBody>| {
        let seen = Arc::clone(&seen);
        async move {
            let collected = req.into_body().collect().await?;
            let trailer_bytes = collected.trailers().map_or(0, |t| {
                t.iter()
                    .map(|(k, v)| k.as_str().len() + v.len())
                    .sum::<usize>()
            });
            let n = {
                let mut seen = seen.lock().expect("lock");
                seen.push((collected.to_bytes(), trailer_bytes));
                seen.len()
            };
            let status = if n <= fail { 503 } else { 200 };
            Ok::<_, BoxError>(
                Response::builder()
                    .status(status)
                    .body(Full::new(Bytes::new()))
                    .expect("response"),
            )
        }
    })
}

/// Bounded memory: trailers are part of what retry keeps in memory for a
/// replay. A body of declared size 4 (within the 64 KiB replay limit) that
/// sends 4 bytes and then 1,000 trailer frames of 1 KiB each makes retry
/// hold ~1 MiB: 16 times its replay limit. It should be refused (or its
/// trailers counted against the limit), as a body that sends more data is.
#[tokio::test]

async fn trailers_count_against_the_replay_limit() {
    let mut frames = vec![data("abcd")];
    let value = HeaderValue::from_str(&"v".repeat(1024)).expect("value");
    for i in 0..1000 {
        let mut t = HeaderMap::new();
        t.insert(
            HeaderName::from_bytes(format!("x-trailer-{i}").as_bytes()).expect("name"),
            value.clone(),
        );
        frames.push(Ok(Frame::trailers(t)));
    }
    let body = scripted(frames, exact(4));
    let seen: Seen = Arc::default();
    let svc = layer().layer(recording(&seen, 0));
    let req = Request::put("http://h/x").body(body).expect("req");
    let result = svc.oneshot(req).await;
    let held = seen
        .lock()
        .expect("lock")
        .iter()
        .map(|(b, t)| b.len() + t)
        .max()
        .unwrap_or(0);
    assert!(
        result.is_err() || held <= 64 * 1024,
        "retry buffered {held} bytes of body and trailers under a 64 KiB replay limit"
    );
}

/// The same through core's own reader: `ReplayableBody::buffer` with a
/// limit of 1 KiB keeps 1 MiB of trailers.
#[tokio::test]

async fn buffer_bounds_trailers_by_its_limit() {
    let mut frames = vec![data("ab")];
    let value = HeaderValue::from_str(&"v".repeat(1024)).expect("value");
    for i in 0..1000 {
        let mut t = HeaderMap::new();
        t.insert(
            HeaderName::from_bytes(format!("x-t-{i}").as_bytes()).expect("name"),
            value.clone(),
        );
        frames.push(Ok(Frame::trailers(t)));
    }
    let result = ReplayableBody::buffer(scripted(frames, exact(2)), 1024).await;
    if let Ok(body) = result {
        let collected = body.collect().await.expect("read");
        let kept: usize = collected.trailers().map_or(0, |t| {
            t.iter().map(|(k, v)| k.as_str().len() + v.len()).sum()
        });
        assert!(
            kept <= 1024,
            "kept {kept} bytes of trailers under a 1 KiB limit"
        );
    }
}

/// A body that declares exact size 10 but is endless: refused at the replay
/// limit, having read no more than the limit, and nothing is sent.
#[tokio::test]
async fn an_endless_body_declaring_ten_bytes_is_refused_at_the_limit() {
    let mut body = scripted(vec![], exact(10));
    body.endless = Some(Bytes::from(vec![b'x'; 1024]));
    let polled = Arc::clone(&body.polled);
    let seen: Seen = Arc::default();
    let svc = layer()
        .max_replay_body(64 * 1024)
        .layer(recording(&seen, 0));
    let req = Request::put("http://h/x").body(body).expect("req");
    let err = svc.oneshot(req).await.expect_err("refused");
    assert!(
        err.downcast_ref::<tollgate_core::BodyTooLarge>().is_some(),
        "{err}"
    );
    assert!(polled.load(Ordering::SeqCst) <= 65, "read past the limit");
    assert!(seen.lock().expect("lock").is_empty(), "nothing sent");
}

/// A body that declares exact size 0 but sends data is never sent empty:
/// it lied about its size, so it is refused (as any body sending more than
/// it declared: `a_body_longer_than_it_declared_is_refused`), and nothing,
/// empty or not, reaches the inner service.
#[tokio::test]
async fn a_body_declaring_zero_but_sending_data_is_never_sent_empty() {
    let body = scripted(vec![data("real"), data(" data")], exact(0));
    let seen: Seen = Arc::default();
    let svc = layer().layer(recording(&seen, 1));
    let req = Request::put("http://h/x").body(body).expect("req");
    let err = svc.oneshot(req).await.expect_err("refused");
    assert!(
        err.downcast_ref::<tollgate_core::BodyTooLarge>().is_some(),
        "{err}"
    );
    assert!(seen.lock().expect("lock").is_empty(), "nothing sent");
}

/// A body of declared size 2 that sends 4 bytes (within the limit): core's
/// docs say `BodyTooLarge` "if a body that declared an exact size within
/// the limit sends more". Retry instead buffers all 4 and sends a body of 4
/// bytes where its caller declared 2 (and retries it).
#[tokio::test]

async fn a_body_longer_than_it_declared_is_refused() {
    let body = scripted(vec![data("ab"), data("cd")], exact(2));
    let seen: Seen = Arc::default();
    let svc = layer().layer(recording(&seen, 0));
    let req = Request::put("http://h/x").body(body).expect("req");
    let result = svc.oneshot(req).await;
    let sent: Vec<Bytes> = seen
        .lock()
        .expect("lock")
        .iter()
        .map(|(b, _)| b.clone())
        .collect();
    assert!(
        result.is_err(),
        "a body declared as 2 bytes was sent as {sent:?}"
    );
}

/// A body that fails while it is read for a replay: one error, and nothing
/// is sent.
#[tokio::test]
async fn a_body_failing_while_buffered_sends_nothing() {
    let body = scripted(
        vec![
            data("ab"),
            Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "source cut",
            )),
        ],
        exact(4),
    );
    let seen: Seen = Arc::default();
    let svc = layer().layer(recording(&seen, 0));
    let req = Request::post("http://h/x").body(body).expect("req");
    let err = svc.oneshot(req).await.expect_err("the body failed");
    let _ = err;
    assert!(seen.lock().expect("lock").is_empty(), "nothing was sent");
}

/// Cancel while retry buffers the body: the inner service is never called,
/// the body is dropped, and the service still serves the next call.
#[tokio::test(start_paused = true)]
async fn dropping_the_call_while_the_body_is_buffered_sends_nothing() {
    let mut body = scripted(vec![data("ab")], exact(4));
    body.pending_forever = true;
    let polled = Arc::clone(&body.polled);
    let seen: Seen = Arc::default();
    let mut svc = layer().layer(recording(&seen, 0));
    let req = Request::put("http://h/x").body(body).expect("req");
    ServiceExt::<Request<Scripted>>::ready(&mut svc)
        .await
        .expect("ready");
    let fut = svc.call(req);
    let timed = tokio::time::timeout(std::time::Duration::from_secs(1), fut).await;
    assert!(timed.is_err(), "still buffering");
    assert!(polled.load(Ordering::SeqCst) >= 2);
    assert!(seen.lock().expect("lock").is_empty(), "nothing was sent");
    let next = Request::put("http://h/x")
        .body(scripted(vec![data("next")], exact(4)))
        .expect("req");
    let res = ServiceExt::<Request<Scripted>>::ready(&mut svc)
        .await
        .expect("ready")
        .call(next)
        .await
        .expect("ok");
    assert_eq!(res.status(), 200);
    assert_eq!(seen.lock().expect("lock")[0].0, "next");
}

/// Retry's response future, mid-buffer, shows none of the body in its Debug.
#[tokio::test]
async fn debug_of_a_call_mid_buffer_shows_no_body() {
    let mut body = scripted(vec![data("s3cret-canary")], exact(40));
    body.pending_forever = true;
    let seen: Seen = Arc::default();
    let mut svc = layer().layer(recording(&seen, 0));
    ServiceExt::<Request<Scripted>>::ready(&mut svc)
        .await
        .expect("ready");
    let mut fut = Box::pin(svc.call(Request::put("http://h/x").body(body).expect("req")));
    let waker = std::task::Waker::noop();
    let mut cx = Context::from_waker(waker);
    assert!(fut.as_mut().poll(&mut cx).is_pending());
    let shown = format!("{fut:?}");
    assert!(!shown.contains("s3cret"), "{shown}");
}

/// A streamed body (unknown size) to a POST whose answer is retryable is
/// sent once: the record says why it was not retried.
#[tokio::test]
async fn a_streamed_post_is_sent_once() {
    let body = scripted(vec![data("once")], SizeHint::default());
    let seen: Seen = Arc::default();
    let svc = RetryLayer::new()
        .no_budget()
        .max_retries(3)
        .with_idempotency_key()
        .layer(recording(&seen, 5));
    let req = Request::builder()
        .method(Method::POST)
        .uri("http://h/x")
        .body(body)
        .expect("req");
    let res = svc.oneshot(req).await.expect("answered");
    assert_eq!(res.status(), 503);
    let record = res
        .extensions()
        .get::<RetryRecord>()
        .cloned()
        .expect("record");
    assert_eq!(record.stopped, Some(Stopped::BodyNotReplayable));
    assert_eq!(seen.lock().expect("lock").len(), 1, "sent once");
}

/// A POST read whole before its first attempt, refused at connect, is
/// retried with the same body (never an empty one).
#[tokio::test]
async fn a_refused_post_is_retried_with_its_whole_body() {
    let seen: Seen = Arc::default();
    let count = Arc::new(AtomicUsize::new(0));
    let inner = {
        let seen = Arc::clone(&seen);
        let count = Arc::clone(&count);
        service_fn(move |req: Request<ReplayableBody>| {
            let seen = Arc::clone(&seen);
            let n = count.fetch_add(1, Ordering::SeqCst);
            async move {
                let b = req.into_body().collect().await?.to_bytes();
                seen.lock().expect("lock").push((b, 0));
                if n == 0 {
                    return Err::<Response<Full<Bytes>>, BoxError>(Box::new(std::io::Error::from(
                        std::io::ErrorKind::ConnectionRefused,
                    )));
                }
                Ok(Response::new(Full::new(Bytes::new())))
            }
        })
    };
    let svc = layer().layer(inner);
    let body = scripted(vec![data("pay"), data("load")], exact(7));
    let req = Request::post("http://h/x").body(body).expect("req");
    let res = svc.oneshot(req).await.expect("retried");
    assert_eq!(res.status(), 200);
    let seen = seen.lock().expect("lock");
    assert_eq!(seen.len(), 2);
    assert!(seen.iter().all(|(b, _)| b == "payload"), "{seen:?}");
}

use std::future::Future as _;
