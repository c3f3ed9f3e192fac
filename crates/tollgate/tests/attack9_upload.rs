//! Adversarial tests of the facade's streamed uploads (issue #14): the read
//! timeout bounds only idle waits (a live upload is never cut, a stalled one
//! never hangs), a file part that shrinks is a `Body` error, and a caller's
//! `Content-Length` is never a truncated or overlong body passed off as a
//! success. A test marked `#[ignore = "BROKEN: ..."]` shows a break that is
//! still there, one marked `#[ignore = "LIMITATION ..."]` a limit that is
//! documented where it says; the others guard.
//!
//! Real HTTP over 127.0.0.1: FakeApi, or a small hostile server in this file
//! (a slow reader, an HTTP/2 server that never reads); paused time where
//! time matters.
#![cfg(all(feature = "retry", feature = "limit", feature = "http2"))]

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_core::Stream;
use http::{HeaderValue, Method, Request, Response};
use http_body_util::Full;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{Instant, Sleep};
use tollgate::multipart::{Form, Part};
use tollgate::{Client, ClientBuilder, ErrorKind};
use tollgate_testkit::FakeApi;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// `left` chunks of `size` bytes, one every `every` (all at once when zero),
/// then its end, or `Pending` forever when `hang`; says when it is dropped.
struct Chunks {
    left: usize,
    size: usize,
    every: Duration,
    hang: bool,
    /// Whether its end, too, comes `every` after the last chunk.
    slow_end: bool,
    sleep: Option<Pin<Box<Sleep>>>,
    dropped: Arc<AtomicBool>,
}

fn chunks(left: usize, size: usize, every: Duration, hang: bool) -> (Chunks, Arc<AtomicBool>) {
    let dropped = Arc::new(AtomicBool::new(false));
    let stream = Chunks {
        left,
        size,
        every,
        hang,
        slow_end: false,
        sleep: None,
        dropped: dropped.clone(),
    };
    (stream, dropped)
}

impl Stream for Chunks {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.left == 0 && self.slow_end && !self.every.is_zero() {
            let every = self.every;
            let sleep = self
                .sleep
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(every)));
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.slow_end = false;
            self.sleep = None;
        }
        if self.left == 0 {
            return if self.hang {
                Poll::Pending
            } else {
                Poll::Ready(None)
            };
        }
        if !self.every.is_zero() {
            let every = self.every;
            let sleep = self
                .sleep
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(every)));
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.sleep = None;
        }
        self.left -= 1;
        Poll::Ready(Some(Ok(Bytes::from(vec![b'u'; self.size]))))
    }
}

impl Drop for Chunks {
    fn drop(&mut self) {
        self.dropped.store(true, Ordering::SeqCst);
    }
}

/// These byte strings, each ready at once, then the end.
fn parts(items: &[&'static str]) -> impl Stream<Item = Result<Bytes, Infallible>> + Send {
    Iter(
        items
            .iter()
            .map(|s| Bytes::from_static(s.as_bytes()))
            .collect(),
    )
}

struct Iter(std::collections::VecDeque<Bytes>);

impl Stream for Iter {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Poll::Ready(self.0.pop_front().map(Ok))
    }
}

