//! Redirects through the facade (stack position 4), over loopback to
//! FakeApi, with a second FakeApi as the other origin: what is followed,
//! how methods and bodies change, what each hop carries, and what is
//! refused.
#![cfg(all(feature = "redirect", feature = "auth", feature = "limit"))]

use std::time::Duration;

use http::StatusCode;
use tollgate::limit::{Quota, RateLimitLayer};
use tollgate::{Client, ErrorKind, RedirectPolicy};
use tollgate_testkit::{FakeApi, Fault};

/// `/redirect-to?url=<url>&status=<status>`, with `url` percent-encoded.
fn redirect_to(url: &str, status: u16) -> String {
    let encoded: String = url
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(b).to_string()
            }
            b => format!("%{b:02X}"),
        })
        .collect();
    format!("/redirect-to?url={encoded}&status={status}")
}

async fn api() -> FakeApi {
    FakeApi::start().await.expect("fake api")
}

#[tokio::test]
async fn a_chain_is_followed_to_its_end_and_the_response_says_where_and_how_many_hops() {
    let api = api().await;
    let client = Client::new(api.url()).expect("client");
    let res = client.get("/redirect/3").send().await.expect("followed");
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.redirects(), 3);
    assert_eq!(res.summary().redirects, 3);
    assert_eq!(res.url().path(), "/anything/redirected");
    assert_eq!(res.data().expect("json")["method"], "GET");
    let record = res.to_json();
    assert_eq!(record["redirects"], 3);
    assert_eq!(record["url"], format!("{}/anything/redirected", api.url()));
    assert_eq!(api.hits("/redirect/3"), 1);
    assert_eq!(api.hits("/redirect/1"), 1);
    assert_eq!(api.hits("/anything/redirected"), 1);
}

#[tokio::test]
async fn a_response_without_redirects_has_its_request_url_and_no_hops() {
    let api = api().await;
    let client = Client::new(api.url()).expect("client");
    let res = client.get("/posts/1").send().await.expect("sent");
    assert_eq!(res.redirects(), 0);
    assert_eq!(res.url().path(), "/posts/1");
}

#[tokio::test]
async fn ten_hops_are_followed_by_default_and_the_eleventh_is_a_redirect_error() {
    let api = api().await;
    let client = Client::new(api.url()).expect("client");
    let res = client.get("/redirect/10").send().await.expect("10 hops");
    assert_eq!(res.redirects(), 10);
    let err = client
        .get("/redirect/11")
        .send()
        .await
        .expect_err("11 hops");
    assert_eq!(err.kind(), ErrorKind::Redirect);
    assert!(err.is_redirect());
    assert!(err.to_string().contains("too many redirects"), "{err}");
}

#[tokio::test]
async fn a_limited_policy_stops_at_its_limit_with_a_typed_error() {
    let api = api().await;
    let client = Client::builder(api.url())
        .redirect(RedirectPolicy::limited(2))
        .build()
        .expect("client");
    assert_eq!(
        client
            .get("/redirect/2")
            .send()
            .await
            .expect("2")
            .redirects(),
        2
    );
    let err = client.get("/redirect/3").send().await.expect_err("3 hops");
    assert_eq!(err.kind(), ErrorKind::Redirect);
    // The third hop was never asked for.
    assert_eq!(api.hits("/anything/redirected"), 1);
}

#[tokio::test]
async fn the_none_policy_returns_the_3xx_itself() {
    let api = api().await;
    let client = Client::builder(api.url())
        .redirect(RedirectPolicy::none())
        .build()
        .expect("client");
    let res = client.get("/redirect/2").send().await.expect("3xx");
    assert_eq!(res.status(), StatusCode::FOUND);
    assert_eq!(res.headers()["location"], "/redirect/1");
    assert_eq!(res.redirects(), 0);
    assert_eq!(api.hits("/redirect/1"), 0);
}

