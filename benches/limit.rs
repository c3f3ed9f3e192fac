//! Rate limiter costs on the uncontended path (no call ever waits).
//!
//! - `check`: the decision alone. Our `MemoryStore::check_sync` (unkeyed,
//!   the permit taken), the same through the `RateLimitStore` trait object
//!   as the layer asks it (a ready `StoreFuture`, no allocation, on the
//!   absolute time base), against governor's direct limiter `check()`.
//! - `layer`: a whole call through the layer over an in-process
//!   `service_fn`, against the bare function and `tower::limit::RateLimit`.
//! - `keyed`: reserving for 100,000 distinct keys in turn.
//!
//! `cargo bench --bench limit`
#![allow(missing_docs, reason = "a benchmark binary")]

use std::convert::Infallible;
use std::hint::black_box;
use std::num::NonZeroU32;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use http::{Request, Response};
use tollgate_limit::{MemoryStore, Quota, RateLimitLayer, RateLimitStore};
use tower::{service_fn, Layer, Service, ServiceExt};

fn huge() -> Quota {
    // A billion per second: no call in the benchmark ever waits.
    Quota::per_second(1_000_000_000).expect("valid")
}

fn limit(c: &mut Criterion) {
    let mut group = c.benchmark_group("check");
    let store = MemoryStore::new(&huge(), 16);
    // The clock the layer reads: tokio's (the real one, outside paused tests).
    let epoch = tokio::time::Instant::now();
    group.bench_function("tollgate_memory_store", |b| {
        b.iter(|| {
            let now = u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
            black_box(store.check_sync("", now))
        });
    });
    // The same decision through the store trait, as the layer takes it: a
    // `dyn RateLimitStore` whose ready answer is read without polling.
    let dyn_store: std::sync::Arc<dyn RateLimitStore> =
        std::sync::Arc::new(MemoryStore::new(&huge(), 16));
    let unix_epoch = 1_800_000_000_000_000_000u64;
    group.bench_function("tollgate_store_trait", |b| {
        b.iter(|| {
            let now = unix_epoch
                .saturating_add(u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX));
            black_box(dyn_store.check("", now).now_or_later().is_ok())
        });
    });
    let governor = governor::RateLimiter::direct(governor::Quota::per_second(
        NonZeroU32::new(1_000_000_000).expect("nonzero"),
    ));
    group.bench_function("governor_direct", |b| {
        b.iter(|| black_box(governor.check()));
    });
    group.finish();

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let upstream = service_fn(|_req: Request<()>| async { Ok::<_, Infallible>(Response::new(())) });
    let ours = rt.block_on(async { RateLimitLayer::new(huge()).layer(upstream) });
    let mut tower_limited = rt.block_on(async {
        tower::limit::RateLimit::new(
            upstream,
            tower::limit::rate::Rate::new(1_000_000_000, Duration::from_secs(1)),
        )
    });
    // Each iteration is one block_on, as criterion's to_async does; tower's
    // RateLimit is not Clone, so all three are driven the same way.
    let mut group = c.benchmark_group("layer");
    group.bench_function("bare_service_fn", |b| {
        b.iter(|| rt.block_on(async { black_box(upstream.oneshot(Request::new(())).await) }));
    });
    group.bench_function("tower_rate_limit", |b| {
        b.iter(|| {
            rt.block_on(async {
                let ready = tower_limited.ready().await.expect("ready");
                black_box(ready.call(Request::new(())).await)
            })
        });
    });
    group.bench_function("tollgate_rate_limit", |b| {
        b.iter(|| rt.block_on(async { black_box(ours.clone().oneshot(Request::new(())).await) }));
    });
    group.finish();

    let keyed = MemoryStore::new(&huge(), 200_000);
    let keys: Vec<String> = (0..100_000).map(|i| format!("client-{i}")).collect();
    let mut next = 0usize;
    let mut group = c.benchmark_group("keyed");
    group.bench_function("tollgate_100k_keys", |b| {
        b.iter(|| {
            next = (next + 1) % keys.len();
            let now = u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
            black_box(keyed.check(&keys[next], now))
        });
    });
    let governor_keyed = governor::RateLimiter::keyed(governor::Quota::per_second(
        NonZeroU32::new(1_000_000_000).expect("nonzero"),
    ));
    group.bench_function("governor_keyed_100k_keys", |b| {
        b.iter(|| {
            next = (next + 1) % keys.len();
            black_box(governor_keyed.check_key(&keys[next]))
        });
    });
    group.finish();
}

criterion_group!(benches, limit);
criterion_main!(benches);
