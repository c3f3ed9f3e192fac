//! Adversarial tests of keyed limiters: keys isolated, the table bounded in
//! keys and memory, a full table never resetting an active key, and no key
//! text in Debug output or logs (keys may be API keys).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{HeaderName, HeaderValue, Request, Response};
use tollgate_limit::{KeyBy, MemoryStore, Quota, RateLimitLayer, RateLimitStore, RateLimited};
use tower::{service_fn, Layer, Service, ServiceExt};

const SEC: u64 = 1_000_000_000;

fn counting(
    hits: Arc<AtomicUsize>,
) -> impl Service<
    Request<()>,
    Response = Response<()>,
    Error = std::convert::Infallible,
    Future = impl Send,
> + Clone
       + Send {
    service_fn(move |_req: Request<()>| {
        hits.fetch_add(1, Ordering::SeqCst);
        async { Ok(Response::new(())) }
    })
}

fn with_key(value: &[u8]) -> Request<()> {
    Request::get("http://api.test/x")
        .header("x-api-key", HeaderValue::from_bytes(value).expect("value"))
        .body(())
        .expect("request")
}

fn api_key() -> KeyBy {
    KeyBy::header(HeaderName::from_static("x-api-key"))
}

/// Exhausting key A, with waiters queued on it, leaves key B untouched:
/// B is served at once and never queues behind A.
#[tokio::test(start_paused = true)]
async fn a_queued_key_never_delays_another() {
    let hits = Arc::new(AtomicUsize::new(0));
    let layer = RateLimitLayer::new(Quota::per(1, Duration::from_secs(10)).expect("valid"))
        .keyed_by(api_key())
        .max_queue(3);
    let svc = layer.layer(counting(Arc::clone(&hits)));
    svc.clone().oneshot(with_key(b"a")).await.expect("a");
    let waiting: Vec<_> = (0..3)
        .map(|_| tokio::spawn(svc.clone().oneshot(with_key(b"a"))))
        .collect();
    tokio::task::yield_now().await;
    assert_eq!(layer.waiting(), 3);
    let b = tokio::time::timeout(Duration::ZERO, svc.clone().oneshot(with_key(b"b")))
        .await
        .expect("b at once")
        .expect("b served");
    drop(b);
    for w in waiting {
        w.abort();
        let _ = w.await;
    }
    assert_eq!(layer.waiting(), 0);
}

/// Distinct header values are distinct keys. `KeyBy::header` decodes the
/// value with `String::from_utf8_lossy`, so two API keys that differ only in
/// non-UTF-8 bytes (both become U+FFFD) share one limiter.
#[tokio::test(start_paused = true)]
async fn non_utf8_keys_are_isolated() {
    let hits = Arc::new(AtomicUsize::new(0));
    let svc = RateLimitLayer::new(Quota::window(1, Duration::from_secs(60)).expect("valid"))
        .reject()
        .keyed_by(api_key())
        .layer(counting(Arc::clone(&hits)));
    svc.clone()
        .oneshot(with_key(b"k\xff"))
        .await
        .expect("first key");
    svc.clone()
        .oneshot(with_key(b"k\xfe"))
        .await
        .expect("a different key, untouched");
}

/// One upstream host, two spellings of its authority: `KeyBy::host` gives
/// each its own limiter, so the host gets twice the quota.
#[tokio::test(start_paused = true)]
async fn one_host_one_limiter_whatever_its_spelling() {
    let hits = Arc::new(AtomicUsize::new(0));
    let svc = RateLimitLayer::new(Quota::window(1, Duration::from_secs(60)).expect("valid"))
        .reject()
        .keyed_by(KeyBy::host())
        .layer(counting(Arc::clone(&hits)));
    for uri in [
        "http://api.test/x",
        "http://API.test/x",
        "http://api.test:80/x",
    ] {
        let _ = svc
            .clone()
            .oneshot(Request::get(uri).body(()).expect("request"))
            .await;
    }
    assert_eq!(
        hits.load(Ordering::SeqCst),
        1,
        "one host, one permit a minute"
    );
}

