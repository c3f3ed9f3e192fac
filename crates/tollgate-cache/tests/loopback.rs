//! CacheLayer over a real hyper-util client, against FakeApi on 127.0.0.1:
//! what the server saw for hits, coalesced bursts, revalidation,
//! invalidation and credentials.

use std::time::Duration;

use bytes::Bytes;
use http::header::{AGE, AUTHORIZATION, CACHE_CONTROL};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tollgate_cache::{
    Bypass, Cache, CacheBody, CacheLayer, CacheStatus, CoalescedError, Freshness,
};
use tollgate_testkit::{FakeApi, Fault};
use tower::{BoxError, Layer, ServiceExt};

type Hyper = Client<HttpConnector, Empty<Bytes>>;
type Service = Cache<Hyper>;

fn cached(layer: &CacheLayer) -> Service {
    layer.layer(Client::builder(TokioExecutor::new()).build_http())
}

fn req(api: &FakeApi, method: Method, path: &str) -> Request<Empty<Bytes>> {
    Request::builder()
        .method(method)
        .uri(format!("{}{path}", api.url()))
        .body(Empty::new())
        .expect("request")
}

async fn send(
    service: &Service,
    request: Request<Empty<Bytes>>,
) -> Result<Response<CacheBody<Incoming>>, BoxError> {
    service.clone().oneshot(request).await
}

fn status(response: &Response<CacheBody<Incoming>>) -> CacheStatus {
    *response
        .extensions()
        .get::<CacheStatus>()
        .expect("a cache status")
}

async fn body(response: Response<CacheBody<Incoming>>) -> Bytes {
    response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes()
}

#[tokio::test]
async fn a_fresh_hit_costs_the_server_nothing() {
    let api = FakeApi::start().await.expect("fake api");
    let service = cached(&CacheLayer::new(Duration::from_secs(60)));
    let first = send(&service, req(&api, Method::GET, "/posts/1"))
        .await
        .expect("miss");
    assert_eq!(status(&first), CacheStatus::Miss);
    assert!(first.headers().get(AGE).is_none());
    let first = body(first).await;
    let second = send(&service, req(&api, Method::GET, "/posts/1"))
        .await
        .expect("hit");
    assert_eq!(status(&second), CacheStatus::Hit);
    assert_eq!(second.headers()[AGE], "0");
    assert_eq!(body(second).await, first);
    assert_eq!(api.hits("/posts/1"), 1);
}

#[tokio::test(start_paused = true)]
async fn a_concurrent_burst_makes_one_upstream_request() {
    let api = FakeApi::start().await.expect("fake api");
    api.inject("/posts/2", Fault::latency(Duration::from_millis(100)));
    let layer = CacheLayer::new(Duration::from_secs(60));
    let service = cached(&layer);
    let calls: Vec<_> = (0..25)
        .map(|_| tokio::spawn(service.clone().oneshot(req(&api, Method::GET, "/posts/2"))))
        .collect();
    let mut statuses = Vec::new();
    for call in calls {
        let response = call.await.expect("task").expect("response");
        assert_eq!(response.status(), StatusCode::OK);
        statuses.push(status(&response));
        let post: serde_json::Value = serde_json::from_slice(&body(response).await).expect("json");
        assert_eq!(post["id"], 2);
    }
    assert_eq!(
        api.hits("/posts/2"),
        1,
        "one upstream request for the burst"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == CacheStatus::Miss).count(),
        1
    );
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == CacheStatus::Coalesced)
            .count(),
        24
    );
    let stats = layer.stats();
    assert_eq!((stats.misses, stats.coalesced), (1, 24));
}

