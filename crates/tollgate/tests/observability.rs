//! Observability of a call: the span's OpenTelemetry fields (`server.port`,
//! `url.template`, `otel.kind`, `otel.status_code` for 4xx and 5xx), the
//! request id taken from tower-http's `RequestId`, W3C `traceparent`
//! propagation, body logging with sensitive fields redacted, and metrics
//! through the `metrics` facade.
//!
//! One test binary: the tracing subscriber is process-global, installed
//! once; each test searches the logs for markers of its own.

use std::sync::OnceLock;

use tollgate::{Client, Endpoint, TraceContext};
use tollgate_testkit::{CapturedLogs, FakeApi, Fault};

fn logs() -> &'static CapturedLogs {
    static LOGS: OnceLock<CapturedLogs> = OnceLock::new();
    LOGS.get_or_init(CapturedLogs::install_global)
}

/// The log lines that mention `marker`.
fn lines_with(marker: &str) -> Vec<String> {
    logs()
        .contents()
        .lines()
        .filter(|l| l.contains(marker))
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn the_span_has_port_template_kind_and_error_status_for_4xx_and_5xx() {
    logs();
    let api = FakeApi::start().await.expect("api");
    let client = Client::builder(format!("{}/", api.url()))
        .endpoint(Endpoint::new("get_post", http::Method::GET, "/posts/{id}"))
        .build()
        .expect("client");
    client
        .call("get_post")
        .path_param("id", 1)
        .send()
        .await
        .expect("sent");
    let all = logs().contents();
    let port = api.addr().port();
    assert!(all.contains(&format!("server.port={port}")), "{all}");
    assert!(
        all.contains("url.template=\"/posts/{id}\"") || all.contains("url.template=/posts/{id}"),
        "{all}"
    );
    assert!(
        all.contains("otel.kind=\"client\"") || all.contains("otel.kind=client"),
        "{all}"
    );

    api.inject("/posts/404", Fault::status(http::StatusCode::NOT_FOUND));
    api.inject(
        "/posts/500",
        Fault::status(http::StatusCode::INTERNAL_SERVER_ERROR),
    );
    for path in ["/posts/404", "/posts/500"] {
        let res = client.get(path).send().await.expect("a response");
        assert!(res.status().as_u16() >= 400);
    }
    let all = logs().contents();
    for code in ["404", "500"] {
        let line = all
            .lines()
            .find(|l| l.contains(&format!("http.response.status_code={code}")))
            .unwrap_or_else(|| panic!("no {code} line: {all}"));
        assert!(
            line.contains("otel.status_code=\"ERROR\"") || line.contains("otel.status_code=ERROR"),
            "{line}"
        );
        assert!(
            line.contains(&format!("error.type=\"{code}\""))
                || line.contains(&format!("error.type={code}")),
            "{line}"
        );
    }
    let line = all
        .lines()
        .find(|l| l.contains("http.response.status_code=200"))
        .expect("a 200 line");
    assert!(!line.contains("otel.status_code"), "{line}");

    // A call that fails is an error too, with its kind as `error.type`.
    let dead = Client::new("http://127.0.0.1:1").expect("client");
    let _ = dead.get("/span-connect-marker").send().await;
    let line = lines_with("span-connect-marker")
        .into_iter()
        .find(|l| l.contains("request failed"))
        .expect("a failure line");
    assert!(line.contains("error.type=Connect"), "{line}");
    assert!(line.contains("otel.status_code=\"ERROR\""), "{line}");
}

#[tokio::test]
async fn a_tower_http_request_id_in_the_extensions_is_the_calls_id() {
    let api = FakeApi::start().await.expect("api");
    let client = Client::new(api.url()).expect("client");
    let incoming =
        tower_http::request_id::RequestId::new(http::HeaderValue::from_static("from-the-server-7"));
    let res = client
        .get("/anything/rid")
        .extension(incoming)
        .send()
        .await
        .expect("sent");
    assert_eq!(
        res.summary().request_id.as_deref(),
        Some("from-the-server-7")
    );
    let seen = api.last_request("/anything/rid").expect("seen");
    assert_eq!(seen.header("x-request-id"), Some("from-the-server-7"));
}

#[tokio::test]
async fn traceparent_is_off_by_default_and_propagates_the_callers_trace_when_on() {
    let api = FakeApi::start().await.expect("api");
    let plain = Client::new(api.url()).expect("client");
    plain.get("/anything/tp0").send().await.expect("sent");
    let seen = api.last_request("/anything/tp0").expect("seen");
    assert_eq!(seen.header("traceparent"), None);

    let client = Client::builder(api.url())
        .propagate_traceparent(true)
        .build()
        .expect("client");
    let parent =
        TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").expect("ok");
    client
        .get("/anything/tp1")
        .extension(parent)
        .send()
        .await
        .expect("sent");
    let sent = api.last_request("/anything/tp1").expect("seen");
    let sent = TraceContext::parse(sent.header("traceparent").expect("sent")).expect("valid");
    assert_eq!(sent.trace_id(), parent.trace_id());
    assert_ne!(sent.parent_id(), parent.parent_id());
    assert!(sent.sampled());

    client.get("/anything/tp2").send().await.expect("sent");
    let fresh = api.last_request("/anything/tp2").expect("seen");
    let fresh = TraceContext::parse(fresh.header("traceparent").expect("sent")).expect("valid");
    assert_ne!(fresh.trace_id(), parent.trace_id());
}

#[tokio::test]
async fn bodies_are_logged_only_when_asked_truncated_and_with_secrets_redacted() {
    logs();
    let api = FakeApi::start().await.expect("api");
    let quiet = Client::new(api.url()).expect("client");
    quiet
        .post("/anything/quiet-body")
        .json(&serde_json::json!({"marker": "QUIET-BODY-MARKER"}))
        .send()
        .await
        .expect("sent");
    assert!(lines_with("QUIET-BODY-MARKER").is_empty());

    let client = Client::builder(api.url())
        .log_bodies(4096)
        .build()
        .expect("client");
    // `/posts` answers with the object it created: the secrets come back
    // as JSON fields, redacted in the response body's line too.
    client
        .post("/posts")
        .json(&serde_json::json!({
            "marker": "LOGGED-BODY-MARKER",
            "password": "TOPSECRET-PW",
            "nested": {"access_token": "TOPSECRET-TOKEN"},
        }))
        .send()
        .await
        .expect("sent");
    let all = logs().contents();
    assert!(all.contains("request body"), "{all}");
    assert!(all.contains("response body"), "{all}");
    assert!(lines_with("LOGGED-BODY-MARKER").len() >= 2, "{all}");
    assert!(!all.contains("TOPSECRET"), "{all}");

    let short = Client::builder(api.url())
        .log_bodies(16)
        .build()
        .expect("client");
    short
        .post("/anything/short")
        .json(&serde_json::json!({"marker": "SHORT-BODY-MARKER-WHICH-IS-LONG"}))
        .send()
        .await
        .expect("sent");
    assert!(lines_with("SHORT-BODY-MARKER-WHICH-IS-LONG").is_empty());
    assert!(
        logs().contents().contains("…("),
        "cut bodies say their length"
    );
}

#[cfg(feature = "metrics")]
#[test]
fn metrics_count_calls_attempts_outcomes_and_durations() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let api = FakeApi::start().await.expect("api");
            let client = Client::new(api.url()).expect("client");
            client.get("/posts/1").send().await.expect("sent");
            api.inject("/posts/2", Fault::status(http::StatusCode::NOT_FOUND));
            client.get("/posts/2").send().await.expect("a 404");
            let dead = Client::new("http://127.0.0.1:1").expect("client");
            let _ = dead.get("/x").send().await;
        });
    });
    let snapshot = snapshotter.snapshot().into_vec();
    let find = |name: &str, label: (&str, &str)| {
        snapshot.iter().find(|(key, _, _, _)| {
            key.key().name() == name
                && key
                    .key()
                    .labels()
                    .any(|l| l.key() == label.0 && l.value() == label.1)
        })
    };
    let counter = |name: &str, label: (&str, &str)| match find(name, label) {
        Some((_, _, _, DebugValue::Counter(n))) => *n,
        _ => 0,
    };
    assert_eq!(counter("tollgate.client.calls", ("outcome", "response")), 2);
    assert_eq!(
        counter("tollgate.client.calls", ("error.type", "Connect")),
        1
    );
    assert_eq!(
        counter("tollgate.client.attempts", ("http.request.method", "GET")),
        2
    );
    let Some((_, _, _, DebugValue::Histogram(durations))) =
        find("http.client.request.duration", ("error.type", "404"))
    else {
        panic!("no duration for the 404: {snapshot:?}");
    };
    assert_eq!(durations.len(), 1);
    assert!(find(
        "http.client.request.duration",
        ("http.response.status_code", "200")
    )
    .is_some());
}

