//! Adversarial tests of issue #14's streaming, forms, origins, papercuts and
//! observability: each tries to break a promise (a secret never leaks, a call
//! ends with exactly one outcome, bad input is a typed error, a streamed body
//! is sent at most once, limits hold). A test marked `#[ignore = "BROKEN:
//! ..."]` shows a break that is still there; the others guard.
//!
//! Real HTTP over 127.0.0.1 (FakeApi, or a small hostile server in this
//! file), or an in-process transport; paused time where time matters. One
//! test binary: the tracing subscriber is process-global, installed once, and
//! each test searches the logs for markers of its own.
#![cfg(all(
    feature = "auth",
    feature = "redirect",
    feature = "limit",
    feature = "retry"
))]

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_core::Stream;
use http::header::CONTENT_TYPE;
use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Sleep;
use tollgate::multipart::{Form, Part};
use tollgate::{Client, ClientBuilder, ErrorKind, RequestBody};
use tollgate_testkit::{CapturedLogs, FakeApi, Fault};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

fn logs() -> &'static CapturedLogs {
    static LOGS: OnceLock<CapturedLogs> = OnceLock::new();
    LOGS.get_or_init(CapturedLogs::install_global)
}

/// A stream of these items, then its end (`Pending` forever when `hang`);
/// counts its polls and says when it is dropped.
struct Tracked<T> {
    items: VecDeque<T>,
    hang: bool,
    polls: Arc<AtomicUsize>,
    dropped: Arc<AtomicBool>,
}

impl<T: Unpin> Stream for Tracked<T> {
    type Item = T;

    fn poll_next(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<T>> {
        self.polls.fetch_add(1, Ordering::SeqCst);
        match self.items.pop_front() {
            Some(item) => Poll::Ready(Some(item)),
            None if self.hang => Poll::Pending,
            None => Poll::Ready(None),
        }
    }
}

impl<T> Drop for Tracked<T> {
    fn drop(&mut self) {
        self.dropped.store(true, Ordering::SeqCst);
    }
}

struct Probe {
    polls: Arc<AtomicUsize>,
    dropped: Arc<AtomicBool>,
}

fn tracked(chunks: &[&'static str], hang: bool) -> (Tracked<Result<Bytes, Infallible>>, Probe) {
    let polls = Arc::new(AtomicUsize::new(0));
    let dropped = Arc::new(AtomicBool::new(false));
    let stream = Tracked {
        items: chunks
            .iter()
            .map(|c| Ok(Bytes::from_static(c.as_bytes())))
            .collect(),
        hang,
        polls: polls.clone(),
        dropped: dropped.clone(),
    };
    (stream, Probe { polls, dropped })
}

fn chunks(chunks: &[&'static str]) -> Tracked<Result<Bytes, Infallible>> {
    tracked(chunks, false).0
}

/// Waits (paused time) until the stream behind `probe` is dropped.
async fn dropped_soon(probe: &Probe) -> bool {
    for _ in 0..200 {
        if probe.dropped.load(Ordering::SeqCst) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    probe.dropped.load(Ordering::SeqCst)
}

/// `left` chunks of `chunk,`, one every `every`: an upload that keeps
/// sending.
struct Slow {
    left: usize,
    every: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl Stream for Slow {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let every = self.every;
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(every)));
        if sleep.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        self.sleep = None;
        self.left -= 1;
        Poll::Ready(Some(Ok(Bytes::from_static(b"chunk,"))))
    }
}

/// The items of `first`, then those of `then`.
struct Chain<A, B> {
    first: Option<A>,
    then: B,
}

impl<T, A, B> Stream for Chain<A, B>
where
    A: Stream<Item = T> + Unpin,
    B: Stream<Item = T> + Unpin,
{
    type Item = T;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        if let Some(first) = self.first.as_mut() {
            match Pin::new(first).poll_next(cx) {
                Poll::Ready(None) => self.first = None,
                other => return other,
            }
        }
        Pin::new(&mut self.then).poll_next(cx)
    }
}

/// One chunk, then a panic at the next poll.
struct Panicky {
    sent: bool,
}

impl Stream for Panicky {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if !self.sent {
            self.sent = true;
            return Poll::Ready(Some(Ok(Bytes::from_static(b"first,"))));
        }
        panic!("attack8: a hostile upload stream panics");
    }
}

/// A client whose pool has one slot, the queue giving up after 1 s.
fn one_slot(builder: ClientBuilder) -> Client {
    builder
        .concurrency_limit(
            tollgate::limit::ConcurrencyLimitLayer::new(1).queue_timeout(Duration::from_secs(1)),
        )
        .build()
        .expect("builds")
}

async fn slot_is_free(client: &Client) -> bool {
    match client.get("/posts/1").send().await {
        Ok(res) => res.status() == 200,
        Err(e) if e.kind() == ErrorKind::PendingTimeout => false,
        Err(e) => panic!("unexpected: {e:?}"),
    }
}

/// A client of `builder` whose transport answers every request with these
/// headers and `body`.
fn answering(
    builder: ClientBuilder,
    headers: Vec<(HeaderName, HeaderValue)>,
    body: Bytes,
) -> Client {
    let transport = tower::service_fn(move |_req: Request<RequestBody>| {
        let (headers, body) = (headers.clone(), body.clone());
        async move {
            let mut res = Response::new(Full::new(body));
            for (name, value) in headers {
                res.headers_mut().append(name, value);
            }
            Ok::<_, Infallible>(res)
        }
    });
    builder.transport(transport).build().expect("client")
}

fn ct(value: &'static str) -> Vec<(HeaderName, HeaderValue)> {
    vec![(CONTENT_TYPE, HeaderValue::from_static(value))]
}

/// A server that answers every request (after its head) with `reply` and
/// closes the connection.
async fn raw_server(reply: &'static [u8]) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = [0u8; 1024];
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = socket.write_all(reply).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    addr
}

fn temp_file(name: &str, content: &[u8]) -> PathBuf {
    let path = std::env::temp_dir().join(format!(
        "tollgate-attack8-{}-{}-{name}",
        std::process::id(),
        fastrand_suffix()
    ));
    std::fs::write(&path, content).expect("write temp file");
    path
}

fn fastrand_suffix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(7);
    h.finish()
}

