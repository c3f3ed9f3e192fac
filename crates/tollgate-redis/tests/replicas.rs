//! Replicas of one client as separate processes, sharing one quota and one
//! learned pause through a real redis-server, calling the testkit's FakeApi
//! over real HTTP on 127.0.0.1.
//!
//! The test binary is its own replica: a test re-executes it with
//! `TOLLGATE_REPLICA_SCENARIO` set, running only [`replica_child`], which
//! plays one replica (a Tollgate client whose rate limiter is a
//! [`RedisRateLimitStore`]) and writes what it saw to a file. The parent
//! starts Redis and the FakeApi, starts the replicas on a common start
//! time, takes Redis away and brings it back, and checks the reports.
//!
//! - 4 processes × 16 tasks share a 100/s quota (smooth, burst 10) for
//!   10 s: every permit's Redis time is recorded; any stretch of Redis time
//!   holds at most the bound, and the total is at least 90% of the quota.
//! - One process's 429 with `Retry-After` (or a 200 whose `RateLimit`
//!   field says nothing remains) pauses the other three: the
//!   upstream sees nothing from any of them during the pause, and after it
//!   they resume at the quota's rate, not with its burst.
//! - Redis killed, then started again (fail closed, fail open, a local
//!   share), and Redis slower than the timeout, then fast again: no caller
//!   waits on the store longer than the timeout, the mode holds, and
//!   shared mode is back within 1 s.
//! - A local share keeps the whole quota's bound across
//!   the switches to degraded and back.
//!
//! Everything runs in real time (Redis's clock cannot be paused); the
//! quota test is the one 10 s run. The file takes about 23 s of wall time,
//! its tests running side by side.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;
use tollgate::Client;
use tollgate_limit::{Quota, RateLimitLayer, RateLimitStore, StoreFuture, UnixNanos};
use tollgate_redis::{Degraded, RedisRateLimitStore, RedisUnavailable};
use tollgate_testkit::{FakeApi, Fault, FaultProxy, ProxyFault, RedisServer, HOW_TO_GET_REDIS};

/// Set in a replica's environment: which scenario it plays.
const SCENARIO: &str = "TOLLGATE_REPLICA_SCENARIO";

const NANOS: u64 = 1_000_000_000;
const MS: u64 = 1_000_000;

