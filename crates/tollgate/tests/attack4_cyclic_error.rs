//! Adversary 4: a user's layer fails with an error whose `source()` chain
//! is cyclic (it names itself: a hand-written wrapper with a bug).
//! `tollgate_core::chain` cuts a chain at 64 steps for exactly this case;
//! the facade's own walks (`innermost_message`, `find`) follow `source()`
//! to its end, so a cycle is an endless loop that no timeout can stop.
//! The error here ends its cycle after `LIMIT` steps so a failing test
//! ends; the test counts how far the facade walked.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use tollgate::{AttemptService, Client, RequestBody};
use tollgate_testkit::FakeApi;
use tower::BoxError;

const LIMIT: usize = 5_000_000;

struct Cyclic(Arc<AtomicUsize>);

impl fmt::Debug for Cyclic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Cyclic")
    }
}

impl fmt::Display for Cyclic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a layer's error that names itself as its source")
    }
}

impl std::error::Error for Cyclic {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        (self.0.fetch_add(1, Ordering::SeqCst) < LIMIT).then_some(self as _)
    }
}

#[tokio::test]

async fn a_cyclic_error_from_a_user_layer_is_walked_a_bounded_way() {
    let api = FakeApi::start().await.expect("start");
    let steps = Arc::new(AtomicUsize::new(0));
    let layer = {
        let steps = Arc::clone(&steps);
        tower::layer::layer_fn(move |_inner: AttemptService| {
            let steps = Arc::clone(&steps);
            tower::service_fn(move |_req: Request<RequestBody>| {
                let steps = Arc::clone(&steps);
                async move { Err::<Response<Full<Bytes>>, BoxError>(Box::new(Cyclic(steps))) }
            })
        })
    };
    let client = Client::builder(api.url())
        .layer(layer)
        .build()
        .expect("client");
    let err = client.get("/posts/1").send().await.expect_err("failed");
    let _ = err.to_string();
    let walked = steps.load(Ordering::SeqCst);
    assert!(
        walked < 10_000,
        "the facade walked {walked} steps of a cyclic chain (a true cycle never ends)"
    );
}
