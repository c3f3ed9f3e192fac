//! Named endpoints, settings at three levels, and tracking ids; in process
//! through the testkit's StubTransport, and over loopback for retries.

use std::io;
use std::time::Duration;

use http::{HeaderName, Method, StatusCode};
use serde_json::json;
use tollgate::{Client, Endpoint, ErrorKind};
#[cfg(feature = "retry")]
use tollgate_retry::{Backoff, RetryLayer};
#[cfg(feature = "retry")]
use tollgate_testkit::{FakeApi, Fault};
use tollgate_testkit::{Reply, StubTransport};

fn stub() -> StubTransport {
    let stub = StubTransport::new();
    stub.on(
        Method::GET,
        "/users/{id}",
        Reply::from_fn(|req, params| {
            Reply::json(json!({"id": params.get("id"), "query": req.uri.query()}))
        }),
    );
    stub.on(
        Method::GET,
        "/slow",
        Reply::json(json!({})).delay(Duration::from_secs(5)),
    );
    stub
}

#[tokio::test]
async fn headers_and_query_narrower_levels_win() {
    let stub = stub();
    let client = Client::builder("http://api.test")
        .transport(stub.clone())
        .default_header("x-level", "client")
        .default_header("x-client-only", "c")
        .default_query("lang", "en")
        .default_query("page", "1")
        .endpoint(
            Endpoint::new("get_user", Method::GET, "/users/{user_id}")
                .header("x-level", "endpoint")
                .header("x-endpoint-only", "e")
                .query("page", "2")
                .query("fields", "id"),
        )
        .build()
        .expect("client");

    let from_endpoint = client
        .call("get_user")
        .path_param("user_id", 1)
        .send()
        .await
        .expect("sent");
    assert_eq!(
        from_endpoint.data().expect("json")["query"],
        "lang=en&page=2&fields=id"
    );
    let seen = stub.received().pop().expect("seen");
    assert_eq!(seen.header("x-level"), Some("endpoint"));
    assert_eq!(seen.header("x-client-only"), Some("c"));
    assert_eq!(seen.header("x-endpoint-only"), Some("e"));

    let from_request = client
        .call("get_user")
        .path_param("user_id", 2)
        .header("x-level", "request")
        .query(&[("page", "3")])
        .send()
        .await
        .expect("sent");
    assert_eq!(
        from_request.data().expect("json")["query"],
        "lang=en&fields=id&page=3"
    );
    assert_eq!(
        stub.received().pop().expect("seen").header("x-level"),
        Some("request")
    );

    // A plain request sees only the client level.
    let plain = client.get("/users/9").send().await.expect("sent");
    assert_eq!(plain.data().expect("json")["query"], "lang=en&page=1");
    assert_eq!(
        stub.received().pop().expect("seen").header("x-level"),
        Some("client")
    );
}

#[tokio::test(start_paused = true)]
async fn timeouts_narrower_levels_win() {
    let client = Client::builder("http://api.test")
        .transport(stub())
        .timeout(Duration::from_secs(10))
        .endpoint(Endpoint::new("slow", Method::GET, "/slow").timeout(Duration::from_secs(1)))
        .endpoint(Endpoint::new("slow_default", Method::GET, "/slow"))
        .build()
        .expect("client");
    let started = tokio::time::Instant::now();
    let err = client
        .call("slow")
        .send()
        .await
        .expect_err("endpoint timeout");
    assert_eq!(
        (err.kind(), started.elapsed()),
        (ErrorKind::Timeout, Duration::from_secs(1))
    );

    let started = tokio::time::Instant::now();
    client
        .call("slow_default")
        .send()
        .await
        .expect("client timeout of 10 s");
    assert_eq!(started.elapsed(), Duration::from_secs(5));

    let started = tokio::time::Instant::now();
    let err = client
        .call("slow")
        .timeout(Duration::from_millis(300))
        .send()
        .await
        .expect_err("request timeout");
    assert_eq!(
        (err.kind(), started.elapsed()),
        (ErrorKind::Timeout, Duration::from_millis(300))
    );
}