/// Waits (paused time) until `flag` is set.
async fn soon(flag: &AtomicBool) -> bool {
    for _ in 0..200 {
        if flag.load(Ordering::SeqCst) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    flag.load(Ordering::SeqCst)
}

fn one_slot(builder: ClientBuilder) -> Client {
    builder
        .concurrency_limit(
            tollgate::limit::ConcurrencyLimitLayer::new(1).queue_timeout(Duration::from_secs(1)),
        )
        .build()
        .expect("builds")
}

fn temp_path(name: &str) -> PathBuf {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(9);
    std::env::temp_dir().join(format!(
        "tollgate-attack9-{}-{}-{name}",
        std::process::id(),
        h.finish()
    ))
}

fn sha256(data: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// An HTTP/1.1 server that reads a request slowly but steadily: `step`
/// bytes every `every` (its receive buffer small, so the client's writes
/// wait on it), until the chunked body's end or `Content-Length` bytes after
/// the head; then a `200 ok`. Says how many body bytes it read.
async fn slow_reader(step: usize, every: Duration) -> (SocketAddr, Arc<std::sync::Mutex<usize>>) {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(16 * 1024).expect("rcvbuf");
    socket
        .bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind");
    let listener = socket.listen(16).expect("listen");
    let addr = listener.local_addr().expect("addr");
    let read = Arc::new(std::sync::Mutex::new(0usize));
    let seen_total = read.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let seen_total = seen_total.clone();
            tokio::spawn(async move {
                let mut seen: Vec<u8> = Vec::new();
                let mut buf = vec![0u8; step];
                let mut head_end = None;
                loop {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                    if head_end.is_none() {
                        head_end = seen
                            .windows(4)
                            .position(|w| w == b"\r\n\r\n")
                            .map(|p| p + 4);
                    }
                    if let Some(at) = head_end {
                        let head = String::from_utf8_lossy(&seen[..at]).to_ascii_lowercase();
                        let body = seen.len() - at;
                        *seen_total.lock().expect("lock") = body;
                        let done =
                            match head.lines().find_map(|l| l.strip_prefix("content-length:")) {
                                Some(n) => body >= n.trim().parse::<usize>().unwrap_or(0),
                                None => seen.ends_with(b"\r\n0\r\n\r\n"),
                            };
                        if done {
                            let _ = socket
                                .write_all(
                                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                                )
                                .await;
                            let _ = socket.shutdown().await;
                            return;
                        }
                    }
                    tokio::time::sleep(every).await;
                }
            });
        }
    });
    (addr, read)
}

/// An h2c server whose stream windows are the protocol's smallest default
/// (64 KiB) and which never reads a POST's body nor answers it; a GET gets
/// a `200` at once.
async fn h2_that_never_reads() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
                        if req.method() == Method::POST || req.method() == Method::PUT {
                            let _held = req;
                            tokio::time::sleep(Duration::from_secs(3600)).await;
                        }
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                    });
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .initial_stream_window_size(65_535)
                        .initial_connection_window_size(65_535)
                        .serve_connection(hyper_util::rt::TokioIo::new(socket), service)
                        .await;
            });
        }
    });
    addr
}

/// An HTTP/1.1 and h2c server that answers a POST at once with a `413`
/// while it keeps its body, unread, for an hour (it neither reads nor
/// resets the upload); a GET gets a `200`.
async fn answers_early() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
                        let status = if req.method() == Method::POST {
                            tokio::spawn(async move {
                                let _held = req;
                                tokio::time::sleep(Duration::from_secs(3600)).await;
                            });
                            http::StatusCode::PAYLOAD_TOO_LARGE
                        } else {
                            http::StatusCode::OK
                        };
                        let mut res = Response::new(Full::new(Bytes::from_static(b"early")));
                        *res.status_mut() = status;
                        Ok::<_, Infallible>(res)
                    });
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(socket), service)
                .await;
            });
        }
    });
    addr
}

// ---------------------------------------------------------------------------
// The idle read timeout
// ---------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn an_upload_of_one_byte_per_just_under_the_read_timeout_is_never_cut() {
    let api = FakeApi::start().await.expect("api");
    let client = Client::builder(api.url())
        .no_timeout()
        .read_timeout(Duration::from_secs(1))
        .build()
        .expect("client");
    // 40 bytes, 990 ms apart: 39.6 s of upload, never 1 s idle.
    let (upload, dropped) = chunks(40, 1, Duration::from_millis(990), false);
    let started = Instant::now();
    let res = client
        .post("/anything/trickle")
        .body_stream(upload)
        .send()
        .await
        .expect("a live upload is not cut");
    assert_eq!(res.status(), 200);
    assert!(started.elapsed() >= Duration::from_millis(39_600));
    let seen = api.last_request("/anything/trickle").expect("sent");
    assert_eq!(seen.body.len(), 40);
    assert!(soon(&dropped).await, "the stream is dropped");
}

#[tokio::test(start_paused = true)]
async fn a_deadline_shorter_than_the_read_timeout_ends_a_live_upload_once() {
    let api = FakeApi::start().await.expect("api");
    let client = one_slot(
        Client::builder(api.url())
            .timeout(Duration::from_secs(2))
            .read_timeout(Duration::from_secs(10)),
    );
    let (upload, dropped) = chunks(1000, 8, Duration::from_millis(300), false);
    let started = Instant::now();
    let err = client
        .post("/anything/deadline")
        .body_stream(upload)
        .send()
        .await
        .expect_err("the deadline passed mid-upload");
    let took = started.elapsed();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err:?}");
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_millis(2100),
        "the deadline, not the read timeout: {took:?}"
    );
    assert!(soon(&dropped).await, "the stream is dropped");
    assert_eq!(api.hits("/anything/deadline"), 0);
    let res = client.get("/posts/1").send().await.expect("slot free");
    assert_eq!(res.status(), 200);
}