#[tokio::test]
async fn a_custom_policy_decides_follow_stop_or_error() {
    let api = api().await;
    let policy = RedirectPolicy::custom(|attempt| {
        if attempt.url().path() == "/redirect/1" {
            attempt.stop()
        } else if attempt.url().path() == "/redirect/4" {
            attempt.error("not there")
        } else {
            attempt.follow()
        }
    });
    let client = Client::builder(api.url())
        .redirect(policy)
        .build()
        .expect("client");
    let res = client.get("/redirect/3").send().await.expect("stopped");
    assert_eq!(res.status(), StatusCode::FOUND);
    assert_eq!(res.redirects(), 1);
    assert_eq!(res.url().path(), "/redirect/2");
    let err = client.get("/redirect/5").send().await.expect_err("refused");
    assert_eq!(err.kind(), ErrorKind::Redirect);
    assert!(err.to_string().contains("not there"), "{err}");
}

#[tokio::test]
async fn post_answered_by_301_302_or_303_becomes_a_get_without_body_or_content_headers() {
    let api = api().await;
    let client = Client::new(api.url()).expect("client");
    for status in [301, 302, 303] {
        let res = client
            .post(redirect_to("/anything/after", status))
            .json(&serde_json::json!({"secret": "payload"}))
            .send()
            .await
            .expect("followed");
        let echo = res.data().expect("json");
        assert_eq!(echo["method"], "GET", "{status}");
        assert_eq!(echo["body"], "", "{status}");
        assert!(echo["headers"].get("content-type").is_none(), "{status}");
        assert!(echo["headers"].get("content-length").is_none(), "{status}");
    }
}

#[tokio::test]
async fn a_307_or_308_keeps_the_method_and_the_body() {
    let api = api().await;
    let client = Client::new(api.url()).expect("client");
    for status in [307, 308] {
        let res = client
            .put(redirect_to("/anything/after", status))
            .json(&serde_json::json!({"n": status}))
            .send()
            .await
            .expect("followed");
        let echo = res.data().expect("json");
        assert_eq!(echo["method"], "PUT", "{status}");
        assert_eq!(echo["body"], format!("{{\"n\":{status}}}"), "{status}");
        assert_eq!(echo["headers"]["content-type"][0], "application/json");
    }
}

#[tokio::test]
async fn a_redirect_to_another_origin_is_refused_and_never_sent() {
    let api = api().await;
    let other = FakeApi::start().await.expect("other");
    let client = Client::new(api.url()).expect("client");
    let target = format!("{}/anything/x", other.url());
    let err = client
        .get(redirect_to(&target, 302))
        .send()
        .await
        .expect_err("refused");
    assert_eq!(err.kind(), ErrorKind::Redirect);
    assert!(
        err.to_string()
            .contains("origin the redirect policy does not allow"),
        "{err}"
    );
    assert_eq!(other.total_hits(), 0);
    // A protocol-relative `Location` is another origin as well.
    let relative = format!("//{}/anything/x", other.addr());
    let err = client
        .get(redirect_to(&relative, 302))
        .send()
        .await
        .expect_err("refused");
    assert_eq!(err.kind(), ErrorKind::Redirect);
    assert_eq!(other.total_hits(), 0);
}

#[tokio::test]
async fn an_allowed_origin_is_followed_without_the_auth_layers_credential() {
    let api = api().await;
    let other = FakeApi::start().await.expect("other");
    let client = Client::builder(api.url())
        .bearer_auth("s3cret")
        .redirect(
            RedirectPolicy::default()
                .allow_origin(&other.url())
                .expect("origin"),
        )
        .build()
        .expect("client");
    let res = client
        .get(redirect_to(&format!("{}/anything/x", other.url()), 302))
        .send()
        .await
        .expect("followed");
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.redirects(), 1);
    let first = api.last_request("/redirect-to").expect("first hop");
    assert_eq!(first.header("authorization"), Some("Bearer s3cret"));
    let hop = other.last_request("/anything/x").expect("second hop");
    assert_eq!(hop.header("authorization"), None);
}