fn sha256(data: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

// ---------------------------------------------------------------------------
// Body logging: a secret never leaks
// ---------------------------------------------------------------------------

/// Every name of `SENSITIVE_BODY_FIELDS` in the spellings APIs use:
/// snake_case, kebab-case, camelCase, PascalCase, UPPER.
fn spellings(field: &str) -> Vec<String> {
    let words: Vec<&str> = field.split(['_', '-']).collect();
    let cap = |w: &str| {
        let mut c = w.chars();
        c.next()
            .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
            .unwrap_or_default()
    };
    let camel: String = words
        .iter()
        .enumerate()
        .map(|(i, w)| if i == 0 { (*w).to_owned() } else { cap(w) })
        .collect();
    let pascal: String = words.iter().map(|w| cap(w)).collect();
    vec![
        field.to_owned(),
        words.join("_"),
        words.join("-"),
        camel,
        pascal,
        field.to_ascii_uppercase(),
    ]
}

#[tokio::test]
async fn body_logging_redacts_every_spelling_of_the_sensitive_fields() {
    logs();
    let client = answering(
        Client::builder("http://api.test").log_bodies(1 << 16),
        ct("application/json"),
        Bytes::from_static(b"{\"ok\":true}"),
    );
    let mut object = serde_json::Map::new();
    let mut pairs = Vec::new();
    let mut secrets = Vec::new();
    object.insert("marker".into(), json!("SPELLINGS-MARKER"));
    pairs.push(("marker".to_owned(), "SPELLINGS-FORM-MARKER".to_owned()));
    for (i, field) in tollgate::SENSITIVE_BODY_FIELDS.iter().enumerate() {
        for (j, name) in spellings(field).into_iter().enumerate() {
            let secret = format!("SPELLSECRET{i}x{j}Z");
            object.insert(name.clone(), json!(secret));
            pairs.push((name.clone(), secret.clone()));
            secrets.push((name, secret));
        }
    }
    client
        .post("/login")
        .json(&Value::Object(object))
        .send()
        .await
        .expect("sent");
    client
        .post("/login")
        .form(&pairs)
        .send()
        .await
        .expect("sent");
    let all = logs().contents();
    assert!(all.contains("SPELLINGS-MARKER"), "the JSON body was logged");
    assert!(all.contains("SPELLINGS-FORM-MARKER"), "the form was logged");
    let leaked: Vec<&String> = secrets
        .iter()
        .filter(|(_, s)| all.contains(s.as_str()))
        .map(|(n, _)| n)
        .collect();
    assert!(leaked.is_empty(), "values shown for {leaked:?}");
}

#[tokio::test]
async fn body_logging_redacts_at_any_depth_in_arrays_escapes_forms_multipart_and_cut_bodies() {
    logs();
    // A response body with secrets too, deep and in arrays.
    let response = json!({
        "marker": "DEPTH-RESPONSE-MARKER",
        "data": [{"session": {"id": "DEPTHSECRET-R1"}}, [[{"Refresh_Token": "DEPTHSECRET-R2"}]]],
    });
    let client = answering(
        Client::builder("http://api.test").log_bodies(1 << 16),
        ct("Application/Vnd.Api+JSON; Charset=UTF-8"),
        Bytes::from(response.to_string()),
    );
    // 30 levels of nesting (60 deep) with a password at the bottom.
    let mut deep = json!({"password": "DEPTHSECRET-1"});
    for _ in 0..30 {
        deep = json!({"next": [deep]});
    }
    let body = json!({
        "marker": "DEPTH-MARKER",
        "deep": deep,
        "users": [{"name": "ann", "PASSWORD": "DEPTHSECRET-2"}, {"creds": {"clientSecret": "DEPTHSECRET-3"}}],
        "token": {"value": "DEPTHSECRET-4", "list": ["DEPTHSECRET-5"]},
        "auth": [{"Authorization": "Bearer DEPTHSECRET-6"}],
    });
    client.post("/a").json(&body).send().await.expect("sent");
    // A JSON key written with escapes, sent as bytes under an odd type.
    client
        .post("/b")
        .header("content-type", "APPLICATION/JSON")
        .body(r#"{"marker":"ESCAPE-MARKER","pass\u0077ord":"DEPTHSECRET-7","\u0074oken":"DEPTHSECRET-8"}"#)
        .send()
        .await
        .expect("sent");
    // No content type at all, but JSON.
    client
        .post("/c")
        .body(r#"{"marker":"NOTYPE-MARKER","api_key":"DEPTHSECRET-9"}"#)
        .send()
        .await
        .expect("sent");
    // Forms: percent-encoded names, Rails-style nesting, `+`, repeats.
    client
        .post("/d")
        .header(
            "content-type",
            "application/x-www-form-urlencoded; charset=UTF-8",
        )
        .body("marker=DEPTHFORM-MARKER&pass%77ord=DEPTHSECRET-10&user%5Bpassword%5D=DEPTHSECRET-11&access+token=x&client_secret=DEPTHSECRET-12&client_secret=DEPTHSECRET-13&Api-Key=DEPTHSECRET-14%26more")
        .send()
        .await
        .expect("sent");
    // Multipart in memory: its parts are never shown.
    let form = Form::new()
        .text("marker", "MULTIPART-MARKER")
        .text("password", "DEPTHSECRET-15")
        .part("key", Part::bytes("DEPTHSECRET-16").file_name("id_rsa"));
    client
        .post("/e")
        .multipart(form)
        .send()
        .await
        .expect("sent");
    // Cut short: a secret at the very start of a body longer than the cut.
    let short = answering(
        Client::builder("http://api.test").log_bodies(12),
        ct("application/json"),
        Bytes::from_static(b"{}"),
    );
    short
        .post("/f")
        .json(&json!({"password": "DEPTHSECRET-17", "pad": "x".repeat(100)}))
        .send()
        .await
        .expect("sent");
    short
        .post("/g")
        .form(&[("password", "DEPTHSECRET-18"), ("pad", &"y".repeat(100))])
        .send()
        .await
        .expect("sent");

    let all = logs().contents();
    for marker in [
        "DEPTH-MARKER",
        "DEPTH-RESPONSE-MARKER",
        "ESCAPE-MARKER",
        "NOTYPE-MARKER",
        "DEPTHFORM-MARKER",
    ] {
        assert!(all.contains(marker), "{marker} was logged");
    }
    let leaked: Vec<&str> = all
        .match_indices("DEPTHSECRET-")
        .map(|(i, _)| &all[i..(i + 15).min(all.len())])
        .collect();
    assert!(leaked.is_empty(), "leaked: {leaked:?}");
}

#[tokio::test]
async fn body_logging_redacts_the_credentials_of_oauth2_token_requests() {
    logs();
    let client = answering(
        Client::builder("http://api.test").log_bodies(1 << 16),
        ct("application/json"),
        Bytes::from_static(b"{\"access_token\":\"OAUTHSECRET-AT\"}"),
    );
    client
        .post("/oauth/token")
        .form(&[
            ("marker", "OAUTH-MARKER"),
            ("grant_type", "authorization_code"),
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ),
            ("client_assertion", "OAUTHSECRET-JWT"),
            ("code_verifier", "OAUTHSECRET-PKCE"),
            ("assertion", "OAUTHSECRET-ASSERTION"),
        ])
        .send()
        .await
        .expect("sent");
    let all = logs().contents();
    assert!(all.contains("OAUTH-MARKER"), "the form was logged");
    let leaked: Vec<&str> = [
        "OAUTHSECRET-AT",
        "OAUTHSECRET-JWT",
        "OAUTHSECRET-PKCE",
        "OAUTHSECRET-ASSERTION",
    ]
    .into_iter()
    .filter(|s| all.contains(s))
    .collect();
    assert!(leaked.is_empty(), "logged: {leaked:?}");
}

#[tokio::test]
#[ignore = "LIMITATION (documented at ClientBuilder::log_bodies): an echoing API's response carries the request JSON as a string, and its password is logged"]
async fn body_logging_of_an_echoed_request_keeps_the_password_out() {
    logs();
    let api = FakeApi::start().await.expect("api");
    let client = Client::builder(api.url())
        .log_bodies(1 << 16)
        .build()
        .expect("client");
    client
        .post("/anything/echo")
        .json(&json!({"marker": "ECHO-MARKER", "password": "ECHOSECRET-PW"}))
        .send()
        .await
        .expect("sent");
    let all = logs().contents();
    assert!(all.contains("ECHO-MARKER"));
    assert!(
        !all.contains("ECHOSECRET-PW"),
        "the echoed password is logged"
    );
}

#[tokio::test]
#[ignore = "LIMITATION (documented at ClientBuilder::log_bodies): a token response labelled text/plain (a common mislabel) is logged whole, access_token included"]
async fn body_logging_of_json_labelled_text_keeps_the_token_out() {
    logs();
    let client = answering(
        Client::builder("http://api.test").log_bodies(1 << 16),
        ct("text/plain; charset=utf-8"),
        Bytes::from_static(
            br#"{"marker":"TEXTJSON-MARKER","access_token":"TEXTSECRET-AT","token_type":"bearer"}"#,
        ),
    );
    client.post("/oauth/token").send().await.expect("sent");
    let all = logs().contents();
    assert!(all.contains("TEXTJSON-MARKER"));
    assert!(!all.contains("TEXTSECRET-AT"), "the token is logged");
}

// ---------------------------------------------------------------------------
// Span fields, traceparent, Debug, errors, metrics: no credential
// ---------------------------------------------------------------------------

#[tokio::test]
async fn span_fields_traceparent_and_logs_carry_no_credential() {
    logs();
    let api = FakeApi::start().await.expect("api");
    let client = Client::builder(api.url())
        .api_key_query("api_key", "SPANSECRET-Q")
        .propagate_traceparent(true)
        .log_bodies(1 << 16)
        .build()
        .expect("client");
    let res = client
        .get("/posts/{id}")
        .path_param("id", 1)
        .query(&[("token", "SPANSECRET-T"), ("marker", "SPAN-MARKER")])
        .basic_auth("ann", "SPANSECRET-B")
        .send()
        .await
        .expect("sent");
    assert_eq!(res.status(), 200);
    let sent = api.last_request("/posts/1").expect("sent");
    let traceparent = sent.header("traceparent").expect("traceparent sent");
    let parsed = tollgate::TraceContext::parse(traceparent).expect("a valid traceparent");
    assert!(!traceparent.contains("SPANSECRET"));
    assert_eq!(parsed.trace_id().len(), 32);
    let all = logs().contents();
    assert!(all.contains("SPAN-MARKER"), "the call was logged");
    assert!(!all.contains("SPANSECRET"), "{all}");
    // The basic credential in base64 either.
    use base64::Engine as _;
    let basic = base64::engine::general_purpose::STANDARD.encode("ann:SPANSECRET-B");
    assert!(!all.contains(&basic));
}

#[tokio::test]
async fn the_span_url_hides_query_values_the_body_logger_calls_sensitive() {
    logs();
    let api = FakeApi::start().await.expect("api");
    let client = Client::new(api.url()).expect("client");
    client
        .get("/posts/1")
        .query(&[
            ("marker", "URLQ-MARKER"),
            ("refresh_token", "URLSECRET-RT"),
            ("id_token", "URLSECRET-ID"),
            ("client_assertion", "URLSECRET-CA"),
            ("session", "URLSECRET-S"),
        ])
        .send()
        .await
        .expect("sent");
    let all = logs().contents();
    assert!(all.contains("URLQ-MARKER"), "the URL was logged");
    assert!(!all.contains("URLSECRET"), "{all}");
}

#[test]
fn debug_of_a_request_builder_never_shows_url_userinfo() {
    let client = Client::builder_without_base().build().expect("client");
    let builder = client.get("https://ann:DBGSECRET-PW@api.test/x?token=DBGSECRET-Q");
    let shown = format!("{builder:?}");
    assert!(!shown.contains("DBGSECRET"), "{shown}");
}

#[tokio::test]
async fn an_unparsable_url_with_userinfo_is_refused_without_echoing_the_password() {
    let without_base = Client::builder_without_base().build().expect("client");
    let with_base = Client::new("http://api.test").expect("client");
    for client in [&without_base, &with_base] {
        for url in [
            "http://ann:ERRSECRET-PW@bad host/x",
            "https://ann:ERRSECRET-PW@[::1/x",
            "http://ann:ERRSECRET-PW@exa%mple.com/",
        ] {
            let err = client.get(url).send().await.expect_err("refused");
            assert_eq!(err.kind(), ErrorKind::InvalidUrl, "{url}");
            let shown = format!("{err} {err:?}");
            assert!(!shown.contains("ERRSECRET"), "{shown}");
        }
    }
}

#[tokio::test]
async fn debug_of_streaming_responses_forms_and_parts_shows_no_secret() {
    let client = answering(
        Client::builder("http://api.test"),
        vec![
            (CONTENT_TYPE, HeaderValue::from_static("application/json")),
            (
                http::header::SET_COOKIE,
                HeaderValue::from_static("sid=DBGSECRET-COOKIE"),
            ),
        ],
        Bytes::from_static(b"{\"token\":\"DBGSECRET-BODY\"}"),
    );
    let res = client
        .get("/x?token=DBGSECRET-QUERY")
        .basic_auth("ann", "DBGSECRET-BASIC")
        .send_streaming()
        .await
        .expect("head");
    let shown = format!("{res:?}");
    assert!(!shown.contains("DBGSECRET"), "{shown}");

    let part = Part::bytes("DBGSECRET-PART").file_name("a.txt");
    assert!(!format!("{part:?}").contains("DBGSECRET"));
    let form = Form::new()
        .text("password", "DBGSECRET-FORM")
        .part("file", Part::text("DBGSECRET-TEXT"));
    assert!(!format!("{form:?}").contains("DBGSECRET"), "{form:?}");
    let builder = client
        .post("/x")
        .multipart(Form::new().text("password", "DBGSECRET-MP"))
        .bearer_auth("DBGSECRET-BEARER");
    assert!(!format!("{builder:?}").contains("DBGSECRET"), "{builder:?}");
}

#[cfg(feature = "metrics")]
#[test]
fn metrics_count_a_successful_streaming_call() {
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
            let res = client.get("/posts/1").send_streaming().await.expect("head");
            assert_eq!(res.status(), 200);
            res.bytes().await.expect("body");
        });
    });
    let snapshot = snapshotter.snapshot().into_vec();
    let calls: u64 = snapshot
        .iter()
        .filter(|(k, _, _, _)| k.key().name() == "tollgate.client.calls")
        .map(|(_, _, _, v)| match v {
            DebugValue::Counter(n) => *n,
            _ => 0,
        })
        .sum();
    assert_eq!(calls, 1, "{snapshot:?}");
}

