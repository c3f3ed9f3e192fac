//! The facade's own CPU cost per call, without a network.
//!
//! Both sides answer from the same in-process `service_fn`; the bare side
//! builds the `http::Request` (parsing the URI from a string, as a caller of
//! hyper-util does), calls the service and collects the body. The facade side
//! does the same through `Client::get(..).send()`, so the difference is what
//! the facade adds: path joining, header defaults, the span, the deadline,
//! boxing, body reading and the `ApiResponse`.
//!
//! `facade_get_cache_hit` answers from a `CacheLayer` after the first call.
//!
//! `cargo bench --bench facade`
#![allow(missing_docs, reason = "a benchmark binary")]

use std::convert::Infallible;
use std::hint::black_box;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tower::{service_fn, ServiceExt};

const BODY: &[u8] = br#"{"userId":1,"id":1,"title":"sunt aut facere","body":"quia et suscipit"}"#;

fn facade(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let stub = service_fn(|_req: Request<tollgate::RequestBody>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(BODY))))
    });
    let client = tollgate::Client::builder("http://127.0.0.1:8080/api")
        .transport(stub)
        .build()
        .expect("client");

    let no_timeout = tollgate::Client::builder("http://127.0.0.1:8080/api")
        .transport(stub)
        .no_timeout()
        .build()
        .expect("client");

    let cached = tollgate::Client::builder("http://127.0.0.1:8080/api")
        .transport(stub)
        .cache(tollgate_cache::CacheLayer::new(
            std::time::Duration::from_secs(3600),
        ))
        .build()
        .expect("client");
    let mut group = c.benchmark_group("facade_overhead");
    group.bench_function("facade_get_cache_hit", |b| {
        b.to_async(&rt).iter(|| async {
            let res = cached.get("/posts/1").send().await.expect("sent");
            black_box(res)
        });
    });
    group.bench_function("facade_get_no_timeout", |b| {
        b.to_async(&rt).iter(|| async {
            let res = no_timeout.get("/posts/1").send().await.expect("sent");
            black_box(res)
        });
    });
    group.bench_function("bare_service_fn", |b| {
        b.to_async(&rt).iter(|| async {
            let req = Request::get("http://127.0.0.1:8080/api/posts/1")
                .header("accept", "application/json")
                .body(tollgate::RequestBody::default())
                .expect("request");
            let res = stub.oneshot(req).await.expect("infallible");
            let body = res
                .into_body()
                .collect()
                .await
                .expect("infallible")
                .to_bytes();
            black_box(body)
        });
    });
    group.bench_function("facade_get", |b| {
        b.to_async(&rt).iter(|| async {
            let res = client.get("/posts/1").send().await.expect("sent");
            black_box(res)
        });
    });
    group.bench_function("facade_get_param_query", |b| {
        b.to_async(&rt).iter(|| async {
            let res = client
                .get("/posts/{id}")
                .path_param("id", 1)
                .query(&[("page", 2)])
                .send()
                .await
                .expect("sent");
            black_box(res)
        });
    });
    group.bench_function("facade_get_json_decode", |b| {
        b.to_async(&rt).iter(|| async {
            let res = client.get("/posts/1").send().await.expect("sent");
            black_box(res.data().expect("json"))
        });
    });
    group.finish();
}

criterion_group!(benches, facade);
criterion_main!(benches);
