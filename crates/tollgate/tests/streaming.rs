//! Streaming both ways, and forms: `send_streaming` (a body read as it
//! arrives, under the deadline, the read timeout and the pool), request
//! bodies from a stream (sent once), `form` and `multipart`. Real HTTP over
//! loopback to `FakeApi`; paused time where time matters.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_core::Stream;
use serde_json::Value;
use tokio::time::Instant;
use tollgate::multipart::{Form, Part};
use tollgate::{Client, ErrorKind};
use tollgate_testkit::{FakeApi, Fault};

/// A stream of these items, then its end; `Pending` forever after them when
/// `hang`.
struct Items<T> {
    items: VecDeque<T>,
    hang: bool,
}

impl<T: Unpin> Stream for Items<T> {
    type Item = T;

    fn poll_next(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<T>> {
        match self.items.pop_front() {
            Some(item) => Poll::Ready(Some(item)),
            None if self.hang => Poll::Pending,
            None => Poll::Ready(None),
        }
    }
}

fn items<T>(items: impl IntoIterator<Item = T>) -> Items<T> {
    Items {
        items: items.into_iter().collect(),
        hang: false,
    }
}

fn ok_chunks(chunks: &[&'static str]) -> Items<Result<Bytes, Infallible>> {
    items(chunks.iter().map(|c| Ok(Bytes::from_static(c.as_bytes()))))
}

fn client(api: &FakeApi) -> Client {
    Client::new(api.url()).expect("builds")
}

/// A client whose pool has one slot and whose queue gives up after 1 s.
fn one_slot(api: &FakeApi) -> Client {
    Client::builder(api.url())
        .concurrency_limit(
            tollgate::limit::ConcurrencyLimitLayer::new(1).queue_timeout(Duration::from_secs(1)),
        )
        .build()
        .expect("builds")
}

/// Whether a call gets the pool's one slot (within its queue timeout).
async fn slot_is_free(client: &Client) -> bool {
    match client.get("/posts/1").send().await {
        Ok(res) => res.status() == 200,
        Err(e) if e.kind() == ErrorKind::PendingTimeout => false,
        Err(e) => panic!("unexpected: {e:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn chunks_arrive_as_the_server_sends_them() {
    let api = FakeApi::start().await.expect("start");
    let whole = client(&api).get("/posts/1").send().await.expect("whole");
    // 8 bytes every 100 ms.
    api.inject(
        "/posts/1",
        Fault::trickle_body(Duration::from_millis(100)).times(1),
    );
    let mut res = client(&api)
        .get("/posts/1")
        .send_streaming()
        .await
        .expect("head");
    assert_eq!(res.status(), 200);
    assert_eq!(res.content_length(), Some(whole.bytes().len() as u64));
    let mut sizes = Vec::new();
    let mut body = Vec::new();
    while let Some(chunk) = res.chunk().await.expect("chunk") {
        sizes.push(chunk.len());
        body.extend_from_slice(&chunk);
    }
    assert_eq!(body, whole.bytes().as_ref());
    let (last, all_but_last) = sizes.split_last().expect("chunks");
    assert!(all_but_last.iter().all(|n| *n == 8), "{sizes:?}");
    assert!(*last <= 8);
    // Ended: `None` again, not an error.
    assert!(res.chunk().await.expect("ended").is_none());
}

#[tokio::test]
async fn a_huge_body_streams_whole_past_the_body_limit_and_bytes_applies_it() {
    let api = FakeApi::start().await.expect("start");
    let client = Client::builder(api.url())
        .max_response_body(64 * 1024)
        .build()
        .expect("builds");
    let size = 3 * 1024 * 1024 + 5;
    let mut res = client
        .get("/huge")
        .query(&[("size", size)])
        .send_streaming()
        .await
        .expect("head");
    assert_eq!(res.content_length(), Some(size as u64));
    let mut read = 0usize;
    while let Some(chunk) = res.chunk().await.expect("chunk") {
        read += chunk.len();
    }
    assert_eq!(read, size, "no limit on the stream itself");

    let err = client
        .get("/huge")
        .query(&[("size", size)])
        .send_streaming()
        .await
        .expect("head")
        .bytes()
        .await
        .expect_err("past the limit");
    assert_eq!(err.kind(), ErrorKind::BodyTooLarge, "{err:?}");
    assert_eq!(err.status(), Some(http::StatusCode::OK));

    // Within the limit, read whole in one step.
    let small = client
        .get("/huge?size=1000")
        .send_streaming()
        .await
        .expect("head")
        .bytes()
        .await
        .expect("within the limit");
    assert_eq!(small.len(), 1000);
    assert!(small.starts_with(b"0123456789abcdef0123"));
}

#[tokio::test]
async fn json_and_text_read_and_decode_in_one_step() {
    let api = FakeApi::start().await.expect("start");
    let post: Value = client(&api)
        .get("/posts/1")
        .send_streaming()
        .await
        .expect("head")
        .json()
        .await
        .expect("json");
    assert_eq!(post["id"], 1);
    let text = client(&api)
        .get("/posts/1")
        .send_streaming()
        .await
        .expect("head")
        .text()
        .await
        .expect("text");
    assert!(text.contains("\"userId\""), "{text}");
    let err = client(&api)
        .get("/huge?size=10")
        .send_streaming()
        .await
        .expect("head")
        .json::<Value>()
        .await
        .expect_err("not JSON");
    assert_eq!(err.kind(), ErrorKind::Decode);
}

#[tokio::test]
async fn the_body_is_a_stream_of_chunks() {
    let api = FakeApi::start().await.expect("start");
    let res = client(&api)
        .get("/huge?size=100000&chunk=1000")
        .send_streaming()
        .await
        .expect("head");
    let mut stream = std::pin::pin!(res.bytes_stream());
    let mut read = 0;
    while let Some(chunk) = std::future::poll_fn(|cx| stream.as_mut().poll_next(cx)).await {
        read += chunk.expect("chunk").len();
    }
    assert_eq!(read, 100_000);
}

#[tokio::test(start_paused = true)]
async fn the_deadline_ends_an_endless_body_with_a_timeout() {
    let api = FakeApi::start().await.expect("start");
    let client = Client::builder(api.url())
        .timeout(Duration::from_secs(2))
        .build()
        .expect("builds");
    let started = Instant::now();
    let mut res = client.get("/endless").send_streaming().await.expect("head");
    for _ in 0..3 {
        assert!(res.chunk().await.expect("data").is_some());
    }
    // The body never ends; its data is always there: the deadline, not a
    // wait, must end it.
    tokio::time::advance(Duration::from_secs(2)).await;
    let err = res.chunk().await.expect_err("past the deadline");
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err:?}");
    assert!(err.is_timeout());
    assert!(started.elapsed() >= Duration::from_secs(2));
    // And then it is over.
    assert!(res.chunk().await.expect("ended").is_none());
}

#[tokio::test(start_paused = true)]
async fn the_deadline_wakes_a_reader_waiting_on_a_stalled_body() {
    let api = FakeApi::start().await.expect("start");
    api.inject("/posts/1", Fault::stall_body());
    let client = Client::builder(api.url())
        .timeout(Duration::from_secs(2))
        .read_timeout(Duration::from_secs(60))
        .build()
        .expect("builds");
    let started = Instant::now();
    let mut res = client.get("/posts/1").send_streaming().await.expect("head");
    let err = loop {
        match res.chunk().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the body stalls"),
            Err(e) => break e,
        }
    };
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err:?}");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(2) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn the_read_timeout_ends_a_stalled_body_between_chunks() {
    let api = FakeApi::start().await.expect("start");
    api.inject("/posts/1", Fault::stall_body());
    let client = Client::builder(api.url())
        .no_timeout()
        .read_timeout(Duration::from_secs(1))
        .build()
        .expect("builds");
    let mut res = client.get("/posts/1").send_streaming().await.expect("head");
    // The first half arrives, then nothing.
    let first = res.chunk().await.expect("first half").expect("data");
    assert!(!first.is_empty());
    let started = Instant::now();
    let err = res.chunk().await.expect_err("stalled");
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err:?}");
    assert!(err.to_string().contains("read timeout"), "{err}");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(1) && waited < Duration::from_secs(2),
        "{waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn the_pool_slot_is_held_until_the_stream_is_dropped() {
    let api = FakeApi::start().await.expect("start");
    let client = one_slot(&api);
    let mut res = client.get("/endless").send_streaming().await.expect("head");
    assert!(res.chunk().await.expect("data").is_some());
    assert!(!slot_is_free(&client).await, "the stream holds the slot");
    drop(res);
    assert!(slot_is_free(&client).await, "dropping it frees the slot");
}