#[cfg(feature = "metrics")]
#[test]
fn metric_labels_carry_no_credential_and_no_path() {
    let recorder = metrics_util::debugging::DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let api = FakeApi::start().await.expect("api");
            let client = Client::builder(api.url())
                .api_key_query("api_key", "METSECRET-Q")
                .build()
                .expect("client");
            client
                .get("/posts/1?token=METSECRET-T")
                .basic_auth("ann", "METSECRET-B")
                .send()
                .await
                .expect("sent");
            let _ = client.get("/posts/METSECRET-PATH").send_streaming().await;
            let dead = Client::new("http://127.0.0.1:1").expect("client");
            let _ = dead.get("/x?token=METSECRET-DEAD").send().await;
            let _ = dead.get("/x?token=METSECRET-DEAD").send_streaming().await;
        });
    });
    let snapshot = snapshotter.snapshot().into_vec();
    assert!(!snapshot.is_empty());
    for (key, _, _, _) in &snapshot {
        for label in key.key().labels() {
            assert!(
                !label.value().contains("METSECRET") && !label.value().contains('/'),
                "{label:?}"
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Origins: an absolute URL to an origin not allowed is refused, the
// credential goes only where it was told
// ---------------------------------------------------------------------------

/// One shape of hostile URL, given the path to put in it.
type Shape = Box<dyn Fn(&str) -> String>;

/// Absolute URLs (and look-alikes) that try to reach `evil` from a client of
/// `good`, each with the path `/anything/{tag}{i}`.
fn hostile_urls(good: u16, evil: u16, tag: &str) -> Vec<String> {
    let p = |i: usize| format!("/anything/{tag}{i}");
    let shapes: Vec<Shape> = vec![
        Box::new(move |p| format!("http://127.0.0.1:{evil}{p}")),
        Box::new(move |p| format!("http://127.0.0.1:{good}@127.0.0.1:{evil}{p}")),
        Box::new(move |p| format!("http://ann:pw@127.0.0.1:{evil}{p}")),
        Box::new(move |p| format!("http://@127.0.0.1:{evil}{p}")),
        Box::new(move |p| format!("http://127.0.0.1:{evil}\\@127.0.0.1:{good}{p}")),
        Box::new(move |p| format!("http://127.0.0.1:{good}\\@127.0.0.1:{evil}{p}")),
        Box::new(move |p| format!("http://127.0.0.1:{good}#@127.0.0.1:{evil}{p}")),
        Box::new(move |p| format!("http://127.0.0.1:{good}?@127.0.0.1:{evil}{p}")),
        Box::new(move |p| format!("//127.0.0.1:{evil}{p}")),
        Box::new(move |p| format!("\\\\127.0.0.1:{evil}{p}")),
        Box::new(move |p| format!("/\\127.0.0.1:{evil}{p}")),
        Box::new(move |p| format!("\\/127.0.0.1:{evil}{p}")),
        Box::new(move |p| format!("http:127.0.0.1:{evil}{p}")),
        Box::new(move |p| format!("http:/127.0.0.1:{evil}{p}")),
        Box::new(move |p| format!("http:\\\\127.0.0.1:{evil}{p}")),
        Box::new(move |p| format!("HTTP://127.0.0.1:{evil}{p}")),
        Box::new(move |p| format!("http://127.0.0.1.:{evil}{p}")),
        Box::new(move |p| format!("http://2130706433:{evil}{p}")),
        Box::new(move |p| format!("http://0x7f.1:{evil}{p}")),
        Box::new(move |p| format!("http://0177.0.0.1:{evil}{p}")),
        Box::new(move |p| format!("http://[::ffff:127.0.0.1]:{evil}{p}")),
        Box::new(move |p| format!("http://%31%32%37.0.0.1:{evil}{p}")),
        Box::new(move |p| format!("http://localhost:{evil}{p}")),
        Box::new(move |p| format!("http://LOCALHOST.:{evil}{p}")),
        Box::new(move |p| {
            format!("http://\u{24db}\u{24de}\u{24d2}\u{24d0}\u{24db}\u{24d7}\u{24de}\u{24e2}\u{24e3}:{evil}{p}")
        }),
        Box::new(move |p| format!(" http://127.0.0.1:{evil}{p}")),
        Box::new(move |p| format!("\thttp://127.0.0.1:{evil}{p}")),
        Box::new(move |p| format!("ht\ttp://127.0.0.1:{evil}{p}")),
        Box::new(move |p| format!("http://127.0.0.1:{evil}\t{p}")),
        Box::new(move |p| format!("http://127.0.0.1:0{evil}{p}")),
        Box::new(move |p| format!("http://127.0.0.1:{good}:{evil}{p}")),
        Box::new(move |p| format!("https://127.0.0.1:{evil}{p}")),
        Box::new(move |p| format!("http://127.0.0.1:{good}/..%2f..%2f127.0.0.1:{evil}{p}")),
        Box::new(move |p| {
            format!("http://127.0.0.1:{good}/redirect-to?url=http://127.0.0.1:{evil}{p}")
        }),
    ];
    shapes.iter().enumerate().map(|(i, s)| s(&p(i))).collect()
}

/// Sends each hostile URL; returns the error kinds and whether `evil` got
/// anything or a credential.
async fn try_all(client: &Client, urls: &[String], with_basic: bool) -> Vec<(String, String)> {
    let mut outcomes = Vec::new();
    for url in urls {
        let mut req = client.get(url.as_str());
        if with_basic {
            req = req.basic_auth("ann", "ORIGINSECRET-B");
        }
        let outcome = match req.send().await {
            Ok(res) => format!("{} from {}", res.status(), res.url()),
            Err(e) => format!("{:?}", e.kind()),
        };
        outcomes.push((url.clone(), outcome));
    }
    outcomes
}

#[tokio::test]
async fn hostile_absolute_urls_never_reach_an_origin_not_allowed() {
    let (good, evil) = (
        FakeApi::start().await.expect("api"),
        FakeApi::start().await.expect("api"),
    );
    let (pg, pe) = (good.addr().port(), evil.addr().port());
    let urls = hostile_urls(pg, pe, "o");
    let with_base = Client::builder(good.url())
        .redirect(tollgate::RedirectPolicy::none())
        .build()
        .expect("client");
    let no_base_allowed = Client::builder_without_base()
        .allow_origin(good.url())
        .redirect(tollgate::RedirectPolicy::none())
        .build()
        .expect("client");
    for client in [&with_base, &no_base_allowed] {
        let outcomes = try_all(client, &urls, false).await;
        for (url, outcome) in &outcomes {
            let fine = outcome == "InvalidUrl"
                || outcome == "InvalidRequest"
                || outcome.contains(&format!("from http://127.0.0.1:{pg}/"));
            assert!(fine, "{url:?} -> {outcome}");
        }
        assert_eq!(evil.total_hits(), 0, "{outcomes:#?}");
    }
}

#[tokio::test]
async fn a_client_without_a_base_url_sends_its_credential_to_no_origin_it_was_not_told() {
    let (good, evil) = (
        FakeApi::start().await.expect("api"),
        FakeApi::start().await.expect("api"),
    );
    let (pg, pe) = (good.addr().port(), evil.addr().port());
    let layer = tollgate::auth::AuthLayer::bearer("ORIGINSECRET-T")
        .expect("token")
        .origin(tollgate::auth::Origin::parse(&good.url()).expect("origin"));
    let client = Client::builder_without_base()
        .auth(layer)
        .build()
        .expect("client");
    let urls = hostile_urls(pg, pe, "c");
    let outcomes = try_all(&client, &urls, false).await;
    for (i, outcome) in outcomes.iter().enumerate() {
        if let Some(seen) = evil.last_request(&format!("/anything/c{i}")) {
            assert_eq!(seen.header("authorization"), None, "{outcome:?}");
        }
    }
    // A redirect from the told origin to another.
    let res = client
        .get(format!(
            "{}/redirect-to?url={}/anything/hop&status=307",
            good.url(),
            evil.url()
        ))
        .send()
        .await
        .expect("followed");
    assert_eq!(res.status(), 200);
    let hop = evil.last_request("/anything/hop").expect("hop");
    assert_eq!(hop.header("authorization"), None);

    // A per-request credential on a client without an auth layer: sent
    // where the caller sent it, never on a hop to another origin.
    let plain = Client::builder_without_base().build().expect("client");
    let res = plain
        .get(format!(
            "{}/redirect-to?url={}/anything/hop2&status=308",
            good.url(),
            evil.url()
        ))
        .basic_auth("ann", "ORIGINSECRET-B")
        .bearer_auth("ORIGINSECRET-BB")
        .send()
        .await
        .expect("followed");
    assert_eq!(res.status(), 200);
    let hop = evil.last_request("/anything/hop2").expect("hop");
    assert_eq!(hop.header("authorization"), None);
    // Per-request basic auth on the auth client, to an origin not told.
    let _ = try_all(
        &client,
        &[format!("{}/anything/told-not", evil.url())],
        true,
    )
    .await;
    let seen = evil.last_request("/anything/told-not").expect("sent");
    assert_eq!(seen.header("authorization"), None);
}

#[test]
fn every_credential_shortcut_without_a_base_url_is_a_builder_error() {
    let shortcuts: Vec<(&str, ClientBuilder)> = vec![
        (
            "bearer",
            Client::builder_without_base().bearer_auth("SHORTSECRET"),
        ),
        (
            "basic",
            Client::builder_without_base().basic_auth("ann", "SHORTSECRET"),
        ),
        (
            "header",
            Client::builder_without_base().api_key_header("x-api-key", "SHORTSECRET"),
        ),
        (
            "query",
            Client::builder_without_base().api_key_query("api_key", "SHORTSECRET"),
        ),
        (
            "allowed but no base",
            Client::builder_without_base()
                .allow_origin("https://files.example.com")
                .bearer_auth("SHORTSECRET"),
        ),
    ];
    for (what, builder) in shortcuts {
        let err = builder.build().expect_err(what);
        assert_eq!(err.kind(), ErrorKind::Builder, "{what}");
        assert!(!format!("{err} {err:?}").contains("SHORTSECRET"), "{what}");
    }
}

// ---------------------------------------------------------------------------
// Streamed request bodies: one outcome, sent at most once, dropped when done
// ---------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_slow_upload_that_keeps_sending_is_not_cut_by_the_read_timeout() {
    let api = FakeApi::start().await.expect("api");
    let client = Client::builder(api.url())
        .no_timeout()
        .read_timeout(Duration::from_secs(1))
        .build()
        .expect("client");
    // A chunk every 400 ms for 2.4 s: never idle for 1 s.
    let upload = Slow {
        left: 6,
        every: Duration::from_millis(400),
        sleep: None,
    };
    let res = client
        .post("/anything/slow-upload")
        .body_stream(upload)
        .send()
        .await
        .expect("an upload never idle for the read timeout is not cut");
    assert_eq!(res.status(), 200);
    let seen = api.last_request("/anything/slow-upload").expect("sent");
    assert_eq!(seen.body.len(), 6 * 6);

    // The wait for the head starts when the upload has been sent in full:
    // 2.4 s of upload, then a head 800 ms later, within the read timeout.
    api.inject(
        "/anything/slow-then-late",
        Fault::latency(Duration::from_millis(800)),
    );
    let started = tokio::time::Instant::now();
    let res = client
        .post("/anything/slow-then-late")
        .body_stream(Slow {
            left: 6,
            every: Duration::from_millis(400),
            sleep: None,
        })
        .send()
        .await
        .expect("the head came 800 ms after the upload's end");
    assert_eq!(res.status(), 200);
    assert!(started.elapsed() >= Duration::from_millis(3200));
}

#[tokio::test(start_paused = true)]
async fn a_stalled_upload_ends_in_one_read_timeout_and_frees_the_slot() {
    let api = FakeApi::start().await.expect("api");
    let client = one_slot(
        Client::builder(api.url())
            .no_timeout()
            .read_timeout(Duration::from_secs(1)),
    );
    // Three chunks 400 ms apart, then nothing: idle from 1.2 s on.
    let (stream, probe) = tracked(&[], true);
    let stream = Chain {
        first: Some(Slow {
            left: 3,
            every: Duration::from_millis(400),
            sleep: None,
        }),
        then: stream,
    };
    let started = tokio::time::Instant::now();
    let err = client
        .post("/anything/stalled-upload")
        .body_stream(stream)
        .send()
        .await
        .expect_err("the upload stalled");
    let took = started.elapsed();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err:?}");
    assert!(
        took >= Duration::from_millis(2200) && took < Duration::from_millis(2300),
        "one read timeout after the last chunk, not from the hand-over: {took:?}"
    );
    assert!(dropped_soon(&probe).await, "the stream is dropped");
    assert!(slot_is_free(&client).await, "the slot is freed");
    assert_eq!(api.hits("/anything/stalled-upload"), 0);
}

#[tokio::test(start_paused = true)]
async fn a_head_that_stalls_after_a_finished_upload_times_out_a_read_timeout_after_its_end() {
    let api = FakeApi::start().await.expect("api");
    api.inject(
        "/anything/stalled-head",
        Fault::latency(Duration::from_secs(3600)),
    );
    let client = one_slot(
        Client::builder(api.url())
            .no_timeout()
            .read_timeout(Duration::from_secs(1)),
    );
    let started = tokio::time::Instant::now();
    let err = client
        .post("/anything/stalled-head")
        .body_stream(Slow {
            left: 3,
            every: Duration::from_millis(400),
            sleep: None,
        })
        .send()
        .await
        .expect_err("no head");
    let took = started.elapsed();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err:?}");
    assert!(
        took >= Duration::from_millis(2200) && took < Duration::from_millis(2300),
        "the wait for the head started at the upload's end (1.2 s): {took:?}"
    );
    assert_eq!(
        api.hits("/anything/stalled-head"),
        1,
        "the upload was whole"
    );
    assert!(slot_is_free(&client).await, "the slot is freed");

    // A body in memory: the wait starts at the hand-over.
    let started = tokio::time::Instant::now();
    let err = client
        .post("/anything/stalled-head")
        .body("in memory")
        .send()
        .await
        .expect_err("no head");
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err:?}");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_millis(1100),
        "{took:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_streamed_upload_that_panics_ends_the_call_with_one_error_and_frees_the_slot() {
    let api = FakeApi::start().await.expect("api");
    let client = one_slot(Client::builder(api.url()));
    let err = client
        .post("/anything/panics")
        .body_stream(Panicky { sent: false })
        .send()
        .await
        .expect_err("the upload panicked");
    // Not the deadline: the panic itself ended the call.
    assert_ne!(err.kind(), ErrorKind::Timeout, "{err:?}");
    assert_eq!(api.hits("/anything/panics"), 0);
    assert!(slot_is_free(&client).await);
    // And the client still works.
    let res = client
        .post("/anything/after")
        .body_stream(chunks(&["ok"]))
        .send()
        .await
        .expect("sent");
    assert_eq!(res.status(), 200);
}

