//! The Redis store passes the conformance suite every rate-limit store
//! passes, against a real redis-server on a free loopback port.

use std::sync::Arc;
use std::time::Duration;

use tollgate_limit::{conformance, RateLimitStore};
use tollgate_redis::{Clock, RedisRateLimitStore};
use tollgate_testkit::{RedisServer, HOW_TO_GET_REDIS};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_store_passes_the_conformance_suite() {
    let redis = RedisServer::start().expect(HOW_TO_GET_REDIS);
    let url = redis.url();
    let mut n = 0;
    conformance::run(|quota| {
        n += 1;
        let store = RedisRateLimitStore::builder(url.clone())
            .quota(quota)
            .namespace(format!("conformance-{n}"))
            .clock(Clock::Caller)
            // Loopback on a busy 2-core machine: no degradation by accident.
            .timeout(Duration::from_secs(5))
            .build()
            .expect("store");
        async move { Arc::new(store) as Arc<dyn RateLimitStore> }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_suite_passes_without_the_deny_cache_too() {
    let redis = RedisServer::start().expect(HOW_TO_GET_REDIS);
    let url = redis.url();
    conformance::run(|quota| {
        let store = RedisRateLimitStore::builder(url.clone())
            .quota(quota)
            .clock(Clock::Caller)
            .deny_cache_keys(0)
            .timeout(Duration::from_secs(5))
            .build()
            .expect("store");
        async move { Arc::new(store) as Arc<dyn RateLimitStore> }
    })
    .await;
}
