//! FakeApi over a raw TCP socket: the bytes a real client sees.

use std::time::Duration;

use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tollgate_testkit::{FakeApi, Fault};

/// Sends one HTTP/1.1 request with `Connection: close` and returns the whole
/// response as text ("" if the server closed without answering).
async fn raw(api: &FakeApi, request_line: &str, extra: &str, body: &str) -> String {
    let mut s = TcpStream::connect(api.addr()).await.expect("connect");
    let req = format!(
        "{request_line} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n{extra}\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn serves_posts_and_404s_unknown_ids() {
    let api = FakeApi::start().await.expect("start");
    let ok = raw(&api, "GET /posts/1", "", "").await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    assert!(ok.contains("sunt aut facere"));
    let missing = raw(&api, "GET /posts/9999", "", "").await;
    assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
    assert_eq!(api.hits("/posts/*"), 2);
    assert_eq!(api.hits("/posts/1"), 1);
}

#[tokio::test]
async fn post_creates_with_id_101_and_rejects_bad_json() {
    let api = FakeApi::start().await.expect("start");
    let created = raw(
        &api,
        "POST /posts",
        "Content-Type: application/json\r\n",
        r#"{"title":"t"}"#,
    )
    .await;
    assert!(created.starts_with("HTTP/1.1 201"), "{created}");
    assert!(created.contains(r#""id":101"#) && created.contains(r#""title":"t""#));
    let bad = raw(&api, "POST /posts", "", "{nope").await;
    assert!(bad.starts_with("HTTP/1.1 400"), "{bad}");
    let last = api.last_request("/posts").expect("recorded");
    assert_eq!(&last.body[..], b"{nope");
}

#[tokio::test]
async fn status_fault_applies_n_times_with_retry_after() {
    let api = FakeApi::start().await.expect("start");
    api.inject(
        "/posts/1",
        Fault::status(StatusCode::SERVICE_UNAVAILABLE)
            .times(2)
            .retry_after("7"),
    );
    for _ in 0..2 {
        let r = raw(&api, "GET /posts/1", "", "").await;
        assert!(r.starts_with("HTTP/1.1 503"), "{r}");
        assert!(r.to_ascii_lowercase().contains("retry-after: 7"));
    }
    let r = raw(&api, "GET /posts/1", "", "").await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert_eq!(api.hits("/posts/1"), 3);
}

#[tokio::test]
async fn dropped_connection_sends_nothing() {
    let api = FakeApi::start().await.expect("start");
    api.inject("*", Fault::drop_connection().times(1));
    assert_eq!(raw(&api, "GET /users/1", "", "").await, "");
    assert!(raw(&api, "GET /users/1", "", "")
        .await
        .starts_with("HTTP/1.1 200"));
}

#[tokio::test(start_paused = true)]
async fn latency_delays_the_answer_by_paused_time() {
    let api = FakeApi::start().await.expect("start");
    api.inject("/users", Fault::latency(Duration::from_secs(30)));
    let start = tokio::time::Instant::now();
    let r = raw(&api, "GET /users", "", "").await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert!(start.elapsed() >= Duration::from_secs(30));
}

#[tokio::test]
async fn bearer_required_and_cache_control_sent() {
    let api = FakeApi::start().await.expect("start");
    api.require_bearer("tok");
    api.cache_control("/users/*", "max-age=60");
    let denied = raw(&api, "GET /users/2", "", "").await;
    assert!(denied.starts_with("HTTP/1.1 401"), "{denied}");
    assert!(denied
        .to_ascii_lowercase()
        .contains("www-authenticate: bearer"));
    let ok = raw(&api, "GET /users/2", "Authorization: Bearer tok\r\n", "").await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    assert!(ok
        .to_ascii_lowercase()
        .contains("cache-control: max-age=60"));
    let seen = api.last_request("/users/2").expect("recorded");
    assert_eq!(seen.headers["authorization"], "Bearer tok");
}

#[tokio::test]
async fn metadata_answers_each_known_id_once() {
    let api = FakeApi::start().await.expect("start");
    let r = raw(&api, "GET /metadata?id=3&id=3&id=5000&id=4", "", "").await;
    let body = &r[r.find("\r\n\r\n").expect("head") + 4..];
    let v: serde_json::Value = serde_json::from_str(body).expect("json");
    let ids: Vec<u64> = v["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|i| i["id"].as_u64())
        .collect();
    assert_eq!(ids, vec![3, 4]);
}

#[tokio::test]
async fn malformed_json_fault_and_echo() {
    let api = FakeApi::start().await.expect("start");
    api.inject("/posts/2", Fault::malformed_json().times(1));
    let r = raw(&api, "GET /posts/2", "", "").await;
    let body = &r[r.find("\r\n\r\n").expect("head") + 4..];
    assert!(serde_json::from_str::<serde_json::Value>(body).is_err());
    let echo = raw(&api, "PATCH /anything/x?a=1&a=2", "X-Test: yes\r\n", "hi").await;
    assert!(echo.contains(r#""method":"PATCH""#) && echo.contains(r#"["a","2"]"#));
    assert!(echo.contains(r#""x-test":["yes"]"#) && echo.contains(r#""body":"hi""#));
}

/// The length a response announces, and the body bytes that came after its
/// head.
fn announced_and_sent(response: &str) -> (usize, usize) {
    let (head, body) = response.split_once("\r\n\r\n").expect("a head");
    let len = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .and_then(|v| v.trim().parse().ok())
        .expect("content-length");
    (len, body.len())
}

#[tokio::test]
async fn cut_body_sends_the_head_and_half_the_body_then_closes() {
    let api = FakeApi::start().await.expect("start");
    api.inject("/posts/1", Fault::cut_body().times(1));
    let cut = raw(&api, "GET /posts/1", "", "").await;
    assert!(cut.starts_with("HTTP/1.1 200"), "{cut}");
    let (announced, sent) = announced_and_sent(&cut);
    assert!(announced > 0 && sent == announced / 2, "{announced} {sent}");
    // Used up: the next answer is whole.
    let whole = raw(&api, "GET /posts/1", "", "").await;
    let (announced, sent) = announced_and_sent(&whole);
    assert_eq!(announced, sent);
    assert_eq!(api.hits("/posts/1"), 2);
}

#[tokio::test(start_paused = true)]
async fn stall_body_sends_half_the_body_then_nothing() {
    let api = FakeApi::start().await.expect("start");
    api.inject("/posts/1", Fault::stall_body());
    let read =
        tokio::time::timeout(Duration::from_secs(3600), raw(&api, "GET /posts/1", "", "")).await;
    assert!(read.is_err(), "the body never ends: {read:?}");
}

#[tokio::test(start_paused = true)]
async fn trickle_body_sends_the_whole_body_slowly() {
    let api = FakeApi::start().await.expect("start");
    api.inject("/posts/1", Fault::trickle_body(Duration::from_millis(100)));
    let started = tokio::time::Instant::now();
    let slow = raw(&api, "GET /posts/1", "", "").await;
    let (announced, sent) = announced_and_sent(&slow);
    assert_eq!(announced, sent);
    // 8 bytes per 100 ms.
    let pieces = u32::try_from(announced.div_ceil(8)).expect("small");
    assert!(started.elapsed() >= Duration::from_millis(100) * pieces);
}

#[tokio::test]
async fn an_upload_cut_short_is_not_answered_as_too_large() {
    let api = FakeApi::start().await.expect("start");
    let mut s = TcpStream::connect(api.addr()).await.expect("connect");
    let head = "POST /posts HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"title\":";
    s.write_all(head.as_bytes()).await.expect("write");
    // 9 of the 100 bytes announced, then the client stops sending.
    s.shutdown().await.expect("half-close");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    let text = String::from_utf8_lossy(&out);
    assert!(
        !text.contains("413"),
        "a failed upload is not a body too large: {text}"
    );
    assert_eq!(api.hits("/posts"), 0, "nothing was recorded");
}
