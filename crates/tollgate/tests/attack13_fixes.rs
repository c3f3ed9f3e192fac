//! Adversary 13: the facade's own decompression layer (`src/decode.rs`),
//! the attempt deadline the retry buffer reads within (`src/buffer.rs`),
//! and a failed batch's error (`src/batch.rs`), over real HTTP on
//! 127.0.0.1: a raw server below that writes exact bytes.
//!
//! Each test's name says the promise it checks; one marked `LIMITATION`
//! shows a documented limit, the rest are guards. The adversary's breaks,
//! all fixed: a HEAD or a 304 naming a transfer coding refused as a Body
//! error; a refused transfer coding retried as a reset; a followable 3xx
//! that is not followed (policy none, or a custom policy's stop) read
//! outside the attempt deadline and its cut body never retried; a failed
//! batch's error logging the other callers' items through its source. The
//! pool's queue wait counted by the attempt timeout is documented.
#![cfg(feature = "gzip")]

use std::io::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{Method, StatusCode};
use tokio::net::TcpListener;
use tollgate::{Client, ErrorKind};
use tollgate_testkit::{response, Piece, RawServer};

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).expect("gzip");
    e.finish().expect("gzip")
}

// ---------------------------------------------------------------------------
// Answers written byte for byte by the testkit's `RawServer`.

fn one(bytes: Vec<u8>) -> Vec<Piece> {
    vec![Piece::Bytes(bytes)]
}

const JSON: &[u8] = br#"{"hello":"world","n":[1,2,3,4,5,6,7,8,9,10]}"#;

fn client(url: &str) -> Client {
    Client::builder(url)
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client")
}

// ---------------------------------------------------------------------------
/// A gzip header with every optional field (FEXTRA, FNAME, FCOMMENT,
/// FHCRC), then `data` deflated, then the trailer; `bad_hcrc` spoils the
/// header CRC, `bad_crc` the trailer's CRC.
fn gzip_with_fields(data: &[u8], bad_hcrc: bool, bad_crc: bool) -> Vec<u8> {
    let mut out = vec![0x1f, 0x8b, 8, 0b0001_1110, 0, 0, 0, 0, 0, 0xff];
    out.extend_from_slice(&5u16.to_le_bytes());
    out.extend_from_slice(b"AB\x01\x00z");
    out.extend_from_slice(b"name.json\0");
    out.extend_from_slice(b"a comment\0");
    let mut hcrc = flate2::Crc::new();
    hcrc.update(&out);
    let mut h = (hcrc.sum() & 0xffff) as u16;
    if bad_hcrc {
        h ^= 1;
    }
    out.extend_from_slice(&h.to_le_bytes());
    let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).expect("deflate");
    out.extend_from_slice(&e.finish().expect("deflate"));
    let mut crc = flate2::Crc::new();
    crc.update(data);
    let mut sum = crc.sum();
    if bad_crc {
        sum ^= 1;
    }
    out.extend_from_slice(&sum.to_le_bytes());
    out.extend_from_slice(&u32::try_from(data.len()).expect("len").to_le_bytes());
    out
}

/// Sends GET `/x` buffered and streamed; the body each way, or the error.
async fn both_ways(client: &Client) -> [Result<Vec<u8>, tollgate::Error>; 2] {
    let buffered = client
        .get("/x")
        .send()
        .await
        .map(|res| res.bytes().to_vec());
    let streamed = async {
        let mut res = client.get("/x").send_streaming().await?;
        let mut all = Vec::new();
        while let Some(chunk) = res.chunk().await? {
            all.extend_from_slice(&chunk);
        }
        Ok(all)
    }
    .await;
    [buffered, streamed]
}

fn assert_body_error(results: [Result<Vec<u8>, tollgate::Error>; 2], what: &str) {
    for (way, result) in ["buffered", "streamed"].into_iter().zip(results) {
        match result {
            Ok(body) => panic!(
                "{what} ({way}): {} bytes handed over as whole: {:?}",
                body.len(),
                String::from_utf8_lossy(&body[..body.len().min(80)])
            ),
            Err(e) => assert_eq!(e.kind(), ErrorKind::Body, "{what} ({way}): {e}"),
        }
    }
}

fn assert_whole(results: [Result<Vec<u8>, tollgate::Error>; 2], want: &[u8], what: &str) {
    for (way, result) in ["buffered", "streamed"].into_iter().zip(results) {
        match result {
            Ok(body) => assert_eq!(&body[..], want, "{what} ({way})"),
            Err(e) => panic!("{what} ({way}): {e}"),
        }
    }
}

// ---------------------------------------------------------------------------
// Gzip members and header fields.

/// A whole gzip member, then a second member cut short (header only, or
/// halfway through its data, or just its trailer missing): the body is not
/// whole, so it is a Body error, never the first member handed over as all.
#[tokio::test]
async fn a_gzip_member_then_a_truncated_second_member_is_a_body_error() {
    let first = gzip(&JSON.repeat(10));
    let second = gzip(b"the second member's own data, which must not be lost");
    for cut in [3, 10, second.len() / 2, second.len() - 4, second.len() - 1] {
        let mut body = first.clone();
        body.extend_from_slice(&second[..cut]);
        let raw = RawServer::start(move |_| {
            one(response("200 OK", &[("content-encoding", "gzip")], &body))
        })
        .await;
        assert_body_error(
            both_ways(&client(&raw.url())).await,
            &format!("second member cut at {cut}"),
        );
    }
}

