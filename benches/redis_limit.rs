//! The Redis rate-limit store (`tollgate_redis::RedisRateLimitStore`)
//! against one local redis-server that the bench starts itself (the
//! testkit's `RedisServer`, a free loopback port, no persistence).
//!
//! - **Permits per second** from one process: T tasks on a 2-worker runtime,
//!   each calling `check` in a loop for 3 s, on one key with a quota of a
//!   billion per second (every call is a permit, each a script run in
//!   Redis), T = 1, 16, 64, 256; and on distinct keys (a new key per call)
//!   at T = 64. Each call's latency is recorded: p50, p99 and max printed.
//! - **Why**: the same server's ceilings measured by `redis-benchmark` (if
//!   on the PATH): `PING` and `EVALSHA` of the store's own script with the
//!   store's own command (`script_command`: its keys and arguments as it
//!   sends them; run once by hand first and its answer printed, so that an
//!   error path is never what is measured), and of a minimal GCRA-like
//!   script (`TIME`, `GET`, `SET PX`), over 64 connections, over one
//!   connection pipelining 64 (the store uses one multiplexed connection)
//!   and one at a time; and the server's own time per script call (`INFO
//!   commandstats`), for the throughput runs and for each script under
//!   `redis-benchmark`: a figure the machine's load changes little.
//! - **criterion**: one decision's round trip (`check`, one caller),
//!   `check` on a key Redis just refused (answered by the deny cache; with
//!   a fixed `now`, the store's own cost, and with a system-clock read),
//!   `MemoryStore::check_sync` in process for comparison, and the
//!   system-clock read alone.
//!
//! - **Instructions per `check`** (the client's side, load-independent):
//!   `REDIS_LIMIT_CALLS=N` runs only N sequential checks; the bench runs
//!   itself so under `valgrind --tool=callgrind` (if on the PATH) with two
//!   values of N and prints the difference of the counts over the
//!   difference of N.
//!
//! `cargo bench --bench redis_limit` (about three minutes). The store's timeout
//! is set to 1 s here so that a loaded machine measures Redis, not the
//! degraded mode; the counts of refusals and failures are printed.
#![allow(missing_docs, clippy::print_stdout, reason = "a benchmark binary")]

use std::hint::black_box;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use criterion::Criterion;
use tokio::time::Instant;
use tollgate_limit::{MemoryStore, Quota, RateLimitStore, UnixNanos};
use tollgate_redis::RedisRateLimitStore;
use tollgate_testkit::{RedisServer, HOW_TO_GET_REDIS};

/// How long each throughput point runs.
const RUN: Duration = Duration::from_secs(3);