/// A full table of active keys, then a flood of new keys: the active keys
/// stay limited, the table never grows, the newcomers share one overflow
/// limiter; a key that moves from the overflow into its own entry keeps
/// what it took there.
#[tokio::test(start_paused = true)]
async fn a_full_table_never_resets_and_a_moving_key_keeps_its_count() {
    let quota = Quota::window(2, Duration::from_secs(60)).expect("valid");
    let store = Arc::new(MemoryStore::new(&quota, 2));
    let hits = Arc::new(AtomicUsize::new(0));
    let layer = RateLimitLayer::new(quota)
        .reject()
        .keyed_by(api_key())
        .store(Arc::clone(&store) as Arc<dyn RateLimitStore>);
    let svc = layer.layer(counting(Arc::clone(&hits)));
    let ok = |r: Result<Response<()>, tower::BoxError>| r.is_ok();
    // a and b fill the table and are exhausted for a minute.
    for k in [b"a", b"b"] {
        for _ in 0..2 {
            assert!(ok(svc.clone().oneshot(with_key(k)).await));
        }
    }
    tokio::time::advance(Duration::from_secs(1)).await;
    // "mover" overflows and spends the overflow's two permits.
    assert!(ok(svc.clone().oneshot(with_key(b"mover")).await));
    assert!(ok(svc.clone().oneshot(with_key(b"mover")).await));
    for i in 0..1_000 {
        let k = format!("flood-{i}");
        assert!(!ok(svc.clone().oneshot(with_key(k.as_bytes())).await));
        assert!(store.keys() <= 2);
    }
    for k in [b"a", b"b"] {
        assert!(!ok(svc.clone().oneshot(with_key(k)).await), "never reset");
    }
    // At 60.5 s, a and b are idle: mover gets its own entry, which starts
    // from the overflow's state (its two grants at 1 s still count).
    tokio::time::advance(Duration::from_millis(59_500)).await;
    let err = svc
        .clone()
        .oneshot(with_key(b"mover"))
        .await
        .expect_err("its two permits at 1 s still count");
    assert!(err.downcast_ref::<RateLimited>().is_some());
    tokio::time::advance(Duration::from_secs(1)).await;
    assert!(ok(svc.clone().oneshot(with_key(b"mover")).await));
    assert!(store.keys() <= 2);
}

/// A million keys never grow the table past its cap, whether they are idle
/// at once (smooth, spaced out) or all active (a window of a minute).
#[test]
fn a_million_keys_stay_under_the_cap() {
    let smooth = Quota::per_second(1).expect("valid");
    let window = Quota::window(1, Duration::from_secs(60)).expect("valid");
    for (quota, spacing) in [(smooth, SEC), (window, 1_000)] {
        let store = MemoryStore::new(&quota, 1_000);
        let mut key = String::new();
        for i in 0..1_000_000u64 {
            key.clear();
            write!(key, "key-{i}").expect("write");
            let _ = store.check_sync(&key, i * spacing);
            if i % 4096 == 0 {
                assert!(store.keys() <= 1_000, "{} keys at {i}", store.keys());
            }
        }
        assert!(store.keys() <= 1_000);
    }
    // The memory bound: a window of 1000 costs ~8 kB a key.
    let big = Quota::window(1_000, Duration::from_secs(60)).expect("valid");
    let store = MemoryStore::with_memory(&big, usize::MAX, 1 << 20);
    assert!(store.max_keys() <= (1 << 20) / 8_000);
    for i in 0..20_000u64 {
        for _ in 0..3 {
            let _ = store.check_sync(&format!("k{i}"), i);
        }
        assert!(store.keys() <= store.max_keys());
    }
}