/// Empty gzip members (of zero bytes of data) before, between and after
/// data members are members like any other: the body is their data joined.
#[tokio::test]
async fn empty_gzip_members_around_data_decode_whole() {
    let mut body = gzip(b"");
    body.extend_from_slice(&gzip(b"one,"));
    body.extend_from_slice(&gzip(b""));
    body.extend_from_slice(&gzip(b"two"));
    body.extend_from_slice(&gzip(b""));
    let raw =
        RawServer::start(move |_| one(response("200 OK", &[("content-encoding", "gzip")], &body)))
            .await;
    assert_whole(
        both_ways(&client(&raw.url())).await,
        b"one,two",
        "empty members",
    );
    // A body that is only an empty member is an empty body.
    let raw = RawServer::start(move |_| {
        one(response(
            "200 OK",
            &[("content-encoding", "gzip")],
            &gzip(b""),
        ))
    })
    .await;
    assert_whole(
        both_ways(&client(&raw.url())).await,
        b"",
        "one empty member",
    );
}

/// A gzip header with FEXTRA, FNAME, FCOMMENT and a correct FHCRC decodes
/// whole, also when each byte of it arrives in its own write.
#[tokio::test]
async fn gzip_header_fields_extra_name_comment_and_header_crc_decode_whole() {
    let data = JSON.repeat(30);
    let body = gzip_with_fields(&data, false, false);
    let raw = RawServer::start(move |_| {
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-encoding: gzip\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        let mut pieces = vec![Piece::Bytes(head.into_bytes())];
        for b in &body[..40] {
            pieces.push(Piece::Bytes(vec![*b]));
            pieces.push(Piece::Sleep(Duration::from_millis(1)));
        }
        pieces.push(Piece::Bytes(body[40..].to_vec()));
        pieces
    })
    .await;
    assert_whole(
        both_ways(&client(&raw.url())).await,
        &data,
        "all header fields",
    );
}

/// A gzip body whose trailer CRC or header CRC is wrong is an altered body:
/// a Body error, buffered and streamed.
#[tokio::test]
async fn a_gzip_body_with_a_wrong_crc_or_header_crc_is_a_body_error() {
    for (hcrc, crc) in [(true, false), (false, true)] {
        let body = gzip_with_fields(&JSON.repeat(30), hcrc, crc);
        let raw = RawServer::start(move |_| {
            one(response("200 OK", &[("content-encoding", "gzip")], &body))
        })
        .await;
        assert_body_error(
            both_ways(&client(&raw.url())).await,
            &format!("bad header crc {hcrc}, bad crc {crc}"),
        );
    }
}

/// A gzip body that is only a header (the stream ends before any deflate
/// data) is cut short, not an empty body.
#[tokio::test]
async fn a_gzip_header_alone_is_a_body_error_not_an_empty_body() {
    let header = gzip(JSON)[..10].to_vec();
    let raw = RawServer::start(move |_| {
        one(response("200 OK", &[("content-encoding", "gzip")], &header))
    })
    .await;
    assert_body_error(both_ways(&client(&raw.url())).await, "header alone");
}

// ---------------------------------------------------------------------------
// zstd and zlib.

/// A zstd skippable frame (magic 0x184D2A5?, any payload) before, between
/// and after data frames is part of a valid zstd body (RFC 8878 §3.1.2):
/// the body is the data frames' content.
#[cfg(feature = "zstd")]
#[tokio::test]
async fn zstd_skippable_frames_around_data_frames_decode_whole() {
    let skippable = |n: u8| {
        let mut f = vec![0x50 + n, 0x2A, 0x4D, 0x18];
        f.extend_from_slice(&7u32.to_le_bytes());
        f.extend_from_slice(b"skipped");
        f
    };
    let mut body = skippable(0);
    body.extend_from_slice(&zstd::encode_all(&b"one,"[..], 3).expect("zstd"));
    body.extend_from_slice(&skippable(1));
    body.extend_from_slice(&zstd::encode_all(&b"two"[..], 3).expect("zstd"));
    body.extend_from_slice(&skippable(15));
    let raw =
        RawServer::start(move |_| one(response("200 OK", &[("content-encoding", "zstd")], &body)))
            .await;
    assert_whole(
        both_ways(&client(&raw.url())).await,
        b"one,two",
        "skippable frames",
    );
}

/// A zstd frame with a content checksum that does not match its data is an
/// altered body: a Body error.
#[cfg(feature = "zstd")]
#[tokio::test]
async fn a_zstd_frame_with_a_wrong_checksum_is_a_body_error() {
    let mut enc = zstd::Encoder::new(Vec::new(), 3).expect("zstd");
    enc.include_checksum(true).expect("checksum");
    enc.write_all(&JSON.repeat(20)).expect("zstd");
    let mut body = enc.finish().expect("zstd");
    let last = body.len() - 1;
    body[last] ^= 0xff;
    let raw =
        RawServer::start(move |_| one(response("200 OK", &[("content-encoding", "zstd")], &body)))
            .await;
    assert_body_error(both_ways(&client(&raw.url())).await, "wrong zstd checksum");
}

