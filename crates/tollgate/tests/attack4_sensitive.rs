//! Adversary 4: what a user's layer sees of credentials, for each way a
//! credential gets onto a request, and where a client's credential goes
//! when a request names another origin.
#![cfg(feature = "auth")]

use std::sync::{Arc, Mutex};

use http::header::AUTHORIZATION;
use http::Request;
use tollgate::{Client, RequestBody};
use tollgate_testkit::FakeApi;
use tower::util::MapRequestLayer;

/// Records, for each request, whether its Authorization header is marked
/// sensitive (None when absent), and its URI.
type Seen = Arc<Mutex<Vec<(Option<bool>, String)>>>;

fn recording(
    seen: &Seen,
) -> MapRequestLayer<impl Fn(Request<RequestBody>) -> Request<RequestBody> + Clone> {
    let seen = Arc::clone(seen);
    MapRequestLayer::new(move |req: Request<RequestBody>| {
        let auth = req
            .headers()
            .get(AUTHORIZATION)
            .map(http::HeaderValue::is_sensitive);
        seen.lock()
            .expect("lock")
            .push((auth, req.uri().to_string()));
        req
    })
}

/// A per-request bearer token, with an auth layer in the stack (which puts
/// it on below the user's layer) and without one (the request builder
/// applies it then, marked sensitive).
#[tokio::test]
async fn a_per_request_credential_is_marked_sensitive_with_or_without_auth() {
    let api = FakeApi::start().await.expect("start");
    for with_auth in [true, false] {
        let seen: Seen = Arc::default();
        let builder = Client::builder(api.url()).layer(recording(&seen));
        let builder = if with_auth {
            builder.api_key_header("x-api-key", "client-key")
        } else {
            builder
        };
        let client = builder.build().expect("client");
        client
            .get("/posts/1")
            .bearer_auth("per-request-token")
            .send()
            .await
            .expect("sent");
        let seen = seen.lock().expect("lock");
        // With the auth layer, the credential goes on below the user's
        // layer, which never sees it; without, the request builder put it
        // on, marked sensitive.
        let expected = if with_auth { None } else { Some(true) };
        assert_eq!(seen[0].0, expected, "with auth: {with_auth}");
        let got = api.last_request("/posts/1").expect("seen");
        assert_eq!(
            got.header("authorization"),
            Some("Bearer per-request-token")
        );
    }
}

/// A request to an absolute URL of another origin never carries the
/// client's credential (auth's origin check), whatever layer is below.
#[tokio::test]
async fn an_absolute_url_to_another_origin_gets_no_client_credential() {
    let api = FakeApi::start().await.expect("start");
    let other = FakeApi::start().await.expect("other");
    let seen: Seen = Arc::default();
    let client = Client::builder(api.url())
        .bearer_auth("s3cret-canary")
        .layer(recording(&seen))
        .build()
        .expect("client");
    let url = format!("{}/posts/1", other.url());
    if let Ok(res) = client.get(&url).send().await {
        let _ = res;
        if let Some(got) = other.last_request("/posts/1") {
            assert_eq!(
                got.header("authorization"),
                None,
                "the credential went to {url}"
            );
        }
    }
    assert!(seen
        .lock()
        .expect("lock")
        .iter()
        .all(|(auth, _)| auth.is_none()));
}
