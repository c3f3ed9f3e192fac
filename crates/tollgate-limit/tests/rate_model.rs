//! A model-based attack on the rate limiter: random sequences of calls on
//! several keys, callers that give up (dropped futures), time passing,
//! upstream 429s that teach a pause, and a key table too small for the keys,
//! all on paused tokio time. After each sequence, what reached the upstream
//! is checked against each quota's bound, FIFO order, the pauses, and the
//! rule that a caller that left never reaches the upstream.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{HeaderName, Request, Response, StatusCode};
use proptest::prelude::*;
use tokio::time::Instant;
use tollgate_limit::{KeyBy, Quota, QuotaKind, RateLimitLayer};
use tower::{service_fn, Layer, ServiceExt};

#[derive(Clone, Debug)]
enum Op {
    /// A call for key k; `Some(s)`: the upstream answers 429 with
    /// `Retry-After: s` (in tenths of a second, sent as whole seconds
    /// rounded up by the test's upstream).
    Call { key: u8, fail: Option<u8> },
    /// The caller of the i-th call still waiting gives up.
    Drop(usize),
    /// Time passes.
    Advance(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u8..4, proptest::option::weighted(0.08, 1u8..3)).prop_map(|(key, fail)| Op::Call { key, fail }),
        2 => (0usize..64).prop_map(Op::Drop),
        3 => (0u64..120).prop_map(Op::Advance),
    ]
}

fn quota() -> impl Strategy<Value = Quota> {
    prop_oneof![
        (1u32..4).prop_map(|n| Quota::window(n, Duration::from_millis(100)).expect("valid")),
        (1u32..4, 1u32..4).prop_map(|(n, b)| Quota::per(n, Duration::from_millis(100))
            .expect("valid")
            .with_burst(b)
            .expect("valid")),
    ]
}

#[derive(Debug)]
struct Dispatch {
    key: u8,
    id: usize,
    at: Instant,
    pause: Option<Duration>,
}

fn check_bound(quota: &Quota, times: &[Instant]) -> Result<(), String> {
    match quota.kind() {
        QuotaKind::Window => {
            for (i, &start) in times.iter().enumerate() {
                let inside = times[i..]
                    .iter()
                    .take_while(|&&t| t < start + quota.period())
                    .count();
                if inside > quota.count() as usize {
                    return Err(format!("{inside} permits in one window of {quota}"));
                }
            }
        }
        QuotaKind::Smooth => {
            let t = quota.period().as_nanos() as f64 / f64::from(quota.count());
            for i in 0..times.len() {
                for j in i..times.len() {
                    let n = (j - i + 1) as f64;
                    let span = (times[j] - times[i]).as_nanos() as f64;
                    if n > f64::from(quota.burst()) + span / t + 1e-6 {
                        return Err(format!("{n} permits in {span} ns under {quota}"));
                    }
                }
            }
        }
    }
    Ok(())
}

