//! AuthLayer over a real hyper-util client, against FakeApi on 127.0.0.1:
//! what reached the server, 401 handling and single-flight refresh.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::header::AUTHORIZATION;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tollgate_auth::{token_fn, Auth, AuthError, AuthLayer, ClientCredentials, Credential, Token};
use tollgate_testkit::FakeApi;
use tower::{BoxError, Layer, ServiceExt};

type Body = Full<Bytes>;
type Hyper = Client<HttpConnector, Body>;

fn hyper() -> Hyper {
    Client::builder(TokioExecutor::new()).build_http::<Body>()
}

fn authed(layer: AuthLayer, api: &FakeApi) -> Auth<Hyper> {
    layer
        .origin(api.url().parse().expect("origin"))
        .layer(hyper())
}

fn req(api: &FakeApi, method: Method, path: &str) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(format!("{}{path}", api.url()))
        .body(Full::new(Bytes::from_static(b"{\"title\":\"x\"}")))
        .expect("request")
}

async fn send(
    service: &Auth<Hyper>,
    request: Request<Body>,
) -> Result<Response<Incoming>, BoxError> {
    service.clone().oneshot(request).await
}

fn seen_auth(api: &FakeApi, path: &str) -> Option<String> {
    let seen = api.last_request(path).expect("the server saw the request");
    seen.header("authorization").map(str::to_owned)
}

#[tokio::test]
async fn a_static_bearer_turns_a_401_into_a_200() {
    let api = FakeApi::start().await.expect("fake api");
    api.require_bearer("s3cret");
    let bare = hyper()
        .oneshot(req(&api, Method::GET, "/posts/1"))
        .await
        .expect("response");
    assert_eq!(bare.status(), StatusCode::UNAUTHORIZED);

    let service = authed(AuthLayer::bearer("s3cret").expect("valid"), &api);
    let ok = send(&service, req(&api, Method::GET, "/posts/1"))
        .await
        .expect("response");
    assert_eq!(ok.status(), StatusCode::OK);
    assert_eq!(
        seen_auth(&api, "/posts/1").as_deref(),
        Some("Bearer s3cret")
    );
}

#[tokio::test]
async fn basic_header_and_query_keys_reach_the_server() {
    let api = FakeApi::start().await.expect("fake api");
    let basic = authed(
        AuthLayer::basic("Aladdin", "open sesame").expect("valid"),
        &api,
    );
    send(&basic, req(&api, Method::GET, "/anything/a"))
        .await
        .expect("response");
    assert_eq!(
        seen_auth(&api, "/anything/a").as_deref(),
        Some("Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==")
    );

    let header = authed(
        AuthLayer::api_key_header("x-api-key", "k1").expect("valid"),
        &api,
    );
    send(&header, req(&api, Method::GET, "/anything/b"))
        .await
        .expect("response");
    let seen = api.last_request("/anything/b").expect("seen");
    assert_eq!(seen.headers["x-api-key"], "k1");

    let query = authed(
        AuthLayer::api_key_query("api_key", "k 2&x").expect("valid"),
        &api,
    );
    send(&query, req(&api, Method::GET, "/anything/c?page=2"))
        .await
        .expect("response");
    let seen = api.last_request("/anything/c").expect("seen");
    assert_eq!(seen.uri.query(), Some("page=2&api_key=k%202%26x"));
}

#[tokio::test]
async fn credentials_never_go_to_another_origin() {
    let api = FakeApi::start().await.expect("fake api");
    let other = FakeApi::start().await.expect("other origin");
    let service = authed(AuthLayer::bearer("s3cret").expect("valid"), &api);
    send(&service, req(&other, Method::GET, "/anything/x"))
        .await
        .expect("response");
    assert_eq!(
        seen_auth(&other, "/anything/x"),
        None,
        "another port is another origin"
    );

    let query = authed(AuthLayer::api_key_query("key", "k").expect("valid"), &api);
    send(&query, req(&other, Method::GET, "/anything/y"))
        .await
        .expect("response");
    assert_eq!(
        other.last_request("/anything/y").expect("seen").uri.query(),
        None
    );

    // Without a named origin, an absolute URI gets nothing.
    let unscoped = AuthLayer::bearer("s3cret").expect("valid").layer(hyper());
    send(&unscoped, req(&api, Method::GET, "/anything/z"))
        .await
        .expect("response");
    assert_eq!(seen_auth(&api, "/anything/z"), None);
}

#[tokio::test]
async fn an_explicit_header_is_kept_unless_overwrite() {
    let api = FakeApi::start().await.expect("fake api");
    let mut request = req(&api, Method::GET, "/anything/1");
    request
        .headers_mut()
        .insert(AUTHORIZATION, "Bearer callers".parse().expect("value"));
    let keep = authed(AuthLayer::bearer("layers").expect("valid"), &api);
    send(&keep, request).await.expect("response");
    assert_eq!(
        seen_auth(&api, "/anything/1").as_deref(),
        Some("Bearer callers")
    );

    let mut request = req(&api, Method::GET, "/anything/2");
    request
        .headers_mut()
        .insert(AUTHORIZATION, "Bearer callers".parse().expect("value"));
    let replace = authed(
        AuthLayer::bearer("layers").expect("valid").overwrite(true),
        &api,
    );
    send(&replace, request).await.expect("response");
    assert_eq!(
        seen_auth(&api, "/anything/2").as_deref(),
        Some("Bearer layers")
    );
}

