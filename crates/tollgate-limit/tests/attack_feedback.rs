//! Adversarial tests of server feedback: 429/503 `Retry-After`, `RateLimit`
//! and `X-RateLimit-*` pause the limiter for everyone sharing it (queued
//! waiters included), capped, then resume at the rate without a burst.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use tokio::time::Instant;
use tollgate_limit::rate::upstream_pause;
use tollgate_limit::{KeyBy, PermitWait, Quota, RateLimitLayer};
use tower::{service_fn, Layer, Service, ServiceExt};

type Log = Arc<Mutex<Vec<(String, Instant)>>>;

/// Records each call by its `x-id`; the first call whose id is `teach`
/// answers `status` with `headers` after 50 ms; every other call 200.
fn upstream(
    log: Log,
    status: StatusCode,
    headers: Vec<(&'static str, &'static str)>,
) -> impl Service<
    Request<()>,
    Response = Response<()>,
    Error = std::convert::Infallible,
    Future = impl Send,
> + Clone
       + Send {
    service_fn(move |req: Request<()>| {
        let id = req
            .headers()
            .get("x-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        log.lock().expect("lock").push((id.clone(), Instant::now()));
        let teach = id == "teach";
        let mut res = Response::builder();
        if teach {
            res = res.status(status);
            for (k, v) in &headers {
                res = res.header(*k, *v);
            }
        }
        let res = res.body(()).expect("response");
        async move {
            if teach {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok(res)
        }
    })
}

fn req(id: &str) -> Request<()> {
    Request::get("http://api.test/x")
        .header("x-id", id)
        .body(())
        .expect("request")
}

fn headers(pairs: &[(&str, &[u8])]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            HeaderName::from_bytes(k.as_bytes()).expect("name"),
            HeaderValue::from_bytes(v).expect("value"),
        );
    }
    h
}

const NOW: SystemTime = UNIX_EPOCH;

fn pause(status: StatusCode, pairs: &[(&str, &[u8])]) -> Option<Duration> {
    upstream_pause(status, &headers(pairs), NOW)
}

/// A 429 learned while callers are already queued holds every one of them
/// back, and after the pause they go one interval apart, not as a burst;
/// for a smooth and a window quota.
#[tokio::test(start_paused = true)]
async fn a_pause_holds_queued_waiters_and_ends_without_a_burst() {
    for quota in [
        Quota::per_second(10).expect("valid"),
        Quota::window(10, Duration::from_secs(1)).expect("valid"),
    ] {
        let log: Log = Arc::default();
        let layer = RateLimitLayer::new(quota);
        let svc = layer.layer(upstream(
            Arc::clone(&log),
            StatusCode::TOO_MANY_REQUESTS,
            vec![("retry-after", "3")],
        ));
        let start = Instant::now();
        // Spend the burst but one; the last permit goes to `teach`.
        for i in 0..9 {
            svc.clone()
                .oneshot(req(&format!("b{i}")))
                .await
                .expect("burst");
        }
        let teach = tokio::spawn(svc.clone().oneshot(req("teach")));
        tokio::task::yield_now().await;
        let waiters: Vec<_> = (0..5)
            .map(|i| tokio::spawn(svc.clone().oneshot(req(&format!("w{i}")))))
            .collect();
        tokio::task::yield_now().await;
        assert_eq!(layer.waiting(), 5, "{quota}");
        let res = teach.await.expect("task").expect("429");
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
        let nb = res
            .extensions()
            .get::<tollgate_core::NotBefore>()
            .expect("NotBefore");
        assert_eq!(nb.0 - start, Duration::from_millis(3_050), "{quota}");
        for w in waiters {
            w.await.expect("task").expect("served");
        }
        let log = log.lock().expect("lock");
        let after: Vec<Duration> = log
            .iter()
            .filter(|(id, _)| id.starts_with('w'))
            .map(|(_, t)| *t - start)
            .collect();
        assert_eq!(after[0], Duration::from_millis(3_050), "{quota}");
        for pair in after.windows(2) {
            assert!(
                pair[1] - pair[0] >= Duration::from_millis(100),
                "{quota}: {after:?}"
            );
        }
    }
}

