//! Sends many requests through the Tollgate facade and reports what came back.
//!
//! ```text
//! cargo run --release --example loadgen -- --url http://127.0.0.1:8080/posts/1 \
//!     --requests 10000 --concurrency 64
//! cargo run --release --example loadgen       # against an embedded FakeApi
//! # replicas of one client: run this in several terminals, one quota between them
//! cargo run --release --example loadgen -- --url http://127.0.0.1:8080/posts/1 \
//!     --rate 100/s --redis redis://127.0.0.1:6379 --requests 2000
//! ```
//!
//! Prints the count of each status and error kind, requests per second, and
//! p50/p99/max latency; a progress line on a terminal. With `--redis`, the
//! rate limiter's state is in Redis (`tollgate_redis::RedisRateLimitStore`),
//! so every loadgen process pointing at the same Redis and namespace shares
//! the one quota, and the summary says the store's mode and what it did.
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a command-line tool prints"
)]

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tollgate::Client;
use tollgate_testkit::FakeApi;

struct Options {
    url: Option<String>,
    requests: u64,
    concurrency: u64,
    timeout: Duration,
    retries: Option<u32>,
    concurrency_limit: Option<usize>,
    rate: Option<tollgate_limit::Quota>,
    burst: Option<u32>,
    cache: Option<Duration>,
    redis: Option<String>,
    redis_namespace: String,
    redis_degraded: tollgate_redis::Degraded,
}

