//! CacheLayer over in-process services, with tokio's clock paused: exact
//! expiry, a cancelled leader, streaming bodies over the limit, the byte
//! capacity, and a property: no response ever reaches another credential.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::AUTHORIZATION;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use proptest::prelude::*;
use tollgate_cache::{CacheLayer, CacheStatus, CacheTtl, Freshness};
use tower::{service_fn, Layer, ServiceExt};

/// An upstream that answers with the path and the Authorization it saw,
/// after `delay`, and counts its calls.
fn upstream(
    delay: Duration,
) -> (
    Arc<AtomicUsize>,
    impl tower::Service<
            Request<()>,
            Response = Response<Full<Bytes>>,
            Error = Infallible,
            Future = impl Send,
        > + Clone
        + Send
        + 'static,
) {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let service = service_fn(move |req: Request<()>| {
        c.fetch_add(1, Ordering::SeqCst);
        async move {
            tokio::time::sleep(delay).await;
            let who = req
                .headers()
                .get(AUTHORIZATION)
                .map_or("-", |v| v.to_str().unwrap_or("?"))
                .to_owned();
            let body = format!("{} for {who}", req.uri().path());
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body))))
        }
    });
    (calls, service)
}

fn get(path: &str) -> Request<()> {
    Request::get(format!("http://api.test{path}"))
        .body(())
        .expect("request")
}

/// The whole body of a response.
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

#[tokio::test(start_paused = true)]
async fn entries_expire_exactly_at_their_ttl() {
    let (calls, upstream) = upstream(Duration::ZERO);
    let service = CacheLayer::new(Duration::from_secs(60)).layer(upstream);
    assert_eq!(
        status(&service.clone().oneshot(get("/a")).await.expect("miss")),
        CacheStatus::Miss
    );
    tokio::time::advance(Duration::from_millis(59_999)).await;
    assert_eq!(
        status(&service.clone().oneshot(get("/a")).await.expect("hit")),
        CacheStatus::Hit
    );
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(
        status(&service.clone().oneshot(get("/a")).await.expect("miss")),
        CacheStatus::Miss
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn last_modified_alone_revalidates_with_if_modified_since() {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let s = seen.clone();
    let upstream = service_fn(move |req: Request<()>| {
        let since = req
            .headers()
            .get("if-modified-since")
            .map(|v| v.to_str().unwrap_or("?").to_owned());
        s.lock().expect("lock").push(since.clone());
        async move {
            let response = match since {
                Some(_) => Response::builder()
                    .status(304)
                    .body(Full::new(Bytes::new())),
                None => Response::builder()
                    .header("last-modified", "Tue, 14 Nov 2023 22:13:20 GMT")
                    .body(Full::new(Bytes::from_static(b"{\"v\":1}"))),
            };
            Ok::<_, Infallible>(response.expect("response"))
        }
    });
    let service = CacheLayer::new(Duration::from_secs(10)).layer(upstream);
    service.clone().oneshot(get("/lm")).await.expect("miss");
    tokio::time::advance(Duration::from_secs(11)).await;
    let renewed = service
        .clone()
        .oneshot(get("/lm"))
        .await
        .expect("revalidated");
    assert_eq!(status(&renewed), CacheStatus::Revalidated);
    let body = body_of(renewed).await;
    assert_eq!(body, "{\"v\":1}", "the stored body, the 304 carried none");
    assert_eq!(
        *seen.lock().expect("lock"),
        vec![None, Some("Tue, 14 Nov 2023 22:13:20 GMT".to_owned())]
    );
    // Renewed for another TTL.
    tokio::time::advance(Duration::from_secs(9)).await;
    assert_eq!(
        status(&service.oneshot(get("/lm")).await.expect("hit")),
        CacheStatus::Hit
    );
}

#[tokio::test(start_paused = true)]
async fn hop_by_hop_headers_are_not_stored() {
    let upstream = service_fn(|_req: Request<()>| async {
        let response = Response::builder()
            .header("transfer-encoding", "chunked")
            .header("connection", "keep-alive")
            .header("keep-alive", "timeout=5")
            .header("x-kept", "yes")
            .body(Full::new(Bytes::from_static(b"{}")))
            .expect("response");
        Ok::<_, Infallible>(response)
    });
    let service = CacheLayer::new(Duration::from_secs(60)).layer(upstream);
    service.clone().oneshot(get("/h")).await.expect("miss");
    let hit = service.oneshot(get("/h")).await.expect("hit");
    assert_eq!(status(&hit), CacheStatus::Hit);
    let headers = hit.headers();
    assert!(headers.get("transfer-encoding").is_none() && headers.get("connection").is_none());
    assert!(headers.get("keep-alive").is_none());
    assert_eq!(headers["x-kept"], "yes");
}

#[tokio::test(start_paused = true)]
async fn after_a_missed_answer_the_layer_still_stores_the_response() {
    let (calls, upstream) = upstream(Duration::ZERO);
    let ours = CacheLayer::new(Duration::from_secs(60));
    let theirs = CacheLayer::new(Duration::from_secs(60));
    // A miss in `ours`, sent through `theirs`: `theirs` decides for itself.
    let mut request = get("/d");
    assert!(ours.answer(&mut request).is_none());
    let response = theirs
        .layer(upstream.clone())
        .oneshot(request)
        .await
        .expect("miss");
    assert_eq!(status(&response), CacheStatus::Miss);
    assert_eq!((ours.stats().entries, theirs.stats().entries), (0, 1));
    // A miss in `ours`, sent through `ours`: stored, and answered next time.
    let mut request = get("/d");
    assert!(ours.answer(&mut request).is_none());
    ours.layer(upstream).oneshot(request).await.expect("miss");
    let hit = ours.answer(&mut get("/d")).expect("a hit");
    assert_eq!(
        hit.extensions().get::<CacheStatus>(),
        Some(&CacheStatus::Hit)
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!((ours.stats().hits, ours.stats().misses), (1, 1));
}

#[tokio::test(start_paused = true)]
async fn a_request_can_set_its_own_ttl() {
    let (calls, upstream) = upstream(Duration::ZERO);
    let service = CacheLayer::new(Duration::from_secs(60)).layer(upstream);
    let mut short = get("/b");
    short
        .extensions_mut()
        .insert(CacheTtl(Duration::from_secs(5)));
    service.clone().oneshot(short).await.expect("miss");
    tokio::time::advance(Duration::from_secs(5)).await;
    assert_eq!(
        status(&service.clone().oneshot(get("/b")).await.expect("miss")),
        CacheStatus::Miss
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_leader_does_not_strand_its_waiters() {
    let (calls, upstream) = upstream(Duration::from_millis(100));
    let service = CacheLayer::new(Duration::from_secs(60)).layer(upstream);
    let leader = tokio::spawn(service.clone().oneshot(get("/c")));
    tokio::task::yield_now().await;
    let waiters: Vec<_> = (0..5)
        .map(|_| tokio::spawn(service.clone().oneshot(get("/c"))))
        .collect();
    tokio::task::yield_now().await;
    leader.abort();
    let mut statuses = Vec::new();
    for waiter in waiters {
        let response = waiter.await.expect("task").expect("response");
        statuses.push(status(&response));
        let body = body_of(response).await;
        assert_eq!(body, "/c for -");
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "the cancelled fetch and one more"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == CacheStatus::Miss).count(),
        1
    );
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == CacheStatus::Coalesced)
            .count(),
        4
    );
}

/// A body in chunks that declares no size, as a chunked response does.
struct Chunks(std::collections::VecDeque<Bytes>);

impl http_body::Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        std::task::Poll::Ready(self.0.pop_front().map(|b| Ok(http_body::Frame::data(b))))
    }
}