/// A pause never loosens the limiter: an upstream that says "retry after 0"
/// (or a date in the past) admits nobody early.
#[tokio::test(start_paused = true)]
async fn a_short_pause_never_loosens_the_limit() {
    for value in ["0", "Thu, 01 Jan 1970 00:00:00 GMT", "1"] {
        for quota in [
            Quota::per_second(1)
                .expect("valid")
                .with_burst(1)
                .expect("valid"),
            Quota::window(1, Duration::from_secs(5)).expect("valid"),
        ] {
            let log: Log = Arc::default();
            let layer = RateLimitLayer::new(quota);
            let svc = layer.layer(upstream(
                Arc::clone(&log),
                StatusCode::SERVICE_UNAVAILABLE,
                vec![("retry-after", value)],
            ));
            let start = Instant::now();
            svc.clone().oneshot(req("teach")).await.expect("503");
            let res = svc.clone().oneshot(req("next")).await.expect("served");
            let waited = res.extensions().get::<PermitWait>().expect("w").0;
            let own = if quota.count() == 1 && quota.period() == Duration::from_secs(5) {
                Duration::from_secs(5)
            } else {
                Duration::from_secs(1)
            };
            assert!(
                Instant::now() - start >= own,
                "{quota} {value}: the quota's own wait was kept ({waited:?})"
            );
        }
    }
}

/// A keyed limiter pauses the key whose call was answered 429, not the
/// others (everyone *sharing that limiter* waits).
#[tokio::test(start_paused = true)]
async fn a_pause_on_one_key_leaves_the_others_alone() {
    let log: Log = Arc::default();
    let layer = RateLimitLayer::new(Quota::per_second(10).expect("valid"))
        .keyed_by(KeyBy::header(HeaderName::from_static("x-tenant")));
    let svc = layer.layer(upstream(
        Arc::clone(&log),
        StatusCode::TOO_MANY_REQUESTS,
        vec![("retry-after", "30")],
    ));
    let with = |id: &str, tenant: &'static str| {
        let mut r = req(id);
        r.headers_mut()
            .insert("x-tenant", HeaderValue::from_static(tenant));
        r
    };
    svc.clone().oneshot(with("teach", "a")).await.expect("429");
    let b = svc.clone().oneshot(with("b", "b")).await.expect("b");
    assert_eq!(
        b.extensions().get::<PermitWait>().expect("w").0,
        Duration::ZERO
    );
    let a = svc.clone().oneshot(with("a", "a")).await.expect("a");
    assert!(a.extensions().get::<PermitWait>().expect("w").0 >= Duration::from_secs(29));
}

#[tokio::test(start_paused = true)]
async fn learning_off_and_the_cap() {
    let log: Log = Arc::default();
    let layer = RateLimitLayer::new(Quota::per_second(10).expect("valid"))
        .learn_from_upstream(false, Duration::from_secs(60));
    let svc = layer.layer(upstream(
        Arc::clone(&log),
        StatusCode::TOO_MANY_REQUESTS,
        vec![("retry-after", "30")],
    ));
    let res = svc.clone().oneshot(req("teach")).await.expect("429");
    assert!(res.extensions().get::<tollgate_core::NotBefore>().is_none());
    let next = svc.clone().oneshot(req("n")).await.expect("n");
    assert_eq!(
        next.extensions().get::<PermitWait>().expect("w").0,
        Duration::ZERO
    );

    // A cap below what the server asked: paused for the cap, no NotBefore.
    let layer = RateLimitLayer::new(Quota::per_second(10).expect("valid"))
        .learn_from_upstream(true, Duration::from_secs(2));
    let svc = layer.layer(upstream(
        Arc::clone(&log),
        StatusCode::TOO_MANY_REQUESTS,
        vec![("retry-after", "9999999999")],
    ));
    let start = Instant::now();
    let res = svc.clone().oneshot(req("teach")).await.expect("429");
    assert!(res.extensions().get::<tollgate_core::NotBefore>().is_none());
    let next = svc.clone().oneshot(req("n")).await.expect("n");
    // Learned at 50 ms (the 429's latency), capped at 2 s: `n`, arriving at
    // 50 ms, waits exactly 2 s.
    assert_eq!(
        next.extensions().get::<PermitWait>().expect("w").0,
        Duration::from_secs(2)
    );
    assert_eq!(Instant::now() - start, Duration::from_millis(2_050));
}

