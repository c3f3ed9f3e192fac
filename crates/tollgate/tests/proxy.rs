//! Proxies and TLS options, over loopback: the testkit's HTTP (CONNECT)
//! and SOCKS5 proxies in front of a `FakeApi`, either plain or behind a TLS
//! front (the testkit's `TlsFront`); mutual TLS
//! against a front that requires a client certificate; a caller's own
//! rustls config; the platform's roots. (TLS options live in this file too:
//! one test binary instead of two.)
#![cfg(all(feature = "rustls", feature = "http2"))]

use std::net::SocketAddr;
use std::sync::Arc;

use http::Version;
use rustls::pki_types::CertificateDer;
use tollgate::{Client, ErrorKind, NoProxy, Proxy};
use tollgate_testkit::{FakeApi, HttpProxy, Socks5Proxy, TlsFront};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A TLS front for `upstream` offering `alpn`; `client_ca`: the root a
/// client certificate must chain to, if one is required.
async fn tls_front(
    upstream: SocketAddr,
    alpn: &[&[u8]],
    client_ca: Option<CertificateDer<'static>>,
) -> TlsFront {
    let mut builder = TlsFront::builder(upstream).alpn(alpn);
    if let Some(ca) = client_ca {
        builder = builder.client_ca(ca);
    }
    builder.start().await.expect("tls front")
}

const H1_H2: &[&[u8]] = &[b"h2", b"http/1.1"];

// ---- proxies --------------------------------------------------------------

#[tokio::test]
async fn plain_http_goes_to_an_http_proxy_in_absolute_form_with_its_credentials() {
    let api = FakeApi::start().await.expect("api");
    let proxy = HttpProxy::start().await.expect("proxy");
    proxy.require_basic_auth("me", "pw");
    let client = Client::builder(api.url())
        .proxy(
            Proxy::all(proxy.url())
                .expect("proxy")
                .basic_auth("me", "pw"),
        )
        .build()
        .expect("client");
    let res = client
        .get("/posts/1")
        .send()
        .await
        .expect("through the proxy");
    assert_eq!(res.status(), 200);
    assert_eq!(proxy.forwarded(), vec![format!("{}/posts/1", api.url())]);
    assert_eq!(
        proxy.proxy_authorizations(),
        vec![Some("Basic bWU6cHc=".to_owned())]
    );
    let seen = api.last_request("/posts/1").expect("reached the origin");
    assert_eq!(seen.header("proxy-authorization"), None);
}

#[tokio::test]
async fn https_goes_through_connect_and_the_proxy_sees_no_origin_credential() {
    let api = FakeApi::start().await.expect("api");
    api.require_bearer("origin-s3cret");
    let front = tls_front(api.addr(), H1_H2, None).await;
    let proxy = HttpProxy::start().await.expect("proxy");
    proxy.require_basic_auth("me", "pw");
    let client = Client::builder(front.url())
        .add_root_certificate_der(front.root().to_vec())
        .bearer_auth("origin-s3cret")
        .proxy(
            Proxy::all(proxy.url())
                .expect("proxy")
                .basic_auth("me", "pw"),
        )
        .build()
        .expect("client");
    let res = client
        .get("/posts/1")
        // A caller's own Proxy-Authorization would reach the origin through
        // the tunnel: it is taken off.
        .header("proxy-authorization", "Basic bGVhazpsZWFr")
        .send()
        .await
        .expect("through the tunnel");
    assert_eq!(res.status(), 200);
    assert_eq!(res.version(), Version::HTTP_2, "ALPN inside the tunnel");
    assert_eq!(proxy.connect_targets(), vec![front.addr().to_string()]);
    assert!(proxy.forwarded().is_empty());
    assert_eq!(
        proxy.proxy_authorizations(),
        vec![Some("Basic bWU6cHc=".to_owned())]
    );
    for head in proxy.heads() {
        assert!(!head.contains("origin-s3cret"), "{head}");
        assert!(!head.to_ascii_lowercase().contains("authorization: bearer"));
    }
    let seen = api.last_request("/posts/1").expect("reached the origin");
    assert_eq!(seen.header("authorization"), Some("Bearer origin-s3cret"));
    assert_eq!(seen.header("proxy-authorization"), None);
}

