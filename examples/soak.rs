//! A soak: many calls through the whole facade stack against a FakeApi that
//! answers 10% of requests with 429/503, behind a FaultProxy that resets 1%
//! of exchanges, checking the promises that must hold under load.
//!
//! ```text
//! scripts/soak                       # release build, 100 000 calls
//! cargo run --release --example soak -- --calls 20000 --concurrency 64 --seed 7
//! ```
//!
//! The stack: retry (defaults: 3 retries, budget of 20% + 10/s over 10 s),
//! cache (fixed TTL of 20 ms), rate limit (a quota far above the load),
//! bearer auth, attempt timeout (2 s), concurrency limit (32 in flight).
//! During the first quarter of the calls (the warm-up), one call in 25 is a
//! `POST` to a path of its own (`/anything/soak-N`), without the idempotency
//! opt-in. Only then: FakeApi keeps the last request of every distinct path
//! (which pins hyper's read buffer, about 10 KiB each), so POSTs later on
//! would grow the fixture's memory, not the client's.
//!
//! Checks (exit status 1 if any fails):
//! - every call ends with exactly one outcome: the counts of statuses and
//!   error kinds add up to the calls issued, and none outlives its bound;
//! - no panics: every spawned task is joined and its `JoinError` checked;
//! - no `POST` reaches the server twice (each has a path of its own);
//! - memory is flat after warm-up: the resident set at the end is at most
//!   10% + 8 MiB above the one at 25% of the calls;
//! - retry amplification is within the budget's bound: attempts seen by the
//!   server per call that passed the cache (hits and coalesced calls never
//!   reach the retry layer) are at most `1.2 + floor / calls`, where `floor`
//!   is what the budget allows whatever the traffic (10 retries/s over the
//!   run plus its 10 s window) plus the late-folding slack of
//!   `tollgate_retry::FOLD_EVERY` deposits per 1 s slot (at 20%).
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a command-line tool prints"
)]

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use tokio::time::Instant;
use tollgate::Client;
use tollgate_cache::{CacheLayer, CacheStatus};
use tollgate_limit::{ConcurrencyLimitLayer, Quota, RateLimitLayer};
use tollgate_retry::{RetryLayer, RetryReason, RetryRecord, FOLD_EVERY};
use tollgate_testkit::{FakeApi, Fault, FaultMix, FaultProxy, ProxyFault};

const USAGE: &str = "usage: soak [--calls N] [--concurrency C] [--seed S]
  --calls N        calls to issue (default 100000)
  --concurrency C  callers at once (default 64)
  --seed S         seed of the proxy's fault mix (default 1)
  --post-every N   one call in N of the first quarter is a POST (default 25; 0 for none)";

/// The bearer token FakeApi requires.
const TOKEN: &str = "soak-token";
/// The most a call may take before it counts as hung: well past the
/// facade's own 30 s deadline.
const CALL_BOUND: Duration = Duration::from_secs(90);
/// Memory growth allowed from 25% to 100% of the calls.
const RSS_GROWTH_RATIO: f64 = 0.10;
const RSS_GROWTH_BYTES: u64 = 8 << 20;
/// The default retry budget's floor, window and ratio (tollgate-retry).
const BUDGET_FLOOR_PER_SEC: f64 = 10.0;
const BUDGET_WINDOW_SECS: f64 = 10.0;
const BUDGET_RATIO: f64 = 0.2;

struct Options {
    calls: u64,
    concurrency: u64,
    seed: u64,
    /// One call in this many of the first quarter is a POST (0: none).
    post_every: u64,
}