#[test]
fn malformed_fields_are_ignored() {
    let tmr = StatusCode::TOO_MANY_REQUESTS;
    for bad in [
        &b"-1"[..],
        b"1.5",
        b"soon",
        b"",
        b" ",
        b"+5",
        b"0x10",
        b"Wed, 99 Oct 2015 07:28:00 GMT",
        b"\xff\xfe",
    ] {
        assert_eq!(pause(tmr, &[("retry-after", bad)]), None, "{bad:?}");
    }
    for bad in [
        &b"r=0"[..],
        b"t=5",
        b"\"a\";r=-1;t=5",
        b"\"a\";r=0;t=-5",
        b"\"a\";r=0;t=1.5",
        b"\"a\";r=0;t=",
        b"\"a\";r=;t=5",
        b"remaining=0",
        b";;;,,,==",
        b"\xff;r=1;t=\xff",
    ] {
        assert_eq!(
            pause(StatusCode::OK, &[("ratelimit", bad)]),
            None,
            "{bad:?}"
        );
    }
    for (rem, reset) in [
        (&b"0"[..], &b"-5"[..]),
        (b"0", b"1.5"),
        (b"0", b""),
        (b"-0", b"5"),
        (b"zero", b"5"),
        (b"1", b"5"),
    ] {
        assert_eq!(
            pause(
                StatusCode::OK,
                &[("x-ratelimit-remaining", rem), ("x-ratelimit-reset", reset)]
            ),
            None,
            "{rem:?} {reset:?}"
        );
    }
    // Retry-After on a 200 or a 500 is not a rate-limit signal.
    for s in [StatusCode::OK, StatusCode::INTERNAL_SERVER_ERROR] {
        assert_eq!(pause(s, &[("retry-after", b"5")]), None);
    }
}

#[test]
fn the_most_restrictive_policy_wins_in_one_field_line() {
    assert_eq!(
        pause(
            StatusCode::OK,
            &[(
                "ratelimit",
                b"\"burst\";r=0;t=1, \"day\";r=0;t=3600, \"min\";r=3;t=9999"
            )]
        ),
        Some(Duration::from_secs(3600))
    );
    // Retry-After on a 429 takes precedence, even when shorter.
    assert_eq!(
        pause(
            StatusCode::TOO_MANY_REQUESTS,
            &[("retry-after", b"2"), ("ratelimit", b"\"d\";r=0;t=3600")]
        ),
        Some(Duration::from_secs(2))
    );
}

/// HTTP lets a list field be split over several field lines; they mean the
/// same as one comma-joined line (RFC 9110 §5.3). `upstream_pause` reads
/// only the first line (`HeaderMap::get`), so a spent policy on the second
/// line is missed.
#[test]
fn the_most_restrictive_policy_wins_across_field_lines() {
    assert_eq!(
        pause(
            StatusCode::OK,
            &[
                ("ratelimit", b"\"min\";r=50;t=30"),
                ("ratelimit", b"\"day\";r=0;t=3600"),
            ]
        ),
        Some(Duration::from_secs(3600))
    );
}

/// A policy's name, and any parameter's string value, is a quoted string
/// that may hold `,` `;` and `=`: the field is split on them without regard
/// for quotes, so a string fakes a spent policy.
#[test]
fn a_quoted_string_is_not_parsed_as_parameters() {
    assert_eq!(
        pause(
            StatusCode::OK,
            &[("ratelimit", b"\"day\";r=5;t=1;note=\"x;r=0;t=999\"")]
        ),
        None
    );
    assert_eq!(
        pause(StatusCode::OK, &[("ratelimit", b"\"n;r=0;t=999\"")]),
        None,
        "a policy with no parameters is not spent"
    );
}

#[test]
fn x_ratelimit_reset_epoch_past_and_future() {
    let now = UNIX_EPOCH + Duration::from_secs(2_000_000_000);
    let h = |reset: &'static [u8]| {
        upstream_pause(
            StatusCode::OK,
            &headers(&[
                ("x-ratelimit-remaining", b"0"),
                ("x-ratelimit-reset", reset),
            ]),
            now,
        )
    };
    assert_eq!(h(b"1999999999"), Some(Duration::ZERO));
    assert_eq!(h(b"2000000060"), Some(Duration::from_secs(60)));
    assert_eq!(
        h(b"18446744073709551615"),
        Some(tollgate_core::MAX_RETRY_AFTER)
    );
    assert_eq!(h(b"99999999999999999999999"), None);
}

#[cfg(feature = "metrics")]
type Recorded = (
    String,
    Vec<(String, String)>,
    metrics_util::debugging::DebugValue,
);