#[tokio::test(start_paused = true)]
async fn a_failed_burst_shares_the_error_and_caches_nothing() {
    let api = FakeApi::start().await.expect("fake api");
    api.inject(
        "/posts/3",
        Fault::drop_connection()
            .delay(Duration::from_millis(100))
            .times(1),
    );
    let service = cached(&CacheLayer::new(Duration::from_secs(60)));
    let calls: Vec<_> = (0..10)
        .map(|_| tokio::spawn(service.clone().oneshot(req(&api, Method::GET, "/posts/3"))))
        .collect();
    for call in calls {
        let error = call.await.expect("task").expect_err("the upstream reset");
        assert!(error.is::<CoalescedError>(), "{error}");
        // The shared error is transparent: `tollgate_core::chain` (or
        // `CoalescedError::get`) reaches the original error itself.
        let saw_hyper =
            tollgate_core::chain(&*error).any(|e| e.is::<hyper_util::client::legacy::Error>());
        assert!(saw_hyper, "the original error is in the chain: {error:?}");
        let shared = error.downcast_ref::<CoalescedError>().expect("shared");
        assert!(shared.is::<hyper_util::client::legacy::Error>());
    }
    assert_eq!(
        api.hits("/posts/3"),
        1,
        "the waiters did not hammer the upstream"
    );
    // The error was not cached: the next request goes upstream and succeeds.
    let ok = send(&service, req(&api, Method::GET, "/posts/3"))
        .await
        .expect("recovered");
    assert_eq!(
        (ok.status(), status(&ok)),
        (StatusCode::OK, CacheStatus::Miss)
    );
}

#[tokio::test]
async fn a_successful_unsafe_request_invalidates_its_uri() {
    let api = FakeApi::start().await.expect("fake api");
    let service = cached(&CacheLayer::new(Duration::from_secs(60)));
    send(&service, req(&api, Method::GET, "/posts/4"))
        .await
        .expect("miss");
    let hit = send(&service, req(&api, Method::GET, "/posts/4"))
        .await
        .expect("hit");
    assert_eq!(status(&hit), CacheStatus::Hit);
    let put = send(&service, req(&api, Method::PUT, "/posts/4"))
        .await
        .expect("put");
    assert_eq!(
        put.status(),
        StatusCode::BAD_REQUEST,
        "an empty body is not JSON"
    );
    let still = send(&service, req(&api, Method::GET, "/posts/4"))
        .await
        .expect("hit");
    assert_eq!(
        status(&still),
        CacheStatus::Hit,
        "a failed write invalidates nothing"
    );
    let delete = send(&service, req(&api, Method::DELETE, "/posts/4"))
        .await
        .expect("delete");
    assert_eq!(delete.status(), StatusCode::OK);
    let after = send(&service, req(&api, Method::GET, "/posts/4"))
        .await
        .expect("miss");
    assert_eq!(status(&after), CacheStatus::Miss);
    assert_eq!(
        api.hits("/posts/4"),
        4,
        "two GETs upstream, a PUT and a DELETE"
    );
}

#[tokio::test]
async fn responses_never_cross_credentials() {
    let api = FakeApi::start().await.expect("fake api");
    let service = cached(&CacheLayer::new(Duration::from_secs(60)));
    let as_user = |token: Option<&str>| {
        let mut r = req(&api, Method::GET, "/anything/me");
        if let Some(t) = token {
            r.headers_mut()
                .insert(AUTHORIZATION, format!("Bearer {t}").parse().expect("value"));
        }
        r
    };
    for (token, expected) in [
        (Some("alice"), CacheStatus::Miss),
        (Some("bob"), CacheStatus::Miss),
        (Some("alice"), CacheStatus::Hit),
        (None, CacheStatus::Miss),
        (Some("bob"), CacheStatus::Hit),
        (None, CacheStatus::Hit),
    ] {
        let response = send(&service, as_user(token)).await.expect("response");
        assert_eq!(status(&response), expected, "{token:?}");
        let echoed: serde_json::Value =
            serde_json::from_slice(&body(response).await).expect("json");
        let seen = echoed["headers"]["authorization"][0]
            .as_str()
            .map(str::to_owned);
        assert_eq!(
            seen,
            token.map(|t| format!("Bearer {t}")),
            "served someone else's response"
        );
    }
    assert_eq!(api.hits("/anything/me"), 3);
}

#[tokio::test]
async fn http_rules_max_age_no_store_and_no_cache() {
    let api = FakeApi::start().await.expect("fake api");
    api.cache_control("/posts/5", "max-age=60");
    api.cache_control("/posts/6", "no-store");
    api.cache_control("/posts/7", "no-cache");
    api.validators("/posts/7");
    let service = cached(&CacheLayer::http(None));
    for path in ["/posts/5", "/posts/6", "/posts/7"] {
        for _ in 0..3 {
            let response = send(&service, req(&api, Method::GET, path))
                .await
                .expect("response");
            assert_eq!(response.status(), StatusCode::OK);
            body(response).await;
        }
    }
    assert_eq!(api.hits("/posts/5"), 1, "max-age: fresh for a minute");
    assert_eq!(api.hits("/posts/6"), 3, "no-store: never stored");
    assert_eq!(
        api.hits("/posts/7"),
        3,
        "no-cache: revalidated on every reuse"
    );
    assert_eq!(api.not_modified_count(), 2, "two of them answered 304");
}

