//! The cache through the facade, over loopback to FakeApi: a hit costs no
//! attempt, no permit and no request; bursts coalesce; credentials and
//! clients stay apart.
#![cfg(all(
    feature = "cache",
    feature = "retry",
    feature = "limit",
    feature = "auth"
))]

use std::time::Duration;

use tollgate::{Client, ErrorKind};
use tollgate_auth::Credential;
use tollgate_cache::{CacheLayer, CacheStatus};
use tollgate_limit::{Quota, RateLimitLayer};
use tollgate_retry::RetryLayer;
use tollgate_testkit::{FakeApi, Fault};

#[tokio::test]
async fn a_hit_costs_no_request_no_attempt_and_no_permit() {
    let api = FakeApi::start().await.expect("fake api");
    let cache = CacheLayer::new(Duration::from_secs(60));
    // One permit a minute, refused rather than waited for.
    let client = Client::builder(api.url())
        .cache(cache.clone())
        .retry(RetryLayer::new())
        .rate_limit(RateLimitLayer::new(Quota::per_minute(1).expect("quota")).reject())
        .build()
        .expect("client");

    let miss = client.get("/posts/1").send().await.expect("miss");
    let summary = miss.summary();
    assert_eq!(
        (summary.cache, summary.from_cache, summary.attempts),
        (Some(CacheStatus::Miss), false, 1)
    );
    for _ in 0..3 {
        let hit = client
            .get("/posts/1")
            .send()
            .await
            .expect("a hit needs no permit");
        let summary = hit.summary();
        assert_eq!(
            (summary.cache, summary.from_cache, summary.attempts),
            (Some(CacheStatus::Hit), true, 0)
        );
        assert_eq!(hit.data().expect("json")["id"], 1);
        assert_eq!(hit.to_json()["cache"], "hit");
    }
    assert_eq!(api.hits("/posts/1"), 1);
    let err = client
        .get("/posts/2")
        .send()
        .await
        .expect_err("a miss needs a permit");
    assert_eq!(err.kind(), ErrorKind::RateLimited);
    assert_eq!(cache.stats().hits, 3);
}

#[tokio::test(start_paused = true)]
async fn a_burst_for_one_url_is_one_upstream_request() {
    let api = FakeApi::start().await.expect("fake api");
    api.inject("/users/1", Fault::latency(Duration::from_millis(100)));
    let client = Client::builder(api.url())
        .cache(CacheLayer::new(Duration::from_secs(60)))
        .build()
        .expect("client");
    let calls: Vec<_> = (0..20)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { client.get("/users/1").send().await })
        })
        .collect();
    let mut coalesced = 0;
    for call in calls {
        let response = call.await.expect("task").expect("response");
        assert_eq!(response.data().expect("json")["id"], 1);
        coalesced += usize::from(response.summary().cache == Some(CacheStatus::Coalesced));
    }
    assert_eq!(api.hits("/users/1"), 1);
    assert_eq!(coalesced, 19);
}

#[tokio::test]
async fn no_cache_and_writes_go_upstream() {
    let api = FakeApi::start().await.expect("fake api");
    let client = Client::builder(api.url())
        .cache(CacheLayer::new(Duration::from_secs(60)))
        .build()
        .expect("client");
    client.get("/posts/3").send().await.expect("miss");
    let fresh = client
        .get("/posts/3")
        .no_cache()
        .send()
        .await
        .expect("bypass");
    assert_eq!(fresh.summary().cache, Some(CacheStatus::Bypass));
    let patched = client
        .patch("/posts/3")
        .json(&serde_json::json!({"title": "new"}))
        .send()
        .await
        .expect("patch");
    assert_eq!(patched.status(), 200);
    let after = client.get("/posts/3").send().await.expect("miss");
    assert_eq!(
        after.summary().cache,
        Some(CacheStatus::Miss),
        "the PATCH invalidated it"
    );
    assert_eq!(api.hits("/posts/3"), 4);
}

#[tokio::test]
async fn clients_and_credentials_sharing_a_cache_stay_apart() {
    let api = FakeApi::start().await.expect("fake api");
    let cache = CacheLayer::new(Duration::from_secs(60));
    let alice = Client::builder(api.url())
        .bearer_auth("alice")
        .cache(cache.clone())
        .build()
        .expect("client");
    let bob = Client::builder(api.url())
        .bearer_auth("bob")
        .cache(cache.clone())
        .build()
        .expect("client");
    let seen =
        |r: &tollgate::ApiResponse| r.data().expect("json")["headers"]["authorization"][0].clone();

    let a = alice.get("/anything/me").send().await.expect("alice");
    let b = bob.get("/anything/me").send().await.expect("bob");
    assert_eq!(
        (seen(&a), seen(&b)),
        ("Bearer alice".into(), "Bearer bob".into())
    );
    assert_eq!(
        b.summary().cache,
        Some(CacheStatus::Miss),
        "bob never gets alice's response"
    );
    let a2 = alice.get("/anything/me").send().await.expect("alice again");
    assert_eq!(
        (a2.summary().cache, seen(&a2)),
        (Some(CacheStatus::Hit), "Bearer alice".into())
    );

    // A request's own credential is its own partition too.
    let carol = alice
        .get("/anything/me")
        .credential(Credential::bearer("carol").expect("valid"))
        .send()
        .await
        .expect("carol");
    assert_eq!(
        (carol.summary().cache, seen(&carol)),
        (Some(CacheStatus::Miss), "Bearer carol".into())
    );
    assert_eq!(api.hits("/anything/me"), 3);
}
