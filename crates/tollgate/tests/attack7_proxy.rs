//! Adversary tests for issue #14's proxies, TLS options and redirects
//! through a proxy: hostile proxies (stalls, garbage, 200-then-close, huge
//! heads, SOCKS nonsense), hostile proxy URLs and `NO_PROXY` lists, secrets
//! in Debug, errors and TRACE-level logs, retry after a proxy's refusal,
//! and the limits of the stack while a proxy is in the way.
//!
//! A test that shows a real break is `#[ignore = "BROKEN: ..."]` so that
//! the suite stays green; the others guard a promise that held.
#![cfg(all(
    feature = "rustls",
    feature = "http2",
    feature = "retry",
    feature = "limit",
    feature = "auth",
    feature = "redirect"
))]

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use base64::Engine;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tollgate::{Client, Error, ErrorKind, NoProxy, Proxy};
use tollgate_testkit::{CapturedLogs, FakeApi, HttpProxy, Socks5Proxy, TlsFront};

// ---- helpers ----------------------------------------------------------------

/// Every log line of this test binary, at TRACE level, every target.
fn logs() -> &'static CapturedLogs {
    static LOGS: OnceLock<CapturedLogs> = OnceLock::new();
    LOGS.get_or_init(CapturedLogs::install_global)
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// A hostile server on 127.0.0.1: each connection handed to `handle`;
/// counts connections. Dropped with the returned guard.
struct Hostile {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Hostile {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Hostile {
    async fn start<F, Fut>(handle: F) -> Hostile
    where
        F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let connections = Arc::new(AtomicUsize::new(0));
        let counted = connections.clone();
        let task = tokio::spawn(async move {
            let mut tasks = tokio::task::JoinSet::new();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                counted.fetch_add(1, Ordering::SeqCst);
                tasks.spawn(handle(tcp));
            }
        });
        Hostile {
            addr,
            connections,
            task,
        }
    }

