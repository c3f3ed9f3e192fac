//! The facade against FakeApi over real loopback HTTP.

use std::time::{Duration, SystemTime};

use http::StatusCode;
#[cfg(feature = "http2")]
use http::Version;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tollgate::{Client, ErrorKind};
use tollgate_testkit::{FakeApi, Fault};

async fn setup() -> (FakeApi, Client) {
    let api = FakeApi::start().await.expect("fake api starts");
    let client = Client::builder(api.url()).build().expect("client builds");
    (api, client)
}

#[derive(Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
struct Post {
    user_id: u64,
    id: u64,
    title: String,
}

#[tokio::test]
async fn get_decodes_json_and_reports_timing_and_defaults() {
    let (api, client) = setup().await;
    let before = SystemTime::now();
    let res = client.get("/posts/1").send().await.expect("sent");
    assert_eq!(res.status(), StatusCode::OK);
    let post: Post = res.json().expect("a post");
    assert_eq!((post.id, post.user_id), (1, 1));
    assert!(post.title.starts_with("sunt aut facere"));
    assert_eq!(res.data().expect("json")["id"], 1);
    assert!(res.received_at() >= before);
    assert!(res.elapsed() > Duration::ZERO);
    // No layers yet: the summary tells exactly that.
    assert_eq!(res.summary().attempts, 1);
    assert!(!res.summary().from_cache);
    assert_eq!(res.summary().permit_wait, Duration::ZERO);
    let seen = api.last_request("/posts/1").expect("recorded");
    // The call's tracking id, sent and reported.
    assert_eq!(
        res.summary().request_id.as_deref(),
        seen.header("x-request-id")
    );
    assert_eq!(res.summary().request_id.as_ref().map(String::len), Some(32));
    assert_eq!(seen.headers["accept"], "application/json");
    assert!(seen.headers["user-agent"]
        .to_str()
        .expect("ascii")
        .starts_with("tollgate/"));

    let typed: Post = client.get_json("/posts/2").await.expect("get_json");
    assert_eq!(typed.id, 2);
}

#[tokio::test]
async fn every_verb_reaches_the_server_as_jsonplaceholder_answers() {
    let (api, client) = setup().await;
    let created = client
        .post("/posts")
        .json(&json!({"title": "foo", "body": "bar", "userId": 1}))
        .send()
        .await
        .expect("post");
    assert_eq!(created.status(), StatusCode::CREATED);
    assert_eq!(created.data().expect("json")["id"], 101);
    let seen = api.last_request("/posts").expect("recorded");
    assert_eq!(seen.method, http::Method::POST);
    assert_eq!(seen.headers["content-type"], "application/json");
    assert_eq!(
        serde_json::from_slice::<Value>(&seen.body).expect("json")["title"],
        "foo"
    );

    let put = client
        .put("/posts/1")
        .json(&json!({"title": "new"}))
        .send()
        .await
        .expect("put");
    assert_eq!(put.data().expect("json"), json!({"title": "new", "id": 1}));
    let patch = client
        .patch("/posts/1")
        .json(&json!({"title": "p"}))
        .send()
        .await
        .expect("patch");
    let patched = patch.data().expect("json");
    assert_eq!(
        (patched["title"].clone(), patched["userId"].clone()),
        (json!("p"), json!(1))
    );
    let deleted = client.delete("/posts/1").send().await.expect("delete");
    assert_eq!(
        (deleted.status(), deleted.data().expect("json")),
        (StatusCode::OK, json!({}))
    );
    let head = client.head("/posts/1").send().await.expect("head");
    assert_eq!(head.status(), StatusCode::OK);
    assert!(head.bytes().is_empty());
    assert_eq!(head.data().expect("empty is null"), Value::Null);
    assert_eq!(api.hits("/posts/1"), 4);
}

#[derive(Serialize)]
struct Filter {
    #[serde(rename = "postId")]
    post_id: u64,
    page: Option<u32>,
}