#[tokio::test(start_paused = true)]
async fn a_streamed_upload_that_never_ends_times_out_once_and_is_dropped() {
    let api = FakeApi::start().await.expect("api");
    let client = one_slot(Client::builder(api.url()).timeout(Duration::from_secs(2)));
    let (stream, probe) = tracked(&["start,"], true);
    let err = client
        .post("/anything/endless-upload")
        .body_stream(stream)
        .send()
        .await
        .expect_err("never ends");
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err:?}");
    assert!(dropped_soon(&probe).await, "the stream is dropped");
    assert!(slot_is_free(&client).await);
    assert_eq!(api.hits("/anything/endless-upload"), 0);
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_upload_drops_its_stream_and_its_slot() {
    let api = FakeApi::start().await.expect("api");
    let client = one_slot(Client::builder(api.url()));
    let (stream, probe) = tracked(&["start,"], true);
    let call = client.put("/anything/cancelled").body_stream(stream).send();
    assert!(tokio::time::timeout(Duration::from_secs(1), call)
        .await
        .is_err());
    assert!(dropped_soon(&probe).await, "the stream is dropped");
    assert!(slot_is_free(&client).await);
}

#[tokio::test(start_paused = true)]
async fn a_streamed_body_is_sent_at_most_once_whatever_answers_it() {
    let api = FakeApi::start().await.expect("api");
    let client = Client::builder(api.url())
        .retry(tollgate::retry::RetryLayer::new())
        .build()
        .expect("client");
    // 429 and 503: retry would resend; it cannot.
    for (path, status) in [
        ("/anything/s429", StatusCode::TOO_MANY_REQUESTS),
        ("/anything/s503", StatusCode::SERVICE_UNAVAILABLE),
    ] {
        api.inject(path, Fault::status(status));
        let res = client
            .put(path)
            .body_stream(chunks(&["once"]))
            .send()
            .await
            .expect("answered");
        assert_eq!(res.status(), status);
        assert_eq!(api.hits(path), 1, "{path}");
    }
    // A connection cut before any answer: not resent either.
    api.inject("/anything/cut", Fault::drop_connection());
    let _ = client
        .put("/anything/cut")
        .body_stream(chunks(&["once"]))
        .send()
        .await;
    assert!(api.hits("/anything/cut") <= 1);
    // 307 and 308 (to the same origin): the 3xx comes back.
    for status in [307, 308] {
        let res = client
            .post(format!(
                "/redirect-to?url=/anything/moved{status}&status={status}"
            ))
            .body_stream(chunks(&["once"]))
            .send()
            .await
            .expect("answered");
        assert_eq!(res.status().as_u16(), status);
        assert_eq!(api.hits(&format!("/anything/moved{status}")), 0);
    }
    // The rate limiter refuses after the stream was handed over: nothing
    // sent, the stream dropped unread.
    let limited = Client::builder(api.url())
        .rate_limit(
            tollgate::limit::RateLimitLayer::new(
                tollgate::limit::Quota::window(1, Duration::from_secs(60)).expect("quota"),
            )
            .reject(),
        )
        .build()
        .expect("client");
    limited.get("/posts/1").send().await.expect("first");
    let (stream, probe) = tracked(&["never"], false);
    let err = limited
        .post("/anything/limited")
        .body_stream(stream)
        .send()
        .await
        .expect_err("refused");
    assert_eq!(err.kind(), ErrorKind::RateLimited, "{err:?}");
    assert_eq!(api.hits("/anything/limited"), 0);
    assert_eq!(probe.polls.load(Ordering::SeqCst), 0, "never read");
    assert!(dropped_soon(&probe).await);
}