#[tokio::test(start_paused = true)]
async fn the_pool_slot_is_freed_when_the_body_ends() {
    let api = FakeApi::start().await.expect("start");
    let client = one_slot(&api);
    let mut res = client
        .get("/huge?size=10000")
        .send_streaming()
        .await
        .expect("head");
    while res.chunk().await.expect("chunk").is_some() {}
    // Still held by the caller, but read to its end.
    assert!(slot_is_free(&client).await);
    drop(res);
}

#[tokio::test(start_paused = true)]
async fn cancelling_at_every_await_never_leaves_the_slot_taken() {
    let api = FakeApi::start().await.expect("start");
    let client = one_slot(&api);

    // Before the head: the server waits 10 s before answering.
    api.inject("/posts/2", Fault::latency(Duration::from_secs(10)).times(1));
    let call = client.get("/posts/2").send_streaming();
    assert!(tokio::time::timeout(Duration::from_secs(1), call)
        .await
        .is_err());
    assert!(slot_is_free(&client).await, "cancelled before the head");

    // After the head, before any read.
    let res = client.get("/endless").send_streaming().await.expect("head");
    drop(res);
    assert!(slot_is_free(&client).await, "dropped unread");

    // In the middle of a read that waits.
    api.inject("/posts/3", Fault::stall_body());
    let mut res = client.get("/posts/3").send_streaming().await.expect("head");
    let _ = res.chunk().await.expect("first half");
    assert!(tokio::time::timeout(Duration::from_secs(1), res.chunk())
        .await
        .is_err());
    drop(res);
    assert!(slot_is_free(&client).await, "cancelled mid-body");

    // A whole-body read cancelled midway.
    let res = client.get("/endless").send_streaming().await.expect("head");
    assert!(tokio::time::timeout(Duration::from_millis(1), res.bytes())
        .await
        .map_or(true, |r| r.is_err()));
    assert!(slot_is_free(&client).await, "bytes() cancelled");

    // An upload that never ends, cancelled.
    let hanging = Items {
        items: VecDeque::from([Ok::<_, Infallible>(Bytes::from_static(b"start"))]),
        hang: true,
    };
    let call = client.put("/posts/1").body_stream(hanging).send();
    assert!(tokio::time::timeout(Duration::from_secs(1), call)
        .await
        .is_err());
    assert!(slot_is_free(&client).await, "upload cancelled");
}

