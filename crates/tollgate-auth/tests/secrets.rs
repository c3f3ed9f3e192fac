//! A canary secret in every credential, key and token: no `Debug` or
//! `Display` of any auth type or error shows it.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use tollgate_auth::{token_fn, AuthError, AuthLayer, ClientCredentials, Credential, Origin, Token};
use tower::{service_fn, BoxError, Layer, Service, ServiceExt};

const CANARY: &str = "CaNaRy7x9q";

fn assert_hidden(what: &str, text: &str) {
    assert!(!text.contains(CANARY), "{what} shows the secret: {text}");
    // Base64 of the canary, as Basic auth would carry it.
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(format!("user:{CANARY}"));
    assert!(
        !text.contains(&b64),
        "{what} shows the encoded secret: {text}"
    );
}

fn both<T: std::fmt::Debug + std::fmt::Display>(what: &str, value: &T) {
    assert_hidden(what, &format!("{value:?}"));
    assert_hidden(what, &format!("{value:#?}"));
    assert_hidden(what, &value.to_string());
}

fn debug<T: std::fmt::Debug>(what: &str, value: &T) {
    assert_hidden(what, &format!("{value:?}"));
    assert_hidden(what, &format!("{value:#?}"));
}

fn token_endpoint(
    status: StatusCode,
    body: String,
) -> impl Service<
    Request<Full<Bytes>>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Send,
> + Clone
       + Send
       + Sync
       + 'static {
    service_fn(move |_req: Request<Full<Bytes>>| {
        let body = body.clone();
        async move {
            let mut response = Response::new(Full::new(Bytes::from(body)));
            *response.status_mut() = status;
            Ok::<_, Infallible>(response)
        }
    })
}

#[test]
fn credentials_and_their_errors_hide_the_secret() {
    let credentials = [
        Credential::bearer(CANARY).expect("valid"),
        Credential::basic("user", CANARY).expect("valid"),
        Credential::api_key_header("x-api-key", CANARY).expect("valid"),
        Credential::api_key_query("api_key", CANARY).expect("valid"),
        Credential::from_header(
            http::header::AUTHORIZATION,
            http::HeaderValue::from_static("Bearer CaNaRy7x9q"),
        ),
    ];
    for c in &credentials {
        debug("Credential", c);
        debug("Token", &Token::new(c.clone()).expires_in(Duration::MAX));
        debug("AuthLayer", &AuthLayer::new(c.clone()));
        let auth = AuthLayer::new(c.clone()).any_origin().layer(service_fn(
            |_r: Request<Full<Bytes>>| async { Ok::<_, Infallible>(Response::new(())) },
        ));
        debug("Auth", &auth);
    }
    let bad = [
        Credential::bearer(format!("{CANARY}\r\nx: y")).expect_err("CRLF"),
        Credential::bearer(format!("{CANARY} x")).expect_err("space"),
        Credential::basic(format!("{CANARY}:x"), "pw").expect_err("colon"),
        Credential::basic("user", format!("{CANARY}\0")).expect_err("NUL"),
        Credential::api_key_header("x-api-key", format!("{CANARY}\n")).expect_err("LF"),
        Credential::api_key_header(format!("{CANARY} name"), "v").expect_err("name"),
        Credential::api_key_query("k", format!("{CANARY}\r")).expect_err("CR"),
    ];
    for e in &bad {
        both("InvalidCredential", e);
    }
    for layer in [
        AuthLayer::bearer(format!("{CANARY}\n")).map(|_| ()),
        AuthLayer::basic("user", format!("{CANARY}\n")).map(|_| ()),
        AuthLayer::api_key_header("x-k", format!("{CANARY}\n")).map(|_| ()),
        AuthLayer::api_key_query("k", format!("{CANARY}\n")).map(|_| ()),
    ] {
        both("InvalidCredential", &layer.expect_err("invalid"));
    }
    for origin in [
        format!("https://user:{CANARY}@api.example.com"),
        format!("https://{CANARY}@api.example.com"),
    ] {
        both(
            "InvalidOrigin",
            &origin.parse::<Origin>().expect_err("userinfo"),
        );
    }
}