    fn url(&self, scheme: &str) -> String {
        format!("{scheme}://{}", self.addr)
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// Reads until the end of a request head (or EOF), returning it.
async fn read_head(tcp: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match tcp.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// Holds the connection open without a word until the peer goes.
async fn stall(mut tcp: TcpStream) {
    let mut sink = [0u8; 1024];
    while let Ok(n) = tcp.read(&mut sink).await {
        if n == 0 {
            break;
        }
    }
}

/// An https origin somewhere: nothing listens there; through a CONNECT or
/// SOCKS proxy the proxy is the only thing ever reached.
const NOWHERE_TLS: &str = "https://origin.invalid";

fn quick_connect(base: &str, proxy: Proxy) -> Client {
    Client::builder(base)
        .connect_timeout(Duration::from_millis(300))
        .read_timeout(Duration::from_millis(300))
        .timeout(Duration::from_secs(5))
        .proxy(proxy)
        .build()
        .expect("client")
}

/// Sends `GET /` and demands a typed error within `within` of real time.
async fn fails_quickly(client: &Client, within: Duration) -> Error {
    let started = tokio::time::Instant::now();
    let outcome = tokio::time::timeout(Duration::from_secs(5), client.get("/").send())
        .await
        .expect("the call ended (no hang)");
    let err = outcome.expect_err("a hostile proxy is an error");
    assert!(
        started.elapsed() < within,
        "took {:?}: {err:?}",
        started.elapsed()
    );
    err
}

fn shown(err: &Error) -> String {
    let mut all = format!("{err} | {err:?}");
    let mut source = std::error::Error::source(err);
    while let Some(s) = source {
        all.push_str(&format!(" | {s} | {s:?}"));
        source = s.source();
    }
    all
}

// ---- breaks: hostile proxy URLs and NO_PROXY ------------------------------

/// `check_url` lowercases the scheme before accepting it, but hyper-util's
/// `Matcher` (which decides routing) compares `socks5`/`socks5h`
/// case-sensitively, drops the proxy, and the request goes DIRECT: traffic
/// meant for a SOCKS proxy (Tor, an egress gateway) leaves unproxied.
#[tokio::test]
async fn an_upper_case_socks5_scheme_never_means_a_direct_connection() {
    let _ = logs();
    let api = FakeApi::start().await.expect("api");
    for scheme in ["SOCKS5", "Socks5h"] {
        let socks = Socks5Proxy::start().await.expect("socks");
        let url = socks.url().replace("socks5", scheme);
        let Ok(proxy) = Proxy::all(&url) else {
            continue; // refused: fine
        };
        let client = Client::builder(api.url())
            .proxy(proxy)
            .build()
            .expect("client");
        let _ = client.get("/posts/1").send().await;
        assert_eq!(
            socks.connections(),
            1,
            "{url}: accepted, but the request did not go through the proxy \
             (origin hits: {})",
            api.total_hits()
        );
    }
    // The same from the environment.
    let socks = Socks5Proxy::start().await.expect("socks");
    let url = socks.url().replace("socks5", "SOCKS5");
    if let Ok(client) = Client::builder(api.url())
        .proxy_from_env_with(move |name| (name == "ALL_PROXY").then(|| url.clone()))
        .build()
    {
        let _ = client.get("/posts/2").send().await;
        assert_eq!(socks.connections(), 1, "ALL_PROXY=SOCKS5://... went direct");
    }
}

/// The host is taken after the LAST `@` (the http crate, as WHATWG URL),
/// the credentials before the FIRST `@` (hyper-util's matcher): an
/// unencoded `@` in a password silently sends a truncated password, and the
/// rest of it ends up as user information of the proxy URI.
#[tokio::test]
async fn an_unencoded_at_in_the_proxy_password_is_refused_or_sent_whole() {
    let _ = logs();
    let api = FakeApi::start().await.expect("api");
    let proxy = HttpProxy::start().await.expect("proxy");
    proxy.require_basic_auth("me", "p@ss");
    let url = proxy.url().replace("http://", "http://me:p@ss@");
    let Ok(p) = Proxy::all(&url) else {
        return; // a builder error: fine
    };
    let client = Client::builder(api.url()).proxy(p).build().expect("client");
    let res = client.get("/posts/1").send().await.expect("a response");
    assert_eq!(
        proxy.proxy_authorizations(),
        vec![Some(format!("Basic {}", b64("me:p@ss")))],
        "status {}",
        res.status()
    );
}

/// A password with `#` or `?` that is not percent-encoded: the URL parser
/// ends the authority there, so the start of the password becomes the
/// proxy's "port" and the user its "host" — shown in Debug, in every error
/// ("the proxy http://alice:4921 could not be reached") and sent to DNS.
/// A proxy URL has no use for a path, query or fragment; one that has any
/// is a mangled URL and could be refused.
#[tokio::test]
async fn a_password_cut_by_an_unencoded_hash_never_shows() {
    let _ = logs();
    let secret = "4921";
    // The user is an address here so that the call below resolves nothing;
    // with a user name (`alice:4921#...`) the name goes to DNS as well.
    for url in [
        format!("http://127.0.0.1:{secret}#x@proxy.test:3128"),
        format!("http://127.0.0.1:{secret}?x@proxy.test:3128"),
        format!("http://127.0.0.1:{secret}/x@proxy.test:3128"),
    ] {
        let Ok(proxy) = Proxy::all(&url) else {
            continue;
        };
        let debug = format!("{proxy:?}");
        assert!(!debug.contains(secret), "{url}: Debug shows {debug}");
        let client = quick_connect("http://api.test", proxy);
        let err = client.get("/").send().await.expect_err("no such proxy");
        let all = shown(&err);
        assert!(!all.contains(secret), "{url}: the error shows {all}");
    }
}

/// `Proxy::basic_auth` refuses a user with `:` or a control character
/// (`ErrorKind::Builder`); the same credentials in the URL's user
/// information (percent-encoded) are taken without a word. `a%3Ab:pw`
/// reaches the proxy as `a:b:pw`: user `a`, password `b:pw`.
#[test]
fn url_credentials_are_held_to_the_rules_of_basic_auth() {
    for url in [
        "http://a%3Ab:pw@p.test:1",
        "http://me:pw%0D%0AX-Injected:%201@p.test:1",
        "http://me%0A:pw@p.test:1",
    ] {
        let built = Proxy::all(url).and_then(|p| {
            Client::builder("http://api.test")
                .proxy(p)
                .build()
                .map(|_| ())
        });
        let err = built.expect_err(url);
        assert_eq!(err.kind(), ErrorKind::Builder, "{url}");
    }
}

/// SOCKS5 user names and passwords are at most 255 bytes each (RFC 1929);
/// hyper-util's serializer then fails per call ("failed serialize
/// request", sorted as a proxy that "broke off" the handshake) or, at 256
/// bytes, wraps the length byte to 0 and desynchronises the handshake.
/// Known at build time, so it could be a builder error.
#[tokio::test]
async fn socks5_credentials_over_255_bytes_are_a_builder_error() {
    let _ = logs();
    let socks = Socks5Proxy::start().await.expect("socks");
    let long = "p".repeat(300);
    socks.require_auth("me", &long);
    let built = Client::builder("http://127.0.0.1:9")
        .proxy(
            Proxy::all(socks.url())
                .expect("proxy")
                .basic_auth("me", &long),
        )
        .build();
    match built {
        Err(e) => assert_eq!(e.kind(), ErrorKind::Builder),
        Ok(client) => {
            let err = client.get("/").send().await.expect_err("handshake");
            panic!("accepted at build; each call fails: {err}");
        }
    }
}

/// RFC 1929's lengths are 1 to 255: an empty SOCKS5 user name or password
/// (from `basic_auth` or a URL with no password) is refused when the
/// client is built, not sent as a zero-length field the proxy may take for
/// a broken handshake. An HTTP proxy still takes an empty password (Basic
/// allows one).
#[test]
fn empty_socks5_credentials_are_a_builder_error() {
    let cases = [
        Proxy::all("socks5://127.0.0.1:1080")
            .expect("proxy")
            .basic_auth("me", ""),
        Proxy::all("socks5h://127.0.0.1:1080")
            .expect("proxy")
            .basic_auth("", "secret"),
    ];
    for proxy in cases {
        let err = Client::builder("http://127.0.0.1:9")
            .proxy(proxy)
            .build()
            .expect_err("empty SOCKS5 credentials");
        assert_eq!(err.kind(), ErrorKind::Builder);
        let text = err.to_string();
        assert!(text.contains("1 to 255") || text.contains("empty"), "{err}");
        assert!(!format!("{err:?}").contains("secret"), "{err:?}");
    }
    let err = Proxy::all("socks5://me@127.0.0.1:1080")
        .map(|p| Client::builder("http://127.0.0.1:9").proxy(p).build())
        .and_then(|built| built.map(|_| ()))
        .expect_err("no password in the URL");
    assert_eq!(err.kind(), ErrorKind::Builder);
    Client::builder("http://127.0.0.1:9")
        .proxy(
            Proxy::all("http://127.0.0.1:3128")
                .expect("proxy")
                .basic_auth("me", ""),
        )
        .build()
        .expect("an HTTP proxy takes an empty password");
}

/// The docs say `*` matches everything; hyper-util keeps `*` among the
/// domain patterns, and an IP destination is only compared with the IP
/// patterns: `NO_PROXY=*` does not bypass `http://127.0.0.1:...`.
#[tokio::test]
async fn no_proxy_star_bypasses_every_destination_ip_literals_included() {
    let _ = logs();
    let api = FakeApi::start().await.expect("api");
    let proxy = HttpProxy::start().await.expect("proxy");
    let client = Client::builder(api.url())
        .proxy(
            Proxy::all(proxy.url())
                .expect("proxy")
                .no_proxy(NoProxy::from_string("*")),
        )
        .build()
        .expect("client");
    client.get("/posts/1").send().await.expect("a response");
    assert_eq!(proxy.connections(), 0, "NO_PROXY=* went through the proxy");
}

// ---- breaks: retry after a proxy's refusal ---------------------------------

/// A CONNECT refused with 407 or 403, or a SOCKS5 proxy refusing the
/// password, is a permanent answer, but it is wrapped in hyper-util's
/// connect error, which `TransportFailure::classify` reads as a connect
/// failure ("never sent": retried whatever the method): a POST with bad
/// proxy credentials presents them to the proxy four times (account
/// lock-outs), each after a backoff and a rate-limit permit, before the
/// caller hears of the refusal.
#[tokio::test(start_paused = true)]
async fn a_proxy_refusal_is_not_retried() {
    let _ = logs();
    let http_407 = HttpProxy::start().await.expect("proxy");
    http_407.require_basic_auth("me", "right-pw");
    let http_403 = HttpProxy::start().await.expect("proxy");
    http_403.refuse_with(403);
    let socks = Socks5Proxy::start().await.expect("socks");
    socks.require_auth("me", "right-pw");
    let mut seen = Vec::new();
    for (what, url, connections) in [
        (
            "407",
            http_407.url(),
            Box::new(|| http_407.connections()) as Box<dyn Fn() -> u64>,
        ),
        ("403", http_403.url(), Box::new(|| http_403.connections())),
        (
            "socks",
            socks.url().replace("socks5:", "socks5h:"),
            Box::new(|| socks.connections()),
        ),
    ] {
        let client = Client::builder(NOWHERE_TLS)
            .retry(tollgate_retry::RetryLayer::new())
            .proxy(Proxy::all(url).expect("proxy").basic_auth("me", "wrong-pw"))
            .build()
            .expect("client");
        let err = client
            .post("/orders")
            .json(&serde_json::json!({"n": 1}))
            .send()
            .await
            .expect_err("refused");
        assert_eq!(err.kind(), ErrorKind::Proxy, "{what}: {err:?}");
        seen.push((what, connections()));
    }
    assert!(
        seen.iter().all(|(_, n)| *n == 1),
        "proxy connections per refused POST: {seen:?}"
    );
}

// ---- guards: one outcome from a hostile proxy ------------------------------

/// A CONNECT that the proxy never answers: the connect timeout covers the
/// proxy's handshake.
#[tokio::test]
async fn a_proxy_that_stalls_mid_connect_ends_at_the_connect_timeout() {
    let _ = logs();
    let proxy = Hostile::start(|mut tcp| async move {
        let _ = read_head(&mut tcp).await;
        stall(tcp).await;
    })
    .await;
    let client = quick_connect(
        NOWHERE_TLS,
        Proxy::all(proxy.url("http"))
            .expect("proxy")
            .basic_auth("me", "Adv7StallPw"),
    );
    let err = fails_quickly(&client, Duration::from_secs(2)).await;
    assert!(
        matches!(err.kind(), ErrorKind::Timeout | ErrorKind::Connect),
        "{err:?}"
    );
    assert!(!shown(&err).contains("Adv7StallPw"));
    assert_eq!(proxy.connections(), 1);
}

/// A CONNECT answer trickled a byte at a time (never reaching hyper-util's
/// 8 KiB limit within the connect timeout), an `https://` proxy that
/// stalls in its TLS handshake, and a stalled CONNECT under a total
/// timeout shorter than the connect timeout: each ends in time.
#[tokio::test]
async fn a_trickling_or_tls_stalling_proxy_ends_in_time() {
    let _ = logs();
    let trickle = Hostile::start(|mut tcp| async move {
        let _ = read_head(&mut tcp).await;
        let _ = tcp.write_all(b"HTTP/1.1 200 OK\r\nx-slow: ").await;
        loop {
            if tcp.write_all(b"a").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let client = quick_connect(NOWHERE_TLS, Proxy::all(trickle.url("http")).expect("proxy"));
    let err = fails_quickly(&client, Duration::from_secs(2)).await;
    assert!(
        matches!(err.kind(), ErrorKind::Timeout | ErrorKind::Connect),
        "{err:?}"
    );

    let silent = Hostile::start(stall).await;
    for base in ["http://origin.test", NOWHERE_TLS] {
        let client = quick_connect(base, Proxy::all(silent.url("https")).expect("proxy"));
        let err = fails_quickly(&client, Duration::from_secs(2)).await;
        assert!(
            matches!(err.kind(), ErrorKind::Timeout | ErrorKind::Connect),
            "{base}: {err:?}"
        );
    }

    let client = Client::builder(NOWHERE_TLS)
        .timeout(Duration::from_millis(300))
        .proxy(Proxy::all(silent.url("http")).expect("proxy"))
        .build()
        .expect("client");
    let err = fails_quickly(&client, Duration::from_secs(2)).await;
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err:?}");
}

/// In a CGI program a request's `Proxy:` header arrives as `HTTP_PROXY`
/// ("httpoxy"); tollgate skips the upper-case name only and then reads
/// `http_proxy`. Where environment names are case-insensitive (Windows),
/// that lookup returns the very same attacker-set value, and plain-HTTP
/// requests go to the attacker's proxy. curl, Go and hyper-util's own
/// matcher ignore HTTP_PROXY in every spelling under CGI.
#[tokio::test]
async fn httpoxy_is_refused_in_every_spelling_of_http_proxy() {
    let _ = logs();
    let api = FakeApi::start().await.expect("api");
    let evil = HttpProxy::start().await.expect("proxy");
    let evil_url = evil.url();
    // A Windows-like environment: names compare without regard to case.
    let env = move |name: &str| {
        if name.eq_ignore_ascii_case("REQUEST_METHOD") {
            Some("GET".to_owned())
        } else if name.eq_ignore_ascii_case("HTTP_PROXY") {
            Some(evil_url.clone())
        } else {
            None
        }
    };
    let client = Client::builder(api.url())
        .bearer_auth("Adv7CgiBearer")
        .proxy_from_env_with(env)
        .build()
        .expect("client");
    client.get("/posts/1").send().await.expect("a response");
    assert_eq!(
        evil.connections(),
        0,
        "the attacker's proxy got: {:?}",
        evil.heads()
    );
}

/// A SOCKS5 proxy that accepts and never answers the greeting, or answers
/// the greeting and stalls the request.
#[tokio::test]
async fn a_socks_proxy_that_stalls_ends_at_the_connect_timeout() {
    let _ = logs();
    let silent = Hostile::start(stall).await;
    let half = Hostile::start(|mut tcp| async move {
        let mut greeting = [0u8; 3];
        let _ = tcp.read_exact(&mut greeting).await;
        let _ = tcp.write_all(&[5, 0]).await;
        stall(tcp).await;
    })
    .await;
    for proxy in [&silent, &half] {
        for scheme in ["socks5", "socks5h"] {
            let client = quick_connect(
                "http://localhost:9",
                Proxy::all(proxy.url(scheme)).expect("proxy"),
            );
            let err = fails_quickly(&client, Duration::from_secs(2)).await;
            assert!(
                matches!(err.kind(), ErrorKind::Timeout | ErrorKind::Connect),
                "{scheme}: {err:?}"
            );
        }
    }
}

/// Each way a CONNECT proxy can answer wrongly is one typed error, quickly,
/// and the proxy's credentials are in none of them.
#[tokio::test]
async fn a_connect_proxy_answering_garbage_is_one_typed_error() {
    let _ = logs();
    let answers: Vec<(&str, Vec<u8>)> = vec![
        ("garbage", b"\x00\xffNOT HTTP AT ALL\r\n\r\n".to_vec()),
        ("bad status", b"HTTP/1.1 2000 OK\r\n\r\n".to_vec()),
        (
            "redirect",
            b"HTTP/1.1 302 Found\r\nLocation: http://evil.test/\r\n\r\n".to_vec(),
        ),
        ("eof mid-head", b"HTTP/1.1 200 OK\r\nX-a: b".to_vec()),
        ("nothing", Vec::new()),
        // 200 and then the connection closes: the TLS handshake meets EOF.
        (
            "200 then close",
            b"HTTP/1.1 200 Connection established\r\n\r\n".to_vec(),
        ),
        // 200 and then bytes that are not TLS.
        (
            "200 then junk",
            b"HTTP/1.1 200 OK\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n".to_vec(),
        ),
    ];
    for (what, answer) in answers {
        let answer = Arc::new(answer);
        let proxy = Hostile::start(move |mut tcp| {
            let answer = answer.clone();
            async move {
                let _ = read_head(&mut tcp).await;
                let _ = tcp.write_all(&answer).await;
                let _ = tcp.shutdown().await;
            }
        })
        .await;
        let client = quick_connect(
            NOWHERE_TLS,
            Proxy::all(proxy.url("http"))
                .expect("proxy")
                .basic_auth("me", "Adv7GarbagePw"),
        );
        let err = fails_quickly(&client, Duration::from_secs(2)).await;
        assert!(
            matches!(err.kind(), ErrorKind::Proxy | ErrorKind::Connect),
            "{what}: {err:?}"
        );
        let all = shown(&err);
        assert!(
            !all.contains("Adv7GarbagePw") && !all.contains(&b64("me:Adv7GarbagePw")),
            "{what}: {all}"
        );
    }
}

/// A CONNECT answer whose head never ends (header lines forever): bounded
/// by hyper-util's 8 KiB, a typed error at once.
#[tokio::test]
async fn a_connect_proxy_sending_an_endless_head_is_cut_off() {
    let _ = logs();
    let proxy = Hostile::start(|mut tcp| async move {
        let _ = read_head(&mut tcp).await;
        let _ = tcp.write_all(b"HTTP/1.1 200 OK\r\n").await;
        let line = format!("x-junk: {}\r\n", "a".repeat(1000));
        for _ in 0..10_000 {
            if tcp.write_all(line.as_bytes()).await.is_err() {
                return;
            }
        }
    })
    .await;
    let client = quick_connect(NOWHERE_TLS, Proxy::all(proxy.url("http")).expect("proxy"));
    let err = fails_quickly(&client, Duration::from_secs(2)).await;
    assert_eq!(err.kind(), ErrorKind::Proxy, "{err:?}");
}

/// An HTTP proxy spoken to in absolute form (plain `http://` origin) that
/// answers garbage, an endless head, or closes: one typed error each.
#[tokio::test]
async fn a_forward_proxy_answering_garbage_is_one_typed_error() {
    let _ = logs();
    let big_head = {
        let mut head = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..20_000 {
            head.extend_from_slice(format!("x-{i}: {}\r\n", "b".repeat(50)).as_bytes());
        }
        head
    };
    let answers: Vec<(&str, Vec<u8>)> = vec![
        ("garbage", b"\x16\x03\x01 not http\r\n\r\n".to_vec()),
        ("nothing", Vec::new()),
        (
            "eof mid-head",
            b"HTTP/1.1 200 OK\r\ncontent-length: 5".to_vec(),
        ),
        (
            "short body",
            b"HTTP/1.1 200 OK\r\ncontent-length: 50\r\n\r\nabc".to_vec(),
        ),
        ("huge head", big_head),
    ];
    for (what, answer) in answers {
        let answer = Arc::new(answer);
        let proxy = Hostile::start(move |mut tcp| {
            let answer = answer.clone();
            async move {
                let _ = read_head(&mut tcp).await;
                let _ = tcp.write_all(&answer).await;
                let _ = tcp.shutdown().await;
            }
        })
        .await;
        let client = quick_connect(
            "http://origin.test",
            Proxy::all(proxy.url("http"))
                .expect("proxy")
                .basic_auth("me", "Adv7FwdPw"),
        );
        let err = fails_quickly(&client, Duration::from_secs(2)).await;
        assert!(
            matches!(
                err.kind(),
                ErrorKind::Transport | ErrorKind::Connect | ErrorKind::Body
            ),
            "{what}: {err:?}"
        );
        assert!(!shown(&err).contains(&b64("me:Adv7FwdPw")), "{what}");
    }
}

/// A forward proxy that reads the request and never answers: the read
/// timeout ends the call.
#[tokio::test]
async fn a_forward_proxy_that_stalls_ends_at_the_read_timeout() {
    let _ = logs();
    let proxy = Hostile::start(|mut tcp| async move {
        let _ = read_head(&mut tcp).await;
        stall(tcp).await;
    })
    .await;
    let client = quick_connect(
        "http://origin.test",
        Proxy::all(proxy.url("http")).expect("proxy"),
    );
    let err = fails_quickly(&client, Duration::from_secs(2)).await;
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err:?}");
}

/// SOCKS5 replies that make no sense: one typed error each, no panic.
#[tokio::test]
async fn a_socks_proxy_answering_nonsense_is_one_typed_error() {
    let _ = logs();
    // (what, answer to the greeting, answer to the request)
    let scripts: Vec<(&str, Vec<u8>, Vec<u8>)> = vec![
        ("wrong version", vec![4, 0], vec![]),
        ("unknown method", vec![5, 0x7f], vec![]),
        ("no acceptable method", vec![5, 0xff], vec![]),
        ("asks for a password we lack", vec![5, 2], vec![]),
        (
            "reply code out of range",
            vec![5, 0],
            vec![5, 0x42, 0, 1, 127, 0, 0, 1, 0, 80],
        ),
        (
            "bad reserved byte",
            vec![5, 0],
            vec![5, 0, 7, 1, 127, 0, 0, 1, 0, 80],
        ),
        (
            "bad address type",
            vec![5, 0],
            vec![5, 0, 0, 9, 1, 2, 3, 4, 5, 6],
        ),
        ("empty domain", vec![5, 0], vec![5, 0, 0, 3, 0, 0, 80]),
        (
            "truncated domain then eof",
            vec![5, 0],
            vec![5, 0, 0, 3, 200, b'a'],
        ),
        (
            "non-utf8 domain",
            vec![5, 0],
            vec![5, 0, 0, 3, 2, 0xff, 0xfe, 0, 80],
        ),
        ("refused", vec![5, 0], vec![5, 5, 0, 1, 0, 0, 0, 0, 0, 0]),
        ("greeting then eof", vec![5], vec![]),
    ];
    for (what, greeting, reply) in scripts {
        let script = Arc::new((greeting, reply));
        let proxy = Hostile::start(move |mut tcp| {
            let script = script.clone();
            async move {
                let mut buf = [0u8; 512];
                let _ = tcp.read(&mut buf).await;
                let _ = tcp.write_all(&script.0).await;
                if !script.1.is_empty() {
                    let _ = tcp.read(&mut buf).await;
                    let _ = tcp.write_all(&script.1).await;
                }
                let _ = tcp.shutdown().await;
            }
        })
        .await;
        for scheme in ["socks5", "socks5h"] {
            let client = quick_connect(
                "http://localhost:9",
                Proxy::all(proxy.url(scheme)).expect("proxy"),
            );
            let err = fails_quickly(&client, Duration::from_secs(2)).await;
            assert!(
                matches!(err.kind(), ErrorKind::Proxy | ErrorKind::Connect),
                "{what} {scheme}: {err:?}"
            );
        }
    }
    // With credentials: a server that skips the password step.
    let proxy = Hostile::start(|mut tcp| async move {
        let mut buf = [0u8; 512];
        let _ = tcp.read(&mut buf).await;
        let _ = tcp.write_all(&[5, 0]).await;
        let _ = tcp.read(&mut buf).await;
        let _ = tcp.write_all(&[5, 0, 0, 1, 127, 0, 0, 1, 0, 80]).await;
        stall(tcp).await;
    })
    .await;
    let client = quick_connect(
        "http://localhost:9",
        Proxy::all(proxy.url("socks5"))
            .expect("proxy")
            .basic_auth("me", "Adv7SocksPw"),
    );
    let err = fails_quickly(&client, Duration::from_secs(2)).await;
    assert_eq!(err.kind(), ErrorKind::Proxy, "{err:?}");
    assert!(!shown(&err).contains("Adv7SocksPw"));
}

// ---- guards: retry through a proxy -----------------------------------------

/// A forward proxy that passes a POST to the origin and then drops the
/// connection before any answer: the POST reached the origin once and is
/// not sent again (a reset is retried for idempotent methods only).
#[tokio::test(start_paused = true)]
async fn a_post_the_proxy_forwarded_is_not_resent_after_the_proxy_drops() {
    let _ = logs();
    let api = FakeApi::start().await.expect("api");
    let origin = api.addr();
    let proxy = Hostile::start(move |mut tcp| async move {
        let head = read_head(&mut tcp).await;
        let Some(len) = head
            .lines()
            .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap_or(0)))
        else {
            return;
        };
        let start = head.find("\r\n\r\n").map_or(head.len(), |i| i + 4);
        let mut body = head.as_bytes()[start..].to_vec();
        while body.len() < len {
            let mut chunk = [0u8; 1024];
            match tcp.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => body.extend_from_slice(&chunk[..n]),
            }
        }
        // Forward in origin form, read the answer, then drop the client.
        let request_line = head.lines().next().unwrap_or_default().to_owned();
        let path = request_line
            .split_whitespace()
            .nth(1)
            .and_then(|t| t.find("/posts").map(|i| t[i..].to_owned()))
            .unwrap_or_else(|| "/posts".to_owned());
        let Ok(mut up) = TcpStream::connect(origin).await else {
            return;
        };
        let fwd = format!(
            "POST {path} HTTP/1.1\r\nhost: {origin}\r\ncontent-type: application/json\r\ncontent-length: {len}\r\nconnection: close\r\n\r\n"
        );
        let _ = up.write_all(fwd.as_bytes()).await;
        let _ = up.write_all(&body).await;
        let mut answer = Vec::new();
        let _ = up.read_to_end(&mut answer).await;
        drop(tcp);
    })
    .await;
    let client = Client::builder(api.url())
        .retry(tollgate_retry::RetryLayer::new())
        .proxy(Proxy::all(proxy.url("http")).expect("proxy"))
        .build()
        .expect("client");
    let err = client
        .post("/posts")
        .json(&serde_json::json!({"title": "once"}))
        .send()
        .await
        .expect_err("the proxy dropped the answer");
    assert_eq!(api.hits("/posts"), 1, "{err:?}");
    assert_eq!(proxy.connections(), 1, "the POST was sent again: {err:?}");
}

// ---- guards: limits hold through a proxy ----------------------------------

/// The concurrency pool and the rate limiter sit above the transport: with
/// a proxy in the way they still bound the calls.
#[tokio::test(start_paused = true)]
async fn the_pool_and_the_rate_limiter_bound_calls_through_a_proxy() {
    use tollgate_limit::{ConcurrencyLimitLayer, Quota, RateLimitLayer};
    let _ = logs();
    let api = FakeApi::start().await.expect("api");
    api.inject(
        "/posts/*",
        tollgate_testkit::Fault::latency(Duration::from_millis(100)),
    );
    let proxy = HttpProxy::start().await.expect("proxy");
    let client = Client::builder(api.url())
        .concurrency_limit(ConcurrencyLimitLayer::new(1))
        .proxy(Proxy::all(proxy.url()).expect("proxy"))
        .build()
        .expect("client");
    let calls: Vec<_> = (1..=3)
        .map(|id| {
            let client = client.clone();
            tokio::spawn(async move { client.get(format!("/posts/{id}")).send().await })
        })
        .collect();
    let mut waits = Vec::new();
    for call in calls {
        let res = call.await.expect("task").expect("response");
        waits.push(res.summary().queue_wait);
    }
    waits.sort();
    assert!(
        waits[2] >= Duration::from_millis(190),
        "the pool let calls through together: {waits:?}"
    );
    assert_eq!(proxy.forwarded().len(), 3);

    let proxy = HttpProxy::start().await.expect("proxy");
    let client = Client::builder(api.url())
        .rate_limit(RateLimitLayer::new(
            Quota::window(2, Duration::from_secs(1)).expect("quota"),
        ))
        .proxy(Proxy::all(proxy.url()).expect("proxy"))
        .build()
        .expect("client");
    let mut waits = Vec::new();
    for id in 1..=3 {
        let res = client
            .get(format!("/posts/{id}"))
            .send()
            .await
            .expect("sent");
        waits.push(res.summary().permit_wait);
    }
    assert!(
        waits[2] >= Duration::from_millis(500),
        "the third call was not paced: {waits:?}"
    );
    assert_eq!(proxy.forwarded().len(), 3);
}

// ---- guards: secrets -------------------------------------------------------

/// Redirected across origins through a forward proxy: the second hop
/// reaches the proxy with neither the origin's bearer nor its API key, and
/// the proxy's credentials reach neither origin.
#[tokio::test]
async fn a_redirect_through_a_proxy_drops_the_origins_credentials() {
    let _ = logs();
    let a = FakeApi::start().await.expect("api");
    let b = FakeApi::start().await.expect("api");
    let proxy = HttpProxy::start().await.expect("proxy");
    proxy.require_basic_auth("me", "Adv7RedirPw");
    let client = Client::builder(a.url())
        .bearer_auth("Adv7OriginBearer")
        .api_key_query("api_key", "Adv7OriginKey")
        .redirect(tollgate::RedirectPolicy::limited(3).allow_any_origin())
        .proxy(
            Proxy::all(proxy.url())
                .expect("proxy")
                .basic_auth("me", "Adv7RedirPw"),
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
        .get(format!("/redirect-to?url={target}&status=307"))
        .send()
        .await
        .expect("followed");
    assert_eq!(res.status(), 200);
    let heads = proxy.heads();
    assert_eq!(heads.len(), 2, "{heads:?}");
    assert!(!heads[1].contains("Adv7OriginBearer"), "{}", heads[1]);
    assert!(!heads[1].contains("Adv7OriginKey"), "{}", heads[1]);
    for (origin, path) in [(&a, "/redirect-to"), (&b, "/posts/1")] {
        let seen = origin.last_request(path).expect("reached");
        assert_eq!(seen.header("proxy-authorization"), None);
    }
    let seen = b.last_request("/posts/1").expect("reached");
    assert_eq!(seen.header("authorization"), None);
}

/// Every proxy credential, the client's Debug, the builder's Debug and a
/// mTLS identity: no secret in any Debug, and none anywhere in what
/// `tracing` printed at TRACE level for every target (this test binary's
/// calls through forward, CONNECT and SOCKS5 proxies, refusals included).
#[tokio::test]
async fn no_proxy_secret_in_debug_or_in_trace_logs() {
    let logs = logs();
    let api = FakeApi::start().await.expect("api");
    // A forward proxy with credentials in the URL, a SOCKS5 one with
    // basic_auth, a CONNECT one refusing.
    let http = HttpProxy::start().await.expect("proxy");
    http.require_basic_auth("me", "Adv7LogPwA");
    let url = http.url().replace("http://", "http://me:Adv7LogPwA@");
    let builder = Client::builder(api.url())
        .proxy(Proxy::all(&url).expect("proxy"))
        .identity(client_identity());
    let debug = format!("{builder:?}");
    let client = builder.build().expect("client");
    let debug = format!("{debug} {client:?}");
    client.get("/posts/1").send().await.expect("forwarded");

    let socks = Socks5Proxy::start().await.expect("socks");
    socks.require_auth("me", "Adv7LogPwB");
    let client = Client::builder(api.url())
        .proxy(
            Proxy::all(socks.url())
                .expect("proxy")
                .basic_auth("me", "Adv7LogPwB"),
        )
        .build()
        .expect("client");
    client.get("/posts/1").send().await.expect("socks");

    let refusing = HttpProxy::start().await.expect("proxy");
    refusing.require_basic_auth("me", "other");
    let client = Client::builder(NOWHERE_TLS)
        .proxy(
            Proxy::all(refusing.url())
                .expect("proxy")
                .basic_auth("me", "Adv7LogPwC"),
        )
        .build()
        .expect("client");
    let err = client.get("/").send().await.expect_err("407");
    let debug = format!("{debug} {}", shown(&err));

    let text = format!("{debug}\n{}", logs.contents());
    for secret in [
        "Adv7LogPwA".to_owned(),
        b64("me:Adv7LogPwA"),
        "Adv7LogPwB".to_owned(),
        "Adv7LogPwC".to_owned(),
        b64("me:Adv7LogPwC"),
        "PRIVATE KEY".to_owned(),
    ] {
        assert!(!text.contains(&secret), "{secret} leaked");
    }
}

/// IPv6 proxy hosts and env values with spaces: accepted where usable,
/// builder errors where not, never a panic.
#[test]
fn ipv6_proxy_hosts_and_spaced_env_values_are_handled() {
    let p = Proxy::all("http://u:Adv7V6Pw@[::1]:3128").expect("ipv6 proxy");
    let debug = format!("{p:?}");
    assert!(
        debug.contains("[::1]:3128") && !debug.contains("Adv7V6Pw"),
        "{debug}"
    );
    for bad in ["http://[::1", "http://::1:3128"] {
        let err = Proxy::all(bad).expect_err(bad);
        assert_eq!(err.kind(), ErrorKind::Builder, "{bad}");
    }
    let ok = Client::builder("http://api.test")
        .proxy_from_env_with(|n| (n == "HTTPS_PROXY").then(|| "  http://p.test:1  ".to_owned()))
        .build();
    assert!(ok.is_ok(), "{ok:?}");
    for value in [
        "http://p.test:1 extra",
        "http://p .test:1",
        "\nhttp://p.test:1\nx",
    ] {
        let v = value.to_owned();
        let err = Client::builder("http://api.test")
            .proxy_from_env_with(move |n| (n == "HTTPS_PROXY").then(|| v.clone()))
            .build()
            .expect_err(value);
        assert_eq!(err.kind(), ErrorKind::Builder, "{value:?}");
    }
    for list in [
        "",
        " , ,",
        "*",
        ".example.com",
        "10.0.0.0/8",
        "::1",
        "example.com:443",
    ] {
        let _ = NoProxy::from_string(list);
    }
}

/// A port that does not fit in 16 bits is taken by the http crate's parser
/// (it checks the port only when asked for it as a number), and
/// `port_u16()` then says `None`, which `check_url` and `route` read as "no
/// port": `http://proxy:99999` quietly becomes `http://proxy:80` (and
/// `socks5://...:70000` port 1080), so the proxy's credentials go to
/// whatever listens on the default port of that host.
#[test]
fn a_proxy_port_out_of_range_is_a_builder_error() {
    for url in [
        "http://me:pw@127.0.0.1:99999",
        "socks5://127.0.0.1:70000",
        "http://[::1]:65536",
    ] {
        match Proxy::all(url) {
            Err(e) => assert_eq!(e.kind(), ErrorKind::Builder, "{url}"),
            Ok(p) => panic!("{url} accepted as {p:?}"),
        }
    }
}

/// `NO_PROXY` domain rules do not over-match: `example.test` does not
/// cover `badexample.test` or `example.test.evil`, a network covers only
/// its addresses, and a host:port entry covers only its host. (Only loopback destinations go direct here: no DNS.)
#[tokio::test]
async fn no_proxy_rules_do_not_over_match() {
    let _ = logs();
    let proxy = Hostile::start(|mut tcp| async move {
        let _ = read_head(&mut tcp).await;
        let _ = tcp
            .write_all(b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n")
            .await;
    })
    .await;
    // `other.test:80` is taken for `other.test` (ports are not looked
    // at): it covers neither `badexample.test` nor anything else here.
    let rules = "example.test, .localhost, 127.0.0.2/32, other.test:80";
    for (base, proxied) in [
        ("http://badexample.test", true),
        ("http://example.test.evil", true),
        ("http://127.0.0.3", true),
        ("http://127.0.0.2:1", false),
        // Resolved from the hosts file, never by DNS.
        ("http://localhost:1", false),
    ] {
        let before = proxy.connections();
        let client = quick_connect(
            base,
            Proxy::all(proxy.url("http"))
                .expect("proxy")
                .no_proxy(NoProxy::from_string(rules)),
        );
        let outcome = client.get("/").send().await;
        assert_eq!(
            proxy.connections() - before,
            usize::from(proxied),
            "{base}: {outcome:?}"
        );
        if proxied {
            assert_eq!(outcome.expect("via the proxy").status(), 204, "{base}");
        }
    }
}

// ---- guards: TLS -----------------------------------------------------------

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn pem(label: &str, der: &[u8]) -> String {
    let text = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = text
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).expect("ascii"))
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

/// A client identity (a self-signed certificate and its key).
fn client_identity() -> tollgate::Identity {
    client_identity_and_cert().0
}

fn client_identity_and_cert() -> (tollgate::Identity, CertificateDer<'static>) {
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec!["client.test".to_owned()])
        .expect("params")
        .self_signed(&key)
        .expect("cert");
    let text = format!(
        "{}{}",
        pem("CERTIFICATE", cert.der()),
        pem("PRIVATE KEY", &key.serialize_der())
    );
    let identity = tollgate::Identity::from_pem(text.as_bytes()).expect("identity");
    (identity, cert.der().clone())
}

/// An https proxy that demands a client certificate: the client's mTLS
/// identity is for origins only, so the proxy handshake fails (the
/// certificate is never shown to the proxy).
#[tokio::test]
async fn the_mtls_identity_is_never_offered_to_an_https_proxy() {
    let _ = logs();
    let api = FakeApi::start().await.expect("api");
    let proxy = HttpProxy::start().await.expect("proxy");
    let presented = Arc::new(AtomicUsize::new(0));
    let (identity, client_cert) = client_identity_and_cert();
    let certified =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).expect("certificate");
    let root = certified.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        certified.signing_key.serialize_der(),
    ));
    // Asks for (but does not require) a client certificate and records
    // whether one came.
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new({
            let mut roots = rustls::RootCertStore::empty();
            roots.add(client_cert).expect("client root");
            roots
        }),
        provider(),
    )
    .allow_unauthenticated()
    .build()
    .expect("verifier");
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![root.clone()], key)
        .expect("config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let upstream = proxy.addr();
    let seen = presented.clone();
    let front = Hostile::start(move |tcp| {
        let acceptor = acceptor.clone();
        let seen = seen.clone();
        async move {
            let Ok(mut tls) = acceptor.accept(tcp).await else {
                return;
            };
            if tls.get_ref().1.peer_certificates().is_some() {
                seen.fetch_add(1, Ordering::SeqCst);
            }
            let Ok(mut up) = TcpStream::connect(upstream).await else {
                return;
            };
            let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
        }
    })
    .await;
    let client = Client::builder(api.url())
        .add_root_certificate_der(root.to_vec())
        .identity(identity)
        .proxy(Proxy::all(front.url("https")).expect("proxy"))
        .build()
        .expect("client");
    // The proxy trusts the client's certificate: had it been presented,
    // the front would have seen it.
    let _ = client.get("/posts/1").send().await;
    assert_eq!(front.connections(), 1);
    assert_eq!(
        presented.load(Ordering::SeqCst),
        0,
        "the identity reached the proxy"
    );
}