#[tokio::test]
async fn an_https_proxy_is_spoken_to_over_tls() {
    let api = FakeApi::start().await.expect("api");
    let proxy = HttpProxy::start().await.expect("proxy");
    let proxy_front = tls_front(proxy.addr(), &[], None).await;
    let origin_front = tls_front(api.addr(), H1_H2, None).await;
    // One client for both: plain HTTP forwarded, HTTPS tunnelled, each over
    // TLS to the proxy (TLS in TLS for the second).
    for (base, root) in [
        (api.url(), proxy_front.root().clone()),
        (origin_front.url(), origin_front.root().clone()),
    ] {
        let client = Client::builder(&base)
            .add_root_certificate_der(proxy_front.root().to_vec())
            .add_root_certificate_der(root.to_vec())
            .proxy(Proxy::all(proxy_front.url()).expect("proxy"))
            .build()
            .expect("client");
        let res = client
            .get("/posts/1")
            .send()
            .await
            .expect("via https proxy");
        assert_eq!(res.status(), 200, "{base}");
    }
    assert_eq!(proxy.forwarded().len(), 1);
    assert_eq!(
        proxy.connect_targets(),
        vec![origin_front.addr().to_string()]
    );
}

#[tokio::test]
async fn socks5_without_and_with_credentials() {
    let api = FakeApi::start().await.expect("api");
    let socks = Socks5Proxy::start().await.expect("socks");
    let client = Client::builder(api.url())
        .proxy(Proxy::all(socks.url()).expect("proxy"))
        .build()
        .expect("client");
    assert_eq!(
        client.get("/posts/1").send().await.expect("socks").status(),
        200
    );
    assert_eq!(socks.targets(), vec![api.addr().to_string()]);

    let socks = Socks5Proxy::start().await.expect("socks");
    socks.require_auth("sockuser", "sockpw");
    let url = socks
        .url()
        .replace("socks5://", "socks5://sockuser:sockpw@");
    let client = Client::builder(api.url())
        .proxy(Proxy::all(url).expect("proxy"))
        .build()
        .expect("client");
    assert_eq!(
        client
            .get("/posts/1")
            .send()
            .await
            .expect("socks auth")
            .status(),
        200
    );
    assert_eq!(
        socks.credentials(),
        vec![("sockuser".to_owned(), "sockpw".to_owned())]
    );
    let seen = api.last_request("/posts/1").expect("origin");
    assert_eq!(seen.header("proxy-authorization"), None);

    let client = Client::builder(api.url())
        .proxy(
            Proxy::all(socks.url())
                .expect("proxy")
                .basic_auth("sockuser", "wrong-pw"),
        )
        .build()
        .expect("client");
    let err = client.get("/posts/1").send().await.expect_err("refused");
    assert_eq!(err.kind(), ErrorKind::Proxy, "{err:?}");
    assert!(!format!("{err} {err:?}").contains("wrong-pw"));
}

#[tokio::test]
async fn socks5h_leaves_resolving_the_name_to_the_proxy_and_socks5_does_not() {
    let api = FakeApi::start().await.expect("api");
    let base = format!("http://localhost:{}", api.addr().port());
    let remote = Socks5Proxy::start().await.expect("socks");
    let client = Client::builder(&base)
        .proxy(Proxy::all(remote.url().replace("socks5:", "socks5h:")).expect("proxy"))
        .build()
        .expect("client");
    assert_eq!(
        client
            .get("/posts/1")
            .send()
            .await
            .expect("socks5h")
            .status(),
        200
    );
    assert_eq!(
        remote.targets(),
        vec![format!("localhost:{}", api.addr().port())]
    );

    let local = Socks5Proxy::start().await.expect("socks");
    let client = Client::builder(&base)
        .proxy(Proxy::all(local.url()).expect("proxy"))
        .build()
        .expect("client");
    assert_eq!(
        client
            .get("/posts/1")
            .send()
            .await
            .expect("socks5")
            .status(),
        200
    );
    assert_eq!(local.targets(), vec![api.addr().to_string()]);
}