/// A 429 that retry answers by trying again still taught the limiter a
/// pause: it is counted where it is learned, not from the call's last
/// response (a 200 here).
#[cfg(all(feature = "metrics", feature = "limit", feature = "retry"))]
#[test]
fn metrics_count_a_learned_pause_even_when_the_retry_then_succeeds() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .expect("runtime");
        rt.block_on(async {
            let api = FakeApi::start().await.expect("api");
            let client = Client::builder(api.url())
                .rate_limit(tollgate::limit::RateLimitLayer::new(
                    tollgate::limit::Quota::per_second(100).expect("quota"),
                ))
                .retry(tollgate::retry::RetryLayer::new().max_retries(2))
                .build()
                .expect("client");
            api.inject(
                "/posts/1",
                Fault::status(http::StatusCode::TOO_MANY_REQUESTS)
                    .times(1)
                    .retry_after("2"),
            );
            let res = client.get("/posts/1").send().await.expect("retried");
            assert_eq!(res.status(), 200);
            assert_eq!(res.summary().attempts, 2);
        });
    });
    let snapshot = snapshotter.snapshot().into_vec();
    let pauses: Vec<_> = snapshot
        .iter()
        .filter(|(key, _, _, _)| key.key().name() == "tollgate.client.rate_limit.pauses")
        .collect();
    assert_eq!(pauses.len(), 1, "{snapshot:?}");
    assert!(
        matches!(pauses[0].3, DebugValue::Counter(1)),
        "{snapshot:?}"
    );
    assert!(pauses[0]
        .0
        .key()
        .labels()
        .any(|l| l.key() == "http.response.status_code" && l.value() == "429"));
}