/// A zlib (`deflate`) body whose Adler-32 does not match, or that lacks it,
/// is an altered or short body: a Body error.
#[cfg(feature = "deflate")]
#[tokio::test]
async fn a_zlib_body_with_a_wrong_or_missing_adler32_is_a_body_error() {
    let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(&JSON.repeat(20)).expect("zlib");
    let whole = e.finish().expect("zlib");
    let mut wrong = whole.clone();
    let last = wrong.len() - 1;
    wrong[last] ^= 0xff;
    let missing = whole[..whole.len() - 4].to_vec();
    for (what, body) in [("wrong adler", wrong), ("no adler", missing)] {
        let raw = RawServer::start(move |_| {
            one(response(
                "200 OK",
                &[("content-encoding", "deflate")],
                &body,
            ))
        })
        .await;
        assert_body_error(both_ways(&client(&raw.url())).await, what);
    }
}

// ---------------------------------------------------------------------------
// Transfer-Encoding on bodyless responses.

/// RFC 9112 §6.1: "A server MAY send a Transfer-Encoding header field in a
/// response to a HEAD request or in a 304 response to a GET request,
/// neither of which includes a message body". Such an answer has no body to
/// refuse: the HEAD is a success with its headers, not a Body error.
#[tokio::test]
async fn a_head_answer_naming_a_transfer_coding_is_a_bodyless_success() {
    let raw = RawServer::start(move |_| {
        one(response(
            "200 OK",
            &[
                ("transfer-encoding", "gzip, chunked"),
                ("content-type", "application/json"),
            ],
            b"",
        ))
    })
    .await;
    let res = client(&raw.url())
        .request(Method::HEAD, "/x")
        .send()
        .await
        .expect("a HEAD has no body to refuse");
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.bytes().is_empty());
}

/// The same for a `304` to a conditional GET (RFC 9112 §6.1): no body, so
/// nothing to refuse; the caller gets its 304.
#[tokio::test]
async fn a_304_naming_a_transfer_coding_is_a_bodyless_304() {
    let raw = RawServer::start(move |_| {
        one(response(
            "304 Not Modified",
            &[("transfer-encoding", "gzip, chunked"), ("etag", "\"v1\"")],
            b"",
        ))
    })
    .await;
    let res = client(&raw.url())
        .get("/x")
        .header("if-none-match", "\"v1\"")
        .send()
        .await
        .expect("a 304 has no body to refuse");
    assert_eq!(res.status(), StatusCode::NOT_MODIFIED);
}

/// A response refused for its transfer coding is not stored by the cache,
/// and the next call (the server now answering plainly) gets the plain body.
#[cfg(feature = "cache")]
#[tokio::test]
async fn a_response_refused_for_its_transfer_coding_is_never_cached() {
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let raw = RawServer::start(move |_| {
        let cache = [("cache-control", "max-age=600")];
        if h.fetch_add(1, Ordering::SeqCst) == 0 {
            let body = gzip(JSON);
            let mut chunked = format!("{:x}\r\n", body.len()).into_bytes();
            chunked.extend_from_slice(&body);
            chunked.extend_from_slice(b"\r\n0\r\n\r\n");
            one(response(
                "200 OK",
                &[cache[0], ("transfer-encoding", "gzip, chunked")],
                &chunked,
            ))
        } else {
            one(response("200 OK", &cache, JSON))
        }
    })
    .await;
    let client = Client::builder(raw.url())
        .cache(tollgate::cache::CacheLayer::new(Duration::from_secs(60)))
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client");
    let first = client.get("/x").send().await;
    assert!(
        first.is_err(),
        "refused: {:?}",
        first.map(|r| r.bytes().len())
    );
    let second = client.get("/x").send().await.expect("plain");
    assert_eq!(&second.bytes()[..], JSON);
    assert!(!second.summary().from_cache);
}

// ---------------------------------------------------------------------------
// The attempt deadline (stack position 9) and the retry buffer.

/// A head, then `body` a byte per `gap`: a body trickled past any bound.
#[cfg(feature = "retry")]
fn trickled(head: String, body: &[u8], gap: Duration) -> Vec<Piece> {
    let mut pieces = vec![Piece::Bytes(head.into_bytes())];
    for b in body {
        pieces.push(Piece::Bytes(vec![*b]));
        pieces.push(Piece::Sleep(gap));
    }
    pieces
}

/// Retries 1 ms apart.
#[cfg(feature = "retry")]
fn fast_backoff() -> tollgate::retry::Backoff {
    tollgate::retry::Backoff::exponential(Duration::from_millis(1))
        .and_then(|b| b.cap(Duration::from_millis(1)))
        .expect("backoff")
}

#[cfg(feature = "retry")]
fn retrying(url: &str, attempt: Duration) -> tollgate::ClientBuilder {
    Client::builder(url)
        .retry(tollgate::retry::RetryLayer::new().backoff(fast_backoff()))
        .attempt_timeout(attempt)
        .read_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(20))
}

/// A POST is never sent twice (retry's default methods are idempotent
/// ones): its response body trickling past the attempt timeout is the
/// caller's Timeout after one request, never a second POST.
#[cfg(feature = "retry")]
#[tokio::test(start_paused = true)]
async fn a_post_whose_body_trickles_past_the_attempt_timeout_is_sent_once() {
    let raw = RawServer::start(move |_| {
        let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", JSON.len());
        trickled(head, JSON, Duration::from_millis(30))
    })
    .await;
    let client = retrying(&raw.url(), Duration::from_millis(200))
        .build()
        .expect("client");
    let started = tokio::time::Instant::now();
    let err = client.post("/x").send().await.expect_err("trickled");
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(raw.hits(), 1, "a POST sent again");
}

