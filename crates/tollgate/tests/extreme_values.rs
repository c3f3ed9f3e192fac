//! Every public facade setter taking a number or a duration, at 0, 1 and
//! MAX, then a real call to FakeApi: nothing panics, and each call either
//! works or fails with a typed error whose kind is the one the setter
//! documents (a zero timeout is refused when the client or the request is
//! built; a 1 ms timeout may expire; a body limit of 0 or 1 byte refuses the
//! body).
//!
//! `Duration::MAX` is how callers write "no limit": it must mean exactly that.

use std::time::Duration;

use tollgate::{ApiResponse, Client, ClientBuilder, Endpoint, Error, ErrorKind};
use tollgate_testkit::FakeApi;

const ONE: Duration = Duration::from_millis(1);

/// Builds the client and makes one GET through it.
async fn call(builder: ClientBuilder) -> Result<ApiResponse, Error> {
    builder.build()?.get("/posts/1").send().await
}

/// The call worked and was answered by the upstream.
#[track_caller]
fn works(what: &str, result: Result<ApiResponse, Error>) {
    match result {
        Ok(res) => assert_eq!(res.status(), 200, "{what}"),
        Err(e) => panic!("{what}: expected a response, got {e:?}"),
    }
}

/// The call worked, or failed with one of `kinds`.
#[track_caller]
fn works_or(what: &str, result: Result<ApiResponse, Error>, kinds: &[ErrorKind]) {
    match result {
        Ok(res) => assert_eq!(res.status(), 200, "{what}"),
        Err(e) => assert!(kinds.contains(&e.kind()), "{what}: {e:?}"),
    }
}

/// The call failed with exactly `kind`.
#[track_caller]
fn fails(what: &str, result: Result<ApiResponse, Error>, kind: ErrorKind) {
    match result {
        Ok(res) => panic!("{what}: expected {kind:?}, got {}", res.status()),
        Err(e) => assert_eq!(e.kind(), kind, "{what}: {e:?}"),
    }
}

#[tokio::test]
async fn client_timeouts_at_zero_one_and_max() {
    let api = FakeApi::start().await.expect("start");
    let b = || Client::builder(api.url());

    fails(
        "timeout 0",
        call(b().timeout(Duration::ZERO)).await,
        ErrorKind::Builder,
    );
    works_or(
        "timeout 1ms",
        call(b().timeout(ONE)).await,
        &[ErrorKind::Timeout],
    );
    works("timeout MAX", call(b().timeout(Duration::MAX)).await);

    fails(
        "connect_timeout 0",
        call(b().connect_timeout(Duration::ZERO)).await,
        ErrorKind::Builder,
    );
    works_or(
        "connect_timeout 1ms",
        call(b().connect_timeout(ONE)).await,
        &[ErrorKind::Connect],
    );
    works(
        "connect_timeout MAX",
        call(b().connect_timeout(Duration::MAX)).await,
    );

    fails(
        "attempt_timeout 0",
        call(b().attempt_timeout(Duration::ZERO)).await,
        ErrorKind::Builder,
    );
    works_or(
        "attempt_timeout 1ms",
        call(b().attempt_timeout(ONE)).await,
        &[ErrorKind::Timeout],
    );
    works(
        "attempt_timeout MAX",
        call(b().attempt_timeout(Duration::MAX)).await,
    );

    fails(
        "read_timeout 0",
        call(b().read_timeout(Duration::ZERO)).await,
        ErrorKind::Builder,
    );
    works_or(
        "read_timeout 1ms",
        call(b().read_timeout(ONE)).await,
        &[ErrorKind::Timeout],
    );
    works(
        "read_timeout MAX",
        call(b().read_timeout(Duration::MAX)).await,
    );
    works(
        "every timeout MAX",
        call(
            b().timeout(Duration::MAX)
                .connect_timeout(Duration::MAX)
                .read_timeout(Duration::MAX)
                .attempt_timeout(Duration::MAX)
                .pool_idle_timeout(Duration::MAX),
        )
        .await,
    );

    // Keeping no idle connection at all is a valid choice.
    for d in [Duration::ZERO, ONE, Duration::MAX] {
        works(
            &format!("pool_idle_timeout {d:?}"),
            call(b().pool_idle_timeout(d)).await,
        );
    }
    // MAX after no_timeout, and no_timeout after MAX: no deadline either way.
    works(
        "no_timeout then timeout MAX",
        call(b().no_timeout().timeout(Duration::MAX)).await,
    );
}