/// Every way a client carries a credential, and a chain that leaves for
/// the other origin: none of them reaches it.
#[tokio::test]
async fn no_credential_of_any_kind_reaches_another_origin() {
    let api = api().await;
    let other = FakeApi::start().await.expect("other");
    let allow = || {
        RedirectPolicy::default()
            .allow_origin(&other.url())
            .expect("origin")
    };
    // The server echoes the key into the `Location`, as one that keeps the
    // query string on a redirect would.
    let to_other = |query: &str| {
        redirect_to(
            &format!("{}/anything/leak?{query}&page=2", other.url()),
            307,
        )
    };
    let clients = [
        (
            "default headers",
            Client::builder(api.url())
                .default_header("authorization", "Bearer default")
                .default_header("cookie", "session=default")
                .default_header("proxy-authorization", "Basic cHJveHk=")
                .redirect(allow())
                .build()
                .expect("client"),
            "x=1",
        ),
        (
            "api key header",
            Client::builder(api.url())
                .api_key_header("x-api-key", "k3y")
                .redirect(allow())
                .build()
                .expect("client"),
            "x=1",
        ),
        (
            "api key query",
            Client::builder(api.url())
                .api_key_query("appkey", "k3y")
                .redirect(allow())
                .build()
                .expect("client"),
            "appkey=k3y",
        ),
        (
            "sensitive query of the request",
            Client::builder(api.url())
                .default_query("token", "t0ken")
                .redirect(allow())
                .build()
                .expect("client"),
            "token=t0ken",
        ),
    ];
    for (what, client, query) in clients {
        let res = client
            .get(to_other(query))
            .header("cookie", "own=cookie")
            .send()
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(res.status(), StatusCode::OK, "{what}");
        let hop = other.last_request("/anything/leak").expect("hop");
        for name in [
            "authorization",
            "cookie",
            "proxy-authorization",
            "x-api-key",
        ] {
            assert_eq!(hop.header(name), None, "{what}: {name}");
        }
        let query = hop.uri.query().unwrap_or_default();
        assert!(
            !query.contains("k3y") && !query.contains("t0ken"),
            "{what}: {query}"
        );
        // Parameters that are not secret stay.
        assert!(query.contains("page=2"), "{what}: {query}");
    }
    // A per-request credential without an auth layer is on the request,
    // marked sensitive: it stays off too.
    let plain = Client::builder(api.url())
        .redirect(allow())
        .build()
        .expect("client");
    let _ = plain
        .get(to_other("x=1"))
        .bearer_auth("per-request")
        .send()
        .await
        .expect("sent");
    let hop = other.last_request("/anything/leak").expect("hop");
    assert_eq!(hop.header("authorization"), None);
    let key = tollgate::Credential::api_key_query("appid", "k3y").expect("key");
    let _ = plain
        .get(to_other("appid=k3y"))
        .credential(key)
        .send()
        .await
        .expect("sent");
    let hop = other.last_request("/anything/leak").expect("hop");
    let query = hop.uri.query().unwrap_or_default();
    assert!(!query.contains("k3y"), "{query}");
    assert!(query.contains("page=2"), "{query}");
}

/// Go's CVE-2024-45336: a → b, then b → b again must not bring a's
/// credentials back on the second hop.
#[tokio::test]
async fn credentials_stay_off_for_the_rest_of_a_chain_that_left_the_origin() {
    let api = api().await;
    let other = FakeApi::start().await.expect("other");
    let client = Client::builder(api.url())
        .default_header("authorization", "Bearer default")
        .redirect(RedirectPolicy::default().allow_any_origin())
        .build()
        .expect("client");
    let inner = redirect_to("/anything/second", 302);
    let chain = redirect_to(&format!("{}{inner}", other.url()), 302);
    let res = client.get(chain).send().await.expect("followed");
    assert_eq!(res.redirects(), 2);
    let first = other.last_request("/redirect-to").expect("b");
    assert_eq!(first.header("authorization"), None);
    let second = other.last_request("/anything/second").expect("b again");
    assert_eq!(second.header("authorization"), None);
    // And back on the first origin: still off (the caller's own header);
    // only the auth layer, which judges each hop's origin, sends one.
    let back = redirect_to(&format!("{}/anything/back", api.url()), 302);
    let chain = redirect_to(&format!("{}{back}", other.url()), 302);
    client.get(chain).send().await.expect("followed");
    let back = api.last_request("/anything/back").expect("a again");
    assert_eq!(back.header("authorization"), None);
}

