//! HTTPS through rustls over loopback: ALPN picks HTTP/2 when the server
//! offers it and HTTP/1.1 otherwise; an untrusted certificate is a connect
//! error. The server is a real TLS listener on 127.0.0.1 with a certificate
//! made for the test.
#![cfg(all(feature = "rustls", feature = "http2"))]

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Response, Version};
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tollgate::{Client, ErrorKind};

struct TlsServer {
    addr: SocketAddr,
    root: CertificateDer<'static>,
    /// The certificate in PEM, as a CA bundle file holds it.
    pem: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves `{"version": "..."}` over TLS, offering these ALPN protocols.
async fn tls_server(alpn: &[&[u8]]) -> TlsServer {
    let certified =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).expect("certificate");
    let cert = certified.cert.der().clone();
    let pem = certified.cert.pem();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        certified.signing_key.serialize_der(),
    ));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)
        .expect("server config");
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(
                    |req: http::Request<hyper::body::Incoming>| async move {
                        let body = format!("{{\"version\": \"{:?}\"}}", req.version());
                        Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(
                            body,
                        ))))
                    },
                );
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    TlsServer {
        addr,
        root: cert,
        pem,
        task,
    }
}

fn client_for(server: &TlsServer) -> Client {
    Client::builder(format!("https://{}", server.addr))
        .add_root_certificate_der(server.root.to_vec())
        .build()
        .expect("client")
}

#[tokio::test]
async fn alpn_negotiates_http2_when_offered() {
    let server = tls_server(&[b"h2", b"http/1.1"]).await;
    let res = client_for(&server)
        .get("/")
        .send()
        .await
        .expect("https works");
    assert_eq!(res.status(), 200);
    assert_eq!(res.version(), Version::HTTP_2);
    assert_eq!(res.data().expect("json")["version"], "HTTP/2.0");
}

#[tokio::test]
async fn http1_is_used_when_the_server_offers_only_http1() {
    let server = tls_server(&[b"http/1.1"]).await;
    let res = client_for(&server)
        .get("/")
        .send()
        .await
        .expect("https works");
    assert_eq!(res.version(), Version::HTTP_11);
    assert_eq!(res.data().expect("json")["version"], "HTTP/1.1");
}

#[tokio::test]
async fn an_untrusted_certificate_is_a_connect_error() {
    let server = tls_server(&[b"h2", b"http/1.1"]).await;
    let client = Client::builder(format!("https://{}", server.addr))
        .build()
        .expect("client");
    let err = client
        .get("/")
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
    let bundle = format!("# test CA\n{}\n", server.pem);
    let client = Client::builder(format!("https://{}", server.addr))
        .add_root_certificates_pem(bundle.as_bytes())
        .expect("pem")
        .build()
        .expect("client");
    let res = client
        .get("/")
        .send()
        .await
        .expect("trusted through the PEM");
    assert_eq!(res.status(), 200);
    for bad in [
        "".to_owned(),
        "no certificate here".to_owned(),
        "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n".to_owned(),
    ] {
        let err = Client::builder(format!("https://{}", server.addr))
            .add_root_certificates_pem(bad.as_bytes())
            .expect_err("refused");
        assert_eq!(err.kind(), ErrorKind::Builder, "{bad:?}: {err}");
    }
}
