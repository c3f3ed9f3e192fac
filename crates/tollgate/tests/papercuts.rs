//! reqwest's everyday calls a user switching over reaches for: `text` in
//! the body's charset, per-request `basic_auth`, `version`, `try_clone`,
//! `extension`, `remote_addr`, `content_length`, and `Error::is_*`.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, Version};
use http_body_util::Full;
use tollgate::{Client, ErrorKind, RequestBody};
use tollgate_testkit::FakeApi;

/// A client whose transport answers every request with `body` under
/// `content_type`, and keeps the last request's version and extensions.
fn answering(content_type: &'static str, body: &'static [u8]) -> (Client, Arc<Mutex<Seen>>) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let keep = seen.clone();
    let transport = tower::service_fn(move |req: Request<RequestBody>| {
        let keep = keep.clone();
        async move {
            let mut seen = keep.lock().expect("lock");
            seen.version = Some(req.version());
            seen.marker = req.extensions().get::<Marker>().cloned();
            let res = Response::builder()
                .header("content-type", content_type)
                .body(Full::new(Bytes::from_static(body)))
                .expect("response");
            Ok::<_, Infallible>(res)
        }
    });
    let client = Client::builder("http://api.test")
        .transport(transport)
        .build()
        .expect("client");
    (client, seen)
}

#[derive(Default)]
struct Seen {
    version: Option<Version>,
    marker: Option<Marker>,
}

