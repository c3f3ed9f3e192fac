//! The retry layer's cost on the success path (no retry happens).
//!
//! Three services answer the same request from the same in-process
//! `service_fn`: the bare function, `tower::retry::Retry` with a policy that
//! never retries (but clones the request, as any retry must), and
//! `tollgate_retry::RetryLayer` with its defaults (budget included).
//!
//! `cargo bench --bench retry`
#![allow(missing_docs, reason = "a benchmark binary")]

use std::convert::Infallible;
use std::hint::black_box;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http::{Request, Response};
use http_body_util::Full;
use tower::{service_fn, Layer, ServiceExt};

type Req = Request<Full<Bytes>>;

#[derive(Clone)]
struct NeverRetry;

impl<Res, E> tower::retry::Policy<Req, Res, E> for NeverRetry {
    type Future = std::future::Ready<()>;

    fn retry(&mut self, _req: &mut Req, _result: &mut Result<Res, E>) -> Option<Self::Future> {
        None
    }

    fn clone_request(&mut self, req: &Req) -> Option<Req> {
        Some(req.clone())
    }
}

fn request() -> Req {
    Request::get("http://127.0.0.1:8080/posts/1")
        .header("accept", "application/json")
        .body(Full::new(Bytes::from_static(b"")))
        .expect("request")
}

fn retry(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let upstream = service_fn(|_req: Req| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"{}"))))
    });
    let tower_retry = tower::retry::RetryLayer::new(NeverRetry).layer(upstream);
    // The retry layer hands its inner service a `ReplayableBody`.
    let replayed = service_fn(|_req: Request<tollgate_retry::ReplayableBody>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"{}"))))
    });
    let ours = tollgate_retry::RetryLayer::new().layer(replayed);

    let mut group = c.benchmark_group("retry_overhead");
    group.bench_function("bare_service_fn", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(upstream.oneshot(request()).await) });
    });
    group.bench_function("tower_retry_never", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(tower_retry.clone().oneshot(request()).await) });
    });
    group.bench_function("tollgate_retry", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(ours.clone().oneshot(request()).await) });
    });
    group.finish();
}

criterion_group!(benches, retry);
criterion_main!(benches);