#[tokio::test]
async fn a_destination_in_no_proxy_goes_direct() {
    let api = FakeApi::start().await.expect("api");
    let proxy = HttpProxy::start().await.expect("proxy");
    let client = Client::builder(api.url())
        .proxy(
            Proxy::all(proxy.url())
                .expect("proxy")
                .no_proxy(NoProxy::from_string("example.com, 127.0.0.1")),
        )
        .build()
        .expect("client");
    assert_eq!(
        client
            .get("/posts/1")
            .send()
            .await
            .expect("direct")
            .status(),
        200
    );
    assert_eq!(proxy.connections(), 0);
    assert_eq!(api.hits("/posts/1"), 1);
}

#[tokio::test]
async fn proxy_from_env_with_reads_the_environment_it_is_given() {
    let api = FakeApi::start().await.expect("api");
    let proxy = HttpProxy::start().await.expect("proxy");
    let url = proxy.url();
    // Lower case is read too.
    let env = |name: &str| (name == "http_proxy").then(|| url.clone());
    let client = Client::builder(api.url())
        .proxy_from_env_with(env)
        .build()
        .expect("client");
    assert_eq!(
        client
            .get("/posts/1")
            .send()
            .await
            .expect("via env")
            .status(),
        200
    );
    assert_eq!(proxy.forwarded().len(), 1);

    // NO_PROXY listing the origin: direct.
    let env = |name: &str| match name {
        "ALL_PROXY" => Some(url.clone()),
        "NO_PROXY" => Some("127.0.0.1".to_owned()),
        _ => None,
    };
    let client = Client::builder(api.url())
        .proxy_from_env_with(env)
        .build()
        .expect("client");
    assert_eq!(
        client
            .get("/posts/2")
            .send()
            .await
            .expect("direct")
            .status(),
        200
    );
    assert_eq!(proxy.connections(), 1);

    // An HTTPS_PROXY does not take http:// requests; no_proxy() forgets all.
    let env = |name: &str| (name == "HTTPS_PROXY").then(|| url.clone());
    let client = Client::builder(api.url())
        .proxy_from_env_with(env)
        .build()
        .expect("client");
    client.get("/posts/3").send().await.expect("direct");
    let client = Client::builder(api.url())
        .proxy(Proxy::all(&url).expect("proxy"))
        .no_proxy()
        .build()
        .expect("client");
    client.get("/posts/4").send().await.expect("direct");
    assert_eq!(proxy.connections(), 1);
}

#[tokio::test]
async fn a_proxy_asking_for_credentials_is_a_typed_407_error() {
    let api = FakeApi::start().await.expect("api");
    let front = tls_front(api.addr(), H1_H2, None).await;
    let proxy = HttpProxy::start().await.expect("proxy");
    proxy.require_basic_auth("me", "pw");
    for auth in [None, Some("wrong-pw")] {
        let mut p = Proxy::all(proxy.url()).expect("proxy");
        if let Some(pw) = auth {
            p = p.basic_auth("me", pw);
        }
        let client = Client::builder(front.url())
            .add_root_certificate_der(front.root().to_vec())
            .proxy(p)
            .build()
            .expect("client");
        let err = client.get("/posts/1").send().await.expect_err("407");
        assert_eq!(err.kind(), ErrorKind::Proxy, "{err:?}");
        assert_eq!(err.status().map(|s| s.as_u16()), Some(407));
        let shown = format!("{err} {err:?}");
        assert!(shown.contains(&proxy.addr().to_string()), "{shown}");
        assert!(
            !shown.contains("wrong-pw") && !shown.contains("bWU6"),
            "{shown}"
        );
    }
    assert_eq!(api.total_hits(), 0);
}

#[tokio::test]
async fn a_proxy_refusing_the_tunnel_is_a_typed_proxy_error() {
    let api = FakeApi::start().await.expect("api");
    let front = tls_front(api.addr(), H1_H2, None).await;
    let proxy = HttpProxy::start().await.expect("proxy");
    proxy.refuse_with(403);
    let client = Client::builder(front.url())
        .add_root_certificate_der(front.root().to_vec())
        .proxy(Proxy::https(proxy.url()).expect("proxy"))
        .build()
        .expect("client");
    let err = client.get("/posts/1").send().await.expect_err("403");
    assert_eq!(err.kind(), ErrorKind::Proxy, "{err:?}");
    assert!(err.to_string().contains("refused the CONNECT"), "{err}");
    assert_eq!(api.total_hits(), 0);
}

