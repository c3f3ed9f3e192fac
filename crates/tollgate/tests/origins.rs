//! Many origins: a client without a base URL, a client with a base URL and
//! other allowed origins, the SSRF guard that stays, and where the client's
//! credential goes. Over loopback to two FakeApis (two ports, two origins).
#![cfg(all(feature = "auth", feature = "redirect"))]

use tollgate::{Client, ErrorKind};
use tollgate_testkit::FakeApi;

async fn api() -> FakeApi {
    FakeApi::start().await.expect("fake api")
}

#[tokio::test]
async fn a_client_without_a_base_url_takes_absolute_urls_to_any_origin() {
    let (a, b) = (api().await, api().await);
    let client = Client::builder_without_base().build().expect("client");
    assert_eq!(client.base_url(), "");
    for api in [&a, &b] {
        let res = client
            .get(format!("{}/posts/1", api.url()))
            .send()
            .await
            .expect("sent");
        assert_eq!(res.status(), 200);
        assert_eq!(api.hits("/posts/1"), 1);
    }
    // `ClientBuilder::default()` is the same builder.
    let default = tollgate::ClientBuilder::default().build().expect("client");
    let res = default.get(format!("{}/posts/1", a.url())).send().await;
    assert_eq!(res.expect("sent").status(), 200);
}

#[tokio::test]
async fn a_client_without_a_base_url_refuses_a_relative_path_before_sending() {
    let client = Client::builder_without_base().build().expect("client");
    let err = client.get("/posts/1").send().await.expect_err("refused");
    assert_eq!(err.kind(), ErrorKind::InvalidUrl);
    assert!(err.to_string().contains("no base URL"), "{err}");
}

#[tokio::test]
async fn a_client_without_a_base_url_refuses_other_schemes_and_credentials_in_the_url() {
    let client = Client::builder_without_base().build().expect("client");
    let err = client
        .get("ftp://127.0.0.1/x")
        .send()
        .await
        .expect_err("refused");
    assert_eq!(err.kind(), ErrorKind::InvalidUrl);
    assert!(
        err.to_string().contains("not an http or https URL"),
        "{err}"
    );
    let err = client
        .get("http://user:s3cret@127.0.0.1:1/x")
        .send()
        .await
        .expect_err("refused");
    assert_eq!(err.kind(), ErrorKind::InvalidUrl);
    assert!(!err.to_string().contains("s3cret"), "{err}");
}

#[tokio::test]
async fn an_allowed_origin_takes_absolute_urls_and_relative_paths_still_join_the_base() {
    let (a, b) = (api().await, api().await);
    let client = Client::builder(a.url())
        .allow_origin(b.url())
        .build()
        .expect("client");
    let res = client
        .get(format!("{}/posts/2", b.url()))
        .send()
        .await
        .expect("sent");
    assert_eq!(res.status(), 200);
    assert_eq!(b.hits("/posts/2"), 1);
    client.get("/posts/3").send().await.expect("sent");
    assert_eq!(a.hits("/posts/3"), 1);
    assert_eq!(b.hits("/posts/3"), 0);
}

#[tokio::test]
async fn with_a_base_url_an_origin_not_allowed_is_a_typed_error_and_nothing_is_sent() {
    let (a, b, c) = (api().await, api().await, api().await);
    let client = Client::builder(a.url())
        .allow_origin(b.url())
        .build()
        .expect("client");
    let err = client
        .get(format!("{}/posts/1", c.url()))
        .send()
        .await
        .expect_err("refused");
    assert_eq!(err.kind(), ErrorKind::InvalidUrl);
    assert!(err.to_string().contains("allow_origin"), "{err}");
    assert_eq!(c.total_hits(), 0);
    assert_eq!(a.total_hits() + b.total_hits(), 0);
}

#[tokio::test]
async fn a_client_without_a_base_url_but_with_allowed_origins_calls_only_those() {
    let (a, b) = (api().await, api().await);
    let client = Client::builder_without_base()
        .allow_origin(a.url())
        .build()
        .expect("client");
    client
        .get(format!("{}/posts/1", a.url()))
        .send()
        .await
        .expect("allowed");
    let err = client
        .get(format!("{}/posts/1", b.url()))
        .send()
        .await
        .expect_err("refused");
    assert_eq!(err.kind(), ErrorKind::InvalidUrl);
    assert_eq!(b.total_hits(), 0);
}