/// A TLS front for `upstream` (the testkit's), requiring a client
/// certificate chaining to `client_root` when one is given.
async fn tls_front(
    upstream: SocketAddr,
    alpn: &[&[u8]],
    client_root: Option<CertificateDer<'static>>,
) -> (TlsFront, CertificateDer<'static>) {
    let mut builder = TlsFront::builder(upstream).alpn(alpn);
    if let Some(ca) = client_root {
        builder = builder.client_ca(ca);
    }
    let front = builder.start().await.expect("tls front");
    let root = front.root().clone();
    (front, root)
}

/// Through a CONNECT tunnel the mTLS identity reaches the origin that
/// requires it (parity with a direct connection), the proxy sees neither
/// the origin's bearer nor anything but the CONNECT, and the TRACE logs of
/// an HTTP/2 exchange inside the tunnel show no credential.
#[tokio::test]
async fn through_a_tunnel_mtls_reaches_the_origin_and_logs_show_no_bearer() {
    let logs = logs();
    let api = FakeApi::start().await.expect("api");
    api.require_bearer("Adv7TunnelBearer");
    let (identity, client_cert) = client_identity_and_cert();
    let (front, root) = tls_front(api.addr(), &[b"h2", b"http/1.1"], Some(client_cert)).await;
    let proxy = HttpProxy::start().await.expect("proxy");
    proxy.require_basic_auth("me", "Adv7TunnelPw");
    let client = Client::builder(front.url())
        .add_root_certificate_der(root.to_vec())
        .identity(identity)
        .bearer_auth("Adv7TunnelBearer")
        .proxy(
            Proxy::all(proxy.url())
                .expect("proxy")
                .basic_auth("me", "Adv7TunnelPw"),
        )
        .build()
        .expect("client");
    let res = client
        .get("/posts/1")
        .send()
        .await
        .expect("mTLS through CONNECT");
    assert_eq!(res.status(), 200);
    assert_eq!(res.version(), http::Version::HTTP_2);
    assert_eq!(proxy.connect_targets(), vec![front.addr().to_string()]);
    for head in proxy.heads() {
        assert!(head.starts_with("CONNECT "), "{head}");
        assert!(!head.contains("Adv7TunnelBearer"), "{head}");
    }
    let text = logs.contents();
    assert!(
        text.lines().any(|l| l.contains("h2::")),
        "the TRACE subscriber saw the HTTP/2 exchange"
    );
    for secret in [
        "Adv7TunnelBearer".to_owned(),
        "Adv7TunnelPw".to_owned(),
        b64("me:Adv7TunnelPw"),
    ] {
        assert!(!text.contains(&secret), "{secret} in the TRACE logs");
    }
}