/// A read timeout inside a gzip body, met by the decoder: with retry on,
/// buffered, it stays a Timeout (retried as one, reported as one); streamed,
/// the caller's chunk error is a Timeout too, and the call is made once.
#[cfg(feature = "retry")]
#[tokio::test(start_paused = true)]
async fn a_read_timeout_inside_a_gzip_body_stays_a_timeout_through_decoder_and_retry() {
    let body = gzip(&JSON.repeat(40));
    let raw = RawServer::start(move |_| {
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-encoding: gzip\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        vec![
            Piece::Bytes(head.into_bytes()),
            Piece::Bytes(body[..body.len() / 2].to_vec()),
            Piece::Sleep(Duration::from_secs(30)),
        ]
    })
    .await;
    let client = Client::builder(raw.url())
        .retry(
            tollgate::retry::RetryLayer::new()
                .max_retries(1)
                .backoff(fast_backoff()),
        )
        .read_timeout(Duration::from_millis(150))
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client");
    let err = client.get("/x").send().await.expect_err("stalled");
    assert_eq!(err.kind(), ErrorKind::Timeout, "buffered: {err}");
    assert_eq!(raw.hits(), 2, "retried once as a timeout");
    let mut res = client.get("/x").send_streaming().await.expect("head");
    let err = loop {
        match res.chunk().await {
            Ok(Some(_)) => {}
            Ok(None) => panic!("a stalled body ended whole"),
            Err(e) => break e,
        }
    };
    assert_eq!(err.kind(), ErrorKind::Timeout, "streamed: {err}");
    assert_eq!(raw.hits(), 3, "a streamed body is never retried");
}

/// Each redirect hop is a new request through retry and so its own
/// attempt: two hops each taking most of the attempt timeout succeed.
#[cfg(all(feature = "retry", feature = "redirect"))]
#[tokio::test(start_paused = true)]
async fn each_redirect_hop_has_its_own_attempt_deadline() {
    let raw = RawServer::start(move |seen| {
        let reply = if seen.path() == "/start" {
            response("302 Found", &[("location", "/final")], b"")
        } else {
            response("200 OK", &[], JSON)
        };
        vec![
            Piece::Sleep(Duration::from_millis(250)),
            Piece::Bytes(reply),
        ]
    })
    .await;
    let client = retrying(&raw.url(), Duration::from_millis(400))
        .build()
        .expect("client");
    let res = client.get("/start").send().await.expect("two hops");
    assert_eq!(&res.bytes()[..], JSON);
    assert_eq!(res.summary().redirects, 1);
    assert_eq!(raw.hits(), 2, "no hop timed out and was retried");
}

/// A followable 3xx that is not followed (`RedirectPolicy::none()`) is the
/// answer; with retry on, "each attempt's body is read whole just below it,
/// so a body cut after the headers is retried too" (lib.rs), and the
/// attempt timeout bounds "with retry on, the reading of its body"
/// (`ClientBuilder::attempt_timeout`). A 302's body trickled past the
/// attempt timeout must be cut and retried, not waited for.
#[cfg(all(feature = "retry", feature = "redirect"))]
#[tokio::test(start_paused = true)]
async fn an_unfollowed_redirects_body_is_bounded_by_the_attempt_timeout() {
    let first = Arc::new(AtomicUsize::new(0));
    let raw = RawServer::start(move |_| {
        let head = format!(
            "HTTP/1.1 302 Found\r\nlocation: /elsewhere\r\ncontent-length: {}\r\n\r\n",
            JSON.len()
        );
        if first.fetch_add(1, Ordering::SeqCst) == 0 {
            trickled(head, JSON, Duration::from_millis(40))
        } else {
            let mut whole = head.into_bytes();
            whole.extend_from_slice(JSON);
            one(whole)
        }
    })
    .await;
    let client = retrying(&raw.url(), Duration::from_millis(300))
        .redirect(tollgate::RedirectPolicy::none())
        .build()
        .expect("client");
    let started = tokio::time::Instant::now();
    let res = client.get("/x").send().await.expect("the 302");
    let took = started.elapsed();
    assert_eq!(res.status(), StatusCode::FOUND);
    assert!(
        took < Duration::from_millis(1200),
        "the trickled 302 body was waited for: {took:?}, attempts {}",
        res.summary().attempts
    );
}

/// The same 302, its body cut after the head (the connection closes short
/// of its `Content-Length`): with retry on, a GET's body cut after the
/// headers is retried; the caller gets the whole 302 of the next attempt.
#[cfg(all(feature = "retry", feature = "redirect"))]
#[tokio::test]
async fn an_unfollowed_redirects_cut_body_is_retried_like_any_other() {
    let first = Arc::new(AtomicUsize::new(0));
    let raw = RawServer::start(move |_| {
        let mut whole = format!(
            "HTTP/1.1 302 Found\r\nlocation: /elsewhere\r\ncontent-length: {}\r\n\r\n",
            JSON.len()
        )
        .into_bytes();
        whole.extend_from_slice(JSON);
        if first.fetch_add(1, Ordering::SeqCst) == 0 {
            whole.truncate(whole.len() - 10);
            vec![Piece::Bytes(whole), Piece::Close]
        } else {
            one(whole)
        }
    })
    .await;
    let client = retrying(&raw.url(), Duration::from_secs(5))
        .redirect(tollgate::RedirectPolicy::none())
        .build()
        .expect("client");
    let res = client.get("/x").send().await.expect("retried");
    assert_eq!(res.status(), StatusCode::FOUND);
    assert_eq!(&res.bytes()[..], JSON);
    assert_eq!(res.summary().attempts, 2);
}

