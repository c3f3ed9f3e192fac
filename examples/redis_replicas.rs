//! Two replicas of an axum gateway acting as one client of their upstream:
//! one rate-limit quota, one learned pause and one cache tier, shared
//! through Redis.
//!
//! Each replica has its own Tollgate client whose rate limiter keeps its
//! state in Redis (`tollgate_redis::RedisRateLimitStore`, same Redis, same
//! namespace), in front of one upstream (the testkit's FakeApi). Both
//! replicas are driven at once; the upstream sees the one quota (10 per
//! second), not one per replica. Then the upstream answers one call of
//! replica A with `429` and `Retry-After: 1`: replica B's next call waits
//! out the pause A learned, though B never saw a 429. Last, a user fetched
//! through replica A's cache is served to replica B from the cache's Redis
//! tier (`tollgate_redis::RedisCacheTier`), without a second upstream call.
//!
//! ```text
//! cargo run --example redis_replicas                    # starts its own redis-server
//! cargo run --example redis_replicas -- --redis redis://127.0.0.1:6379
//! ```
//!
//! Without `--redis` it starts a `redis-server` of its own on a free
//! loopback port if one is on the PATH, and otherwise says how to get one
//! and exits (successfully: nothing is wrong with the example).
//!
//! The two replicas run in one process here for a self-contained demo;
//! they share nothing but Redis, exactly as two processes (or two hosts)
//! would.
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "an example prints"
)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::routing::get;
use axum::Router;
use tokio::time::Instant;
use tollgate::Client;
use tollgate_limit::Quota;
use tollgate_redis::{Degraded, RedisRateLimitStore};
use tollgate_testkit::{FakeApi, Fault, RedisServer, HOW_TO_GET_REDIS};

/// The upstream's quota, shared by both replicas.
const PER_SECOND: u32 = 10;
/// How long both replicas are driven.
const DRIVE: Duration = Duration::from_secs(2);

/// One replica: its upstream client and what it admitted, and a client
/// whose cache has a second tier in Redis.
#[derive(Clone)]
struct Replica {
    upstream: Client,
    admitted: Arc<AtomicU64>,
    cached: Client,
    cache: tollgate_cache::CacheLayer,
}

/// `GET /users/{id}`: the upstream's user, through a cache whose second
/// tier (Redis) both replicas share.
async fn user(State(replica): State<Replica>, Path(id): Path<u64>) -> (StatusCode, String) {
    match replica.cached.get(format!("/users/{id}")).send().await {
        Ok(response) => (response.status(), response.text_lossy()),
        Err(e) => (StatusCode::BAD_GATEWAY, format!("{e}\n")),
    }
}

/// `GET /posts/{id}`: the upstream's post, through the shared limiter. The
/// answer says how long the call waited for its permit
/// (`x-permit-wait-ms`).
async fn post(
    State(replica): State<Replica>,
    Path(id): Path<u64>,
) -> (StatusCode, HeaderMap, String) {
    match replica.upstream.get(format!("/posts/{id}")).send().await {
        Ok(response) => {
            replica.admitted.fetch_add(1, Ordering::Relaxed);
            let mut headers = HeaderMap::new();
            let wait = response.summary().permit_wait.as_millis().to_string();
            if let Ok(value) = HeaderValue::from_str(&wait) {
                headers.insert("x-permit-wait-ms", value);
            }
            (response.status(), headers, response.text_lossy())
        }
        Err(e) => (StatusCode::BAD_GATEWAY, HeaderMap::new(), format!("{e}\n")),
    }
}

/// Starts a replica: its own store (its own connection to Redis), client
/// and listener.
async fn replica(
    redis: &str,
    namespace: &str,
    upstream: &str,
) -> Result<(String, Replica, RedisRateLimitStore), Box<dyn std::error::Error>> {
    let store = RedisRateLimitStore::builder(redis)
        .quota(Quota::per_second(PER_SECOND)?.with_burst(1)?)
        .namespace(namespace)
        // Redis down: each replica keeps to half the quota on its own.
        .degraded(Degraded::LocalShare { replicas: 2 })
        .build()?;
    let client = Client::builder(upstream)
        .rate_limit(store.layer().max_wait(Duration::from_secs(5)))
        .build()?;
    let tier = tollgate_redis::RedisCacheTier::builder(redis)
        .namespace(namespace)
        .build()?;
    let cache = tollgate_cache::CacheLayer::builder(tollgate_cache::Freshness::Fixed(
        Duration::from_secs(60),
    ))
    .tier(Arc::new(tier))
    .build();
    let cached = Client::builder(upstream).cache(cache.clone()).build()?;
    let state = Replica {
        upstream: client,
        admitted: Arc::new(AtomicU64::new(0)),
        cached,
        cache,
    };
    let app = Router::new()
        .route("/posts/{id}", get(post))
        .route("/users/{id}", get(user))
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((url, state, store))
}

