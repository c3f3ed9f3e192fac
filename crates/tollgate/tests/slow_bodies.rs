//! Upstreams that stall: a body that stops or trickles after the headers, a
//! head that never comes, a TLS handshake that never ends. Each call still
//! ends, with a typed error, even with `no_timeout()`: the read timeout bounds
//! every wait for data, the connect timeout the whole connection set-up.
//! Paused time, real loopback sockets.

use std::time::Duration;

use tokio::time::Instant;
use tollgate::{ApiResponse, Client, Error, ErrorKind};
use tollgate_testkit::{FakeApi, Fault};

/// Runs a call, failing the test if it has not ended after a (paused) hour:
/// a call that never ends is the defect under test.
async fn ends<F: std::future::Future<Output = Result<ApiResponse, Error>>>(
    call: F,
) -> (Result<ApiResponse, Error>, Duration) {
    let started = Instant::now();
    let result = tokio::time::timeout(Duration::from_secs(3600), call)
        .await
        .expect("the call never ended");
    (result, started.elapsed())
}

#[tokio::test(start_paused = true)]
async fn a_body_that_stalls_after_the_headers_times_out_without_a_deadline() {
    let api = FakeApi::start().await.expect("start");
    api.inject("/posts/1", Fault::stall_body());
    let client = Client::builder(api.url())
        .no_timeout()
        .build()
        .expect("builds");
    let (result, waited) = ends(client.get("/posts/1").send()).await;
    let err = result.expect_err("the body never ends");
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err:?}");
    assert!(err.to_string().contains("read timeout"), "{err}");
    // The default read timeout, 30 s.
    assert!(
        waited >= Duration::from_secs(30) && waited < Duration::from_secs(31),
        "{waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn the_read_timeout_bounds_each_wait_not_the_whole_body() {
    let api = FakeApi::start().await.expect("start");
    let client = Client::builder(api.url())
        .no_timeout()
        .read_timeout(Duration::from_secs(1))
        .build()
        .expect("builds");

    // A piece every 500 ms: slow, but never a second without data.
    api.inject(
        "/posts/1",
        Fault::trickle_body(Duration::from_millis(500)).times(1),
    );
    let (result, waited) = ends(client.get("/posts/1").send()).await;
    let res = result.expect("a trickle within the read timeout is read whole");
    assert_eq!(res.data().expect("json")["id"], 1);
    assert!(waited > Duration::from_secs(5), "{waited:?}");

    // A piece every 2 s: the first wait passes the read timeout.
    api.inject(
        "/posts/2",
        Fault::trickle_body(Duration::from_secs(2)).times(1),
    );
    let (result, waited) = ends(client.get("/posts/2").send()).await;
    let err = result.expect_err("too slow");
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err:?}");
    assert!(waited < Duration::from_secs(2), "{waited:?}");

    // The total deadline still bounds a trickle that never pauses long.
    let bounded = Client::builder(api.url())
        .timeout(Duration::from_secs(3))
        .read_timeout(Duration::from_secs(1))
        .build()
        .expect("builds");
    api.inject(
        "/posts/3",
        Fault::trickle_body(Duration::from_millis(500)).times(1),
    );
    let (result, waited) = ends(bounded.get("/posts/3").send()).await;
    assert_eq!(result.expect_err("deadline").kind(), ErrorKind::Timeout);
    assert!(waited < Duration::from_secs(4), "{waited:?}");
}

#[tokio::test(start_paused = true)]
async fn a_head_that_never_comes_times_out_by_the_read_timeout() {
    let api = FakeApi::start().await.expect("start");
    api.inject("/posts/1", Fault::latency(Duration::from_secs(3600)));
    let client = Client::builder(api.url())
        .no_timeout()
        .read_timeout(Duration::from_secs(2))
        .build()
        .expect("builds");
    let (result, waited) = ends(client.get("/posts/1").send()).await;
    let err = result.expect_err("no head");
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err:?}");
    assert!(
        waited >= Duration::from_secs(2) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    // `Duration::MAX` means no read timeout: the total deadline ends it.
    let unbounded = Client::builder(api.url())
        .timeout(Duration::from_secs(60))
        .read_timeout(Duration::MAX)
        .build()
        .expect("builds");
    let (result, waited) = ends(unbounded.get("/posts/1").send()).await;
    assert_eq!(result.expect_err("deadline").kind(), ErrorKind::Timeout);
    assert!(waited >= Duration::from_secs(60), "{waited:?}");
}

#[cfg(feature = "limit")]
#[tokio::test(start_paused = true)]
async fn a_stalled_body_gives_back_its_pool_slot_at_the_read_timeout() {
    let api = FakeApi::start().await.expect("start");
    api.inject("/posts/1", Fault::stall_body().times(1));
    let client = Client::builder(api.url())
        .no_timeout()
        .read_timeout(Duration::from_secs(5))
        .concurrency_limit(tollgate_limit::ConcurrencyLimitLayer::new(1))
        .build()
        .expect("builds");
    let stalled = tokio::spawn({
        let client = client.clone();
        async move { client.get("/posts/1").send().await }
    });
    tokio::time::sleep(Duration::from_millis(10)).await;
    let (result, waited) = ends(client.get("/posts/2").send()).await;
    assert_eq!(result.expect("the slot came back").status(), 200);
    assert!(waited < Duration::from_secs(6), "{waited:?}");
    let err = stalled.await.expect("joined").expect_err("stalled");
    assert_eq!(err.kind(), ErrorKind::Timeout);
}

/// Read-timeout settings are checked like the others.
#[tokio::test]
async fn read_timeout_at_zero_is_refused() {
    let err = Client::builder("http://127.0.0.1:1")
        .read_timeout(Duration::ZERO)
        .build()
        .expect_err("zero");
    assert_eq!(err.kind(), ErrorKind::Builder);
}

#[cfg(feature = "rustls")]
#[tokio::test(start_paused = true)]
async fn the_connect_timeout_bounds_a_tls_handshake_that_never_ends() {
    // A TCP server that accepts and then says nothing: no ServerHello.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let client = Client::builder(format!("https://{addr}"))
        .no_timeout()
        .read_timeout(Duration::MAX)
        .connect_timeout(Duration::from_secs(2))
        .build()
        .expect("builds");
    let (result, waited) = ends(client.get("/posts/1").send()).await;
    let err = result.expect_err("no handshake");
    assert_eq!(err.kind(), ErrorKind::Connect, "{err:?}");
    assert!(err.to_string().contains("connect timeout"), "{err}");
    assert!(
        waited >= Duration::from_secs(2) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    server.abort();
}

#[cfg(feature = "cache")]
#[tokio::test(start_paused = true)]
async fn coalesced_waiters_on_a_stalled_body_end_at_the_read_timeout() {
    let api = FakeApi::start().await.expect("start");
    api.inject("/posts/1", Fault::stall_body().times(1));
    let client = Client::builder(api.url())
        .no_timeout()
        .read_timeout(Duration::from_secs(2))
        .cache(tollgate_cache::CacheLayer::new(Duration::from_secs(60)))
        .build()
        .expect("builds");
    let calls: Vec<_> = (0..3)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { ends(client.get("/posts/1").send()).await })
        })
        .collect();
    for call in calls {
        let (result, waited) = call.await.expect("joined");
        // The leader times out; a waiter either shares that outcome or
        // makes its own request, which the fault no longer spoils.
        if let Err(e) = result {
            assert_eq!(e.kind(), ErrorKind::Timeout, "{e:?}");
        }
        assert!(waited < Duration::from_secs(5), "{waited:?}");
    }
}