#[tokio::test]
async fn try_clone_refuses_every_builder_that_holds_a_stream() {
    let client = Client::new("http://api.test").expect("client");
    assert!(client
        .post("/x")
        .body_stream(chunks(&["a"]))
        .try_clone()
        .is_none());
    let path = temp_file("clone.bin", b"file content");
    let with_file = Form::new().part("f", Part::file(&path).await.expect("file"));
    assert!(client.post("/x").multipart(with_file).try_clone().is_none());
    assert!(client
        .post("/x")
        .multipart(Form::new().text("a", "b"))
        .try_clone()
        .is_some());
    // The last body set wins: a stream replaced by bytes clones again, and
    // bytes replaced by a stream do not.
    assert!(client
        .post("/x")
        .body_stream(chunks(&["a"]))
        .body("x")
        .try_clone()
        .is_some());
    assert!(client
        .post("/x")
        .body("x")
        .body_stream(chunks(&["a"]))
        .try_clone()
        .is_none());
    let with_file = Form::new().part("f", Part::file(&path).await.expect("file"));
    assert!(client
        .post("/x")
        .multipart(with_file)
        .json(&json!({}))
        .try_clone()
        .is_some());
    let _ = std::fs::remove_file(path);
}

// ---------------------------------------------------------------------------
// Files and lengths that lie
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_file_that_shrinks_while_streaming_is_a_body_error() {
    let api = FakeApi::start().await.expect("api");
    let client = Client::new(api.url()).expect("client");
    let path = temp_file("shrinks.bin", &vec![b'x'; 200 * 1024]);
    let part = Part::file(&path).await.expect("file");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open")
        .set_len(1000)
        .expect("truncate");
    let result = client
        .post("/multipart")
        .multipart(Form::new().part("f", part))
        .send()
        .await;
    let _ = std::fs::remove_file(&path);
    if let Ok(res) = &result {
        panic!(
            "the file shrank, yet the call succeeded: {} {}",
            res.status(),
            res.text_lossy()
        );
    }
    let err = result.expect_err("the file shrank: the body is shorter than its Content-Length");
    assert_eq!(
        err.kind(),
        ErrorKind::Body,
        "as the multipart docs say: {err:?}"
    );
    assert!(
        format!("{err:#}").contains("short"),
        "the error says why: {err:#}"
    );

    // A file that shrinks to nothing, with a part after it, sent to a route
    // that counts only requests it read whole.
    let path = temp_file("empties.bin", &vec![b'y'; 5000]);
    let part = Part::file(&path).await.expect("file");
    std::fs::write(&path, b"").expect("empty it");
    let result = client
        .post("/anything/empties")
        .multipart(Form::new().part("f", part).text("after", "x"))
        .send()
        .await;
    let _ = std::fs::remove_file(&path);
    assert_eq!(result.expect_err("shrank").kind(), ErrorKind::Body);
    assert_eq!(
        api.hits("/anything/empties"),
        0,
        "the server read no complete request"
    );
}