#[tokio::test]
async fn gzip_is_decoded_when_streamed() {
    let api = FakeApi::start().await.expect("start");
    let mut res = client(&api)
        .get("/encoded/gzip")
        .send_streaming()
        .await
        .expect("head");
    assert_eq!(res.headers().get("content-encoding"), None);
    let mut body = Vec::new();
    while let Some(chunk) = res.chunk().await.expect("chunk") {
        body.extend_from_slice(&chunk);
    }
    let value: Value = serde_json::from_slice(&body).expect("decoded JSON");
    assert_eq!(value["codec"], "gzip");
}

#[tokio::test]
async fn a_streaming_call_bypasses_the_cache() {
    let api = FakeApi::start().await.expect("start");
    api.cache_control("/posts/1", "max-age=60");
    let client = Client::builder(api.url())
        .cache(tollgate::cache::CacheLayer::new(Duration::from_secs(60)))
        .build()
        .expect("builds");
    client.get("/posts/1").send().await.expect("stored");
    let res = client.get("/posts/1").send_streaming().await.expect("head");
    assert!(!res.summary().from_cache);
    res.bytes().await.expect("body");
    assert_eq!(api.hits("/posts/1"), 2, "not answered from the cache");
    // Nor stored: a buffered call after it is still a hit on the first.
    let again = client.get("/posts/1").send().await.expect("hit");
    assert!(again.summary().from_cache);
}

