//! Adversary of the Redis rate-limit store's fast path (issue #13): the
//! script's inline case for one smooth quota, the key-name cache, the
//! command built by hand, and a call that moves to a task of its own only
//! when its caller stops waiting.

#![allow(clippy::unwrap_used, reason = "tests")]

mod common;

use common::{blackhole, raw, redis};
use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use tokio::time::Instant;
use tollgate_limit::rate::MemoryStore;
use tollgate_limit::{Quota, RateLimitStore};
use tollgate_redis::{Clock, Degraded, Mode, RedisRateLimitStore};

const SEC: u64 = 1_000_000_000;

/// A small deterministic generator (no seed from the clock: a failure
/// repeats).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }
}

/// The store's own decision for `key` at `now` (fast path: one smooth
/// quota, a check), bypassing the deny cache.
async fn fast(store: &RedisRateLimitStore, key: &str, now: u64) -> Result<(), u64> {
    store.decide(key, now).await.expect("redis decided").permit
}

/// The same check through the script's general path: the store's own
/// command, its quota count written `01` (the script reads it as 1, but the
/// fast path only takes the literal `1`).
async fn general(
    conn: &mut redis::aio::MultiplexedConnection,
    store: &RedisRateLimitStore,
    key: &str,
    now: u64,
) -> Result<(), u64> {
    let mut command = store.script_command(key);
    let keys: usize = command[2].parse().unwrap();
    let argv = |i: usize| 3 + keys + i - 1;
    assert_eq!(command[argv(1)], "check");
    assert_eq!(command[argv(2)], "caller");
    assert_eq!(command[argv(7)], "1");
    command[argv(3)] = (now / SEC).to_string();
    command[argv(4)] = (now % SEC).to_string();
    command[argv(7)] = "01".to_owned();
    let mut cmd = redis::cmd(&command[0]);
    for a in &command[1..] {
        cmd.arg(a);
    }
    let answer: Vec<u64> = cmd.query_async(conn).await.expect("the general path");
    match answer[..] {
        [0, _, _] => Ok(()),
        [1, s, n, ns, nn] => {
            let at = s * SEC + n;
            let server_now = ns * SEC + nn;
            assert_eq!(server_now, now, "caller clock");
            Err(at.max(now))
        }
        _ => panic!("answer {answer:?}"),
    }
}

fn caller_store(url: String, quota: Quota, namespace: &str) -> RedisRateLimitStore {
    RedisRateLimitStore::builder(url)
        // Not a test of timeouts: room for a loaded machine.
        .timeout(Duration::from_secs(2))
        .quota(quota)
        .clock(Clock::Caller)
        .namespace(namespace)
        .deny_cache_keys(0)
        .build()
        .unwrap()
}

/// The fast path, the general path, and a key alternating between them
/// decide exactly as the in-process store, step by step: near 0, around
/// 2^53 (where a double stops being exact), and near the end of u64, with
/// pauses in force (written by the general path, read by the fast one).
#[tokio::test]
async fn fast_and_general_paths_decide_exactly_as_in_process_interleaved() {
    let redis = redis();
    let mut conn = raw(&redis.url()).await;
    for quota in [
        Quota::per(3, Duration::from_secs(1))
            .unwrap()
            .with_burst(2)
            .unwrap(),
        Quota::per(7, Duration::from_millis(13))
            .unwrap()
            .with_burst(1)
            .unwrap(),
        Quota::per(1, Duration::from_secs(3_600)).unwrap(),
        // One nanosecond apart, a burst of a second's worth.
        Quota::per(1_000_000_000, Duration::from_secs(1)).unwrap(),
        // Periods of 2^62 ns: every sum saturates near the end of u64.
        Quota::per(4, Duration::from_nanos(1 << 62)).unwrap(),
        Quota::per(3, Duration::from_nanos(1 << 62))
            .unwrap()
            .with_burst(1)
            .unwrap(),
    ] {
        let store = caller_store(redis.url(), quota, "diff");
        // The script is loaded (EVALSHA below needs it).
        let _ = fast(&store, "warm", 0).await;
        for (round, base) in [0, (1 << 53) - 3 * SEC, u64::MAX - 20 * SEC, u64::MAX - SEC]
            .into_iter()
            .enumerate()
        {
            let memory = MemoryStore::new(&quota, 100);
            let mut rng = Lcg(0x5eed ^ base);
            let mut now = base;
            let keys = [
                format!("f{round}{quota}"),
                format!("g{round}{quota}"),
                format!("m{round}{quota}"),
            ];
            for step in 0..70 {
                let roll = rng.next();
                now = now.saturating_add(match roll % 5 {
                    0 => 0,
                    1 => 1,
                    2 => roll % (SEC / 2),
                    3 => roll % 40_000_000,
                    _ => roll % (3 * SEC),
                });
                if roll.is_multiple_of(23) {
                    // A pause: for all keys, by the store (the general path).
                    let until = now.saturating_add(rng.next() % (2 * SEC) + 1);
                    for key in &keys {
                        store.pause(key, now, until).await.unwrap();
                        memory.pause_sync(key, now, until);
                    }
                    continue;
                }
                for (i, key) in keys.iter().enumerate() {
                    let expected = memory.check_sync(key, now);
                    let got = match i {
                        0 => fast(&store, key, now).await,
                        1 => general(&mut conn, &store, key, now).await,
                        _ if step % 2 == 0 => fast(&store, key, now).await,
                        _ => general(&mut conn, &store, key, now).await,
                    };
                    assert_eq!(
                        got, expected,
                        "{quota} base {base} step {step} key {key} now {now}"
                    );
                }
            }
        }
    }
}

