//! A canary secret in every credential kind and in a keyed limiter's key,
//! every path traced at TRACE (success, a 401 and its refresh, retries
//! exhausted, a 429 learned by the limiter, a connect error, a cache hit):
//! the canary must appear nowhere in the output, nor in any `Debug` or
//! `Display` of a client, a response or an error.
//!
//! Alone in its own test binary: the subscriber is process-global.
#![cfg(all(
    feature = "retry",
    feature = "limit",
    feature = "auth",
    feature = "cache"
))]

use std::time::Duration;

use http::{HeaderName, StatusCode};
use tollgate::Client;
use tollgate_cache::CacheLayer;
use tollgate_limit::{KeyBy, Quota, RateLimitLayer};
use tollgate_retry::{Backoff, Jitter, RetryLayer};
use tollgate_testkit::{CapturedLogs, FakeApi, Fault};

const CANARY: &str = "CANARY7f3a9c";

fn quick_retry() -> RetryLayer {
    RetryLayer::new().max_retries(2).backoff(
        Backoff::exponential(Duration::from_millis(10))
            .expect("valid")
            .jitter(Jitter::None),
    )
}

#[tokio::test(start_paused = true)]
async fn a_canary_secret_appears_in_no_log_debug_or_error() {
    let logs = CapturedLogs::install_global();
    let api = FakeApi::start().await.expect("start");
    let mut shown = Vec::new();

    // A keyed limiter keyed by an API key header, learning a pause from a
    // 429: it used to log the key.
    api.inject(
        "/posts/1",
        Fault::status(StatusCode::TOO_MANY_REQUESTS)
            .times(1)
            .retry_after("1"),
    );
    let keyed = Client::builder(api.url())
        .default_header("x-api-key", format!("{CANARY}-keyed"))
        .rate_limit(
            RateLimitLayer::new(Quota::per_second(100).expect("valid"))
                .keyed_by(KeyBy::header(HeaderName::from_static("x-api-key"))),
        )
        .retry(quick_retry())
        .cache(CacheLayer::new(Duration::from_secs(60)))
        .build()
        .expect("client");
    let res = keyed
        .get("/posts/1")
        .send()
        .await
        .expect("a 429, then a 200");
    shown.push(format!("{res:?} {keyed:?}"));
    // A cache hit.
    let hit = keyed.get("/posts/1").send().await.expect("a hit");
    shown.push(format!("{hit:?} {:?}", hit.summary()));

    // Every kind of static credential, with retries exhausted on a 503.
    api.inject("/posts/2", Fault::status(StatusCode::SERVICE_UNAVAILABLE));
    for client in [
        Client::builder(api.url()).bearer_auth(format!("{CANARY}-bearer")),
        Client::builder(api.url()).basic_auth("user", format!("{CANARY}-basic")),
        Client::builder(api.url()).api_key_header("x-key", format!("{CANARY}-header")),
        Client::builder(api.url()).api_key_query("apiKey", format!("{CANARY}-query")),
    ] {
        let client = client.retry(quick_retry()).build().expect("client");
        let res = client.get("/posts/2").send().await.expect("a 503");
        shown.push(format!("{res:?} {client:?}"));
        let err = res.error_for_status().expect_err("a 503");
        shown.push(format!("{err:?} {err}"));
    }

    // A token grant, a 401 and its refresh, and a failed grant.
    api.issue_tokens("client-1", &format!("{CANARY}-client"), 3600);
    let oauth = Client::builder(api.url())
        .oauth2_client_credentials(
            format!("{}/oauth/token", api.url()),
            "client-1",
            format!("{CANARY}-client"),
        )
        .build()
        .expect("client");
    oauth.get("/posts/3").send().await.expect("sent");
    api.revoke_tokens();
    let refreshed = oauth.get("/posts/4").send().await.expect("refreshed");
    shown.push(format!("{refreshed:?} {oauth:?}"));
    let failing = Client::builder(api.url())
        .oauth2_client_credentials(
            format!("{}/oauth/token", api.url()),
            "client-1",
            format!("{CANARY}-wrong"),
        )
        .build()
        .expect("client");
    let err = failing.get("/posts/5").send().await.expect_err("no grant");
    shown.push(format!("{err:?} {err}"));

    // A connect error, with a credential and a retry.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let refused = Client::builder(format!("http://127.0.0.1:{port}"))
        .bearer_auth(format!("{CANARY}-refused"))
        .retry(quick_retry())
        .build()
        .expect("client");
    let err = refused.get("/x").send().await.expect_err("refused");
    shown.push(format!("{err:?} {err}"));

    let logs = logs.contents();
    assert!(logs.contains("http.request"), "tracing was captured");
    assert!(
        logs.contains("limiter paused"),
        "the limiter's pause was logged"
    );
    assert!(!logs.contains(CANARY), "a secret in the logs:\n{logs}");
    for text in shown {
        assert!(!text.contains(CANARY), "a secret in Debug/Display: {text}");
    }
}