fn run(
    quota: Quota,
    max_keys: usize,
    max_queue: Option<usize>,
    ops: Vec<Op>,
) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async move {
        let log: Arc<Mutex<Vec<Dispatch>>> = Arc::default();
        let record = Arc::clone(&log);
        let upstream = service_fn(move |req: Request<()>| {
            let key = req.headers()["x-key"]
                .to_str()
                .unwrap_or("0")
                .parse()
                .unwrap_or(0);
            let id = req.headers()["x-id"]
                .to_str()
                .unwrap_or("0")
                .parse()
                .unwrap_or(0);
            let fail: Option<u64> = req
                .headers()
                .get("x-fail")
                .and_then(|v| v.to_str().ok()?.parse().ok());
            record.lock().expect("lock").push(Dispatch {
                key,
                id,
                at: Instant::now(),
                pause: fail.map(Duration::from_secs),
            });
            let res = match fail {
                Some(s) => Response::builder()
                    .status(StatusCode::TOO_MANY_REQUESTS)
                    .header("retry-after", s.to_string())
                    .body(()),
                None => Response::builder().body(()),
            }
            .expect("response");
            async move { Ok::<_, std::convert::Infallible>(res) }
        });
        let mut layer = RateLimitLayer::new(quota)
            .keyed_by(KeyBy::header(HeaderName::from_static("x-key")))
            .max_keys(max_keys)
            .learn_from_upstream(true, Duration::from_secs(1));
        if let Some(q) = max_queue {
            layer = layer.max_queue(q);
        }
        let svc = layer.clone().layer(upstream);
        let mut calls: Vec<(usize, tokio::task::JoinHandle<bool>)> = Vec::new();
        let mut dropped = Vec::new();
        let mut next_id = 0usize;
        for op in ops {
            match op {
                Op::Call { key, fail } => {
                    let mut req = Request::get("http://api.test/x")
                        .header("x-key", key.to_string())
                        .header("x-id", next_id.to_string());
                    if let Some(s) = fail {
                        req = req.header("x-fail", s.to_string());
                    }
                    let req = req.body(()).expect("request");
                    let svc = svc.clone();
                    calls.push((
                        next_id,
                        tokio::spawn(async move { svc.oneshot(req).await.is_ok() }),
                    ));
                    next_id += 1;
                }
                Op::Drop(i) => {
                    let pending: Vec<usize> = (0..calls.len())
                        .filter(|&c| !calls[c].1.is_finished())
                        .collect();
                    if !pending.is_empty() {
                        let (id, handle) = &calls[pending[i % pending.len()]];
                        handle.abort();
                        dropped.push((*id, Instant::now()));
                    }
                }
                Op::Advance(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
            }
            tokio::task::yield_now().await;
        }
        // Let every caller still waiting be served.
        tokio::time::sleep(Duration::from_secs(3600)).await;
        let mut outcomes = 0;
        for (id, handle) in calls {
            match handle.await {
                Ok(_) => outcomes += 1,
                Err(e) if e.is_cancelled() && dropped.iter().any(|d| d.0 == id) => {}
                Err(e) => return Err(format!("call {id} ended without an outcome: {e}")),
            }
        }
        let _ = outcomes;
        if layer.waiting() != 0 {
            return Err(format!(
                "{} callers still counted as waiting",
                layer.waiting()
            ));
        }
        let log = log.lock().expect("lock");
        for key in 0..4u8 {
            let mine: Vec<&Dispatch> = log.iter().filter(|d| d.key == key).collect();
            let times: Vec<Instant> = mine.iter().map(|d| d.at).collect();
            check_bound(&quota, &times).map_err(|e| format!("key {key}: {e}"))?;
            // First come, first served within a key.
            if !mine.windows(2).all(|w| w[0].id < w[1].id) {
                return Err(format!(
                    "key {key} served out of order: {:?}",
                    mine.iter().map(|d| d.id).collect::<Vec<_>>()
                ));
            }
        }
        // A pause learned from a 429 holds back every later permit of that
        // key (and of any key sharing its state) until it ends.
        for d in log.iter() {
            if let Some(p) = d.pause {
                let end = d.at + p.min(Duration::from_secs(1));
                if let Some(early) = log
                    .iter()
                    .find(|e| e.key == d.key && e.at > d.at && e.at < end)
                {
                    return Err(format!(
                        "key {} served at {:?} inside a pause until {:?}",
                        d.key, early.at, end
                    ));
                }
            }
        }
        for d in log.iter() {
            if let Some((_, at)) = dropped.iter().find(|x| x.0 == d.id) {
                if d.at > *at {
                    return Err(format!(
                        "call {} reached the upstream after its caller left",
                        d.id
                    ));
                }
            }
        }
        // After a pause, a smooth quota resumes at its rate, without a burst.
        if quota.kind() == QuotaKind::Smooth {
            let t = quota.period() / quota.count();
            for d in log.iter() {
                let Some(p) = d.pause else { continue };
                let end = d.at + p.min(Duration::from_secs(1));
                let after: Vec<Instant> = log
                    .iter()
                    .filter(|e| e.key == d.key && e.at >= end && e.at < end + quota.period())
                    .map(|e| e.at)
                    .collect();
                for (k, &at) in after.iter().enumerate() {
                    if at < end + t * u32::try_from(k).unwrap_or(u32::MAX) {
                        return Err(format!(
                            "key {}: a burst after the pause ending at {end:?}: {after:?}",
                            d.key
                        ));
                    }
                }
            }
        }
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn the_limiter_keeps_its_bound_order_and_pauses(
        quota in quota(),
        max_keys in 1usize..6,
        max_queue in proptest::option::of(1usize..6),
        ops in proptest::collection::vec(op(), 1..80),
    ) {
        if let Err(e) = run(quota, max_keys, max_queue, ops) {
            prop_assert!(false, "{}", e);
        }
    }
}
