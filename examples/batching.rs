//! 200 single-id lookups against an endpoint limited to 10 calls per
//! second: one request per id, then through a batched endpoint.
//!
//! The upstream is the testkit's FakeApi, whose `GET /metadata?id=1&id=2..`
//! answers many ids at once; the client's rate limiter stands for the
//! upstream's per-call quota. `cargo run --example batching` (about 20 s,
//! most of it the unbatched half).
#![allow(clippy::print_stdout, reason = "an example prints")]

use std::time::Duration;

use tokio::time::Instant;
use tollgate::{BatchSpec, Client};
use tollgate_limit::{Quota, RateLimitLayer};
use tollgate_testkit::FakeApi;

const IDS: u64 = 200;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let api = FakeApi::start().await?;
    let client = |rate: u32| -> Result<Client, Box<dyn std::error::Error>> {
        Ok(Client::builder(api.url())
            .rate_limit(RateLimitLayer::new(Quota::per_second(rate)?))
            .timeout(Duration::from_secs(120))
            .build()?)
    };

    // Batched: the calling code still asks for one id at a time.
    let metadata = client(10)?.batched(BatchSpec::get("/metadata").max_batch(50));
    let started = Instant::now();
    let calls: Vec<_> = (1..=IDS)
        .map(|id| {
            let metadata = metadata.clone();
            tokio::spawn(async move { metadata.load(id).await })
        })
        .collect();
    for call in calls {
        call.await??;
    }
    let batched = started.elapsed();
    let batched_calls = api.hits("/metadata");
    println!("batched:   {IDS} ids in {batched_calls} requests, {batched:.2?}");

    // Unbatched: one request per id, through the same limit.
    let single = client(10)?;
    api.reset_counts();
    let started = Instant::now();
    let calls: Vec<_> = (1..=IDS)
        .map(|id| {
            let single = single.clone();
            tokio::spawn(async move { single.get("/metadata").query(&[("id", id)]).send().await })
        })
        .collect();
    for call in calls {
        call.await??.error_for_status()?;
    }
    let unbatched = started.elapsed();
    println!(
        "unbatched: {IDS} ids in {} requests, {unbatched:.2?}",
        api.hits("/metadata")
    );
    println!(
        "batching made {:.0}x fewer requests and finished {:.0}x sooner",
        IDS as f64 / batched_calls as f64,
        unbatched.as_secs_f64() / batched.as_secs_f64().max(1e-3)
    );
    Ok(())
}