#[tokio::test]
async fn a_file_that_grows_or_vanishes_sends_the_length_it_had_when_opened() {
    let api = FakeApi::start().await.expect("api");
    let client = Client::new(api.url()).expect("client");
    let original: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
    let grows = temp_file("grows.bin", &original);
    let vanishes = temp_file("vanishes.bin", &original);
    let grows_part = Part::file(&grows).await.expect("file");
    let vanishes_part = Part::file(&vanishes).await.expect("file");
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&grows)
            .expect("open");
        f.write_all(&vec![b'!'; 100_000]).expect("grow");
    }
    std::fs::remove_file(&vanishes).expect("remove");
    let res = client
        .post("/multipart")
        .multipart(Form::new().part("g", grows_part).part("v", vanishes_part))
        .send()
        .await
        .expect("sent");
    let _ = std::fs::remove_file(&grows);
    assert_eq!(res.status(), 200, "{}", res.text_lossy());
    let parts: Value = res.json().expect("json");
    let parts = parts["parts"].as_array().expect("parts").clone();
    assert_eq!(parts.len(), 2, "{parts:?}");
    for part in parts {
        assert_eq!(part["size"], 5000);
        assert_eq!(part["sha256"], sha256(&original));
    }
}

#[tokio::test]
async fn special_files_are_refused_or_sent_as_they_read() {
    for path in [std::env::temp_dir(), PathBuf::from("/dev/null")] {
        let err = Part::file(&path).await.expect_err("not a regular file");
        assert_eq!(err.kind(), ErrorKind::InvalidRequest);
    }
    let err = Part::file("/nonexistent/attack8")
        .await
        .expect_err("missing");
    assert_eq!(err.kind(), ErrorKind::InvalidRequest);
    // procfs: a regular file whose size says 0 but whose reads do not. Its
    // length is what the part would be sent with (it was sent empty, a
    // silent truncation): refused, pointing at `Part::bytes`.
    if std::path::Path::new("/proc/self/status").exists() {
        let err = Part::file("/proc/self/status")
            .await
            .expect_err("no length to send it with");
        assert_eq!(err.kind(), ErrorKind::InvalidRequest);
        assert!(err.to_string().contains("Part::bytes"), "{err}");
    }
    // A regular file that is really empty is still a part (of 0 bytes).
    let empty = std::env::temp_dir().join(format!("attack8-empty-{}", std::process::id()));
    std::fs::write(&empty, b"").expect("write");
    let part = Part::file(&empty).await;
    let _ = std::fs::remove_file(&empty);
    part.expect("an empty regular file");
}

#[tokio::test]
async fn a_content_length_that_lies_about_a_streamed_body_never_truncates_it() {
    let api = FakeApi::start().await.expect("api");
    let client = Client::new(api.url()).expect("client");
    let result = client
        .post("/anything/lie")
        .header("content-length", "4")
        .body_stream(chunks(&["0123", "456789"]))
        .send()
        .await;
    match result {
        Err(e) => assert!(
            matches!(e.kind(), ErrorKind::InvalidRequest | ErrorKind::Body),
            "{e:?}"
        ),
        Ok(_) => {
            let seen = api.last_request("/anything/lie").expect("sent");
            assert_eq!(
                seen.body, "0123456789",
                "the upload was cut to its lying length"
            );
        }
    }
    // As chosen and documented on `body_stream`: a `Body` error, the
    // request never completed.
    let err = client
        .post("/anything/lie2")
        .header("content-length", "4")
        .body_stream(chunks(&["0123", "456789"]))
        .send()
        .await
        .expect_err("longer than declared");
    assert_eq!(err.kind(), ErrorKind::Body, "{err:?}");
    assert_eq!(api.hits("/anything/lie2"), 0, "nothing complete was sent");
    // Over in the middle of a chunk, and with the header set before the
    // body or after it.
    let err = client
        .post("/anything/lie3")
        .body_stream(chunks(&["01", "23456"]))
        .header("content-length", "5")
        .send()
        .await
        .expect_err("longer than declared");
    assert_eq!(err.kind(), ErrorKind::Body, "{err:?}");
    assert_eq!(api.hits("/anything/lie3"), 0);
    // Zero declared, something streamed.
    let result = client
        .post("/anything/lie0")
        .header("content-length", "0")
        .body_stream(chunks(&["abc"]))
        .send()
        .await;
    assert_eq!(
        result.expect_err("longer than zero").kind(),
        ErrorKind::Body
    );
    assert_eq!(api.hits("/anything/lie0"), 0);
}