#[tokio::test]
async fn a_dead_proxy_is_a_connect_error_naming_it_without_credentials() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    drop(listener);
    let client = Client::builder("http://127.0.0.1:9")
        .proxy(Proxy::all(format!("http://me:s3cret@127.0.0.1:{port}")).expect("proxy"))
        .build()
        .expect("client");
    let err = client.get("/").send().await.expect_err("dead proxy");
    assert_eq!(err.kind(), ErrorKind::Connect, "{err:?}");
    let shown = format!("{err} {err:?}");
    assert!(shown.contains(&format!("127.0.0.1:{port}")), "{shown}");
    assert!(!shown.contains("s3cret"), "{shown}");
}

#[test]
fn bad_proxy_settings_are_builder_errors() {
    for url in ["ftp://p:1", "http://", "socks4://p:1"] {
        assert_eq!(Proxy::all(url).expect_err(url).kind(), ErrorKind::Builder);
    }
    let err = Client::builder("http://api.test")
        .proxy(
            Proxy::all("http://p:1")
                .expect("proxy")
                .basic_auth("a:b", "pw"),
        )
        .build()
        .expect_err("user with a colon");
    assert_eq!(err.kind(), ErrorKind::Builder);
    let err = Client::builder("http://api.test")
        .proxy_from_env_with(|name| (name == "ALL_PROXY").then(|| "gopher://me:pw@p".to_owned()))
        .build()
        .expect_err("unusable env proxy");
    assert_eq!(err.kind(), ErrorKind::Builder);
    assert!(err.to_string().contains("ALL_PROXY"), "{err}");
}

// ---- TLS options ----------------------------------------------------------

fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let text = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = text
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).expect("base64 is ascii"))
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

/// A CA, and a client certificate it signed, as one PEM with its key.
fn client_ca_and_identity_pem() -> (CertificateDer<'static>, String) {
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(params, ca_key).expect("ca");
    let client_key = rcgen::KeyPair::generate().expect("key");
    let client_cert = rcgen::CertificateParams::new(vec!["client.test".to_owned()])
        .expect("params")
        .signed_by(&client_key, &ca)
        .expect("client cert");
    let pem = format!(
        "{}{}",
        pem("CERTIFICATE", client_cert.der()),
        pem("PRIVATE KEY", &client_key.serialize_der())
    );
    (ca.der().clone(), pem)
}

#[tokio::test]
async fn mutual_tls_needs_the_identity() {
    let api = FakeApi::start().await.expect("api");
    let (ca, pem) = client_ca_and_identity_pem();
    let front = tls_front(api.addr(), H1_H2, Some(ca)).await;

    let without = Client::builder(front.url())
        .add_root_certificate_der(front.root().to_vec())
        .build()
        .expect("client");
    let err = without
        .get("/posts/1")
        .send()
        .await
        .expect_err("no client cert");
    assert!(
        matches!(err.kind(), ErrorKind::Connect | ErrorKind::Transport),
        "{err:?}"
    );
    assert_eq!(api.total_hits(), 0);

    let identity = tollgate::Identity::from_pem(pem.as_bytes()).expect("identity");
    assert!(!format!("{identity:?}").contains("PRIVATE"));
    let with = Client::builder(front.url())
        .add_root_certificate_der(front.root().to_vec())
        .identity(identity)
        .build()
        .expect("client");
    assert_eq!(
        with.get("/posts/1").send().await.expect("mTLS").status(),
        200
    );
}

#[test]
fn a_bad_identity_is_a_builder_error_that_hides_the_key() {
    let (_, pem) = client_ca_and_identity_pem();
    let cert_only: String = pem
        .split_inclusive('\n')
        .take_while(|l| !l.contains("PRIVATE"))
        .collect();
    for bad in ["not a pem".to_owned(), cert_only] {
        let err = tollgate::Identity::from_pem(bad.as_bytes()).expect_err("bad pem");
        assert_eq!(err.kind(), ErrorKind::Builder);
    }
    // A key that does not belong to the certificate.
    let (_, other) = client_ca_and_identity_pem();
    let key_start = other.find("-----BEGIN PRIVATE KEY").expect("key");
    let cert_end = pem.find("-----BEGIN PRIVATE KEY").expect("key");
    let mismatched = format!("{}{}", &pem[..cert_end], &other[key_start..]);
    let identity = tollgate::Identity::from_pem(mismatched.as_bytes()).expect("parses");
    let err = Client::builder("https://api.test")
        .identity(identity)
        .build()
        .expect_err("mismatched key");
    assert_eq!(err.kind(), ErrorKind::Builder);
    assert!(!format!("{err} {err:?}").contains("PRIVATE KEY"));
}