#[tokio::test(start_paused = true)]
#[ignore = "LIMITATION (documented on ClientBuilder::read_timeout): a steady streamed upload to a slow reader is cut by the read timeout: progress is a frame handed to hyper, and the last MiBs sit in the socket buffers for longer than the timeout (same on the wall clock)"]
async fn a_steady_upload_in_small_chunks_to_a_slow_reader_is_not_cut() {
    // 16 KiB read every 20 ms (800 KiB/s, its receive buffer small); 4 MiB
    // in 64 KiB chunks. The kernel takes MiBs of it at once (the send
    // buffer grows to `tcp_wmem`'s 4 MiB): hyper takes the frames, then
    // waits on a socket that drains steadily but is not writable for
    // seconds, or has taken the whole body and waits for the head, while
    // the server is still reading it. Either way no frame is taken for 1 s
    // of a live upload. (Run on the wall clock, it fails the same way:
    // cut after 1 s with ~760 KB read.)
    let (addr, read) = slow_reader(16 * 1024, Duration::from_millis(20)).await;
    let client = Client::builder(format!("http://{addr}"))
        .no_timeout()
        .read_timeout(Duration::from_secs(1))
        .build()
        .expect("client");
    let (upload, _) = chunks(64, 64 * 1024, Duration::ZERO, false);
    let res = client
        .post("/slow-reader")
        .body_stream(upload)
        .send()
        .await
        .expect("each chunk taken is progress");
    assert_eq!(res.status(), 200);
    assert!(*read.lock().expect("lock") >= 4 * 1024 * 1024);
}

/// A body in memory over 256 KiB is handed to the transport in 64 KiB
/// frames, each progress as a streamed body's are: a 24 MiB upload to a
/// steady reader, slower in all than the 10 s read timeout, is not cut
/// (the socket buffers, up to 4 MiB, drain in a few seconds). Sent whole,
/// it counted no progress and was cut 10 s after the hand-over.
#[tokio::test(start_paused = true)]
async fn a_big_body_in_memory_is_framed_so_a_steady_upload_slower_than_the_read_timeout_is_not_cut()
{
    // About 16 KiB a read (its receive buffer), every 10 ms: ~1.6 MiB/s.
    let (addr, read) = slow_reader(64 * 1024, Duration::from_millis(10)).await;
    let client = Client::builder(format!("http://{addr}"))
        .no_timeout()
        .read_timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let started = Instant::now();
    let result = client
        .post("/slow-reader")
        .body(vec![b'm'; 24 << 20])
        .send()
        .await;
    let took = started.elapsed();
    let read = *read.lock().expect("lock");
    let res = result.unwrap_or_else(|e| {
        panic!("cut after {took:?}, the server having read {read} bytes: {e:?}")
    });
    assert_eq!(res.status(), 200);
    assert!(read >= 24 << 20, "the server read the whole body: {read}");
    assert!(
        took > Duration::from_secs(10),
        "the upload took longer than the read timeout: {took:?}"
    );
}

#[tokio::test(start_paused = true)]
#[ignore = "LIMITATION (documented on ClientBuilder::read_timeout): a body in memory larger than the socket buffers, sent steadily to a reader that drains them slower than the read timeout (4 MiB at 800 KiB/s against 1 s), is cut: frames are progress when the transport takes them, not when the server reads them"]
async fn a_big_body_in_memory_sent_steadily_to_a_slow_reader_is_not_cut() {
    let (addr, read) = slow_reader(16 * 1024, Duration::from_millis(20)).await;
    let client = Client::builder(format!("http://{addr}"))
        .no_timeout()
        .read_timeout(Duration::from_secs(1))
        .build()
        .expect("client");
    let result = client
        .post("/slow-reader")
        .body(vec![b'm'; 8 * 1024 * 1024])
        .send()
        .await;
    let read = *read.lock().expect("lock");
    let res = result.unwrap_or_else(|e| {
        panic!("a live upload was cut after the server read {read} bytes: {e:?}")
    });
    assert_eq!(res.status(), 200);
}

