//! Tracing output of a whole request: OpenTelemetry field names, no secrets.
//!
//! Alone in its own test binary: the subscriber is process-global, so no
//! other test can cache a callsite as disabled first.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tollgate::Client;
use tollgate_testkit::FakeApi;

/// A writer that keeps everything the subscriber prints.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn tracing_has_otel_fields_and_no_secrets() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    tracing::subscriber::set_global_default(subscriber).expect("first subscriber");

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

    let out = String::from_utf8(captured.0.lock().expect("lock").clone()).expect("utf8");
    assert!(out.contains("http.request.method=GET"), "{out}");
    assert!(out.contains("url.full="), "{out}");
    assert!(out.contains("http.response.status_code=200"), "{out}");
    assert!(
        out.contains("api_key=REDACTED") && out.contains("page=2"),
        "{out}"
    );
    assert!(!out.contains("TOPSECRET"), "{out}");
}
