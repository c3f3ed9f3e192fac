//! The auth layer's cost on a request with a static credential.
//!
//! Four services answer the same request from the same in-process
//! `service_fn`: the bare function; tower-http's `SetRequestHeaderLayer`
//! setting the same `Authorization` value (the floor: one header insert);
//! `AuthLayer::bearer` with its origin check; and `AuthLayer` with a token
//! source whose token is fresh (the shared-token read and the copy kept for
//! a 401 replay).
//!
//! `cargo bench --bench auth`
#![allow(missing_docs, reason = "a benchmark binary")]

use std::convert::Infallible;
use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http::header::AUTHORIZATION;
use http::{HeaderValue, Request, Response};
use http_body_util::Full;
use tollgate_auth::{token_fn, AuthLayer, Token};
use tower::{service_fn, Layer, ServiceExt};
use tower_http::set_header::SetRequestHeaderLayer;

type Req = Request<Full<Bytes>>;

fn request() -> Req {
    Request::get("http://127.0.0.1:8080/posts/1")
        .header("accept", "application/json")
        .body(Full::new(Bytes::from_static(b"")))
        .expect("request")
}

fn auth(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let upstream = service_fn(|_req: Req| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"{}"))))
    });
    let mut value = HeaderValue::from_static("Bearer 0123456789abcdef0123456789abcdef");
    value.set_sensitive(true);
    let set_header = SetRequestHeaderLayer::overriding(AUTHORIZATION, value).layer(upstream);
    let origin = "http://127.0.0.1:8080".parse().expect("origin");
    let bearer = AuthLayer::bearer("0123456789abcdef0123456789abcdef")
        .expect("valid")
        .origin(origin)
        .layer(upstream);
    let origin = "http://127.0.0.1:8080".parse().expect("origin");
    let tokens = AuthLayer::token_source(token_fn(|| async {
        Ok(Token::bearer("0123456789abcdef0123456789abcdef")?
            .expires_in(Duration::from_secs(86_400)))
    }))
    .origin(origin)
    .layer(upstream);
    rt.block_on(tokens.clone().oneshot(request()))
        .expect("first token");

    let mut group = c.benchmark_group("auth_overhead");
    group.bench_function("bare_service_fn", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(upstream.oneshot(request()).await) });
    });
    group.bench_function("tower_http_set_header", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(set_header.clone().oneshot(request()).await) });
    });
    group.bench_function("tollgate_auth_bearer", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(bearer.clone().oneshot(request()).await) });
    });
    group.bench_function("tollgate_auth_token_source", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(tokens.clone().oneshot(request()).await) });
    });
    group.finish();
}

criterion_group!(benches, auth);
criterion_main!(benches);
