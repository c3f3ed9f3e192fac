//! FaultProxy over loopback, in front of a FakeApi: the bytes a client sees
//! for each fault, and the counters.
//!
//! Delays run on paused time: the proxy sleeps on tokio's clock, and loopback
//! I/O is ready before a current-thread runtime idles and advances it.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tollgate::{Client, ErrorKind};
use tollgate_testkit::{FakeApi, FaultMix, FaultProxy, ProxyFault};

async fn setup() -> (FakeApi, FaultProxy) {
    let api = FakeApi::start().await.expect("start api");
    let proxy = FaultProxy::start(api.addr()).await.expect("start proxy");
    (api, proxy)
}

/// Sends one `Connection: close` request through the proxy and reads until
/// the connection ends: the bytes received and how it ended.
async fn raw(proxy: &FaultProxy, path: &str) -> (Vec<u8>, io::Result<()>) {
    let mut s = TcpStream::connect(proxy.addr()).await.expect("connect");
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    let end = s.read_to_end(&mut out).await.map(|_| ());
    (out, end)
}

/// Like [`raw`], but gives up after `wait` (of tokio time): what arrived by
/// then, and whether the connection was still open.
async fn raw_until(proxy: &FaultProxy, path: &str, wait: Duration) -> (Vec<u8>, bool) {
    let mut s = TcpStream::connect(proxy.addr()).await.expect("connect");
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    let timed_out = tokio::time::timeout(wait, s.read_to_end(&mut out))
        .await
        .is_err();
    (out, timed_out)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test]
async fn without_faults_bytes_pass_and_keep_alive_exchanges_are_counted() {
    let (api, proxy) = setup().await;
    let client = Client::new(proxy.url()).expect("client");
    for _ in 0..3 {
        let res = client.get("/posts/1").send().await.expect("send");
        assert_eq!(res.status(), 200);
        assert_eq!(res.data().expect("json")["id"], 1);
    }
    let stats = proxy.stats();
    assert_eq!(stats.connections, 1, "one pooled connection: {stats:?}");
    assert_eq!(stats.exchanges, 3);
    assert_eq!(stats.faults(), 0);
    assert_eq!(api.hits("/posts/1"), 3);
}

#[tokio::test(start_paused = true)]
async fn latency_holds_each_request_by_paused_time() {
    let (api, proxy) = setup().await;
    proxy.inject(ProxyFault::latency(Duration::from_secs(30)));
    let start = Instant::now();
    let (out, end) = raw(&proxy, "/users/1").await;
    end.expect("clean end");
    assert!(text(&out).starts_with("HTTP/1.1 200"), "{}", text(&out));
    assert!(start.elapsed() >= Duration::from_secs(30));
    assert_eq!(proxy.stats().latency, 1);
    assert_eq!(api.hits("/users/1"), 1);
}

#[tokio::test]
async fn reset_after_n_bytes_forwards_n_then_resets() {
    let (api, proxy) = setup().await;
    proxy.inject(ProxyFault::reset_after(12).times(1));
    let (out, end) = raw(&proxy, "/posts/1").await;
    assert_eq!(
        end.expect_err("reset").kind(),
        io::ErrorKind::ConnectionReset
    );
    assert_eq!(text(&out), "HTTP/1.1 200");
    assert_eq!(api.hits("/posts/1"), 1, "the upstream handled the request");
    // Used up: the next exchange passes.
    let (out, end) = raw(&proxy, "/posts/1").await;
    end.expect("clean end");
    assert!(text(&out).starts_with("HTTP/1.1 200"));
    assert_eq!(proxy.stats().resets, 1);
}

#[tokio::test]
async fn reset_after_zero_reaches_the_facade_as_a_transport_error_and_no_retry_of_a_post() {
    let (api, proxy) = setup().await;
    proxy.inject(ProxyFault::reset_after(0).times(1));
    let client = Client::builder(proxy.url())
        .retry(tollgate_retry::RetryLayer::new())
        .build()
        .expect("client");
    let err = client
        .post("/posts")
        .json(&serde_json::json!({"title": "once"}))
        .send()
        .await
        .expect_err("reset");
    assert_eq!(err.kind(), ErrorKind::Transport, "{err}");
    assert_eq!(api.hits("/posts"), 1, "the POST reached the server once");
}

#[tokio::test]
async fn close_before_response_ends_cleanly_after_the_upstream_answered() {
    let (api, proxy) = setup().await;
    proxy.inject(ProxyFault::close_before_response().times(1));
    let (out, end) = raw(&proxy, "/users/2").await;
    end.expect("a FIN, not a reset");
    assert!(out.is_empty(), "{}", text(&out));
    assert_eq!(api.hits("/users/2"), 1);
    assert_eq!(proxy.stats().closes, 1);
}

