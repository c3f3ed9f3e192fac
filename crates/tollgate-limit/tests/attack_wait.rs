//! Adversarial tests of the rate limiter's waiting: bounded, fair and
//! cancel-safe (FIFO per key, `max_wait`, `max_queue`, the call's
//! `Deadline`, dropped waiters, `waiting()`), on paused tokio time.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use tokio::time::Instant;
use tollgate_limit::{PermitWait, QueueFull, Quota, RateLimitLayer, WaitTooLong};
use tower::{service_fn, BoxError, Layer, Service, ServiceExt};

type Log = Arc<Mutex<Vec<(String, Instant)>>>;

/// Records each call (by its `x-id` header) and answers as its `x-reply`
/// header says: `429:<secs>` for a 429 with that `Retry-After`, after
/// `x-delay-ms` milliseconds.
fn upstream(
    log: Log,
) -> impl Service<
    Request<()>,
    Response = Response<()>,
    Error = std::convert::Infallible,
    Future = impl Send,
> + Clone
       + Send {
    service_fn(move |req: Request<()>| {
        let id = header(&req, "x-id").unwrap_or_default();
        log.lock().expect("lock").push((id, Instant::now()));
        let delay = header(&req, "x-delay-ms")
            .and_then(|d| d.parse().ok())
            .unwrap_or(0u64);
        let reply = header(&req, "x-reply");
        async move {
            tokio::time::sleep(Duration::from_millis(delay)).await;
            let mut res = Response::builder();
            if let Some(secs) = reply.as_deref().and_then(|r| r.strip_prefix("429:")) {
                res = res
                    .status(StatusCode::TOO_MANY_REQUESTS)
                    .header("retry-after", secs);
            }
            Ok(res.body(()).expect("response"))
        }
    })
}

fn header(req: &Request<()>, name: &str) -> Option<String> {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

fn req(id: &str) -> Request<()> {
    Request::get("http://api.test/x")
        .header("x-id", id)
        .body(())
        .expect("request")
}

fn ids(log: &Log) -> Vec<String> {
    log.lock()
        .expect("lock")
        .iter()
        .map(|(i, _)| i.clone())
        .collect()
}

fn paced(interval_ms: u64) -> Quota {
    Quota::per(1, Duration::from_millis(interval_ms)).expect("valid")
}

/// Polls a future once, to put it in its lane, and hands it back.
async fn poll_once<F: Future + Unpin>(mut f: F) -> F {
    std::future::poll_fn(|cx: &mut Context<'_>| {
        let _ = Pin::new(&mut f).poll(cx);
        Poll::Ready(())
    })
    .await;
    f
}

#[tokio::test(start_paused = true)]
async fn fifo_per_key_survives_drops_anywhere_in_the_lane() {
    let log: Log = Arc::default();
    let layer = RateLimitLayer::new(paced(100));
    let svc = layer.layer(upstream(Arc::clone(&log)));
    svc.clone().oneshot(req("first")).await.expect("at once");
    let mut tasks = Vec::new();
    for i in 0..8 {
        tasks.push(tokio::spawn(svc.clone().oneshot(req(&format!("w{i}")))));
        tokio::task::yield_now().await;
    }
    assert_eq!(layer.waiting(), 8);
    // Drop the head, one in the middle and the tail.
    for i in [0usize, 4, 7] {
        tasks[i].abort();
    }
    let mut served = Vec::new();
    for (i, t) in tasks.into_iter().enumerate() {
        match t.await {
            Ok(r) => {
                r.expect("served");
                served.push(format!("w{i}"));
            }
            Err(e) => assert!(e.is_cancelled()),
        }
    }
    assert_eq!(layer.waiting(), 0);
    let mut expected = vec!["first".to_owned()];
    expected.extend(served);
    assert_eq!(ids(&log), expected, "FIFO, and the dropped never called");
    // The dropped head freed its place: the next got the 100 ms permit.
    let times: Vec<_> = log.lock().expect("lock").iter().map(|e| e.1).collect();
    for w in times.windows(2) {
        assert_eq!(w[1] - w[0], Duration::from_millis(100));
    }
}

