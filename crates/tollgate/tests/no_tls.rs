//! Without a TLS feature (`default-features = false`), an `https` URL is
//! refused, never sent in cleartext to port 443 with its `Authorization`.
//! Run with `cargo test -p tollgate --no-default-features`.
#![cfg(not(feature = "rustls"))]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tollgate::{Client, ErrorKind};

/// A TCP listener on loopback that counts the bytes anyone sends it.
async fn listener() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let received = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&received);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let count = Arc::clone(&count);
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = stream.read(&mut buf).await {
                    count.fetch_add(n, Ordering::SeqCst);
                }
            });
        }
    });
    (addr, received)
}

#[tokio::test]
async fn an_https_base_url_is_refused_at_build_without_tls() {
    let (addr, received) = listener().await;
    let built = Client::builder(format!("https://{addr}"))
        .default_header("authorization", "Bearer s3cret")
        .build();
    let err = match built {
        Ok(client) => {
            let sent = client.get("/posts/1").send().await;
            panic!(
                "built an https client without TLS; the call gave {sent:?} and the server \
                 received {} cleartext bytes",
                received.load(Ordering::SeqCst)
            );
        }
        Err(e) => e,
    };
    assert_eq!(err.kind(), ErrorKind::Builder);
    let text = err.to_string();
    assert!(text.contains("https") && text.contains("rustls"), "{text}");
    assert!(!text.contains("s3cret"), "{text}");
    assert_eq!(received.load(Ordering::SeqCst), 0);
    // `Client::new` is the same build.
    assert_eq!(
        Client::new("https://example.com")
            .expect_err("https")
            .kind(),
        ErrorKind::Builder
    );
}

#[tokio::test]
async fn an_absolute_https_url_per_request_is_refused_without_tls() {
    let (addr, received) = listener().await;
    let client = Client::builder(format!("http://{addr}"))
        .timeout(std::time::Duration::from_secs(5))
        .build()
        .expect("http is fine");
    for url in [
        format!("https://{addr}/posts/1"),
        "https://example.com/posts/1".to_owned(),
    ] {
        let err = client.get(url.as_str()).send().await.expect_err("https");
        assert!(
            matches!(
                err.kind(),
                ErrorKind::InvalidUrl | ErrorKind::InvalidRequest
            ),
            "{url}: {err:?}"
        );
    }
    assert_eq!(received.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_custom_transport_may_take_https_urls() {
    // The transport decides how to speak to the server: the check is the
    // built-in transport's.
    let stub = tower::service_fn(|req: http::Request<tollgate::RequestBody>| async move {
        assert_eq!(req.uri().scheme_str(), Some("https"));
        Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(
            bytes::Bytes::from_static(b"{}"),
        )))
    });
    let client = Client::builder("https://api.example.com")
        .transport(stub)
        .build()
        .expect("a custom transport may speak TLS itself");
    let res = client.get("/x").send().await.expect("answered");
    assert_eq!(res.status(), 200);
}

#[cfg(feature = "auth")]
#[tokio::test]
async fn an_https_token_url_is_refused_at_build_without_tls() {
    let err = Client::builder("http://127.0.0.1:1")
        .oauth2_client_credentials("https://auth.example.com/token", "id", "s3cret")
        .build()
        .expect_err("the client secret would go out in cleartext");
    assert_eq!(err.kind(), ErrorKind::Builder);
    assert!(err.to_string().contains("token URL"), "{err}");
    assert!(!format!("{err:?}").contains("s3cret"));
}