#[tokio::test(start_paused = true)]
async fn an_http2_upload_stalled_by_flow_control_ends_in_one_timeout_and_frees_the_slot() {
    let addr = h2_that_never_reads().await;
    let client = one_slot(
        Client::builder(format!("http://{addr}"))
            .http2_prior_knowledge()
            .no_timeout()
            .read_timeout(Duration::from_secs(1)),
    );
    // 2 MiB ready at once; the server's window takes 64 KiB.
    let (upload, dropped) = chunks(32, 64 * 1024, Duration::ZERO, false);
    let started = Instant::now();
    let err = tokio::time::timeout(
        Duration::from_secs(60),
        client.post("/never-read").body_stream(upload).send(),
    )
    .await
    .expect("a stalled upload never hangs")
    .expect_err("the upload stalled");
    let took = started.elapsed();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err:?}");
    assert!(took < Duration::from_millis(1100), "{took:?}");
    assert!(soon(&dropped).await, "the stream is dropped");
    let res = client.get("/ok").send().await.expect("the slot is free");
    assert_eq!(res.status(), 200);

    // No read timeout: the deadline alone ends it, once.
    let client = one_slot(
        Client::builder(format!("http://{addr}"))
            .http2_prior_knowledge()
            .timeout(Duration::from_secs(2))
            .read_timeout(Duration::MAX),
    );
    let (upload, dropped) = chunks(32, 64 * 1024, Duration::ZERO, false);
    let started = Instant::now();
    let err = client
        .post("/never-read")
        .body_stream(upload)
        .send()
        .await
        .expect_err("the upload stalled");
    let took = started.elapsed();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err:?}");
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_millis(2100),
        "{took:?}"
    );
    assert!(soon(&dropped).await, "the stream is dropped");
    let res = client.get("/ok").send().await.expect("the slot is free");
    assert_eq!(res.status(), 200);
}

#[tokio::test(start_paused = true)]
async fn a_stalled_idempotent_upload_with_retry_on_is_one_timeout_never_an_empty_retry() {
    let api = FakeApi::start().await.expect("api");
    let backoff = tollgate_retry::Backoff::exponential(Duration::from_millis(50))
        .expect("valid")
        .jitter(tollgate_retry::Jitter::None);
    let client = one_slot(
        Client::builder(api.url())
            .no_timeout()
            .read_timeout(Duration::from_secs(1))
            .retry(
                tollgate_retry::RetryLayer::new()
                    .backoff(backoff)
                    .no_budget()
                    .max_retries(3),
            ),
    );
    let (upload, dropped) = chunks(2, 8, Duration::from_millis(100), true);
    let started = Instant::now();
    let err = client
        .put("/anything/stalled-put")
        .body_stream(upload)
        .send()
        .await
        .expect_err("stalled");
    let took = started.elapsed();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err:?}");
    assert!(
        took >= Duration::from_millis(1200) && took < Duration::from_millis(1300),
        "one read timeout after the last chunk, no retry: {took:?}"
    );
    assert_eq!(
        api.hits("/anything/stalled-put"),
        0,
        "no retry sent an empty or partial body as a whole request"
    );
    assert!(soon(&dropped).await);
}

#[tokio::test(start_paused = true)]
async fn over_http2_a_trickled_upload_lives_and_a_stalled_head_after_it_times_out() {
    let api = FakeApi::start().await.expect("api");
    let client = one_slot(
        Client::builder(api.url())
            .http2_prior_knowledge()
            .no_timeout()
            .read_timeout(Duration::from_secs(1)),
    );
    let (upload, _) = chunks(10, 1, Duration::from_millis(990), false);
    let res = client
        .post("/anything/h2-trickle")
        .body_stream(upload)
        .send()
        .await
        .expect("a live upload is not cut");
    assert_eq!(res.status(), 200);
    let seen = api.last_request("/anything/h2-trickle").expect("sent");
    assert_eq!(seen.body.len(), 10);
    assert_eq!(seen.version, http::Version::HTTP_2);

    api.inject(
        "/anything/h2-stalled-head",
        tollgate_testkit::Fault::latency(Duration::from_secs(3600)),
    );
    let started = Instant::now();
    let err = client
        .post("/anything/h2-stalled-head")
        .body_stream(chunks(3, 8, Duration::from_millis(400), false).0)
        .send()
        .await
        .expect_err("no head");
    let took = started.elapsed();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err:?}");
    assert!(
        took >= Duration::from_millis(2200) && took < Duration::from_millis(2300),
        "the wait for the head started at the upload's end (1.2 s): {took:?}"
    );
    let res = client
        .get("/posts/1")
        .send()
        .await
        .expect("the slot is free");
    assert_eq!(res.status(), 200);
}