fn parse() -> Result<Options, String> {
    let mut o = Options {
        calls: 100_000,
        concurrency: 64,
        seed: 1,
        post_every: 25,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut number = |name: &str| -> Result<u64, String> {
            let v = args.next().ok_or(format!("{name} needs a value"))?;
            v.parse()
                .map_err(|_| format!("{name}: `{v}` is not a number"))
        };
        match arg.as_str() {
            "--calls" => o.calls = number("--calls")?,
            "--concurrency" => o.concurrency = number("--concurrency")?.max(1),
            "--seed" => o.seed = number("--seed")?,
            "--post-every" => o.post_every = number("--post-every")?,
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    Ok(o)
}

/// The resident set size, from `/proc/self/statm` (0 where there is none).
fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

#[derive(Default)]
struct Tally {
    outcomes: BTreeMap<String, u64>,
    /// Attempts the retry layer recorded, over the calls that returned a
    /// response.
    attempts: u64,
    /// Injected statuses the callers saw: retried ones and final ones.
    statuses_seen: u64,
    cache_hits: u64,
    posts: Vec<u64>,
}

impl Tally {
    fn add(&mut self, other: Tally) {
        for (k, v) in other.outcomes {
            *self.outcomes.entry(k).or_default() += v;
        }
        self.attempts += other.attempts;
        self.statuses_seen += other.statuses_seen;
        self.cache_hits += other.cache_hits;
        self.posts.extend(other.posts);
    }
}

fn throttled(status: StatusCode) -> bool {
    status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE
}

/// Keeps FakeApi answering about 10% of requests with 503 or 429: every
/// 10 ms, fresh cycles of faults for twice the traffic of the last tick,
/// each cycle 10 requests with one fault in the middle (4 answered
/// normally, a 503 or a 429 in turn, 5 normally). What is left unused is
/// dropped at the next tick.
async fn throttle(api: Arc<FakeApi>, stop: Arc<AtomicBool>) {
    let mut last = api.total_hits();
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let now = api.total_hits();
        let recent = now.saturating_sub(last).max(10);
        last = now;
        api.clear_faults();
        // Twice the last tick's traffic: a queue that runs dry lets
        // requests through unfaulted, one cut short keeps the rate.
        for cycle in 0..(recent * 2).div_ceil(10) {
            let status = if cycle % 2 == 0 {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::TOO_MANY_REQUESTS
            };
            api.inject("*", Fault::latency(Duration::ZERO).times(4));
            api.inject("*", Fault::status(status).times(1));
            api.inject("*", Fault::latency(Duration::ZERO).times(5));
        }
    }
    api.clear_faults();
}

async fn one_call(client: &Client, i: u64, posts: (u64, u64), tally: &mut Tally) {
    let (post_every, posts_until) = posts;
    let call = async {
        if post_every > 0 && i.is_multiple_of(post_every) && i < posts_until {
            tally.posts.push(i);
            client
                .post(format!("/anything/soak-{i}"))
                .json(&serde_json::json!({"call": i}))
                .send()
                .await
        } else {
            client
                .get("/posts/{id}")
                .path_param("id", i % 100 + 1)
                .send()
                .await
        }
    };
    let outcome = match tokio::time::timeout(CALL_BOUND, call).await {
        Err(_) => "hung (no outcome)".to_owned(),
        Ok(Ok(res)) => {
            if let Some(record) = res.extensions().get::<RetryRecord>() {
                tally.attempts += u64::from(record.attempts);
                tally.statuses_seen += record
                    .retries
                    .iter()
                    .filter(|r| matches!(r.reason, RetryReason::Status(s) if throttled(s)))
                    .count() as u64;
            }
            if throttled(res.status()) {
                tally.statuses_seen += 1;
            }
            if res.extensions().get::<CacheStatus>() == Some(&CacheStatus::Hit) {
                tally.cache_hits += 1;
            }
            format!("ok {}", res.status().as_u16())
        }
        Ok(Err(e)) => format!("error {:?}", e.kind()),
    };
    *tally.outcomes.entry(outcome).or_default() += 1;
}

fn check(failures: &mut Vec<String>, ok: bool, what: String) {
    println!("  [{}] {what}", if ok { " ok " } else { "FAIL" });
    if !ok {
        failures.push(what);
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let opts = match parse() {
        Ok(o) => o,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("soak: {e}");
            }
            eprintln!("{USAGE}");
            return if e.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            };
        }
    };
    match run(&opts).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("soak: {e}");
            ExitCode::from(2)
        }
    }
}

