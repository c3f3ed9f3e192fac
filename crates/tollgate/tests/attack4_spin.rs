//! Adversary 4: a user's layer answers with a body that is always ready
//! with an empty frame (a buggy decoding layer, a stream adapter). It uses
//! no memory, but the facade's body reader never yields on it, so the
//! call's total timeout cannot fire: the call spins on its thread until
//! the body stops (here, a guard after `GUARD` polls).

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame};
use tollgate::{AttemptService, Client, ErrorKind, RequestBody};
use tollgate_testkit::FakeApi;
use tower::BoxError;

const GUARD: usize = 2_000_000;

struct EmptyForever(Arc<AtomicUsize>);

impl Body for EmptyForever {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        if self.0.fetch_add(1, Ordering::SeqCst) >= GUARD {
            return Poll::Ready(Some(Err(std::io::Error::other("guard: spun"))));
        }
        Poll::Ready(Some(Ok(Frame::data(Bytes::new()))))
    }
}

#[tokio::test]

async fn a_user_layers_endless_empty_body_ends_at_the_total_timeout() {
    let api = FakeApi::start().await.expect("start");
    let polled = Arc::new(AtomicUsize::new(0));
    let layer = {
        let polled = Arc::clone(&polled);
        tower::layer::layer_fn(move |_inner: AttemptService| {
            let polled = Arc::clone(&polled);
            tower::service_fn(move |_req: Request<RequestBody>| {
                let polled = Arc::clone(&polled);
                async move { Ok::<_, BoxError>(Response::new(EmptyForever(polled))) }
            })
        })
    };
    let client = Client::builder(api.url())
        .timeout(Duration::from_millis(100))
        .layer(layer)
        .build()
        .expect("client");
    let err = client.get("/posts/1").send().await.expect_err("never ends");
    assert_eq!(
        err.kind(),
        ErrorKind::Timeout,
        "{err} after {} polls without a yield",
        polled.load(Ordering::SeqCst)
    );
}