/// The same with a custom policy that stops at this hop: the 302 is the
/// answer, and its cut body is retried.
#[cfg(all(feature = "retry", feature = "redirect"))]
#[tokio::test]
async fn a_redirect_a_custom_policy_stops_at_has_its_cut_body_retried() {
    let first = Arc::new(AtomicUsize::new(0));
    let raw = RawServer::start(move |_| {
        let mut whole = format!(
            "HTTP/1.1 307 Temporary Redirect\r\nlocation: /login\r\ncontent-length: {}\r\n\r\n",
            JSON.len()
        )
        .into_bytes();
        whole.extend_from_slice(JSON);
        if first.fetch_add(1, Ordering::SeqCst) == 0 {
            whole.truncate(whole.len() - 10);
            vec![Piece::Bytes(whole), Piece::Close]
        } else {
            one(whole)
        }
    })
    .await;
    let client = retrying(&raw.url(), Duration::from_secs(5))
        .redirect(tollgate::RedirectPolicy::custom(|attempt| attempt.stop()))
        .build()
        .expect("client");
    let res = client.get("/x").send().await.expect("retried");
    assert_eq!(res.status(), StatusCode::TEMPORARY_REDIRECT);
    assert_eq!(&res.bytes()[..], JSON);
    assert_eq!(res.summary().attempts, 2);
}

/// An unfollowed 3xx whose body is a bomb is the caller's BodyTooLarge
/// (bounded by the call's own read), never an unbounded read.
#[cfg(all(feature = "retry", feature = "redirect"))]
#[tokio::test]
async fn an_unfollowed_redirects_bomb_body_is_body_too_large() {
    let mut bomb = Vec::new();
    {
        let mut e = flate2::write::GzEncoder::new(&mut bomb, flate2::Compression::best());
        e.write_all(&vec![0u8; 16 << 20]).expect("gzip");
        e.finish().expect("gzip");
    }
    let raw = RawServer::start(move |_| {
        one(response(
            "301 Moved Permanently",
            &[("location", "/elsewhere"), ("content-encoding", "gzip")],
            &bomb,
        ))
    })
    .await;
    let client = retrying(&raw.url(), Duration::from_secs(5))
        .redirect(tollgate::RedirectPolicy::none())
        .max_response_body(1 << 20)
        .build()
        .expect("client");
    let err = client.get("/x").send().await.expect_err("bomb");
    assert_eq!(err.kind(), ErrorKind::BodyTooLarge, "{err}");
}

/// The attempt timeout bounds an attempt, not the wait for a pool slot
/// before it (the pool has its own `queue_timeout`; the wait is reported
/// apart, `Summary::queue_wait`): a call queued behind a streaming call
/// that holds the one slot for longer than the attempt timeout is sent
/// once the slot frees, and answered.
#[cfg(feature = "limit")]
#[tokio::test]
#[ignore = "LIMITATION: ClientBuilder::attempt_timeout docs: the pool is below the attempt timeout, so a wait for a slot counts against it"]
async fn the_attempt_timeout_does_not_count_the_wait_for_a_pool_slot() {
    let raw = RawServer::start(move |seen| {
        if seen.path() == "/hold" {
            one(response("200 OK", &[], JSON))
        } else {
            one(response("200 OK", &[], b"queued"))
        }
    })
    .await;
    let client = Client::builder(raw.url())
        .concurrency_limit(
            tollgate_limit::ConcurrencyLimitLayer::new(1)
                .max_queue(8)
                .queue_timeout(Duration::from_secs(10)),
        )
        .attempt_timeout(Duration::from_millis(200))
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client");
    let held = client.get("/hold").send_streaming().await.expect("head");
    let release = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(600)).await;
        drop(held);
    });
    let res = client
        .get("/queued")
        .send()
        .await
        .expect("sent once the slot freed");
    assert_eq!(&res.bytes()[..], b"queued");
    assert!(res.summary().queue_wait >= Duration::from_millis(400));
    release.await.expect("release");
}

// ---------------------------------------------------------------------------
// A failed batch's error (`src/batch.rs`, `batch_error`).

/// A server on 127.0.0.1 answering every request with `(status, body)`.
#[cfg(feature = "batch")]
async fn canned(status: u16, body: &'static str) -> String {
    let raw = RawServer::start(move |_| {
        vec![
            Piece::Bytes(response(
                &format!("{status} X"),
                &[
                    ("content-type", "application/json"),
                    ("connection", "close"),
                ],
                body.as_bytes(),
            )),
            Piece::Close,
        ]
    })
    .await;
    raw.url()
}