#[tokio::test(start_paused = true)]
async fn max_queue_zero_one_and_max() {
    for (max, fits) in [(0usize, 0usize), (1, 1), (usize::MAX, 5)] {
        let layer = RateLimitLayer::new(paced(100)).max_queue(max);
        let svc = layer.layer(upstream(Arc::default()));
        svc.clone().oneshot(req("a")).await.expect("at once");
        let mut waiting = Vec::new();
        for _ in 0..fits {
            waiting.push(tokio::spawn(svc.clone().oneshot(req("w"))));
        }
        tokio::task::yield_now().await;
        assert_eq!(layer.waiting(), fits);
        if max != usize::MAX {
            let err = svc.clone().oneshot(req("x")).await.expect_err("full");
            assert_eq!(
                err.downcast_ref::<QueueFull>(),
                Some(&QueueFull { max_queue: max })
            );
        }
        for w in waiting {
            w.await.expect("task").expect("served");
        }
        assert_eq!(layer.waiting(), 0);
    }
}

#[tokio::test(start_paused = true)]
async fn max_wait_zero_and_max() {
    let layer = RateLimitLayer::new(paced(100)).max_wait(Duration::ZERO);
    let svc = layer.layer(upstream(Arc::default()));
    svc.clone().oneshot(req("a")).await.expect("at once");
    let err = svc.clone().oneshot(req("b")).await.expect_err("no wait");
    assert!(err.downcast_ref::<WaitTooLong>().is_some());
    assert_eq!(layer.waiting(), 0);

    let layer = RateLimitLayer::new(paced(100)).max_wait(Duration::MAX);
    let svc = layer.layer(upstream(Arc::default()));
    svc.clone().oneshot(req("a")).await.expect("at once");
    let res = svc.clone().oneshot(req("b")).await.expect("waits");
    assert_eq!(
        res.extensions().get::<PermitWait>(),
        Some(&PermitWait(Duration::from_millis(100)))
    );
}

/// A caller that got a place in the lane but whose future is not polled
/// (held in a struct, awaited later) heads the lane; the callers behind it
/// have no timer of their own and are woken only when it leaves.
#[tokio::test(start_paused = true)]
async fn a_waiter_behind_an_unpolled_head_still_honours_max_wait() {
    let layer = RateLimitLayer::new(paced(100)).max_wait(Duration::from_secs(1));
    let mut svc = layer.layer(upstream(Arc::default()));
    svc.clone().oneshot(req("a")).await.expect("at once");
    // Queued (permit at 100 ms), never polled, not dropped.
    let held = svc.call(req("held"));
    let started = Instant::now();
    let behind =
        tokio::time::timeout(Duration::from_secs(30), svc.clone().oneshot(req("behind"))).await;
    assert!(
        behind.is_ok(),
        "the waiter behind was still waiting after 30 s with max_wait 1 s"
    );
    assert!(started.elapsed() <= Duration::from_secs(1));
    drop(held);
}

/// A deadline is honoured by the lane's head (its timer wakes it before a
/// permit beyond the deadline), but a waiter behind the head sleeps without
/// a timer until the head leaves: a pause learned meanwhile keeps it waiting
/// far past its deadline.
#[tokio::test(start_paused = true)]
async fn a_waiter_behind_the_head_never_waits_past_its_deadline_when_a_pause_is_learned() {
    let log: Log = Arc::default();
    let layer = RateLimitLayer::new(paced(100));
    let svc = layer.layer(upstream(Arc::clone(&log)));
    let start = Instant::now();
    // x: admitted at once; its answer (at 50 ms) asks for a 10 s pause.
    let mut x = req("x");
    x.headers_mut()
        .insert("x-reply", http::HeaderValue::from_static("429:10"));
    x.headers_mut()
        .insert("x-delay-ms", http::HeaderValue::from_static("50"));
    let x = tokio::spawn(svc.clone().oneshot(x));
    tokio::task::yield_now().await;
    // a: head of the lane (permit at 100 ms), no deadline.
    let a = tokio::spawn(svc.clone().oneshot(req("a")));
    tokio::task::yield_now().await;
    // b: behind a, permit at 200 ms, deadline at 250 ms.
    let mut b = req("b");
    b.extensions_mut()
        .insert(tollgate_core::Deadline(start + Duration::from_millis(250)));
    let b = tokio::spawn(async move {
        let out = svc.oneshot(b).await;
        (out, Instant::now())
    });
    tokio::task::yield_now().await;
    assert_eq!(layer.waiting(), 2);
    x.await.expect("task").expect("429 is a response");
    let (out, ended) = b.await.expect("task");
    let waited = ended - start;
    assert!(
        waited <= Duration::from_millis(250),
        "b ({:?}) ended {waited:?} after arrival, past its 250 ms deadline",
        out.map(|_| ()).map_err(|e| e.to_string())
    );
    a.await.expect("task").expect("a is served after the pause");
}