fn unix_now() -> UnixNanos {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn var(name: &str) -> String {
    std::env::var(format!("TOLLGATE_REPLICA_{name}"))
        .unwrap_or_else(|_| panic!("replica: TOLLGATE_REPLICA_{name} not set"))
}

fn var_u64(name: &str) -> u64 {
    var(name)
        .parse()
        .unwrap_or_else(|_| panic!("replica: TOLLGATE_REPLICA_{name} is not a number"))
}

/// Sleeps until a time on the system clock (shared by every process).
async fn sleep_until_unix(at: UnixNanos) {
    tokio::time::sleep(Duration::from_nanos(at.saturating_sub(unix_now()))).await;
}

// ---------------------------------------------------------------------------
// The replica (child process).
// ---------------------------------------------------------------------------

/// The replicas' entry point: does nothing unless the binary was started by
/// one of the tests below as a replica.
#[test]
fn replica_child() {
    let Ok(scenario) = std::env::var(SCENARIO) else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("replica: runtime");
    let report = runtime.block_on(async {
        match scenario.as_str() {
            "quota" => quota_replica().await,
            "pause" => pause_replica().await,
            "outage" => outage_replica().await,
            other => panic!("replica: unknown scenario {other}"),
        }
    });
    std::fs::write(var("OUT"), report).expect("replica: write report");
}

/// One answer of the store, as a replica saw it.
#[derive(Clone, Copy, Debug)]
struct Answer {
    /// When it came (system clock).
    at: UnixNanos,
    /// Redis's time of the decision (0 when unknown).
    redis: UnixNanos,
    /// How long the caller waited on the store for it.
    took: Duration,
    /// `p` a permit, `d` a refusal ("not before"), `e` a failure.
    outcome: char,
}

/// A store that records every answer of a [`RedisRateLimitStore`]: with
/// `decide`, Redis's time of each permit too (the quota test measures on
/// it).
struct Recording {
    inner: RedisRateLimitStore,
    decide: bool,
    log: Arc<Mutex<Vec<Answer>>>,
}

fn record(log: &Mutex<Vec<Answer>>, answer: Answer) {
    log.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(answer);
}

fn outcome<E>(answer: &Result<Result<(), UnixNanos>, E>) -> char {
    match answer {
        Ok(Ok(())) => 'p',
        Ok(Err(_)) => 'd',
        Err(_) => 'e',
    }
}

impl RateLimitStore for Recording {
    fn check(&self, key: &str, now: UnixNanos) -> StoreFuture<Result<(), UnixNanos>> {
        let asked = Instant::now();
        let log = Arc::clone(&self.log);
        if self.decide {
            let store = self.inner.clone();
            let key = key.to_owned();
            return StoreFuture::later(async move {
                let decision = store.decide(&key, now).await;
                let redis = decision.as_ref().map_or(0, |d| d.decided_at);
                let answer = decision.map(|d| d.permit);
                record(
                    &log,
                    Answer {
                        at: unix_now(),
                        redis,
                        took: asked.elapsed(),
                        outcome: outcome(&answer),
                    },
                );
                answer
            });
        }
        match self.inner.check(key, now).now_or_later() {
            Ok(answer) => {
                record(
                    &log,
                    Answer {
                        at: unix_now(),
                        redis: 0,
                        took: asked.elapsed(),
                        outcome: outcome(&answer),
                    },
                );
                match answer {
                    Ok(answer) => StoreFuture::ready(answer),
                    Err(e) => StoreFuture::failed(e),
                }
            }
            Err(later) => StoreFuture::later(async move {
                let answer = later.await;
                record(
                    &log,
                    Answer {
                        at: unix_now(),
                        redis: 0,
                        took: asked.elapsed(),
                        outcome: outcome(&answer),
                    },
                );
                answer
            }),
        }
    }

    fn estimate(&self, key: &str, now: UnixNanos, ahead: u64) -> Option<UnixNanos> {
        self.inner.estimate(key, now, ahead)
    }

    fn pause(&self, key: &str, now: UnixNanos, until: UnixNanos) -> StoreFuture<()> {
        self.inner.pause(key, now, until)
    }
}

fn answers_report(log: &Mutex<Vec<Answer>>, out: &mut String) {
    for a in log.lock().unwrap_or_else(PoisonError::into_inner).iter() {
        let _ = writeln!(
            out,
            "answer {} {} {} {}",
            a.at,
            a.redis,
            a.took.as_nanos(),
            a.outcome
        );
    }
}

/// Whether a facade error comes from the Redis store failing closed.
fn is_redis_unavailable(error: &tollgate::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    let mut depth = 0;
    while let Some(e) = source {
        if e.is::<RedisUnavailable>() {
            return true;
        }
        depth += 1;
        if depth > 16 {
            return false;
        }
        source = e.source();
    }
    false
}

/// The quota test's quota: 100 per second, smooth, burst 10.
const QUOTA_RATE: u32 = 100;
const QUOTA_BURST: u32 = 10;
const QUOTA_RUN: Duration = Duration::from_secs(10);

/// 16 tasks calling the FakeApi as fast as their permits come, for 10 s,
/// every permit decided by Redis (`decide`) and recorded with Redis's time.
async fn quota_replica() -> String {
    let quota = Quota::per_second(QUOTA_RATE)
        .and_then(|q| q.with_burst(QUOTA_BURST))
        .expect("quota");
    let store = RedisRateLimitStore::builder(var("REDIS"))
        .quota(quota)
        .namespace(var("NAMESPACE"))
        // Loopback on a busy 2-core machine: no failure by accident.
        .timeout(Duration::from_millis(500))
        .build()
        .expect("store");
    let log = Arc::new(Mutex::new(Vec::new()));
    let layer = RateLimitLayer::new(quota)
        .store(Arc::new(Recording {
            inner: store,
            decide: true,
            log: Arc::clone(&log),
        }))
        .store_timeout(Duration::from_millis(600))
        .max_wait(Duration::from_secs(5));
    let client = Client::builder(var("API"))
        .rate_limit(layer)
        .build()
        .expect("client");
    sleep_until_unix(var_u64("START")).await;
    let end = Instant::now() + QUOTA_RUN;
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move {
                let (mut ok, mut failed) = (0u64, Vec::new());
                while Instant::now() < end {
                    match tokio::time::timeout_at(end, client.get("/posts/1").send()).await {
                        Err(_) => break,
                        Ok(Ok(response)) if response.status() == 200 => ok += 1,
                        Ok(Ok(response)) => failed.push(format!("status {}", response.status())),
                        Ok(Err(e)) => failed.push(e.to_string()),
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    let mut out = String::new();
    for task in tasks {
        let (ok, failed) = task.await.expect("task");
        let _ = writeln!(out, "ok {ok}");
        for f in failed {
            let _ = writeln!(out, "failed {}", f.replace('\n', " "));
        }
    }
    answers_report(&log, &mut out);
    out
}

/// The pause test's quota: 50 per second, smooth, burst 20 (a burst large
/// enough to see whether permits resume as one after the pause).
const PAUSE_RATE: u32 = 50;
const PAUSE_BURST: u32 = 20;
/// The pause the upstream asks for (`Retry-After`, seconds).
const PAUSE_SECS: u64 = 2;
/// When (after the start) the upstream answers one call with a 429.
const PAUSE_AT: Duration = Duration::from_secs(1);
const PAUSE_RUN: Duration = Duration::from_secs(5);

/// 4 tasks calling the FakeApi for 5 s through the store's own layer; every
/// response recorded with its time, status and permit wait.
async fn pause_replica() -> String {
    let quota = Quota::per_second(PAUSE_RATE)
        .and_then(|q| q.with_burst(PAUSE_BURST))
        .expect("quota");
    let store = RedisRateLimitStore::builder(var("REDIS"))
        .quota(quota)
        .namespace(var("NAMESPACE"))
        .timeout(Duration::from_millis(500))
        .build()
        .expect("store");
    let client = Client::builder(var("API"))
        .rate_limit(store.layer().max_wait(Duration::from_secs(5)))
        .build()
        .expect("client");
    sleep_until_unix(var_u64("START")).await;
    let end = Instant::now() + PAUSE_RUN;
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move {
                let mut out = String::new();
                while Instant::now() < end {
                    match tokio::time::timeout_at(end, client.get("/posts/1").send()).await {
                        Err(_) => break,
                        Ok(Ok(response)) => {
                            let _ = writeln!(
                                out,
                                "response {} {} {} {}",
                                unix_now(),
                                response.status().as_u16(),
                                response.summary().permit_wait.as_nanos(),
                                // The upstream's pause, whatever the status.
                                u8::from(
                                    response.status() == 429
                                        || response.headers().contains_key("ratelimit")
                                )
                            );
                        }
                        Ok(Err(e)) => {
                            let _ = writeln!(out, "failed {}", e.to_string().replace('\n', " "));
                        }
                    }
                }
                out
            })
        })
        .collect();
    let mut out = String::new();
    for task in tasks {
        out.push_str(&task.await.expect("task"));
    }
    let stats = store.stats();
    let _ = writeln!(out, "pauses {}", stats.pauses);
    out
}

/// The outage tests' quota: 40 per second, smooth, burst 4, shared by 2
/// replicas (a local share: 20 per second, burst 2).
const OUTAGE_RATE: u32 = 40;
const OUTAGE_BURST: u32 = 4;
const OUTAGE_REPLICAS: u32 = 2;
/// The Redis call timeout of the outage tests (the store's default).
const OUTAGE_TIMEOUT: Duration = tollgate_redis::DEFAULT_TIMEOUT;
/// When (after the start) Redis is killed, when it is started again, and
/// when the replicas stop.
const OUTAGE_STOP: u64 = 1_000 * MS;
const OUTAGE_RESTART: u64 = 2_000 * MS;
const OUTAGE_RUN: Duration = Duration::from_millis(3_200);

/// 6 tasks calling the FakeApi for 3.2 s through a store in the mode
/// `TOLLGATE_REPLICA_MODE`, every store answer recorded with the time the
/// caller waited on it; the store's mode polled every 5 ms.
async fn outage_replica() -> String {
    let degraded = match var("MODE").as_str() {
        "closed" => Degraded::FailClosed,
        "open" => Degraded::FailOpen,
        "share" => Degraded::LocalShare {
            replicas: OUTAGE_REPLICAS,
        },
        other => panic!("replica: unknown mode {other}"),
    };
    let (rate, burst) = match std::env::var("TOLLGATE_REPLICA_QUOTA") {
        Ok(quota) => {
            let (rate, burst) = quota.split_once(' ').expect("rate and burst");
            (rate.parse().expect("rate"), burst.parse().expect("burst"))
        }
        Err(_) => (OUTAGE_RATE, OUTAGE_BURST),
    };
    let quota = Quota::per_second(rate)
        .and_then(|q| q.with_burst(burst))
        .expect("quota");
    let store = RedisRateLimitStore::builder(var("REDIS"))
        .quota(quota)
        .namespace(var("NAMESPACE"))
        .timeout(OUTAGE_TIMEOUT)
        .degraded(degraded)
        .build()
        .expect("store");
    let log = Arc::new(Mutex::new(Vec::new()));
    // As `store.layer()`, over the recording store.
    let layer = RateLimitLayer::new(quota)
        .store(Arc::new(Recording {
            inner: store.clone(),
            decide: false,
            log: Arc::clone(&log),
        }))
        .store_timeout(OUTAGE_TIMEOUT + Duration::from_millis(20))
        .max_wait(Duration::from_secs(2));
    let client = Client::builder(var("API"))
        .rate_limit(layer)
        .build()
        .expect("client");
    sleep_until_unix(var_u64("START")).await;
    let end = Instant::now() + OUTAGE_RUN;
    let modes = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut out = String::new();
            let mut last = None;
            while Instant::now() < end {
                let mode = store.mode();
                if last != Some(mode) {
                    let _ = writeln!(out, "mode {} {mode:?}", unix_now());
                    last = Some(mode);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            out
        })
    };
    let tasks: Vec<_> = (0..6)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move {
                let mut out = String::new();
                while Instant::now() < end {
                    let result = tokio::time::timeout_at(end, client.get("/posts/1").send()).await;
                    let what = match result {
                        Err(_) => break,
                        Ok(Ok(response)) => format!("status{}", response.status().as_u16()),
                        Ok(Err(e)) if is_redis_unavailable(&e) => "unavailable".to_owned(),
                        Ok(Err(e)) => format!("{:?}", e.kind()),
                    };
                    let _ = writeln!(out, "call {} {what}", unix_now());
                    if !what.starts_with("status") {
                        // A refusal comes at once: no spinning.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
                out
            })
        })
        .collect();
    let mut out = String::new();
    for task in tasks {
        out.push_str(&task.await.expect("task"));
    }
    out.push_str(&modes.await.expect("mode poller"));
    let s = store.stats();
    let _ = writeln!(
        out,
        "stats {} {} {} {} {}",
        s.shared, s.degraded, s.deny_cache, s.degradations, s.recoveries
    );
    let _ = writeln!(out, "final {:?}", store.mode());
    answers_report(&log, &mut out);
    out
}