/// "Not the body's snippet: it holds the other callers' items"
/// (`batch_error`): a failed batch (a 500 whose body lists items, a 200
/// whose JSON is cut) must not show one caller the other callers' items in
/// its error, as printed (`{}`) or logged (`{:?}`).
#[cfg(feature = "batch")]
#[tokio::test]
async fn a_failed_batch_never_shows_one_caller_the_other_callers_items() {
    for (status, body) in [
        (
            500,
            r#"{"error":"partial","items":[{"id":2,"ssn":"SECRET-OF-CALLER-2"}]}"#,
        ),
        (
            200,
            r#"{"items":[{"id":2,"ssn":"SECRET-OF-CALLER-2"},{"id":1,"#,
        ),
    ] {
        let url = canned(status, body).await;
        let client = Client::builder(url)
            .timeout(Duration::from_secs(10))
            .build()
            .expect("client");
        let batched = client.batched(tollgate::BatchSpec::get("/metadata"));
        let (one, _two) = tokio::join!(batched.load(1), batched.load(2));
        let err = one.expect_err("the batch failed");
        for shown in [format!("{err}"), format!("{err:?}")] {
            assert!(
                !shown.contains("SECRET-OF-CALLER-2"),
                "caller 1 sees caller 2's item ({status}): {shown}"
            );
        }
    }
}

// ---------------------------------------------------------------------------
// More of the attempt deadline, the decoder's headers, the response head.

/// `Duration::MAX` means no attempt limit, and a limit so long that the
/// clock only just holds it is one too: neither panics nor fails a call,
/// with retry's buffer reading the body under it (and under paused time).
#[cfg(feature = "retry")]
#[tokio::test]
async fn attempt_timeouts_at_and_near_the_clocks_end_answer_without_panic() {
    let body = gzip(&JSON.repeat(5));
    let raw =
        RawServer::start(move |_| one(response("200 OK", &[("content-encoding", "gzip")], &body)))
            .await;
    for attempt in [
        Duration::MAX,
        Duration::from_secs(u64::MAX / 4),
        Duration::from_secs(i64::MAX as u64 / 2),
        Duration::from_secs(100 * 365 * 24 * 3600),
    ] {
        let client = retrying(&raw.url(), attempt).build().expect("client");
        let res = client
            .get("/x")
            .send()
            .await
            .unwrap_or_else(|e| panic!("{attempt:?}: {e}"));
        assert_eq!(&res.bytes()[..], &JSON.repeat(5)[..], "{attempt:?}");
    }
}

/// "A streamed response's body is bounded by the total timeout and the
/// read timeout instead" (`attempt_timeout`): with retry on, a streamed
/// gzip body trickling well past the attempt timeout is read whole, once.
#[cfg(feature = "retry")]
#[tokio::test(start_paused = true)]
async fn a_streamed_body_is_not_cut_by_the_attempt_timeout() {
    let body = gzip(&JSON.repeat(4));
    let raw = RawServer::start(move |_| {
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-encoding: gzip\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        let mut pieces = vec![Piece::Bytes(head.into_bytes())];
        for part in body.chunks(body.len() / 6 + 1) {
            pieces.push(Piece::Bytes(part.to_vec()));
            pieces.push(Piece::Sleep(Duration::from_millis(80)));
        }
        pieces
    })
    .await;
    let client = retrying(&raw.url(), Duration::from_millis(150))
        .build()
        .expect("client");
    let mut res = client.get("/x").send_streaming().await.expect("head");
    let mut all = Vec::new();
    while let Some(chunk) = res.chunk().await.expect("not cut") {
        all.extend_from_slice(&chunk);
    }
    assert_eq!(&all[..], &JSON.repeat(4)[..]);
    assert_eq!(raw.hits(), 1);
}

/// A `Content-Encoding` token quoted or with parameters is no coding this
/// client knows: the body is handed over as it came, with the header that
/// says so, never decoded half-way or unlabelled.
#[tokio::test]
async fn quoted_or_parameterised_content_codings_are_left_labelled() {
    for label in ["\"gzip\"", "gzip;q=1", "gzip; level=9"] {
        let body = gzip(JSON);
        let raw = RawServer::start(move |_| {
            one(response("200 OK", &[("content-encoding", label)], &body))
        })
        .await;
        let res = client(&raw.url())
            .get("/x")
            .send()
            .await
            .unwrap_or_else(|e| panic!("{label}: {e}"));
        assert_eq!(
            res.headers()
                .get("content-encoding")
                .map(|v| v.to_str().expect("ascii")),
            Some(label)
        );
        assert_eq!(&res.bytes()[..], &gzip(JSON)[..], "{label}");
    }
}

/// `remote_addr` is the peer for a buffered, a streamed and a decoded
/// response, and `None` for one from the cache ("None for a response from
/// the cache"); `error_for_status_ref` on a streamed 503 is a Status error
/// that leaves the body readable.
#[cfg(feature = "cache")]
#[tokio::test]
async fn remote_addr_and_error_for_status_ref_on_both_response_kinds() {
    let raw = RawServer::start(move |seen| match seen.path() {
        "/down" => one(response("503 Service Unavailable", &[], b"later")),
        "/gz" => one(response(
            "200 OK",
            &[
                ("content-encoding", "gzip"),
                ("cache-control", "max-age=60"),
            ],
            &gzip(JSON),
        )),
        _ => one(response("200 OK", &[("cache-control", "max-age=60")], JSON)),
    })
    .await;
    let addr = raw.addr();
    let client = Client::builder(raw.url())
        .cache(tollgate::cache::CacheLayer::new(Duration::from_secs(60)))
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client");
    let first = client.get("/gz").send().await.expect("first");
    assert_eq!(first.remote_addr(), Some(addr), "decoded, buffered");
    let hit = client.get("/gz").send().await.expect("hit");
    assert!(hit.summary().from_cache);
    assert_eq!(&hit.bytes()[..], JSON);
    assert_eq!(hit.remote_addr(), None, "a cache hit has no peer");
    let mut down = client.get("/down").send_streaming().await.expect("head");
    assert_eq!(down.remote_addr(), Some(addr), "streamed");
    let err = down.error_for_status_ref().expect_err("503");
    assert_eq!(err.kind(), ErrorKind::Status);
    assert_eq!(err.status(), Some(StatusCode::SERVICE_UNAVAILABLE));
    let mut all = Vec::new();
    while let Some(chunk) = down.chunk().await.expect("readable") {
        all.extend_from_slice(&chunk);
    }
    assert_eq!(&all[..], b"later");
}