fn config_trusting(root: &CertificateDer<'static>) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.clone()).expect("root");
    rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth()
}

#[tokio::test]
async fn a_callers_rustls_config_is_used_with_alpn_set_when_left_empty() {
    let api = FakeApi::start().await.expect("api");
    let front = tls_front(api.addr(), H1_H2, None).await;
    let client = Client::builder(front.url())
        .use_rustls_config(config_trusting(front.root()))
        .build()
        .expect("client");
    let res = client
        .get("/posts/1")
        .send()
        .await
        .expect("caller's config");
    assert_eq!(res.version(), Version::HTTP_2);

    // A caller's own ALPN list is kept (no panic, as hyper-rustls's builder
    // would): here HTTP/1.1 only.
    let mut config = config_trusting(front.root());
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let client = Client::builder(front.url())
        .use_rustls_config(config)
        .build()
        .expect("client");
    let res = client.get("/posts/1").send().await.expect("caller's alpn");
    assert_eq!(res.version(), Version::HTTP_11);

    let err = Client::builder(front.url())
        .use_rustls_config(config_trusting(front.root()))
        .add_root_certificate_der(front.root().to_vec())
        .build()
        .expect_err("two TLS set-ups");
    assert_eq!(err.kind(), ErrorKind::Builder);
}

#[test]
fn trusting_no_root_at_all_is_a_builder_error() {
    let err = Client::builder("https://api.test")
        .tls_built_in_webpki_certs(false)
        .build()
        .expect_err("no roots");
    assert_eq!(err.kind(), ErrorKind::Builder);
}

#[cfg(feature = "native-roots")]
#[tokio::test]
async fn native_roots_build_and_refuse_the_self_signed_server() {
    let api = FakeApi::start().await.expect("api");
    let front = tls_front(api.addr(), H1_H2, None).await;
    let client = Client::builder(front.url())
        .tls_built_in_webpki_certs(false)
        .tls_built_in_native_certs(true)
        .build()
        .expect("the platform store has roots");
    let err = client
        .get("/posts/1")
        .send()
        .await
        .expect_err("not trusted");
    assert_eq!(err.kind(), ErrorKind::Connect, "{err:?}");
    assert_eq!(api.total_hits(), 0);
}

/// A redirect to another origin drops a `Proxy-Authorization` above the
/// transport; the proxy's own credentials are put on below it, per hop, so
/// each hop still reaches the proxy authorised, and never the origin.
#[cfg(feature = "redirect")]
#[tokio::test]
async fn each_redirect_hop_reaches_the_proxy_with_its_credentials_and_no_origin_sees_them() {
    let a = FakeApi::start().await.expect("api");
    let b = FakeApi::start().await.expect("api");
    let proxy = HttpProxy::start().await.expect("proxy");
    proxy.require_basic_auth("me", "pw");
    let policy = tollgate::RedirectPolicy::limited(5)
        .allow_origin(&b.url())
        .expect("origin");
    let client = Client::builder(a.url())
        .redirect(policy)
        .proxy(
            Proxy::http(proxy.url())
                .expect("proxy")
                .basic_auth("me", "pw"),
        )
        .build()
        .expect("client");
    let target: String = format!("{}/posts/1", b.url())
        .bytes()
        .map(|c| match c {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-' => char::from(c).to_string(),
            c => format!("%{c:02X}"),
        })
        .collect();
    let res = client
        .get(format!("/redirect-to?url={target}&status=302"))
        .send()
        .await
        .expect("followed through the proxy");
    assert_eq!(res.status(), 200);
    assert_eq!(res.redirects(), 1);
    assert_eq!(proxy.forwarded().len(), 2);
    assert_eq!(
        proxy.proxy_authorizations(),
        vec![Some("Basic bWU6cHc=".to_owned()); 2]
    );
    let first = a.last_request("/redirect-to").expect("first hop");
    assert_eq!(first.header("proxy-authorization"), None);
    let second = b.last_request("/posts/1").expect("second hop");
    assert_eq!(second.header("proxy-authorization"), None);
}