#[tokio::test]
async fn endpoints_from_json_and_their_errors() {
    let client = Client::builder("http://api.test")
        .transport(stub())
        .endpoints_json(r#"{"get_user": "GET /users/{user_id}"}"#)
        .build()
        .expect("client");
    let user = client
        .call("get_user")
        .path_param("user_id", "a b/c")
        .send()
        .await
        .expect("sent");
    assert_eq!(
        user.data().expect("json")["id"],
        "a%20b%2Fc",
        "one encoded segment"
    );

    let missing = client
        .call("get_user")
        .send()
        .await
        .expect_err("no user_id");
    assert_eq!(missing.kind(), ErrorKind::InvalidRequest);
    assert!(
        missing
            .to_string()
            .contains("missing path parameter `user_id`"),
        "{missing}"
    );
    let unknown = client.call("get_usr").send().await.expect_err("unknown");
    assert!(
        unknown.to_string().contains("unknown endpoint `get_usr`"),
        "{unknown}"
    );

    for bad in [r#"{"x": "FETCH"}"#, "not json"] {
        let err = Client::builder("http://api.test")
            .endpoints_json(bad)
            .build()
            .expect_err(bad);
        assert_eq!(err.kind(), ErrorKind::Builder);
    }
}

#[tokio::test]
async fn every_call_has_a_tracking_id_unless_told_otherwise() {
    let stub = stub();
    let client = Client::builder("http://api.test")
        .transport(stub.clone())
        .build()
        .expect("client");
    let a = client.get("/users/1").send().await.expect("sent");
    let b = client.get("/users/2").send().await.expect("sent");
    let ids: Vec<String> = stub
        .received()
        .iter()
        .map(|r| r.header("x-request-id").expect("an id").to_owned())
        .collect();
    assert_eq!(ids[0].len(), 32);
    assert_ne!(ids[0], ids[1]);
    assert_eq!(a.summary().request_id.as_deref(), Some(ids[0].as_str()));
    assert_eq!(b.summary().request_id.as_deref(), Some(ids[1].as_str()));

    let own = client
        .get("/users/3")
        .request_id("trace-42")
        .send()
        .await
        .expect("sent");
    assert_eq!(own.summary().request_id.as_deref(), Some("trace-42"));

    let custom = Client::builder("http://api.test")
        .transport(stub.clone())
        .request_id_header(HeaderName::from_static("x-correlation-id"))
        .build()
        .expect("client");
    custom.get("/users/4").send().await.expect("sent");
    let seen = stub.received().pop().expect("seen");
    assert!(seen.header("x-correlation-id").is_some() && seen.header("x-request-id").is_none());

    let none = Client::builder("http://api.test")
        .transport(stub.clone())
        .no_request_id()
        .build()
        .expect("client");
    let response = none.get("/users/5").send().await.expect("sent");
    assert_eq!(response.summary().request_id, None);
    assert!(stub
        .received()
        .pop()
        .expect("seen")
        .header("x-request-id")
        .is_none());
}

#[cfg(feature = "retry")]
#[tokio::test]
async fn retries_keep_the_tracking_id() {
    let api = FakeApi::start().await.expect("fake api");
    api.inject(
        "/anything/flaky",
        Fault::status(StatusCode::SERVICE_UNAVAILABLE).times(2),
    );
    let client = Client::builder(api.url())
        .retry(
            RetryLayer::new()
                .backoff(Backoff::exponential(Duration::from_millis(1)).expect("valid")),
        )
        .build()
        .expect("client");
    let response = client.get("/anything/flaky").send().await.expect("sent");
    assert_eq!(response.summary().attempts, 3);
    let id = response.summary().request_id.clone().expect("an id");
    // The echo of the third attempt carries the id every attempt had.
    assert_eq!(
        response.data().expect("json")["headers"]["x-request-id"][0],
        id
    );
}

#[tokio::test]
async fn the_stub_transport_answers_errors_and_statuses() {
    let stub = StubTransport::new();
    stub.on(
        Method::GET,
        "/down",
        Reply::error(io::ErrorKind::ConnectionRefused),
    );
    stub.on(
        Method::POST,
        "/items",
        Reply::status(StatusCode::CREATED).header("location", "/items/9"),
    );
    let client = Client::builder("http://api.test")
        .transport(stub.clone())
        .build()
        .expect("client");
    let err = client.get("/down").send().await.expect_err("refused");
    assert_eq!(err.kind(), ErrorKind::Connect);
    let created = client
        .post("/items")
        .json(&json!({"name": "x"}))
        .send()
        .await
        .expect("sent");
    assert_eq!(
        (
            created.status(),
            created.headers()["location"].to_str().expect("ascii")
        ),
        (StatusCode::CREATED, "/items/9")
    );
    let posted = stub.received().pop().expect("seen");
    assert_eq!(posted.body, "{\"name\":\"x\"}");
    let missing = client.get("/nothing").send().await.expect("404");
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    assert_eq!(stub.hits(&Method::POST, "/items"), 1);
}