/// The head whose permit moves past its deadline because of a pause is
/// refused no later than its deadline, and the callers behind proceed.
#[tokio::test(start_paused = true)]
async fn a_head_whose_deadline_passes_during_a_learned_pause_is_refused_in_time() {
    let log: Log = Arc::default();
    let layer = RateLimitLayer::new(paced(100));
    let svc = layer.layer(upstream(Arc::clone(&log)));
    let start = Instant::now();
    let mut x = req("x");
    x.headers_mut()
        .insert("x-reply", http::HeaderValue::from_static("429:2"));
    x.headers_mut()
        .insert("x-delay-ms", http::HeaderValue::from_static("50"));
    let x = tokio::spawn(svc.clone().oneshot(x));
    tokio::task::yield_now().await;
    let mut a = req("a");
    a.extensions_mut()
        .insert(tollgate_core::Deadline(start + Duration::from_millis(150)));
    let a = tokio::spawn(async move {
        let svc = svc;
        let out = svc.clone().oneshot(a).await;
        (out, Instant::now(), svc)
    });
    tokio::task::yield_now().await;
    x.await.expect("task").expect("response");
    let (out, ended, svc) = a.await.expect("task");
    let err = out.expect_err("its permit is now 2 s away");
    assert!(err.downcast_ref::<WaitTooLong>().is_some(), "{err}");
    assert!(ended - start <= Duration::from_millis(150));
    assert_eq!(layer.waiting(), 0);
    // The pause still holds for the next caller, and it is served after it.
    let res = svc.oneshot(req("c")).await.expect("served after the pause");
    let waited = res.extensions().get::<PermitWait>().expect("wait").0;
    assert!(waited >= Duration::from_millis(1_900), "{waited:?}");
}

/// Tokio's timers fire on whole milliseconds: a permit due at 1.5 ms is
/// taken at 2 ms, beyond a 1.5 ms `max_wait`. That is the documented
/// resolution (the layer's docs: a permit due within `max_wait` may be
/// taken up to 1 ms after it); refusing it instead would refuse a permit
/// that conformed in time.
#[tokio::test(start_paused = true)]
async fn permit_wait_never_exceeds_max_wait_by_more_than_the_timer_resolution() {
    let max = Duration::from_micros(1_500);
    let layer = RateLimitLayer::new(Quota::per(1, max).expect("valid")).max_wait(max);
    let svc = layer.layer(upstream(Arc::default()));
    svc.clone().oneshot(req("a")).await.expect("at once");
    let res = svc.oneshot(req("b")).await.expect("1.5 ms away: allowed");
    let waited = res.extensions().get::<PermitWait>().expect("wait").0;
    assert!(
        waited <= max + Duration::from_millis(1),
        "waited {waited:?}, max_wait {max:?}"
    );
}