#[tokio::test]
async fn a_content_length_that_matches_the_streamed_body_sends_it_whole() {
    let api = FakeApi::start().await.expect("api");
    let client = Client::new(api.url()).expect("client");
    let res = client
        .post("/anything/exact")
        .header("content-length", "10")
        .body_stream(chunks(&["0123", "", "456", "789"]))
        .send()
        .await
        .expect("exactly as declared");
    assert_eq!(res.status(), 200);
    let seen = api.last_request("/anything/exact").expect("sent");
    assert_eq!(seen.body, "0123456789");
    assert_eq!(seen.headers["content-length"], "10");
    assert!(seen.headers.get("transfer-encoding").is_none());

    // Zero, declared and sent.
    let res = client
        .post("/anything/zero")
        .header("content-length", "0")
        .body_stream(chunks(&["", ""]))
        .send()
        .await
        .expect("empty as declared");
    assert_eq!(res.status(), 200);
    assert_eq!(api.hits("/anything/zero"), 1);
    let seen = api.last_request("/anything/zero").expect("sent");
    assert!(seen.body.is_empty());
}

#[tokio::test]
async fn a_content_length_that_is_not_one_number_is_an_invalid_request() {
    let api = FakeApi::start().await.expect("api");
    let client = Client::new(api.url()).expect("client");
    for value in [
        "",
        "-1",
        "+4",
        "4 ",
        "0x10",
        "99999999999999999999999",
        "4,4",
    ] {
        let err = client
            .post("/anything/bad-length")
            .header("content-length", value)
            .body_stream(chunks(&["0123"]))
            .send()
            .await
            .expect_err(value);
        assert_eq!(err.kind(), ErrorKind::InvalidRequest, "{value:?}: {err:?}");
    }
    let err = client
        .post("/anything/bad-length")
        .headers({
            let mut two = http::HeaderMap::new();
            two.append("content-length", HeaderValue::from_static("4"));
            two.append("content-length", HeaderValue::from_static("5"));
            two
        })
        .body_stream(chunks(&["0123"]))
        .send()
        .await
        .expect_err("two lengths");
    assert_eq!(err.kind(), ErrorKind::InvalidRequest, "{err:?}");
    assert_eq!(api.hits("/anything/bad-length"), 0);
}

#[tokio::test(start_paused = true)]
async fn a_content_length_longer_than_the_streamed_body_ends_the_call_with_one_error() {
    let api = FakeApi::start().await.expect("api");
    let client = one_slot(Client::builder(api.url()));
    let err = client
        .post("/anything/short")
        .header("content-length", "100")
        .body_stream(chunks(&["only ten.."]))
        .send()
        .await
        .expect_err("the body is shorter than announced");
    assert_ne!(
        err.kind(),
        ErrorKind::Timeout,
        "ended by the lie, not the deadline: {err:?}"
    );
    assert_eq!(err.kind(), ErrorKind::Body, "{err:?}");
    assert_eq!(api.hits("/anything/short"), 0);
    assert!(slot_is_free(&client).await);
}

#[tokio::test]
async fn a_response_content_length_that_lies_is_one_body_error() {
    let addr = raw_server(
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nContent-Type: text/plain\r\n\r\nshort",
    )
    .await;
    let client = Client::new(format!("http://{addr}")).expect("client");
    let mut res = client.get("/x").send_streaming().await.expect("head");
    assert_eq!(res.content_length(), Some(100));
    let mut data = Vec::new();
    let err = loop {
        match res.chunk().await {
            Ok(Some(chunk)) => data.extend_from_slice(&chunk),
            Ok(None) => panic!("a body 95 bytes short ended without an error"),
            Err(e) => break e,
        }
    };
    assert_eq!(err.kind(), ErrorKind::Body, "{err:?}");
    assert_eq!(data, b"short");
    assert!(
        matches!(res.chunk().await, Ok(None)),
        "one error, then the end"
    );

    let err = client.get("/x").send().await.expect_err("short body");
    assert_eq!(err.kind(), ErrorKind::Body, "{err:?}");
    let err = client
        .get("/x")
        .send_streaming()
        .await
        .expect("head")
        .text()
        .await
        .expect_err("short body");
    assert_eq!(err.kind(), ErrorKind::Body, "{err:?}");
}

// ---------------------------------------------------------------------------
// Hostile charsets and names: typed errors, never panics
// ---------------------------------------------------------------------------

#[tokio::test]
async fn hostile_charsets_and_boms_are_decode_errors_never_panics() {
    let long_label = format!("text/plain; charset={}", "x".repeat(5000));
    let cases: Vec<(Option<Vec<u8>>, Vec<u8>)> = vec![
        (
            Some(b"text/plain; charset=utf-16".to_vec()),
            b"\xff".to_vec(),
        ),
        (
            Some(b"text/plain; charset=utf-16be".to_vec()),
            b"\xd8\x00".to_vec(),
        ),
        (
            Some(b"text/plain; charset=utf-16le".to_vec()),
            b"\x00\xdc\x00".to_vec(),
        ),
        (
            Some(b"text/plain; charset=replacement".to_vec()),
            b"abc".to_vec(),
        ),
        (
            Some(b"text/plain; charset=iso-2022-kr".to_vec()),
            b"abc".to_vec(),
        ),
        (
            Some(b"text/plain; charset=iso-2022-kr".to_vec()),
            Vec::new(),
        ),
        (
            Some(b"text/plain; charset=iso-2022-jp".to_vec()),
            b"\x1b$B\x1b(B\x1b".to_vec(),
        ),
        (
            Some(b"text/plain; charset=gb18030".to_vec()),
            b"\x84\x31\xa4\x39\x84".to_vec(),
        ),
        (
            Some(b"text/plain; charset=shift_jis".to_vec()),
            b"\x81".to_vec(),
        ),
        (
            Some(b"text/plain; charset=euc-kr".to_vec()),
            b"\xfe\xfe\xfe".to_vec(),
        ),
        (
            Some(b"text/plain; charset=big5".to_vec()),
            b"\x87\x40\xfe".to_vec(),
        ),
        (
            Some(b"text/plain; charset=x-user-defined".to_vec()),
            (0..=255u8).collect(),
        ),
        (
            Some(b"text/plain; charset=utf-7".to_vec()),
            b"+AGEAYgBj-".to_vec(),
        ),
        (
            Some(b"text/plain; charset=\"utf-8\"".to_vec()),
            b"\xc3".to_vec(),
        ),
        (Some(b"text/plain; charset=".to_vec()), b"abc".to_vec()),
        (Some(b"text/plain; charset=\"\"".to_vec()), b"abc".to_vec()),
        (
            Some(b"text/plain; charset=utf-8; charset=latin1".to_vec()),
            b"\xe9".to_vec(),
        ),
        (Some(long_label.into_bytes()), b"abc".to_vec()),
        (
            Some(b"text/plain; charset=\xff\xfe".to_vec()),
            b"abc".to_vec(),
        ),
        (Some(b";;;===\"\\".to_vec()), b"\xff".to_vec()),
        // A byte-order mark that disagrees with the charset named.
        (
            Some(b"text/plain; charset=utf-8".to_vec()),
            b"\xff\xfeA".to_vec(),
        ),
        (
            Some(b"text/plain; charset=utf-16le".to_vec()),
            b"\xef\xbb\xbf\xff".to_vec(),
        ),
        (
            Some(b"text/plain; charset=latin1".to_vec()),
            b"\xfe\xff\xd8\x00".to_vec(),
        ),
        (
            Some(b"text/plain; charset=utf-8".to_vec()),
            b"\xef\xbb\xbf".to_vec(),
        ),
        (
            Some(b"text/plain; charset=utf-16be".to_vec()),
            b"\xfe\xff".to_vec(),
        ),
        (
            Some(b"text/plain; charset=utf-8".to_vec()),
            b"\xef\xbb".to_vec(),
        ),
        (None, b"\xfe\xff\xd8\x00\xd8".to_vec()),
        (None, b"\xff\xfe\x00".to_vec()),
    ];
    for (content_type, body) in cases {
        let headers = content_type
            .iter()
            .map(|v| (CONTENT_TYPE, HeaderValue::from_bytes(v).expect("header")))
            .collect();
        let client = answering(
            Client::builder("http://api.test"),
            headers,
            Bytes::from(body.clone()),
        );
        let what = format!(
            "{:?} {:?}",
            content_type.as_deref().map(String::from_utf8_lossy),
            &body[..body.len().min(8)]
        );
        let res = client.get("/t").send().await.expect("answered");
        let text = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| res.text()))
            .unwrap_or_else(|_| panic!("text() panicked for {what}"));
        if let Err(e) = &text {
            assert_eq!(e.kind(), ErrorKind::Decode, "{what}: {e:?}");
        }
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| res.text_lossy()))
            .unwrap_or_else(|_| panic!("text_lossy() panicked for {what}"));
        let streamed = client
            .get("/t")
            .send_streaming()
            .await
            .expect("head")
            .text()
            .await;
        match (&text, &streamed) {
            (Ok(a), Ok(b)) => assert_eq!(a, b, "{what}"),
            (Err(_), Err(e)) => assert_eq!(e.kind(), ErrorKind::Decode, "{what}"),
            _ => panic!("send and send_streaming disagree for {what}: {text:?} {streamed:?}"),
        }
    }
}