/// A CONNECT proxy that answers 200 and then plays the origin with a
/// certificate of its own (one the client even trusts, but for another
/// name; or one it does not trust): the handshake is refused, the call is a
/// connect error, and not a byte of the request (the bearer) reaches the
/// proxy.
#[tokio::test]
async fn a_proxy_playing_the_origin_never_sees_the_request() {
    let _ = logs();
    for trusted in [true, false] {
        let certified =
            rcgen::generate_simple_self_signed(vec!["evil.test".to_owned()]).expect("cert");
        let mitm_cert = certified.cert.der().clone();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            certified.signing_key.serialize_der(),
        ));
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(vec![mitm_cert.clone()], key)
            .expect("config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let captured = Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
        let sink = captured.clone();
        let proxy = Hostile::start(move |mut tcp| {
            let acceptor = acceptor.clone();
            let sink = sink.clone();
            async move {
                let _ = read_head(&mut tcp).await;
                if tcp
                    .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    .await
                    .is_err()
                {
                    return;
                }
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = [0u8; 4096];
                while let Ok(n) = tls.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    sink.lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .extend_from_slice(&buf[..n]);
                }
            }
        })
        .await;
        let mut builder = Client::builder("https://127.0.0.1:9")
            .bearer_auth("Adv7MitmBearer")
            .connect_timeout(Duration::from_millis(500))
            .proxy(Proxy::all(proxy.url("http")).expect("proxy"));
        if trusted {
            builder = builder.add_root_certificate_der(mitm_cert.to_vec());
        }
        let client = builder.build().expect("client");
        let err = fails_quickly(&client, Duration::from_secs(2)).await;
        assert_eq!(err.kind(), ErrorKind::Connect, "trusted={trusted}: {err:?}");
        assert!(err.to_string().contains("certificate"), "{err}");
        assert_eq!(proxy.connections(), 1);
        let seen = captured
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        assert!(
            seen.is_empty(),
            "trusted={trusted}: the proxy read {:?}",
            String::from_utf8_lossy(&seen)
        );
    }
}

