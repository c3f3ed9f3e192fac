//! Items per second of single-item calls through a batched endpoint against
//! one request per item, with the upstream limited to 10 calls per second.
//!
//! Both sides use the facade over loopback to FakeApi's `/metadata` and a
//! `RateLimitLayer` of 10 per second (burst 10) standing for the upstream's
//! quota; 500 callers ask for one id after another for a fixed time.
//!
//! `cargo bench --bench batch [-- --seconds S --max-batch N]`
#![allow(missing_docs, clippy::print_stdout, reason = "a benchmark binary")]

#[path = "support/args.rs"]
mod args;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tollgate::{BatchSpec, Client};
use tollgate_limit::{Quota, RateLimitLayer};
use tollgate_testkit::FakeApi;

/// Runs `callers` loops of one-item lookups for `seconds`; returns items
/// answered and requests the upstream saw.
async fn run(api: &FakeApi, batched: bool, seconds: u64, max_batch: usize) -> (u64, u64) {
    let client = Client::builder(api.url())
        .rate_limit(RateLimitLayer::new(Quota::per_second(10).expect("quota")))
        .timeout(Duration::from_secs(3600))
        .build()
        .expect("client");
    let metadata = client.batched(BatchSpec::get("/metadata").max_batch(max_batch));
    let before = api.hits("/metadata");
    let items = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let callers: Vec<_> = (0..500u64)
        .map(|caller| {
            let (client, metadata, items) = (client.clone(), metadata.clone(), items.clone());
            tokio::spawn(async move {
                let mut id = caller % 1000 + 1;
                loop {
                    let call = async {
                        if batched {
                            metadata.load(id).await.is_ok()
                        } else {
                            client
                                .get("/metadata")
                                .query(&[("id", id)])
                                .send()
                                .await
                                .is_ok()
                        }
                    };
                    match tokio::time::timeout_at(deadline, call).await {
                        Ok(true) => {
                            items.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(false) => {}
                        Err(_) => return,
                    }
                    id = id % 1000 + 1;
                }
            })
        })
        .collect();
    for caller in callers {
        let _ = caller.await;
    }
    (
        items.load(Ordering::Relaxed),
        api.hits("/metadata") - before,
    )
}

fn main() {
    let seconds = args::number("--seconds", 5);
    let max_batch = args::number("--max-batch", 50) as usize;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let api = FakeApi::start().await.expect("fake api");
        let (single_items, single_calls) = run(&api, false, seconds, max_batch).await;
        let (batch_items, batch_calls) = run(&api, true, seconds, max_batch).await;
        let per_s = |n: u64| n as f64 / seconds as f64;
        println!("upstream limited to 10 calls/s (burst 10), {seconds} s each, 500 callers");
        println!(
            "one request per item: {single_items} items in {single_calls} requests = {:.1} items/s",
            per_s(single_items)
        );
        println!(
            "batched (max_batch {max_batch}): {batch_items} items in {batch_calls} requests = {:.1} items/s",
            per_s(batch_items)
        );
        println!(
            "ratio: {:.1}x items per second",
            batch_items as f64 / single_items.max(1) as f64
        );
    });
}