#[tokio::test(start_paused = true)]
async fn retry_retries_a_streaming_call_on_its_status_before_the_body() {
    let api = FakeApi::start().await.expect("start");
    api.inject(
        "/posts/1",
        Fault::status(http::StatusCode::SERVICE_UNAVAILABLE).times(1),
    );
    let client = Client::builder(api.url())
        .retry(tollgate::retry::RetryLayer::new())
        .build()
        .expect("builds");
    let res = client.get("/posts/1").send_streaming().await.expect("head");
    assert_eq!(res.status(), 200);
    assert_eq!(res.summary().attempts, 2);
    let post: Value = res.json().await.expect("json");
    assert_eq!(post["id"], 1);
}

#[tokio::test]
async fn with_retry_on_a_streamed_body_is_not_buffered_in_the_attempt() {
    let api = FakeApi::start().await.expect("start");
    let client = Client::builder(api.url())
        .retry(tollgate::retry::RetryLayer::new())
        .max_response_body(64 * 1024)
        .build()
        .expect("builds");
    // Past the limit the retry stage's buffer would refuse.
    let mut res = client
        .get("/huge?size=1048576")
        .send_streaming()
        .await
        .expect("head");
    let mut read = 0;
    while let Some(chunk) = res.chunk().await.expect("chunk") {
        read += chunk.len();
    }
    assert_eq!(read, 1 << 20);
}

#[tokio::test(start_paused = true)]
async fn a_streamed_put_answered_503_is_not_retried() {
    let api = FakeApi::start().await.expect("start");
    let client = Client::builder(api.url())
        .retry(tollgate::retry::RetryLayer::new())
        .build()
        .expect("builds");
    api.inject(
        "/posts/1",
        Fault::status(http::StatusCode::SERVICE_UNAVAILABLE),
    );
    // In memory, a PUT is retried.
    let res = client
        .put("/posts/1")
        .json(&serde_json::json!({"title": "x"}))
        .send()
        .await
        .expect("answered");
    assert_eq!(res.status(), 503);
    let buffered_hits = api.hits("/posts/1");
    assert!(buffered_hits > 1, "{buffered_hits}");

    api.reset_counts();
    let res = client
        .put("/posts/1")
        .header("content-type", "application/json")
        .body_stream(ok_chunks(&["{\"title\":", "\"x\"}"]))
        .send()
        .await
        .expect("answered");
    assert_eq!(res.status(), 503, "the 503 comes back");
    assert_eq!(res.summary().attempts, 1);
    assert_eq!(api.hits("/posts/1"), 1, "sent once");
}

#[tokio::test]
async fn a_streamed_body_is_sent_whole() {
    let api = FakeApi::start().await.expect("start");
    let res = client(&api)
        .post("/anything/upload")
        .body_stream(ok_chunks(&["one,", "two,", "three"]))
        .send()
        .await
        .expect("sent");
    assert_eq!(res.status(), 200);
    let sent = api.last_request("/anything/upload").expect("recorded");
    assert_eq!(sent.body, "one,two,three");
}

#[tokio::test]
async fn a_streamed_body_and_a_307_return_the_307() {
    let api = FakeApi::start().await.expect("start");
    let res = client(&api)
        .post("/redirect-to?url=/anything/moved&status=307")
        .body_stream(ok_chunks(&["data"]))
        .send()
        .await
        .expect("answered");
    assert_eq!(res.status(), 307, "not followed without its body");
    assert_eq!(res.redirects(), 0);
    assert_eq!(api.hits("/anything/moved"), 0);

    // A 303 needs no body: followed as a GET.
    let res = client(&api)
        .post("/redirect-to?url=/anything/seen&status=303")
        .body_stream(ok_chunks(&["data"]))
        .send()
        .await
        .expect("followed");
    assert_eq!(res.status(), 200);
    assert_eq!(res.redirects(), 1);
    let hop = api.last_request("/anything/seen").expect("followed");
    assert_eq!(hop.method, http::Method::GET);
    assert!(hop.body.is_empty());

    // The same in memory is followed with its body.
    let res = client(&api)
        .post("/redirect-to?url=/anything/moved&status=307")
        .body("data")
        .send()
        .await
        .expect("followed");
    assert_eq!(res.status(), 200);
    assert_eq!(api.hits("/anything/moved"), 1);
}