async fn run(opts: &Options) -> Result<bool, Box<dyn std::error::Error>> {
    let api = Arc::new(FakeApi::start().await?);
    api.require_bearer(TOKEN);
    let proxy = FaultProxy::start(api.addr()).await?;
    // 1% of exchanges reset after the server answered: half before any of
    // the answer reaches the client, half after 250 bytes of it (past the
    // head of a `/posts/N` answer, into its body).
    proxy.mix(
        FaultMix::new(opts.seed)
            .with(ProxyFault::reset_after(0), 0.005)
            .with(ProxyFault::reset_after(250), 0.005),
    );
    let cache = CacheLayer::new(Duration::from_millis(20));
    let client = Client::builder(proxy.url())
        .retry(RetryLayer::new())
        .cache(cache.clone())
        .rate_limit(RateLimitLayer::new(Quota::per_second(1_000_000)?))
        .bearer_auth(TOKEN)
        .attempt_timeout(Duration::from_secs(2))
        .concurrency_limit(ConcurrencyLimitLayer::new(32))
        .build()?;

    println!(
        "soak: {} calls, {} callers, seed {}, through {} to {}",
        opts.calls,
        opts.concurrency,
        opts.seed,
        proxy.url(),
        api.url()
    );
    let stop = Arc::new(AtomicBool::new(false));
    let throttler = tokio::spawn(throttle(Arc::clone(&api), Arc::clone(&stop)));

    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..opts.concurrency)
        .map(|_| {
            let (client, next, done) = (client.clone(), Arc::clone(&next), Arc::clone(&done));
            let (total, post_every) = (opts.calls, opts.post_every);
            tokio::spawn(async move {
                let mut tally = Tally::default();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        break;
                    }
                    one_call(&client, i, (post_every, total / 4), &mut tally).await;
                    done.fetch_add(1, Ordering::Relaxed);
                }
                tally
            })
        })
        .collect();

    // The resident set at 25% (after warm-up), 50% and 75% of the calls.
    let probe = {
        let done = Arc::clone(&done);
        let calls = opts.calls;
        tokio::spawn(async move {
            let mut samples = Vec::new();
            for quarter in 1..=3 {
                while done.load(Ordering::Relaxed) < calls * quarter / 4 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                samples.push(rss_bytes());
            }
            samples
        })
    };

    let mut all = Tally::default();
    let mut panics = 0u64;
    for w in workers {
        match w.await {
            Ok(t) => all.add(t),
            Err(e) => {
                eprintln!("soak: a caller failed: {e}");
                panics += 1;
            }
        }
    }
    let wall = started.elapsed();
    let rss_end = rss_bytes();
    stop.store(true, Ordering::Relaxed);
    let samples = match probe.await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("soak: the memory probe failed: {e}");
            panics += 1;
            Vec::new()
        }
    };
    let rss_quarter = samples.first().copied().unwrap_or_default();
    if let Err(e) = throttler.await {
        eprintln!("soak: the fault task failed: {e}");
        panics += 1;
    }

    let issued = next.load(Ordering::Relaxed).min(opts.calls);
    let outcomes: u64 = all.outcomes.values().sum();
    let server_attempts = api.total_hits();
    let calls = opts.calls.max(1) as f64;
    let cache_stats = cache.stats();
    // Calls the cache answered never reach the retry layer, so neither
    // fund its budget nor cost an attempt: the bound is on the others.
    let from_cache = all.cache_hits + cache_stats.coalesced;
    let upstream_calls = opts.calls.saturating_sub(from_cache).max(1) as f64;
    let secs = wall.as_secs_f64();
    let floor = BUDGET_FLOOR_PER_SEC * (secs + BUDGET_WINDOW_SECS)
        + BUDGET_RATIO * FOLD_EVERY as f64 * (secs + 1.0);
    let amplification = server_attempts as f64 / upstream_calls;
    let bound = 1.0 + BUDGET_RATIO + floor / upstream_calls;
    let posts_twice: Vec<u64> = all
        .posts
        .iter()
        .copied()
        .filter(|i| api.hits(&format!("/anything/soak-{i}")) > 1)
        .collect();
    let posts_seen = api.hits("/anything/*");
    let rss_limit = (rss_quarter as f64 * (1.0 + RSS_GROWTH_RATIO)) as u64 + RSS_GROWTH_BYTES;
    let stats = proxy.stats();

    println!("outcomes:");
    for (outcome, count) in &all.outcomes {
        println!("  {outcome:<28} {count}");
    }
    println!(
        "wall time            {wall:.2?} ({:.0} calls/s)",
        calls / secs
    );
    println!(
        "server attempts      {server_attempts} for {upstream_calls} calls past the cache \
         ({amplification:.4} per call; bound {bound:.4}; {:.4} per call issued)",
        server_attempts as f64 / calls
    );
    println!(
        "injected 429/503     {} seen by callers ({:.1}% of server attempts)",
        all.statuses_seen,
        100.0 * all.statuses_seen as f64 / server_attempts.max(1) as f64
    );
    println!(
        "proxy                {} connections, {} exchanges, {} resets ({:.2}%)",
        stats.connections,
        stats.exchanges,
        stats.resets,
        100.0 * stats.resets as f64 / stats.exchanges.max(1) as f64
    );
    println!(
        "cache                {} hits, {} misses, {} coalesced",
        cache_stats.hits, cache_stats.misses, cache_stats.coalesced
    );
    println!(
        "POSTs                {} issued, {} reached the server",
        all.posts.len(),
        posts_seen
    );
    println!(
        "resident set         {} MiB at 25%, 50%, 75%, {:.1} MiB at 100% (limit {:.1} MiB)",
        samples
            .iter()
            .map(|r| format!("{:.1}", mib(*r)))
            .collect::<Vec<_>>()
            .join(", "),
        mib(rss_end),
        mib(rss_limit)
    );

    println!("checks:");
    let mut failures = Vec::new();
    check(
        &mut failures,
        outcomes == issued && issued == opts.calls,
        format!("{outcomes} outcomes for {issued} calls issued"),
    );
    let hung = all
        .outcomes
        .get("hung (no outcome)")
        .copied()
        .unwrap_or_default();
    check(
        &mut failures,
        hung == 0,
        format!("{hung} calls without an outcome after {CALL_BOUND:?}"),
    );
    check(
        &mut failures,
        panics == 0,
        format!("{panics} tasks panicked or were cancelled"),
    );
    check(
        &mut failures,
        posts_twice.is_empty() && posts_seen <= all.posts.len() as u64,
        format!(
            "no POST sent twice ({} sent twice{})",
            posts_twice.len(),
            posts_twice
                .first()
                .map(|i| format!(", e.g. /anything/soak-{i}"))
                .unwrap_or_default()
        ),
    );
    check(
        &mut failures,
        rss_quarter > 0 && rss_end <= rss_limit,
        format!(
            "memory flat: {:.1} MiB -> {:.1} MiB (at most +10% +8 MiB)",
            mib(rss_quarter),
            mib(rss_end)
        ),
    );
    check(
        &mut failures,
        amplification <= bound,
        format!("retry amplification {amplification:.4} <= {bound:.4}"),
    );
    check(
        &mut failures,
        stats.resets > 0 && all.statuses_seen > 0,
        format!(
            "faults were injected ({} resets, {} 429/503 seen)",
            stats.resets, all.statuses_seen
        ),
    );
    if failures.is_empty() {
        println!("soak: all checks passed");
        Ok(true)
    } else {
        println!("soak: {} check(s) failed", failures.len());
        Ok(false)
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}