#[tokio::test]
async fn a_streaming_body_over_the_limit_is_passed_on_whole() {
    // No Content-Length: the cache reads up to its limit, then gives up
    // storing and sends what it read followed by the rest.
    let upstream = service_fn(|_req: Request<()>| async {
        let chunks = (0..10u8)
            .map(|i| Bytes::from(vec![b'a' + i; 300]))
            .collect();
        Ok::<_, Infallible>(Response::new(Chunks(chunks)))
    });
    let layer = CacheLayer::builder(Freshness::Fixed(Duration::from_secs(60)))
        .max_entry_bytes(1000)
        .build();
    let service = layer.layer(upstream);
    for _ in 0..2 {
        let response = service
            .clone()
            .oneshot(get("/big"))
            .await
            .expect("response");
        assert_eq!(status(&response), CacheStatus::Miss);
        let body = body_of(response).await;
        assert_eq!(body.len(), 3000);
        assert!(body[..300].iter().all(|b| *b == b'a') && body[2700..].iter().all(|b| *b == b'j'));
    }
    assert_eq!(layer.stats().entries, 0);
}

#[tokio::test]
async fn the_capacity_bounds_the_bytes_kept() {
    let (_, upstream) = upstream(Duration::ZERO);
    let layer = CacheLayer::builder(Freshness::Fixed(Duration::from_secs(600)))
        .max_bytes(200_000)
        .build();
    let service = layer.layer(upstream);
    for i in 0..2_000 {
        service
            .clone()
            .oneshot(get(&format!("/items/{i}")))
            .await
            .expect("response");
    }
    let stats = layer.stats();
    assert!(stats.bytes <= 200_000, "{stats:?}");
    assert!(stats.evictions > 0 && stats.entries < 2_000, "{stats:?}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Whatever the order of requests, each response is the one fetched
    /// with the request's own credential (or with none).
    #[test]
    fn no_response_reaches_another_credential(
        calls in proptest::collection::vec((0usize..4, 0usize..3, any::<bool>()), 1..40)
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().expect("runtime");
        rt.block_on(async {
            let (_, upstream) = upstream(Duration::from_millis(5));
            let service = CacheLayer::new(Duration::from_secs(60)).layer(upstream);
            let users = [None, Some("Bearer alice"), Some("Bearer bob"), Some("Basic Ym9iOg==")];
            let mut tasks = Vec::new();
            for (user, path, concurrent) in calls {
                let mut request = get(&format!("/p{path}"));
                if let Some(auth) = users[user] {
                    request.headers_mut().insert(AUTHORIZATION, auth.parse().expect("value"));
                }
                let expected = format!("/p{path} for {}", users[user].unwrap_or("-"));
                let call = service.clone().oneshot(request);
                let task = tokio::spawn(async move {
                    let body = body_of(call.await.expect("response")).await;
                    assert_eq!(body, expected);
                });
                if concurrent {
                    tasks.push(task);
                } else {
                    task.await.expect("no cross-credential response");
                }
            }
            for task in tasks {
                task.await.expect("no cross-credential response");
            }
        });
    }
}

#[test]
fn the_service_offers_its_layer_and_inner_accessors() {
    use tollgate_cache::Cache;
    let layer = Cache::<()>::layer(Duration::from_secs(1));
    let mut cache = layer.layer(7u8);
    *cache.get_mut() += 1;
    assert_eq!(*cache.get_ref(), 8);
    assert_eq!(cache.into_inner(), 8);
}