#[tokio::test]
async fn the_auth_layer_and_a_per_request_credential_go_with_same_origin_hops() {
    let api = api().await;
    api.require_bearer("s3cret");
    let client = Client::builder(api.url())
        .bearer_auth("s3cret")
        .build()
        .expect("client");
    // The end of the chain needs the bearer token: each hop has it.
    let res = client.get("/redirect/2").send().await.expect("followed");
    assert_eq!(res.status(), StatusCode::OK);
    // A request's own credential is the one each hop gets, not the
    // client's (it rides in the request's extensions, which a followed hop
    // would otherwise lose).
    api.require_bearer("user-token");
    let res = client
        .get("/redirect/2")
        .bearer_auth("user-token")
        .send()
        .await
        .expect("followed");
    assert_eq!(res.status(), StatusCode::OK);
    let seen = api.last_request("/anything/redirected").expect("end");
    assert_eq!(seen.header("authorization"), Some("Bearer user-token"));
}

#[tokio::test]
async fn the_tracking_id_is_the_same_on_every_hop() {
    let api = api().await;
    let client = Client::new(api.url()).expect("client");
    let res = client.get("/redirect/2").send().await.expect("followed");
    let id = res.summary().request_id.clone().expect("id");
    for path in ["/redirect/2", "/redirect/1", "/anything/redirected"] {
        let seen = api.last_request(path).expect("hop");
        assert_eq!(seen.header("x-request-id"), Some(id.as_str()), "{path}");
    }
}

#[tokio::test]
async fn each_hop_takes_a_rate_limit_permit() {
    let api = api().await;
    let quota = Quota::window(2, Duration::from_secs(60)).expect("quota");
    let client = Client::builder(api.url())
        .rate_limit(RateLimitLayer::new(quota).reject())
        .build()
        .expect("client");
    // Three requests (two hops) against a limit of two.
    let err = client.get("/redirect/2").send().await.expect_err("limited");
    assert_eq!(err.kind(), ErrorKind::RateLimited);
    assert_eq!(api.hits("/redirect/2"), 1);
    assert_eq!(api.hits("/redirect/1"), 1);
    assert_eq!(api.hits("/anything/redirected"), 0);
}

#[tokio::test]
async fn a_pool_of_one_slot_follows_a_chain_each_hop_giving_its_slot_back() {
    let api = api().await;
    let client = Client::builder(api.url())
        .concurrency_limit(tollgate::limit::ConcurrencyLimitLayer::new(1))
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    let res = client.get("/redirect/3").send().await.expect("followed");
    assert_eq!(res.redirects(), 3);
}

#[tokio::test]
async fn a_loop_is_a_redirect_error() {
    let api = api().await;
    api.inject(
        "/loop/a",
        Fault::status(StatusCode::FOUND).header("location", "/loop/b"),
    );
    api.inject(
        "/loop/b",
        Fault::status(StatusCode::FOUND).header("location", "/loop/a"),
    );
    let client = Client::new(api.url()).expect("client");
    let err = client.get("/loop/a").send().await.expect_err("loop");
    assert_eq!(err.kind(), ErrorKind::Redirect);
    assert!(err.to_string().contains("loop"), "{err}");
    assert_eq!(api.hits("/loop/a"), 1);
    assert_eq!(api.hits("/loop/b"), 1);
}

#[tokio::test]
async fn a_303_after_a_post_to_the_same_url_is_not_a_loop() {
    let api = api().await;
    api.inject(
        "/anything/form",
        Fault::status(StatusCode::SEE_OTHER)
            .header("location", "/anything/form")
            .times(1),
    );
    let client = Client::new(api.url()).expect("client");
    let res = client
        .post("/anything/form")
        .body("a=1")
        .send()
        .await
        .expect("followed");
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.data().expect("json")["method"], "GET");
}