#[tokio::test]
async fn token_sources_and_refresh_errors_hide_the_secret() {
    let source =
        token_fn(|| async { Ok(Token::bearer(CANARY)?.expires_in(Duration::from_secs(60))) });
    debug("FnTokenSource", &source);
    let layer = AuthLayer::token_source(source).any_origin();
    debug("AuthLayer", &layer);
    let service = layer.layer(service_fn(|_r: Request<Full<Bytes>>| async {
        Ok::<_, Infallible>(Response::new(()))
    }));
    debug("Auth", &service);
    let mut s = service.clone();
    let future = s.call(
        Request::get("http://api.test/")
            .body(Full::default())
            .expect("req"),
    );
    debug("ResponseFuture", &future);
    future.await.expect("response");
    debug(
        "ResponseFuture",
        &s.call(
            Request::get("http://api.test/")
                .body(Full::default())
                .expect("req"),
        ),
    );

    // The OAuth2 client: secret, and credentials in the token URL.
    for url in [
        "https://auth.example.com/token".to_owned(),
        format!("https://id:{CANARY}@auth.example.com/token"),
        format!("https://auth.example.com/token?client_secret={CANARY}"),
    ] {
        let endpoint = token_endpoint(
            StatusCode::OK,
            format!(r#"{{"access_token":"{CANARY}","token_type":"Bearer","expires_in":60}}"#),
        );
        let cc = ClientCredentials::new(endpoint, url.parse().expect("uri"), "client-1", CANARY)
            .expect("valid");
        debug("ClientCredentials", &cc);
        debug(
            "ClientCredentials",
            &cc.clone().secret_in_body().scope("read"),
        );
        debug("AuthLayer", &AuthLayer::token_source(cc));
    }
    let bad_secret = ClientCredentials::new(
        token_endpoint(StatusCode::OK, String::new()),
        "https://auth.example.com/token".parse().expect("uri"),
        "client-1",
        format!("{CANARY}\n"),
    )
    .expect_err("control character");
    both("InvalidCredential", &bad_secret);

    // Token endpoints that echo the secret back in a refusal or garbage.
    let answers = [
        (
            StatusCode::UNAUTHORIZED,
            format!(r#"{{"error":"invalid_client","secret":"{CANARY}"}}"#),
        ),
        (
            StatusCode::OK,
            format!(r#"{{"access_token":"{CANARY}","token_type":"mac"}}"#),
        ),
        (
            StatusCode::OK,
            format!(r#"{{"access_token":"{CANARY} x","token_type":"Bearer"}}"#),
        ),
        (StatusCode::OK, format!("not json {CANARY}")),
    ];
    for (status, body) in answers {
        let cc = ClientCredentials::new(
            token_endpoint(status, body),
            "https://auth.example.com/token".parse().expect("uri"),
            "client-1",
            CANARY,
        )
        .expect("valid");
        let service = AuthLayer::token_source(cc).any_origin().layer(service_fn(
            |_r: Request<Full<Bytes>>| async { Ok::<_, Infallible>(Response::new(())) },
        ));
        let err: BoxError = service
            .oneshot(
                Request::get("http://api.test/")
                    .body(Full::default())
                    .expect("req"),
            )
            .await
            .expect_err("no token");
        assert_hidden("refresh error", &format!("{err:?}"));
        assert_hidden("refresh error", &err.to_string());
        let auth = err.downcast_ref::<AuthError>().expect("typed");
        both("AuthError", auth);
        let mut source = std::error::Error::source(auth);
        while let Some(e) = source {
            assert_hidden("error source", &format!("{e:?} {e}"));
            source = e.source();
        }
    }
}

/// Everything traced, at every level, written out as text.
#[derive(Clone, Default)]
struct Capture(std::sync::Arc<std::sync::Mutex<String>>);

/// The binary's one subscriber, global, holding what every test traced.
///
/// Not `set_default` for one test: `tracing` works out once per callsite
/// whether anyone listens, for the thread that reaches it first, so a test
/// beside this one reaching "refreshing token" without a subscriber made it
/// silent for the whole binary (the capture then missed it, 1 run in 7).
/// Before the first subscriber is set no callsite is worked out at all, and
/// after it every thread sees this one.
fn capture() -> &'static Capture {
    static CAPTURE: std::sync::OnceLock<Capture> = std::sync::OnceLock::new();
    CAPTURE.get_or_init(|| {
        let capture = Capture::default();
        tracing::subscriber::set_global_default(capture.clone())
            .expect("the test binary's only subscriber");
        capture
    })
}

struct Fields<'a>(&'a mut String);

impl tracing::field::Visit for Fields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.push_str(&format!(" {}={value:?}", field.name()));
    }
}

impl tracing::Subscriber for Capture {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, span: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        let mut out = self.0.lock().expect("lock");
        out.push_str(span.metadata().name());
        span.record(&mut Fields(&mut out));
        out.push('\n');
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, values: &tracing::span::Record<'_>) {
        values.record(&mut Fields(&mut self.0.lock().expect("lock")));
    }
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut out = self.0.lock().expect("lock");
        event.record(&mut Fields(&mut out));
        out.push('\n');
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

#[tokio::test(start_paused = true)]
async fn nothing_traced_shows_the_secret() {
    let capture = capture();
    // A token that is refused once, then a token endpoint that fails.
    let fetches = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let f = fetches.clone();
    let source = token_fn(move || {
        let n = f.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        async move {
            if n >= 2 {
                return Err::<Token, BoxError>("token endpoint down".into());
            }
            Ok(Token::bearer(format!("{CANARY}{n}"))?.expires_in(Duration::from_secs(30)))
        }
    });
    let upstream = service_fn(|req: Request<Full<Bytes>>| async move {
        let mut response = Response::new(());
        if req
            .headers()
            .get(http::header::AUTHORIZATION)
            .is_some_and(|v| v.as_bytes().ends_with(b"0"))
        {
            *response.status_mut() = StatusCode::UNAUTHORIZED;
        }
        Ok::<_, Infallible>(response)
    });
    let service = AuthLayer::token_source(source).any_origin().layer(upstream);
    let get = || {
        Request::get("http://api.test/")
            .body(Full::default())
            .expect("req")
    };
    let ok = service
        .clone()
        .oneshot(get())
        .await
        .expect("refused, renewed, replayed");
    assert_eq!(ok.status(), StatusCode::OK);
    tokio::time::advance(Duration::from_secs(40)).await;
    service
        .clone()
        .oneshot(get())
        .await
        .expect_err("endpoint down");
    service
        .clone()
        .oneshot(get())
        .await
        .expect_err("backing off");
    let out = capture.0.lock().expect("lock").clone();
    assert!(out.contains("refreshing token"), "the capture works: {out}");
    assert_hidden("tracing output", &out);
}