fn unix_now() -> UnixNanos {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// A billion per second: every call is a permit.
fn huge() -> Quota {
    Quota::per_second(1_000_000_000).expect("valid")
}

fn store(url: &str, namespace: &str, quota: Quota) -> RedisRateLimitStore {
    RedisRateLimitStore::builder(url)
        .quota(quota)
        .namespace(namespace)
        .timeout(Duration::from_secs(1))
        .build()
        .expect("store")
}

struct Point {
    permits: u64,
    refused: u64,
    failed: u64,
    latencies: Vec<Duration>,
    elapsed: Duration,
}

/// `tasks` tasks calling `check` for [`RUN`].
async fn throughput(url: &str, tasks: usize, distinct: bool) -> Point {
    let store = Arc::new(store(url, &format!("bench-{tasks}-{distinct}"), huge()));
    let started = Instant::now();
    let end = started + RUN;
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let mut point = Point {
                    permits: 0,
                    refused: 0,
                    failed: 0,
                    latencies: Vec::with_capacity(1 << 16),
                    elapsed: Duration::ZERO,
                };
                let mut i = 0u64;
                while Instant::now() < end {
                    let key = if distinct {
                        i += 1;
                        format!("key-{t}-{i}")
                    } else {
                        String::new()
                    };
                    let asked = Instant::now();
                    match store.check(&key, unix_now()).await {
                        Ok(Ok(())) => point.permits += 1,
                        Ok(Err(_)) => point.refused += 1,
                        Err(_) => point.failed += 1,
                    }
                    point.latencies.push(asked.elapsed());
                }
                point
            })
        })
        .collect();
    let mut all = Point {
        permits: 0,
        refused: 0,
        failed: 0,
        latencies: Vec::new(),
        elapsed: Duration::ZERO,
    };
    for handle in handles {
        let p = handle.await.expect("task");
        all.permits += p.permits;
        all.refused += p.refused;
        all.failed += p.failed;
        all.latencies.extend(p.latencies);
    }
    all.elapsed = started.elapsed();
    all
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Runs a program; its standard output, or `None` when it is missing or
/// fails.
#[allow(clippy::disallowed_methods)]
fn run(program: &str, args: &[String]) -> Option<String> {
    let output = Command::new(program).args(args).output().ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

/// `redis-benchmark`'s requests per second (and its latency summary) for a
/// command, over `clients` connections each pipelining `pipeline`.
fn redis_benchmark(port: u16, clients: u32, pipeline: u32, command: &[String]) -> String {
    let mut args = vec![
        "-p".to_owned(),
        port.to_string(),
        "-c".to_owned(),
        clients.to_string(),
        "-P".to_owned(),
        pipeline.to_string(),
        "-n".to_owned(),
        "300000".to_owned(),
        "-q".to_owned(),
    ];
    args.extend(command.iter().cloned());
    run("redis-benchmark", &args).map_or_else(
        || "redis-benchmark not available".to_owned(),
        |out| {
            // `-q` prints progress with carriage returns, then the result.
            out.rsplit('\r')
                .next()
                .unwrap_or_default()
                .trim()
                .to_owned()
        },
    )
}

/// `REDIS_LIMIT_CALLS=N`: only N `check`s one after another (one caller,
/// one key), then exit: run under `valgrind --tool=callgrind` twice with
/// two values of N, the difference of the instruction counts divided by
/// the difference of N is the client's instructions per `check`, a figure
/// a loaded machine does not change (valgrind does not follow the
/// redis-server child).
fn sequential_calls(rt: &tokio::runtime::Runtime, url: &str, calls: u64) {
    let one = store(url, "bench-calls", huge());
    let (mut permits, mut other) = (0u64, 0u64);
    rt.block_on(async {
        for _ in 0..calls {
            match one.check("", unix_now()).await {
                Ok(Ok(())) => permits += 1,
                _ => other += 1,
            }
        }
    });
    println!("{calls} sequential checks: {permits} permits, {other} other");
}

/// The client's instructions per `check`: this binary run twice under
/// callgrind (`REDIS_LIMIT_CALLS`), the difference of the two counts over
/// the difference of the calls. `None` without valgrind.
#[allow(clippy::disallowed_methods)]
fn instructions_per_check() -> Option<u64> {
    let exe = std::env::current_exe().ok()?;
    let count = |calls: u64| -> Option<u64> {
        let output = Command::new("valgrind")
            .args(["--tool=callgrind", "--callgrind-out-file=/dev/null"])
            .arg(&exe)
            .env("REDIS_LIMIT_CALLS", calls.to_string())
            .output()
            .ok()?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        let line = stderr.lines().find(|l| l.contains("Collected :"))?;
        line.rsplit(' ').next()?.trim().parse().ok()
    };
    let (few, many) = (count(300)?, count(1_300)?);
    Some(many.saturating_sub(few) / 1_000)
}

fn main() {
    let redis = RedisServer::start().expect(HOW_TO_GET_REDIS);
    let url = redis.url();
    let port = redis.addr().port();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    // The stores connect lazily on the runtime.
    let _runtime = rt.enter();
    if let Some(calls) = std::env::var("REDIS_LIMIT_CALLS")
        .ok()
        .and_then(|n| n.parse().ok())
    {
        sequential_calls(&rt, &url, calls);
        return;
    }

    println!("permits per second from one process, one connection ({RUN:?} each)");
    println!(
        "{:<22} {:>10} {:>9} {:>9} {:>9} {:>8} {:>7}",
        "tasks", "permits/s", "p50", "p99", "max", "refused", "failed"
    );
    for (tasks, distinct) in [
        (1, false),
        (16, false),
        (64, false),
        (256, false),
        (64, true),
    ] {
        let mut point = rt.block_on(throughput(&url, tasks, distinct));
        point.latencies.sort_unstable();
        let label = format!(
            "{tasks} ({})",
            if distinct { "distinct keys" } else { "one key" }
        );
        println!(
            "{label:<22} {:>10.0} {:>9.1?} {:>9.1?} {:>9.1?} {:>8} {:>7}",
            point.permits as f64 / point.elapsed.as_secs_f64(),
            percentile(&point.latencies, 0.50),
            percentile(&point.latencies, 0.99),
            percentile(&point.latencies, 1.0),
            point.refused,
            point.failed,
        );
    }

    // Why: the server's own time per script call, and its ceilings.
    let commandstats = run(
        "redis-cli",
        &[
            "-p".to_owned(),
            port.to_string(),
            "INFO".to_owned(),
            "commandstats".to_owned(),
        ],
    )
    .unwrap_or_default();
    println!("\nserver side (INFO commandstats):");
    for line in commandstats.lines() {
        if line.starts_with("cmdstat_evalsha") || line.starts_with("cmdstat_eval:") {
            println!("  {}", line.trim());
        }
    }
    let sha = run(
        "redis-cli",
        &[
            "-p".to_owned(),
            port.to_string(),
            "SCRIPT".to_owned(),
            "LOAD".to_owned(),
            include_str!("../crates/tollgate-redis/src/rate.lua").to_owned(),
        ],
    )
    .map(|s| s.trim().to_owned())
    .unwrap_or_default();
    // The store's own command for a check (its keys and arguments, as it
    // sends them), with the hash of the script as loaded here.
    let probe = store(&url, "bench-redis-benchmark", huge());
    let mut evalsha = probe.script_command("");
    if !sha.is_empty() {
        evalsha[1] = sha;
    }
    // One run by hand first: the answer must be a permit, not an error (a
    // wrong invocation would measure the error path).
    let answer = run(
        "redis-cli",
        &[["-p".to_owned(), port.to_string()].as_slice(), &evalsha].concat(),
    )
    .unwrap_or_default();
    println!(
        "  the store's script by hand: {}",
        answer.split_whitespace().collect::<Vec<_>>().join(" ")
    );
    let ping = vec!["PING".to_owned()];
    // The least a GCRA script does: read the clock, read and write its key.
    let minimal = [
        "EVAL",
        "local t = redis.call('TIME'); local v = redis.call('GET', KEYS[1]); \
         redis.call('SET', KEYS[1], t[1], 'PX', 1000); return {0, t[1], t[2]}",
        "1",
        "bench-minimal",
    ]
    .map(str::to_owned)
    .to_vec();
    println!("\nthe same server's ceilings (redis-benchmark, 300,000 requests):");
    let stat = |args: &[&str]| {
        let mut all = vec!["-p".to_owned(), port.to_string()];
        all.extend(args.iter().map(|a| (*a).to_owned()));
        run("redis-cli", &all).unwrap_or_default()
    };
    for (name, command) in [
        ("PING", &ping),
        ("EVAL (a minimal GCRA-like script)", &minimal),
        ("EVALSHA (the store's script)", &evalsha),
    ] {
        stat(&["CONFIG", "RESETSTAT"]);
        for (clients, pipeline) in [(64, 1), (1, 64), (1, 1)] {
            println!(
                "  {name:<30} {clients:>2} conn x {pipeline:>2} pipelined: {}",
                redis_benchmark(port, clients, pipeline, command)
                    .rsplit(": ")
                    .next()
                    .unwrap_or_default()
            );
        }
        // The server's own time per call of this script, whatever the
        // machine's load did to the rates above.
        for line in stat(&["INFO", "commandstats"]).lines() {
            if line.starts_with("cmdstat_evalsha") || line.starts_with("cmdstat_eval:") {
                println!("    {}", line.trim());
            }
        }
    }
    println!(
        "\nthe client's instructions per check (callgrind, one caller): {}",
        instructions_per_check()
            .map_or_else(|| "valgrind not available".to_owned(), |n| n.to_string())
    );
    println!();

    let mut c = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    let mut group = c.benchmark_group("redis_limit");
    let one = store(&url, "bench-one", huge());
    group.bench_function("check_round_trip", |b| {
        b.to_async(&rt).iter(|| one.check("", unix_now()));
    });
    // A key Redis refused: one permit an hour, taken, then refused; the
    // deny cache answers until the hour is over.
    let refusing = store(
        &url,
        "bench-deny",
        Quota::per(1, Duration::from_secs(3_600)).expect("valid"),
    );
    rt.block_on(async {
        let first = refusing.check("refused", unix_now()).await;
        assert!(
            matches!(first, Ok(Ok(()))),
            "the first call takes the permit"
        );
        let second = refusing.check("refused", unix_now()).await;
        assert!(matches!(second, Ok(Err(_))), "the second is refused");
    });
    let before = refusing.stats().deny_cache;
    // The store's own cost (a fixed `now`: the layer reads its clock
    // anyway), then with a read of the system clock.
    let now = unix_now();
    group.bench_function("deny_cache_hit", |b| {
        b.iter(|| black_box(refusing.check("refused", now).now_or_later().is_ok()));
    });
    group.bench_function("deny_cache_hit_with_clock", |b| {
        b.iter(|| black_box(refusing.check("refused", unix_now()).now_or_later().is_ok()));
    });
    assert!(
        refusing.stats().deny_cache > before,
        "the deny cache answered"
    );
    let memory = MemoryStore::new(&huge(), 16);
    group.bench_function("memory_store_check_sync", |b| {
        b.iter(|| black_box(memory.check_sync("", now)));
    });
    group.bench_function("system_clock_read", |b| {
        b.iter(|| black_box(unix_now()));
    });
    group.finish();
    c.final_summary();
    drop(redis);
}
