//! A server limiting its own routes with `RateLimitLayer` in reject mode:
//! each client IP may make 3 requests in any 10 seconds; the fourth gets
//! `429 Too Many Requests` with `Retry-After`, `RateLimit` and
//! `RateLimit-Policy`.
//!
//! `cargo run --example axum_rate_limit` starts the server on 127.0.0.1,
//! calls it five times with the Tollgate client, prints what came back, and
//! exits.
#![allow(clippy::print_stdout, reason = "an example prints")]

use std::net::SocketAddr;
use std::time::Duration;

use axum::error_handling::HandleErrorLayer;
use axum::extract::ConnectInfo;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tollgate_limit::{KeyBy, Quota, RateLimitLayer, RateLimited};
use tower::{BoxError, ServiceBuilder};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let quota = Quota::window(3, Duration::from_secs(10))?;
    // One limiter per client IP, as axum's ConnectInfo gives it.
    let per_ip = KeyBy::func(|r| {
        r.extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip().to_string())
    });
    let limiter = RateLimitLayer::new(quota).reject().keyed_by(per_ip);

    let app = Router::new()
        .route("/hello", get(|| async { "hello\n" }))
        .layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(move |err: BoxError| async move {
                    match err.downcast_ref::<RateLimited>() {
                        Some(limited) => (
                            StatusCode::TOO_MANY_REQUESTS,
                            limited.headers(&quota),
                            "slow down\n",
                        )
                            .into_response(),
                        None => {
                            (StatusCode::INTERNAL_SERVER_ERROR, "internal error\n").into_response()
                        }
                    }
                }))
                .layer(limiter),
        );

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
    });
    println!("serving http://{addr}/hello, 3 requests per 10 s per client IP\n");

    let client = tollgate::Client::builder(format!("http://{addr}")).build()?;
    let mut limited = 0;
    for n in 1..=5 {
        let res = client.get("/hello").send().await?;
        let h = res.headers();
        let show = |name: &str| {
            h.get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-")
                .to_owned()
        };
        println!(
            "request {n}: {}  retry-after: {}  ratelimit: {}  ratelimit-policy: {}",
            res.status(),
            show("retry-after"),
            show("ratelimit"),
            show("ratelimit-policy")
        );
        limited += usize::from(res.status() == StatusCode::TOO_MANY_REQUESTS);
    }
    server.abort();
    if limited != 2 {
        return Err(
            format!("expected the 4th and 5th requests to be refused, {limited} were").into(),
        );
    }
    Ok(())
}
