//! Compressed responses through the facade (stack position 10b), over
//! loopback to FakeApi: `Accept-Encoding` sent, each codec decoded, the body
//! limit on the decoded size, and what is left alone.
#![cfg(feature = "gzip")]

use std::time::Duration;

use http::StatusCode;
use tollgate::{Client, ErrorKind};
use tollgate_testkit::{FakeApi, Fault};

async fn api() -> FakeApi {
    FakeApi::start().await.expect("fake api")
}

/// The codecs this build decodes, by their `Content-Encoding` token.
fn codecs() -> Vec<&'static str> {
    let mut all = vec!["gzip"];
    if cfg!(feature = "deflate") {
        all.push("deflate");
    }
    if cfg!(feature = "brotli") {
        all.push("br");
    }
    if cfg!(feature = "zstd") {
        all.push("zstd");
    }
    all
}

#[tokio::test]
async fn accept_encoding_names_every_codec_built_in() {
    let api = api().await;
    let client = Client::new(api.url()).expect("client");
    let res = client.get("/anything/x").send().await.expect("sent");
    let sent = res.data().expect("json")["headers"]["accept-encoding"][0]
        .as_str()
        .expect("accept-encoding sent")
        .to_owned();
    for codec in codecs() {
        assert!(sent.contains(codec), "{codec} in {sent}");
    }
}

#[tokio::test]
async fn each_codec_is_decoded_and_its_headers_removed() {
    let api = api().await;
    let client = Client::new(api.url()).expect("client");
    for codec in codecs() {
        let res = client
            .get(format!("/encoded/{codec}"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{codec}: {e}"));
        assert_eq!(res.status(), StatusCode::OK, "{codec}");
        let data = res.data().unwrap_or_else(|e| panic!("{codec}: {e}"));
        assert_eq!(data["codec"], codec);
        assert_eq!(data["posts"].as_array().map(Vec::len), Some(10), "{codec}");
        assert!(res.headers().get("content-encoding").is_none(), "{codec}");
        assert!(res.headers().get("content-length").is_none(), "{codec}");
    }
}

#[tokio::test]
async fn a_decompression_bomb_is_body_too_large_at_the_decoded_limit() {
    let api = api().await;
    let client = Client::builder(api.url())
        .max_response_body(1 << 20)
        .build()
        .expect("client");
    for codec in codecs() {
        // 64 MiB of zeros, a few dozen kilobytes on the wire.
        let err = client
            .get(format!("/bomb/{codec}?size={}", 64 << 20))
            .send()
            .await
            .expect_err("bomb");
        assert_eq!(err.kind(), ErrorKind::BodyTooLarge, "{codec}: {err}");
    }
    // Below the limit, the same route is an ordinary body.
    let res = client
        .get(format!("/bomb/gzip?size={}", 1 << 19))
        .send()
        .await
        .expect("half a MiB");
    assert_eq!(res.bytes().len(), 1 << 19);
}

#[cfg(feature = "retry")]
#[tokio::test]
async fn a_bomb_is_final_to_retry_and_read_once() {
    let api = api().await;
    let client = Client::builder(api.url())
        .max_response_body(1 << 20)
        .retry(tollgate::retry::RetryLayer::new())
        .build()
        .expect("client");
    let err = client
        .get(format!("/bomb/gzip?size={}", 64 << 20))
        .send()
        .await
        .expect_err("bomb");
    assert_eq!(err.kind(), ErrorKind::BodyTooLarge);
    assert_eq!(api.hits("/bomb/gzip"), 1);
}

#[tokio::test]
async fn a_callers_own_accept_encoding_is_sent_as_it_is() {
    let api = api().await;
    let client = Client::new(api.url()).expect("client");
    let res = client
        .get("/encoded/gzip")
        .header("accept-encoding", "identity")
        .send()
        .await
        .expect("sent");
    assert_eq!(res.data().expect("json")["codec"], "gzip");
    let seen = api.last_request("/encoded/gzip").expect("seen");
    assert_eq!(seen.header("accept-encoding"), Some("identity"));
}

#[tokio::test]
async fn with_gzip_off_it_is_not_asked_for_and_a_gzip_body_is_left_as_it_came() {
    let api = api().await;
    let client = Client::builder(api.url())
        .gzip(false)
        .build()
        .expect("client");
    let plain = client.get("/encoded/gzip").send().await.expect("sent");
    assert_eq!(plain.data().expect("json")["codec"], "gzip");
    let seen = api.last_request("/encoded/gzip").expect("seen");
    // The other codecs built in are still asked for.
    let asked = seen.header("accept-encoding").unwrap_or_default();
    assert!(!asked.contains("gzip"), "{asked}");
    let coded = client
        .get("/bomb/gzip?size=1000")
        .send()
        .await
        .expect("sent");
    assert_eq!(coded.headers()["content-encoding"], "gzip");
    assert!(coded.bytes().len() < 1000);
}

#[tokio::test]
async fn a_head_with_content_encoding_and_no_body_is_not_an_error() {
    let api = api().await;
    let client = Client::new(api.url()).expect("client");
    let res = client.head("/encoded/gzip").send().await.expect("head");
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.bytes().is_empty());
}

#[tokio::test]
async fn a_body_that_is_not_what_its_content_encoding_says_is_a_body_error() {
    let api = api().await;
    api.inject(
        "/posts/1",
        Fault::latency(Duration::ZERO).header("content-encoding", "gzip"),
    );
    let client = Client::new(api.url()).expect("client");
    let err = client.get("/posts/1").send().await.expect_err("corrupt");
    assert_eq!(err.kind(), ErrorKind::Body, "{err}");
}

#[cfg(feature = "cache")]
#[tokio::test]
async fn the_cache_keeps_and_serves_the_decoded_body() {
    let api = api().await;
    let client = Client::builder(api.url())
        .cache(tollgate::cache::CacheLayer::new(Duration::from_secs(60)))
        .build()
        .expect("client");
    let first = client.get("/encoded/gzip").send().await.expect("miss");
    let second = client.get("/encoded/gzip").send().await.expect("hit");
    assert!(second.summary().from_cache);
    assert_eq!(first.bytes(), second.bytes());
    assert_eq!(second.data().expect("json")["codec"], "gzip");
    assert!(second.headers().get("content-encoding").is_none());
    assert_eq!(api.hits("/encoded/gzip"), 1);
}
