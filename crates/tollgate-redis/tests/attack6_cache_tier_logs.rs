//! Adversary 6: what the cache tier logs when Redis refuses it never holds
//! the URL's password (a binary of its own: it installs the global
//! subscriber).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tollgate_cache::{CacheLayer, Freshness, TIER_RETRY};
use tollgate_redis::RedisCacheTier;
use tollgate_testkit::{CapturedLogs, FakeApi, RedisServer, HOW_TO_GET_REDIS};
use tower::{Layer, ServiceExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_password_and_a_dead_redis_never_log_the_password() {
    let logs = CapturedLogs::install_global();
    let mut server = RedisServer::start().expect(HOW_TO_GET_REDIS);
    let api = FakeApi::start().await.expect("fake api");
    // Redis asks for a password; the tier brings the wrong one.
    let mut admin = redis::Client::open(server.url())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("requirepass")
        .arg("the-right-one")
        .query_async(&mut admin)
        .await
        .expect("CONFIG SET");
    let addr = server.addr();
    let url = format!("redis://user6:hunter2-wrong@{addr}/0");
    let tier = RedisCacheTier::builder(url.as_str())
        .timeout(Duration::from_millis(500))
        .build()
        .expect("tier");
    assert!(!format!("{tier:?}").contains("hunter2"));
    let layer = CacheLayer::builder(Freshness::Fixed(Duration::from_secs(60)))
        .tier(Arc::new(tier))
        .tier_timeout(Duration::from_millis(500))
        .build();
    let service = layer.layer(Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>());
    for i in 1..=3 {
        let request = Request::get(format!("{}/posts/{i}", api.url()))
            .body(Empty::new())
            .expect("req");
        let response = service.clone().oneshot(request).await.expect("response");
        assert!(response.status().is_success());
        let _ = response.into_body().collect().await.expect("body");
        tokio::time::sleep(TIER_RETRY).await;
    }
    server.stop();
    for i in 4..=5 {
        let request = Request::get(format!("{}/posts/{i}", api.url()))
            .body(Empty::new())
            .expect("req");
        let response = service.clone().oneshot(request).await.expect("response");
        assert!(response.status().is_success());
        tokio::time::sleep(TIER_RETRY).await;
    }
    let stats = layer.stats();
    assert!(stats.tier_errors >= 1, "{stats:?}");
    let text = logs.contents();
    assert!(text.contains("cache tier failing"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
}