/// A pause to the last nanosecond of u64, written by the general path, is
/// read by the fast path as in process: refused, never a permit, never an
/// error.
#[tokio::test]
async fn a_pause_to_the_end_of_time_holds_on_the_fast_path() {
    let redis = redis();
    let quota = Quota::per(5, Duration::from_secs(1)).unwrap();
    let store = caller_store(redis.url(), quota, "end");
    let memory = MemoryStore::new(&quota, 10);
    for now in [0, 1 << 53, u64::MAX - 1] {
        let key = format!("k{now}");
        store.pause(&key, now, u64::MAX).await.unwrap();
        memory.pause_sync(&key, now, u64::MAX);
        for later in [now, now + 1, u64::MAX - 1, u64::MAX] {
            assert_eq!(
                fast(&store, &key, later).await,
                memory.check_sync(&key, later),
                "paused at {now}, asked at {later}"
            );
        }
    }
}

/// The key-name cache holds 4 096 keys: churn past it (keys that differ
/// in one byte, the empty key, a NUL, keys of a MiB) and every key keeps
/// its own state; namespaces that are prefixes of each other never share
/// a state either.
#[tokio::test]
async fn churned_keys_past_the_name_cache_never_share_a_state() {
    let redis = redis();
    let quota = Quota::per(1, Duration::from_secs(3_600)).unwrap();
    let huge = "x".repeat(1 << 20);
    let mut keys: Vec<String> = (0..5_000).map(|i| format!("key-{i}")).collect();
    keys.extend(["", "\0", "\0\0", "k", "K", "k\0", "key-1\0", "key-10\u{0}"].map(str::to_owned));
    keys.push(huge.clone());
    keys.push(format!("{}y", &huge[1..]));
    keys.push(format!("{huge}x"));
    let store = caller_store(redis.url(), quota, "ns");
    for key in &keys {
        assert_eq!(
            fast(&store, key, SEC).await,
            Ok(()),
            "first of {}",
            key.len()
        );
    }
    // Backwards: every entry made again after the shards were emptied.
    for key in keys.iter().rev() {
        assert!(fast(&store, key, SEC).await.is_err(), "again {}", key.len());
    }
    let mut conn = raw(&redis.url()).await;
    let states: Vec<String> = redis::cmd("KEYS")
        .arg("ns:rl1c:*:s")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(states.len(), keys.len(), "one state per key");
    // Namespaces that are prefixes of each other, or join with the key.
    for ns in ["n", "ns:", "ns:rl1c:", "ns\0", "nsk", ""] {
        let other = caller_store(redis.url(), quota, ns);
        for key in ["", "k", "key-1"] {
            assert_eq!(fast(&other, key, SEC).await, Ok(()), "{ns:?} {key:?}");
        }
    }
}

/// Polls `future` `polls` times (yielding between), then drops it.
async fn poll_then_drop<F: Future + Unpin>(mut future: F, polls: usize) {
    for _ in 0..polls {
        let done =
            std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut future).poll(cx).is_ready())).await;
        if done {
            return;
        }
        tokio::task::yield_now().await;
    }
}