/// `--redis URL`, if given.
fn redis_arg() -> Result<Option<String>, String> {
    let mut args = std::env::args().skip(1);
    let mut redis = None;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--redis" => redis = Some(args.next().ok_or("--redis needs a URL")?),
            other => return Err(format!("unknown argument `{other}` (usage: [--redis URL])")),
        }
    }
    Ok(redis)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (url, _own_server) = match redis_arg()? {
        Some(url) => (url, None),
        None => {
            let server = match RedisServer::start() {
                Ok(server) => server,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    println!("redis_replicas needs a redis-server: {HOW_TO_GET_REDIS};");
                    println!("or point it at one: cargo run --example redis_replicas -- --redis redis://HOST:PORT");
                    return Ok(());
                }
                Err(e) => return Err(e.into()),
            };
            (server.url(), Some(server))
        }
    };
    let api = FakeApi::start().await?;
    // A namespace of this run's own: a shared Redis may hold older state.
    let namespace = format!("redis_replicas-{}", std::process::id());
    let (url_a, a, store_a) = replica(&url, &namespace, &api.url()).await?;
    let (url_b, b, store_b) = replica(&url, &namespace, &api.url()).await?;
    println!(
        "replica A on {url_a}, replica B on {url_b}, one upstream on {}",
        api.url()
    );
    println!("one quota in Redis: {PER_SECOND} per second for both replicas\n");

    // Callers of the gateways: 4 at a time on each replica, for 2 s.
    let (callers_a, callers_b) = (Client::new(&url_a)?, Client::new(&url_b)?);
    let started = Instant::now();
    let end = started + DRIVE;
    let mut tasks = Vec::new();
    for callers in [&callers_a, &callers_b] {
        for _ in 0..4 {
            let callers = callers.clone();
            tasks.push(tokio::spawn(async move {
                while Instant::now() < end {
                    let call = callers.get("/posts/1").send();
                    if tokio::time::timeout_at(end, call).await.is_err() {
                        break;
                    }
                }
            }));
        }
    }
    for task in tasks {
        task.await?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let (n_a, n_b) = (
        a.admitted.load(Ordering::Relaxed),
        b.admitted.load(Ordering::Relaxed),
    );
    let seen = api.hits("/posts/*");
    println!("in {elapsed:.1} s, both replicas driven at once:");
    println!(
        "  replica A admitted {n_a} calls ({:.1}/s)",
        n_a as f64 / elapsed
    );
    println!(
        "  replica B admitted {n_b} calls ({:.1}/s)",
        n_b as f64 / elapsed
    );
    println!(
        "  the upstream saw   {seen} calls ({:.1}/s): one quota of {PER_SECOND}/s, not {PER_SECOND}/s per replica\n",
        seen as f64 / elapsed
    );

    // One 429 seen by replica A pauses replica B too.
    api.inject(
        "/posts/1",
        Fault::status(StatusCode::TOO_MANY_REQUESTS)
            .times(1)
            .retry_after("1"),
    );
    let answer = callers_a.get("/posts/1").send().await?;
    println!(
        "replica A's call got {} with Retry-After: 1 from the upstream",
        answer.status()
    );
    // A's store writes the pause to Redis as the 429 passes through it.
    let shared_by = Instant::now() + Duration::from_millis(500);
    while store_a.stats().pauses == 0 && Instant::now() < shared_by {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let before = api.hits("/posts/*");
    let asked = Instant::now();
    let answer = callers_b.get("/posts/1").send().await?;
    let waited = answer
        .headers()
        .get("x-permit-wait-ms")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("?")
        .to_owned();
    println!(
        "replica B's next call: {} after {:.2} s (its permit wait: {waited} ms), the upstream saw nothing meanwhile ({} calls)",
        answer.status(),
        asked.elapsed().as_secs_f64(),
        api.hits("/posts/*").saturating_sub(before + 1)
    );

    // One cache tier: what replica A fetched, replica B serves from Redis.
    let _ = callers_a.get("/users/1").send().await?;
    let _ = callers_b.get("/users/1").send().await?;
    let (sa, sb) = (a.cache.stats(), b.cache.stats());
    println!(
        "GET /users/1 through A, then through B: the upstream saw {} call; A: {} miss, \
         wrote {} entry to Redis; B: {} hit from the Redis tier",
        api.hits("/users/1"),
        sa.misses,
        sa.tier_writes,
        sb.tier_hits
    );
    for (name, store) in [("A", &store_a), ("B", &store_b)] {
        let s = store.stats();
        println!(
            "store {name}: mode {:?}, {} decisions in Redis, {} from the deny cache, {} pauses shared",
            store.mode(),
            s.shared,
            s.deny_cache,
            s.pauses
        );
    }
    Ok(())
}
