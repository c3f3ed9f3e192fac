//! The layer crates used without the facade: composed with
//! `tower::ServiceBuilder` over a plain hyper-util client, inside an axum
//! gateway that calls its upstream through them, and on an axum router
//! itself. Every call is real HTTP over 127.0.0.1 (`FakeApi` upstream).
//!
//! Which layers belong on a server's router: the limits do (they bound what
//! a server accepts: `RateLimitLayer` in reject mode answers 429, the pool
//! bounds the handlers in flight). Auth and retry do not: they act on
//! outgoing calls (they add a credential, they send again), so they go on
//! the gateway's client, as do the cache (it stores upstream answers) and
//! the limits that protect the upstream.

use std::net::SocketAddr;
use std::time::Duration;

use axum::error_handling::HandleErrorLayer;
use axum::extract::{Path, State};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::time::Instant;
use tollgate_auth::AuthLayer;
use tollgate_cache::{CacheBody, CacheLayer, CacheStatus};
use tollgate_limit::concurrency::PoolQueueFull;
use tollgate_limit::{
    ConcurrencyLimitLayer, PermitBody, PermitWait, QueueWait, Quota, RateLimitLayer, RateLimited,
};
use tollgate_retry::{Backoff, Jitter, RetryLayer, RetryRecord};
use tollgate_testkit::{FakeApi, Fault};
use tower::util::BoxCloneSyncService;
use tower::{BoxError, ServiceBuilder, ServiceExt};

const TOKEN: &str = "s3cret-token";

type HyperClient =
    hyper_util::client::legacy::Client<HttpConnector, tollgate_retry::ReplayableBody>;