#[tokio::test]
async fn huge_and_hostile_multipart_names_are_sent_never_a_panic_and_never_a_new_part() {
    let api = FakeApi::start().await.expect("api");
    let client = Client::new(api.url()).expect("client");
    let boundary_guess = "--tollgate-00000000000000000000000000000000";
    let form = Form::new()
        .text("a\"\r\n\r\nContent-Disposition: form-data; name=\"smuggled\"\r\n\r\nx", "v")
        .text(
            boundary_guess,
            format!("\r\n{boundary_guess}\r\nContent-Disposition: form-data; name=\"smuggled\"\r\n\r\nx"),
        )
        .part(
            "file",
            Part::bytes("data").file_name("..\\..\r\n/etc/passwd\"; name=\"smuggled"),
        )
        .text("plain", "value");
    let res = client
        .post("/multipart")
        .multipart(form)
        .send()
        .await
        .expect("sent");
    assert_eq!(res.status(), 200, "{}", res.text_lossy());
    let parts: Value = res.json().expect("json");
    let parts = parts["parts"].as_array().expect("parts");
    assert_eq!(parts.len(), 4, "{parts:?}");
    assert!(parts.iter().all(|p| p["name"] != "smuggled"), "{parts:?}");
    assert_eq!(parts[2]["name"], "file", "{parts:?}");
    assert_eq!(parts[3]["name"], "plain", "{parts:?}");

    // Huge and control-character names: sent; the server answers what it
    // will, the client neither panics nor hangs.
    let form = Form::new()
        .text("n".repeat(256 * 1024), "huge name")
        .text("\u{0}\u{7f}\u{202e}\u{540d}", "controls")
        .part(
            "f",
            Part::bytes(vec![0u8; 10]).file_name("\u{0}".repeat(1000)),
        );
    let res = client
        .post("/multipart")
        .multipart(form)
        .send()
        .await
        .expect("sent");
    assert!(
        res.status() == 200 || res.status() == 400,
        "{}",
        res.status()
    );
    for mime in [
        "text/plain\r\nX-Evil: 1",
        "text/plain; charset=\"\\",
        "",
        "/",
        "a/b; c",
        "\u{0}/\u{0}",
    ] {
        if let Err(e) = Part::text("x").mime_str(mime) {
            assert_eq!(e.kind(), ErrorKind::InvalidRequest, "{mime:?}");
        }
    }
}

// ---------------------------------------------------------------------------
// Limits and the deadline over streamed responses
// ---------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn max_response_body_bounds_bytes_text_and_json_of_a_streamed_response() {
    let api = FakeApi::start().await.expect("api");
    let client = one_slot(Client::builder(api.url()).max_response_body(1000));
    let at = |n: u64| format!("/huge?size={n}&chunk=300");
    let ok = client.get(at(1000)).send_streaming().await.expect("head");
    assert_eq!(ok.bytes().await.expect("at the limit").len(), 1000);
    let res = client.get(at(1001)).send_streaming().await.expect("head");
    assert_eq!(
        res.bytes().await.expect_err("over").kind(),
        ErrorKind::BodyTooLarge
    );
    let res = client.get(at(1001)).send_streaming().await.expect("head");
    assert_eq!(
        res.text().await.expect_err("over").kind(),
        ErrorKind::BodyTooLarge
    );
    let res = client.get(at(5000)).send_streaming().await.expect("head");
    assert_eq!(
        res.json::<Value>().await.expect_err("over").kind(),
        ErrorKind::BodyTooLarge
    );
    let res = client.get("/endless").send_streaming().await.expect("head");
    assert_eq!(
        res.into_buffered().await.expect_err("over").kind(),
        ErrorKind::BodyTooLarge
    );
    assert!(slot_is_free(&client).await, "every refusal freed the slot");
}

#[tokio::test(start_paused = true)]
async fn a_streamed_body_read_after_the_deadline_is_one_timeout_then_the_end() {
    let api = FakeApi::start().await.expect("api");
    let client = one_slot(Client::builder(api.url()).timeout(Duration::from_secs(5)));
    let mut res = client.get("/endless").send_streaming().await.expect("head");
    assert!(res.chunk().await.expect("data").is_some());
    tokio::time::advance(Duration::from_secs(6)).await;
    let err = res.chunk().await.expect_err("past the deadline");
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err:?}");
    assert!(matches!(res.chunk().await, Ok(None)), "then the end");
    assert!(
        slot_is_free(&client).await,
        "freed at the timeout, still held"
    );
    drop(res);

    // The whole-body readers too, with data always ready.
    let res = client
        .get("/huge?size=100000")
        .send_streaming()
        .await
        .expect("head");
    tokio::time::advance(Duration::from_secs(6)).await;
    assert_eq!(
        res.bytes().await.expect_err("late").kind(),
        ErrorKind::Timeout
    );
    assert!(slot_is_free(&client).await);
}

#[tokio::test(start_paused = true)]
async fn the_rate_limiter_bounds_streaming_calls() {
    let api = FakeApi::start().await.expect("api");
    let client = Client::builder(api.url())
        .rate_limit(
            tollgate::limit::RateLimitLayer::new(
                tollgate::limit::Quota::window(2, Duration::from_secs(60)).expect("quota"),
            )
            .reject(),
        )
        .build()
        .expect("client");
    let first = client
        .get("/endless")
        .send_streaming()
        .await
        .expect("first");
    let second = client
        .post("/anything/up")
        .body_stream(chunks(&["x"]))
        .send_streaming()
        .await
        .expect("second");
    let err = client
        .get("/endless")
        .send_streaming()
        .await
        .expect_err("third refused");
    assert_eq!(err.kind(), ErrorKind::RateLimited, "{err:?}");
    assert_eq!(api.hits("/endless"), 1);
    drop((first, second));
}
