//! The tier's failures are logged once per transition (failing, answering
//! again), not once per request. A test binary of its own: it installs the
//! process-wide subscriber.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use tollgate_cache::{CacheLayer, CacheTier, Freshness, TierFuture, TIER_RETRY};
use tollgate_testkit::CapturedLogs;
use tower::{service_fn, Layer, ServiceExt};

/// Fails every call while switched on; finds
/// nothing otherwise.
#[derive(Clone, Default)]
struct Switch(Arc<AtomicBool>);

impl Switch {
    fn answer<T: Send + 'static>(&self, value: T) -> TierFuture<T> {
        if self.0.load(Ordering::SeqCst) {
            Box::pin(async { Err("connection refused".into()) })
        } else {
            Box::pin(async move { Ok(value) })
        }
    }
}

impl CacheTier for Switch {
    fn get(&self, _key: &str) -> TierFuture<Option<Bytes>> {
        self.answer(None)
    }
    fn put(&self, _key: &str, _value: Bytes, _ttl: Duration) -> TierFuture<()> {
        self.answer(())
    }
    fn delete(&self, _key: &str) -> TierFuture<()> {
        self.answer(())
    }
}

#[tokio::test(start_paused = true)]
async fn a_failing_tier_is_logged_once_per_transition() {
    let logs = CapturedLogs::install_global();
    let tier = Switch::default();
    tier.0.store(true, Ordering::SeqCst);
    let layer = CacheLayer::builder(Freshness::Fixed(Duration::from_secs(60)))
        .tier(Arc::new(tier.clone()))
        .build();
    let service = layer.layer(service_fn(|_req: Request<()>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
    }));
    for round in 0..3 {
        for i in 0..5 {
            let req = Request::get(format!("http://api.test/{round}/{i}"))
                .body(())
                .expect("request");
            service.clone().oneshot(req).await.expect("never fails");
        }
        tokio::time::advance(TIER_RETRY).await;
    }
    let failing = "cache tier failing";
    assert_eq!(
        logs.contents().matches(failing).count(),
        1,
        "{}",
        logs.contents()
    );
    assert_eq!(layer.stats().tier_errors, 3, "one probe per rest");

    tier.0.store(false, Ordering::SeqCst);
    for i in 0..5 {
        let req = Request::get(format!("http://api.test/up/{i}"))
            .body(())
            .expect("request");
        service.clone().oneshot(req).await.expect("ok");
    }
    let contents = logs.contents();
    assert_eq!(
        contents.matches("cache tier answering again").count(),
        1,
        "{contents}"
    );
    assert_eq!(contents.matches(failing).count(), 1);
}