/// A caller that stops waiting at any point (never polled, after one poll,
/// after several) spends at most the permit its call took: every dropped
/// call still ends and is counted, and the quota's bound holds exactly for
/// the callers who wait. Other callers are never held up meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_who_stop_waiting_at_any_await_never_pass_the_bound() {
    let redis = redis();
    let burst = 6;
    let quota = Quota::per(burst, Duration::from_secs(3_600)).unwrap();
    let store = caller_store(redis.url(), quota, "cancel");
    let dropped = [0, 1, 2, 3];
    for polls in dropped {
        poll_then_drop(store.check("k", SEC), polls).await;
        // Another key meanwhile: answered, and quickly.
        let started = Instant::now();
        assert_eq!(
            store.check(&format!("other{polls}"), SEC).await.unwrap(),
            Ok(())
        );
        assert!(started.elapsed() < Duration::from_secs(1));
    }
    // Every dropped call ends on its own task and is counted.
    let started = Instant::now();
    while store.stats().shared < 2 * dropped.len() as u64 {
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            store.stats()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut admitted = 0;
    for _ in 0..10 {
        admitted += usize::from(store.check("k", SEC).await.unwrap().is_ok());
    }
    assert_eq!(
        admitted,
        burst as usize - dropped.len(),
        "each dropped call took its one permit, no more and no less"
    );
    assert_eq!(store.mode(), Mode::Shared);
    assert_eq!(store.stats().degradations, 0);
}

/// A pause whose caller stops waiting is still written: the other
/// replicas are held back by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_pause_still_reaches_the_other_replicas() {
    let redis = redis();
    let quota = Quota::per(10, Duration::from_secs(1)).unwrap();
    let a = caller_store(redis.url(), quota, "p");
    let b = caller_store(redis.url(), quota, "p");
    drop(a.pause("k", SEC, 5 * SEC));
    let started = Instant::now();
    while a.stats().pauses < 1 {
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            a.stats()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(fast(&b, "k", 2 * SEC).await, Err(5 * SEC));
}