#[tokio::test(start_paused = true)]
async fn a_stale_entry_is_revalidated_with_its_etag() {
    let api = FakeApi::start().await.expect("fake api");
    api.validators("/posts/8");
    let service = cached(&CacheLayer::new(Duration::from_secs(30)));
    let first = body(
        send(&service, req(&api, Method::GET, "/posts/8"))
            .await
            .expect("miss"),
    )
    .await;
    tokio::time::advance(Duration::from_secs(29)).await;
    let hit = send(&service, req(&api, Method::GET, "/posts/8"))
        .await
        .expect("hit");
    assert_eq!(
        (status(&hit), hit.headers()[AGE].to_str().expect("age")),
        (CacheStatus::Hit, "29")
    );
    tokio::time::advance(Duration::from_secs(1)).await;
    let renewed = send(&service, req(&api, Method::GET, "/posts/8"))
        .await
        .expect("revalidated");
    assert_eq!(status(&renewed), CacheStatus::Revalidated);
    assert_eq!(renewed.status(), StatusCode::OK);
    assert_eq!(
        body(renewed).await,
        first,
        "the stored body, without a transfer"
    );
    let seen = api.last_request("/posts/8").expect("seen");
    assert!(seen
        .header("if-none-match")
        .is_some_and(|t| t.starts_with("\"v0-")));
    assert_eq!(api.not_modified_count(), 1);
    // Renewed for another 30 s.
    let hit = send(&service, req(&api, Method::GET, "/posts/8"))
        .await
        .expect("hit");
    assert_eq!(status(&hit), CacheStatus::Hit);

    // Changed upstream: the revalidation gets a full 200 and stores it.
    api.touch();
    tokio::time::advance(Duration::from_secs(31)).await;
    let changed = send(&service, req(&api, Method::GET, "/posts/8"))
        .await
        .expect("miss");
    assert_eq!(
        (changed.status(), status(&changed)),
        (StatusCode::OK, CacheStatus::Miss)
    );
    assert_eq!(api.hits("/posts/8"), 3);
}

#[tokio::test(start_paused = true)]
async fn stale_if_error_serves_the_stale_entry_within_the_grace() {
    let api = FakeApi::start().await.expect("fake api");
    let layer = CacheLayer::builder(Freshness::Fixed(Duration::from_secs(10)))
        .stale_if_error(Duration::from_secs(60))
        .build();
    let service = cached(&layer);
    let first = body(
        send(&service, req(&api, Method::GET, "/posts/9"))
            .await
            .expect("miss"),
    )
    .await;
    api.inject("/posts/9", Fault::status(StatusCode::SERVICE_UNAVAILABLE));
    tokio::time::advance(Duration::from_secs(30)).await;
    let stale = send(&service, req(&api, Method::GET, "/posts/9"))
        .await
        .expect("stale");
    assert_eq!(
        (stale.status(), status(&stale)),
        (StatusCode::OK, CacheStatus::Stale)
    );
    assert_eq!(body(stale).await, first);
    tokio::time::advance(Duration::from_secs(41)).await;
    let failed = send(&service, req(&api, Method::GET, "/posts/9"))
        .await
        .expect("503");
    assert_eq!(
        failed.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "past the grace"
    );
    assert_eq!(layer.stats().stale, 1);
}

#[tokio::test]
async fn vary_keeps_variants_apart() {
    let api = FakeApi::start().await.expect("fake api");
    api.vary("/anything/*", "accept-language");
    let service = cached(&CacheLayer::new(Duration::from_secs(60)));
    let lang = |l: &str| {
        let mut r = req(&api, Method::GET, "/anything/greeting");
        r.headers_mut()
            .insert("accept-language", l.parse().expect("value"));
        r
    };
    for (l, expected) in [
        ("fr", CacheStatus::Miss),
        ("fr", CacheStatus::Hit),
        ("de", CacheStatus::Miss),
        ("de", CacheStatus::Hit),
    ] {
        let response = send(&service, lang(l)).await.expect("response");
        assert_eq!(status(&response), expected, "{l}");
        let echoed: serde_json::Value =
            serde_json::from_slice(&body(response).await).expect("json");
        assert_eq!(echoed["headers"]["accept-language"][0], l);
    }
    assert_eq!(api.hits("/anything/greeting"), 2);
}

