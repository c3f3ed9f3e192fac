//! Redis backends for Tollgate: the replicas of a client share one quota,
//! one learned pause and one cache tier.
//!
//! When a service runs as several replicas, each in-process limiter lets
//! through its own N per second and the upstream sees N × replicas; one
//! replica's 429 teaches only itself. [`RedisRateLimitStore`] is a
//! `tollgate_limit` store that makes them one client: every replica pointed
//! at the same Redis and namespace waits its turn for the same permits, and
//! a pause learned by one holds back all.
//!
//! ```
//! use std::time::Duration;
//! use http::{Request, Response};
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//! use tollgate_limit::Quota;
//! use tollgate_redis::{Degraded, RedisRateLimitStore};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower::BoxError> {
//! # let redis = tollgate_testkit::RedisServer::start()?;
//! # let url = redis.url();
//! // `url` is redis://127.0.0.1:PORT here (a test's own redis-server).
//! let store = RedisRateLimitStore::builder(url)
//!     .quota(Quota::per_second(100)?)
//!     .degraded(Degraded::LocalShare { replicas: 4 })
//!     .build()?;
//! let upstream = service_fn(|_req: Request<String>| async {
//!     Ok::<_, std::convert::Infallible>(Response::new(String::new()))
//! });
//! let client = ServiceBuilder::new()
//!     .layer(store.layer().max_wait(Duration::from_secs(5)))
//!     .service(upstream);
//! let response = client.oneshot(Request::new(String::new())).await?;
//! assert!(response.status().is_success());
//! assert_eq!(store.stats().shared, 1, "Redis decided");
//! # Ok(()) }
//! ```
//!
//! # Guarantees
//!
//! - **One decision, one script**: a Lua script (EVALSHA, EVAL when Redis
//!   lost it) reads, decides and writes every quota of a key atomically;
//!   replicas racing for the last permit never both get it. Several quotas
//!   (10 per second and 1 000 per hour) are checked first and committed
//!   together: a call refused by one spends nothing of another.
//! - **The same decisions as in process**: GCRA and strict windows, exact
//!   to the nanosecond (times travel as seconds and nanoseconds: Lua's
//!   numbers are doubles), refusing rather than saturating at the end of
//!   `u64`. The store passes `tollgate_limit::conformance`, the suite the
//!   in-memory store passes.
//! - **Redis's clock**: `TIME` decides, so replicas' clocks do not matter;
//!   answers are on the asking replica's clock (its now plus the delay).
//! - **Waiting callers** wait in the layer's FIFO lanes in process for the
//!   time Redis named, bounded by `max_wait`, `max_queue` and the call's
//!   deadline as in process; only a lane's head asks Redis.
//! - **Shared pauses**: a 429 or 503 `Retry-After`, or `RateLimit` /
//!   `X-RateLimit-*` fields, learned by one replica's layer are written to
//!   Redis under the key's own pause (not under a quota: replicas
//!   configured with other quotas see it too) and hold back every replica;
//!   each check applies it to every quota, which then resumes at its rate
//!   without a burst. A pause never shortens one in force, and
//!   remaining-quota fields can only tighten the state (they become
//!   pauses), never loosen it.
//! - **Redis Cluster**: [`cluster`](RedisRateLimitBuilder::cluster) makes
//!   the URL a seed node; redis-rs's cluster client follows each key to its
//!   slot (`MOVED`, `ASK`). A key's quotas and pause share one hash tag, so
//!   one script decides them on one node.
//! - **A local deny cache**: once Redis says "not before T" for a key, that
//!   replica answers "not before T" until T without asking again (a hash
//!   and a lock, tens of nanoseconds).
//!
//! # Failure modes
//!
//! Each Redis call is bounded by the store's
//! [`timeout`](RedisRateLimitBuilder::timeout) (50 ms by default), the
//! connection's too. A call that fails or takes longer switches the store
//! to its [`Degraded`] mode, logged (`warn`) and counted
//! ([`RedisLimitStats::degradations`]); while degraded, callers are answered
//! at once without Redis:
//!
//! | mode | while Redis is slow or down |
//! |------|-----------------------------|
//! | [`Degraded::FailClosed`] (default) | every caller fails with a `StoreError` ([`RedisUnavailable`]); the facade says `ErrorKind::LimiterUnavailable`; nothing is sent |
//! | [`Degraded::FailOpen`] | every caller is admitted |
//! | [`Degraded::LocalShare`] | each replica keeps `count / replicas` of each quota per period in process: smooth, without a burst, its first permit one interval after the outage began (Redis may have granted a burst just before); back in shared mode, each key it decided resumes in Redis without a burst |
//!
//! A probe asks Redis every [`PROBE_INTERVAL`] (100 ms) and switches back
//! to shared mode when it answers (logged, counted). A caller never waits
//! on Redis longer than the timeout. State in Redis that this store cannot
//! read (another format version, another type, numbers out of range) is
//! not an outage: those callers fail with a `StoreError` in every mode,
//! since no decision over it is sound. Pauses learned while degraded are
//! held by the replica (deny cache, local share) but not written to Redis.
//!
//! A Redis call runs in its caller's task; if the caller stops waiting
//! first, at its `max_wait` or deadline, the call is finished on a task of
//! its own, so it ends (and an outage is noticed) all the same; a check
//! whose caller left may still take a permit in Redis, which then goes
//! unused (never more than the quota).
//!
//! What the store cannot promise, by design:
//!
//! - **Redis is the state.** A Redis restarted without its data, a
//!   failover to a replica that had not caught up, `FLUSHALL`, or eviction
//!   under `maxmemory` forgets what was spent: up to one period's quota is
//!   handed out again. Run Redis with `maxmemory-policy noeviction` (every
//!   key here has a TTL, so the `volatile-*` policies may evict live
//!   state), and with replication or persistence where that matters. The
//!   deny cache and pauses held in process soften it; they do not undo it.
//! - **An outage in local-share mode** keeps the quota's bound only as far
//!   as the replicas count is right and each replica's clock runs at the
//!   same rate: the shares start one interval after the outage, with no
//!   burst, and learn what Redis gave this replica before it, not what it
//!   gave the others; a share's grants never reach Redis, which resumes
//!   those keys without a burst (at most 1 024 keys a replica).
//! - **One key's throughput per replica is one permit per round trip**:
//!   the layer keeps callers first come, first served, and only a lane's
//!   head asks Redis. Over loopback that is some 10 000 per second; over a
//!   15 ms link, some 60. Callers queued behind a head that is asking count
//!   against `max_queue`, as callers waiting for time do.
//! - **First come, first served within a replica, not across replicas.**
//!   Each replica's lane head wakes at the time Redis named and asks again;
//!   whichever replica's ask reaches Redis first takes the permit, and the
//!   others are told the next time. Nothing orders replicas, so under
//!   contention the shares are uneven: measured with 4 processes of 16
//!   callers each, at 100 per second the replicas had 174 to 401 of 1 000
//!   permits, at 5 per second 6 to 19 of 50; at 4 per second between 2
//!   replicas, one of them may take every permit of a second. The quota's
//!   bound holds whoever wins, and a caller that loses too often is refused
//!   at its `max_wait` (`WaitTooLong`), never left waiting past it.
//!
//! # Key layout
//!
//! `<namespace>:rl1<clock>:{<hash>}:pause` (the key's pause, `1:<s>:<ns>`)
//! and `<namespace>:rl1<clock>:{<hash>}:<quota>:<s|l>`: `rl1` is format
//! version 1 (also the first field of every value), `<clock>` is `r` for
//! Redis's clock and `c` for the callers', `<hash>` is the first 16 bytes of
//! SHA-256 over the namespace and the key, in hex (the key may be a
//! credential: it never leaves the process), in braces as the Redis
//! Cluster hash tag so a key's quotas share a slot. `<quota>` names the
//! quota (`g<interval ns>b<burst>` or `w<count>p<period ns>`), so replicas
//! configured with another quota never read this state; `s` is the state
//! (a string `1:<s>:<ns>` for GCRA, a hash `v, pu, re, rn` for a window),
//! `l` a window's grants (a list of at most `count` times). Every key
//! expires one second after its state stops constraining anything. A store
//! remembers the names of the keys it used lately (by a 128-bit keyed hash
//! of the key, never the key), so a call does not hash them again; the
//! names are the same, and replicas of any build share the state.
#![deny(missing_docs)]

/// The README's example, compiled so it stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

mod connect;

pub use connect::InvalidRedisUrl;

// --- rate limit (the lead's) ---
mod rate;
pub use rate::{
    BuildError, Clock, Degraded, Mode, RedisDecision, RedisLimitStats, RedisRateLimitBuilder,
    RedisRateLimitStore, RedisUnavailable, DEFAULT_DENY_CACHE_KEYS, DEFAULT_TIMEOUT,
    FORMAT_VERSION, MAX_WINDOW_COUNT, PROBE_INTERVAL,
};

// --- cache tier (the cache helper's) ---
mod cache;
pub use cache::{
    InvalidCacheTier, RedisCacheTier, RedisCacheTierBuilder, DEFAULT_CACHE_NAMESPACE,
    DEFAULT_CACHE_TIMEOUT,
};
