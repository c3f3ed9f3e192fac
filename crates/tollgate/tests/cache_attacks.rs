//! Attacks on the cache through the facade (issue #11), over loopback to
//! FakeApi: clients told apart only by a secret-looking default header, and
//! a read after a write through the same client.
#![cfg(feature = "cache")]

use std::time::Duration;

use tollgate::Client;
use tollgate_cache::{CacheLayer, CacheStatus};
use tollgate_testkit::{FakeApi, Fault};

#[tokio::test]
async fn two_clients_with_their_own_api_key_header_never_share_an_entry() {
    let api = FakeApi::start().await.expect("fake api");
    let cache = CacheLayer::new(Duration::from_secs(60));
    let client = |key: &str| {
        Client::builder(api.url())
            .default_header("api-key", key)
            .cache(cache.clone())
            .build()
            .expect("client")
    };
    let (alice, bob) = (client("alice-key"), client("bob-key"));
    let first = alice.get("/posts/1").send().await.expect("alice");
    assert_eq!(first.summary().cache, Some(CacheStatus::Miss));
    let again = alice.get("/posts/1").send().await.expect("alice again");
    assert_eq!(again.summary().cache, Some(CacheStatus::Hit));
    let other = bob.get("/posts/1").send().await.expect("bob");
    assert_eq!(
        other.summary().cache,
        Some(CacheStatus::Miss),
        "bob's key never reads alice's entry"
    );
    assert_eq!(api.hits("/posts/1"), 2);
}

#[tokio::test(start_paused = true)]
async fn a_get_after_a_write_through_the_client_never_joins_an_older_flight() {
    let api = FakeApi::start().await.expect("fake api");
    // Only the first request (the GET before the write) is slow.
    api.inject(
        "/posts/5",
        Fault::latency(Duration::from_millis(200)).times(1),
    );
    let client = Client::builder(api.url())
        .cache(CacheLayer::new(Duration::from_secs(60)))
        .build()
        .expect("client");
    let before = {
        let client = client.clone();
        tokio::spawn(async move { client.get("/posts/5").send().await })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    let put = client
        .patch("/posts/5")
        .json(&serde_json::json!({"title": "new"}))
        .send()
        .await
        .expect("patch");
    assert_eq!(put.status(), 200);
    let after = client.get("/posts/5").send().await.expect("get");
    assert_eq!(
        after.summary().cache,
        Some(CacheStatus::Miss),
        "a request of its own, not the flight from before the write"
    );
    before.await.expect("task").expect("the older GET ends");
    let hit = client.get("/posts/5").send().await.expect("hit");
    assert_eq!(hit.summary().cache, Some(CacheStatus::Hit));
    assert_eq!(api.hits("/posts/5"), 3, "GET, PATCH, GET");
}
