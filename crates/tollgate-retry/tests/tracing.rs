//! One tracing event per retry, with the resend count, the reason and the
//! delay. Alone in its binary: the subscriber is process-global.

use std::sync::{Arc, Mutex};

use http::{Request, Response, StatusCode};
use tollgate_retry::RetryLayer;
use tollgate_testkit::CapturedLogs;
use tower::{service_fn, Layer, ServiceExt};

#[tokio::test(start_paused = true)]
async fn each_retry_emits_one_event_with_count_reason_and_delay() {
    let logs = CapturedLogs::install_global();

    let calls = Arc::new(Mutex::new(0));
    let svc = RetryLayer::new().seed(3).layer(service_fn(
        move |_req: Request<tollgate_retry::ReplayableBody>| {
            let calls = calls.clone();
            async move {
                let mut n = calls.lock().expect("lock");
                *n += 1;
                let status = if *n <= 2 {
                    StatusCode::BAD_GATEWAY
                } else {
                    StatusCode::OK
                };
                Ok::<_, std::convert::Infallible>(
                    Response::builder()
                        .status(status)
                        .body(String::new())
                        .expect("response"),
                )
            }
        },
    ));
    let res = svc
        .oneshot(Request::get("/x").body(String::new()).expect("request"))
        .await
        .expect("response");
    assert_eq!(res.status(), StatusCode::OK);

    let out = logs.contents();
    let retries: Vec<&str> = out.lines().filter(|l| l.contains("retrying")).collect();
    assert_eq!(retries.len(), 2, "{out}");
    assert!(
        retries[0].contains("http.request.resend_count=1")
            && retries[1].contains("http.request.resend_count=2"),
        "{out}"
    );
    assert!(
        retries
            .iter()
            .all(|l| l.contains("reason=status 502") && l.contains("delay_ms=")),
        "{out}"
    );
}