#[tokio::test]
async fn client_counts_at_zero_one_and_max() {
    let api = FakeApi::start().await.expect("start");
    let b = || Client::builder(api.url());

    for n in [0, 1, usize::MAX] {
        let client = b().pool_max_idle_per_host(n).build().expect("builds");
        for _ in 0..3 {
            works(
                &format!("pool_max_idle_per_host {n}"),
                client.get("/posts/1").send().await,
            );
        }
    }

    // A limit of 0 or 1 byte refuses a post, from its Content-Length.
    for n in [0, 1] {
        fails(
            &format!("max_response_body {n}"),
            call(b().max_response_body(n)).await,
            ErrorKind::BodyTooLarge,
        );
    }
    works(
        "max_response_body MAX",
        call(b().max_response_body(usize::MAX)).await,
    );
    // An empty body fits in a limit of 0.
    let res = b()
        .max_response_body(0)
        .build()
        .expect("builds")
        .delete("/posts/1")
        .header("accept", "*/*")
        .send()
        .await;
    works_or(
        "max_response_body 0, tiny body",
        res,
        &[ErrorKind::BodyTooLarge],
    );
}

#[tokio::test]
async fn request_timeouts_at_zero_one_and_max() {
    let api = FakeApi::start().await.expect("start");
    let client = Client::builder(api.url()).build().expect("builds");
    let no_default = Client::builder(api.url())
        .no_timeout()
        .build()
        .expect("builds");

    for c in [&client, &no_default] {
        fails(
            "request timeout 0",
            c.get("/posts/1").timeout(Duration::ZERO).send().await,
            ErrorKind::InvalidRequest,
        );
        works_or(
            "request timeout 1ms",
            c.get("/posts/1").timeout(ONE).send().await,
            &[ErrorKind::Timeout],
        );
        works(
            "request timeout MAX",
            c.get("/posts/1").timeout(Duration::MAX).send().await,
        );
    }
}

#[tokio::test]
async fn endpoint_timeouts_at_zero_one_and_max() {
    let api = FakeApi::start().await.expect("start");
    let with = |d: Duration| {
        Client::builder(api.url())
            .endpoint(Endpoint::new("post", http::Method::GET, "/posts/{id}").timeout(d))
    };
    let call_post =
        |b: ClientBuilder| async move { b.build()?.call("post").path_param("id", 1).send().await };

    fails(
        "endpoint timeout 0",
        call_post(with(Duration::ZERO)).await,
        ErrorKind::Builder,
    );
    works_or(
        "endpoint timeout 1ms",
        call_post(with(ONE)).await,
        &[ErrorKind::Timeout],
    );
    works("endpoint timeout MAX", call_post(with(Duration::MAX)).await);

    let spec = |ms: &str| {
        Client::builder(api.url()).endpoints_json(&format!(
            r#"{{"post": {{"method": "GET", "path": "/posts/{{id}}", "timeout_ms": {ms}}}}}"#
        ))
    };
    fails(
        "timeout_ms 0",
        call_post(spec("0")).await,
        ErrorKind::Builder,
    );
    works_or(
        "timeout_ms 1",
        call_post(spec("1")).await,
        &[ErrorKind::Timeout],
    );
    works(
        "timeout_ms u64::MAX",
        call_post(spec(&u64::MAX.to_string())).await,
    );
    for bad in ["-1", "1.5", "18446744073709551616", "\"10\""] {
        fails(
            &format!("timeout_ms {bad}"),
            call_post(spec(bad)).await,
            ErrorKind::Builder,
        );
    }
}

#[cfg(feature = "toml")]
#[tokio::test]
async fn toml_endpoint_timeouts_at_zero_one_and_max() {
    let api = FakeApi::start().await.expect("start");
    let spec = |ms: &str| {
        Client::builder(api.url()).endpoints_toml(&format!(
            "[post]\nmethod = \"GET\"\npath = \"/posts/{{id}}\"\ntimeout_ms = {ms}\n"
        ))
    };
    let call_post =
        |b: ClientBuilder| async move { b.build()?.call("post").path_param("id", 1).send().await };
    fails(
        "toml timeout_ms 0",
        call_post(spec("0")).await,
        ErrorKind::Builder,
    );
    works_or(
        "toml timeout_ms 1",
        call_post(spec("1")).await,
        &[ErrorKind::Timeout],
    );
    // TOML integers stop at i64::MAX.
    works(
        "toml timeout_ms i64::MAX",
        call_post(spec(&i64::MAX.to_string())).await,
    );
    fails(
        "toml timeout_ms -1",
        call_post(spec("-1")).await,
        ErrorKind::Builder,
    );
}

#[tokio::test]
async fn numeric_path_and_query_values_at_the_extremes() {
    let api = FakeApi::start().await.expect("start");
    let client = Client::builder(api.url()).build().expect("builds");
    for id in [0, 1, u64::MAX] {
        let res = client
            .get("/posts/{id}")
            .path_param("id", id)
            .query(&[("page", u64::MAX)])
            .query(&[("offset", i64::MIN)])
            .send()
            .await
            .expect("sent");
        assert!(res.status() == 200 || res.status() == 404, "{id}");
    }
}

