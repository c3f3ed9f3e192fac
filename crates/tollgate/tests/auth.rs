//! Auth through the facade, over loopback to FakeApi: what reached the
//! server, token grants and refreshes, per-request credentials, origins.
#![cfg(feature = "auth")]

use std::time::Duration;

use http::header::AUTHORIZATION;
use tollgate::{Client, ErrorKind};
use tollgate_auth::{token_fn, Credential, Token};
use tollgate_retry::RetryLayer;
use tollgate_testkit::{FakeApi, Fault};

fn seen_auth(api: &FakeApi, path: &str) -> Option<String> {
    let seen = api.last_request(path).expect("the server saw the request");
    seen.header("authorization").map(str::to_owned)
}

#[tokio::test]
async fn bearer_auth_turns_a_401_into_a_200() {
    let api = FakeApi::start().await.expect("fake api");
    api.require_bearer("s3cret");
    let anonymous = Client::new(api.url()).expect("client");
    assert_eq!(
        anonymous
            .get("/posts/1")
            .send()
            .await
            .expect("sent")
            .status(),
        401
    );

    let client = Client::builder(api.url())
        .bearer_auth("s3cret")
        .build()
        .expect("client");
    let post: serde_json::Value = client.get_json("/posts/1").await.expect("200");
    assert_eq!(post["id"], 1);
    assert_eq!(
        seen_auth(&api, "/posts/1").as_deref(),
        Some("Bearer s3cret")
    );
    assert!(!format!("{client:?}").contains("s3cret"));
}

#[tokio::test]
async fn invalid_credentials_fail_the_build_without_showing_them() {
    for builder in [
        Client::builder("http://127.0.0.1:1").bearer_auth("abc\r\nx-admin: yes"),
        Client::builder("http://127.0.0.1:1").basic_auth("us:er", "pw"),
        Client::builder("http://127.0.0.1:1").api_key_header("x-key", "k\ny"),
        Client::builder("http://127.0.0.1:1").api_key_query("key", "k\0"),
        Client::builder("http://127.0.0.1:1").oauth2_client_credentials("/relative", "id", "pw"),
    ] {
        let err = builder.build().expect_err("refused");
        assert_eq!(err.kind(), ErrorKind::Builder, "{err}");
        let shown = format!("{err} {err:?}");
        assert!(
            !shown.contains("x-admin") && !shown.contains("k\ny"),
            "{shown}"
        );
    }
}

#[tokio::test]
async fn api_keys_in_a_header_or_the_query() {
    let api = FakeApi::start().await.expect("fake api");
    let header = Client::builder(api.url())
        .api_key_header("x-api-key", "k1")
        .build()
        .expect("client");
    header.get("/anything/h").send().await.expect("sent");
    assert_eq!(
        api.last_request("/anything/h").expect("seen").headers["x-api-key"],
        "k1"
    );

    let query = Client::builder(api.url())
        .api_key_query("api_key", "k2")
        .build()
        .expect("client");
    let response = query
        .get("/anything/q")
        .query(&[("page", "3")])
        .send()
        .await
        .expect("sent");
    let seen = api.last_request("/anything/q").expect("seen");
    assert_eq!(seen.uri.query(), Some("page=3&api_key=k2"));
    assert!(
        !response.url().to_string().contains("k2"),
        "the response's URL is the caller's"
    );
}

#[tokio::test]
async fn oauth2_client_credentials_grant_refresh_and_replay() {
    let api = FakeApi::start().await.expect("fake api");
    api.issue_tokens("client-1", "hunter2", 3600);
    let client = Client::builder(api.url())
        .oauth2_client_credentials(format!("{}/oauth/token", api.url()), "client-1", "hunter2")
        .build()
        .expect("client");

    // 20 callers at once, no token yet: one grant.
    let calls: Vec<_> = (1..=20)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move { client.get(format!("/posts/{i}")).send().await })
        })
        .collect();
    for call in calls {
        assert_eq!(call.await.expect("task").expect("sent").status(), 200);
    }
    assert_eq!(api.hits("/oauth/token"), 1);
    // The token endpoint got the client's Basic credential, not a bearer.
    assert!(seen_auth(&api, "/oauth/token")
        .expect("basic")
        .starts_with("Basic "));

    // The server revokes the token: the next call gets a 401 inside the
    // stack, one refresh, one replay, and succeeds.
    api.revoke_tokens();
    api.reset_counts();
    let created = client
        .post("/posts")
        .json(&serde_json::json!({"title": "after a refresh"}))
        .send()
        .await
        .expect("sent");
    assert_eq!(created.status(), 201);
    assert_eq!(
        created.json::<serde_json::Value>().expect("json")["title"],
        "after a refresh"
    );
    assert_eq!(api.hits("/oauth/token"), 1);
    assert_eq!(api.hits("/posts"), 2);
    assert_eq!(seen_auth(&api, "/posts").as_deref(), Some("Bearer token-2"));
}

