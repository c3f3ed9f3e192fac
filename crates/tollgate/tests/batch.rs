//! Batched endpoints through the facade, over loopback to FakeApi's
//! `/metadata?id=..` endpoint.
#![cfg(all(feature = "batch", feature = "limit"))]

use std::time::Duration;

use http::StatusCode;
use tollgate::{BatchSpec, Client, ErrorKind};
use tollgate_limit::{Quota, RateLimitLayer};
use tollgate_testkit::{FakeApi, Fault};

#[tokio::test(start_paused = true)]
async fn two_hundred_single_calls_make_four_rate_limited_requests() {
    let api = FakeApi::start().await.expect("fake api");
    let client = Client::builder(api.url())
        .rate_limit(RateLimitLayer::new(Quota::per_second(2).expect("quota")))
        .build()
        .expect("client");
    let metadata = client.batched(BatchSpec::get("/metadata").max_batch(50));
    let started = tokio::time::Instant::now();
    let calls: Vec<_> = (1..=200)
        .map(|id| {
            let metadata = metadata.clone();
            tokio::spawn(async move { (id, metadata.load(id).await) })
        })
        .collect();
    for call in calls {
        let (id, item) = call.await.expect("task");
        assert_eq!(item.expect("item")["id"], id);
    }
    assert_eq!(api.hits("/metadata"), 4, "200 ids in batches of 50");
    // 2 permits at once (the burst), then one every 500 ms.
    assert!(
        started.elapsed() <= Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let seen = api.last_request("/metadata").expect("seen");
    assert_eq!(seen.uri.query().expect("ids").matches("id=").count(), 50);
}

#[tokio::test(start_paused = true)]
async fn a_missing_id_fails_only_its_caller_and_duplicates_share_one_slot() {
    let api = FakeApi::start().await.expect("fake api");
    let client = Client::new(api.url()).expect("client");
    let metadata = client.batched(BatchSpec::get("/metadata").max_delay(Duration::from_millis(20)));
    let (a, again, missing) = tokio::join!(metadata.load(7), metadata.load(7), metadata.load(5000));
    assert_eq!(a.expect("7")["id"], 7);
    assert_eq!(again.expect("7 again")["id"], 7);
    assert_eq!(
        missing.expect_err("5000 is unknown").kind(),
        ErrorKind::NotInBatch
    );
    assert_eq!(api.hits("/metadata"), 1);
    let seen = api.last_request("/metadata").expect("seen");
    assert_eq!(seen.uri.query(), Some("id=7&id=5000"), "7 asked for once");

    #[derive(serde::Deserialize)]
    struct Meta {
        id: u64,
    }
    let typed: Meta = metadata.load_as(9).await.expect("typed");
    assert_eq!(typed.id, 9);
}

#[tokio::test(start_paused = true)]
async fn a_failed_batch_fails_each_caller_with_the_status() {
    let api = FakeApi::start().await.expect("fake api");
    api.inject("/metadata", Fault::status(StatusCode::BAD_GATEWAY).times(1));
    let client = Client::new(api.url()).expect("client");
    let metadata = client.batched(BatchSpec::get("/metadata"));
    let (a, b) = tokio::join!(metadata.load(1), metadata.load(2));
    for result in [a, b] {
        let err = result.expect_err("the batch failed");
        assert_eq!(err.kind(), ErrorKind::Status, "{err}");
    }
    assert_eq!(api.hits("/metadata"), 1);
    // The next batch goes through.
    assert_eq!(metadata.load(3).await.expect("item")["id"], 3);
}