#[tokio::test(start_paused = true)]
async fn an_upload_answered_early_is_dropped_when_the_call_ends() {
    let addr = answers_early().await;
    let mut leaked = Vec::new();
    for h2 in [false, true] {
        let builder = Client::builder(format!("http://{addr}"))
            .no_timeout()
            .read_timeout(Duration::from_secs(1));
        let client = one_slot(if h2 {
            builder.http2_prior_knowledge()
        } else {
            builder
        });
        // One chunk, then a source that never ends.
        let (upload, dropped) = chunks(1, 8, Duration::ZERO, true);
        let res = client
            .post("/early")
            .body_stream(upload)
            .send()
            .await
            .expect("the early answer is the outcome");
        assert_eq!(res.status(), 413);
        drop(res);
        let ended = Instant::now();
        // A minute after the call ended (paused time), far past its read
        // timeout of 1 s.
        while !dropped.load(Ordering::SeqCst) && ended.elapsed() < Duration::from_secs(60) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if !dropped.load(Ordering::SeqCst) {
            leaked.push(if h2 { "HTTP/2" } else { "HTTP/1.1" });
        }
        let res = client.get("/ok").send().await.expect("the slot is free");
        assert_eq!(res.status(), 200);
    }
    assert!(
        leaked.is_empty(),
        "the upload stream outlived its call over {leaked:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn an_upload_answered_early_is_dropped_with_its_streamed_response_unread() {
    let addr = answers_early().await;
    for h2 in [false, true] {
        let builder = Client::builder(format!("http://{addr}"))
            .no_timeout()
            .read_timeout(Duration::from_secs(1));
        let client = one_slot(if h2 {
            builder.http2_prior_knowledge()
        } else {
            builder
        });
        let (upload, dropped) = chunks(1, 8, Duration::ZERO, true);
        let res = client
            .post("/early")
            .body_stream(upload)
            .send_streaming()
            .await
            .expect("the early answer is the outcome");
        assert_eq!(res.status(), 413);
        drop(res);
        assert!(soon(&dropped).await, "h2 {h2}: the stream is dropped");
        let res = client.get("/ok").send().await.expect("the slot is free");
        assert_eq!(res.status(), 200);
    }
}

#[tokio::test(start_paused = true)]
async fn an_upload_whose_call_is_dropped_is_dropped_though_the_connection_holds_it() {
    // HTTP/1.1: a server that reads and waits for the body's end; HTTP/2:
    // one that never reads (the upload waits on flow control). The caller
    // gives up on the call while the connection holds the upload.
    let (h1, _) = slow_reader(16 * 1024, Duration::from_millis(20)).await;
    let h2 = h2_that_never_reads().await;
    for (addr, http2) in [(h1, false), (h2, true)] {
        let builder = Client::builder(format!("http://{addr}"))
            .no_timeout()
            .read_timeout(Duration::from_secs(3600));
        let client = one_slot(if http2 {
            builder.http2_prior_knowledge()
        } else {
            builder
        });
        let (upload, dropped) = chunks(32, 64 * 1024, Duration::ZERO, true);
        let gave_up = tokio::time::timeout(
            Duration::from_secs(2),
            client.post("/held").body_stream(upload).send(),
        )
        .await;
        assert!(
            gave_up.is_err(),
            "http2 {http2}: the call was still waiting"
        );
        assert!(
            soon(&dropped).await,
            "http2 {http2}: the stream is dropped with its call"
        );
    }
}

// ---------------------------------------------------------------------------
// Content-Length
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_caller_content_length_never_truncates_a_body_in_memory() {
    let api = FakeApi::start().await.expect("api");
    let client = Client::new(api.url()).expect("client");
    let result = client
        .post("/anything/mem-lie")
        .header("content-length", "4")
        .body("0123456789")
        .send()
        .await;
    if result.is_ok() {
        let seen = api.last_request("/anything/mem-lie").expect("sent");
        assert_eq!(
            seen.body, "0123456789",
            "the call succeeded with the body cut to the caller's length"
        );
    } else {
        assert_eq!(api.hits("/anything/mem-lie"), 0);
    }
}

#[tokio::test(start_paused = true)]
async fn a_caller_content_length_longer_than_a_body_in_memory_is_one_prompt_error() {
    let api = FakeApi::start().await.expect("api");
    let client = Client::builder(api.url())
        .read_timeout(Duration::from_secs(3600))
        .timeout(Duration::from_secs(3600))
        .build()
        .expect("client");
    let started = Instant::now();
    let result = client
        .post("/anything/mem-long")
        .header("content-length", "100")
        .body("0123456789")
        .send()
        .await;
    let took = started.elapsed();
    let err = result.expect_err("100 bytes announced, 10 sent");
    assert_eq!(api.hits("/anything/mem-long"), 0);
    assert!(
        took < Duration::from_secs(1),
        "the call waited {took:?} for bytes it would never send, then: {err:?}"
    );
    assert_ne!(err.kind(), ErrorKind::Timeout, "{err:?}");
}

#[tokio::test]
async fn transfer_encoding_with_content_length_is_held_and_never_both_on_the_wire() {
    let api = FakeApi::start().await.expect("api");
    let client = Client::new(api.url()).expect("client");
    let res = client
        .post("/anything/te-cl")
        .header("transfer-encoding", "chunked")
        .header("content-length", "10")
        .body_stream(parts(&["01234", "56789"]))
        .send()
        .await
        .expect("as declared");
    assert_eq!(res.status(), 200);
    let seen = api.last_request("/anything/te-cl").expect("sent");
    assert_eq!(seen.body, "0123456789");
    assert!(
        !(seen.headers.contains_key("transfer-encoding")
            && seen.headers.contains_key("content-length")),
        "both framings on the wire: {:?}",
        seen.headers
    );

    let err = client
        .post("/anything/te-cl-long")
        .header("transfer-encoding", "chunked")
        .header("content-length", "4")
        .body_stream(parts(&["01234", "56789"]))
        .send()
        .await
        .expect_err("longer than declared");
    assert_eq!(err.kind(), ErrorKind::Body, "{err:?}");
    assert_eq!(api.hits("/anything/te-cl-long"), 0);
}

/// A stream of one chunk, then an error.
fn failing() -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send {
    FailAfter(Some(Bytes::from_static(b"first,")))
}

struct FailAfter(Option<Bytes>);

impl Stream for FailAfter {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Poll::Ready(Some(match self.0.take() {
            Some(b) => Ok(b),
            None => Err(std::io::Error::other("attack9: the upload's source failed")),
        }))
    }
}

