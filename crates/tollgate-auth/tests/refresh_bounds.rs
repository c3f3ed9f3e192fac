//! Token refresh under attack, with tokio's clock paused: short and odd
//! lifetimes, a broken token endpoint, every setting at 0, 1 and MAX, and
//! callers dropped while they wait for a refresh.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::header::AUTHORIZATION;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use tokio::time::Instant;
use tollgate_auth::{token_fn, AuthError, AuthLayer, Token};
use tower::{service_fn, BoxError, Layer, Service, ServiceExt};

/// A token source handing out `t1`, `t2`, ... each living `lifetime` (or
/// forever), after `delay`; it counts its calls.
fn source(lifetime: Option<Duration>, delay: Duration) -> (Arc<AtomicUsize>, AuthLayer) {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let layer = AuthLayer::token_source(token_fn(move || {
        let n = c.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            tokio::time::sleep(delay).await;
            let token = Token::bearer(format!("t{n}"))?;
            Ok(match lifetime {
                Some(l) => token.expires_in(l),
                None => token,
            })
        }
    }))
    .any_origin();
    (calls, layer)
}

/// A token source that fails `failures` times, then hands out `good`.
fn failing(failures: usize) -> (Arc<AtomicUsize>, AuthLayer) {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let layer = AuthLayer::token_source(token_fn(move || {
        let n = c.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            if n <= failures {
                return Err::<Token, BoxError>(format!("endpoint down ({n})").into());
            }
            Ok(Token::bearer("good")?.expires_in(Duration::from_secs(3600)))
        }
    }))
    .any_origin();
    (calls, layer)
}

/// Echoes the Authorization header it got.
fn echo() -> impl Service<
    Request<Full<Bytes>>,
    Response = Response<String>,
    Error = Infallible,
    Future = impl Send,
> + Clone
       + Send
       + 'static {
    service_fn(|req: Request<Full<Bytes>>| async move {
        let seen = req
            .headers()
            .get(AUTHORIZATION)
            .map(|v| v.to_str().unwrap_or("?").to_owned())
            .unwrap_or_default();
        Ok::<_, Infallible>(Response::new(seen))
    })
}

fn get() -> Request<Full<Bytes>> {
    Request::get("http://api.test/x")
        .body(Full::default())
        .expect("request")
}