#[tokio::test]
async fn query_parameters_accumulate_and_skip_none() {
    let (api, client) = setup().await;
    let res = client
        .get("/comments")
        .query(&Filter {
            post_id: 3,
            page: None,
        })
        .send()
        .await
        .expect("sent");
    let comments = res.data().expect("json");
    assert_eq!(comments.as_array().map(Vec::len), Some(5));
    assert!(comments
        .as_array()
        .expect("array")
        .iter()
        .all(|c| c["postId"] == 3));

    let echo = client
        .get("/anything/q?fixed=1")
        .query(&[("a", "x y"), ("b", "&=")])
        .query(&[("a", "again")])
        .send()
        .await
        .expect("sent")
        .data()
        .expect("json");
    assert_eq!(
        echo["query"],
        json!([["fixed", "1"], ["a", "x y"], ["b", "&="], ["a", "again"]])
    );
    assert_eq!(
        api.last_request("/anything/q").expect("seen").uri.query(),
        Some("fixed=1&a=x+y&b=%26%3D&a=again")
    );
}

#[tokio::test]
async fn request_headers_replace_defaults_and_invalid_values_are_typed_errors() {
    let api = FakeApi::start().await.expect("start");
    let client = Client::builder(api.url())
        .default_header("x-tenant", "acme")
        .user_agent("demo/1")
        .build()
        .expect("builds");
    let echo = client
        .get("/anything")
        .header("x-tenant", "other")
        .header("x-extra", "1")
        .send()
        .await
        .expect("sent")
        .data()
        .expect("json");
    assert_eq!(echo["headers"]["x-tenant"], json!(["other"]));
    assert_eq!(echo["headers"]["x-extra"], json!(["1"]));
    assert_eq!(echo["headers"]["user-agent"], json!(["demo/1"]));

    let err = client
        .get("/anything")
        .header("x-evil", "a\r\nInjected: yes")
        .send()
        .await
        .expect_err("CRLF refused");
    assert_eq!(err.kind(), ErrorKind::InvalidRequest);
    assert!(err.to_string().contains("x-evil"), "{err}");
    assert!(!err.to_string().contains("Injected"), "{err}");
    assert_eq!(
        api.total_hits(),
        1,
        "nothing was sent for the refused request"
    );

    let err = Client::builder(api.url())
        .default_header("authorization", "Bearer x\nHost: evil")
        .build()
        .expect_err("refused at build");
    assert_eq!(err.kind(), ErrorKind::Builder);
}

#[tokio::test]
async fn paths_join_under_the_base_path_and_refusals_send_nothing() {
    let api = FakeApi::start().await.expect("start");
    let client = Client::builder(format!("{}/anything/api/v1/", api.url()))
        .build()
        .expect("builds");
    let echo = client
        .get("/posts/1")
        .send()
        .await
        .expect("sent")
        .data()
        .expect("json");
    assert_eq!(echo["path"], "/anything/api/v1/posts/1");
    let echo = client
        .get("posts/2")
        .send()
        .await
        .expect("sent")
        .data()
        .expect("json");
    assert_eq!(echo["path"], "/anything/api/v1/posts/2");

    for bad in [
        "http://169.254.169.254/latest",
        "//evil.test/x",
        "/../../admin",
        "/a/%2e%2e/b",
    ] {
        let err = client.get(bad).send().await.expect_err(bad);
        assert_eq!(err.kind(), ErrorKind::InvalidUrl, "{bad}: {err}");
    }
    assert_eq!(api.total_hits(), 2);
}

#[tokio::test]
async fn path_parameters_cannot_retarget_the_request() {
    let (api, client) = setup().await;
    let echo = client
        .get("/anything/users/{id}")
        .path_param("id", "a/b?admin=1")
        .send()
        .await
        .expect("sent")
        .data()
        .expect("json");
    assert_eq!(echo["query"], json!([]));
    let seen = api
        .last_request("/anything/users/a%2Fb%3Fadmin%3D1")
        .expect("one segment");
    assert_eq!(seen.uri.path(), "/anything/users/a%2Fb%3Fadmin%3D1");

    for bad in ["..", ".", "", "%2E%2E"] {
        let err = client
            .get("/users/{id}")
            .path_param("id", bad)
            .send()
            .await
            .expect_err(bad);
        assert_eq!(err.kind(), ErrorKind::InvalidRequest);
    }
    let err = client.get("/users/{id}").send().await.expect_err("missing");
    assert!(err.to_string().contains("`id`"), "{err}");
    let ok = client
        .get("/posts/{id}")
        .path_param("id", 7)
        .send()
        .await
        .expect("sent");
    assert_eq!(ok.data().expect("json")["id"], 7);
    assert_eq!(api.total_hits(), 2);
}