#[tokio::test]
async fn over_http2_a_caller_content_length_holds_and_a_match_is_sent_whole() {
    let api = FakeApi::start().await.expect("api");
    let client = Client::builder(api.url())
        .http2_prior_knowledge()
        .build()
        .expect("client");
    let res = client
        .post("/anything/h2-exact")
        .header("content-length", "10")
        .body_stream(parts(&["0123", "456789"]))
        .send()
        .await
        .expect("exact");
    assert_eq!(res.status(), 200);
    let seen = api.last_request("/anything/h2-exact").expect("sent");
    assert_eq!(seen.body, "0123456789");
    assert_eq!(seen.version, http::Version::HTTP_2);
    for (route, declared) in [
        ("/anything/h2-long", "4"),
        ("/anything/h2-short", "100"),
        ("/anything/h2-zero", "0"),
    ] {
        let err = client
            .post(route)
            .header("content-length", declared)
            .body_stream(parts(&["0123", "456789"]))
            .send()
            .await
            .expect_err(route);
        assert!(
            matches!(err.kind(), ErrorKind::Body | ErrorKind::Transport),
            "{route}: {err:?}"
        );
        assert_eq!(api.hits(route), 0, "{route}: nothing complete was sent");
    }
}

#[tokio::test]
async fn over_http2_a_failed_upload_is_a_body_error_as_over_http1() {
    let api = FakeApi::start().await.expect("api");
    let mut kinds = Vec::new();
    for h2 in [false, true] {
        let builder = Client::builder(api.url());
        let client = if h2 {
            builder.http2_prior_knowledge()
        } else {
            builder
        }
        .build()
        .expect("client");
        for (what, declared) in [("long", "4"), ("short", "100"), ("zero", "0")] {
            let err = client
                .post("/anything/h2-kinds")
                .header("content-length", declared)
                .body_stream(parts(&["0123", "456789"]))
                .send()
                .await
                .expect_err(what);
            kinds.push((h2, what, err.kind()));
        }
        let err = client
            .post("/anything/h2-kinds")
            .body_stream(failing())
            .send()
            .await
            .expect_err("the stream failed");
        kinds.push((h2, "stream error", err.kind()));
        let path = temp_path(if h2 {
            "h2-shrinks.bin"
        } else {
            "h1-shrinks.bin"
        });
        std::fs::write(&path, vec![b'x'; 200 * 1024]).expect("write");
        let part = Part::file(&path).await.expect("file");
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .expect("open")
            .set_len(1000)
            .expect("truncate");
        let result = client
            .post("/anything/h2-kinds")
            .multipart(Form::new().part("f", part))
            .send()
            .await;
        let _ = std::fs::remove_file(&path);
        kinds.push((h2, "file shrank", result.expect_err("shrank").kind()));
    }
    assert_eq!(api.hits("/anything/h2-kinds"), 0);
    let wrong: Vec<_> = kinds
        .iter()
        .filter(|(_, _, kind)| *kind != ErrorKind::Body)
        .collect();
    assert!(wrong.is_empty(), "(http2, case, kind) not Body: {wrong:?}");
}