#[tokio::test]
async fn a_credential_in_the_extensions_replaces_the_layers() {
    let api = FakeApi::start().await.expect("fake api");
    let service = authed(AuthLayer::bearer("service-account").expect("valid"), &api);
    let mut request = req(&api, Method::GET, "/anything/u");
    request
        .extensions_mut()
        .insert(Credential::bearer("user-42").expect("valid"));
    send(&service, request).await.expect("response");
    assert_eq!(
        seen_auth(&api, "/anything/u").as_deref(),
        Some("Bearer user-42")
    );
}

fn oauth(api: &FakeApi, secret: &str) -> AuthLayer {
    let source = ClientCredentials::new(
        hyper(),
        format!("{}/oauth/token", api.url()).parse().expect("url"),
        "client-1",
        secret,
    )
    .expect("valid");
    AuthLayer::token_source(source)
}

#[tokio::test]
async fn many_waiting_requests_cause_one_token_grant() {
    let api = FakeApi::start().await.expect("fake api");
    api.issue_tokens("client-1", "hunter2", 3600);
    let service = authed(oauth(&api, "hunter2"), &api);
    let calls = (0..20).map(|i| {
        let service = service.clone();
        let request = req(&api, Method::GET, &format!("/posts/{}", i + 1));
        async move { service.oneshot(request).await }
    });
    for response in join_all(calls).await {
        assert_eq!(response.expect("response").status(), StatusCode::OK);
    }
    assert_eq!(api.hits("/oauth/token"), 1);
    assert_eq!(
        seen_auth(&api, "/posts/20").as_deref(),
        Some("Bearer token-1")
    );
}

/// Runs the calls concurrently, each on its own task, and returns their
/// results in order.
async fn join_all<F>(calls: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = calls.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for handle in handles {
        out.push(handle.await.expect("task"));
    }
    out
}

#[tokio::test]
async fn a_401_refreshes_once_and_replays_the_body() {
    let api = FakeApi::start().await.expect("fake api");
    api.issue_tokens("client-1", "hunter2", 3600);
    let service = authed(oauth(&api, "hunter2"), &api);
    let first = send(&service, req(&api, Method::GET, "/posts/1"))
        .await
        .expect("response");
    assert_eq!(first.status(), StatusCode::OK);

    api.revoke_tokens();
    let replayed = send(&service, req(&api, Method::POST, "/posts"))
        .await
        .expect("response");
    assert_eq!(replayed.status(), StatusCode::CREATED);
    let body = replayed
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("\"title\":\"x\""));
    assert_eq!(
        api.hits("/oauth/token"),
        2,
        "one grant, one refresh after the 401"
    );
    assert_eq!(api.hits("/posts"), 2, "the refused attempt and its replay");
    assert_eq!(seen_auth(&api, "/posts").as_deref(), Some("Bearer token-2"));
}

#[tokio::test]
async fn a_second_401_is_returned_as_it_is() {
    let api = FakeApi::start().await.expect("fake api");
    api.require_bearer("the-real-one");
    let fetches = Arc::new(AtomicUsize::new(0));
    let f = fetches.clone();
    let source = token_fn(move || {
        f.fetch_add(1, Ordering::SeqCst);
        async { Ok(Token::bearer("always-wrong")?) }
    });
    let service = authed(AuthLayer::token_source(source), &api);
    let response = send(&service, req(&api, Method::GET, "/posts/1"))
        .await
        .expect("response");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        fetches.load(Ordering::SeqCst),
        2,
        "the first token, one refresh"
    );
    assert_eq!(api.hits("/posts/1"), 2, "one attempt, one replay, no loop");
}

#[tokio::test]
async fn a_failed_grant_is_a_typed_error_shared_by_the_waiting_requests() {
    let api = FakeApi::start().await.expect("fake api");
    api.issue_tokens("client-1", "hunter2", 3600);
    let service = authed(oauth(&api, "wrong-secret"), &api);
    let calls = (0..10).map(|_| {
        let service = service.clone();
        let request = req(&api, Method::GET, "/posts/1");
        async move { service.oneshot(request).await }
    });
    for result in join_all(calls).await {
        let error = result.expect_err("no token");
        let auth = error.downcast_ref::<AuthError>().expect("an AuthError");
        assert!(matches!(auth, AuthError::RefreshFailed(_)), "{auth:?}");
        assert!(!format!("{error:?}").contains("wrong-secret"));
    }
    assert_eq!(api.hits("/oauth/token"), 1, "waiters share the failure");
    assert_eq!(
        api.hits("/posts/1"),
        0,
        "nothing went out without a credential"
    );
}

#[tokio::test]
async fn the_secret_can_go_in_the_form_body() {
    let api = FakeApi::start().await.expect("fake api");
    api.issue_tokens("client 1", "p@ss:word", 60);
    let source = ClientCredentials::new(
        hyper(),
        format!("{}/oauth/token", api.url()).parse().expect("url"),
        "client 1",
        "p@ss:word",
    )
    .expect("valid");
    for source in [source.clone(), source.secret_in_body()] {
        let service = authed(AuthLayer::token_source(source), &api);
        let ok = send(&service, req(&api, Method::GET, "/posts/2"))
            .await
            .expect("response");
        assert_eq!(ok.status(), StatusCode::OK);
    }
    assert_eq!(api.hits("/oauth/token"), 2);
}