/// A call whose deadline has already passed is refused, not given a permit
/// (which it would waste on a call that is already over).
#[tokio::test(start_paused = true)]
async fn a_call_past_its_deadline_takes_no_permit() {
    let log: Log = Arc::default();
    let layer = RateLimitLayer::new(paced(100));
    let svc = layer.layer(upstream(Arc::clone(&log)));
    tokio::time::advance(Duration::from_secs(1)).await;
    let mut r = req("late");
    r.extensions_mut().insert(tollgate_core::Deadline(
        Instant::now() - Duration::from_millis(500),
    ));
    let out = svc.clone().oneshot(r).await;
    assert!(out.is_err(), "admitted after its deadline");
    assert!(ids(&log).is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_deadline_sooner_than_the_permit_is_refused_at_once() {
    let layer = RateLimitLayer::new(paced(1_000)).max_wait(Duration::from_secs(60));
    let svc = layer.layer(upstream(Arc::default()));
    svc.clone().oneshot(req("a")).await.expect("at once");
    let start = Instant::now();
    for deadline in [
        Duration::ZERO,
        Duration::from_millis(999),
        Duration::from_secs(u64::from(u32::MAX)),
    ] {
        let mut r = req("b");
        r.extensions_mut()
            .insert(tollgate_core::Deadline(start + deadline));
        let out = svc.clone().oneshot(r).await;
        if deadline < Duration::from_secs(1) {
            let e = out.expect_err("permit after the deadline");
            assert!(e.downcast_ref::<WaitTooLong>().is_some());
            assert_eq!(Instant::now(), start, "refused without sleeping");
        } else {
            out.expect("the permit is before this deadline");
        }
    }
    assert_eq!(layer.waiting(), 0);
}

/// Waiters dropped at every stage (before the first poll, while sleeping
/// as head, while sleeping behind) leave `waiting()` at 0, and the callers
/// behind them proceed at the quota's rate.
#[tokio::test(start_paused = true)]
async fn drops_at_every_stage_free_the_lane() {
    let log: Log = Arc::default();
    let layer = RateLimitLayer::new(paced(100));
    let mut svc = layer.layer(upstream(Arc::clone(&log)));
    svc.clone().oneshot(req("a")).await.expect("at once");
    // Never polled, then dropped.
    let unpolled = svc.call(req("unpolled"));
    // Polled once (sleeping as head), then dropped.
    let head = poll_once(Box::pin(svc.clone().oneshot(req("head")))).await;
    // Polled once behind, then dropped.
    let behind = poll_once(Box::pin(svc.clone().oneshot(req("behind")))).await;
    assert_eq!(layer.waiting(), 3);
    let last = tokio::spawn(svc.clone().oneshot(req("last")));
    tokio::task::yield_now().await;
    assert_eq!(layer.waiting(), 4);
    tokio::time::advance(Duration::from_millis(50)).await;
    drop(unpolled);
    drop(head);
    drop(behind);
    assert_eq!(layer.waiting(), 1);
    let res = last.await.expect("task").expect("served");
    assert_eq!(
        res.extensions().get::<PermitWait>(),
        Some(&PermitWait(Duration::from_millis(100))),
        "the dropped waiters' turns went to the last one"
    );
    assert_eq!(ids(&log), ["a", "last"]);
    assert_eq!(layer.waiting(), 0);
}

/// A drop at the exact instant the head's permit comes (its timer fired,
/// its task not yet run): the next waiter takes that permit; nothing is
/// lost and nothing doubled.
#[tokio::test(start_paused = true)]
async fn a_head_dropped_at_its_permit_instant_hands_over_exactly_one_permit() {
    let log: Log = Arc::default();
    let layer = RateLimitLayer::new(paced(100));
    let svc = layer.layer(upstream(Arc::clone(&log)));
    svc.clone().oneshot(req("a")).await.expect("at once");
    let head = tokio::spawn(svc.clone().oneshot(req("head")));
    tokio::task::yield_now().await;
    let next = tokio::spawn(svc.clone().oneshot(req("next")));
    let third = tokio::spawn(svc.clone().oneshot(req("third")));
    tokio::task::yield_now().await;
    tokio::time::advance(Duration::from_millis(100)).await;
    head.abort();
    let _ = head.await;
    let r2 = next.await.expect("task").expect("served");
    let r3 = third.await.expect("task").expect("served");
    let w = |r: &Response<()>| r.extensions().get::<PermitWait>().expect("w").0;
    assert_eq!(w(&r2), Duration::from_millis(100));
    assert_eq!(w(&r3), Duration::from_millis(200));
    let log = log.lock().expect("lock");
    let names: Vec<_> = log.iter().map(|e| e.0.as_str()).collect();
    assert!(names == ["a", "next", "third"] || names == ["a", "head", "next", "third"]);
    for w in log.windows(2) {
        assert!(w[1].1 - w[0].1 >= Duration::from_millis(100));
    }
}

/// Two layers built from one (`.clone().reject()` next to a waiting one)
/// share the store, so the rate holds across them.
#[tokio::test(start_paused = true)]
async fn reject_and_waiting_layers_from_one_base_never_over_admit() {
    let log: Log = Arc::default();
    let base = RateLimitLayer::new(Quota::window(3, Duration::from_secs(1)).expect("valid"));
    let waiting = base.clone().max_wait(Duration::from_secs(10));
    let reject = base.clone().reject();
    let w = waiting.layer(upstream(Arc::clone(&log)));
    let r = reject.layer(upstream(Arc::clone(&log)));
    let mut tasks = Vec::new();
    for i in 0..30 {
        tasks.push(tokio::spawn(w.clone().oneshot(req(&format!("w{i}")))));
        let r = r.clone();
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(i * 97)).await;
            r.oneshot(req(&format!("r{i}"))).await
        }));
    }
    for t in tasks {
        let _ = t.await.expect("task");
    }
    let mut sorted: Vec<_> = log.lock().expect("lock").iter().map(|e| e.1).collect();
    sorted.sort();
    for (i, &s) in sorted.iter().enumerate() {
        let inside = sorted[i..]
            .iter()
            .take_while(|&&t| t < s + Duration::from_secs(1))
            .count();
        assert!(inside <= 3, "{inside} in a 1 s window");
    }
    assert_eq!(waiting.waiting(), 0);
}

