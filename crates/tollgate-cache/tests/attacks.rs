//! Attacks on the cache's promises (issue #11): coalescing that hands one
//! request another's answer, the default mode storing what it must not,
//! credentials the key did not see, reads that miss their own writes,
//! cancellation at every await, full tables, extreme numbers and hostile
//! headers. In-process upstreams, tokio's clock paused.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT_LANGUAGE, AUTHORIZATION, CACHE_CONTROL};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response};
use http_body_util::{BodyExt, Full};
use proptest::prelude::*;
use tokio::time::Instant;
use tollgate_cache::{CacheLayer, CacheStatus, CacheTtl, Freshness};
use tower::{service_fn, BoxError, Layer, Service, ServiceExt};

type Reply = Response<Full<Bytes>>;

/// An upstream that answers after `delay` with `make(call number, request)`,
/// and counts its calls.
fn upstream<F>(
    delay: Duration,
    make: F,
) -> (
    Arc<AtomicUsize>,
    impl Service<Request<()>, Response = Reply, Error = Infallible, Future = impl Send>
        + Clone
        + Send
        + 'static,
)
where
    F: Fn(usize, &Request<()>) -> Reply + Clone + Send + Sync + 'static,
{
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let service = service_fn(move |req: Request<()>| {
        let n = c.fetch_add(1, Ordering::SeqCst) + 1;
        let reply = make(n, &req);
        async move {
            tokio::time::sleep(delay).await;
            Ok::<_, Infallible>(reply)
        }
    });
    (calls, service)
}

fn reply(headers: &[(&str, &str)], body: String) -> Reply {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    for (name, value) in headers {
        response.headers_mut().append(
            HeaderName::try_from(*name).expect("name"),
            HeaderValue::try_from(*value).expect("value"),
        );
    }
    response
}

fn get(path: &str) -> Request<()> {
    Request::get(format!("http://api.test{path}"))
        .body(())
        .expect("request")
}

fn get_with(path: &str, name: &str, value: &str) -> Request<()> {
    let mut request = get(path);
    request.headers_mut().insert(
        HeaderName::try_from(name).expect("name"),
        HeaderValue::try_from(value).expect("value"),
    );
    request
}

async fn body_of<B>(response: Response<B>) -> Bytes
where
    B: http_body::Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes()
}

fn status<B>(response: &Response<B>) -> CacheStatus {
    *response.extensions().get::<CacheStatus>().expect("status")
}

fn language(req: &Request<()>) -> String {
    req.headers()
        .get(ACCEPT_LANGUAGE)
        .map_or("-", |v| v.to_str().unwrap_or("?"))
        .to_owned()
}