/// A store passed with `.store(..)` is the one used, whatever order the
/// other settings come in.
#[tokio::test(start_paused = true)]
async fn a_given_store_survives_later_settings() {
    let quota = Quota::window(1, Duration::from_secs(60)).expect("valid");
    let store = Arc::new(MemoryStore::new(&quota, 10));
    let layer = RateLimitLayer::new(quota)
        .keyed_by(api_key())
        .reject()
        .store(Arc::clone(&store) as Arc<dyn RateLimitStore>)
        .max_keys(5);
    let svc = layer.layer(counting(Arc::default()));
    svc.oneshot(with_key(b"a")).await.expect("a");
    assert_eq!(store.keys(), 1, "the given store holds the key");
}

/// No key text in Debug output of the layer, the service, its futures, the
/// store or the errors, nor in the limiter's logs.
#[tokio::test(start_paused = true)]
async fn no_key_text_in_debug_or_logs() {
    const SECRET: &str = "sk_live_SECRET123";
    let lines = captured();
    let quota = Quota::per(1, Duration::from_secs(10)).expect("valid");
    let store = Arc::new(MemoryStore::new(&quota, 10));
    let layer = RateLimitLayer::new(quota)
        .keyed_by(api_key())
        .store(Arc::clone(&store) as Arc<dyn RateLimitStore>)
        .max_wait(Duration::from_secs(1));
    let teach = service_fn(|_req: Request<()>| async {
        Ok::<_, std::convert::Infallible>(
            Response::builder()
                .status(429)
                .header("retry-after", "5")
                .body(())
                .expect("response"),
        )
    });
    let mut svc = layer.layer(teach);
    let mut debug = format!("{layer:?} {svc:?} {store:?}");
    let res = svc
        .clone()
        .oneshot(with_key(SECRET.as_bytes()))
        .await
        .expect("429");
    write!(debug, "{res:?}").expect("write");
    let fut = svc.call(with_key(SECRET.as_bytes()));
    write!(debug, "{fut:?}").expect("write");
    let err = fut.await.expect_err("paused 5 s, max 1 s");
    write!(debug, "{err:?} {err}").expect("write");
    let logs = lines.lock().expect("lock").clone();
    assert!(
        logs.contains("limiter paused"),
        "the pause was logged: {logs}"
    );
    assert!(!debug.contains(SECRET), "{debug}");
    assert!(!debug.contains("SECRET"), "{debug}");
    assert!(!logs.contains("SECRET"), "{logs}");
}

/// A minimal subscriber: every event's fields and span fields as text.
struct Capture(Arc<Mutex<String>>);

/// What every test of the binary logged, through its one global
/// subscriber.
///
/// Not `set_default` for one test: `tracing` works out once per callsite
/// whether anyone listens, for the thread that reaches it first, so a test
/// beside this one pausing a limiter without a subscriber could make
/// "limiter paused" silent for the whole binary. Before the first
/// subscriber is set no callsite is worked out at all, and after it every
/// thread sees this one.
fn captured() -> Arc<Mutex<String>> {
    static LINES: std::sync::OnceLock<Arc<Mutex<String>>> = std::sync::OnceLock::new();
    Arc::clone(LINES.get_or_init(|| {
        let lines = Arc::new(Mutex::new(String::new()));
        tracing::subscriber::set_global_default(Capture(Arc::clone(&lines)))
            .expect("the test binary's only subscriber");
        lines
    }))
}

struct Fields<'a>(&'a mut String);

impl tracing::field::Visit for Fields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        let _ = write!(self.0, "{}={:?} ", field.name(), value);
    }
}

impl tracing::Subscriber for Capture {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, span: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        let mut out = self.0.lock().expect("lock");
        span.record(&mut Fields(&mut out));
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, values: &tracing::span::Record<'_>) {
        let mut out = self.0.lock().expect("lock");
        values.record(&mut Fields(&mut out));
    }
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut out = self.0.lock().expect("lock");
        event.record(&mut Fields(&mut out));
        out.push('\n');
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}
