//! One reading of transport failures, and of errors shared by many callers:
//! the facade's `ErrorKind` and the retry layer's decision read the same
//! error the same way (`tollgate_core::TransportFailure`), over loopback.
#![cfg(all(
    feature = "retry",
    feature = "auth",
    feature = "cache",
    feature = "batch",
    feature = "rustls"
))]

use std::error::Error as _;
use std::time::Duration;

use tollgate::{BatchSpec, Client, ErrorKind};
use tollgate_auth::{token_fn, Token};
use tollgate_cache::{CacheLayer, CoalescedError};
use tollgate_core::TransportFailure;
use tollgate_retry::{RetryLayer, RetryReason};
use tollgate_testkit::{FakeApi, Fault, FaultProxy, ProxyFault};

/// A client with one attempt per call: the body is read inside the attempt
/// (as with retry on), and nothing is retried.
fn one_attempt(base: String) -> Client {
    Client::builder(base)
        .retry(RetryLayer::new().max_retries(0))
        .read_timeout(Duration::from_secs(1))
        .build()
        .expect("client")
}

/// A port nothing listens on.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

/// The facade's error for `GET path`, and how the retry layer and the core
/// read the error underneath it.
async fn read(
    client: &Client,
    path: &str,
) -> (ErrorKind, Option<TransportFailure>, Option<RetryReason>) {
    let err = client.get(path).send().await.expect_err("fails");
    let source = err.source().expect("the stack's error");
    (
        err.kind(),
        TransportFailure::classify(source),
        tollgate_retry::error_kind(source),
    )
}

#[tokio::test]
async fn each_transport_failure_is_read_the_same_by_retry_and_the_facade() {
    let api = FakeApi::start().await.expect("fake api");
    let proxy = FaultProxy::start(api.addr()).await.expect("proxy");
    let through_proxy = one_attempt(proxy.url());

    // Refused: never sent, retried whatever the method.
    let refused = one_attempt(format!("http://127.0.0.1:{}", closed_port()));
    assert_eq!(
        read(&refused, "/posts/1").await,
        (
            ErrorKind::Connect,
            Some(TransportFailure::Connect),
            Some(RetryReason::Connect)
        )
    );

    // Closed before the response: maybe processed.
    proxy.inject(ProxyFault::close_before_response().times(1));
    assert_eq!(
        read(&through_proxy, "/posts/1").await,
        (
            ErrorKind::Transport,
            Some(TransportFailure::ResetBeforeResponse),
            Some(RetryReason::Reset)
        )
    );

    // Reset while the body is read (the head is well under 400 bytes, the
    // comments are kilobytes).
    proxy.inject(ProxyFault::reset_after(400).times(1));
    assert_eq!(
        read(&through_proxy, "/comments").await,
        (
            ErrorKind::Body,
            Some(TransportFailure::ResetMidBody),
            Some(RetryReason::Reset)
        )
    );

    // A body that stops: the read timeout ends it.
    proxy.inject(ProxyFault::stall_body().times(1));
    assert_eq!(
        read(&through_proxy, "/comments").await,
        (
            ErrorKind::Timeout,
            Some(TransportFailure::Timeout),
            Some(RetryReason::Timeout)
        )
    );

    // TLS spoken to a plain HTTP server: never sent, and not retried.
    let tls = one_attempt(format!("https://{}", api.addr()));
    assert_eq!(
        read(&tls, "/posts/1").await,
        (ErrorKind::Connect, Some(TransportFailure::Tls), None)
    );
}

#[tokio::test]
async fn a_refresh_failure_shared_by_two_callers_is_an_auth_error_for_both() {
    let api = FakeApi::start().await.expect("fake api");
    let client = Client::builder(api.url())
        .token_source(token_fn(|| async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            Err::<Token, _>("the token endpoint is down".into())
        }))
        .build()
        .expect("client");
    let (a, b) = tokio::join!(client.get("/posts/1").send(), client.get("/posts/2").send());
    for err in [a.expect_err("no token"), b.expect_err("no token")] {
        assert_eq!(err.kind(), ErrorKind::Auth, "{err}");
        let shared = tollgate_core::chain(&err)
            .find_map(|e| e.downcast_ref::<tollgate_core::SharedError>())
            .expect("the refresh's error, shared");
        assert_eq!(shared.to_string(), "the token endpoint is down");
    }
    assert_eq!(api.hits("/posts/1") + api.hits("/posts/2"), 0);
}

#[tokio::test]
async fn a_coalesced_cache_miss_keeps_its_transport_error_kind() {
    let api = FakeApi::start().await.expect("fake api");
    api.inject(
        "/posts/3",
        Fault::drop_connection()
            .delay(Duration::from_millis(100))
            .times(1),
    );
    let client = Client::builder(api.url())
        .cache(CacheLayer::new(Duration::from_secs(60)))
        .build()
        .expect("client");
    let calls: Vec<_> = (0..4)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { client.get("/posts/3").send().await })
        })
        .collect();
    let mut coalesced = 0;
    for call in calls {
        let err = call
            .await
            .expect("task")
            .expect_err("the upstream dropped it");
        assert_eq!(err.kind(), ErrorKind::Transport, "{err}");
        let source = err.source().expect("source");
        assert_eq!(
            TransportFailure::classify(source),
            Some(TransportFailure::ResetBeforeResponse)
        );
        if tollgate_core::chain(source).any(|e| e.is::<CoalescedError>()) {
            coalesced += 1;
        }
    }
    assert!(coalesced >= 1, "the waiters got the leader's error, shared");
    assert_eq!(api.hits("/posts/3"), 1);
}

#[tokio::test]
async fn a_failed_batch_is_a_connect_error_for_every_caller() {
    let client = Client::builder(format!("http://127.0.0.1:{}", closed_port()))
        .build()
        .expect("client");
    let metadata = client.batched(BatchSpec::get("/metadata").max_batch(2));
    let (a, b) = tokio::join!(metadata.load(1), metadata.load(2));
    for err in [a.expect_err("refused"), b.expect_err("refused")] {
        assert_eq!(err.kind(), ErrorKind::Connect, "{err}");
    }
}