/// A refused tunnel gives its pool slot back: with a pool of one, call
/// after call to a refusing proxy each end with the refusal (none waits
/// for a slot a failed call kept), and a stalled proxy's slot comes back at
/// the connect timeout.
#[tokio::test]
async fn a_refused_or_stalled_tunnel_gives_its_pool_slot_back() {
    use tollgate_limit::ConcurrencyLimitLayer;
    let _ = logs();
    let refusing = HttpProxy::start().await.expect("proxy");
    refusing.refuse_with(403);
    let client = Client::builder(NOWHERE_TLS)
        .concurrency_limit(ConcurrencyLimitLayer::new(1))
        .timeout(Duration::from_secs(5))
        .proxy(Proxy::all(refusing.url()).expect("proxy"))
        .build()
        .expect("client");
    for _ in 0..5 {
        let err = fails_quickly(&client, Duration::from_secs(2)).await;
        assert_eq!(err.kind(), ErrorKind::Proxy, "{err:?}");
    }
    assert_eq!(refusing.connections(), 5);

    let silent = Hostile::start(stall).await;
    let client = Client::builder(NOWHERE_TLS)
        .concurrency_limit(ConcurrencyLimitLayer::new(1))
        .connect_timeout(Duration::from_millis(200))
        .timeout(Duration::from_secs(5))
        .proxy(Proxy::all(silent.url("http")).expect("proxy"))
        .build()
        .expect("client");
    let calls: Vec<_> = (0..3)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { client.get("/").send().await })
        })
        .collect();
    let started = tokio::time::Instant::now();
    for call in calls {
        let err = call.await.expect("task").expect_err("stalled proxy");
        assert!(
            matches!(err.kind(), ErrorKind::Timeout | ErrorKind::Connect),
            "{err:?}"
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(silent.connections(), 3);
}

/// An https origin redirecting to plain http (allowed): the first hop is a
/// CONNECT tunnel, the second goes to the proxy in clear, and carries none
/// of the origin's credentials (bearer, API key) for the proxy to read.
#[tokio::test]
async fn a_downgrade_redirect_puts_no_origin_credential_in_clear_before_the_proxy() {
    let _ = logs();
    let api = FakeApi::start().await.expect("api");
    let (front, root) = tls_front(api.addr(), &[b"http/1.1"], None).await;
    let proxy = HttpProxy::start().await.expect("proxy");
    let client = Client::builder(front.url())
        .add_root_certificate_der(root.to_vec())
        .bearer_auth("Adv7DowngradeBearer")
        .api_key_header("x-api-key", "Adv7DowngradeKey")
        .redirect(tollgate::RedirectPolicy::limited(3).allow_any_origin())
        .proxy(Proxy::all(proxy.url()).expect("proxy"))
        .build()
        .expect("client");
    let target: String = format!("{}/posts/1", api.url())
        .bytes()
        .map(|c| match c {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-' => char::from(c).to_string(),
            c => format!("%{c:02X}"),
        })
        .collect();
    let res = client
        .get(format!("/redirect-to?url={target}&status=302"))
        .header("cookie", "session=Adv7DowngradeCookie")
        .send()
        .await
        .expect("followed");
    assert_eq!(res.status(), 200);
    assert_eq!(proxy.connect_targets(), vec![front.addr().to_string()]);
    assert_eq!(proxy.forwarded(), vec![format!("{}/posts/1", api.url())]);
    for head in proxy.heads() {
        for secret in [
            "Adv7DowngradeBearer",
            "Adv7DowngradeKey",
            "Adv7DowngradeCookie",
        ] {
            assert!(!head.contains(secret), "{secret} in clear: {head}");
        }
    }
}

/// `NoProxy`'s docs say "ports are not looked at"; an entry written with a
/// port (`127.0.0.1:8080`, `localhost:8080`, as many `NO_PROXY` values in
/// the wild are) is taken by hyper-util as a domain name that matches
/// nothing, so the entry silently does nothing and the traffic meant to
/// stay inside (with its plain-http credentials) goes to the proxy. Either
/// the port should be ignored (as documented) or the entry refused.
#[tokio::test]
async fn a_no_proxy_entry_with_a_port_is_honoured_or_refused() {
    let _ = logs();
    let api = FakeApi::start().await.expect("api");
    let port = api.addr().port();
    for entry in [format!("127.0.0.1:{port}"), format!("localhost:{port}")] {
        let proxy = HttpProxy::start().await.expect("proxy");
        let base = if entry.starts_with("localhost") {
            format!("http://localhost:{port}")
        } else {
            api.url()
        };
        let client = Client::builder(&base)
            .bearer_auth("Adv7InternalBearer")
            .proxy(
                Proxy::all(proxy.url())
                    .expect("proxy")
                    .no_proxy(NoProxy::from_string(&entry)),
            )
            .build()
            .expect("client");
        client.get("/posts/1").send().await.expect("a response");
        assert_eq!(
            proxy.connections(),
            0,
            "NO_PROXY={entry}: the proxy read {:?}",
            proxy.heads()
        );
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

    /// Any text as a proxy URL, a `NO_PROXY` list or an environment value:
    /// a proxy or a builder error, never a panic; and a percent-encoded
    /// password, whatever its characters, never shows in Debug or in the
    /// builder's error.
    #[test]
    fn any_proxy_text_is_a_proxy_or_a_builder_error(
        url in "\\PC{0,40}",
        list in "[ ,.*:/0-9a-z\\[\\]]{0,30}",
        password in "[ -~]{8,20}",
    ) {
        let built = Proxy::all(&url).and_then(|p| {
            Client::builder("http://api.test")
                .proxy(p.no_proxy(NoProxy::from_string(&list)))
                .build()
        });
        if let Err(e) = built {
            proptest::prop_assert_eq!(e.kind(), ErrorKind::Builder);
        }
        let env = url;
        let built = Client::builder("http://api.test")
            .proxy_from_env_with(move |n| match n {
                "HTTPS_PROXY" => Some(env.clone()),
                "NO_PROXY" => Some(list.clone()),
                _ => None,
            })
            .build();
        if let Err(e) = built {
            proptest::prop_assert_eq!(e.kind(), ErrorKind::Builder);
        }
        let encoded = percent_encode(&password);
        let marked = format!("Adv7{password}");
        let marked_encoded = format!("Adv7{encoded}");
        let with_marker = format!("http://me:Adv7{encoded}@p.test:1");
        match Proxy::all(&with_marker) {
            Ok(p) => {
                let client = Client::builder("http://api.test").proxy(p.clone()).build();
                let shown = format!("{p:?} {client:?}");
                proptest::prop_assert!(
                    !shown.contains(&marked) && !shown.contains(&marked_encoded),
                    "{}",
                    shown
                );
            }
            Err(e) => {
                let shown = format!("{e} {e:?}");
                proptest::prop_assert!(
                    !shown.contains(&marked) && !shown.contains(&marked_encoded),
                    "{}",
                    shown
                );
            }
        }
    }
}

/// Every byte but unreserved ones as `%XX`.
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(b).to_string()
            }
            b => format!("%{b:02X}"),
        })
        .collect()
}

