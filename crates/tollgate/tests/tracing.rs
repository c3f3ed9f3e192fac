//! Tracing output of a whole request: OpenTelemetry field names, no secrets.
//!
//! Alone in its own test binary: the subscriber is process-global, so no
//! other test can cache a callsite as disabled first.

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

    let out = logs.contents();
    assert!(out.contains("http.request.method=GET"), "{out}");
    assert!(out.contains("url.full="), "{out}");
    assert!(out.contains("http.response.status_code=200"), "{out}");
    assert!(
        out.contains("api_key=REDACTED") && out.contains("page=2"),
        "{out}"
    );
    assert!(!out.contains("TOPSECRET"), "{out}");
}