// ---------------------------------------------------------------------------
// 6. Coalesced misses: a follower takes the leader's answer only if the
//    cache could have served it that answer.
// ---------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn coalesced_requests_never_share_a_vary_star_response() {
    let (calls, upstream) = upstream(Duration::from_millis(100), |_, req| {
        reply(&[("vary", "*")], format!("in {}", language(req)))
    });
    let service = CacheLayer::new(Duration::from_secs(60)).layer(upstream);
    let tasks: Vec<_> = ["en", "fr", "de"]
        .into_iter()
        .map(|lang| {
            let call = service
                .clone()
                .oneshot(get_with("/v", "accept-language", lang));
            tokio::spawn(async move {
                let response = call.await.expect("response");
                assert_ne!(status(&response), CacheStatus::Coalesced);
                assert_eq!(body_of(response).await, format!("in {lang}"));
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("each request got its own language");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[tokio::test(start_paused = true)]
async fn coalesced_requests_never_share_what_may_not_be_stored() {
    for cache_control in ["private", "no-store", "no-cache", "max-age=0"] {
        let (calls, upstream) = upstream(Duration::from_millis(100), move |n, _| {
            reply(&[("cache-control", cache_control)], format!("call {n}"))
        });
        let layer = CacheLayer::http(None);
        let service = layer.layer(upstream);
        let tasks: Vec<_> = (0..3)
            .map(|_| tokio::spawn(service.clone().oneshot(get("/p"))))
            .collect();
        let mut bodies = Vec::new();
        for task in tasks {
            let response = task.await.expect("task").expect("response");
            assert_ne!(status(&response), CacheStatus::Coalesced, "{cache_control}");
            bodies.push(body_of(response).await);
        }
        bodies.sort();
        bodies.dedup();
        assert_eq!(bodies.len(), 3, "{cache_control}: each its own response");
        assert_eq!(calls.load(Ordering::SeqCst), 3, "{cache_control}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_url_whose_response_could_not_be_reused_does_not_make_requests_wait() {
    let (calls, upstream) = upstream(Duration::from_millis(100), |_, req| {
        reply(&[("vary", "*")], format!("in {}", language(req)))
    });
    let service = CacheLayer::new(Duration::from_secs(60)).layer(upstream);
    // The first burst learns that /v cannot be shared.
    let first: Vec<_> = ["en", "fr"]
        .into_iter()
        .map(|lang| {
            tokio::spawn(
                service
                    .clone()
                    .oneshot(get_with("/v", "accept-language", lang)),
            )
        })
        .collect();
    for task in first {
        task.await.expect("task").expect("response");
    }
    // The next burst does not queue behind a leader it cannot use: every
    // request is answered after one upstream round trip, not two.
    let started = Instant::now();
    let second: Vec<_> = ["en", "fr", "de"]
        .into_iter()
        .map(|lang| {
            let call = service
                .clone()
                .oneshot(get_with("/v", "accept-language", lang));
            tokio::spawn(async move {
                let response = call.await.expect("response");
                let elapsed = started.elapsed();
                (body_of(response).await, elapsed, lang)
            })
        })
        .collect();
    for task in second {
        let (body, elapsed, lang) = task.await.expect("task");
        assert_eq!(body, format!("in {lang}"));
        assert_eq!(elapsed, Duration::from_millis(100), "{lang} waited");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 5);
}

/// An upstream with one resource: `GET` answers with the version it read
/// when the request arrived, after 100 ms; `PUT` bumps it at once.
fn versioned() -> impl Service<Request<()>, Response = Reply, Error = Infallible, Future = impl Send>
       + Clone
       + Send
       + 'static {
    let version = Arc::new(AtomicUsize::new(0));
    service_fn(move |req: Request<()>| {
        let version = version.clone();
        async move {
            if req.method() == Method::PUT {
                let v = version.fetch_add(1, Ordering::SeqCst) + 1;
                return Ok::<_, Infallible>(reply(&[], format!("put v{v}")));
            }
            let seen = version.load(Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(100)).await;
            Ok(reply(&[], format!("v{seen}")))
        }
    })
}

#[tokio::test(start_paused = true)]
async fn a_get_after_a_write_never_joins_a_flight_started_before_it() {
    let layer = CacheLayer::new(Duration::from_secs(60));
    let service = layer.layer(versioned());
    let before = tokio::spawn(service.clone().oneshot(get("/r")));
    tokio::time::sleep(Duration::from_millis(10)).await;
    let put = Request::put("http://api.test/r").body(()).expect("request");
    let written = service.clone().oneshot(put).await.expect("put");
    assert_eq!(body_of(written).await, "put v1");
    // Issued after the write completed: it must see the write.
    let after = service.clone().oneshot(get("/r")).await.expect("get");
    assert_ne!(status(&after), CacheStatus::Coalesced);
    assert_eq!(body_of(after).await, "v1");
    // The flight that started before the write ends, and must not leave
    // its pre-write answer in the cache.
    let old = before.await.expect("task").expect("response");
    assert_eq!(body_of(old).await, "v0");
    let later = service.clone().oneshot(get("/r")).await.expect("get");
    assert_eq!(body_of(later).await, "v1");
}

#[tokio::test(start_paused = true)]
async fn a_flight_that_started_before_a_write_does_not_store_its_answer() {
    let layer = CacheLayer::new(Duration::from_secs(60));
    let service = layer.layer(versioned());
    let before = tokio::spawn(service.clone().oneshot(get("/r")));
    tokio::time::sleep(Duration::from_millis(10)).await;
    let put = Request::put("http://api.test/r").body(()).expect("request");
    service.clone().oneshot(put).await.expect("put");
    let old = before.await.expect("task").expect("response");
    assert_eq!(body_of(old).await, "v0");
    let after = service.clone().oneshot(get("/r")).await.expect("get");
    assert_eq!(status(&after), CacheStatus::Miss);
    assert_eq!(body_of(after).await, "v1");
    // `invalidate` on the layer is a write too.
    let before = tokio::spawn(service.clone().oneshot(get("/s")));
    tokio::time::sleep(Duration::from_millis(10)).await;
    layer.invalidate(&"http://api.test/s".parse().expect("uri"));
    before.await.expect("task").expect("response");
    assert_eq!(layer.stats().entries, 1, "only /r, fetched after its write");
}

// ---------------------------------------------------------------------------
// 8. The default mode (fixed TTL) overrides freshness, not safety.
// ---------------------------------------------------------------------------

async fn twice(
    layer: &CacheLayer,
    headers: &'static [(&'static str, &'static str)],
    first: Request<()>,
    second: Request<()>,
) -> (CacheStatus, CacheStatus, usize) {
    let (calls, upstream) = upstream(Duration::ZERO, move |n, _| {
        reply(headers, format!("call {n}"))
    });
    let service = layer.clone().layer(upstream);
    let a = service.clone().oneshot(first).await.expect("first");
    let b = service.oneshot(second).await.expect("second");
    (status(&a), status(&b), calls.load(Ordering::SeqCst))
}

#[tokio::test(start_paused = true)]
async fn the_default_mode_never_stores_a_private_response_for_everyone() {
    let layer = CacheLayer::new(Duration::from_secs(60));
    let headers = &[("cache-control", "private, max-age=60")];
    let (_, second, calls) = twice(&layer, headers, get("/me"), get("/me")).await;
    assert_eq!((second, calls), (CacheStatus::Miss, 2));
    // Partitioned to one credential, it may be kept for that credential.
    let alice = || get_with("/me", "authorization", "Bearer alice");
    let (_, second, calls) = twice(&layer, headers, alice(), alice()).await;
    assert_eq!((second, calls), (CacheStatus::Hit, 1));
}

#[tokio::test(start_paused = true)]
async fn http_mode_is_a_shared_cache_for_private_responses() {
    let layer = CacheLayer::http(None);
    let headers = &[("cache-control", "private, max-age=60")];
    let (_, second, calls) = twice(&layer, headers, get("/me"), get("/me")).await;
    assert_eq!((second, calls), (CacheStatus::Miss, 2));
    let alice = || get_with("/me", "authorization", "Bearer alice");
    let (_, second, calls) = twice(&layer, headers, alice(), alice()).await;
    assert_eq!((second, calls), (CacheStatus::Hit, 1));
}

#[tokio::test(start_paused = true)]
async fn the_default_mode_revalidates_no_cache_on_every_reuse() {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let s = seen.clone();
    let upstream = service_fn(move |req: Request<()>| {
        let inm = req.headers().get("if-none-match").cloned();
        s.lock().expect("lock").push(inm.clone());
        async move {
            let response = match inm {
                Some(_) => Response::builder()
                    .status(304)
                    .header("etag", "\"v1\"")
                    .body(Full::new(Bytes::new())),
                None => Response::builder()
                    .header("cache-control", "no-cache")
                    .header("etag", "\"v1\"")
                    .body(Full::new(Bytes::from_static(b"body"))),
            };
            Ok::<_, Infallible>(response.expect("response"))
        }
    });
    let service = CacheLayer::new(Duration::from_secs(60)).layer(upstream);
    for expected in [
        CacheStatus::Miss,
        CacheStatus::Revalidated,
        CacheStatus::Revalidated,
    ] {
        let response = service.clone().oneshot(get("/nc")).await.expect("response");
        assert_eq!(status(&response), expected);
        assert_eq!(body_of(response).await, "body");
    }
    assert_eq!(seen.lock().expect("lock").len(), 3, "asked every time");
}

#[tokio::test(start_paused = true)]
async fn no_mode_stores_a_response_that_sets_a_cookie() {
    let headers = &[("set-cookie", "session=abc; HttpOnly")];
    for layer in [
        CacheLayer::new(Duration::from_secs(60)),
        CacheLayer::http(Some(Duration::from_secs(60))),
    ] {
        let (_, second, calls) = twice(&layer, headers, get("/login"), get("/login")).await;
        assert_eq!((second, calls), (CacheStatus::Miss, 2));
        assert_eq!(layer.stats().entries, 0);
    }
}

#[tokio::test(start_paused = true)]
async fn a_header_named_like_a_secret_partitions_the_cache() {
    for name in [
        "api-key",
        "x-api-key",
        "apikey",
        "x-auth-token",
        "x-client-secret",
        "x-session-id",
        "x-signature",
        "x-amz-security-token",
        "x-goog-api-key",
        "authentication",
    ] {
        let (calls, upstream) = upstream(Duration::ZERO, move |_, req| {
            let value = req
                .headers()
                .get(name)
                .expect("sent")
                .to_str()
                .expect("ascii");
            reply(&[], format!("for {value}"))
        });
        let service = CacheLayer::new(Duration::from_secs(60)).layer(upstream);
        let a = service
            .clone()
            .oneshot(get_with("/k", name, "alice"))
            .await
            .expect("alice");
        assert_eq!(body_of(a).await, "for alice");
        let b = service
            .clone()
            .oneshot(get_with("/k", name, "bob"))
            .await
            .expect("bob");
        assert_eq!(status(&b), CacheStatus::Miss, "{name}");
        assert_eq!(body_of(b).await, "for bob", "{name}");
        assert_eq!(calls.load(Ordering::SeqCst), 2, "{name}");
    }
}

#[tokio::test(start_paused = true)]
async fn the_builder_adds_credential_headers() {
    let (calls, upstream) = upstream(Duration::ZERO, |n, _| reply(&[], format!("call {n}")));
    let layer = CacheLayer::builder(Freshness::Fixed(Duration::from_secs(60)))
        .credential_header(HeaderName::from_static("x-tenant"))
        .build();
    let service = layer.layer(upstream);
    service
        .clone()
        .oneshot(get_with("/t", "x-tenant", "a"))
        .await
        .expect("a");
    let b = service
        .clone()
        .oneshot(get_with("/t", "x-tenant", "b"))
        .await
        .expect("b");
    assert_eq!(status(&b), CacheStatus::Miss);
    let a = service
        .oneshot(get_with("/t", "x-tenant", "a"))
        .await
        .expect("a");
    assert_eq!(status(&a), CacheStatus::Hit);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn header_order_does_not_split_one_credential() {
    let (calls, upstream) = upstream(Duration::ZERO, |n, _| reply(&[], format!("call {n}")));
    let service = CacheLayer::new(Duration::from_secs(60)).layer(upstream);
    let mut one = get("/o");
    one.headers_mut()
        .insert("x-api-key", HeaderValue::from_static("k"));
    one.headers_mut()
        .insert(AUTHORIZATION, HeaderValue::from_static("Bearer t"));
    let mut two = get("/o");
    two.headers_mut()
        .insert(AUTHORIZATION, HeaderValue::from_static("Bearer t"));
    two.headers_mut()
        .insert("x-api-key", HeaderValue::from_static("k"));
    service.clone().oneshot(one).await.expect("one");
    let hit = service.oneshot(two).await.expect("two");
    assert_eq!(status(&hit), CacheStatus::Hit);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

// ---------------------------------------------------------------------------
// Cancel at every await.
// ---------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn dropped_followers_strand_nobody_and_the_leader_still_stores() {
    let (calls, upstream) = upstream(Duration::from_millis(100), |n, _| {
        reply(&[], format!("call {n}"))
    });
    let layer = CacheLayer::new(Duration::from_secs(60));
    let service = layer.layer(upstream);
    let leader = tokio::spawn(service.clone().oneshot(get("/f")));
    tokio::task::yield_now().await;
    let followers: Vec<_> = (0..5)
        .map(|_| tokio::spawn(service.clone().oneshot(get("/f"))))
        .collect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    for follower in &followers {
        follower.abort();
    }
    let response = leader.await.expect("task").expect("response");
    assert_eq!(status(&response), CacheStatus::Miss);
    assert_eq!(body_of(response).await, "call 1");
    let next = service.oneshot(get("/f")).await.expect("next");
    assert_eq!(status(&next), CacheStatus::Hit);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

/// A body that sends one chunk, then waits `gap`, then another.
struct SlowBody {
    step: u8,
    sleep: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl SlowBody {
    fn new(gap: Duration) -> Self {
        SlowBody {
            step: 0,
            sleep: Box::pin(tokio::time::sleep(gap)),
        }
    }
}

impl http_body::Body for SlowBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        use std::future::Future;
        use std::task::Poll;
        match self.step {
            0 => {
                self.step = 1;
                Poll::Ready(Some(Ok(http_body::Frame::data(Bytes::from_static(
                    b"first ",
                )))))
            }
            1 => match self.sleep.as_mut().poll(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(()) => {
                    self.step = 2;
                    Poll::Ready(Some(Ok(http_body::Frame::data(Bytes::from_static(
                        b"second",
                    )))))
                }
            },
            _ => Poll::Ready(None),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_leader_dropped_while_reading_the_body_strands_nobody() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let upstream = service_fn(move |_req: Request<()>| {
        c.fetch_add(1, Ordering::SeqCst);
        async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            Ok::<_, Infallible>(Response::new(SlowBody::new(Duration::from_millis(100))))
        }
    });
    let service = CacheLayer::new(Duration::from_secs(60)).layer(upstream);
    let leader = tokio::spawn(service.clone().oneshot(get("/slow")));
    tokio::task::yield_now().await;
    let followers: Vec<_> = (0..3)
        .map(|_| tokio::spawn(service.clone().oneshot(get("/slow"))))
        .collect();
    // The leader has its response and is reading the body for its waiters.
    tokio::time::sleep(Duration::from_millis(50)).await;
    leader.abort();
    let mut statuses = Vec::new();
    for follower in followers {
        let response = follower.await.expect("task").expect("response");
        statuses.push(status(&response));
        assert_eq!(body_of(response).await, "first second");
    }
    statuses.sort_by_key(|s| s.as_str());
    assert_eq!(
        statuses,
        [
            CacheStatus::Coalesced,
            CacheStatus::Coalesced,
            CacheStatus::Miss
        ]
    );
    let next = service.oneshot(get("/slow")).await.expect("next");
    assert_eq!(status(&next), CacheStatus::Hit);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn everyone_dropped_leaves_no_flight_behind() {
    let (calls, upstream) = upstream(Duration::from_millis(100), |n, _| {
        reply(&[], format!("call {n}"))
    });
    let service = CacheLayer::new(Duration::from_secs(60)).layer(upstream);
    let tasks: Vec<_> = (0..4)
        .map(|_| tokio::spawn(service.clone().oneshot(get("/g"))))
        .collect();
    tokio::time::sleep(Duration::from_millis(30)).await;
    for task in &tasks {
        task.abort();
    }
    for task in tasks {
        assert!(task.await.expect_err("aborted").is_cancelled());
    }
    let started = Instant::now();
    let next = service.oneshot(get("/g")).await.expect("next");
    assert_eq!(status(&next), CacheStatus::Miss);
    assert_eq!(
        started.elapsed(),
        Duration::from_millis(100),
        "it led at once"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

// ---------------------------------------------------------------------------
// Fill every table.
// ---------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_full_flight_map_still_coalesces_the_key_that_matters() {
    let (calls, upstream) = upstream(Duration::from_millis(100), |_, req| {
        reply(&[], req.uri().path().to_owned())
    });
    let service = CacheLayer::new(Duration::from_secs(60)).layer(upstream);
    let mut noise: Vec<_> = (0..2_000)
        .map(|i| tokio::spawn(service.clone().oneshot(get(&format!("/n/{i}")))))
        .collect();
    let hot: Vec<_> = (0..10)
        .map(|_| tokio::spawn(service.clone().oneshot(get("/hot"))))
        .collect();
    noise.extend(
        (2_000..4_000).map(|i| tokio::spawn(service.clone().oneshot(get(&format!("/n/{i}"))))),
    );
    let mut statuses = Vec::new();
    for task in hot {
        let response = task.await.expect("task").expect("response");
        statuses.push(status(&response));
        assert_eq!(body_of(response).await, "/hot");
    }
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == CacheStatus::Coalesced)
            .count(),
        9
    );
    for task in noise {
        task.await.expect("task").expect("response");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 4_001);
}

#[tokio::test(start_paused = true)]
async fn a_full_cache_keeps_the_entry_in_use() {
    let (calls, upstream) = upstream(Duration::ZERO, |_, req| {
        reply(&[], req.uri().path().to_owned())
    });
    let layer = CacheLayer::builder(Freshness::Fixed(Duration::from_secs(600)))
        .max_bytes(100_000)
        .build();
    let service = layer.layer(upstream);
    for i in 0..3_000 {
        // The entry in use is read between every fill.
        let hot = service.clone().oneshot(get("/hot")).await.expect("hot");
        if i > 0 {
            assert_eq!(status(&hot), CacheStatus::Hit, "after {i} fills");
        }
        service
            .clone()
            .oneshot(get(&format!("/fill/{i}")))
            .await
            .expect("fill");
    }
    let stats = layer.stats();
    assert!(stats.bytes <= 100_000, "{stats:?}");
    assert!(stats.evictions > 0, "{stats:?}");
    assert_eq!(calls.load(Ordering::SeqCst), 3_001);
}

#[tokio::test(start_paused = true)]
async fn the_uncacheable_memory_is_bounded_and_forgets() {
    // Many URLs that cannot be shared, then one that can: it coalesces.
    let (calls, upstream) = upstream(Duration::from_millis(10), |_, req| {
        if req.uri().path().starts_with("/star") {
            reply(&[("vary", "*")], "x".to_owned())
        } else {
            reply(&[], "ok".to_owned())
        }
    });
    let service = CacheLayer::new(Duration::from_secs(60)).layer(upstream);
    for i in 0..5_000 {
        service
            .clone()
            .oneshot(get(&format!("/star/{i}")))
            .await
            .expect("star");
    }
    let tasks: Vec<_> = (0..5)
        .map(|_| tokio::spawn(service.clone().oneshot(get("/fine"))))
        .collect();
    for task in tasks {
        task.await.expect("task").expect("response");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 5_001);
}

// ---------------------------------------------------------------------------
// Every number at 0, 1 and MAX.
// ---------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn extreme_durations_and_sizes_never_panic() {
    let durations = [
        Duration::ZERO,
        Duration::from_nanos(1),
        Duration::from_secs(1),
        Duration::MAX,
    ];
    let sizes = [0usize, 1, usize::MAX];
    let capacities = [0u64, 1, u64::MAX];
    for ttl in durations {
        for grace in durations {
            for (i, max_entry) in sizes.into_iter().enumerate() {
                let capacity = capacities[i];
                let (_, first) = upstream(Duration::ZERO, |n, _| {
                    reply(
                        &[
                            ("etag", "\"e\""),
                            ("cache-control", "max-age=99999999999999999999"),
                        ],
                        format!("call {n}"),
                    )
                });
                let layer = CacheLayer::builder(Freshness::Fixed(ttl))
                    .stale_if_error(grace)
                    .keep_for_revalidation(grace)
                    .remember_uncacheable(grace)
                    .max_entry_bytes(max_entry)
                    .max_bytes(capacity)
                    .build();
                let service = layer.clone().layer(first);
                for extra in durations {
                    let mut request = get("/x");
                    request.extensions_mut().insert(CacheTtl(extra));
                    let response = service.clone().oneshot(request).await.expect("response");
                    body_of(response).await;
                    tokio::time::advance(Duration::from_secs(1)).await;
                }
                let http = CacheLayer::builder(Freshness::Http {
                    default_ttl: Some(ttl),
                })
                .stale_if_error(grace)
                .max_entry_bytes(max_entry)
                .max_bytes(capacity)
                .build();
                let (_, upstream) =
                    upstream(Duration::ZERO, |n, _| reply(&[], format!("call {n}")));
                let service = http.layer(upstream);
                for _ in 0..2 {
                    let response = service.clone().oneshot(get("/y")).await.expect("response");
                    body_of(response).await;
                }
            }
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_capacity_of_zero_stores_nothing_and_serves_everything() {
    let (calls, upstream) = upstream(Duration::ZERO, |n, _| reply(&[], format!("call {n}")));
    let layer = CacheLayer::builder(Freshness::Fixed(Duration::from_secs(60)))
        .max_bytes(0)
        .build();
    let service = layer.clone().layer(upstream);
    for n in 1..=3 {
        let response = service.clone().oneshot(get("/z")).await.expect("response");
        assert_eq!(body_of(response).await, format!("call {n}"));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(layer.stats().entries, 0);
}

#[tokio::test(start_paused = true)]
async fn a_ttl_of_one_nanosecond_expires_one_nanosecond_later() {
    let (calls, upstream) = upstream(Duration::ZERO, |n, _| reply(&[], format!("call {n}")));
    let service = CacheLayer::new(Duration::from_nanos(1)).layer(upstream);
    service.clone().oneshot(get("/ns")).await.expect("miss");
    let hit = service.clone().oneshot(get("/ns")).await.expect("hit");
    assert_eq!(status(&hit), CacheStatus::Hit, "no time passed");
    tokio::time::advance(Duration::from_millis(1)).await;
    let miss = service.oneshot(get("/ns")).await.expect("miss");
    assert_eq!(status(&miss), CacheStatus::Miss);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

// ---------------------------------------------------------------------------
// Hostile upstream headers.
// ---------------------------------------------------------------------------

fn header_text() -> impl Strategy<Value = String> {
    prop_oneof![
        "\\PC{0,40}",
        Just("max-age=-1".to_owned()),
        Just("max-age=99999999999999999999999999".to_owned()),
        Just("s-maxage=18446744073709551616, private".to_owned()),
        Just("no-cache=\"set-cookie\", max-age=5".to_owned()),
        Just("private=\"x\", public, no-store".to_owned()),
        Just("*".to_owned()),
        Just("-5".to_owned()),
        Just("18446744073709551616".to_owned()),
        Just("0".to_owned()),
        Just("Thu, 01 Jan 1970 00:00:00 GMT".to_owned()),
        Just("Fri, 31 Dec 9999 23:59:59 GMT".to_owned()),
        Just("accept-language, *".to_owned()),
        Just("x\u{0}y".to_owned()),
        Just(",,,=,=".to_owned()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// Whatever the upstream says in `Cache-Control`, `Age`, `Expires`,
    /// `Vary`, `Date`, repeated or not, the cache never panics, and a
    /// request never gets the body fetched for another language when the
    /// response varies.
    #[test]
    fn hostile_upstream_headers_never_panic(
        headers in proptest::collection::vec(
            (prop_oneof![
                Just("cache-control"), Just("age"), Just("expires"), Just("vary"),
                Just("date"), Just("etag"), Just("last-modified"), Just("set-cookie"),
            ], header_text()),
            0..8,
        ),
        http_mode in any::<bool>(),
        langs in proptest::collection::vec(0usize..3, 1..6),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().expect("runtime");
        rt.block_on(async move {
            let mut fixed = HeaderMap::new();
            for (name, value) in &headers {
                if let Ok(value) = HeaderValue::try_from(value.as_str()) {
                    fixed.append(HeaderName::from_static(name), value);
                }
            }
            let upstream = service_fn(move |req: Request<()>| {
                let mut response = Response::new(Full::new(Bytes::from(format!("in {}", language(&req)))));
                *response.headers_mut() = fixed.clone();
                // Whatever else it says, the body depends on the language.
                response.headers_mut().append("vary", HeaderValue::from_static("accept-language"));
                async move {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    Ok::<_, Infallible>(response)
                }
            });
            let layer = if http_mode {
                CacheLayer::http(Some(Duration::from_secs(10)))
            } else {
                CacheLayer::new(Duration::from_secs(10))
            };
            let service = layer.layer(upstream);
            let mut tasks = Vec::new();
            for lang in langs {
                let lang = ["en", "fr", "de"][lang];
                let call = service.clone().oneshot(get_with("/h", "accept-language", lang));
                tasks.push(tokio::spawn(async move {
                    let response: Result<_, BoxError> = call.await;
                    let body = body_of(response.expect("response")).await;
                    assert_eq!(body, format!("in {lang}"));
                }));
                tokio::time::advance(Duration::from_millis(3)).await;
            }
            for task in tasks {
                task.await.expect("no panic, own language");
            }
        });
    }
}

#[tokio::test(start_paused = true)]
async fn cache_control_on_the_request_is_honoured() {
    let (calls, upstream) = upstream(Duration::ZERO, |n, _| reply(&[], format!("call {n}")));
    let service = CacheLayer::new(Duration::from_secs(60)).layer(upstream);
    let mut no_store = get("/rq");
    no_store
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    service.clone().oneshot(no_store).await.expect("no-store");
    let miss = service.clone().oneshot(get("/rq")).await.expect("miss");
    assert_eq!(status(&miss), CacheStatus::Miss, "no-store was not stored");
    let mut no_cache = get("/rq");
    no_cache
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("No-Cache"));
    let again = service.oneshot(no_cache).await.expect("no-cache");
    assert_ne!(status(&again), CacheStatus::Hit);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

// ---------------------------------------------------------------------------
// A model of the flight and store logic: random operations against an
// upstream the test answers by hand, compared to what a correct cache may
// answer.
// ---------------------------------------------------------------------------

/// What the resource at `/k{i}` says about caching.
const KINDS: [&[(&str, &str)]; 4] = [
    &[],
    &[("vary", "accept-language")],
    &[("vary", "*")],
    &[("cache-control", "private")],
];
const LANGS: [&str; 2] = ["en", "fr"];
/// Who asks: nobody, or one of two API keys.
const USERS: [Option<&str>; 3] = [None, Some("alice"), Some("bob")];

#[derive(Debug, Clone)]
enum Op {
    /// A GET for key `k` in language `lang`, as `user`; with
    /// `Cache-Control: no-cache` if `fresh`.
    Get {
        k: usize,
        lang: usize,
        user: usize,
        fresh: bool,
    },
    /// The upstream answers every request it holds for key `k`.
    Release { k: usize },
    /// The `i`-th request still running is dropped.
    Cancel { i: usize },
    /// A PUT to key `k`, answered at once.
    Write { k: usize },
    /// Time passes.
    Advance { ms: u64 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0usize..4, 0usize..2, 0usize..3, proptest::bool::weighted(0.2)).prop_map(|(k, lang, user, fresh)| Op::Get { k, lang, user, fresh }),
        3 => (0usize..4).prop_map(|k| Op::Release { k }),
        1 => (0usize..8).prop_map(|i| Op::Cancel { i }),
        1 => (0usize..4).prop_map(|k| Op::Write { k }),
        1 => prop_oneof![Just(1u64), Just(5_000), Just(61_000)].prop_map(|ms| Op::Advance { ms }),
    ]
}

/// A request the upstream holds: for which key, in which language, the
/// version it read on arrival, and where to answer.
type Held = (usize, String, usize, tokio::sync::oneshot::Sender<Reply>);

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Whatever the interleaving of requests, answers, cancellations,
    /// writes and time: every answer is for the request's own API key, in
    /// its own language when the resource varies, never older than the last
    /// write completed before the request was made, never a `private`
    /// answer shared between requests without a credential; no request is
    /// stranded, and once the upstream answers everything, every request
    /// ends.
    #[test]
    fn the_cache_matches_its_model(ops in proptest::collection::vec(op(), 1..40)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().expect("runtime");
        rt.block_on(async move {
            let held: Arc<std::sync::Mutex<Vec<Held>>> = Arc::default();
            let versions: Arc<[AtomicUsize; 4]> = Arc::new(Default::default());
            let calls = Arc::new(AtomicUsize::new(0));
            let (h, v, c) = (held.clone(), versions.clone(), calls.clone());
            let upstream = service_fn(move |req: Request<()>| {
                let k: usize = req.uri().path()[2..].parse().expect("key");
                let (h, v) = (h.clone(), v.clone());
                let n = c.fetch_add(1, Ordering::SeqCst) + 1;
                async move {
                    if req.method() == Method::PUT {
                        v[k].fetch_add(1, Ordering::SeqCst);
                        return Ok::<_, Infallible>(reply(&[], "written".to_owned()));
                    }
                    let version = v[k].load(Ordering::SeqCst);
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    let user = req.headers().get("x-api-key").map_or("-", |v| v.to_str().unwrap_or("?"));
                    let who = format!("{} {user}", language(&req));
                    h.lock().expect("lock").push((k, who, version, tx));
                    let mut response = rx.await.expect("answered");
                    // Each upstream answer is unique: private ones must not repeat.
                    response.headers_mut().insert("x-call", HeaderValue::from(n));
                    Ok(response)
                }
            });
            let layer = CacheLayer::new(Duration::from_secs(60));
            let service = layer.layer(upstream);
            // Running requests: (handle, key, language, version when made).
            let mut running = Vec::new();
            let mut finished = Vec::new();
            let settle = || async {
                for _ in 0..8 {
                    tokio::task::yield_now().await;
                }
            };
            for op in ops {
                match op {
                    Op::Get { k, lang, user, fresh } => {
                        let mut request = get_with(&format!("/k{k}"), "accept-language", LANGS[lang]);
                        if let Some(key) = USERS[user] {
                            request.headers_mut().insert("x-api-key", HeaderValue::from_static(key));
                        }
                        if fresh {
                            request.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
                        }
                        let since = versions[k].load(Ordering::SeqCst);
                        let call = service.clone().oneshot(request);
                        running.push((tokio::spawn(call), k, lang, user, fresh, since));
                    }
                    Op::Release { k } => {
                        let mut held = held.lock().expect("lock");
                        let (mine, rest): (Vec<_>, Vec<_>) = held.drain(..).partition(|h| h.0 == k);
                        *held = rest;
                        for (_, lang, version, tx) in mine {
                            let _ = tx.send(reply(KINDS[k], format!("k{k} v{version} {lang}")));
                        }
                    }
                    Op::Cancel { i } => {
                        if i < running.len() {
                            let (handle, ..) = running.remove(i);
                            handle.abort();
                        }
                    }
                    Op::Write { k } => {
                        let put = Request::put(format!("http://api.test/k{k}")).body(()).expect("put");
                        service.clone().oneshot(put).await.expect("write");
                    }
                    Op::Advance { ms } => tokio::time::advance(Duration::from_millis(ms)).await,
                }
                settle().await;
                let (done, still): (Vec<_>, Vec<_>) = running.into_iter().partition(|r: &(tokio::task::JoinHandle<_>, _, _, _, _, _)| r.0.is_finished());
                running = still;
                finished.extend(done);
            }
            // The upstream answers everything, until nothing is held.
            for _ in 0..10 {
                let all: Vec<Held> = held.lock().expect("lock").drain(..).collect();
                for (k, lang, version, tx) in all {
                    let _ = tx.send(reply(KINDS[k], format!("k{k} v{version} {lang}")));
                }
                settle().await;
            }
            finished.extend(running);
            let mut private_calls = std::collections::HashSet::new();
            for (handle, k, lang, user, fresh, since) in finished {
                let response = match handle.await {
                    Ok(response) => response.expect("no error from this upstream"),
                    Err(e) if e.is_cancelled() => continue,
                    Err(e) => panic!("{e}"),
                };
                let from_cache = status(&response).is_from_cache();
                let call = response.headers().get("x-call").cloned();
                let body = String::from_utf8(body_of(response).await.to_vec()).expect("utf-8");
                let mut words = body.split(' ');
                assert_eq!(words.next(), Some(format!("k{k}").as_str()));
                let version: usize = words.next().expect("version")[1..].parse().expect("number");
                assert!(version >= since, "k{k}: v{version} is older than the write before the request (v{since})");
                let said = words.next();
                if k == 1 || k == 2 {
                    // The resources that vary on the language.
                    assert_eq!(said, Some(LANGS[lang]), "k{k}: {body}");
                }
                assert_eq!(words.next(), Some(USERS[user].unwrap_or("-")), "another user's answer: {body}");
                assert!(!(fresh && from_cache), "no-cache took another's answer: {body}");
                if k == 3 && user == 0 {
                    assert!(!from_cache, "a private answer was shared");
                    assert!(private_calls.insert(call), "one private answer served twice");
                }
            }
            // Nobody is stranded: a new request for every key is answered.
            for k in 0..4 {
                let call = tokio::spawn(service.clone().oneshot(get_with(&format!("/k{k}"), "accept-language", "en")));
                settle().await;
                let all: Vec<Held> = held.lock().expect("lock").drain(..).collect();
                for (k, lang, version, tx) in all {
                    let _ = tx.send(reply(KINDS[k], format!("k{k} v{version} {lang}")));
                }
                settle().await;
                assert!(call.is_finished(), "k{k}: stranded");
                call.await.expect("task").expect("response");
            }
        });
    }
}

#[tokio::test(start_paused = true)]
async fn must_revalidate_is_never_served_stale_even_with_stale_if_error() {
    for (cache_control, served_stale) in [
        ("max-age=10", true),
        ("max-age=10, must-revalidate", false),
        // A shared entry: proxy-revalidate and s-maxage bind it too.
        ("max-age=10, proxy-revalidate", false),
        ("s-maxage=10", false),
    ] {
        for freshness in [
            Freshness::Fixed(Duration::from_secs(10)),
            Freshness::Http { default_ttl: None },
        ] {
            let (_, upstream) = upstream(Duration::ZERO, move |n, _| {
                let mut response = reply(&[("cache-control", cache_control)], format!("call {n}"));
                if n > 1 {
                    *response.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
                }
                response
            });
            let layer = CacheLayer::builder(freshness)
                .stale_if_error(Duration::from_secs(600))
                .build();
            let service = layer.layer(upstream);
            service.clone().oneshot(get("/mr")).await.expect("first");
            tokio::time::advance(Duration::from_secs(11)).await;
            let response = service.oneshot(get("/mr")).await.expect("second");
            assert_eq!(
                status(&response) == CacheStatus::Stale,
                served_stale,
                "{cache_control} {freshness:?}"
            );
        }
    }
}

#[tokio::test(start_paused = true)]
async fn leaders_cancelled_one_after_another_strand_nobody() {
    let (calls, upstream) = upstream(Duration::from_millis(100), |n, _| {
        reply(&[], format!("call {n}"))
    });
    let service = CacheLayer::new(Duration::from_secs(60)).layer(upstream);
    let mut tasks: Vec<_> = (0..6)
        .map(|_| tokio::spawn(service.clone().oneshot(get("/chain"))))
        .collect();
    // Cancel the first three, 10 ms apart: whichever of them leads at the
    // time, the flight passes on.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(10)).await;
        tasks.remove(0).abort();
    }
    let mut bodies = Vec::new();
    for task in tasks {
        let response = task.await.expect("task").expect("response");
        bodies.push(body_of(response).await);
    }
    bodies.dedup();
    assert_eq!(
        bodies.len(),
        1,
        "the survivors share one answer: {bodies:?}"
    );
    assert!(calls.load(Ordering::SeqCst) <= 4);
    let next = service.oneshot(get("/chain")).await.expect("next");
    assert_eq!(status(&next), CacheStatus::Hit);
}

#[tokio::test(start_paused = true)]
async fn no_cache_is_never_served_stale_and_without_validators_never_kept() {
    let (_, upstream) = upstream(Duration::ZERO, |n, _| {
        let mut response = reply(&[("cache-control", "no-cache")], format!("call {n}"));
        if n > 1 {
            *response.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
        }
        response
    });
    let layer = CacheLayer::builder(Freshness::Fixed(Duration::from_secs(60)))
        .stale_if_error(Duration::from_secs(600))
        .build();
    let service = layer.clone().layer(upstream);
    service.clone().oneshot(get("/nc")).await.expect("first");
    assert_eq!(layer.stats().entries, 0, "nothing to revalidate with");
    let failed = service.oneshot(get("/nc")).await.expect("second");
    assert_eq!(status(&failed), CacheStatus::Miss);
    assert_eq!(failed.status(), http::StatusCode::SERVICE_UNAVAILABLE);
}