/// A HEAD of a gzip resource keeps `Content-Encoding` and the encoded
/// `Content-Length` (nothing decoded); with a cache that keeps HEADs, a
/// later GET must still get the decoded body, never the HEAD's empty one
/// labelled gzip, and a later HEAD never a decoded GET's headers as its own
/// encoded ones.
#[cfg(feature = "cache")]
#[tokio::test]
async fn a_cached_head_of_a_gzip_resource_never_answers_a_get() {
    let body = gzip(&JSON.repeat(10));
    let len = body.len().to_string();
    let raw = RawServer::start(move |seen| {
        let headers = [
            ("content-encoding", "gzip"),
            ("cache-control", "max-age=60"),
            ("content-length", len.as_str()),
        ];
        if seen.head.starts_with("HEAD ") {
            one(response("200 OK", &headers, b""))
        } else {
            one(response("200 OK", &headers, &body))
        }
    })
    .await;
    let client = Client::builder(raw.url())
        .cache(tollgate::cache::CacheLayer::new(Duration::from_secs(60)))
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client");
    let head = client
        .request(Method::HEAD, "/x")
        .send()
        .await
        .expect("head");
    assert!(head.bytes().is_empty());
    let get = client.get("/x").send().await.expect("get");
    assert_eq!(&get.bytes()[..], &JSON.repeat(10)[..]);
    assert!(get.headers().get("content-encoding").is_none());
    let head = client
        .request(Method::HEAD, "/x")
        .send()
        .await
        .expect("head again");
    assert!(head.bytes().is_empty());
}

// ---------------------------------------------------------------------------
// HTTP/2 and 1xx.

/// A response body of canned frames (data, trailers, an error), for a
/// hyper h2c server.
#[cfg(feature = "http2")]
struct Frames(std::collections::VecDeque<Result<http_body::Frame<bytes::Bytes>, std::io::Error>>);

#[cfg(feature = "http2")]
impl http_body::Body for Frames {
    type Data = bytes::Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, std::io::Error>>> {
        std::task::Poll::Ready(self.0.pop_front())
    }
}

/// An h2c server answering every request with `content-encoding: gzip`
/// and the frames `frames()` makes.
#[cfg(feature = "http2")]
async fn h2c<F>(frames: F) -> String
where
    F: Fn() -> Vec<Result<http_body::Frame<bytes::Bytes>, std::io::Error>> + Send + Sync + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let frames = Arc::new(frames);
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let frames = frames.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_req| {
                    let body = Frames(frames().into());
                    async move {
                        let res = http::Response::builder()
                            .header("content-encoding", "gzip")
                            .body(body)
                            .expect("response");
                        Ok::<_, std::convert::Infallible>(res)
                    }
                });
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(socket), service)
                        .await;
            });
        }
    });
    format!("http://{addr}")
}

#[cfg(feature = "http2")]
fn h2_client(url: &str) -> Client {
    Client::builder(url)
        .http2_prior_knowledge()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client")
}

/// An HTTP/2 gzip body in two DATA frames, then trailers: the decoded body
/// is whole (trailers are not data), buffered and streamed.
#[cfg(feature = "http2")]
#[tokio::test]
async fn an_http2_gzip_body_with_trailers_decodes_whole() {
    let url = h2c(|| {
        let body = gzip(&JSON.repeat(20));
        let (a, b) = body.split_at(body.len() / 2);
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        vec![
            Ok(http_body::Frame::data(bytes::Bytes::copy_from_slice(a))),
            Ok(http_body::Frame::data(bytes::Bytes::copy_from_slice(b))),
            Ok(http_body::Frame::trailers(trailers)),
        ]
    })
    .await;
    assert_whole(
        both_ways(&h2_client(&url)).await,
        &JSON.repeat(20),
        "h2 with trailers",
    );
}

/// An HTTP/2 gzip body whose stream is reset after a whole first member
/// (the server's body fails): never the first member handed over as whole.
#[cfg(feature = "http2")]
#[tokio::test]
async fn an_http2_gzip_stream_reset_after_a_whole_member_is_a_body_error() {
    let url = h2c(|| {
        vec![
            Ok(http_body::Frame::data(bytes::Bytes::from(gzip(JSON)))),
            Err(std::io::Error::other("reset")),
        ]
    })
    .await;
    // The reset may reach the client before it has read the head: then
    // the call fails as a request (Transport); either way, never whole.
    for (way, result) in ["buffered", "streamed"]
        .into_iter()
        .zip(both_ways(&h2_client(&url)).await)
    {
        match result {
            Ok(body) => panic!(
                "h2 reset ({way}): {} bytes handed over as whole",
                body.len()
            ),
            Err(e) => assert!(
                matches!(e.kind(), ErrorKind::Body | ErrorKind::Transport),
                "h2 reset ({way}): {e}"
            ),
        }
    }
}

