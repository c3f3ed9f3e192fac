//! The rate limiter on the real clock: 64 tasks on a multi-thread runtime
//! share one 1000/s limiter for 5 seconds, as fast as they can.
//!
//! Reports the achieved rate (goal: within 1% of 1000/s) and the most
//! permits seen in any 1-second window (goal: never above 1000 + burst).
//!
//! `cargo bench --bench limit_accuracy`
#![allow(missing_docs, clippy::print_stdout, reason = "a benchmark binary")]

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use tokio::time::Instant;
use tollgate_limit::{Quota, RateLimitLayer};
use tower::{service_fn, Layer, ServiceExt};

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let burst = 10;
        let quota = Quota::per_second(1000)
            .expect("valid")
            .with_burst(burst)
            .expect("valid");
        let grants = Arc::new(Mutex::new(Vec::with_capacity(6000)));
        let log = Arc::clone(&grants);
        let svc = RateLimitLayer::new(quota).layer(service_fn(move |_req: Request<()>| {
            log.lock().expect("lock").push(Instant::now());
            async { Ok::<_, Infallible>(Response::new(())) }
        }));
        let start = Instant::now();
        let run = Duration::from_secs(5);
        let tasks: Vec<_> = (0..64)
            .map(|_| {
                let svc = svc.clone();
                tokio::spawn(async move {
                    while start.elapsed() < run {
                        let _ = svc.clone().oneshot(Request::new(())).await;
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("task");
        }
        let grants = grants.lock().expect("lock").clone();
        let in_run: Vec<Duration> = grants
            .iter()
            .map(|g| *g - start)
            .filter(|d| *d < run)
            .collect();
        let rate = in_run.len() as f64 / run.as_secs_f64();
        let mut worst = 0;
        for (i, &from) in in_run.iter().enumerate() {
            let n = in_run[i..]
                .iter()
                .take_while(|&&g| g < from + Duration::from_secs(1))
                .count();
            worst = worst.max(n);
        }
        println!("quota: 1000/s, burst {burst}; 64 tasks for 5 s on the real clock");
        println!(
            "achieved rate: {rate:.1}/s ({:+.2}% of 1000/s)",
            (rate / 1000.0 - 1.0) * 100.0
        );
        println!(
            "most permits in any 1 s window: {worst} (limit + burst = {})",
            1000 + burst
        );
    });
}