#[derive(Clone, Debug, PartialEq)]
struct Marker(&'static str);

#[cfg(feature = "charset")]
#[tokio::test]
async fn text_decodes_the_charset_the_content_type_names() {
    let (client, _) = answering("text/plain; charset=ISO-8859-1", b"caf\xe9");
    let res = client.get("/x").send().await.expect("sent");
    assert_eq!(res.text().expect("latin-1"), "café");
    let (client, _) = answering("text/plain; charset=\"shift_jis\"", b"\x82\xa0");
    let res = client.get("/x").send().await.expect("sent");
    assert_eq!(res.text().expect("shift_jis"), "あ");
}

#[cfg(feature = "charset")]
#[tokio::test]
async fn text_honours_and_removes_a_byte_order_mark() {
    let (client, _) = answering("text/plain", b"\xff\xfeh\x00i\x00");
    let res = client.get("/x").send().await.expect("sent");
    assert_eq!(res.text().expect("utf-16le"), "hi");
}

#[tokio::test]
async fn text_without_a_charset_is_utf8_and_bad_bytes_are_a_decode_error() {
    let (client, _) = answering("application/json", "{\"a\":\"é\"}".as_bytes());
    let res = client.get("/x").send().await.expect("sent");
    assert_eq!(res.text().expect("utf-8"), "{\"a\":\"é\"}");

    let (client, _) = answering("text/plain; charset=utf-8", b"ok \xff\xfe bad");
    let res = client.get("/x").send().await.expect("sent");
    let err = res.text().expect_err("not utf-8");
    assert_eq!(err.kind(), ErrorKind::Decode);
    assert!(err.is_decode());
    assert_eq!(err.status(), Some(http::StatusCode::OK));
    // The forgiving reading is still there.
    assert_eq!(res.text_lossy(), "ok \u{fffd}\u{fffd} bad");
}

#[tokio::test]
async fn an_unknown_charset_is_a_decode_error_and_lossy_reads_it_as_utf8() {
    let (client, _) = answering("text/plain; charset=x-no-such-thing", b"plain");
    let res = client.get("/x").send().await.expect("sent");
    let err = res.text().expect_err("unknown charset");
    assert_eq!(err.kind(), ErrorKind::Decode);
    assert!(err.to_string().contains("x-no-such-thing"), "{err}");
    assert_eq!(res.text_lossy(), "plain");
}

#[tokio::test]
async fn version_is_sent_as_asked() {
    let (client, seen) = answering("text/plain", b"");
    client
        .get("/x")
        .version(Version::HTTP_10)
        .send()
        .await
        .expect("sent");
    assert_eq!(seen.lock().expect("lock").version, Some(Version::HTTP_10));
}

#[tokio::test]
async fn an_extension_reaches_the_layers_below() {
    let (client, seen) = answering("text/plain", b"");
    client
        .get("/x")
        .extension(Marker("mine"))
        .send()
        .await
        .expect("sent");
    assert_eq!(seen.lock().expect("lock").marker, Some(Marker("mine")));
}

#[tokio::test]
async fn try_clone_gives_a_request_that_sends_the_same_again() {
    let api = FakeApi::start().await.expect("api");
    let client = Client::new(api.url()).expect("client");
    let first = client
        .post("/anything/again")
        .header("x-one", "1")
        .json(&serde_json::json!({"n": 1}));
    let second = first.try_clone().expect("clonable");
    first.send().await.expect("first");
    second.send().await.expect("second");
    assert_eq!(api.hits("/anything/again"), 2);
    let last = api.last_request("/anything/again").expect("seen");
    assert_eq!(last.header("x-one"), Some("1"));
    assert_eq!(&last.body[..], b"{\"n\":1}");
}

#[tokio::test]
async fn try_clone_of_a_request_that_holds_an_error_is_none() {
    let client = Client::new("http://127.0.0.1:1").expect("client");
    let bad = client.get("/x").header("x-bad", "a\r\nb");
    assert!(bad.try_clone().is_none());
}

#[cfg(feature = "auth")]
#[tokio::test]
async fn basic_auth_on_one_request_is_sent_and_kept_out_of_errors() {
    let api = FakeApi::start().await.expect("api");
    let client = Client::new(api.url()).expect("client");
    client
        .get("/anything/basic")
        .basic_auth("aladdin", "opensesame")
        .send()
        .await
        .expect("sent");
    let last = api.last_request("/anything/basic").expect("seen");
    assert_eq!(
        last.header("authorization"),
        Some("Basic YWxhZGRpbjpvcGVuc2VzYW1l")
    );
    let err = client
        .get("/x")
        .basic_auth("a:b", "hunter2")
        .send()
        .await
        .expect_err("a user with a colon");
    assert_eq!(err.kind(), ErrorKind::InvalidRequest);
    assert!(!format!("{err} {err:?}").contains("hunter2"));
}

#[tokio::test]
async fn remote_addr_and_content_length_come_from_the_connection_and_the_headers() {
    let api = FakeApi::start().await.expect("api");
    let client = Client::new(api.url()).expect("client");
    let res = client.get("/posts/1").send().await.expect("sent");
    assert_eq!(res.remote_addr(), Some(api.addr()));
    let len = u64::try_from(res.bytes().len()).expect("fits");
    assert_eq!(res.content_length(), Some(len));
    // A custom transport sets no connection info.
    let (client, _) = answering("text/plain", b"abc");
    let res = client.get("/x").send().await.expect("sent");
    assert_eq!(res.remote_addr(), None);
}

#[tokio::test]
async fn a_streamed_response_has_the_buffered_ones_head_accessors() {
    // reqwest's one `Response` has `remote_addr` and `error_for_status_ref`
    // whether its body is read whole or as a stream; so do both of ours.
    let api = FakeApi::start().await.expect("api");
    let client = Client::new(api.url()).expect("client");
    let res = client.get("/posts/1").send_streaming().await.expect("sent");
    assert_eq!(res.remote_addr(), Some(api.addr()));
    assert!(res.error_for_status_ref().is_ok());
    let buffered = res.into_buffered().await.expect("read");
    assert_eq!(buffered.remote_addr(), Some(api.addr()));
    assert_eq!(buffered.status(), 200);
    assert_eq!(buffered.url().path(), "/posts/1");

    let res = client
        .get("/posts/999999")
        .send_streaming()
        .await
        .expect("sent");
    let err = res.error_for_status_ref().expect_err("404");
    assert_eq!(err.kind(), ErrorKind::Status);
    assert_eq!(err.status(), Some(http::StatusCode::NOT_FOUND));
    assert_eq!(
        res.status(),
        404,
        "by reference: the response is still there"
    );
    assert!(res.error_for_status().is_err());
}

#[tokio::test]
async fn error_predicates_match_reqwests_by_kind() {
    let client = Client::new("http://127.0.0.1:1").expect("client");
    let err = client.get("/x").send().await.expect_err("refused");
    assert_eq!(err.kind(), ErrorKind::Connect);
    assert!(err.is_connect() && err.is_request());
    assert!(!err.is_builder() && !err.is_body());

    let err = client.get("/a/../b").send().await.expect_err("dot segment");
    assert!(err.is_builder() && !err.is_request());
    let err = Client::new("ftp://x").expect_err("bad base");
    assert!(err.is_builder());

    let api = FakeApi::start().await.expect("api");
    let small = Client::builder(api.url())
        .max_response_body(4)
        .build()
        .expect("client");
    let err = small.get("/posts/1").send().await.expect_err("too large");
    assert_eq!(err.kind(), ErrorKind::BodyTooLarge);
    assert!(err.is_body() && !err.is_request());
}