#[test]
fn an_allowed_origin_that_is_not_an_origin_is_a_builder_error() {
    for bad in [
        "ftp://files.example.com",
        "not a url",
        "https://user:pw@files.example.com",
        "https://files.example.com/?q=1",
    ] {
        let err = Client::builder("https://api.example.com")
            .allow_origin(bad)
            .build()
            .expect_err("refused");
        assert_eq!(err.kind(), ErrorKind::Builder, "{bad}");
        assert!(err.to_string().contains("allowed origin"), "{err}");
        assert!(!err.to_string().contains("pw@"), "{err}");
    }
}

#[tokio::test]
async fn the_clients_credential_goes_to_the_base_origin_only_not_to_other_allowed_origins() {
    let (a, b) = (api().await, api().await);
    let client = Client::builder(a.url())
        .allow_origin(b.url())
        .bearer_auth("base-only-token")
        .build()
        .expect("client");
    client.get("/anything/a").send().await.expect("sent");
    client
        .get(format!("{}/anything/b", b.url()))
        .send()
        .await
        .expect("sent");
    let to_a = a.last_request("/anything/a").expect("a got it");
    let to_b = b.last_request("/anything/b").expect("b got it");
    assert_eq!(to_a.header("authorization"), Some("Bearer base-only-token"));
    assert_eq!(to_b.header("authorization"), None);
}

#[tokio::test]
async fn the_credential_goes_to_an_allowed_origin_the_auth_layer_names() {
    let (a, b) = (api().await, api().await);
    let layer = tollgate_auth::AuthLayer::bearer("both-token")
        .expect("token")
        .origin(tollgate_auth::Origin::parse(&a.url()).expect("origin"))
        .origin(tollgate_auth::Origin::parse(&b.url()).expect("origin"));
    let client = Client::builder(a.url())
        .allow_origin(b.url())
        .auth(layer)
        .build()
        .expect("client");
    client
        .get(format!("{}/anything/b", b.url()))
        .send()
        .await
        .expect("sent");
    let to_b = b.last_request("/anything/b").expect("b got it");
    assert_eq!(to_b.header("authorization"), Some("Bearer both-token"));
}

#[test]
fn a_client_without_a_base_url_refuses_a_credential_that_names_no_origin() {
    let err = Client::builder_without_base()
        .bearer_auth("nowhere-token")
        .build()
        .expect_err("refused");
    assert_eq!(err.kind(), ErrorKind::Builder);
    assert!(!err.to_string().contains("nowhere-token"), "{err}");
}

#[tokio::test]
async fn a_client_without_a_base_url_sends_its_credential_only_to_the_origins_named() {
    let (a, b) = (api().await, api().await);
    let layer = tollgate_auth::AuthLayer::bearer("a-token")
        .expect("token")
        .origin(tollgate_auth::Origin::parse(&a.url()).expect("origin"));
    let client = Client::builder_without_base()
        .auth(layer)
        .build()
        .expect("client");
    for api in [&a, &b] {
        client
            .get(format!("{}/anything/x", api.url()))
            .send()
            .await
            .expect("sent");
    }
    let to_a = a.last_request("/anything/x").expect("a");
    let to_b = b.last_request("/anything/x").expect("b");
    assert_eq!(to_a.header("authorization"), Some("Bearer a-token"));
    assert_eq!(to_b.header("authorization"), None);
}

#[tokio::test]
async fn a_redirect_to_an_allowed_origin_is_followed() {
    let (a, b) = (api().await, api().await);
    let client = Client::builder(a.url())
        .allow_origin(b.url())
        .build()
        .expect("client");
    let target = format!("{}/anything/landed", b.url());
    let encoded: String = target
        .bytes()
        .map(|c| match c {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(c).to_string()
            }
            c => format!("%{c:02X}"),
        })
        .collect();
    let res = client
        .get(format!("/redirect-to?url={encoded}&status=302"))
        .send()
        .await
        .expect("followed");
    assert_eq!(res.status(), 200);
    assert_eq!(res.redirects(), 1);
    assert_eq!(b.hits("/anything/landed"), 1);
}