/// A tower-http `MakeRequestId` that always gives the same id.
#[derive(Clone)]
struct FixedId;

impl tower_http::request_id::MakeRequestId for FixedId {
    fn make_request_id<B>(
        &mut self,
        _: &http::Request<B>,
    ) -> Option<tower_http::request_id::RequestId> {
        Some(tower_http::request_id::RequestId::new(
            http::HeaderValue::from_static("from-the-layer"),
        ))
    }
}

#[tokio::test]
async fn a_tower_http_set_request_id_layer_keeps_the_calls_id_and_sets_one_when_the_client_does_not(
) {
    let api = FakeApi::start().await.expect("api");
    let layer = || {
        tower_http::request_id::SetRequestIdLayer::new(
            http::HeaderName::from_static("x-request-id"),
            FixedId,
        )
    };
    // The facade's id is set above the users' layers; tower-http's layer
    // keeps an id a request has, so the id sent is the one in the record.
    let client = Client::builder(api.url())
        .layer(layer())
        .build()
        .expect("client");
    let res = client.get("/anything/rid1").send().await.expect("sent");
    let sent = api.last_request("/anything/rid1").expect("seen");
    assert_eq!(
        sent.header("x-request-id"),
        res.summary().request_id.as_deref()
    );
    assert_ne!(sent.header("x-request-id"), Some("from-the-layer"));
    // With the client's own ids off, the layer's is sent.
    let client = Client::builder(api.url())
        .no_request_id()
        .layer(layer())
        .build()
        .expect("client");
    client.get("/anything/rid2").send().await.expect("sent");
    let sent = api.last_request("/anything/rid2").expect("seen");
    assert_eq!(sent.header("x-request-id"), Some("from-the-layer"));
}