#[tokio::test]
async fn a_streamed_body_that_fails_midway_is_a_body_error_and_nothing_is_answered() {
    let api = FakeApi::start().await.expect("start");
    let failing = items([
        Ok(Bytes::from_static(b"first part,")),
        Err(io::Error::other("disk read failed")),
        Ok(Bytes::from_static(b"never sent")),
    ]);
    let err = client(&api)
        .post("/anything/upload")
        .body_stream(failing)
        .send()
        .await
        .expect_err("the body failed");
    assert_eq!(err.kind(), ErrorKind::Body, "{err:?}");
    assert!(err.to_string().contains("disk read failed"), "{err}");
    assert_eq!(
        api.hits("/anything/upload"),
        0,
        "the server never got a whole request"
    );
}

#[tokio::test]
async fn form_sends_urlencoded() {
    let api = FakeApi::start().await.expect("start");
    client(&api)
        .post("/anything/form")
        .form(&[("name", "Ada Lovelace"), ("tags", "a&b=c")])
        .send()
        .await
        .expect("sent");
    let sent = api.last_request("/anything/form").expect("recorded");
    assert_eq!(
        sent.header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    assert_eq!(sent.body, "name=Ada+Lovelace&tags=a%26b%3Dc");
}

fn sha256(data: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test]
async fn multipart_round_trips_text_bytes_and_a_file_streamed_from_disk() {
    let api = FakeApi::start().await.expect("start");
    let dir = std::env::temp_dir().join(format!("tollgate-multipart-{}", fastrand_id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("report.bin");
    // 300 KiB: several reads of the file.
    let content: Vec<u8> = (0..300 * 1024).map(|i| (i % 251) as u8).collect();
    std::fs::write(&path, &content).expect("written");

    let form = Form::new()
        .text("title", "Quarterly")
        .part(
            "thumb",
            Part::bytes(vec![1u8, 2, 3])
                .file_name("t.png")
                .mime_str("image/png")
                .expect("a media type"),
        )
        .part("report", Part::file(&path).await.expect("opened"));
    let res = client(&api)
        .post("/multipart")
        .multipart(form)
        .send()
        .await
        .expect("sent");
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(res.status(), 200, "{}", res.text_lossy());
    let parts = res.data().expect("json")["parts"].clone();
    assert_eq!(parts[0]["name"], "title");
    assert_eq!(parts[0]["file_name"], Value::Null);
    assert_eq!(parts[0]["size"], 9);
    assert_eq!(parts[1]["name"], "thumb");
    assert_eq!(parts[1]["file_name"], "t.png");
    assert_eq!(parts[1]["content_type"], "image/png");
    assert_eq!(parts[1]["sha256"], sha256(&[1, 2, 3]));
    assert_eq!(parts[2]["name"], "report");
    assert_eq!(parts[2]["file_name"], "report.bin");
    assert_eq!(parts[2]["content_type"], "application/octet-stream");
    assert_eq!(parts[2]["size"], content.len());
    assert_eq!(parts[2]["sha256"], sha256(&content));
    let sent = api.last_request("/multipart").expect("recorded");
    let content_type = sent.header("content-type").expect("set");
    assert!(
        content_type.starts_with("multipart/form-data; boundary=tollgate-"),
        "{content_type}"
    );
}

#[tokio::test]
async fn multipart_escapes_hostile_names_and_uses_a_new_boundary_per_form() {
    let api = FakeApi::start().await.expect("start");
    // A quote to end the name, CR LF to end the header line and start a
    // header (or the part's content) of its own.
    let hostile = "x\"\r\nContent-Type: text/html\r\n\r\nsmuggled";
    let form = Form::new()
        .text(hostile, "value")
        .part("f", Part::bytes("data").file_name("a\"b\r\nc.txt"));
    let res = client(&api)
        .post("/multipart")
        .multipart(form)
        .send()
        .await
        .expect("sent");
    assert_eq!(res.status(), 200, "{}", res.text_lossy());
    let parts = res.data().expect("json")["parts"].clone();
    assert_eq!(parts.as_array().map(Vec::len), Some(2), "{parts}");
    assert_eq!(
        parts[0]["name"],
        "x%22%0D%0AContent-Type: text/html%0D%0A%0D%0Asmuggled"
    );
    assert_eq!(parts[0]["content_type"], Value::Null, "no injected header");
    assert_eq!(parts[0]["size"], 5, "the value, nothing smuggled");
    assert_eq!(parts[1]["file_name"], "a%22b%0D%0Ac.txt");
    assert_eq!(parts[1]["size"], 4);

    assert_ne!(Form::new().boundary(), Form::new().boundary());
    let err = Part::bytes("x")
        .mime_str("not a type")
        .expect_err("refused");
    assert_eq!(err.kind(), ErrorKind::InvalidRequest);
    let err = Part::file("/no/such/file/here").await.expect_err("refused");
    assert_eq!(err.kind(), ErrorKind::InvalidRequest);
}

#[tokio::test(start_paused = true)]
async fn a_multipart_form_in_memory_is_replayable_and_one_with_a_file_is_sent_once() {
    let api = FakeApi::start().await.expect("start");
    let client = Client::builder(api.url())
        .retry(tollgate::retry::RetryLayer::new())
        .build()
        .expect("builds");
    api.inject(
        "/anything/form",
        Fault::status(http::StatusCode::SERVICE_UNAVAILABLE).times(1),
    );
    let res = client
        .put("/anything/form")
        .multipart(Form::new().text("a", "b"))
        .send()
        .await
        .expect("answered");
    assert_eq!(res.status(), 200, "retried with the same form");
    assert_eq!(api.hits("/anything/form"), 2);

    let dir = std::env::temp_dir().join(format!("tollgate-multipart-{}", fastrand_id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("a.txt");
    std::fs::write(&path, b"file content").expect("written");
    api.reset_counts();
    api.inject(
        "/anything/form",
        Fault::status(http::StatusCode::SERVICE_UNAVAILABLE).times(1),
    );
    let res = client
        .put("/anything/form")
        .multipart(Form::new().part("f", Part::file(&path).await.expect("opened")))
        .send()
        .await
        .expect("answered");
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(res.status(), 503, "a file is streamed: sent once");
    assert_eq!(api.hits("/anything/form"), 1);
}

/// A unique enough name for a temporary directory.
fn fastrand_id() -> String {
    format!(
        "{}-{:?}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos()
    )
}

#[tokio::test]
async fn a_users_layer_sees_whether_the_body_is_replayable() {
    use std::sync::{Arc, Mutex};

    let api = FakeApi::start().await.expect("start");
    let seen: Arc<Mutex<Vec<bool>>> = Arc::default();
    let record = Arc::clone(&seen);
    let client = Client::builder(api.url())
        .layer(tower::util::MapRequestLayer::new(
            move |req: http::Request<tollgate::RequestBody>| {
                record
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(req.body().is_replayable());
                req
            },
        ))
        .build()
        .expect("builds");
    client
        .post("/anything/a")
        .body("in memory")
        .send()
        .await
        .expect("sent");
    client
        .post("/anything/b")
        .body_stream(ok_chunks(&["streamed"]))
        .send()
        .await
        .expect("sent");
    assert_eq!(
        *seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
        vec![true, false]
    );
    assert_eq!(
        api.last_request("/anything/b").expect("recorded").body,
        "streamed"
    );
}

#[tokio::test]
async fn a_streamed_body_is_not_replayed_after_a_401() {
    let api = FakeApi::start().await.expect("start");
    api.issue_tokens("client-1", "hunter2", 3600);
    let client = Client::builder(api.url())
        .oauth2_client_credentials(format!("{}/oauth/token", api.url()), "client-1", "hunter2")
        .build()
        .expect("builds");
    assert_eq!(
        client.get("/posts/1").send().await.expect("sent").status(),
        200
    );
    api.revoke_tokens();
    api.reset_counts();
    let res = client
        .post("/posts")
        .header("content-type", "application/json")
        .body_stream(ok_chunks(&["{\"title\":\"x\"}"]))
        .send()
        .await
        .expect("answered");
    assert_eq!(res.status(), 401, "the 401 comes back: the body is gone");
    assert_eq!(api.hits("/posts"), 1, "sent once");
}
