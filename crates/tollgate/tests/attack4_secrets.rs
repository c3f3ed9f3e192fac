//! Adversary 4: errors and responses never carry a credential, whichever
//! way the call fails (refused, timed out, answered), for a query
//! credential (which sits in the URI) and a header one.
#![cfg(all(feature = "auth", feature = "retry"))]

use std::time::Duration;

use tollgate::Client;
use tollgate_testkit::{FakeApi, Fault};

const SECRET: &str = "TOPSECRET-ATTACK4";

fn clean(what: &str, shown: &str) {
    assert!(
        !shown.contains(SECRET),
        "{what} carries the credential: {shown}"
    );
}

#[tokio::test]
async fn a_refused_call_with_a_query_credential_shows_no_secret() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let client = Client::builder(format!("http://127.0.0.1:{port}"))
        .api_key_query("api_key", SECRET)
        .retry(tollgate_retry::RetryLayer::new().max_retries(1).no_budget())
        .build()
        .expect("client");
    let err = client.get("/posts/1").send().await.expect_err("refused");
    clean("Display", &err.to_string());
    clean("Debug", &format!("{err:?}"));
    clean("alternate Debug", &format!("{err:#?}"));
    let mut source = std::error::Error::source(&err);
    while let Some(s) = source {
        clean("a source", &format!("{s} / {s:?}"));
        source = s.source();
    }
}

#[tokio::test]
async fn a_timed_out_or_failed_call_with_credentials_shows_no_secret() {
    let api = FakeApi::start().await.expect("start");
    api.inject("/posts/1", Fault::latency(Duration::from_secs(30)).times(1));
    api.inject("/posts/2", Fault::cut_body());
    for (cred, path) in [("query", "/posts/1"), ("header", "/posts/2")] {
        let builder = Client::builder(api.url()).timeout(Duration::from_millis(300));
        let builder = if cred == "query" {
            builder.api_key_query("api_key", SECRET)
        } else {
            builder.api_key_header("x-api-key", SECRET)
        };
        let client = builder.build().expect("client");
        let err = client.get(path).send().await.expect_err("fails");
        clean("Display", &err.to_string());
        clean("Debug", &format!("{err:?}"));
    }
}

#[tokio::test]
async fn a_response_to_a_query_credential_shows_no_secret() {
    let api = FakeApi::start().await.expect("start");
    let client = Client::builder(api.url())
        .api_key_query("api_key", SECRET)
        .build()
        .expect("client");
    let res = client.get("/posts/1").send().await.expect("ok");
    clean("Response Debug", &format!("{res:?}"));
    let res = client.get("/nope/404").send().await.expect("answered");
    if let Err(err) = res.error_for_status() {
        clean("status error", &format!("{err} {err:?}"));
    }
}
