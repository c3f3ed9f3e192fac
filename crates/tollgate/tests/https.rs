//! HTTPS through rustls over loopback: ALPN picks HTTP/2 when the server
//! offers it and HTTP/1.1 otherwise; an untrusted certificate is a connect
//! error. The server is a FakeApi behind the testkit's `TlsFront`, a real TLS
//! listener on 127.0.0.1 with a certificate made for the test.
#![cfg(all(feature = "rustls", feature = "http2"))]

use http::Version;
use tollgate::{Client, ErrorKind};
use tollgate_testkit::{FakeApi, TlsFront};

/// A FakeApi behind a TLS front offering these ALPN protocols.
struct TlsServer {
    api: FakeApi,
    front: TlsFront,
}

async fn tls_server(alpn: &[&[u8]]) -> TlsServer {
    let api = FakeApi::start().await.expect("api");
    let front = TlsFront::builder(api.addr())
        .alpn(alpn)
        .start()
        .await
        .expect("tls front");
    TlsServer { api, front }
}

fn client_for(server: &TlsServer) -> Client {
    Client::builder(server.front.url())
        .add_root_certificate_der(server.front.root().to_vec())
        .build()
        .expect("client")
}

#[tokio::test]
async fn alpn_negotiates_http2_when_offered() {
    let server = tls_server(&[b"h2", b"http/1.1"]).await;
    let res = client_for(&server)
        .get("/posts/1")
        .send()
        .await
        .expect("https works");
    assert_eq!(res.status(), 200);
    assert_eq!(res.version(), Version::HTTP_2);
    let seen = server.api.last_request("/posts/1").expect("reached");
    assert_eq!(seen.version, Version::HTTP_2);
}

#[tokio::test]
async fn http1_is_used_when_the_server_offers_only_http1() {
    let server = tls_server(&[b"http/1.1"]).await;
    let res = client_for(&server)
        .get("/posts/1")
        .send()
        .await
        .expect("https works");
    assert_eq!(res.version(), Version::HTTP_11);
    let seen = server.api.last_request("/posts/1").expect("reached");
    assert_eq!(seen.version, Version::HTTP_11);
}

#[tokio::test]
async fn an_untrusted_certificate_is_a_connect_error() {
    let server = tls_server(&[b"h2", b"http/1.1"]).await;
    let client = Client::builder(server.front.url()).build().expect("client");
    let err = client
        .get("/posts/1")
        .send()
        .await
        .expect_err("self-signed is not trusted");
    assert_eq!(err.kind(), ErrorKind::Connect, "{err:?}");
}

#[tokio::test]
async fn an_invalid_root_certificate_is_a_builder_error() {
    let err = Client::builder("https://127.0.0.1:1")
        .add_root_certificate_der(b"not a certificate".to_vec())
        .build()
        .expect_err("garbage root");
    assert_eq!(err.kind(), ErrorKind::Builder);
}

#[tokio::test]
async fn roots_from_a_pem_bundle_are_trusted_and_a_bad_bundle_is_a_builder_error() {
    let server = tls_server(&[b"http/1.1"]).await;
    // A bundle: some text around the certificate, as CA files have.
    let bundle = format!("# test CA\n{}\n", server.front.root_pem());
    let client = Client::builder(server.front.url())
        .add_root_certificates_pem(bundle.as_bytes())
        .expect("pem")
        .build()
        .expect("client");
    let res = client
        .get("/posts/1")
        .send()
        .await
        .expect("trusted through the PEM");
    assert_eq!(res.status(), 200);
    for bad in [
        "".to_owned(),
        "no certificate here".to_owned(),
        "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n".to_owned(),
    ] {
        let err = Client::builder(server.front.url())
            .add_root_certificates_pem(bad.as_bytes())
            .expect_err("refused");
        assert_eq!(err.kind(), ErrorKind::Builder, "{bad:?}: {err}");
    }
}