#[tokio::test]
async fn error_status_becomes_a_typed_error_with_a_snippet() {
    let (_api, client) = setup().await;
    let res = client
        .get("/posts/9999")
        .send()
        .await
        .expect("a 404 is a response");
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    assert!(res.error_for_status_ref().is_err());
    let err = res.error_for_status().expect_err("404");
    assert_eq!(err.kind(), ErrorKind::Status);
    assert!(err.is_status());
    assert_eq!(err.status(), Some(StatusCode::NOT_FOUND));
    assert_eq!(err.body_snippet(), Some("{}"));
    assert!(
        err.to_string().contains("404") && err.to_string().contains("/posts/9999"),
        "{err}"
    );

    let err = client
        .get_json::<Value>("/posts/9999")
        .await
        .expect_err("404");
    assert_eq!(err.status(), Some(StatusCode::NOT_FOUND));
}

#[tokio::test]
async fn malformed_json_is_a_decode_error_with_the_body_start() {
    let (api, client) = setup().await;
    api.inject("/posts/1", Fault::malformed_json());
    let res = client.get("/posts/1").send().await.expect("sent");
    let err = res.json::<Post>().expect_err("not json");
    assert_eq!(err.kind(), ErrorKind::Decode);
    assert!(err.is_decode());
    assert_eq!(err.body_snippet(), Some("{\"id\": 1, \"title\": "));
    assert!(std::error::Error::source(&err).is_some());
    // The raw body stays available after a failed decode: nothing is lost.
    assert_eq!(res.text().expect("utf-8"), "{\"id\": 1, \"title\": ");
    assert_eq!(res.data().expect_err("not json").kind(), ErrorKind::Decode);
    // A body of the wrong shape is a decode error too.
    assert_eq!(
        client
            .get("/users")
            .send()
            .await
            .expect("sent")
            .json::<Post>()
            .expect_err("array")
            .kind(),
        ErrorKind::Decode
    );
}

#[tokio::test(start_paused = true)]
async fn a_hung_upstream_times_out_per_request_and_by_default() {
    let api = FakeApi::start().await.expect("start");
    api.inject("/posts/1", Fault::latency(Duration::from_secs(3600)));
    let client = Client::builder(api.url())
        .timeout(Duration::from_secs(2))
        .build()
        .expect("builds");

    let started = tokio::time::Instant::now();
    let err = client
        .get("/posts/1")
        .timeout(Duration::from_millis(250))
        .send()
        .await
        .expect_err("times out");
    assert_eq!(err.kind(), ErrorKind::Timeout);
    assert!(err.is_timeout());
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(2),
        "{waited:?}"
    );

    let started = tokio::time::Instant::now();
    let err = client
        .get("/posts/1")
        .send()
        .await
        .expect_err("default deadline");
    assert!(err.is_timeout());
    assert!(started.elapsed() >= Duration::from_secs(2));
    assert!(started.elapsed() < Duration::from_secs(3600));
    // An unaffected route still answers within the deadline.
    assert_eq!(
        client.get("/posts/2").send().await.expect("fast").status(),
        200
    );
}

#[tokio::test]
async fn a_dropped_connection_is_a_transport_error_and_the_next_call_works() {
    let (api, client) = setup().await;
    api.inject("/posts/1", Fault::drop_connection().times(1));
    let err = client.get("/posts/1").send().await.expect_err("dropped");
    assert_eq!(err.kind(), ErrorKind::Transport, "{err:?}");
    assert!(std::error::Error::source(&err).is_some());
    assert_eq!(
        client
            .get("/posts/1")
            .send()
            .await
            .expect("recovers")
            .status(),
        200
    );
}