fn hyper_client() -> HyperClient {
    hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

/// Exactly this backoff, no jitter.
fn retry_every_100ms() -> RetryLayer {
    let backoff = Backoff::exponential(Duration::from_millis(100))
        .expect("a valid backoff")
        .jitter(Jitter::None);
    RetryLayer::new().max_retries(2).backoff(backoff)
}

/// The upstream stack without the facade, outermost first, in the order the
/// facade uses: cache, retry, rate limit, auth, pool, a hyper-util client.
/// The response body is whatever the layers make of hyper's `Incoming`;
/// boxed here so that a gateway can hold the service in its state.
type Upstream = BoxCloneSyncService<Request<Full<Bytes>>, Response<Bytes>, BoxError>;

fn upstream_stack(api: &FakeApi, quota: Quota, pool: &ConcurrencyLimitLayer) -> Upstream {
    let origin = api.url().parse().expect("an origin");
    let stack = ServiceBuilder::new()
        .layer(CacheLayer::new(Duration::from_secs(60)))
        .layer(retry_every_100ms())
        .layer(RateLimitLayer::new(quota))
        .layer(
            AuthLayer::bearer(TOKEN)
                .expect("a valid token")
                .origin(origin),
        )
        .layer(pool.clone())
        .service(hyper_client());
    // Read the body whole, keeping the records in the extensions.
    let stack = ServiceExt::<Request<Full<Bytes>>>::and_then(
        stack,
        |res: Response<CacheBody<PermitBody<Incoming>>>| async move {
            let (parts, body) = res.into_parts();
            let bytes = body
                .collect()
                .await
                .map_err(Into::<BoxError>::into)?
                .to_bytes();
            Ok::<_, BoxError>(Response::from_parts(parts, bytes))
        },
    );
    BoxCloneSyncService::new(stack)
}

fn get_request(url: &str) -> Request<Full<Bytes>> {
    Request::get(url)
        .body(Full::default())
        .expect("a valid request")
}

#[tokio::test(start_paused = true)]
async fn the_layers_compose_over_a_plain_hyper_client_and_each_records_its_part() {
    let api = FakeApi::start().await.expect("start");
    api.require_bearer(TOKEN);
    api.inject(
        "/posts/1",
        Fault::status(StatusCode::SERVICE_UNAVAILABLE).times(1),
    );
    let quota = Quota::per_second(1).expect("a valid quota");
    let pool = ConcurrencyLimitLayer::new(1).max_queue(8);
    let upstream = upstream_stack(&api, quota, &pool);
    let url = format!("{}/posts/1", api.url());

    let started = Instant::now();
    let res = upstream
        .clone()
        .oneshot(get_request(&url))
        .await
        .expect("a response");
    assert_eq!(res.status(), StatusCode::OK);
    let post: serde_json::Value = serde_json::from_slice(res.body()).expect("json");
    assert_eq!(post["id"], 1);
    let ext = res.extensions();
    assert_eq!(ext.get::<CacheStatus>(), Some(&CacheStatus::Miss));
    let record = ext.get::<RetryRecord>().expect("retry's record");
    assert_eq!(record.attempts, 2);
    assert_eq!(record.retries[0].delay, Duration::from_millis(100));
    // The retry's own permit, a second after the first attempt's.
    assert_eq!(
        ext.get::<PermitWait>(),
        Some(&PermitWait(Duration::from_millis(900)))
    );
    assert_eq!(ext.get::<QueueWait>(), Some(&QueueWait(Duration::ZERO)));
    assert_eq!(started.elapsed(), Duration::from_secs(1));
    // The 503 answered before the credential was checked; the 200 after.
    assert_eq!(api.hits("/posts/1"), 2);
    let last = api.last_request("/posts/1").expect("recorded");
    assert_eq!(
        last.header("authorization"),
        Some(format!("Bearer {TOKEN}").as_str())
    );

    // Again: a hit, answered above the limiter and the pool.
    let started = Instant::now();
    let hit = upstream
        .clone()
        .oneshot(get_request(&url))
        .await
        .expect("a hit");
    assert_eq!(started.elapsed(), Duration::ZERO, "no permit waited for");
    assert_eq!(hit.body(), res.body());
    let ext = hit.extensions();
    assert_eq!(ext.get::<CacheStatus>(), Some(&CacheStatus::Hit));
    assert!(ext.get::<PermitWait>().is_none(), "no permit taken");
    assert!(ext.get::<QueueWait>().is_none(), "no slot taken");
    assert!(ext.get::<RetryRecord>().is_none(), "no attempt made");
    assert_eq!(api.hits("/posts/1"), 2);

    // The credential goes only to the origin it was given for.
    let elsewhere = format!("http://localhost:{}/posts/2", api.addr().port());
    let refused = upstream
        .clone()
        .oneshot(get_request(&elsewhere))
        .await
        .expect("an answer");
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    let last = api.last_request("/posts/2").expect("recorded");
    assert_eq!(last.header("authorization"), None);
}

/// The gateway's state: its upstream, through the layers.
#[derive(Clone)]
struct Gateway {
    upstream: Upstream,
    base: String,
}

/// `GET /posts/{id}`: asks the upstream, passes its answer on, and says in
/// headers what the layers did.
async fn proxy_post(State(gw): State<Gateway>, Path(id): Path<u32>) -> impl IntoResponse {
    let url = format!("{}/posts/{id}", gw.base);
    match gw.upstream.oneshot(get_request(&url)).await {
        Ok(res) => {
            let ext = res.extensions();
            let cache = format!("{:?}", ext.get::<CacheStatus>());
            let attempts = ext.get::<RetryRecord>().map_or(0, |r| r.attempts);
            let waited = ext.get::<PermitWait>().map_or(Duration::ZERO, |w| w.0);
            let mut out = Response::new(axum::body::Body::from(res.body().clone()));
            *out.status_mut() = res.status();
            let h = out.headers_mut();
            for (name, value) in [
                ("x-cache", cache),
                ("x-attempts", attempts.to_string()),
                ("x-permit-wait-ms", waited.as_millis().to_string()),
            ] {
                if let Ok(value) = HeaderValue::try_from(value) {
                    h.insert(name, value);
                }
            }
            out
        }
        Err(e) => {
            let status = if e.is::<RateLimited>() || e.is::<PoolQueueFull>() {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::BAD_GATEWAY
            };
            (status, "upstream failed\n").into_response()
        }
    }
}

/// Serves `app` on 127.0.0.1; the server stops when the test's runtime
/// does.
async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("an address");
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
    });
    addr
}