#[cfg(feature = "cache")]
#[tokio::test]
async fn cache_ttls_at_zero_one_and_max() {
    let api = FakeApi::start().await.expect("start");
    for layer_ttl in [Duration::ZERO, ONE, Duration::MAX] {
        let client = Client::builder(api.url())
            .cache(tollgate_cache::CacheLayer::new(layer_ttl))
            .build()
            .expect("builds");
        works(
            &format!("cache layer ttl {layer_ttl:?}"),
            client.get("/posts/1").send().await,
        );
        for ttl in [Duration::ZERO, ONE, Duration::MAX] {
            for _ in 0..2 {
                works(
                    &format!("cache layer ttl {layer_ttl:?}, cache_ttl {ttl:?}"),
                    client.get("/posts/2").cache_ttl(ttl).send().await,
                );
            }
        }
    }
}

#[cfg(feature = "retry")]
#[tokio::test]
async fn retry_attempt_timeout_max_with_retries_on() {
    let api = FakeApi::start().await.expect("start");
    let client = Client::builder(api.url())
        .retry(tollgate_retry::RetryLayer::new())
        .attempt_timeout(Duration::MAX)
        .timeout(Duration::MAX)
        .build()
        .expect("builds");
    works(
        "retry, attempt and total MAX",
        client.get("/posts/1").send().await,
    );
}

#[cfg(feature = "retry")]
#[tokio::test]
async fn retry_max_total_time_at_zero_one_and_max() {
    let api = FakeApi::start().await.expect("start");
    for total in [Duration::ZERO, ONE] {
        let client = Client::builder(api.url())
            .retry(tollgate_retry::RetryLayer::new().max_total_time(total))
            .build()
            .expect("builds");
        works(
            &format!("max_total_time {total:?}"),
            client.get("/posts/1").send().await,
        );
    }
}

#[cfg(feature = "retry")]
#[tokio::test]
async fn retry_max_total_time_max_means_no_limit() {
    let api = FakeApi::start().await.expect("start");
    let client = Client::builder(api.url())
        .retry(tollgate_retry::RetryLayer::new().max_total_time(Duration::MAX))
        .build()
        .expect("builds");
    works("max_total_time MAX", client.get("/posts/1").send().await);
}