#[tokio::test]
async fn a_refused_connection_is_a_connect_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let client = Client::builder(format!("http://{addr}"))
        .build()
        .expect("builds");
    let err = client.get("/posts/1").send().await.expect_err("refused");
    assert_eq!(err.kind(), ErrorKind::Connect, "{err:?}");
    assert!(err.is_connect());
}

#[tokio::test]
async fn bodies_over_the_limit_are_refused() {
    let api = FakeApi::start().await.expect("start");
    let client = Client::builder(api.url())
        .max_response_body(64)
        .build()
        .expect("builds");
    let err = client.get("/posts").send().await.expect_err("too large");
    assert_eq!(err.kind(), ErrorKind::BodyTooLarge);
    assert_eq!(err.status(), Some(StatusCode::OK));
    assert!(
        client.get("/users/1").send().await.is_err(),
        "the user record is over 64 bytes too"
    );
    let ok = Client::builder(api.url())
        .max_response_body(4096)
        .build()
        .expect("builds");
    assert!(ok.get("/users/1").send().await.is_ok());
}

#[tokio::test]
async fn to_json_is_a_structured_record() {
    let (api, client) = setup().await;
    api.cache_control("/posts/1", "max-age=60");
    let record = client.get("/posts/1").send().await.expect("sent").to_json();
    assert_eq!(record["status"], 200);
    assert_eq!(record["headers"]["cache-control"], "max-age=60");
    assert_eq!(record["data"]["id"], 1);
    assert_eq!(record["attempts"], 1);
    assert_eq!(record["from_cache"], false);
    let at = record["received_at"].as_str().expect("a string");
    assert!(humantime_like(at), "{at}");
}

fn humantime_like(s: &str) -> bool {
    s.len() == 24 && s.ends_with('Z') && s.as_bytes()[10] == b'T'
}

#[tokio::test]
async fn concurrent_requests_share_one_client() {
    let (api, client) = setup().await;
    let calls = (1..=5).map(|id| {
        let client = client.clone();
        async move { client.get_json::<Post>(format!("/posts/{id}")).await }
    });
    let posts = futures_join_all(calls).await;
    assert_eq!(posts.iter().filter(|p| p.is_ok()).count(), 5);
    assert_eq!(api.hits("/posts/*"), 5);
}

async fn futures_join_all<F: std::future::Future + Send + 'static>(
    futs: impl Iterator<Item = F>,
) -> Vec<F::Output>
where
    F::Output: Send,
{
    let handles: Vec<_> = futs.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.expect("task"));
    }
    out
}

#[cfg(feature = "http2")]
#[tokio::test]
async fn http2_prior_knowledge_speaks_h2c() {
    let api = FakeApi::start().await.expect("start");
    let client = Client::builder(api.url())
        .http2_prior_knowledge()
        .build()
        .expect("builds");
    let res = client.get("/posts/1").send().await.expect("sent");
    assert_eq!(res.version(), Version::HTTP_2);
    assert_eq!(res.status(), 200);
}

#[tokio::test]
async fn base_url_errors_are_reported_at_build() {
    for bad in [
        "",
        "localhost:8080",
        "ftp://h",
        "https://user:hunter2@h",
        "http://h/?key=1",
    ] {
        let err = Client::builder(bad).build().expect_err(bad);
        assert_eq!(err.kind(), ErrorKind::Builder, "{bad}");
        assert!(!format!("{err} {err:?}").contains("hunter2"));
    }
}

#[tokio::test]
async fn a_custom_transport_replaces_the_network() {
    let stub = tower::service_fn(|req: http::Request<tollgate::RequestBody>| async move {
        let body = format!("{{\"uri\": \"{}\"}}", req.uri());
        Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(
            bytes::Bytes::from(body),
        )))
    });
    let client = Client::builder("https://api.example.test/v2")
        .transport(stub)
        .build()
        .expect("builds");
    let data = client
        .get("/things/1")
        .send()
        .await
        .expect("sent")
        .data()
        .expect("json");
    assert_eq!(data["uri"], "https://api.example.test/v2/things/1");
}