/// A waiting layer and one derived from the same base (`.clone().max_wait`)
/// share the store but not the lanes: a newcomer on the second takes the
/// permit a waiter of the first was queued for.
#[tokio::test(start_paused = true)]
async fn layers_derived_from_one_base_keep_one_fifo() {
    let log: Log = Arc::default();
    let base = RateLimitLayer::new(paced(100));
    let first = base.clone().max_wait(Duration::from_secs(10));
    let second = base.clone().max_wait(Duration::from_secs(10));
    let s1 = first.layer(upstream(Arc::clone(&log)));
    let mut s2 = second.layer(upstream(Arc::clone(&log)));
    s1.clone().oneshot(req("a")).await.expect("at once");
    let queued = tokio::spawn(s1.clone().oneshot(req("queued")));
    tokio::task::yield_now().await;
    tokio::time::advance(Duration::from_millis(100)).await;
    // The queued caller's timer fired; a newcomer on the other layer arrives.
    let newcomer = s2.call(req("newcomer"));
    let _ = tokio::join!(queued, newcomer);
    assert_eq!(ids(&log), ["a", "queued", "newcomer"]);
}

/// `BoxError` is the service's error: every refusal downcasts to its type.
#[tokio::test(start_paused = true)]
async fn refusals_are_typed() {
    let layer = RateLimitLayer::new(paced(1_000))
        .max_wait(Duration::from_millis(1_500))
        .max_queue(1);
    let svc = layer.layer(upstream(Arc::default()));
    svc.clone().oneshot(req("a")).await.expect("at once");
    let waiter = tokio::spawn(svc.clone().oneshot(req("w")));
    tokio::task::yield_now().await;
    let e: BoxError = svc.clone().oneshot(req("x")).await.expect_err("refused");
    // The queue is full (1) and the permit is 2 s away (> 1.5 s): the wait
    // check comes first.
    assert!(e.downcast_ref::<WaitTooLong>().is_some() || e.downcast_ref::<QueueFull>().is_some());
    waiter.await.expect("task").expect("served");
    assert_eq!(layer.waiting(), 0);
}