#[tokio::test]
async fn an_http_proxys_407_to_a_plain_request_is_its_response() {
    let api = FakeApi::start().await.expect("api");
    let proxy = HttpProxy::start().await.expect("proxy");
    proxy.require_basic_auth("me", "pw");
    let client = Client::builder(api.url())
        .proxy(Proxy::all(proxy.url()).expect("proxy"))
        .build()
        .expect("client");
    let res = client.get("/posts/1").send().await.expect("a response");
    assert_eq!(res.status(), 407);
    assert_eq!(api.total_hits(), 0);
}

/// A proxy's refusal is no transient failure: with retry on, a 407 or a
/// refused tunnel is asked for once (a proxy that locks accounts after
/// failed logins must not see one call fail three times), a POST as a GET.
#[tokio::test]
async fn a_proxy_refusal_is_never_retried() {
    let api = FakeApi::start().await.expect("api");
    let front = tls_front(api.addr(), H1_H2, None).await;
    for refusal in ["407", "403"] {
        let proxy = HttpProxy::start().await.expect("proxy");
        if refusal == "407" {
            proxy.require_basic_auth("me", "pw");
        } else {
            proxy.refuse_with(403);
        }
        let client = Client::builder(front.url())
            .add_root_certificate_der(front.root().to_vec())
            .proxy(
                Proxy::all(proxy.url())
                    .expect("proxy")
                    .basic_auth("me", "wrong"),
            )
            .retry(tollgate::retry::RetryLayer::new())
            .build()
            .expect("client");
        for post in [false, true] {
            let before = proxy.connections();
            let call = if post {
                client
                    .post("/posts")
                    .json(&serde_json::json!({"title": "t"}))
            } else {
                client.get("/posts/1")
            };
            let err = call.send().await.expect_err("refused");
            assert_eq!(err.kind(), ErrorKind::Proxy, "{refusal}: {err:?}");
            assert_eq!(
                proxy.connections() - before,
                1,
                "{refusal}, post {post}: the proxy was asked once"
            );
        }
    }
    assert_eq!(api.total_hits(), 0);
}

// ---- streaming through proxies and over HTTP/2 -------------------------------

/// Reads a streamed response to its end, chunk by chunk: the bytes and the
/// chunks counted, or the first error.
async fn drain(mut res: tollgate::StreamingResponse) -> Result<(u64, u64), tollgate::Error> {
    let (mut bytes, mut chunks) = (0u64, 0u64);
    while let Some(chunk) = res.chunk().await? {
        bytes += chunk.len() as u64;
        chunks += 1;
    }
    Ok((bytes, chunks))
}

/// A client of `front` (through `proxy`, if any) with a pool of one slot.
fn one_slot(front: &TlsFront, proxy: Option<Proxy>) -> Client {
    let mut builder = Client::builder(front.url())
        .add_root_certificate_der(front.root().to_vec())
        .concurrency_limit(
            tollgate::limit::ConcurrencyLimitLayer::new(1)
                .queue_timeout(std::time::Duration::from_secs(5)),
        );
    if let Some(proxy) = proxy {
        builder = builder.proxy(proxy);
    }
    builder.build().expect("client")
}

/// A download of 8 MiB streams through a CONNECT tunnel over HTTP/2 (ALPN
/// inside the tunnel) in many chunks, whole; the pool slot is back after.
#[tokio::test]
async fn a_download_streams_whole_through_a_connect_tunnel_over_http2() {
    let api = FakeApi::start().await.expect("api");
    let front = tls_front(api.addr(), H1_H2, None).await;
    let proxy = HttpProxy::start().await.expect("proxy");
    let client = one_slot(&front, Some(Proxy::all(proxy.url()).expect("proxy")));
    let res = client
        .get("/huge?size=8388608")
        .send_streaming()
        .await
        .expect("head");
    assert_eq!(res.version(), Version::HTTP_2);
    let (bytes, chunks) = drain(res).await.expect("whole");
    assert_eq!(bytes, 8 << 20);
    assert!(chunks > 8, "streamed in pieces, not buffered: {chunks}");
    assert_eq!(proxy.connect_targets(), vec![front.addr().to_string()]);
    // The one slot is free again, and the tunnel is reused.
    let res = client.get("/posts/1").send().await.expect("after");
    assert_eq!(res.status(), 200);
    assert_eq!(proxy.connections(), 1, "one tunnel for both calls");
}