/// Informational responses (100, 103 Early Hints) before a gzip answer are
/// not the answer: the body is the final response's, decoded.
#[tokio::test]
async fn informational_responses_before_a_gzip_answer_are_skipped() {
    let body = gzip(&JSON.repeat(3));
    let raw = RawServer::start(move |_| {
        let mut all = b"HTTP/1.1 103 Early Hints\r\nlink: </s.css>; rel=preload\r\n\r\n".to_vec();
        all.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
        all.extend_from_slice(&response("200 OK", &[("content-encoding", "gzip")], &body));
        one(all)
    })
    .await;
    assert_whole(
        both_ways(&client(&raw.url())).await,
        &JSON.repeat(3),
        "after 1xx",
    );
}

/// A transfer coding this client refuses is its own decision about the
/// head, the same on every attempt: retry's retryable errors are
/// "connect errors, resets, timeouts before the response" (RELIABILITY.md,
/// retry 2), and nothing was reset. The GET is sent once, not four times.
#[cfg(feature = "retry")]
#[tokio::test]
async fn a_refused_transfer_coding_is_not_retried_as_a_reset() {
    let raw = RawServer::start(move |_| {
        let body = gzip(JSON);
        let mut chunked = format!("{:x}\r\n", body.len()).into_bytes();
        chunked.extend_from_slice(&body);
        chunked.extend_from_slice(b"\r\n0\r\n\r\n");
        one(response(
            "200 OK",
            &[("transfer-encoding", "gzip, chunked")],
            &chunked,
        ))
    })
    .await;
    let client = retrying(&raw.url(), Duration::from_secs(5))
        .build()
        .expect("client");
    let err = client.get("/x").send().await.expect_err("refused");
    assert_eq!(err.kind(), ErrorKind::Body, "{err}");
    assert_eq!(raw.hits(), 1, "the same refusal fetched again and again");
}

/// Under paused time (auto-advance), with retry's buffer reading each body
/// within the attempt deadline: an upstream that answers at once is never
/// timed out by a clock that jumps while the runtime waits on the socket.
#[cfg(feature = "retry")]
#[tokio::test(start_paused = true)]
async fn paused_time_never_times_out_an_attempt_answered_at_once() {
    let api = tollgate_testkit::FakeApi::start().await.expect("fake api");
    let client = Client::builder(api.url())
        .retry(tollgate::retry::RetryLayer::new())
        .attempt_timeout(Duration::from_millis(100))
        .build()
        .expect("client");
    for i in 0..50 {
        let res = client
            .get(format!("/posts/{}", i % 5 + 1))
            .send()
            .await
            .unwrap_or_else(|e| panic!("call {i}: {e}"));
        assert_eq!(res.summary().attempts, 1, "call {i} was retried");
    }
}

/// A cache told to keep 301s, above a 301 that is not followed
/// (`RedirectPolicy::none()`) and that the retry buffer hands up unread:
/// its bomb body is the caller's BodyTooLarge and nothing is stored (the
/// next call asks the server again); a small 301 is stored whole.
#[cfg(all(feature = "retry", feature = "redirect", feature = "cache"))]
#[tokio::test]
async fn a_cached_unfollowed_301_with_a_bomb_body_is_never_stored() {
    let mut bomb = Vec::new();
    {
        let mut e = flate2::write::GzEncoder::new(&mut bomb, flate2::Compression::best());
        e.write_all(&vec![0u8; 16 << 20]).expect("gzip");
        e.finish().expect("gzip");
    }
    let raw = RawServer::start(move |seen| {
        let headers = [
            ("location", "/elsewhere"),
            ("content-encoding", "gzip"),
            ("cache-control", "max-age=600"),
        ];
        if seen.path() == "/bomb" {
            one(response("301 Moved Permanently", &headers, &bomb))
        } else {
            one(response("301 Moved Permanently", &headers, &gzip(JSON)))
        }
    })
    .await;
    let cache = tollgate::cache::CacheLayer::builder(tollgate::cache::Freshness::Http {
        default_ttl: None,
    })
    .statuses([StatusCode::OK, StatusCode::MOVED_PERMANENTLY])
    .build();
    let client = retrying(&raw.url(), Duration::from_secs(5))
        .redirect(tollgate::RedirectPolicy::none())
        .cache(cache)
        .max_response_body(1 << 20)
        .build()
        .expect("client");
    for round in 0..2 {
        let err = client.get("/bomb").send().await.expect_err("bomb");
        assert_eq!(err.kind(), ErrorKind::BodyTooLarge, "round {round}: {err}");
    }
    assert_eq!(raw.hits(), 2, "a bomb was stored and served");
    for round in 0..2 {
        let res = client.get("/small").send().await.expect("small 301");
        assert_eq!(res.status(), StatusCode::MOVED_PERMANENTLY);
        assert_eq!(&res.bytes()[..], JSON, "round {round}");
    }
    assert_eq!(raw.hits(), 3, "the small 301 is stored");
}