/// HTTP/2 by prior knowledge to a plain-http origin through an HTTP/1
/// forward proxy (which cannot speak it): one typed error, in time, with
/// no proxy credential in it.
#[tokio::test]
async fn http2_prior_knowledge_through_a_forward_proxy_is_one_typed_outcome() {
    let _ = logs();
    let api = FakeApi::start().await.expect("api");
    let proxy = HttpProxy::start().await.expect("proxy");
    let client = Client::builder(api.url())
        .http2_prior_knowledge()
        .read_timeout(Duration::from_millis(300))
        .timeout(Duration::from_secs(3))
        .proxy(
            Proxy::all(proxy.url())
                .expect("proxy")
                .basic_auth("me", "Adv7H2cPw"),
        )
        .build()
        .expect("client");
    let started = tokio::time::Instant::now();
    let outcome = tokio::time::timeout(Duration::from_secs(5), client.get("/posts/1").send())
        .await
        .expect("the call ended");
    assert!(started.elapsed() < Duration::from_secs(2), "{outcome:?}");
    match outcome {
        Ok(res) => assert!(res.status().is_client_error(), "{}", res.status()),
        Err(err) => {
            assert!(
                matches!(
                    err.kind(),
                    ErrorKind::Transport | ErrorKind::Connect | ErrorKind::Timeout
                ),
                "{err:?}"
            );
            assert!(!shown(&err).contains(&b64("me:Adv7H2cPw")));
        }
    }
}

/// A custom transport makes its own connections: a proxy set beside it
/// would be silently not used (traffic meant for it going wherever the
/// transport sends it), so the pair is a builder error, in either order
/// and for an environment that names a proxy; an environment naming none
/// is fine.
#[test]
fn a_proxy_with_a_custom_transport_is_a_builder_error() {
    let stub = tower::service_fn(|_req: http::Request<tollgate::RequestBody>| async {
        Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
    });
    let proxy = || Proxy::all("http://127.0.0.1:3128").expect("proxy");
    for built in [
        Client::builder("http://api.test")
            .proxy(proxy())
            .transport(stub)
            .build(),
        Client::builder("http://api.test")
            .transport(stub)
            .proxy(proxy())
            .build(),
        Client::builder("http://api.test")
            .transport(stub)
            .proxy_from_env_with(|n| (n == "ALL_PROXY").then(|| "http://p.test:1".to_owned()))
            .build(),
    ] {
        let err = built.expect_err("a proxy beside a custom transport");
        assert_eq!(err.kind(), ErrorKind::Builder, "{err:?}");
    }
    Client::builder("http://api.test")
        .transport(stub)
        .proxy_from_env_with(|_| None)
        .build()
        .expect("no proxy named: the custom transport alone");
}