#[tokio::test]
async fn hostile_locations_are_refused_or_returned_never_followed_elsewhere() {
    let api = api().await;
    let client = Client::new(api.url()).expect("client");
    let userinfo = format!("http://user:pw@{}/anything/x", api.addr());
    // (Location, Ok(status returned) or Err(kind))
    let cases: Vec<(String, Result<u16, ErrorKind>)> = vec![
        // `http::Uri` cannot hold it: the 3xx is the response.
        ("file:///etc/passwd".into(), Ok(302)),
        ("ftp://127.0.0.1/x".into(), Err(ErrorKind::Redirect)),
        ("javascript:alert(1)".into(), Err(ErrorKind::Redirect)),
        ("data:text/html,hi".into(), Ok(302)),
        (userinfo, Err(ErrorKind::Redirect)),
        ("http://[::1".into(), Ok(302)),
        ("http://".into(), Ok(302)),
    ];
    for (location, expected) in cases {
        let got = client
            .get(redirect_to(&location, 302))
            .send()
            .await
            .map(|r| r.status().as_u16())
            .map_err(|e| e.kind());
        assert_eq!(got, expected, "{location:.60}");
    }
    assert_eq!(api.hits("/anything/x"), 0);
    // Not UTF-8 at all: the bytes go into the header as they are.
    let res = client
        .get("/redirect-to?url=%FF%FE%80&status=302")
        .send()
        .await
        .expect("returned");
    assert_eq!(res.status(), StatusCode::FOUND);
    // Huge: one a URI can hold is followed (same origin, unknown path);
    // one it cannot leaves the 3xx.
    for (len, expected) in [(60_000, 404), (70_000, 302)] {
        let path = format!("/huge/{len}");
        let location = format!("/{}", "a".repeat(len));
        api.inject(
            &path,
            Fault::status(StatusCode::FOUND).header("location", &location),
        );
        let res = client.get(&path).send().await.expect("no error");
        assert_eq!(res.status().as_u16(), expected, "{len}");
    }
    // No `Location` at all.
    api.inject("/anything/nowhere", Fault::status(StatusCode::FOUND));
    let res = client.get("/anything/nowhere").send().await.expect("3xx");
    assert_eq!(res.status(), StatusCode::FOUND);
}

#[tokio::test]
async fn a_refused_redirect_error_shows_no_query() {
    let api = api().await;
    let other = FakeApi::start().await.expect("other");
    let client = Client::new(api.url()).expect("client");
    let target = format!("{}/anything/x?api_key=s3cret-value", other.url());
    let err = client
        .get(redirect_to(&target, 302))
        .send()
        .await
        .expect_err("refused");
    let shown = format!("{err} {err:?}");
    assert!(!shown.contains("s3cret-value"), "{shown}");
}

#[tokio::test(start_paused = true)]
async fn the_calls_deadline_spans_every_hop() {
    let api = api().await;
    api.inject("/redirect/1", Fault::latency(Duration::from_secs(20)));
    let client = Client::builder(api.url())
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    let err = client
        .get("/redirect/2")
        .send()
        .await
        .expect_err("deadline");
    assert_eq!(err.kind(), ErrorKind::Timeout);
}

/// curl's CVE-2018-1000007 and CVE-2022-27776: a move from https to http on
/// the same host is a change of origin.
#[tokio::test]
async fn https_to_http_on_the_same_host_is_another_origin() {
    use http::Method;
    use tollgate_testkit::{Reply, StubTransport};

    let stub = StubTransport::new();
    stub.on(
        Method::GET,
        "/start",
        Reply::status(StatusCode::FOUND).header("location", "http://api.test/next"),
    );
    stub.on(Method::GET, "/next", Reply::json(serde_json::json!({})));
    let strict = Client::builder("https://api.test")
        .transport(stub.clone())
        .build()
        .expect("client");
    let err = strict.get("/start").send().await.expect_err("refused");
    assert_eq!(err.kind(), ErrorKind::Redirect);
    assert_eq!(stub.hits(&Method::GET, "/next"), 0);

    let allow = || {
        RedirectPolicy::default()
            .allow_origin("http://api.test")
            .expect("origin")
    };
    let clients = [
        Client::builder("https://api.test")
            .transport(stub.clone())
            .default_header("authorization", "Bearer over-tls-only")
            .redirect(allow())
            .build()
            .expect("client"),
        Client::builder("https://api.test")
            .transport(stub.clone())
            .bearer_auth("over-tls-only")
            .redirect(allow())
            .build()
            .expect("client"),
    ];
    for client in clients {
        let res = client.get("/start").send().await.expect("followed");
        assert_eq!(res.redirects(), 1);
        assert_eq!(res.url().scheme_str(), Some("http"));
        let received = stub.received();
        let first = &received[received.len() - 2];
        let hop = &received[received.len() - 1];
        assert_eq!(first.header("authorization"), Some("Bearer over-tls-only"));
        assert_eq!(hop.uri.path(), "/next");
        assert_eq!(hop.header("authorization"), None);
    }
}
