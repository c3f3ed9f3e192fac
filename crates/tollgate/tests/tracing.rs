//! Tracing output of a whole request: OpenTelemetry field names, no secrets.
//!
//! Alone in its own test binary: the subscriber is process-global, so no
//! other test can cache a callsite as disabled first.
#![cfg(feature = "auth")]

use std::time::Duration;

use tollgate::Client;
use tollgate_testkit::{CapturedLogs, FakeApi};

#[tokio::test]
async fn tracing_has_otel_fields_and_no_secrets() {
    let logs = CapturedLogs::install_global();

    let api = FakeApi::start().await.expect("start");
    let client = Client::builder(api.url())
        .default_header("x-api-key", "TOPSECRET-HEADER")
        .redact_query_param("session")
        .build()
        .expect("builds");
    client
        .get("/posts/1?api_key=TOPSECRET-QUERY&session=TOPSECRET-SESSION&page=2")
        .send()
        .await
        .expect("sent");
    let _ = client
        .get("/posts/1?token=TOPSECRET-ERR")
        .timeout(Duration::from_nanos(1))
        .send()
        .await;

    // Every kind of credential, a token grant, a refresh after a 401, and a
    // failed grant: none of it may reach the logs.
    api.issue_tokens("client-1", "TOPSECRET-CLIENT", 3600);
    let oauth = Client::builder(api.url())
        .oauth2_client_credentials(
            format!("{}/oauth/token", api.url()),
            "client-1",
            "TOPSECRET-CLIENT",
        )
        .build()
        .expect("builds");
    oauth.get("/posts/2").send().await.expect("sent");
    api.revoke_tokens();
    oauth.get("/posts/3").send().await.expect("sent");
    let failing = Client::builder(api.url())
        .oauth2_client_credentials(
            format!("{}/oauth/token", api.url()),
            "client-1",
            "TOPSECRET-WRONG",
        )
        .build()
        .expect("builds");
    let _ = failing.get("/posts/4").send().await;
    api.allow_anonymous();
    for client in [
        Client::builder(api.url())
            .bearer_auth("TOPSECRET-BEARER")
            .build(),
        Client::builder(api.url())
            .basic_auth("user", "TOPSECRET-BASIC")
            .build(),
        Client::builder(api.url())
            .api_key_header("x-key", "TOPSECRET-KEYHEADER")
            .build(),
        Client::builder(api.url())
            .api_key_query("apiKey", "TOPSECRET-KEYQUERY")
            .build(),
    ] {
        let client = client.expect("builds");
        client.get("/anything/x").send().await.expect("sent");
        tracing::info!(client = ?client, "debug of the client");
    }
    // A parameter named as an API key is redacted in the caller's own URLs.
    let custom = Client::builder(api.url())
        .api_key_query("custom", "TOPSECRET-CUSTOM")
        .build()
        .expect("builds");
    custom
        .get("/anything/y?custom=TOPSECRET-OWN")
        .send()
        .await
        .expect("sent");

    let out = logs.contents();
    assert!(out.contains("refreshing token"), "{out}");
    // The base64 of "user:TOPSECRET-BASIC" must not show either.
    assert!(!out.contains("dXNlcjpUT1BTRUNSRVQtQkFTSUM"), "{out}");
    assert!(out.contains("http.request.method=GET"), "{out}");
    assert!(out.contains("url.full="), "{out}");
    assert!(out.contains("http.response.status_code=200"), "{out}");
    assert!(
        out.contains("api_key=REDACTED") && out.contains("page=2"),
        "{out}"
    );
    assert!(!out.contains("TOPSECRET"), "{out}");
}
