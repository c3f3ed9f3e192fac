//! The cache's Redis tier against moka, through the cache layer over an
//! in-process upstream, with a local `redis-server` the bench starts itself
//! (`tollgate_testkit::RedisServer`, on a free loopback port).
//!
//! - `moka_hit`: a GET answered from the layer's memory (the tier is
//!   configured but not asked).
//! - `tier_hit`: a GET answered from Redis by a layer whose memory is cold
//!   (a fresh layer per request, built outside the timing, sharing one
//!   tier; building and dropping it are not timed): the tier key, one `GET`
//!   round trip, decoding, checking, filling memory, the response.
//! - `redis_get`: the tier's `GET` alone (one round trip), the floor of a
//!   tier hit.
//! - `miss_with_tier`: a GET for a new URL each time: the tier asked and
//!   empty, the upstream called, memory and Redis filled (`SET PX`).
//!
//! `cargo bench --bench redis_cache` (needs `redis-server`; see
//! `scripts/test` for installing it).
#![allow(missing_docs, reason = "a benchmark binary")]

use std::convert::Infallible;
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use http::{Request, Response};
use http_body_util::Full;
use tollgate_cache::{CacheLayer, CacheStatus, CacheTier, Freshness, FromTier};
use tollgate_redis::RedisCacheTier;
use tollgate_testkit::{RedisServer, HOW_TO_GET_REDIS};
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

fn layer(tier: &Arc<dyn CacheTier>) -> CacheLayer {
    CacheLayer::builder(Freshness::Fixed(Duration::from_secs(3600)))
        .tier(tier.clone())
        // A loaded machine must not turn the figure into timeouts.
        .tier_timeout(Duration::from_millis(200))
        .build()
}

fn redis_cache(c: &mut Criterion) {
    let server = RedisServer::start().expect(HOW_TO_GET_REDIS);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let upstream = service_fn(|_req: Request<()>| async { Ok::<_, Infallible>(response()) });
    let redis = rt.block_on(async {
        RedisCacheTier::builder(server.url())
            .namespace("bench")
            .build()
            .expect("tier")
    });
    let tier: Arc<dyn CacheTier> = Arc::new(redis.clone());
    let hit_uri = "http://127.0.0.1:8080/posts/1";

    // Warm: one layer fetches and fills memory and Redis.
    let warm = layer(&tier);
    let cached = warm.layer(upstream);
    rt.block_on(cached.clone().oneshot(request(hit_uri)))
        .expect("warm");
    assert_eq!(warm.stats().tier_writes, 1, "the fill reached Redis");
    let check = rt
        .block_on(layer(&tier).layer(upstream).oneshot(request(hit_uri)))
        .expect("tier hit");
    assert!(check.extensions().get::<FromTier>().is_some(), "a tier hit");

    let mut group = c.benchmark_group("redis_cache");
    group.bench_function("moka_hit", |b| {
        b.to_async(&rt).iter(|| async {
            let r = cached.clone().oneshot(request(hit_uri)).await.expect("hit");
            debug_assert_eq!(r.extensions().get::<CacheStatus>(), Some(&CacheStatus::Hit));
            black_box(r)
        });
    });
    group.bench_function("tier_hit", |b| {
        b.to_async(&rt).iter_batched(
            || layer(&tier).layer(upstream),
            |cold| async move {
                let r = cold.clone().oneshot(request(hit_uri)).await.expect("hit");
                debug_assert!(r.extensions().get::<FromTier>().is_some());
                // Dropped after the timing: the layer (its moka) with it.
                (cold, black_box(r))
            },
            BatchSize::SmallInput,
        );
    });
    let key = "a key that is not there";
    group.bench_function("redis_get", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(redis.get(key).await.expect("get")) });
    });
    let counter = AtomicU64::new(0);
    group.bench_function("miss_with_tier", |b| {
        b.to_async(&rt).iter(|| async {
            let n = counter.fetch_add(1, Ordering::Relaxed);
            let uri = format!("http://127.0.0.1:8080/posts/{n}");
            black_box(cached.clone().oneshot(request(&uri)).await.expect("miss"))
        });
    });
    group.finish();
    let stats = warm.stats();
    assert_eq!(stats.tier_errors, 0, "{stats:?}");
}

criterion_group!(benches, redis_cache);
criterion_main!(benches);