#[tokio::test(start_paused = true)]
async fn a_token_living_no_longer_than_the_skew_is_reused_for_half_its_life() {
    // 4 s of life, the default 10 s skew: it was "due" from the start.
    let (calls, layer) = source(Some(Duration::from_secs(4)), Duration::ZERO);
    let service = layer.layer(echo());
    for _ in 0..100 {
        let seen = service.clone().oneshot(get()).await.expect("response");
        assert_eq!(seen.into_body(), "Bearer t1");
        tokio::time::advance(Duration::from_millis(19)).await;
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1, "1.9 s of 4: reused");
    tokio::time::advance(Duration::from_millis(100)).await;
    let seen = service.clone().oneshot(get()).await.expect("response");
    assert_eq!(
        seen.into_body(),
        "Bearer t2",
        "past half its life: refreshed"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn a_zero_lifetime_token_is_not_refreshed_on_every_request() {
    let (calls, layer) = source(Some(Duration::ZERO), Duration::ZERO);
    let service = layer.layer(echo());
    for _ in 0..100 {
        service.clone().oneshot(get()).await.expect("response");
        tokio::time::advance(Duration::from_millis(10)).await;
    }
    assert!(
        calls.load(Ordering::SeqCst) <= 2,
        "{} refreshes for 100 requests in 1 s",
        calls.load(Ordering::SeqCst)
    );
}

#[tokio::test(start_paused = true)]
async fn concurrent_requests_share_one_refresh_of_a_zero_lifetime_token() {
    let (calls, layer) = source(Some(Duration::ZERO), Duration::from_millis(50));
    let service = layer.layer(echo());
    let tasks: Vec<_> = (0..20)
        .map(|_| tokio::spawn(service.clone().oneshot(get())))
        .collect();
    for task in tasks {
        assert_eq!(
            task.await.expect("task").expect("response").into_body(),
            "Bearer t1"
        );
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn lifetimes_of_zero_one_and_max_do_not_panic() {
    let lifetimes = [
        Some(Duration::ZERO),
        Some(Duration::from_nanos(1)),
        Some(Duration::from_secs(1)),
        Some(Duration::from_secs(u64::MAX)),
        Some(Duration::MAX),
        None,
    ];
    for lifetime in lifetimes {
        let (_, layer) = source(lifetime, Duration::ZERO);
        let service = layer.layer(echo());
        for _ in 0..3 {
            let seen = service.clone().oneshot(get()).await.expect("response");
            assert!(seen.into_body().starts_with("Bearer t"));
            tokio::time::advance(Duration::from_secs(1)).await;
        }
    }
}

#[tokio::test(start_paused = true)]
async fn skews_and_timeouts_of_zero_one_and_max_do_not_panic() {
    let durations = [Duration::ZERO, Duration::from_nanos(1), Duration::MAX];
    for skew in durations {
        for timeout in durations {
            for lifetime in [
                Some(Duration::ZERO),
                Some(Duration::from_secs(60)),
                Some(Duration::MAX),
                None,
            ] {
                let (_, layer) = source(lifetime, Duration::ZERO);
                let layer = layer.refresh_skew(skew).refresh_timeout(timeout);
                let _ = format!("{layer:?}");
                let service = layer.layer(echo());
                for _ in 0..3 {
                    match service.clone().oneshot(get()).await {
                        Ok(seen) => assert!(seen.into_body().starts_with("Bearer t")),
                        // A zero timeout fails a refresh that does not end
                        // at its first poll: typed, not a panic.
                        Err(e) => assert!(e.downcast_ref::<AuthError>().is_some(), "{e}"),
                    }
                    tokio::time::advance(Duration::from_secs(1)).await;
                }
            }
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_broken_token_endpoint_sees_a_bounded_number_of_calls() {
    let (calls, layer) = failing(usize::MAX);
    let service = layer.layer(echo());
    let started = Instant::now();
    for _ in 0..1000 {
        let asked = Instant::now();
        let err = service.clone().oneshot(get()).await.expect_err("no token");
        let auth = err.downcast_ref::<AuthError>().expect("an AuthError");
        assert!(matches!(auth, AuthError::RefreshFailed(_)), "{auth:?}");
        assert_eq!(asked.elapsed(), Duration::ZERO, "the error comes at once");
        tokio::time::advance(Duration::from_millis(100)).await;
    }
    // 100 s: failures at 0, 1, 3, 7, 15, 31, 61, 91 s (capped at 30 s).
    assert_eq!(started.elapsed(), Duration::from_secs(100));
    let n = calls.load(Ordering::SeqCst);
    assert!(n <= 8, "{n} calls to a broken endpoint in 100 s");
}

#[tokio::test(start_paused = true)]
async fn during_the_back_off_callers_get_the_last_error_then_a_recovered_endpoint_is_used() {
    let (calls, layer) = failing(2);
    let service = layer.layer(echo());
    let first = service.clone().oneshot(get()).await.expect_err("down");
    assert!(
        first.to_string().contains("token refresh failed"),
        "{first}"
    );
    let during = service
        .clone()
        .oneshot(get())
        .await
        .expect_err("backing off");
    let auth = during.downcast_ref::<AuthError>().expect("typed");
    match auth {
        AuthError::RefreshFailed(e) => assert_eq!(e.to_string(), "endpoint down (1)"),
        other => panic!("{other:?}"),
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    tokio::time::advance(Duration::from_secs(1)).await;
    service
        .clone()
        .oneshot(get())
        .await
        .expect_err("down again");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    tokio::time::advance(Duration::from_secs(1)).await;
    service
        .clone()
        .oneshot(get())
        .await
        .expect_err("2 s back-off");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    tokio::time::advance(Duration::from_secs(1)).await;
    let ok = service.clone().oneshot(get()).await.expect("recovered");
    assert_eq!(ok.into_body(), "Bearer good");
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    tokio::time::advance(Duration::from_secs(60)).await;
    service.clone().oneshot(get()).await.expect("kept");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        3,
        "success clears the back-off"
    );
}

#[tokio::test(start_paused = true)]
async fn a_timed_out_refresh_is_backed_off_too() {
    let (calls, layer) = source(Some(Duration::from_secs(60)), Duration::from_secs(3600));
    let service = layer.refresh_timeout(Duration::from_secs(2)).layer(echo());
    for _ in 0..5 {
        let err = service.clone().oneshot(get()).await.expect_err("timeout");
        assert!(matches!(
            err.downcast_ref::<AuthError>(),
            Some(AuthError::RefreshTimedOut(_))
        ));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn a_token_not_yet_expired_is_kept_while_its_refresh_fails() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let layer = AuthLayer::token_source(token_fn(move || {
        let n = c.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            if n > 1 {
                return Err::<Token, BoxError>("endpoint down".into());
            }
            Ok(Token::bearer("t1")?.expires_in(Duration::from_secs(60)))
        }
    }))
    .any_origin();
    let service = layer.layer(echo());
    service.clone().oneshot(get()).await.expect("t1");
    // 55 s: within the skew; the refresh fails, t1 has 5 s left.
    tokio::time::advance(Duration::from_secs(55)).await;
    for _ in 0..10 {
        let seen = service.clone().oneshot(get()).await.expect("t1 still");
        assert_eq!(seen.into_body(), "Bearer t1");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    tokio::time::advance(Duration::from_secs(6)).await;
    let err = service
        .clone()
        .oneshot(get())
        .await
        .expect_err("t1 expired");
    assert!(err.downcast_ref::<AuthError>().is_some());
}

#[tokio::test(start_paused = true)]
async fn a_dropped_waiter_of_a_refresh_strands_nothing() {
    let (calls, layer) = source(Some(Duration::from_secs(3600)), Duration::from_millis(100));
    let service = layer.layer(echo());
    let leader = tokio::spawn(service.clone().oneshot(get()));
    tokio::task::yield_now().await;
    let waiter = tokio::spawn(service.clone().oneshot(get()));
    let other = tokio::spawn(service.clone().oneshot(get()));
    tokio::task::yield_now().await;
    waiter.abort();
    assert_eq!(
        leader.await.expect("task").expect("response").into_body(),
        "Bearer t1"
    );
    assert_eq!(
        other.await.expect("task").expect("response").into_body(),
        "Bearer t1"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let after = service.clone().oneshot(get()).await.expect("response");
    assert_eq!(after.into_body(), "Bearer t1");
}

#[tokio::test(start_paused = true)]
async fn a_401_to_a_short_lived_token_leads_to_one_refresh_and_one_replay() {
    let (calls, layer) = source(Some(Duration::ZERO), Duration::ZERO);
    let attempts = Arc::new(Mutex::new(Vec::new()));
    let a = attempts.clone();
    // Refuses every token: a 401 loop would show here.
    let upstream = service_fn(move |req: Request<Full<Bytes>>| {
        let a = a.clone();
        async move {
            let seen = req.headers().get(AUTHORIZATION).cloned();
            a.lock().expect("lock").push(seen);
            let mut response = Response::new(String::new());
            *response.status_mut() = StatusCode::UNAUTHORIZED;
            Ok::<_, Infallible>(response)
        }
    });
    let service = layer.layer(upstream);
    let response = service.oneshot(get()).await.expect("response");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "the first token, one refresh"
    );
    assert_eq!(
        attempts.lock().expect("lock").len(),
        2,
        "one attempt, one replay"
    );
}

#[tokio::test(start_paused = true)]
async fn oauth_expires_in_of_zero_one_and_u64_max_do_not_panic() {
    use tollgate_auth::ClientCredentials;
    for expires_in in ["0", "1", "18446744073709551615"] {
        let grants = Arc::new(AtomicUsize::new(0));
        let g = grants.clone();
        let endpoint = service_fn(move |_req: Request<Full<Bytes>>| {
            let n = g.fetch_add(1, Ordering::SeqCst) + 1;
            let body = format!(
                r#"{{"access_token":"g{n}","token_type":"Bearer","expires_in":{expires_in}}}"#
            );
            async move { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body)))) }
        });
        let source = ClientCredentials::new(
            endpoint,
            "https://auth.test/token".parse().expect("uri"),
            "id",
            "secret",
        )
        .expect("valid");
        let service = AuthLayer::token_source(source).any_origin().layer(echo());
        for _ in 0..50 {
            let seen = service.clone().oneshot(get()).await.expect("response");
            assert!(seen.into_body().starts_with("Bearer g"));
            tokio::time::advance(Duration::from_millis(100)).await;
        }
        let n = grants.load(Ordering::SeqCst);
        assert!(
            n <= 6,
            "expires_in {expires_in}: {n} grants for 50 requests in 5 s"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_request_dropped_while_renewing_after_a_401_strands_nothing() {
    let (calls, layer) = source(Some(Duration::from_secs(3600)), Duration::from_millis(100));
    // Refuses t1 only.
    let upstream = service_fn(|req: Request<Full<Bytes>>| async move {
        let mut response = Response::new(String::new());
        if req
            .headers()
            .get(AUTHORIZATION)
            .is_some_and(|v| v == "Bearer t1")
        {
            *response.status_mut() = StatusCode::UNAUTHORIZED;
        }
        Ok::<_, Infallible>(response)
    });
    let service = layer.layer(upstream);
    // Gets t1 (100 ms), is refused, and starts renewing (another 100 ms).
    let renewing = tokio::spawn(service.clone().oneshot(get()));
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(calls.load(Ordering::SeqCst), 2, "renewing now");
    renewing.abort();
    let after = service.clone().oneshot(get()).await.expect("response");
    assert_eq!(after.status(), StatusCode::OK);
    // The renewal went on without its request; the next one used t2.
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn a_refresh_outlives_the_callers_that_gave_up_on_it() {
    // The token endpoint takes 3 s; each caller gives up after 2 s.
    let (calls, layer) = source(Some(Duration::from_secs(3600)), Duration::from_secs(3));
    let service = layer.layer(echo());
    let started = Instant::now();
    let first = tokio::time::timeout(Duration::from_secs(2), service.clone().oneshot(get())).await;
    assert!(first.is_err(), "the first caller gave up");
    let second = tokio::time::timeout(Duration::from_secs(2), service.clone().oneshot(get()))
        .await
        .expect("the refresh the first caller began ends at 3 s")
        .expect("response");
    assert_eq!(second.into_body(), "Bearer t1");
    assert_eq!(started.elapsed(), Duration::from_secs(3));
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "one refresh, not one per caller"
    );
}

/// Many requests on several threads at once: one refresh serves them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_refresh_serves_requests_on_every_thread() {
    let (calls, layer) = source(Some(Duration::from_secs(3600)), Duration::ZERO);
    let service = layer.layer(echo());
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let service = service.clone();
            tokio::spawn(async move {
                for _ in 0..100 {
                    let seen = service.clone().oneshot(get()).await.expect("response");
                    assert_eq!(seen.into_body(), "Bearer t1");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("no panic");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}
