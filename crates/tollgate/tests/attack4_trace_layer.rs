//! Adversary 4: a user's tower-http `TraceLayer` (the layer
//! `ClientBuilder::layer`'s docs name as fitting) sees each attempt below
//! auth. A header credential is marked sensitive there; a query credential
//! (`api_key_query`) is in the URI, which `TraceLayer`'s default span
//! records.
//!
//! Alone in its own test binary: the subscriber is process-global.
#![cfg(feature = "auth")]

use tollgate::Client;
use tollgate_testkit::{CapturedLogs, FakeApi};

/// The one process-global subscriber, shared by the tests here (each
/// looks for its own secret).
fn logs() -> CapturedLogs {
    static LOGS: std::sync::OnceLock<CapturedLogs> = std::sync::OnceLock::new();
    LOGS.get_or_init(CapturedLogs::install_global).clone()
}

#[tokio::test]

async fn a_users_trace_layer_never_logs_a_query_credential() {
    let logs = logs();
    let api = FakeApi::start().await.expect("start");
    let client = Client::builder(api.url())
        .api_key_query("api_key", "TOPSECRET-QUERY-KEY")
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .build()
        .expect("client");
    client.get("/posts/1").send().await.expect("sent");
    let seen = api.last_request("/posts/1").expect("recorded");
    assert!(
        seen.uri.to_string().contains("TOPSECRET-QUERY-KEY"),
        "the credential went with the request"
    );
    let out = logs.contents();
    assert!(
        out.contains("started processing request"),
        "the trace layer logged"
    );
    assert!(
        !out.contains("TOPSECRET-QUERY-KEY"),
        "a user's trace layer logged the query credential:\n{}",
        out.lines()
            .filter(|l| l.contains("TOPSECRET"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// A header credential is marked sensitive: the same trace layer logs no
/// header values by default, and the token never appears.
#[tokio::test]
async fn a_users_trace_layer_never_logs_a_header_credential() {
    let logs = logs();
    let api = FakeApi::start().await.expect("start");
    api.require_bearer("TOPSECRET-BEARER");
    let client = Client::builder(api.url())
        .bearer_auth("TOPSECRET-BEARER")
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .build()
        .expect("client");
    client.get("/posts/1").send().await.expect("sent");
    assert!(!logs.contents().contains("TOPSECRET-BEARER"));
}