#[tokio::test]
async fn a_response_over_the_entry_limit_streams_through_unstored() {
    let api = FakeApi::start().await.expect("fake api");
    let service = cached(
        &CacheLayer::builder(Freshness::Fixed(Duration::from_secs(60)))
            .max_entry_bytes(1024)
            .build(),
    );
    for _ in 0..2 {
        let response = send(&service, req(&api, Method::GET, "/posts"))
            .await
            .expect("response");
        assert_eq!(status(&response), CacheStatus::Miss);
        assert!(!response.body().is_buffered(), "never buffered");
        let all: serde_json::Value = serde_json::from_slice(&body(response).await).expect("whole");
        assert_eq!(all.as_array().map(Vec::len), Some(100));
    }
    assert_eq!(api.hits("/posts"), 2);
}

#[tokio::test]
async fn bypass_and_request_no_store_skip_the_cache() {
    let api = FakeApi::start().await.expect("fake api");
    let service = cached(&CacheLayer::new(Duration::from_secs(60)));
    send(&service, req(&api, Method::GET, "/posts/10"))
        .await
        .expect("miss");
    let mut bypass = req(&api, Method::GET, "/posts/10");
    bypass.extensions_mut().insert(Bypass);
    assert_eq!(
        status(&send(&service, bypass).await.expect("bypass")),
        CacheStatus::Bypass
    );
    let mut no_store = req(&api, Method::GET, "/posts/10");
    no_store
        .headers_mut()
        .insert(CACHE_CONTROL, "no-store".parse().expect("value"));
    assert_eq!(
        status(&send(&service, no_store).await.expect("bypass")),
        CacheStatus::Bypass
    );
    assert_eq!(api.hits("/posts/10"), 3);
}

#[tokio::test(start_paused = true)]
async fn a_burst_on_a_vary_star_resource_gets_each_its_own_answer() {
    let api = FakeApi::start().await.expect("fake api");
    api.vary("/anything/*", "*");
    api.inject("/anything/star", Fault::latency(Duration::from_millis(100)));
    let service = cached(&CacheLayer::new(Duration::from_secs(60)));
    let calls: Vec<_> = ["en", "fr", "de", "it"]
        .into_iter()
        .map(|l| {
            let mut r = req(&api, Method::GET, "/anything/star");
            r.headers_mut()
                .insert("accept-language", l.parse().expect("value"));
            let call = service.clone().oneshot(r);
            tokio::spawn(async move { (call.await, l) })
        })
        .collect();
    for call in calls {
        let (response, l) = call.await.expect("task");
        let response = response.expect("response");
        assert_ne!(status(&response), CacheStatus::Coalesced, "{l}");
        let echoed: serde_json::Value =
            serde_json::from_slice(&body(response).await).expect("json");
        assert_eq!(echoed["headers"]["accept-language"][0], l);
    }
    assert_eq!(api.hits("/anything/star"), 4);
}

#[tokio::test]
async fn private_responses_are_kept_only_for_their_credential() {
    let api = FakeApi::start().await.expect("fake api");
    api.cache_control("/posts/8", "private, max-age=60");
    let service = cached(&CacheLayer::new(Duration::from_secs(60)));
    for expected in [CacheStatus::Miss, CacheStatus::Miss] {
        let response = send(&service, req(&api, Method::GET, "/posts/8"))
            .await
            .expect("anonymous");
        assert_eq!(status(&response), expected, "shared: never stored");
    }
    let as_alice = || {
        let mut r = req(&api, Method::GET, "/posts/8");
        r.headers_mut()
            .insert(AUTHORIZATION, "Bearer alice".parse().expect("value"));
        r
    };
    for expected in [CacheStatus::Miss, CacheStatus::Hit] {
        let response = send(&service, as_alice()).await.expect("alice");
        assert_eq!(status(&response), expected, "alice's own partition");
    }
    assert_eq!(api.hits("/posts/8"), 3);
}