/// Runs `f` on a current-thread runtime with paused time under a local
/// debugging recorder: each metric's name, labels and value.
#[cfg(feature = "metrics")]
fn recorded<F: std::future::Future<Output = ()>>(f: F) -> Vec<Recorded> {
    use metrics_util::debugging::DebuggingRecorder;
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .expect("runtime")
            .block_on(f);
    });
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| {
            let labels = key
                .key()
                .labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect();
            (key.key().name().to_owned(), labels, value)
        })
        .collect()
}

#[cfg(feature = "metrics")]
#[test]
fn learned_pauses_are_counted_with_their_status_and_cap_never_the_key() {
    use metrics_util::debugging::DebugValue;
    let seen = recorded(async {
        let log: Log = Arc::default();
        // Keyed by a header that is a credential: it must not be a label.
        let layer = RateLimitLayer::new(Quota::per_second(10).expect("valid"))
            .keyed_by(KeyBy::header(HeaderName::from_static("x-api-key")))
            .learn_from_upstream(true, Duration::from_secs(5));
        let svc = layer.layer(upstream(
            Arc::clone(&log),
            StatusCode::TOO_MANY_REQUESTS,
            vec![("retry-after", "3")],
        ));
        let with_key = |id: &str| {
            let mut r = req(id);
            r.headers_mut()
                .insert("x-api-key", HeaderValue::from_static("SECRETKEY123"));
            r
        };
        let res = svc.clone().oneshot(with_key("teach")).await.expect("429");
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
        // A 200 teaches nothing.
        let ok = svc.clone().oneshot(with_key("n")).await.expect("200");
        assert_eq!(ok.status(), StatusCode::OK);
        // A 503 asking for more than the cap: counted as capped, 5 s.
        let capped = RateLimitLayer::new(Quota::per_second(10).expect("valid"))
            .learn_from_upstream(true, Duration::from_secs(5))
            .layer(upstream(
                Arc::clone(&log),
                StatusCode::SERVICE_UNAVAILABLE,
                vec![("retry-after", "600")],
            ));
        capped.oneshot(req("teach")).await.expect("503");
        // Learning off: nothing counted.
        let off = RateLimitLayer::new(Quota::per_second(10).expect("valid"))
            .learn_from_upstream(false, Duration::from_secs(5))
            .layer(upstream(
                Arc::clone(&log),
                StatusCode::TOO_MANY_REQUESTS,
                vec![("retry-after", "3")],
            ));
        off.oneshot(req("teach")).await.expect("429");
    });
    for (name, labels, _) in &seen {
        let text = format!("{name} {labels:?}");
        assert!(!text.contains("SECRETKEY123"), "a key in a metric: {text}");
    }
    let find = |name: &str, code: &str| {
        seen.iter()
            .filter(|(n, labels, _)| {
                n == name
                    && labels
                        .iter()
                        .any(|(k, v)| k == "http.response.status_code" && v == code)
            })
            .collect::<Vec<_>>()
    };
    let pauses_429 = find("tollgate.client.rate_limit.pauses", "429");
    assert_eq!(pauses_429.len(), 1, "{seen:?}");
    assert!(
        matches!(pauses_429[0].2, DebugValue::Counter(1)),
        "{seen:?}"
    );
    assert!(pauses_429[0]
        .1
        .contains(&("capped".to_owned(), "false".to_owned())));
    let durations_429 = find("tollgate.client.rate_limit.pause_duration", "429");
    match &durations_429[..] {
        [(_, _, DebugValue::Histogram(values))] => {
            assert_eq!(values.len(), 1);
            assert!((values[0].into_inner() - 3.0).abs() < 1e-9, "{values:?}");
        }
        other => panic!("one 429 pause histogram: {other:?}"),
    }
    let pauses_503 = find("tollgate.client.rate_limit.pauses", "503");
    assert_eq!(pauses_503.len(), 1, "{seen:?}");
    assert!(pauses_503[0]
        .1
        .contains(&("capped".to_owned(), "true".to_owned())));
    match &find("tollgate.client.rate_limit.pause_duration", "503")[..] {
        [(_, _, DebugValue::Histogram(values))] => {
            assert!((values[0].into_inner() - 5.0).abs() < 1e-9, "{values:?}");
        }
        other => panic!("one 503 pause histogram: {other:?}"),
    }
}
