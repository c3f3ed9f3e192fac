//! Adversarial tests of single-flight and the cache's safety rules, over
//! in-process upstreams with tokio's clock paused.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tollgate_cache::{CacheLayer, CacheStatus, Freshness};
use tower::{service_fn, BoxError, Layer, Service, ServiceExt};

/// A resource whose body is `v<version>`: a `POST` bumps the version; a
/// `GET` answers after `delay` with `headers`, or fails when `failing`.
#[derive(Clone, Default)]
struct Api {
    version: Arc<AtomicUsize>,
    calls: Arc<AtomicUsize>,
    failing: Arc<AtomicBool>,
}

impl Api {
    fn service(
        &self,
        delay: Duration,
        headers: &'static [(&'static str, &'static str)],
    ) -> impl Service<
        Request<()>,
        Response = Response<Full<Bytes>>,
        Error = BoxError,
        Future = impl std::future::Future<Output = Result<Response<Full<Bytes>>, BoxError>> + Send,
    > + Clone
           + Send
           + 'static {
        let api = self.clone();
        service_fn(move |req: Request<()>| {
            let api = api.clone();
            async move {
                if req.method() == http::Method::POST {
                    api.version.fetch_add(1, Ordering::SeqCst);
                    return Ok(Response::new(Full::new(Bytes::from("ok"))));
                }
                api.calls.fetch_add(1, Ordering::SeqCst);
                // The version is read when the request arrives.
                let version = api.version.load(Ordering::SeqCst);
                tokio::time::sleep(delay).await;
                if api.failing.load(Ordering::SeqCst) {
                    return Err::<Response<Full<Bytes>>, BoxError>("upstream down".into());
                }
                let mut response = Response::new(Full::new(Bytes::from(format!("v{version}"))));
                for (name, value) in headers {
                    response.headers_mut().append(
                        http::HeaderName::from_static(name),
                        http::HeaderValue::from_static(value),
                    );
                }
                Ok(response)
            }
        })
    }
}

fn get(path: &str) -> Request<()> {
    Request::get(format!("http://api.test{path}"))
        .body(())
        .expect("request")
}