/// Calls `url` with a plain hyper client: the status and two headers.
async fn call(url: &str) -> (StatusCode, Response<Bytes>) {
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build::<_, Full<Bytes>>(HttpConnector::new());
    let res = client.request(get_request(url)).await.expect("an answer");
    let (parts, body) = res.into_parts();
    let bytes = body.collect().await.expect("a body").to_bytes();
    (parts.status, Response::from_parts(parts, bytes))
}

fn header<'a>(res: &'a Response<Bytes>, name: &str) -> &'a str {
    res.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
}

#[tokio::test(start_paused = true)]
async fn an_axum_gateway_calls_its_upstream_through_the_layers() {
    let api = FakeApi::start().await.expect("start");
    api.require_bearer(TOKEN);
    api.inject("/posts/3", Fault::status(StatusCode::BAD_GATEWAY).times(1));
    let quota = Quota::per_second(1).expect("a valid quota");
    let pool = ConcurrencyLimitLayer::new(2);
    let gateway = Gateway {
        upstream: upstream_stack(&api, quota, &pool),
        base: api.url(),
    };
    let app = Router::new()
        .route("/posts/{id}", get(proxy_post))
        .with_state(gateway);
    let addr = serve(app).await;

    // The gateway's caller sends no credential; the upstream requires one.
    let (status, res) = call(&format!("http://{addr}/posts/3")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(header(&res, "x-cache"), "Some(Miss)");
    assert_eq!(header(&res, "x-attempts"), "2");
    assert_eq!(header(&res, "x-permit-wait-ms"), "900");
    let post: serde_json::Value = serde_json::from_slice(res.body()).expect("json");
    assert_eq!(post["id"], 3);

    let (status, res) = call(&format!("http://{addr}/posts/3")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(header(&res, "x-cache"), "Some(Hit)");
    assert_eq!(header(&res, "x-attempts"), "0");
    assert_eq!(api.hits("/posts/3"), 2, "the 502 and the 200; the hit none");
}

#[tokio::test(start_paused = true)]
async fn the_limits_on_an_axum_router_refuse_with_429_and_bound_the_handlers() {
    let quota = Quota::window(3, Duration::from_secs(10)).expect("a valid quota");
    let app = Router::new()
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(1)).await;
                "done\n"
            }),
        )
        .layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(move |err: BoxError| async move {
                    if let Some(limited) = err.downcast_ref::<RateLimited>() {
                        (
                            StatusCode::TOO_MANY_REQUESTS,
                            limited.headers(&quota),
                            "slow down\n",
                        )
                            .into_response()
                    } else if err.is::<PoolQueueFull>() {
                        (StatusCode::SERVICE_UNAVAILABLE, "busy\n").into_response()
                    } else {
                        (StatusCode::INTERNAL_SERVER_ERROR, "internal error\n").into_response()
                    }
                }))
                .layer(RateLimitLayer::new(quota).reject())
                // One handler at a time, nobody waiting.
                .layer(ConcurrencyLimitLayer::new(1).max_queue(0)),
        );
    let addr = serve(app).await;
    let url = format!("http://{addr}/slow");

    // Two at once: one runs, the other finds the pool full and no queue.
    let started = Instant::now();
    let (a, b) = tokio::join!(call(&url), call(&url));
    let mut statuses = [a.0, b.0];
    statuses.sort();
    assert_eq!(statuses, [StatusCode::OK, StatusCode::SERVICE_UNAVAILABLE]);
    assert_eq!(started.elapsed(), Duration::from_secs(1));

    // The third permit of the window, then a refusal with the headers.
    let (status, _) = call(&url).await;
    assert_eq!(status, StatusCode::OK);
    let (status, res) = call(&url).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert!(header(&res, "retry-after")
        .parse::<u64>()
        .is_ok_and(|s| (1..=10).contains(&s)));
    assert_eq!(header(&res, "ratelimit-policy"), "\"default\";q=3;w=10");
}