#[tokio::test]
async fn a_failed_grant_is_an_auth_error() {
    let api = FakeApi::start().await.expect("fake api");
    api.issue_tokens("client-1", "hunter2", 3600);
    let client = Client::builder(api.url())
        .oauth2_client_credentials(
            format!("{}/oauth/token", api.url()),
            "client-1",
            "WRONG-SECRET",
        )
        .build()
        .expect("client");
    let err = client.get("/posts/1").send().await.expect_err("no token");
    assert_eq!(err.kind(), ErrorKind::Auth);
    assert!(!format!("{err} {err:?}").contains("WRONG-SECRET"));
    assert_eq!(api.hits("/posts/1"), 0);
}

#[tokio::test]
async fn a_request_can_carry_its_own_credential() {
    let api = FakeApi::start().await.expect("fake api");
    let with_layer = Client::builder(api.url())
        .bearer_auth("service")
        .build()
        .expect("client");
    with_layer
        .get("/anything/1")
        .credential(Credential::bearer("user-7").expect("valid"))
        .send()
        .await
        .expect("sent");
    assert_eq!(
        seen_auth(&api, "/anything/1").as_deref(),
        Some("Bearer user-7")
    );
    with_layer.get("/anything/2").send().await.expect("sent");
    assert_eq!(
        seen_auth(&api, "/anything/2").as_deref(),
        Some("Bearer service")
    );

    let without = Client::new(api.url()).expect("client");
    without
        .get("/anything/3")
        .bearer_auth("user-8")
        .send()
        .await
        .expect("sent");
    let seen = api.last_request("/anything/3").expect("seen");
    assert_eq!(seen.headers[AUTHORIZATION], "Bearer user-8");
    let err = without
        .get("/x")
        .bearer_auth("bad\ntoken")
        .send()
        .await
        .expect_err("refused");
    assert_eq!(err.kind(), ErrorKind::InvalidRequest);
}

#[tokio::test]
async fn an_absolute_url_as_a_path_stays_on_the_base_origin() {
    let api = FakeApi::start().await.expect("fake api");
    let elsewhere = FakeApi::start().await.expect("another origin");
    let client = Client::builder(api.url())
        .bearer_auth("s3cret")
        .build()
        .expect("client");
    let _ = client
        .get(format!("{}/anything/stolen", elsewhere.url()))
        .send()
        .await;
    assert_eq!(
        elsewhere.total_hits(),
        0,
        "the path stayed under the base URL"
    );
}

#[cfg(feature = "retry")]
#[tokio::test]
async fn every_retry_gets_the_credential() {
    let api = FakeApi::start().await.expect("fake api");
    api.require_bearer("s3cret");
    api.inject(
        "/posts/1",
        Fault::status(http::StatusCode::SERVICE_UNAVAILABLE).times(2),
    );
    let client = Client::builder(api.url())
        .bearer_auth("s3cret")
        .retry(RetryLayer::new().backoff(
            tollgate_retry::Backoff::exponential(Duration::from_millis(1)).expect("valid"),
        ))
        .build()
        .expect("client");
    let response = client.get("/posts/1").send().await.expect("sent");
    assert_eq!(response.status(), 200);
    assert_eq!(response.summary().attempts, 3);
    assert_eq!(api.hits("/posts/1"), 3);
}

#[tokio::test(start_paused = true)]
async fn a_token_source_is_refreshed_before_expiry() {
    let api = FakeApi::start().await.expect("fake api");
    let fetched = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let f = fetched.clone();
    let client = Client::builder(api.url())
        .token_source(token_fn(move || {
            let n = f.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            async move { Ok(Token::bearer(format!("t{n}"))?.expires_in(Duration::from_secs(300))) }
        }))
        .build()
        .expect("client");
    client.get("/anything/a").send().await.expect("sent");
    tokio::time::advance(Duration::from_secs(289)).await;
    client.get("/anything/b").send().await.expect("sent");
    assert_eq!(seen_auth(&api, "/anything/b").as_deref(), Some("Bearer t1"));
    tokio::time::advance(Duration::from_secs(2)).await;
    client.get("/anything/c").send().await.expect("sent");
    assert_eq!(seen_auth(&api, "/anything/c").as_deref(), Some("Bearer t2"));
}