const USAGE: &str = "usage: loadgen [--url URL] [--requests N] [--concurrency C] [--timeout-ms MS]
  --url URL          target (default: an embedded FakeApi's /posts/1)
  --requests N       total requests (default 1000)
  --concurrency C    requests in flight (default 16)
  --timeout-ms MS    per-request deadline (default 30000)
  --retries N        retry failed idempotent requests up to N times (RetryLayer defaults otherwise)
  --concurrency-limit N  at most N requests in flight through the client's pool
  --rate N/s | N/m   pace the requests smoothly (GCRA, burst N)
  --rate N/PERIOD    at most N in any window of PERIOD (e.g. 100/60s, 5/500ms)
  --burst N          the smooth rate's burst (default N of --rate): match the upstream's,
                     e.g. --rate 20/s --burst 5 against nginx `limit_req rate=20r/s burst=5`
  --cache SECS       cache responses for SECS seconds (CacheLayer, fixed TTL); the summary counts hits
  --redis URL        keep the --rate quota in Redis (redis:// or rediss://), and with --cache
                     a second cache tier there: every loadgen process with the same Redis and
                     namespace shares them, as replicas do
  --redis-namespace NS  the quota's namespace in Redis (default loadgen)
  --redis-degraded closed | open | share:N
                     while Redis is down or slower than 50 ms: refuse (default), admit
                     everything, or keep this process to 1/N of the quota";

fn parse() -> Result<Options, String> {
    let mut o = Options {
        url: None,
        requests: 1000,
        concurrency: 16,
        timeout: Duration::from_secs(30),
        retries: None,
        concurrency_limit: None,
        rate: None,
        burst: None,
        cache: None,
        redis: None,
        redis_namespace: "loadgen".to_owned(),
        redis_degraded: tollgate_redis::Degraded::FailClosed,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        let number = |s: String, name: &str| {
            s.parse::<u64>()
                .map_err(|_| format!("{name}: `{s}` is not a number"))
        };
        match arg.as_str() {
            "--url" => o.url = Some(value("--url")?),
            "--requests" => o.requests = number(value("--requests")?, "--requests")?,
            "--concurrency" => {
                o.concurrency = number(value("--concurrency")?, "--concurrency")?.max(1);
            }
            "--timeout-ms" => {
                o.timeout = Duration::from_millis(number(value("--timeout-ms")?, "--timeout-ms")?);
            }
            "--retries" => {
                let n = number(value("--retries")?, "--retries")?;
                o.retries = Some(u32::try_from(n).map_err(|_| "--retries: too large".to_owned())?);
            }
            "--rate" => o.rate = Some(parse_rate(&value("--rate")?)?),
            "--burst" => {
                let n = number(value("--burst")?, "--burst")?;
                let n = u32::try_from(n)
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or("--burst: must be 1 or more")?;
                o.burst = Some(n);
            }
            "--concurrency-limit" => {
                let n = number(value("--concurrency-limit")?, "--concurrency-limit")?;
                let n = usize::try_from(n)
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or("--concurrency-limit: must be 1 or more")?;
                o.concurrency_limit = Some(n);
            }
            "--cache" => {
                o.cache = Some(Duration::from_secs(number(value("--cache")?, "--cache")?));
            }
            "--redis" => o.redis = Some(value("--redis")?),
            "--redis-namespace" => o.redis_namespace = value("--redis-namespace")?,
            "--redis-degraded" => o.redis_degraded = parse_degraded(&value("--redis-degraded")?)?,
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    if let Some(burst) = o.burst {
        let quota = o.rate.ok_or("--burst needs --rate")?;
        o.rate = Some(
            quota
                .with_burst(burst)
                .map_err(|e| format!("--burst: {e}"))?,
        );
    }
    if o.redis.is_some() && o.rate.is_none() && o.cache.is_none() {
        return Err(
            "--redis shares the --rate quota and the --cache tier: give --rate or --cache too"
                .to_owned(),
        );
    }
    Ok(o)
}

/// `closed`, `open` or `share:N` (this process's share of N replicas).
fn parse_degraded(text: &str) -> Result<tollgate_redis::Degraded, String> {
    use tollgate_redis::Degraded;
    match text {
        "closed" => Ok(Degraded::FailClosed),
        "open" => Ok(Degraded::FailOpen),
        _ => text
            .strip_prefix("share:")
            .and_then(|n| n.parse::<u32>().ok())
            .filter(|n| *n > 0)
            .map(|replicas| Degraded::LocalShare { replicas })
            .ok_or_else(|| {
                format!("--redis-degraded: `{text}` is not closed, open or share:N (N >= 1)")
            }),
    }
}

/// `20/s` and `20/m` are smooth quotas; `100/60s` and `5/500ms` are windows.
fn parse_rate(text: &str) -> Result<tollgate_limit::Quota, String> {
    use tollgate_limit::Quota;
    let bad = || format!("--rate: `{text}` is not N/s, N/m or N/PERIOD (like 100/60s)");
    let (n, period) = text.split_once('/').ok_or_else(bad)?;
    let n: u32 = n.trim().parse().map_err(|_| bad())?;
    let quota = match period.trim() {
        "s" => Quota::per_second(n),
        "m" => Quota::per_minute(n),
        p => {
            let (digits, unit) = p.split_at(p.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?);
            let amount: u64 = digits.parse().map_err(|_| bad())?;
            let period = match unit {
                "ms" => Duration::from_millis(amount),
                "s" => Duration::from_secs(amount),
                "m" => Duration::from_secs(amount.saturating_mul(60)),
                _ => return Err(bad()),
            };
            Quota::window(n, period)
        }
    };
    quota.map_err(|e| format!("--rate: {e}"))
}

/// Splits `http://host:port/path?q` into the base URL and the path.
fn split_url(url: &str) -> Result<(String, String), String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("--url: {e}"))?;
    let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
        return Err("--url must be absolute, like http://127.0.0.1:8080/posts/1".into());
    };
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    Ok((format!("{scheme}://{authority}"), path.to_owned()))
}

#[derive(Default)]
struct Tally {
    outcomes: BTreeMap<String, u64>,
    latencies: Vec<Duration>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let opts = match parse() {
        Ok(o) => o,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("loadgen: {e}");
            }
            eprintln!("{USAGE}");
            return if e.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            };
        }
    };
    let fake = match &opts.url {
        Some(_) => None,
        None => match FakeApi::start().await {
            Ok(api) => Some(api),
            Err(e) => {
                eprintln!("loadgen: cannot start FakeApi: {e}");
                return ExitCode::FAILURE;
            }
        },
    };
    let url = opts.url.clone().unwrap_or_else(|| {
        format!(
            "{}/posts/1",
            fake.as_ref().map(FakeApi::url).unwrap_or_default()
        )
    });
    let (base, path) = match split_url(&url) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("loadgen: {e}");
            return ExitCode::from(2);
        }
    };
    let mut builder = Client::builder(base).timeout(opts.timeout);
    if let Some(n) = opts.retries {
        builder = builder.retry(tollgate_retry::RetryLayer::new().max_retries(n));
    }
    let mut store = None;
    if let Some(quota) = opts.rate {
        let layer = match &opts.redis {
            None => tollgate_limit::RateLimitLayer::new(quota),
            Some(redis) => {
                // Connects lazily: a Redis that is down now is the degraded
                // mode's to answer, not an error here.
                match tollgate_redis::RedisRateLimitStore::builder(redis.as_str())
                    .quota(quota)
                    .namespace(opts.redis_namespace.as_str())
                    .degraded(opts.redis_degraded)
                    .build()
                {
                    Ok(s) => store.insert(s).layer(),
                    Err(e) => {
                        eprintln!("loadgen: --redis: {e}");
                        return ExitCode::from(2);
                    }
                }
            }
        };
        builder = builder.rate_limit(layer);
    }
    if let Some(n) = opts.concurrency_limit {
        builder = builder.concurrency_limit(tollgate_limit::ConcurrencyLimitLayer::new(n));
    }
    // With --redis too, the cache has a second tier in Redis: every
    // loadgen process serves what one of them fetched.
    let mut tier = None;
    let cache = match (opts.cache, &opts.redis) {
        (None, _) => None,
        (Some(ttl), None) => Some(tollgate_cache::CacheLayer::new(ttl)),
        (Some(ttl), Some(redis)) => {
            match tollgate_redis::RedisCacheTier::builder(redis.as_str())
                .namespace(opts.redis_namespace.as_str())
                .build()
            {
                Ok(t) => {
                    let t = Arc::new(t);
                    tier = Some(Arc::clone(&t));
                    Some(
                        tollgate_cache::CacheLayer::builder(tollgate_cache::Freshness::Fixed(ttl))
                            .tier(t)
                            .build(),
                    )
                }
                Err(e) => {
                    eprintln!("loadgen: --redis (cache tier): {e}");
                    return ExitCode::from(2);
                }
            }
        }
    };
    if let Some(cache) = &cache {
        builder = builder.cache(cache.clone());
    }
    let client = match builder.build() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("loadgen: {e}");
            return ExitCode::from(2);
        }
    };

    println!(
        "loadgen: {} requests to {url} at concurrency {}",
        opts.requests, opts.concurrency
    );
    if store.is_some() {
        println!(
            "loadgen: the rate limit is shared through Redis (namespace `{}`, {:?} while Redis is down)",
            opts.redis_namespace, opts.redis_degraded
        );
    }
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..opts.concurrency)
        .map(|_| {
            let (client, path, next, done) =
                (client.clone(), path.clone(), next.clone(), done.clone());
            let total = opts.requests;
            tokio::spawn(async move {
                let mut tally = Tally::default();
                while next.fetch_add(1, Ordering::Relaxed) < total {
                    let t = Instant::now();
                    let outcome = match client.get(path.as_str()).send().await {
                        Ok(res) => format!("status {}", res.status().as_u16()),
                        Err(e) => format!("error {:?}", e.kind()),
                    };
                    tally.latencies.push(t.elapsed());
                    *tally.outcomes.entry(outcome).or_default() += 1;
                    done.fetch_add(1, Ordering::Relaxed);
                }
                tally
            })
        })
        .collect();

    let progress = std::io::stderr().is_terminal().then(|| {
        let done = done.clone();
        let total = opts.requests;
        tokio::spawn(async move {
            loop {
                let n = done.load(Ordering::Relaxed);
                let width = 30;
                let filled = (n * width).checked_div(total).unwrap_or(width) as usize;
                eprint!(
                    "\r[{}{}] {n}/{total}",
                    "#".repeat(filled),
                    " ".repeat(width as usize - filled)
                );
                if n >= total {
                    eprintln!();
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    });

    let mut all = Tally::default();
    for w in workers {
        match w.await {
            Ok(t) => {
                for (k, v) in t.outcomes {
                    *all.outcomes.entry(k).or_default() += v;
                }
                all.latencies.extend(t.latencies);
            }
            Err(e) => eprintln!("loadgen: a worker failed: {e}"),
        }
    }
    let wall = started.elapsed();
    if let Some(p) = progress {
        let _ = p.await;
    }

    all.latencies.sort_unstable();
    let pct = |p: f64| -> Duration {
        if all.latencies.is_empty() {
            return Duration::ZERO;
        }
        let i = ((all.latencies.len() as f64 - 1.0) * p).round() as usize;
        all.latencies[i]
    };
    for (outcome, count) in &all.outcomes {
        println!("  {outcome:<24} {count}");
    }
    let n = all.latencies.len() as f64;
    println!("requests/s  {:.0}", n / wall.as_secs_f64());
    println!(
        "latency     p50 {:.1?}  p99 {:.1?}  max {:.1?}",
        pct(0.50),
        pct(0.99),
        pct(1.0)
    );
    println!("wall time   {wall:.2?}");
    if let Some(cache) = &cache {
        let stats = cache.stats();
        println!(
            "cache       {} hits, {} misses, {} coalesced",
            stats.hits, stats.misses, stats.coalesced
        );
        if tier.is_some() {
            println!(
                "cache tier  {} hits from Redis, {} misses, {} errors, {} writes",
                stats.tier_hits, stats.tier_misses, stats.tier_errors, stats.tier_writes
            );
        }
    }
    if let Some(store) = &store {
        let s = store.stats();
        println!(
            "redis       mode {:?}: {} decided in Redis, {} by the degraded mode, {} by the deny cache; \
             {} degradations, {} recoveries, {} pauses shared",
            store.mode(),
            s.shared,
            s.degraded,
            s.deny_cache,
            s.degradations,
            s.recoveries,
            s.pauses
        );
    }
    ExitCode::SUCCESS
}