/// Through SOCKS5 (plain HTTP): a streamed download and a streamed upload
/// arrive whole.
#[tokio::test]
async fn streams_go_whole_both_ways_through_socks5() {
    let api = FakeApi::start().await.expect("api");
    let socks = Socks5Proxy::start().await.expect("socks");
    let client = Client::builder(api.url())
        .proxy(Proxy::all(socks.url()).expect("proxy"))
        .build()
        .expect("client");
    let res = client
        .get("/huge?size=3000000&chunk=10000")
        .send_streaming()
        .await
        .expect("head");
    assert_eq!(drain(res).await.expect("whole").0, 3_000_000);
    let parts: Vec<Result<bytes::Bytes, std::io::Error>> = (0..64)
        .map(|i| Ok(bytes::Bytes::from(vec![b'a' + (i % 26) as u8; 1000])))
        .collect();
    let res = client
        .post("/anything/upload")
        .body_stream(ready_stream(parts))
        .send()
        .await
        .expect("uploaded");
    assert_eq!(res.status(), 200);
    let seen = api.last_request("/anything/upload").expect("reached");
    assert_eq!(seen.body.len(), 64_000);
    assert!(seen.body[..1000].iter().all(|&b| b == b'a'));
    assert!(!socks.targets().is_empty());
}

/// A stream of ready items (no extra dependency for the test).
fn ready_stream(
    items: Vec<Result<bytes::Bytes, std::io::Error>>,
) -> impl futures_core::Stream<Item = Result<bytes::Bytes, std::io::Error>> + Send + 'static {
    struct Items(std::collections::VecDeque<Result<bytes::Bytes, std::io::Error>>);
    impl futures_core::Stream for Items {
        type Item = Result<bytes::Bytes, std::io::Error>;
        fn poll_next(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Self::Item>> {
            std::task::Poll::Ready(self.0.pop_front())
        }
    }
    Items(items.into())
}

/// Over HTTP/2, the connection cut in the middle of a streamed body ends
/// the read with one `Body` error (never a short success), the slot is
/// freed, and the next call works on a new connection. An endless body
/// dropped half read frees its slot too (the stream is reset, the
/// connection kept).
#[tokio::test]
async fn over_http2_a_cut_mid_body_is_one_body_error_and_a_dropped_stream_frees_its_slot() {
    let api = FakeApi::start().await.expect("api");
    let faults = tollgate_testkit::FaultProxy::start(api.addr())
        .await
        .expect("fault proxy");
    let front = tls_front(faults.addr(), H1_H2, None).await;
    let client = one_slot(&front, None);

    // Dropped half read: the slot comes back, the connection stays.
    let mut endless = client.get("/endless").send_streaming().await.expect("head");
    assert_eq!(endless.version(), Version::HTTP_2);
    for _ in 0..4 {
        assert!(endless.chunk().await.expect("a chunk").is_some());
    }
    drop(endless);
    let res = client.get("/posts/1").send().await.expect("slot free");
    assert_eq!(res.status(), 200);
    assert_eq!(front.handshakes(), 1, "the h2 connection was kept");

    // Cut mid-body, 1 MiB in, on a connection of its own (an HTTP/2
    // connection's control frames would take a fault scripted on a proxy it
    // already uses).
    let cut = tollgate_testkit::FaultProxy::start(api.addr())
        .await
        .expect("fault proxy");
    cut.inject(tollgate_testkit::ProxyFault::reset_after(1 << 20).times(1));
    let cut_front = tls_front(cut.addr(), H1_H2, None).await;
    let fresh = one_slot(&cut_front, None);
    let res = fresh
        .get("/huge?size=8388608")
        .send_streaming()
        .await
        .expect("head");
    let err = drain(res).await.expect_err("cut short");
    assert_eq!(err.kind(), ErrorKind::Body, "{err:?}");
    let res = fresh.get("/posts/1").send().await.expect("after the cut");
    assert_eq!(res.status(), 200);
}