/// A caller who gives up before the store's timeout, on a Redis that hangs
/// (or one that is down): the call ends on a task of its own, the outage is
/// noticed (degraded once, counted once), and a restart brings shared mode
/// back, counted once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_met_by_callers_who_gave_up_is_noticed_and_ends() {
    let (url, _task) = blackhole().await;
    for polls in [0, 1] {
        let store = RedisRateLimitStore::builder(url.clone())
            .quota(Quota::per_second(10).unwrap())
            .timeout(Duration::from_millis(50))
            .degraded(Degraded::FailOpen)
            .build()
            .unwrap();
        if polls == 0 {
            drop(store.check("k", 0));
        } else {
            let gave_up = tokio::time::timeout(Duration::from_millis(5), store.check("k", 0)).await;
            assert!(gave_up.is_err(), "a hung Redis cannot answer in 5 ms");
        }
        let started = Instant::now();
        while store.mode() != Mode::Degraded {
            assert!(started.elapsed() < Duration::from_secs(1), "polls {polls}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let stats = store.stats();
        assert_eq!((stats.degradations, stats.shared), (1, 0), "{stats:?}");
    }

    let mut redis = redis();
    let store = RedisRateLimitStore::builder(redis.url())
        .quota(Quota::per_second(1_000).unwrap())
        .timeout(Duration::from_secs(2))
        .degraded(Degraded::LocalShare { replicas: 2 })
        .build()
        .unwrap();
    assert_eq!(store.check("k", 0).await.unwrap(), Ok(()));
    redis.stop();
    for _ in 0..5 {
        poll_then_drop(store.check("k", 0), 1).await;
    }
    let started = Instant::now();
    while store.mode() != Mode::Degraded {
        assert!(started.elapsed() < Duration::from_secs(3), "never degraded");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    redis.restart().unwrap();
    let back = Instant::now();
    while store.mode() != Mode::Shared {
        assert!(back.elapsed() < Duration::from_secs(2), "never back");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The restarted Redis lost the script: the store loads it again.
    assert!(store.decide("k2", 0).await.is_ok());
    let stats = store.stats();
    assert_eq!((stats.degradations, stats.recoveries), (1, 1), "{stats:?}");
}

/// Values of another type under every key a one-quota check reads are
/// typed errors (or, at the pause, no pause), never a panic and never a
/// permit the state did not allow.
#[tokio::test]
async fn values_of_other_types_on_the_fast_path_are_typed_errors() {
    let redis = redis();
    let quota = Quota::per(1, Duration::from_secs(3_600)).unwrap();
    let store = caller_store(redis.url(), quota, "types");
    let mut conn = raw(&redis.url()).await;
    for (kind, args) in [
        ("HSET", vec!["v", "1"]),
        ("RPUSH", vec!["1:0:0"]),
        ("SADD", vec!["1:0:0"]),
        ("ZADD", vec!["1", "1:0:0"]),
    ] {
        let key = format!("k{kind}");
        let names = store.redis_keys(&key);
        let mut cmd = redis::cmd(kind);
        cmd.arg(&names[1]);
        for a in &args {
            cmd.arg(a);
        }
        let _: () = cmd.query_async(&mut conn).await.unwrap();
        for _ in 0..2 {
            let err = store.check(&key, SEC).await.expect_err(kind);
            assert!(err.to_string().contains("format"), "{kind}: {err}");
        }
        assert_eq!(store.mode(), Mode::Shared);
    }
    // Integers and floats as the state: another format.
    for value in ["12", "1.5", "1:1.5:0", "1:-1:0", "1: 1:0", "1:1:0\n"] {
        let key = format!("v{value}");
        let names = store.redis_keys(&key);
        let _: () = redis::cmd("SET")
            .arg(&names[1])
            .arg(value)
            .query_async(&mut conn)
            .await
            .unwrap();
        let err = store
            .check(&key, SEC)
            .await
            .expect_err(&format!("{value:?}"));
        assert!(err.to_string().contains("format"), "{value:?}: {err}");
    }
}

/// A check made and started on the runtime, whose caller then drops it off
/// the runtime (a future handed to a plain thread, or dropped by a
/// non-tokio executor after a tokio task started it): the call it started
/// meets a hung Redis, and the outage must still be noticed. The store
/// used to spawn the call when `check` was called; now the call is moved
/// to a task only in `Drop`, on the runtime current *there*: with none,
/// the call is dropped, and the store stays in shared mode.
#[test]
fn a_started_call_dropped_off_the_runtime_still_notices_the_outage() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (url, _task) = runtime.block_on(blackhole());
    let store = runtime.block_on(async {
        RedisRateLimitStore::builder(url)
            .quota(Quota::per_second(10).unwrap())
            .timeout(Duration::from_millis(50))
            .degraded(Degraded::FailOpen)
            .build()
            .unwrap()
    });
    #[allow(
        clippy::async_yields_async,
        reason = "the started call is handed out, to be dropped off the runtime"
    )]
    let started = runtime.block_on(async {
        let mut future = store.check("k", 0);
        let pending =
            std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut future).poll(cx).is_pending()))
                .await;
        assert!(pending, "a hung Redis cannot have answered");
        future
    });
    // Off the runtime: this thread has no tokio context.
    std::thread::spawn(move || drop(started)).join().unwrap();
    runtime.block_on(async {
        let waited = Instant::now();
        while store.mode() != Mode::Degraded {
            assert!(
                waited.elapsed() < Duration::from_secs(1),
                "the outage the dropped call met was never noticed: {:?}",
                store.stats()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(store.stats().degradations, 1);
    });
}

/// Many callers on one key, each giving up after its own short wait
/// (some at once, some mid-call, some never): the permits the waiting
/// callers got never pass the burst, every call ends in Redis and is
/// counted once, and the key is spent exactly once every call has ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_callers_who_give_up_never_pass_the_burst() {
    let redis = redis();
    let burst = 20;
    let callers = 48;
    let quota = Quota::per(burst, Duration::from_secs(3_600)).unwrap();
    let store = caller_store(redis.url(), quota, "race");
    let mut tasks = Vec::new();
    for i in 0..callers {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let check = store.check("k", SEC);
            match i % 4 {
                0 => {
                    drop(check);
                    false
                }
                1 => {
                    poll_then_drop(check, 1 + i % 3).await;
                    false
                }
                2 => matches!(
                    tokio::time::timeout(Duration::from_micros(200 * i as u64), check).await,
                    Ok(Ok(Ok(())))
                ),
                _ => check.await.unwrap().is_ok(),
            }
        }));
    }
    let mut received = 0;
    for task in tasks {
        received += usize::from(task.await.unwrap());
    }
    assert!(received <= burst as usize, "{received} permits of {burst}");
    let waited = Instant::now();
    while store.stats().shared < callers as u64 {
        assert!(
            waited.elapsed() < Duration::from_secs(2),
            "{:?}",
            store.stats()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        store.stats().shared,
        callers as u64,
        "each call counted once"
    );
    assert!(fast(&store, "k", SEC).await.is_err(), "the burst is spent");
    assert_eq!(store.stats().degradations, 0);
}

/// A Redis store's answer, read, then polled again (a caller's bug): the
/// in-process answers say "store answer read twice"; this one must end
/// too, never stay pending with no waker (a task that hangs forever).
#[tokio::test]
async fn a_store_future_polled_after_its_answer_never_hangs() {
    let redis = redis();
    let quota = Quota::per(5, Duration::from_secs(1)).unwrap();
    let store = caller_store(redis.url(), quota, "twice");
    let mut future = store.check("k", SEC);
    assert_eq!((&mut future).await.unwrap(), Ok(()));
    let again = tokio::time::timeout(Duration::from_secs(1), &mut future).await;
    assert!(again.is_ok(), "polled again: pending forever");
    assert!(again.unwrap().is_err(), "read twice is an error");
}
