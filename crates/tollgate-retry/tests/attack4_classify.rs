//! Adversary 4: what retry does with a POST after each kind of failure,
//! read with `TransportFailure::classify`. A POST is retried only when it
//! was certainly never sent.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use tollgate_core::ReadBodyError;
use tollgate_retry::{ReplayableBody, RetryLayer};
use tower::{service_fn, BoxError, Layer, ServiceExt};

/// Calls the inner service with a POST that fails once with `error()`,
/// then answers 201; returns how many times the POST was sent.
async fn sends(error: fn() -> BoxError) -> usize {
    let calls = Arc::new(AtomicUsize::new(0));
    let inner = {
        let calls = Arc::clone(&calls);
        service_fn(move |_req: Request<ReplayableBody>| {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            async move {
                if n == 0 {
                    return Err(error());
                }
                Ok::<_, BoxError>(
                    Response::builder()
                        .status(201)
                        .body(Full::new(Bytes::new()))
                        .expect("response"),
                )
            }
        })
    };
    let svc = RetryLayer::new().no_budget().max_retries(2).layer(inner);
    let req = Request::post("http://h/orders")
        .body(Full::new(Bytes::from("order")))
        .expect("req");
    let _ = svc.oneshot(req).await;
    calls.load(Ordering::SeqCst)
}

#[tokio::test]
async fn a_refused_post_is_retried_a_reset_one_is_not() {
    assert_eq!(
        sends(|| Box::new(std::io::Error::from(std::io::ErrorKind::ConnectionRefused))).await,
        2,
        "refused: never sent"
    );
    assert_eq!(
        sends(|| Box::new(std::io::Error::from(std::io::ErrorKind::ConnectionReset))).await,
        1,
        "reset: maybe processed"
    );
    assert_eq!(
        sends(
            || Box::new(ReadBodyError::Body(Box::new(std::io::Error::from(
                std::io::ErrorKind::UnexpectedEof
            ))))
        )
        .await,
        1,
        "cut mid-body: processed"
    );
}

/// The response head of this POST arrived (its body read failed), so the
/// server processed it; the body's own error says "connection refused"
/// (it streamed from elsewhere). Retry reads it as never sent and sends
/// the order again.
#[tokio::test]

async fn a_post_whose_response_body_failed_is_never_resent() {
    let n = sends(|| {
        Box::new(ReadBodyError::Body(Box::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused,
        ))))
    })
    .await;
    assert_eq!(n, 1, "the processed POST was sent {n} times");
}
