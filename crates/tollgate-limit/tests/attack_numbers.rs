//! Adversarial tests of the rate limiter's numbers at 0, 1 and MAX, and of
//! its bounds (GCRA `B + t/T`, the window's `N` in any window) across
//! clones, tasks and threads.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use tokio::time::Instant;
use tollgate_limit::gcra::{Decision, Gcra};
use tollgate_limit::{
    KeyBy, MemoryStore, PermitWait, Quota, RateLimitLayer, RateLimited, WaitTooLong,
};
use tower::{service_fn, Layer, Service, ServiceExt};

fn counting(
    hits: Arc<AtomicUsize>,
) -> impl Service<
    Request<()>,
    Response = Response<()>,
    Error = std::convert::Infallible,
    Future = impl Send,
> + Clone
       + Send {
    service_fn(move |_req: Request<()>| {
        hits.fetch_add(1, Ordering::SeqCst);
        async { Ok(Response::new(())) }
    })
}

fn logging(
    log: Arc<Mutex<Vec<Instant>>>,
    reply: Option<(StatusCode, &'static str, &'static str)>,
) -> impl Service<
    Request<()>,
    Response = Response<()>,
    Error = std::convert::Infallible,
    Future = impl Send,
> + Clone
       + Send {
    service_fn(move |_req: Request<()>| {
        log.lock().expect("lock").push(Instant::now());
        let mut res = Response::builder();
        if let Some((s, k, v)) = reply {
            res = res.status(s).header(k, v);
        }
        let res = res.body(()).expect("response");
        async { Ok(res) }
    })
}

fn get() -> Request<()> {
    Request::get("http://api.test/x").body(()).expect("request")
}

fn keyed(k: &str) -> Request<()> {
    Request::get("http://api.test/x")
        .header("x-key", k)
        .body(())
        .expect("request")
}

/// A frozen clock (a period of ~30 years): many tasks on a multi-thread
/// runtime, over clones of one service, smooth and window, unkeyed and
/// keyed: never more than the burst in total (per key).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_over_admission_across_threads_and_clones_on_a_frozen_clock() {
    let frozen = Duration::from_secs(1_000_000_000);
    let quotas = [
        Quota::per(7, frozen).expect("valid"),
        Quota::per(1, frozen)
            .expect("valid")
            .with_burst(7)
            .expect("valid"),
        Quota::window(7, frozen).expect("valid"),
    ];
    for quota in quotas {
        for keys in [None, Some(3usize)] {
            for reject in [false, true] {
                let hits = Arc::new(AtomicUsize::new(0));
                let mut layer = RateLimitLayer::new(quota);
                if reject {
                    layer = layer.reject();
                } else {
                    layer = layer.max_wait(Duration::from_secs(1));
                }
                if keys.is_some() {
                    layer = layer.keyed_by(KeyBy::header(http::HeaderName::from_static("x-key")));
                }
                let svc = layer.layer(counting(Arc::clone(&hits)));
                let per_key: Arc<Vec<AtomicUsize>> =
                    Arc::new((0..3).map(|_| AtomicUsize::new(0)).collect());
                let tasks: Vec<_> = (0..16)
                    .map(|t| {
                        let svc = svc.clone();
                        let per_key = Arc::clone(&per_key);
                        tokio::spawn(async move {
                            for i in 0..50usize {
                                let k = (t + i) % 3;
                                let req = if keys.is_some() {
                                    keyed(&format!("k{k}"))
                                } else {
                                    get()
                                };
                                if svc.clone().oneshot(req).await.is_ok() {
                                    per_key[k].fetch_add(1, Ordering::SeqCst);
                                }
                            }
                        })
                    })
                    .collect();
                for t in tasks {
                    t.await.expect("task");
                }
                let total = hits.load(Ordering::SeqCst);
                match keys {
                    None => assert_eq!(total, 7, "{quota} reject={reject}"),
                    Some(_) => {
                        assert_eq!(total, 21, "{quota} reject={reject}");
                        for k in per_key.iter() {
                            assert_eq!(k.load(Ordering::SeqCst), 7);
                        }
                    }
                }
                assert_eq!(layer.waiting(), 0);
            }
        }
    }
}

