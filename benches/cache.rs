//! The cache layer's own cost, in process.
//!
//! - `bare_service_fn`: the upstream alone.
//! - `request_only`: building the request every other benchmark builds.
//! - `moka_future_get` / `moka_sync_get`: a lookup in a moka cache of the
//!   same size holding the same value, the floor of any moka-based hit.
//! - `layer_hit`: a GET answered by the layer from its cache (a moka lookup,
//!   the credential identity, the freshness check, and a new
//!   `http::Response` with the stored headers and body).
//! - `layer_miss`: a GET for a new URL each time: the lookup, the flight,
//!   the call, buffering and storing the response.
//! - `moka_sync_insert_distinct`: moka alone doing what a miss asks of it
//!   (a lookup that misses, then an insert of a new key) in a cache as full.
//!
//! `cargo bench --bench cache`
#![allow(missing_docs, reason = "a benchmark binary")]

use std::convert::Infallible;
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http::{Request, Response};
use http_body_util::Full;
use tollgate_cache::CacheLayer;
use tower::{service_fn, Layer, ServiceExt};

const BODY: &[u8] = br#"{"userId":1,"id":1,"title":"sunt aut facere","body":"quia et suscipit"}"#;

fn request(uri: &str) -> Request<()> {
    Request::get(uri)
        .header("accept", "application/json")
        .header("user-agent", "tollgate-bench")
        .body(())
        .expect("request")
}

fn response() -> Response<Full<Bytes>> {
    Response::builder()
        .header("content-type", "application/json; charset=utf-8")
        .header("content-length", BODY.len())
        .header("date", "Sun, 22 Nov 2026 20:00:00 GMT")
        .body(Full::new(Bytes::from_static(BODY)))
        .expect("response")
}

fn cache(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let upstream = service_fn(|_req: Request<()>| async { Ok::<_, Infallible>(response()) });
    let layer = CacheLayer::new(Duration::from_secs(3600));
    let cached = layer.layer(upstream);
    let hit_uri = "http://127.0.0.1:8080/posts/1";
    rt.block_on(cached.clone().oneshot(request(hit_uri)))
        .expect("warm");

    let stored = Arc::new((response().headers().clone(), Bytes::from_static(BODY)));
    let moka_future: moka::future::Cache<Arc<str>, Arc<(http::HeaderMap, Bytes)>> =
        moka::future::Cache::builder()
            .max_capacity(64 << 20)
            .weigher(|_, _| 1000)
            .build();
    let moka_sync: moka::sync::Cache<Arc<str>, Arc<(http::HeaderMap, Bytes)>> =
        moka::sync::Cache::builder()
            .max_capacity(64 << 20)
            .weigher(|_, _| 1000)
            .build();
    rt.block_on(moka_future.insert(Arc::from(hit_uri), stored.clone()));
    moka_sync.insert(Arc::from(hit_uri), stored);

    let mut group = c.benchmark_group("cache");
    group.bench_function("bare_service_fn", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(upstream.oneshot(request(hit_uri)).await) });
    });
    group.bench_function("request_only", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(request(hit_uri)) });
    });
    group.bench_function("moka_future_get", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(moka_future.get(hit_uri).await) });
    });
    group.bench_function("moka_sync_get", |b| {
        b.iter(|| black_box(moka_sync.get(hit_uri)));
    });
    group.bench_function("layer_hit", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(cached.clone().oneshot(request(hit_uri)).await) });
    });
    let n = AtomicU64::new(0);
    let misses = CacheLayer::builder(tollgate_cache::Freshness::Fixed(Duration::from_secs(3600)))
        .max_bytes(4 << 20)
        .build()
        .layer(upstream);
    group.bench_function("layer_miss", |b| {
        b.to_async(&rt).iter(|| {
            let uri = format!(
                "http://127.0.0.1:8080/posts/1?n={}",
                n.fetch_add(1, Ordering::Relaxed)
            );
            let misses = misses.clone();
            async move { black_box(misses.oneshot(request(&uri)).await) }
        });
    });
    // moka alone, storing a new key each time into a cache as full as the
    // layer_miss one: the floor of any moka-based miss.
    let moka_store: moka::sync::Cache<Arc<str>, Arc<(http::HeaderMap, Bytes)>> =
        moka::sync::Cache::builder()
            .max_capacity(4 << 20)
            .weigher(|_, _| 2_000)
            .build();
    let value = Arc::new((response().headers().clone(), Bytes::from_static(BODY)));
    group.bench_function("moka_sync_insert_distinct", |b| {
        b.iter(|| {
            let key: Arc<str> = Arc::from(format!(
                "http://127.0.0.1:8080/posts/1?n={}",
                n.fetch_add(1, Ordering::Relaxed)
            ));
            let found = moka_store.get(&*key);
            moka_store.insert(key, value.clone());
            black_box(found)
        });
    });
    group.bench_function("bare_distinct_uri", |b| {
        b.to_async(&rt).iter(|| {
            let uri = format!(
                "http://127.0.0.1:8080/posts/1?n={}",
                n.fetch_add(1, Ordering::Relaxed)
            );
            async move { black_box(upstream.oneshot(request(&uri)).await) }
        });
    });
    group.finish();
}

criterion_group!(benches, cache);
criterion_main!(benches);