fn post(path: &str) -> Request<()> {
    Request::post(format!("http://api.test{path}"))
        .body(())
        .expect("request")
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

async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

/// A GET made after a completed write leads a flight of its own, even while
/// a flight started before the write is still under way.
#[tokio::test(start_paused = true)]
async fn a_get_after_a_write_does_not_join_the_flight_before_it() {
    let api = Api::default();
    let service = CacheLayer::new(Duration::from_secs(60))
        .layer(api.service(Duration::from_millis(100), &[]));
    let early = tokio::spawn(service.clone().oneshot(get("/a")));
    settle().await;
    let written = service.clone().oneshot(post("/a")).await.expect("write");
    assert_eq!(written.status(), StatusCode::OK);
    let late = tokio::spawn(service.clone().oneshot(get("/a")));
    settle().await;
    assert_eq!(body_of(early.await.expect("ok").expect("ok")).await, "v0");
    let late = late.await.expect("ok").expect("ok");
    assert_eq!(body_of(late).await, "v1", "post-write data");
    // And nothing pre-write was stored for later requests.
    let again = service.oneshot(get("/a")).await.expect("ok");
    assert_eq!(body_of(again).await, "v1");
}

/// A request routed before a write (its future not yet polled) may lead a
/// flight after the write, holding the pre-write stale entry: a GET made
/// after the completed write joins that flight, and when the upstream
/// fails it is handed the pre-write entry as `Stale`.
#[tokio::test(start_paused = true)]
async fn a_get_after_a_write_never_gets_pre_write_data_even_stale() {
    let api = Api::default();
    let cache = CacheLayer::builder(Freshness::Fixed(Duration::from_secs(1)))
        .stale_if_error(Duration::from_secs(600))
        .build();
    let mut service = cache.layer(api.service(Duration::from_millis(100), &[]));
    let first = service.clone().oneshot(get("/a")).await.expect("ok");
    assert_eq!(body_of(first).await, "v0");
    tokio::time::advance(Duration::from_secs(2)).await; // stale now
                                                        // Issued (routed) before the write; not yet polled.
    ServiceExt::<Request<()>>::ready(&mut service)
        .await
        .expect("ok");
    let before = service.call(get("/a"));
    let written = service.clone().oneshot(post("/a")).await.expect("write");
    assert_eq!(written.status(), StatusCode::OK);
    api.failing.store(true, Ordering::SeqCst);
    let before = tokio::spawn(before);
    settle().await;
    // Issued after the write completed.
    let after = tokio::spawn(service.clone().oneshot(get("/a")));
    settle().await;
    let _ = before.await.expect("ok");
    match after.await.expect("ok") {
        Err(_) => {} // the upstream's failure: fine
        Ok(response) => {
            let s = status(&response);
            let body = body_of(response).await;
            assert_ne!(
                body, "v0",
                "pre-write data served ({s:?}) to a GET made after the write"
            );
        }
    }
}

/// `Vary: *` never matches: every waiter asks for itself.
#[tokio::test(start_paused = true)]
async fn vary_star_is_shared_with_no_waiter() {
    let api = Api::default();
    let service = CacheLayer::new(Duration::from_secs(60))
        .layer(api.service(Duration::from_millis(100), &[("vary", "*")]));
    let tasks: Vec<_> = (0..4)
        .map(|_| tokio::spawn(service.clone().oneshot(get("/v"))))
        .collect();
    for t in tasks {
        let r = t.await.expect("ok").expect("ok");
        assert_ne!(status(&r), CacheStatus::Coalesced);
        assert_ne!(status(&r), CacheStatus::Hit);
    }
    assert_eq!(api.calls.load(Ordering::SeqCst), 4);
}

/// `Vary: Accept` with different values: a waiter with another `Accept`
/// never takes the leader's answer.
#[tokio::test(start_paused = true)]
async fn a_waiter_with_other_vary_values_asks_for_itself() {
    let api = Api::default();
    let service = CacheLayer::new(Duration::from_secs(60))
        .layer(api.service(Duration::from_millis(100), &[("vary", "accept")]));
    let mut json = get("/v");
    json.headers_mut()
        .insert("accept", "application/json".parse().expect("ok"));
    let mut xml = get("/v");
    xml.headers_mut()
        .insert("accept", "application/xml".parse().expect("ok"));
    let a = tokio::spawn(service.clone().oneshot(json));
    settle().await;
    let b = tokio::spawn(service.clone().oneshot(xml));
    let _ = a.await.expect("ok").expect("ok");
    let b = b.await.expect("ok").expect("ok");
    assert_eq!(status(&b), CacheStatus::Miss);
    assert_eq!(api.calls.load(Ordering::SeqCst), 2);
}

/// A `private` response to a request without a credential is neither
/// stored nor handed to a waiter.
#[tokio::test(start_paused = true)]
async fn private_is_never_shared_without_a_credential() {
    let api = Api::default();
    let service = CacheLayer::new(Duration::from_secs(60)).layer(api.service(
        Duration::from_millis(100),
        &[("cache-control", "Private, max-age=60")],
    ));
    let tasks: Vec<_> = (0..3)
        .map(|_| tokio::spawn(service.clone().oneshot(get("/p"))))
        .collect();
    for t in tasks {
        let r = t.await.expect("ok").expect("ok");
        assert_eq!(status(&r), CacheStatus::Miss);
    }
    let r = service.clone().oneshot(get("/p")).await.expect("ok");
    assert_eq!(status(&r), CacheStatus::Miss);
    assert_eq!(api.calls.load(Ordering::SeqCst), 4);
}

/// `no-cache` with a validator: a waiter never takes it unrevalidated, and
/// a later request revalidates.
#[tokio::test(start_paused = true)]
async fn no_cache_is_never_handed_to_a_waiter_unrevalidated() {
    let api = Api::default();
    let service = CacheLayer::new(Duration::from_secs(60)).layer(api.service(
        Duration::from_millis(100),
        &[("cache-control", "no-cache"), ("etag", "\"e\"")],
    ));
    let tasks: Vec<_> = (0..3)
        .map(|_| tokio::spawn(service.clone().oneshot(get("/n"))))
        .collect();
    for t in tasks {
        let r = t.await.expect("ok").expect("ok");
        assert_ne!(status(&r), CacheStatus::Coalesced);
        assert_ne!(status(&r), CacheStatus::Hit);
    }
    let r = service.clone().oneshot(get("/n")).await.expect("ok");
    assert_ne!(status(&r), CacheStatus::Hit);
    assert_eq!(api.calls.load(Ordering::SeqCst), 4);
}

/// Credentials in odd places: each partitions.
#[tokio::test(start_paused = true)]
async fn credentials_partition_entries_and_flights() {
    let api = Api::default();
    let service = CacheLayer::new(Duration::from_secs(60))
        .layer(api.service(Duration::from_millis(100), &[]));
    let mut requests = vec![get("/c")];
    for (name, value) in [
        ("x-api-key", "k1"),
        ("x-api-key", "k2"),
        ("X-Amz-Security-Token", "t"),
        ("cookie", "s=1"),
        ("x-csrf-token", "c"),
    ] {
        let mut r = get("/c");
        r.headers_mut().insert(
            http::HeaderName::try_from(name).expect("ok"),
            value.parse().expect("ok"),
        );
        requests.push(r);
    }
    let mut p = get("/c");
    p.extensions_mut()
        .insert(tollgate_core::Partition::of(&"user-1"));
    requests.push(p);
    let n = requests.len();
    let tasks: Vec<_> = requests
        .into_iter()
        .map(|r| tokio::spawn(service.clone().oneshot(r)))
        .collect();
    for t in tasks {
        let r = t.await.expect("ok").expect("ok");
        assert_eq!(status(&r), CacheStatus::Miss);
    }
    assert_eq!(api.calls.load(Ordering::SeqCst), n);
    // And anonymous gets only the anonymous entry.
    let r = service.clone().oneshot(get("/c")).await.expect("ok");
    assert_eq!(status(&r), CacheStatus::Hit);
}

/// An error is shared with the waiters of its flight but never stored.
#[tokio::test(start_paused = true)]
async fn errors_are_not_cached() {
    let api = Api::default();
    api.failing.store(true, Ordering::SeqCst);
    let service = CacheLayer::new(Duration::from_secs(60))
        .layer(api.service(Duration::from_millis(100), &[]));
    assert!(service.clone().oneshot(get("/e")).await.is_err());
    api.failing.store(false, Ordering::SeqCst);
    let r = service.clone().oneshot(get("/e")).await.expect("ok");
    assert_eq!(status(&r), CacheStatus::Miss);
    assert_eq!(body_of(r).await, "v0");
}

/// Leaders cancelled one after another: the last waiter is still answered.
#[tokio::test(start_paused = true)]
async fn a_chain_of_cancelled_leaders_strands_nobody() {
    let api = Api::default();
    let service = CacheLayer::new(Duration::from_secs(60))
        .layer(api.service(Duration::from_millis(100), &[]));
    let mut tasks: Vec<_> = (0..5)
        .map(|_| tokio::spawn(service.clone().oneshot(get("/k"))))
        .collect();
    settle().await;
    for t in tasks.drain(..4) {
        t.abort();
        settle().await;
    }
    let last = tokio::time::timeout(Duration::from_secs(5), tasks.pop().expect("ok"))
        .await
        .expect("answered")
        .expect("ok")
        .expect("ok");
    assert_eq!(body_of(last).await, "v0");
}

/// An upstream whose `Cache-Control` carries a non-ASCII byte (obs-text,
/// legal in a field value) beside its directives.
#[allow(clippy::type_complexity, reason = "a test upstream's full type")]
fn odd_cache_control(
    value: &'static [u8],
) -> (
    Arc<AtomicUsize>,
    impl Service<
            Request<()>,
            Response = Response<Full<Bytes>>,
            Error = Infallible,
            Future = impl std::future::Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send,
        > + Clone
        + Send
        + 'static,
) {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let service = service_fn(move |_req: Request<()>| {
        let n = c.fetch_add(1, Ordering::SeqCst);
        async move {
            let mut response = Response::new(Full::new(Bytes::from(format!("secret {n}"))));
            response.headers_mut().insert(
                http::header::CACHE_CONTROL,
                http::HeaderValue::from_bytes(value).expect("obs-text is a valid value"),
            );
            Ok::<_, Infallible>(response)
        }
    });
    (calls, service)
}

/// `private` beside a non-ASCII byte in the same `Cache-Control` value is
/// still `private`: never stored for a request without a credential.
#[tokio::test(start_paused = true)]
async fn private_beside_a_non_ascii_byte_is_still_private() {
    let (calls, upstream) = odd_cache_control(b"private, ext=\"caf\xc3\xa9\"");
    let service = CacheLayer::new(Duration::from_secs(60)).layer(upstream);
    let first = service.clone().oneshot(get("/me")).await.expect("ok");
    assert_eq!(body_of(first).await, "secret 0");
    let second = service.clone().oneshot(get("/me")).await.expect("ok");
    let s = status(&second);
    assert_eq!(
        body_of(second).await,
        "secret 1",
        "a private response was served from the cache ({s:?})"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

/// The same for `no-store`.
#[tokio::test(start_paused = true)]
async fn no_store_beside_a_non_ascii_byte_is_still_no_store() {
    let (calls, upstream) = odd_cache_control(b"no-store, ext=\"\xff\"");
    let service = CacheLayer::new(Duration::from_secs(60)).layer(upstream);
    let _ = service.clone().oneshot(get("/n")).await.expect("ok");
    let second = service.clone().oneshot(get("/n")).await.expect("ok");
    assert_eq!(status(&second), CacheStatus::Miss);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

/// Whole-ASCII `private` is honoured (the control for the two above).
#[tokio::test(start_paused = true)]
async fn private_in_ascii_is_private() {
    let (calls, upstream) = odd_cache_control(b"private, ext=\"cafe\"");
    let service = CacheLayer::new(Duration::from_secs(60)).layer(upstream);
    let _ = service.clone().oneshot(get("/me")).await.expect("ok");
    let second = service.clone().oneshot(get("/me")).await.expect("ok");
    assert_eq!(body_of(second).await, "secret 1");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

/// `no-cache` with a validator is never served stale, whatever
/// `stale_if_error` says, and is revalidated on every reuse.
#[tokio::test(start_paused = true)]
async fn no_cache_is_never_served_stale_on_error() {
    let api = Api::default();
    let cache = CacheLayer::builder(Freshness::Fixed(Duration::from_secs(60)))
        .stale_if_error(Duration::from_secs(600))
        .build();
    let service = cache.layer(api.service(
        Duration::from_millis(10),
        &[("cache-control", "no-cache"), ("etag", "\"e\"")],
    ));
    let _ = service.clone().oneshot(get("/n")).await.expect("ok");
    api.failing.store(true, Ordering::SeqCst);
    assert!(service.clone().oneshot(get("/n")).await.is_err());
    assert_eq!(api.calls.load(Ordering::SeqCst), 2);
}

/// A request's `no-store` beside a non-ASCII byte still keeps its answer out
/// of the cache.
#[tokio::test(start_paused = true)]
async fn a_requests_no_store_beside_a_non_ascii_byte_is_still_no_store() {
    let api = Api::default();
    let service =
        CacheLayer::new(Duration::from_secs(60)).layer(api.service(Duration::from_millis(10), &[]));
    let mut req = get("/r");
    req.headers_mut().insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_bytes(b"no-store, ext=\"\xff\"").expect("ok"),
    );
    let _ = service.clone().oneshot(req).await.expect("ok");
    let second = service.clone().oneshot(get("/r")).await.expect("ok");
    assert_eq!(status(&second), CacheStatus::Miss);
}

/// A write to a URI spelled another way (host case, query order) still
/// invalidates the entry: a GET after it gets post-write data.
#[tokio::test(start_paused = true)]
async fn a_write_spelled_otherwise_still_invalidates() {
    let api = Api::default();
    let service =
        CacheLayer::new(Duration::from_secs(60)).layer(api.service(Duration::from_millis(10), &[]));
    let get_q = || {
        Request::get("http://api.test/a?x=1&y=2")
            .body(())
            .expect("request")
    };
    assert_eq!(
        body_of(service.clone().oneshot(get_q()).await.expect("ok")).await,
        "v0"
    );
    let write = Request::post("http://API.Test/a?y=2&x=1")
        .body(())
        .expect("ok");
    service.clone().oneshot(write).await.expect("ok");
    assert_eq!(
        body_of(service.clone().oneshot(get_q()).await.expect("ok")).await,
        "v1"
    );
}

/// The default port is the same origin: a write to `http://api.test:80/a`
/// is a write to `http://api.test/a`.
#[tokio::test(start_paused = true)]
async fn a_write_with_the_default_port_invalidates_the_same_resource() {
    let api = Api::default();
    let service =
        CacheLayer::new(Duration::from_secs(60)).layer(api.service(Duration::from_millis(10), &[]));
    assert_eq!(
        body_of(service.clone().oneshot(get("/a")).await.expect("ok")).await,
        "v0"
    );
    let write = Request::post("http://api.test:80/a").body(()).expect("ok");
    service.clone().oneshot(write).await.expect("ok");
    assert_eq!(
        body_of(service.clone().oneshot(get("/a")).await.expect("ok")).await,
        "v1",
        "pre-write data after a completed write"
    );
}

/// Credentials in the URI's userinfo differ by case (passwords are case
/// sensitive): two users must not share an entry.
#[tokio::test(start_paused = true)]
async fn userinfo_credentials_differing_in_case_never_share() {
    let upstream = service_fn(|req: Request<()>| async move {
        let who = req.uri().authority().map_or("-", |a| a.as_str()).to_owned();
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(who))))
    });
    let service = CacheLayer::new(Duration::from_secs(60)).layer(upstream);
    let first = Request::get("http://alice:Secret@api.test/me")
        .body(())
        .expect("request");
    let first = service.clone().oneshot(first).await.expect("ok");
    assert_eq!(body_of(first).await, "alice:Secret@api.test");
    let second = Request::get("http://alice:secret@api.test/me")
        .body(())
        .expect("request");
    let second = service.clone().oneshot(second).await.expect("ok");
    let s = status(&second);
    assert_eq!(
        body_of(second).await,
        "alice:secret@api.test",
        "another credential's response ({s:?})"
    );
}

/// `no-cache` on the request beside a non-ASCII byte still revalidates.
#[tokio::test(start_paused = true)]
async fn a_requests_no_cache_beside_a_non_ascii_byte_still_revalidates() {
    let api = Api::default();
    let service =
        CacheLayer::new(Duration::from_secs(60)).layer(api.service(Duration::from_millis(10), &[]));
    let _ = service.clone().oneshot(get("/r")).await.expect("ok");
    let mut req = get("/r");
    req.headers_mut().insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_bytes(b"no-cache, ext=\"\xff\"").expect("valid"),
    );
    let second = service.clone().oneshot(req).await.expect("ok");
    assert_ne!(status(&second), CacheStatus::Hit);
}