/// The lock-free unkeyed path racing the queued path on real threads: a
/// fast smooth quota, waiting callers and lock-free callers mixed. Every
/// grant happened between the limiter's birth and the end, so at most
/// `B + elapsed / T` reached the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_lock_free_path_racing_the_queue_never_over_admits() {
    let quota = Quota::per(1, Duration::from_micros(500))
        .expect("valid")
        .with_burst(4)
        .expect("valid");
    let base = RateLimitLayer::new(quota);
    let born = Instant::now();
    let waiting = base.clone().max_wait(Duration::from_secs(5));
    let reject = base.clone().reject();
    let hits = Arc::new(AtomicUsize::new(0));
    let w = waiting.layer(counting(Arc::clone(&hits)));
    let r = reject.layer(counting(Arc::clone(&hits)));
    let mut tasks = Vec::new();
    for t in 0..8 {
        let w = w.clone();
        let r = r.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..40 {
                if t % 2 == 0 {
                    let _ = w.clone().oneshot(get()).await;
                } else {
                    let _ = r.clone().oneshot(get()).await;
                    tokio::task::yield_now().await;
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let elapsed = born.elapsed();
    let total = hits.load(Ordering::SeqCst) as u128;
    let bound = 4 + elapsed.as_nanos() / 500_000;
    assert!(
        total <= bound,
        "{total} grants in {elapsed:?}, bound {bound}"
    );
    assert!(total >= 160, "every waiting caller was served");
    assert_eq!(waiting.waiting(), 0);
}

/// Random calls, drops (before the first poll, while waiting, at the exact
/// permit instant) and learned pauses on a window quota, on paused time:
/// never more than N in any window of length T, aligned or not.
#[tokio::test(start_paused = true)]
async fn a_window_holds_in_every_window_whatever_callers_do() {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut rand = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    for round in 0..40 {
        let period = Duration::from_millis(100 + rand(900));
        let count = 1 + u32::try_from(rand(5)).expect("small");
        let log: Arc<Mutex<Vec<Instant>>> = Arc::default();
        let layer = RateLimitLayer::new(Quota::window(count, period).expect("valid"))
            .max_wait(Duration::from_millis(rand(3_000)));
        let ok = layer.layer(logging(Arc::clone(&log), None));
        let slow = layer.layer(logging(
            Arc::clone(&log),
            Some((StatusCode::TOO_MANY_REQUESTS, "retry-after", "1")),
        ));
        let mut tasks = Vec::new();
        let mut aborted = Vec::new();
        for _ in 0..60 {
            let svc = if rand(10) == 0 {
                slow.clone()
            } else {
                ok.clone()
            };
            let task = tokio::spawn(svc.oneshot(get()));
            match rand(4) {
                0 => {
                    task.abort();
                    aborted.push(task);
                }
                1 => {
                    tokio::task::yield_now().await;
                    tasks.push(task);
                }
                _ => tasks.push(task),
            }
            let step = rand(period.as_millis() as u64);
            tokio::time::advance(Duration::from_millis(step)).await;
            if rand(5) == 0 {
                if let Some(t) = tasks.pop() {
                    t.abort();
                    aborted.push(t);
                }
            }
        }
        for t in tasks.into_iter().chain(aborted) {
            let _ = t.await;
        }
        let times = log.lock().expect("lock").clone();
        for (i, &s) in times.iter().enumerate() {
            let inside = times[i..].iter().take_while(|&&t| t < s + period).count();
            assert!(
                inside <= count as usize,
                "round {round}: {inside} in a window of {period:?} (count {count})"
            );
        }
        assert_eq!(layer.waiting(), 0, "round {round}");
    }
}

/// GCRA's tolerance `T · (B − 1)` saturates at `u64::MAX` ns (584 years):
/// once the TAT saturates too, `tat − now ≤ τ` holds for ever and every
/// call is admitted. One permit a year with a burst of 1000 is a valid quota.
#[tokio::test(start_paused = true)]
async fn a_huge_tolerance_still_bounds_the_burst() {
    // A burst of 1000 at one a year takes 1000 years to refill: past what
    // the limiter's clock can hold without saturating, so it is a typed
    // error when built. The largest burst that is accepted is exact.
    let yearly = Quota::per(1, Duration::from_secs(365 * 24 * 3600)).expect("valid");
    assert!(
        yearly.with_burst(1000).is_err(),
        "a typed error, not a limit that admits all"
    );
    let quota = yearly
        .with_burst(290)
        .expect("290 years refill within the bound");
    let hits = Arc::new(AtomicUsize::new(0));
    let svc = RateLimitLayer::new(quota)
        .reject()
        .layer(counting(Arc::clone(&hits)));
    for _ in 0..600 {
        let _ = svc.clone().oneshot(get()).await;
    }
    assert_eq!(hits.load(Ordering::SeqCst), 290, "B + t/T with t = 0");
}

/// The same, on the algorithm alone: a period of `Duration::MAX` with a
/// burst of 2.
#[test]
fn gcra_with_duration_max_and_a_burst_of_two_admits_two() {
    let quota = Quota::per(1, Duration::MAX)
        .expect("valid")
        .with_burst(2)
        .expect("valid");
    let gcra = Gcra::new(&quota);
    let mut tat = 0;
    let mut granted = 0;
    for _ in 0..10 {
        if let Decision::Allow { tat: next } = gcra.check(tat, 0) {
            tat = next;
            granted += 1;
        }
    }
    assert_eq!(granted, 2);
}

#[tokio::test(start_paused = true)]
async fn extreme_quotas_neither_panic_nor_hang() {
    // A burst of u32::MAX at one per 146 years takes too long to refill for
    // the limiter's clock: a typed error when built, not a limit that
    // saturates and admits everything.
    assert!(Quota::per(u32::MAX, Duration::MAX).is_err());
    let quotas = [
        Quota::per(1, Duration::from_nanos(1)).expect("valid"),
        Quota::window(1, Duration::from_nanos(1)).expect("valid"),
        Quota::per(1, Duration::MAX).expect("valid"),
        Quota::window(1, Duration::MAX).expect("valid"),
        Quota::window(u32::MAX, Duration::MAX).expect("valid"),
        Quota::per(u32::MAX, Duration::from_nanos(u64::from(u32::MAX))).expect("valid"),
        Quota::window(u32::MAX, Duration::from_secs(5)).expect("valid"),
    ];
    for quota in quotas {
        for reject in [false, true] {
            let log = Arc::default();
            let mut layer = RateLimitLayer::new(quota).max_wait(Duration::from_secs(3_600));
            if reject {
                layer = layer.reject();
            }
            let svc = layer.layer(logging(Arc::clone(&log), None));
            for _ in 0..3 {
                let out =
                    tokio::time::timeout(Duration::from_secs(7_200), svc.clone().oneshot(get()))
                        .await
                        .expect("max_wait bounds the wait");
                if let Err(e) = out {
                    assert!(
                        e.downcast_ref::<WaitTooLong>().is_some()
                            || e.downcast_ref::<RateLimited>().is_some(),
                        "{quota}: {e}"
                    );
                }
            }
            assert_eq!(layer.waiting(), 0);
        }
    }
    // Without any bound on the wait, a permit 584 years away: pending, no
    // panic, and dropping the waiter frees the lane.
    let layer = RateLimitLayer::new(Quota::per(1, Duration::MAX).expect("valid"));
    let svc = layer.layer(logging(Arc::default(), None));
    svc.clone().oneshot(get()).await.expect("the first");
    let out = tokio::time::timeout(Duration::from_secs(3_600), svc.oneshot(get())).await;
    assert!(out.is_err(), "still waiting");
    assert_eq!(layer.waiting(), 0);
}

/// `RateLimited::headers` rounds the wait up to whole seconds with
/// `as_secs() + 1`, which overflows for `Duration::MAX` (a panic in debug,
/// `Retry-After: 0` in release).
#[test]
fn rate_limited_headers_at_max() {
    let quota = Quota::per(1, Duration::MAX).expect("valid");
    let h = RateLimited {
        retry_after: Duration::MAX,
    }
    .headers(&quota);
    assert_ne!(h["retry-after"], "0");
}

#[test]
fn rate_limited_headers_at_zero() {
    let quota = Quota::per(1, Duration::MAX).expect("valid");
    let h = RateLimited {
        retry_after: Duration::ZERO,
    }
    .headers(&quota);
    assert_eq!(h["retry-after"], "0");
}

/// A learned pause on a window quota of `u32::MAX` permits builds
/// `u32::MAX` placeholders (`VecDeque::with_capacity(len + count)` and a
/// loop of `count` pushes in `SlidingWindow::pause`): 34 GB, an abort or an
/// OOM kill. Run it only under a memory limit (`ulimit -v`).
#[tokio::test(start_paused = true)]
async fn a_pause_on_a_window_of_u32_max_is_cheap() {
    let quota = Quota::window(u32::MAX, Duration::from_secs(5)).expect("valid");
    let layer = RateLimitLayer::new(quota);
    let svc = layer.layer(logging(
        Arc::default(),
        Some((StatusCode::TOO_MANY_REQUESTS, "retry-after", "1")),
    ));
    let res = svc.clone().oneshot(get()).await.expect("a 429 response");
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
}

/// Learned pauses at 0 and MAX (Retry-After 0, 9999999999, HTTP-dates past
/// and future, a cap of 0 and of `Duration::MAX`): no panic, no hang, and a
/// pause never holds a caller longer than the cap.
#[tokio::test(start_paused = true)]
async fn learned_pauses_at_the_extremes() {
    let values = [
        "0",
        "9999999999",
        "99999999999999999999999999",
        "Thu, 01 Jan 1970 00:00:00 GMT",
        "Fri, 31 Dec 9999 23:59:59 GMT",
        "Sun, 06 Nov 1994 08:49:37 GMT",
    ];
    for cap in [Duration::ZERO, Duration::from_secs(2), Duration::MAX] {
        for value in values {
            for quota in [
                Quota::per_second(10).expect("valid"),
                Quota::window(10, Duration::from_secs(1)).expect("valid"),
            ] {
                let log = Arc::default();
                let layer = RateLimitLayer::new(quota)
                    .learn_from_upstream(true, cap)
                    .max_wait(Duration::from_secs(3));
                let teach = layer.layer(logging(
                    Arc::clone(&log),
                    Some((StatusCode::TOO_MANY_REQUESTS, "retry-after", value)),
                ));
                let plain = layer.layer(logging(Arc::clone(&log), None));
                let res = teach.oneshot(get()).await.expect("a 429 response");
                assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
                let out = tokio::time::timeout(Duration::from_secs(5), plain.oneshot(get()))
                    .await
                    .expect("bounded by max_wait");
                match out {
                    Ok(res) => {
                        let waited = res.extensions().get::<PermitWait>().expect("w").0;
                        assert!(
                            waited <= cap.max(Duration::from_millis(100)),
                            "{quota} {value} cap {cap:?}: waited {waited:?}"
                        );
                    }
                    Err(e) => {
                        let e = e.downcast_ref::<WaitTooLong>().expect("WaitTooLong");
                        assert!(cap > Duration::from_secs(3), "{value} cap {cap:?}: {e}");
                    }
                }
            }
        }
    }
}

/// max_keys 0 and 1, max_memory 0: at least one key, no panic; the keys
/// that find no room share one limiter and never reset the one that has it.
#[tokio::test(start_paused = true)]
async fn tiny_key_tables() {
    let quota = Quota::window(1, Duration::from_secs(60)).expect("valid");
    for (keys, memory) in [(0, usize::MAX), (1, usize::MAX), (10, 0), (usize::MAX, 0)] {
        let store = Arc::new(MemoryStore::with_memory(&quota, keys, memory));
        assert_eq!(store.max_keys(), 1);
        assert!(store.check_sync("a", 0).is_ok());
        assert!(store.check_sync("b", 1).is_ok(), "b overflows, alone");
        assert!(store.check_sync("c", 2).is_err(), "c shares b's overflow");
        assert!(store.check_sync("a", 3).is_err(), "a was never reset");
        assert_eq!(store.keys(), 1);
    }
}

/// The same attack on smooth quotas: between any two grants `gᵢ ≤ gⱼ`, at
/// most `burst + (gⱼ − gᵢ) / T` of them, whatever callers do.
#[tokio::test(start_paused = true)]
async fn gcra_holds_between_any_two_grants_whatever_callers_do() {
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut rand = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    for round in 0..40 {
        let interval = Duration::from_millis(10 + rand(200));
        let burst = 1 + u32::try_from(rand(4)).expect("small");
        let quota = Quota::per(1, interval)
            .expect("valid")
            .with_burst(burst)
            .expect("valid");
        let log: Arc<Mutex<Vec<Instant>>> = Arc::default();
        let layer = RateLimitLayer::new(quota).max_wait(Duration::from_millis(rand(2_000)));
        let ok = layer.layer(logging(Arc::clone(&log), None));
        let slow = layer.layer(logging(
            Arc::clone(&log),
            Some((StatusCode::TOO_MANY_REQUESTS, "retry-after", "1")),
        ));
        let mut tasks = Vec::new();
        let mut aborted = Vec::new();
        for _ in 0..60 {
            let svc = if rand(10) == 0 {
                slow.clone()
            } else {
                ok.clone()
            };
            let task = tokio::spawn(svc.oneshot(get()));
            if rand(4) == 0 {
                task.abort();
                aborted.push(task);
            } else {
                tasks.push(task);
            }
            tokio::time::advance(Duration::from_millis(rand(interval.as_millis() as u64))).await;
            if rand(5) == 0 {
                if let Some(t) = tasks.pop() {
                    t.abort();
                    aborted.push(t);
                }
            }
        }
        for t in tasks.into_iter().chain(aborted) {
            let _ = t.await;
        }
        let times = log.lock().expect("lock").clone();
        let t = interval.as_nanos() as f64;
        for i in 0..times.len() {
            for j in i..times.len() {
                let n = (j - i + 1) as f64;
                let span = (times[j] - times[i]).as_nanos() as f64;
                assert!(
                    n <= f64::from(burst) + span / t + 1e-9,
                    "round {round}: {n} grants in {span} ns ({quota})"
                );
            }
        }
        assert_eq!(layer.waiting(), 0, "round {round}");
    }
}
