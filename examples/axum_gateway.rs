//! A gateway calling an upstream API on behalf of its users, each with the
//! user's own credential.
//!
//! Users call the gateway with `x-user: <name>`. An axum extractor looks up
//! that user's upstream API token and hands it to the Tollgate client as a
//! per-request `Credential`; requests without a user go with the gateway's
//! own service token, and an unknown user is refused before anything is
//! sent upstream. The upstream here is the testkit's FakeApi, whose
//! `/anything` route echoes the headers it received.
//!
//! `cargo run --example axum_gateway` starts both on 127.0.0.1, calls the
//! gateway as three callers, prints what the upstream saw, and exits.
#![allow(clippy::print_stdout, reason = "an example prints")]

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use tollgate::Client;
use tollgate_auth::Credential;
use tollgate_testkit::FakeApi;

/// The gateway's state: its upstream client and each user's upstream token.
#[derive(Clone)]
struct Gateway {
    upstream: Client,
    tokens: Arc<HashMap<&'static str, Credential>>,
}

/// The upstream credential of the user a request is for: `None` for a
/// request without `x-user`, a 403 for a user the gateway does not know.
struct UserCredential(Option<Credential>);

impl FromRequestParts<Gateway> for UserCredential {
    type Rejection = (StatusCode, &'static str);

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Gateway,
    ) -> Result<Self, Self::Rejection> {
        let Some(user) = parts.headers.get("x-user") else {
            return Ok(UserCredential(None));
        };
        let user = user
            .to_str()
            .map_err(|_| (StatusCode::BAD_REQUEST, "bad x-user\n"))?;
        match state.tokens.get(user) {
            Some(credential) => Ok(UserCredential(Some(credential.clone()))),
            None => Err((StatusCode::FORBIDDEN, "unknown user\n")),
        }
    }
}

/// `GET /profile`: asks the upstream with the caller's credential and says
/// which `Authorization` the upstream saw.
async fn profile(
    State(gateway): State<Gateway>,
    UserCredential(credential): UserCredential,
) -> Result<Json<serde_json::Value>, (StatusCode, String)> {
    let mut request = gateway.upstream.get("/anything/profile");
    if let Some(credential) = credential {
        request = request.credential(credential);
    }
    let response = request
        .send()
        .await
        .map_err(|e| (StatusCode::BAD_GATEWAY, format!("{e}\n")))?;
    let echoed = response
        .data()
        .map_err(|e| (StatusCode::BAD_GATEWAY, format!("{e}\n")))?;
    Ok(Json(serde_json::json!({
        "upstream_saw": echoed["headers"]["authorization"],
    })))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let api = FakeApi::start().await?;
    let upstream = Client::builder(api.url())
        .bearer_auth("gateway-service-token")
        .build()?;
    let tokens = HashMap::from([
        ("alice", Credential::bearer("alice-upstream-token")?),
        (
            "bob",
            Credential::api_key_header("authorization", "ApiKey bob-key")?,
        ),
    ]);
    let app = Router::new()
        .route("/profile", get(profile))
        .with_state(Gateway {
            upstream,
            tokens: Arc::new(tokens),
        });

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    println!("gateway on http://{addr}, upstream on {}\n", api.url());

    let callers = Client::new(format!("http://{addr}"))?;
    for user in [Some("alice"), Some("bob"), None, Some("mallory")] {
        let mut request = callers.get("/profile");
        if let Some(user) = user {
            request = request.header("x-user", user);
        }
        let response = request.send().await?;
        println!(
            "{:<8} -> {}  {}",
            user.unwrap_or("(none)"),
            response.status(),
            response.text_lossy().trim_end()
        );
    }
    println!(
        "\nupstream requests: {} (mallory's never left the gateway)",
        api.hits("/anything/*")
    );
    server.abort();
    Ok(())
}