#[tokio::test(start_paused = true)]
async fn a_declared_length_reached_by_a_stream_that_never_ends_is_one_timeout_never_a_hang() {
    // As documented: the chunk completing the declared length waits for
    // the stream's end; a stream that never ends is an idle upload.
    let api = FakeApi::start().await.expect("api");
    let client = one_slot(
        Client::builder(api.url())
            .no_timeout()
            .read_timeout(Duration::from_secs(1)),
    );
    let (upload, dropped) = chunks(2, 5, Duration::from_millis(100), true);
    let started = Instant::now();
    let err = client
        .post("/anything/held")
        .header("content-length", "10")
        .body_stream(upload)
        .send()
        .await
        .expect_err("the stream never ended");
    let took = started.elapsed();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err:?}");
    // One read timeout after the last chunk (1.2 s), or after the one
    // before it (1.1 s: the chunk completing the length is held inside the
    // body, unseen as progress; see the BROKEN test below).
    assert!(
        took >= Duration::from_millis(1100) && took < Duration::from_millis(1300),
        "{took:?}"
    );
    assert_eq!(api.hits("/anything/held"), 0, "never a complete request");
    assert!(soon(&dropped).await, "the stream is dropped");
    let res = client
        .get("/posts/1")
        .send()
        .await
        .expect("the slot is free");
    assert_eq!(res.status(), 200);
}

#[tokio::test(start_paused = true)]
async fn a_declared_length_upload_never_idle_for_the_read_timeout_is_not_cut() {
    let api = FakeApi::start().await.expect("api");
    let client = Client::builder(api.url())
        .no_timeout()
        .read_timeout(Duration::from_secs(1))
        .build()
        .expect("client");
    // Three chunks 900 ms apart, the end 900 ms after the last: never
    // 1 s without news from the stream. Without a declared length, it
    // passes.
    let (mut upload, _) = chunks(3, 5, Duration::from_millis(900), false);
    upload.slow_end = true;
    let res = client
        .post("/anything/undeclared-live")
        .body_stream(upload)
        .send()
        .await
        .expect("without a declared length, a live upload is not cut");
    assert_eq!(res.status(), 200);
    let (mut upload, _) = chunks(3, 5, Duration::from_millis(900), false);
    upload.slow_end = true;
    let res = client
        .post("/anything/held-live")
        .header("content-length", "15")
        .body_stream(upload)
        .send()
        .await
        .expect("a live upload is not cut");
    assert_eq!(res.status(), 200);
    let seen = api.last_request("/anything/held-live").expect("sent");
    assert_eq!(seen.body.len(), 15);
}

#[tokio::test]
async fn a_client_default_content_length_holds_every_streamed_call_to_it() {
    let api = FakeApi::start().await.expect("api");
    let mut defaults = http::HeaderMap::new();
    defaults.insert("content-length", HeaderValue::from_static("3"));
    let client = Client::builder(api.url())
        .default_headers(defaults)
        .build()
        .expect("client");
    let err = client
        .post("/anything/default-cl")
        .body_stream(parts(&["0123456789"]))
        .send()
        .await
        .expect_err("longer than the default length");
    assert_eq!(err.kind(), ErrorKind::Body, "{err:?}");
    assert_eq!(api.hits("/anything/default-cl"), 0);
}