/// `BatchSpec`'s counts and delay at 0, 1 and MAX: each lone `load` ends
/// (within a paused hour) with its item or a typed error, and nothing
/// panics. The batcher is `src/batch.rs` and `tollgate-batch`.
#[cfg(feature = "batch")]
#[tokio::test(start_paused = true)]
async fn batch_spec_numbers_at_zero_one_and_max() {
    use tollgate::BatchSpec;

    let api = FakeApi::start().await.expect("start");
    let client = Client::builder(api.url()).build().expect("builds");
    let specs: Vec<(String, BatchSpec)> = [0, 1, usize::MAX]
        .into_iter()
        .flat_map(|n| {
            [
                (
                    format!("max_batch {n}"),
                    BatchSpec::get("/metadata").max_batch(n),
                ),
                (
                    format!("max_in_flight {n}"),
                    BatchSpec::get("/metadata").max_in_flight(n),
                ),
            ]
        })
        .chain([Duration::ZERO, ONE, Duration::MAX].into_iter().map(|d| {
            (
                format!("max_delay {d:?}"),
                BatchSpec::get("/metadata").max_delay(d),
            )
        }))
        .collect();
    let mut wrong = Vec::new();
    for (what, spec) in specs {
        // In a task of its own, so that a panic is reported, not fatal.
        let client = client.clone();
        let task = tokio::spawn(async move {
            let batched = client.batched(spec);
            tokio::time::timeout(Duration::from_secs(3600), batched.load(1)).await
        });
        match task.await {
            Ok(Ok(Ok(item))) if item["id"] == 1 => {}
            Ok(Ok(Err(e)))
                if matches!(e.kind(), ErrorKind::Builder | ErrorKind::InvalidRequest) => {}
            // "Wait for ever for a full batch": a lone item then ends at the
            // client's timeout, a typed error, as any call does.
            Ok(Ok(Err(e)))
                if what == "max_delay 18446744073709551615.999999999s"
                    && e.kind() == ErrorKind::Timeout => {}
            Ok(Ok(other)) => wrong.push(format!("{what}: {other:?}")),
            Ok(Err(_)) => wrong.push(format!("{what}: never ended")),
            Err(e) => wrong.push(format!("{what}: panicked ({e})")),
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

/// The numbers of the layers the facade plugs in (the limit and retry
/// crates'), at 0, 1 and MAX, through a real call: each call ends (within a
/// paused hour) with a response or a typed refusal, and nothing panics.
#[cfg(all(feature = "limit", feature = "retry"))]
#[tokio::test(start_paused = true)]
async fn layer_numbers_at_zero_one_and_max() {
    use tollgate_limit::{ConcurrencyLimitLayer, Quota, RateLimitLayer};
    use tollgate_retry::RetryLayer;

    let api = FakeApi::start().await.expect("start");
    let base = api.url();
    type Make = Box<dyn Fn(ClientBuilder) -> ClientBuilder + Send>;
    let mut cases: Vec<(String, Make)> = Vec::new();
    let durations = [Duration::ZERO, ONE, Duration::MAX];
    for n in [0, 1, usize::MAX] {
        cases.push((
            format!("ConcurrencyLimitLayer::new({n})"),
            Box::new(move |b| b.concurrency_limit(ConcurrencyLimitLayer::new(n))),
        ));
        cases.push((
            format!("max_queue({n})"),
            Box::new(move |b| b.concurrency_limit(ConcurrencyLimitLayer::new(1).max_queue(n))),
        ));
        cases.push((
            format!("max_queue({n})"),
            Box::new(move |b| {
                let quota = Quota::per_second(1).expect("quota");
                b.rate_limit(RateLimitLayer::new(quota).max_queue(n))
            }),
        ));
        cases.push((
            format!("max_keys({n})"),
            Box::new(move |b| {
                let quota = Quota::per_second(1).expect("quota");
                b.rate_limit(RateLimitLayer::new(quota).max_keys(n))
            }),
        ));
    }
    for d in durations {
        cases.push((
            format!("queue_timeout({d:?})"),
            Box::new(move |b| b.concurrency_limit(ConcurrencyLimitLayer::new(1).queue_timeout(d))),
        ));
        cases.push((
            format!("max_wait({d:?})"),
            Box::new(move |b| {
                let quota = Quota::per_second(1).expect("quota");
                b.rate_limit(RateLimitLayer::new(quota).max_wait(d))
            }),
        ));
        cases.push((
            format!("learn_from_upstream(true, {d:?})"),
            Box::new(move |b| {
                let quota = Quota::per_second(1).expect("quota");
                b.rate_limit(RateLimitLayer::new(quota).learn_from_upstream(true, d))
            }),
        ));
        cases.push((
            format!("max_retry_after({d:?})"),
            Box::new(move |b| b.retry(RetryLayer::new().max_retry_after(d))),
        ));
        cases.push((
            format!("max_total_time({d:?})"),
            Box::new(move |b| b.retry(RetryLayer::new().max_total_time(d))),
        ));
        for count in [1, u32::MAX] {
            cases.push((
                format!("Quota::per({count}, {d:?})"),
                Box::new(move |b| match Quota::per(count, d) {
                    Ok(quota) => b.rate_limit(RateLimitLayer::new(quota)),
                    Err(_) => b,
                }),
            ));
            cases.push((
                format!("Quota::window({count}, {d:?})"),
                Box::new(move |b| match Quota::window(count, d) {
                    Ok(quota) => b.rate_limit(RateLimitLayer::new(quota)),
                    Err(_) => b,
                }),
            ));
        }
    }
    for n in [0, 1, u32::MAX] {
        cases.push((
            format!("max_retries({n})"),
            Box::new(move |b| b.retry(RetryLayer::new().max_retries(n))),
        ));
    }
    let refusals = [
        ErrorKind::Builder,
        ErrorKind::InvalidRequest,
        ErrorKind::TooManyPending,
        ErrorKind::PendingTimeout,
        ErrorKind::RateLimited,
        ErrorKind::WaitTooLong,
        ErrorKind::QueueFull,
        ErrorKind::Timeout,
    ];
    let mut wrong = Vec::new();
    for (what, make) in cases {
        let base = base.clone();
        // In a task of its own, so that a panic is reported, not fatal.
        let task = tokio::spawn(async move {
            // The default deadline (30 s) bounds every wait.
            let client = make(Client::builder(base)).build()?;
            // Twice: a limit of one is spent by the first call.
            for _ in 0..2 {
                let call = client.get("/posts/1").send();
                match tokio::time::timeout(Duration::from_secs(3600), call).await {
                    Ok(result) => {
                        result?;
                    }
                    Err(_) => return Ok(Some("never ended")),
                }
            }
            Ok::<_, Error>(None)
        });
        match task.await {
            Ok(Ok(None)) => {}
            Ok(Ok(Some(why))) => wrong.push(format!("{what}: {why}")),
            Ok(Err(e)) if refusals.contains(&e.kind()) => {}
            Ok(Err(e)) => wrong.push(format!("{what}: {e:?}")),
            Err(e) => wrong.push(format!("{what}: panicked ({e})")),
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}