// ---------------------------------------------------------------------------
// The parent: starting replicas and reading their reports.
// ---------------------------------------------------------------------------

struct Replica {
    child: tokio::process::Child,
    out: PathBuf,
}

/// Starts this test binary as replica `index` of `scenario`.
fn spawn_replica(scenario: &str, index: usize, vars: &[(&str, String)]) -> Replica {
    // Tests run side by side: each replica its own file.
    static SPAWNED: AtomicUsize = AtomicUsize::new(0);
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "replica-{}-{}-{scenario}-{index}.txt",
        std::process::id(),
        SPAWNED.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_file(&out);
    let mut command =
        tokio::process::Command::new(std::env::current_exe().expect("the test binary"));
    command
        .args([
            "replica_child",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(SCENARIO, scenario)
        .env("TOLLGATE_REPLICA_OUT", &out)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (name, value) in vars {
        command.env(format!("TOLLGATE_REPLICA_{name}"), value);
    }
    Replica {
        child: command.spawn().expect("start a replica"),
        out,
    }
}

/// Waits for a replica (at most 40 s) and reads its report.
async fn report(replica: Replica) -> String {
    let output = tokio::time::timeout(Duration::from_secs(40), replica.child.wait_with_output())
        .await
        .expect("the replica finished within 40 s")
        .expect("the replica ran");
    assert!(
        output.status.success(),
        "a replica failed: {}\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let text = std::fs::read_to_string(&replica.out).expect("the replica's report");
    let _ = std::fs::remove_file(&replica.out);
    text
}

/// The lines of a report that start with `tag`, split into their fields.
fn lines<'a>(report: &'a str, tag: &str) -> Vec<Vec<&'a str>> {
    report
        .lines()
        .filter_map(|line| {
            let mut fields = line.split(' ');
            (fields.next() == Some(tag)).then(|| fields.collect())
        })
        .collect()
}

fn num(field: &str) -> u64 {
    field.parse().expect("a number in a report")
}

fn answers(report: &str) -> Vec<Answer> {
    lines(report, "answer")
        .iter()
        .map(|f| Answer {
            at: num(f[0]),
            redis: num(f[1]),
            took: Duration::from_nanos(num(f[2])),
            outcome: f[3].chars().next().unwrap_or('?'),
        })
        .collect()
}

/// Every stretch of sorted permit times `[t_i, t_j]` (on `clock`) holds at
/// most `burst + (t_j - t_i) / interval` permits (the bound GCRA keeps);
/// a failure names the stretch that passes it most.
fn assert_within_bound(times: &[u64], burst: u64, interval: u64, clock: &str) {
    let mut worst: Option<(u64, u64, u64)> = None;
    for i in 0..times.len() {
        for j in i..times.len() {
            let count = (j - i + 1) as u64;
            let allowed = burst + (times[j] - times[i]) / interval;
            if count > allowed && worst.is_none_or(|(c, a, _)| count - allowed > c - a) {
                worst = Some((count, allowed, times[j] - times[i]));
            }
        }
    }
    if let Some((count, allowed, span)) = worst {
        panic!(
            "{count} permits in {:?} of {clock} time, the bound allows {allowed}",
            Duration::from_nanos(span)
        );
    }
}

/// The scenarios run one at a time: each starts several processes whose
/// timing is the thing measured, and two machines' worth of processes on
/// two cores would measure the machine.
async fn one_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    // tokio's mutex: not poisoned by a failing scenario, and held across
    // awaits on each test's own runtime.
    static ONE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    ONE.lock().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_processes_of_sixteen_tasks_share_one_quota_within_its_bound_on_redis_time() {
    let _one_at_a_time = one_at_a_time().await;
    let redis = RedisServer::start().expect(HOW_TO_GET_REDIS);
    let api = FakeApi::start().await.expect("FakeApi");
    let start = unix_now() + 1_500 * MS;
    let replicas: Vec<_> = (0..4)
        .map(|i| {
            spawn_replica(
                "quota",
                i,
                &[
                    ("REDIS", redis.url()),
                    ("API", api.url()),
                    ("NAMESPACE", "quota".to_owned()),
                    ("START", start.to_string()),
                ],
            )
        })
        .collect();
    let mut permits = Vec::new();
    let mut per_replica = Vec::new();
    let mut ok = 0;
    let mut failures = Vec::new();
    for replica in replicas {
        let text = report(replica).await;
        failures.extend(lines(&text, "failed").iter().map(|f| f.join(" ")));
        ok += lines(&text, "ok").iter().map(|f| num(f[0])).sum::<u64>();
        let mine: Vec<u64> = answers(&text)
            .iter()
            .filter(|a| a.outcome == 'p')
            .map(|a| a.redis)
            .collect();
        per_replica.push(mine.len());
        permits.extend(mine);
    }
    // A machine loaded by other builds may time a call out now and then
    // (a store answer past 500 ms): a few, never many.
    assert!(
        failures.len() * 100 <= usize::try_from(ok).unwrap_or(usize::MAX),
        "calls failed: {failures:?}"
    );
    permits.sort_unstable();
    let interval = NANOS / u64::from(QUOTA_RATE);
    assert_within_bound(&permits, u64::from(QUOTA_BURST), interval, "Redis");
    // The whole run, on Redis's time: not more than the bound, and not
    // starved (at least 90% of the quota over 10 s).
    let quota_permits = u64::from(QUOTA_RATE) * QUOTA_RUN.as_secs();
    assert!(
        permits.len() as u64 >= quota_permits * 9 / 10,
        "only {} permits in 10 s of a 100/s quota ({per_replica:?} per replica)",
        permits.len()
    );
    assert!(
        per_replica.iter().all(|&n| n > 0),
        "every replica had permits: {per_replica:?}"
    );
    // Every request the upstream saw had a permit; each call ended with
    // one outcome.
    assert!(
        api.hits("/posts/1") <= permits.len() as u64,
        "the upstream saw {} requests, Redis granted {} permits",
        api.hits("/posts/1"),
        permits.len()
    );
    assert!(ok <= api.hits("/posts/1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_seen_by_one_process_pauses_the_other_three() {
    let _one_at_a_time = one_at_a_time().await;
    pauses_every_process(
        Fault::status(http::StatusCode::TOO_MANY_REQUESTS)
            .times(1)
            .retry_after(&PAUSE_SECS.to_string()),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ratelimit_field_with_nothing_remaining_seen_by_one_process_pauses_the_other_three() {
    let _one_at_a_time = one_at_a_time().await;
    // A 200 whose `RateLimit` field says nothing remains for 2 s.
    pauses_every_process(
        Fault::status(http::StatusCode::OK)
            .times(1)
            .header("ratelimit", &format!("\"default\";r=0;t={PAUSE_SECS}")),
    )
    .await;
}

/// Four processes calling one upstream; one call is answered with
/// `fault` (a pause of [`PAUSE_SECS`]); every process holds it.
async fn pauses_every_process(fault: Fault) {
    let redis = RedisServer::start().expect(HOW_TO_GET_REDIS);
    let api = FakeApi::start().await.expect("FakeApi");
    let start = unix_now() + 1_500 * MS;
    let replicas: Vec<_> = (0..4)
        .map(|i| {
            spawn_replica(
                "pause",
                i,
                &[
                    ("REDIS", redis.url()),
                    ("API", api.url()),
                    ("NAMESPACE", "pause".to_owned()),
                    ("START", start.to_string()),
                ],
            )
        })
        .collect();
    // The upstream's view: its request count every 5 ms.
    sleep_until_unix(start + u64::try_from(PAUSE_AT.as_nanos()).unwrap_or(0)).await;
    api.inject("/posts/1", fault);
    let mut samples = Vec::new();
    let sampling_end = Instant::now() + Duration::from_millis(3_500);
    while Instant::now() < sampling_end {
        samples.push((unix_now(), api.hits("/posts/1")));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let reports: Vec<String> = {
        let mut all = Vec::new();
        for replica in replicas {
            all.push(report(replica).await);
        }
        all
    };
    for text in &reports {
        let failed = lines(text, "failed");
        assert!(failed.is_empty(), "calls failed: {failed:?}");
    }
    // Exactly one call, in one replica, was told to pause.
    let told: Vec<usize> = reports
        .iter()
        .enumerate()
        .filter(|(_, text)| lines(text, "response").iter().any(|f| f[3] == "1"))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(told.len(), 1, "one replica was told to pause: {told:?}");
    let learner = told[0];
    let t429 = lines(&reports[learner], "response")
        .iter()
        .find(|f| f[3] == "1")
        .map(|f| num(f[0]))
        .expect("the pause's time");
    assert!(
        lines(&reports[learner], "pauses")
            .iter()
            .any(|f| num(f[0]) >= 1),
        "the learner wrote the pause to Redis"
    );
    // The upstream saw nothing from any replica during the pause (after
    // 150 ms for calls already on their way when the 429 came back).
    let hits_at = |t: u64| {
        samples
            .iter()
            .take_while(|(at, _)| *at <= t)
            .last()
            .map(|(_, hits)| *hits)
            .expect("a sample before the time")
    };
    let pause_end = t429 + PAUSE_SECS * NANOS;
    let (quiet_from, quiet_to) = (t429 + 150 * MS, pause_end - 150 * MS);
    assert_eq!(
        hits_at(quiet_from),
        hits_at(quiet_to),
        "the upstream saw requests during the pause"
    );
    // And after it, traffic resumed at the quota's rate, not with a burst:
    // from 50 ms before the pause's end to 200 ms after it, the replicas
    // had at most 1 + 250 ms / 20 ms answers (a burst would add up to 20).
    assert!(
        hits_at(pause_end + 1_000 * MS) > hits_at(quiet_to),
        "traffic resumed after the pause"
    );
    let resumed = reports
        .iter()
        .flat_map(|text| lines(text, "response"))
        .filter(|f| (pause_end - 50 * MS..pause_end + 200 * MS).contains(&num(f[0])))
        .count() as u64;
    let rate_allows = 1 + 250 * MS / (NANOS / u64::from(PAUSE_RATE));
    assert!(
        resumed <= rate_allows + 2,
        "{resumed} answers in the 250 ms around the pause's end: a burst after a pause (the rate allows {rate_allows})"
    );
    // The other three learned the pause only through Redis: each had a
    // caller that waited most of it.
    for (i, text) in reports.iter().enumerate() {
        if i == learner {
            continue;
        }
        let longest = lines(text, "response")
            .iter()
            .map(|f| num(f[2]))
            .max()
            .unwrap_or(0);
        assert!(
            longest >= 1_500 * MS,
            "replica {i} waited at most {:?} for a permit: it did not see the pause",
            Duration::from_nanos(longest)
        );
        let during = lines(text, "response")
            .iter()
            .filter(|f| (quiet_from..quiet_to).contains(&num(f[0])))
            .count();
        assert_eq!(during, 0, "replica {i} had answers during the pause");
    }
}

/// What the outage tests read from one replica.
struct Outage {
    answers: Vec<Answer>,
    calls: Vec<(u64, String)>,
    /// (time, "Shared" | "Degraded"), in order.
    modes: Vec<(u64, String)>,
    degradations: u64,
    recoveries: u64,
    final_mode: String,
    /// When the replica last switched back to shared mode after the
    /// failure (set by `outage_with`, which checks it came).
    shared_again: u64,
}

/// How Redis fails in an outage test.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// Killed (SIGKILL), then started again on its port, empty.
    Killed,
    /// Alive but slow: every exchange held 300 ms by a proxy in front of
    /// it, then fast again.
    Slow,
}

/// Two replicas calling through stores in `mode`; Redis fails 1 s after
/// the start and is back 1 s later. Checks what holds in every mode: no
/// caller waits on the store longer than the timeout, the stores go
/// degraded after the failure and are back in shared mode within 1 s of
/// Redis. Returns the reports, the time the failure had begun and the time
/// Redis was back.
async fn outage(mode: &str, failure: Failure) -> (Vec<Outage>, u64, u64) {
    let (outages, stopped, restarted) =
        outage_with(mode, failure, (OUTAGE_RATE, OUTAGE_BURST)).await;
    for (i, o) in outages.iter().enumerate() {
        // Each replica made calls in shared mode after the restart (at 40
        // per second there is room for both; at a low rate the replicas
        // race for each permit, see `a_local_share_keeps_...`).
        assert!(
            o.calls
                .iter()
                .any(|(at, what)| *at > o.shared_again && what == "status200"),
            "replica {i} made no call after coming back at {}: modes {:?}, calls {:?}",
            o.shared_again,
            o.modes,
            o.calls
                .iter()
                .filter(|(at, _)| *at > o.shared_again)
                .collect::<Vec<_>>(),
        );
    }
    (outages, stopped, restarted)
}

/// [`outage`] with a quota of `rate` per second and `burst`.
async fn outage_with(
    mode: &str,
    failure: Failure,
    (rate, burst): (u32, u32),
) -> (Vec<Outage>, u64, u64) {
    let mut redis = RedisServer::start().expect(HOW_TO_GET_REDIS);
    let proxy = FaultProxy::start(redis.addr()).await.expect("proxy");
    let url = match failure {
        Failure::Killed => redis.url(),
        Failure::Slow => format!("redis://{}", proxy.addr()),
    };
    let api = FakeApi::start().await.expect("FakeApi");
    let start = unix_now() + 1_500 * MS;
    let replicas: Vec<_> = (0..OUTAGE_REPLICAS as usize)
        .map(|i| {
            spawn_replica(
                "outage",
                i,
                &[
                    ("REDIS", url.clone()),
                    ("API", api.url()),
                    ("NAMESPACE", format!("outage-{mode}")),
                    ("MODE", mode.to_owned()),
                    ("QUOTA", format!("{rate} {burst}")),
                    ("START", start.to_string()),
                ],
            )
        })
        .collect();
    sleep_until_unix(start + OUTAGE_STOP).await;
    // A replica may see the kill before `stop` returns: the kill's time is
    // between the two readings.
    let stopping = unix_now();
    match failure {
        Failure::Killed => redis.stop(),
        Failure::Slow => proxy.inject(ProxyFault::latency(Duration::from_millis(300))),
    }
    let stopped = unix_now();
    sleep_until_unix(start + OUTAGE_RESTART).await;
    match failure {
        Failure::Killed => {
            tokio::task::block_in_place(|| redis.restart()).expect("redis restarts");
        }
        Failure::Slow => proxy.clear_faults(),
    }
    let restarted = unix_now();
    let mut outages = Vec::new();
    for replica in replicas {
        let text = report(replica).await;
        let stats = lines(&text, "stats");
        let stats: Vec<u64> = stats
            .first()
            .expect("stats")
            .iter()
            .map(|f| num(f))
            .collect();
        outages.push(Outage {
            answers: answers(&text),
            calls: lines(&text, "call")
                .iter()
                .map(|f| (num(f[0]), f[1].to_owned()))
                .collect(),
            modes: lines(&text, "mode")
                .iter()
                .map(|f| (num(f[0]), f[1].to_owned()))
                .collect(),
            degradations: stats[3],
            recoveries: stats[4],
            final_mode: lines(&text, "final")
                .first()
                .map(|f| f[0].to_owned())
                .unwrap_or_default(),
            shared_again: 0,
        });
    }
    for (i, o) in outages.iter_mut().enumerate() {
        // No caller waited on Redis longer than the timeout (and a little
        // for the timer and a busy machine).
        let longest = o.answers.iter().map(|a| a.took).max().unwrap_or_default();
        assert!(
            longest <= OUTAGE_TIMEOUT + Duration::from_millis(30),
            "replica {i} waited {longest:?} on the store (timeout {OUTAGE_TIMEOUT:?})"
        );
        // Degraded after the kill, shared again within 1 s of the restart.
        let degraded_at = o
            .modes
            .iter()
            .find(|(at, m)| *at >= stopping && m == "Degraded")
            .map(|(at, _)| *at)
            .unwrap_or_else(|| panic!("replica {i} never went degraded: {:?}", o.modes));
        // The last switch back (a slow Redis may answer a probe in time
        // now and then before it is fast again) came within 1 s.
        let shared_again = o
            .modes
            .iter()
            .rev()
            .find(|(at, m)| *at > degraded_at && m == "Shared")
            .map(|(at, _)| *at)
            .unwrap_or_else(|| panic!("replica {i} never came back: {:?}", o.modes));
        assert!(
            shared_again <= restarted + NANOS,
            "replica {i} back in shared mode {:?} after Redis",
            Duration::from_nanos(shared_again.saturating_sub(restarted))
        );
        assert!(o.degradations >= 1 && o.recoveries >= 1);
        assert_eq!(o.final_mode, "Shared");
        o.shared_again = shared_again;
    }
    (outages, stopped, restarted)
}

/// The answers a replica got while Redis was down (after 20 ms for answers
/// already on their way).
fn during(o: &Outage, stopped: u64, restarted: u64) -> Vec<Answer> {
    o.answers
        .iter()
        .filter(|a| (stopped + 20 * MS..restarted).contains(&a.at))
        .copied()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_redis_fails_closed_with_a_typed_error_and_shared_mode_returns_within_a_second() {
    let _one_at_a_time = one_at_a_time().await;
    let (outages, stopped, restarted) = outage("closed", Failure::Killed).await;
    for (i, o) in outages.iter().enumerate() {
        let down = during(o, stopped, restarted);
        assert!(
            down.iter().all(|a| a.outcome != 'p'),
            "replica {i} had a permit while Redis was down (failing closed)"
        );
        assert!(
            down.iter().any(|a| a.outcome == 'e'),
            "replica {i} was refused with an error while Redis was down"
        );
        let refused = o
            .calls
            .iter()
            .filter(|(at, _)| (stopped + 20 * MS..restarted).contains(at))
            .collect::<Vec<_>>();
        assert!(!refused.is_empty());
        assert!(
            refused.iter().all(|(_, what)| what == "unavailable"),
            "replica {i}: every call while Redis was down fails with RedisUnavailable: {refused:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_redis_fails_open_admitting_every_caller_and_shared_mode_returns_within_a_second() {
    let _one_at_a_time = one_at_a_time().await;
    let (outages, stopped, restarted) = outage("open", Failure::Killed).await;
    for (i, o) in outages.iter().enumerate() {
        let down = during(o, stopped, restarted);
        assert!(
            down.iter().all(|a| a.outcome == 'p'),
            "replica {i}: failing open admits every caller while Redis is down"
        );
        // More than the whole quota would have allowed in that second.
        assert!(
            down.len() > (OUTAGE_BURST + OUTAGE_RATE) as usize,
            "replica {i} had only {} permits while Redis was down",
            down.len()
        );
        assert!(o.calls.iter().all(|(_, what)| what == "status200"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_redis_leaves_each_replica_its_local_share_and_shared_mode_returns_within_a_second()
{
    let _one_at_a_time = one_at_a_time().await;
    let (outages, stopped, restarted) = outage("share", Failure::Killed).await;
    let share_rate = u64::from(OUTAGE_RATE / OUTAGE_REPLICAS);
    let share_burst = u64::from(OUTAGE_BURST / OUTAGE_REPLICAS);
    for (i, o) in outages.iter().enumerate() {
        let permits: Vec<u64> = during(o, stopped, restarted)
            .iter()
            .filter(|a| a.outcome == 'p')
            .map(|a| a.at)
            .collect();
        let span = restarted - (stopped + 20 * MS);
        // At most its share (its burst, and its rate over the outage; the
        // answers' times are when the caller had them, a little after the
        // decision, hence one more)...
        let most = share_burst + span * share_rate / NANOS + 1;
        assert!(
            permits.len() as u64 <= most,
            "replica {i} had {} permits while Redis was down, its share allows {most}",
            permits.len()
        );
        // ... and not starved.
        assert!(
            permits.len() as u64 >= span * share_rate / NANOS * 6 / 10,
            "replica {i} had only {} permits while Redis was down",
            permits.len()
        );
        assert!(
            during(o, stopped, restarted)
                .iter()
                .all(|a| a.outcome != 'e'),
            "replica {i}: the local share decides, nothing fails"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_slower_than_the_timeout_holds_no_caller_past_it_and_shared_mode_returns_when_it_is_fast(
) {
    let (outages, slowed, fast) = outage("closed", Failure::Slow).await;
    for (i, o) in outages.iter().enumerate() {
        // Calls that Redis did not answer in time failed, typed, at the
        // timeout (the common checks bound how long they waited).
        let late = during(o, slowed, fast)
            .iter()
            .filter(|a| a.outcome == 'e')
            .count();
        assert!(
            late > 0,
            "replica {i}: nothing timed out while Redis was slow"
        );
        assert!(
            o.calls
                .iter()
                .filter(|(at, _)| (slowed + 20 * MS..fast).contains(at))
                .all(|(_, what)| what == "unavailable" || what == "status200"),
            "replica {i}: a call failed otherwise than with RedisUnavailable"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_share_keeps_the_quotas_bound_across_the_switches_to_degraded_and_back() {
    let _one_at_a_time = one_at_a_time().await;
    // A burst large against the rate makes the switches plain: 4 per second,
    // burst 20; each of the 2 replicas' share is 2 per second, burst 10.
    // Redis slow rather than killed, so that it keeps its state: a Redis
    // restarted empty grants one more burst (its data lost), on top.
    let (rate, burst) = (4, 20);
    let (outages, _, _) = outage_with("share", Failure::Slow, (rate, burst)).await;
    // Every permit of both replicas, on the one system clock (the time
    // each caller had it: a little after its decision).
    let mut permits: Vec<u64> = outages
        .iter()
        .flat_map(|o| o.answers.iter().filter(|a| a.outcome == 'p').map(|a| a.at))
        .collect();
    permits.sort_unstable();
    // The bound of the whole quota, one permit of slack for the times'
    // spread: the upstream sees no more, whoever decided.
    assert_within_bound(
        &permits,
        u64::from(burst) + 1,
        NANOS / u64::from(rate),
        "the system",
    );
    // Calls went on in shared mode after Redis was fast again. At 4 per
    // second the replicas race for each permit and nothing orders them
    // (the crate's LIMITATION), so one of them may win every race in the
    // run's last second: the quota served calls, whichever replica had
    // them, and the other's callers waited or were refused as waiting too
    // long, nothing else.
    let after: Vec<(usize, &(u64, String))> = outages
        .iter()
        .enumerate()
        .flat_map(|(i, o)| {
            o.calls
                .iter()
                .filter(move |(at, _)| *at > o.shared_again)
                .map(move |call| (i, call))
        })
        .collect();
    assert!(
        after.iter().any(|(_, (_, what))| what == "status200"),
        "no call after shared mode came back: {after:?}"
    );
    assert!(
        after
            .iter()
            .all(|(_, (_, what))| what == "status200" || what == "WaitTooLong"),
        "a call after shared mode came back failed otherwise: {after:?}"
    );
}