// ---------------------------------------------------------------------------
// File parts
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_file_replaced_or_turned_into_a_directory_sends_what_was_opened() {
    let api = FakeApi::start().await.expect("api");
    let client = Client::new(api.url()).expect("client");
    let original: Vec<u8> = (0..70_000u32).map(|i| (i % 253) as u8).collect();
    let replaced = temp_path("replaced.bin");
    let to_dir = temp_path("to-dir.bin");
    std::fs::write(&replaced, &original).expect("write");
    std::fs::write(&to_dir, &original).expect("write");
    let replaced_part = Part::file(&replaced).await.expect("file");
    let to_dir_part = Part::file(&to_dir).await.expect("file");
    // Another file of the same length renamed over it; a directory where
    // the other was.
    let other = temp_path("other.bin");
    std::fs::write(&other, vec![b'Z'; original.len()]).expect("write");
    std::fs::rename(&other, &replaced).expect("rename");
    std::fs::remove_file(&to_dir).expect("remove");
    std::fs::create_dir(&to_dir).expect("mkdir");
    let res = client
        .post("/multipart")
        .multipart(Form::new().part("r", replaced_part).part("d", to_dir_part))
        .send()
        .await;
    let _ = std::fs::remove_file(&replaced);
    let _ = std::fs::remove_dir(&to_dir);
    let res = res.expect("sent");
    assert_eq!(res.status(), 200, "{}", res.text_lossy());
    let body: Value = res.json().expect("json");
    let parts = body["parts"].as_array().expect("parts");
    assert_eq!(parts.len(), 2, "{parts:?}");
    for part in parts {
        assert_eq!(part["size"], original.len());
        assert_eq!(part["sha256"], sha256(&original), "the file as opened");
    }
}

#[tokio::test]
async fn endless_and_device_files_are_refused() {
    for path in ["/dev/zero", "/dev/urandom"] {
        if std::path::Path::new(path).exists() {
            let err = Part::file(path).await.expect_err(path);
            assert_eq!(err.kind(), ErrorKind::InvalidRequest, "{path}");
        }
    }
}

#[tokio::test]
async fn a_file_whose_length_is_zero_but_reads_data_is_never_sent_empty() {
    let path = "/proc/self/status";
    if !std::path::Path::new(path).exists() {
        return;
    }
    let content = std::fs::read(path).expect("read");
    assert!(!content.is_empty());
    let api = FakeApi::start().await.expect("api");
    let client = Client::new(api.url()).expect("client");
    // Refused up front (a typed error) or sent whole: never sent empty.
    let part = match Part::file(path).await {
        Ok(part) => part,
        Err(e) => {
            assert_eq!(e.kind(), ErrorKind::InvalidRequest, "{e}");
            return;
        }
    };
    let result = client
        .post("/multipart")
        .multipart(Form::new().part("p", part))
        .send()
        .await;
    if let Ok(res) = result {
        let body: Value = res.json().expect("json");
        let size = body["parts"][0]["size"].as_u64().expect("size");
        assert!(
            size > 0,
            "the call succeeded with the {}-byte file sent as {size} bytes",
            content.len()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifo_without_a_writer_is_refused_not_waited_on() {
    let path = temp_path("fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&path)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !made {
        return;
    }
    let opening = tokio::spawn({
        let path = path.clone();
        async move { Part::file(&path).await.map(|_| ()) }
    });
    // Wall clock: a blocked open() sits in the blocking pool.
    let mut ended = false;
    for _ in 0..50 {
        if opening.is_finished() {
            ended = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Release a blocked open() so that nothing lingers (a non-blocking open
    // for writing: it never waits itself).
    if !ended {
        use std::os::unix::fs::OpenOptionsExt;
        let _ = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(0o4000) // O_NONBLOCK
            .open(&path);
    }
    let result = opening.await.expect("joins");
    let _ = std::fs::remove_file(&path);
    assert!(ended, "Part::file blocked on a FIFO with no writer");
    assert_eq!(
        result.expect_err("not a regular file").kind(),
        ErrorKind::InvalidRequest
    );
}