#[tokio::test(start_paused = true)]
async fn trickle_sends_n_bytes_per_interval() {
    let (_api, proxy) = setup().await;
    let (whole, _) = raw(&proxy, "/posts/1").await;
    proxy.inject(ProxyFault::trickle(100, Duration::from_secs(1)));
    let start = Instant::now();
    let (out, end) = raw(&proxy, "/posts/1").await;
    end.expect("clean end");
    // Same answer (but for its Date header), arriving in 100-byte pieces.
    assert_eq!(out.len(), whole.len());
    assert!(text(&out).contains("sunt aut facere"));
    let pieces = out.len().div_ceil(100) as u64;
    assert!(
        start.elapsed() >= Duration::from_secs(pieces - 1),
        "{:?} for {pieces} pieces",
        start.elapsed()
    );
    assert_eq!(proxy.stats().trickles, 1);
}

#[tokio::test(start_paused = true)]
async fn stall_after_forwards_exactly_n_bytes_and_keeps_the_connection() {
    let (_api, proxy) = setup().await;
    proxy.inject(ProxyFault::stall_after(5));
    let (out, open) = raw_until(&proxy, "/posts/1", Duration::from_secs(3600)).await;
    assert!(open, "still open after an hour");
    assert_eq!(text(&out), "HTTP/");
}

#[tokio::test(start_paused = true)]
async fn stall_body_sends_the_head_and_a_body_that_never_ends() {
    let (_api, proxy) = setup().await;
    proxy.inject(ProxyFault::stall_body());
    let (out, open) = raw_until(&proxy, "/posts/1", Duration::from_secs(3600)).await;
    assert!(open);
    let out = text(&out);
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.ends_with("\r\n\r\n"), "head only: {out}");
    assert!(out.to_ascii_lowercase().contains("content-length:"));
    assert_eq!(proxy.stats().stalls, 1);
}

#[tokio::test(start_paused = true)]
async fn a_stalled_body_through_the_facade_ends_in_its_deadline() {
    let (_api, proxy) = setup().await;
    proxy.inject(ProxyFault::stall_body());
    let client = Client::builder(proxy.url())
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    let start = Instant::now();
    let err = client.get("/posts/1").send().await.expect_err("stalled");
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert!(start.elapsed() >= Duration::from_secs(5));
}

#[tokio::test(start_paused = true)]
async fn blackhole_swallows_the_request_and_never_answers() {
    let (api, proxy) = setup().await;
    proxy.inject(ProxyFault::blackhole());
    let (out, open) = raw_until(&proxy, "/posts/1", Duration::from_secs(3600)).await;
    assert!(open && out.is_empty());
    assert_eq!(api.total_hits(), 0, "the upstream never saw it");
    assert_eq!(proxy.stats().blackholes, 1);

    let client = Client::builder(proxy.url())
        .timeout(Duration::from_secs(2))
        .build()
        .expect("client");
    let err = client.get("/posts/1").send().await.expect_err("blackholed");
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert_eq!(api.total_hits(), 0);
}

#[tokio::test]
async fn an_unreachable_upstream_resets_the_client() {
    let closed = {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        l.local_addr().expect("addr")
    };
    let proxy = FaultProxy::start(closed).await.expect("proxy");
    let (out, end) = raw(&proxy, "/").await;
    assert!(out.is_empty());
    assert_eq!(
        end.expect_err("reset").kind(),
        io::ErrorKind::ConnectionReset
    );
    assert_eq!(proxy.stats().upstream_failures, 1);
}

#[tokio::test]
async fn a_seeded_mix_fires_at_its_rate_and_each_fault_is_one_failed_call() {
    let (api, proxy) = setup().await;
    proxy.mix(FaultMix::new(11).with(ProxyFault::reset_after(0), 0.1));
    let client = Client::new(proxy.url()).expect("client");
    let mut failed = 0;
    for _ in 0..300 {
        match client.get("/users/3").send().await {
            Ok(res) => assert_eq!(res.status(), 200),
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::Transport, "{e}");
                failed += 1;
            }
        }
    }
    let stats = proxy.stats();
    assert_eq!(stats.exchanges, 300, "{stats:?}");
    assert_eq!(stats.resets, failed, "{stats:?}");
    assert!((10..=60).contains(&failed), "about 10% of 300: {failed}");
    assert_eq!(api.hits("/users/3"), 300);
    // Every reset cost a connection; the rest were reused.
    assert_eq!(stats.connections, failed + 1, "{stats:?}");

    // The same seed, one call at a time, gives the same faults.
    let (_api2, proxy2) = setup().await;
    proxy2.mix(FaultMix::new(11).with(ProxyFault::reset_after(0), 0.1));
    let client2 = Client::new(proxy2.url()).expect("client");
    for _ in 0..300 {
        let _ = client2.get("/users/3").send().await;
    }
    assert_eq!(proxy2.stats().resets, failed);
}

#[tokio::test]
async fn clear_faults_lets_traffic_through_again() {
    let (_api, proxy) = setup().await;
    proxy.inject(ProxyFault::close_before_response());
    proxy.mix(FaultMix::new(1).with(ProxyFault::blackhole(), 1.0));
    assert!(raw(&proxy, "/users/1").await.0.is_empty());
    proxy.clear_faults();
    let (out, end) = raw(&proxy, "/users/1").await;
    end.expect("clean");
    assert!(text(&out).starts_with("HTTP/1.1 200"));
}