/// A head whose time has come but whose task has not run yet (a timer just
/// fired) keeps the lane non-empty; a newcomer then gets the GCRA estimate
/// `max(now, tat − τ) + T`, which ignores the burst that refilled
/// meanwhile: refused as "100 ms away" although a permit is free for it now.
#[tokio::test(start_paused = true)]
async fn a_newcomer_behind_a_late_head_is_not_refused_while_the_burst_is_free() {
    let log: Log = Arc::default();
    let quota = Quota::per(1, Duration::from_millis(100))
        .expect("valid")
        .with_burst(3)
        .expect("valid");
    let layer = RateLimitLayer::new(quota);
    let mut svc = layer.layer(upstream(Arc::clone(&log)));
    for i in 0..3 {
        svc.clone()
            .oneshot(req(&format!("b{i}")))
            .await
            .expect("burst");
    }
    let head = tokio::spawn(svc.clone().oneshot(req("head")));
    tokio::task::yield_now().await;
    tokio::time::advance(Duration::from_secs(1)).await;
    // The burst has refilled (1 s at 100 ms a permit); the head's timer
    // fired but its task has not run.
    let mut late = req("newcomer");
    late.extensions_mut().insert(tollgate_core::Deadline(
        Instant::now() + Duration::from_millis(10),
    ));
    let newcomer = svc.call(late);
    let (h, n) = tokio::join!(head, newcomer);
    h.expect("task").expect("head served");
    n.expect("a permit is free for the newcomer now");
}

/// A waiter polled in one task, then moved to another before its turn,
/// is woken in the new one when the head leaves.
#[tokio::test(start_paused = true)]
async fn a_waiter_moved_to_another_task_is_still_woken() {
    let log: Log = Arc::default();
    let layer = RateLimitLayer::new(paced(100));
    let svc = layer.layer(upstream(Arc::clone(&log)));
    svc.clone().oneshot(req("a")).await.expect("at once");
    let head = poll_once(Box::pin(svc.clone().oneshot(req("head")))).await;
    let behind = poll_once(Box::pin(svc.clone().oneshot(req("behind")))).await;
    let behind = tokio::spawn(behind);
    tokio::task::yield_now().await;
    drop(head);
    let res = tokio::time::timeout(Duration::from_secs(5), behind)
        .await
        .expect("woken in its new task")
        .expect("task")
        .expect("served");
    assert_eq!(
        res.extensions().get::<PermitWait>(),
        Some(&PermitWait(Duration::from_millis(100)))
    );
    assert_eq!(layer.waiting(), 0);
}

/// Polling a refused response future again is an error, not a panic.
#[tokio::test(start_paused = true)]
async fn polling_a_refusal_again_is_an_error_not_a_panic() {
    let layer = RateLimitLayer::new(paced(100)).max_wait(Duration::from_millis(150));
    let mut svc = layer.layer(upstream(Arc::default()));
    let mut first = Box::pin(svc.call(req("a")));
    (&mut first).await.expect("at once");
    let mut waited = Box::pin(svc.call(req("b")));
    (&mut waited).await.expect("after 100 ms");
    // c waits for the 200 ms permit; d, behind it, is 200 ms away: refused.
    let c = svc.call(req("c"));
    let mut refused = Box::pin(svc.call(req("d")));
    assert!((&mut refused).await.is_err());
    drop(c);
    // A refusal polled again is an error. (A served call polled again polls
    // the inner future again: the limiter does not fuse it.)
    assert!((&mut refused).await.is_err());
    assert_eq!(layer.waiting(), 0);
}

/// In reject mode, a learned pause is what `RateLimited` says to wait.
#[tokio::test(start_paused = true)]
async fn reject_mode_reports_a_learned_pause() {
    let log: Log = Arc::default();
    let layer = RateLimitLayer::new(paced(100)).reject();
    let svc = layer.layer(upstream(Arc::clone(&log)));
    let mut x = req("x");
    x.headers_mut()
        .insert("x-reply", http::HeaderValue::from_static("429:7"));
    svc.clone().oneshot(x).await.expect("429 is a response");
    let err = svc.oneshot(req("y")).await.expect_err("paused");
    let e = err
        .downcast_ref::<tollgate_limit::RateLimited>()
        .expect("RateLimited");
    assert_eq!(e.retry_after, Duration::from_secs(7));
}
