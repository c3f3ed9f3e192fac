//! A walk through what the Tollgate facade does, against the embedded fake API.
//!
//! ```text
//! cargo run --example demo                       # starts FakeApi on 127.0.0.1
//! cargo run --example demo -- --base-url URL     # an API shaped like JSONPlaceholder
//!                                                # (every step that needs no fault
//!                                                # injection: all but retry and auth)
//! RUST_LOG=tollgate=debug cargo run --example demo   # with the request spans
//! ```
//!
//! Exits non-zero if any step does not behave as shown, so CI runs it as a
//! smoke test.
#![allow(clippy::print_stdout, clippy::print_stderr, reason = "a demo prints")]

use std::process::ExitCode;
use std::time::Duration;

use tokio::time::Instant;

use serde::Deserialize;
use serde_json::json;
use tollgate::{BatchSpec, Client, ErrorKind};
use tollgate_cache::{CacheLayer, CacheStatus};
use tollgate_limit::{ConcurrencyLimitLayer, Quota, RateLimitLayer};
use tollgate_retry::{RetryLayer, RetryRecord};
use tollgate_testkit::{FakeApi, Fault};

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Post {
    id: u64,
    user_id: u64,
    title: String,
}

type Failure = Box<dyn std::error::Error>;

fn print_retries(res: &tollgate::ApiResponse) {
    println!(
        "status {}  attempts {}  in {:.1?}",
        res.status(),
        res.summary().attempts,
        res.elapsed()
    );
    if let Some(record) = res.extensions().get::<RetryRecord>() {
        for (n, retry) in record.retries.iter().enumerate() {
            let source = if retry.from_retry_after {
                "Retry-After"
            } else {
                "backoff"
            };
            println!(
                "  retry {}: after {} waited {:.0?} ({source})",
                n + 1,
                retry.reason,
                retry.delay
            );
        }
    }
}

fn section(title: &str) {
    println!("\n== {title}");
}

fn check(ok: bool, what: &str) -> Result<(), Failure> {
    if ok {
        Ok(())
    } else {
        Err(format!("unexpected: {what}").into())
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();

    let mut args = std::env::args().skip(1);
    let mut base_url = None;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--base-url" => base_url = args.next(),
            "-h" | "--help" => {
                println!("usage: demo [--base-url URL]");
                return ExitCode::SUCCESS;
            }
            other => {
                eprintln!("unknown argument `{other}`; usage: demo [--base-url URL]");
                return ExitCode::from(2);
            }
        }
    }
    match run(base_url).await {
        Ok(()) => {
            println!("\nAll demo steps behaved as expected.");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("\ndemo failed: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(base_url: Option<String>) -> Result<(), Failure> {
    // The fake API lives as long as this function; with --base-url there is none.
    let fake = match base_url {
        Some(_) => None,
        None => Some(FakeApi::start().await?),
    };
    let base = match (&fake, base_url) {
        (Some(api), _) => api.url(),
        (None, Some(url)) => url,
        (None, None) => unreachable!("one of the two is set above"),
    };
    println!(
        "Tollgate demo against {base}{}",
        if fake.is_some() {
            " (embedded FakeApi)"
        } else {
            ""
        }
    );
    let client = Client::builder(&base)
        .timeout(Duration::from_secs(10))
        .retry(RetryLayer::new())
        .build()?;

    section("GET /posts/1");
    let res = client.get("/posts/{id}").path_param("id", 1).send().await?;
    let post: Post = res.error_for_status_ref()?.json()?;
    println!(
        "status {}  in {:.1?}  attempts {}  from cache {}",
        res.status(),
        res.elapsed(),
        res.summary().attempts,
        res.summary().from_cache
    );
    println!(
        "post {} by user {}: {:?}",
        post.id, post.user_id, post.title
    );
    check(post.id == 1, "post 1 has id 1")?;

    section("POST /posts");
    let created = client
        .post("/posts")
        .json(&json!({"title": "tollgate", "body": "hello", "userId": 1}))
        .send()
        .await?;
    let id = created.data()?["id"].clone();
    println!("status {}  new id {id}", created.status());
    check(created.status() == 201, "POST answers 201 Created")?;

    section("5 concurrent GETs, one client");
    let started = Instant::now();
    let calls: Vec<_> = (1..=5)
        .map(|id| {
            let client = client.clone();
            tokio::spawn(async move {
                let t = Instant::now();
                let post = client.get_json::<Post>(format!("/posts/{id}")).await;
                (id, post, t.elapsed())
            })
        })
        .collect();
    for call in calls {
        let (id, post, took) = call.await?;
        let post = post?;
        println!("  /posts/{id}  {took:>9.1?}  {:?}", post.title);
    }
    println!("all 5 in {:.1?}", started.elapsed());

    section("GET /posts/9999 (missing): a typed error");
    let err = client
        .get_json::<Post>("/posts/9999")
        .await
        .err()
        .ok_or("a missing post should be an error")?;
    println!("kind {:?}  status {:?}", err.kind(), err.status());
    println!("error: {err}");
    check(
        err.kind() == ErrorKind::Status && err.status().map(|s| s.as_u16()) == Some(404),
        "404 Status error",
    )?;

    section("Refused before anything is sent");
    let err = client
        .get("https://elsewhere.example/steal")
        .send()
        .await
        .err()
        .ok_or("must refuse")?;
    println!("absolute URL to another origin -> {:?}: {err}", err.kind());
    check(err.kind() == ErrorKind::InvalidUrl, "InvalidUrl")?;
    let err = client
        .get("/users/{id}")
        .path_param("id", "..")
        .send()
        .await
        .err()
        .ok_or("must refuse")?;
    println!("path parameter `..`            -> {:?}: {err}", err.kind());
    check(err.kind() == ErrorKind::InvalidRequest, "InvalidRequest")?;
    let err = client
        .get("/posts/1")
        .header("x-note", "a\r\nInjected: 1")
        .send()
        .await
        .err()
        .ok_or("must refuse")?;
    println!("header value with CR LF        -> {:?}: {err}", err.kind());
    check(err.kind() == ErrorKind::InvalidRequest, "InvalidRequest")?;

    if let Some(api) = &fake {
        section("A hung upstream meets the deadline (FakeApi adds 5 s of latency)");
        api.inject("/posts/2", Fault::latency(Duration::from_secs(5)).times(1));
        let started = Instant::now();
        let err = client
            .get("/posts/2")
            .timeout(Duration::from_millis(300))
            .send()
            .await
            .err()
            .ok_or("should time out")?;
        println!("after {:.0?}: {:?}: {err}", started.elapsed(), err.kind());
        check(err.is_timeout(), "Timeout")?;

        section("Malformed JSON: a Decode error that keeps the body");
        api.inject("/posts/3", Fault::malformed_json().times(1));
        let res = client.get("/posts/3").send().await?;
        let err = res.json::<Post>().err().ok_or("should not decode")?;
        println!(
            "{:?}: {err}\nbody starts: {:?}",
            err.kind(),
            err.body_snippet().unwrap_or_default()
        );
        check(err.is_decode(), "Decode")?;

        section("Retry: a flaky endpoint (FakeApi fails the next 2 requests with 503)");
        api.inject(
            "/posts/4",
            Fault::status(http::StatusCode::SERVICE_UNAVAILABLE).times(2),
        );
        let before = api.hits("/posts/4");
        let res = client.get("/posts/4").send().await?;
        print_retries(&res);
        check(
            res.status() == 200 && res.summary().attempts == 3,
            "200 on the third attempt",
        )?;
        println!(
            "FakeApi saw {} requests for /posts/4",
            api.hits("/posts/4") - before
        );

        section("Retry: a 429 with Retry-After: 1 is waited out");
        api.inject(
            "/posts/5",
            Fault::status(http::StatusCode::TOO_MANY_REQUESTS)
                .times(1)
                .retry_after("1"),
        );
        let started = Instant::now();
        let res = client.get("/posts/5").send().await?;
        print_retries(&res);
        println!("answered after {:.2?}", started.elapsed());
        check(
            res.status() == 200 && started.elapsed() >= Duration::from_secs(1),
            "waited the server's 1 s, then 200",
        )?;

        section("Retry: a POST is never retried without an idempotency key");
        api.inject(
            "/posts",
            Fault::status(http::StatusCode::SERVICE_UNAVAILABLE).times(1),
        );
        let before = api.hits("/posts");
        let res = client
            .post("/posts")
            .json(&json!({"title": "once"}))
            .send()
            .await?;
        let seen = api.hits("/posts") - before;
        println!(
            "status {}  attempts {}  (FakeApi saw {seen} POST)",
            res.status(),
            res.summary().attempts
        );
        check(res.summary().attempts == 1 && seen == 1, "one attempt")?;
    }

    // The next three steps need no fault injection: they run against a
    // real API too (`--base-url`), with FakeApi's counts checked only here.
    section("Rate limit: 6 GETs under \"at most 2 in any 500 ms\"");
    {
        let paced = Client::builder(&base)
            .rate_limit(RateLimitLayer::new(Quota::window(
                2,
                Duration::from_millis(500),
            )?))
            .build()?;
        let started = Instant::now();
        let mut waited = Vec::new();
        let mut admitted = Vec::new();
        for id in 1..=6 {
            let asked = Instant::now();
            let res = paced.get(format!("/users/{id}")).send().await?;
            let wait = res.summary().permit_wait;
            waited.push(wait);
            admitted.push(asked + wait);
            println!(
                "  GET /users/{id}: status {}  waited {:>6.0?} for a permit  at +{:.0?}",
                res.status(),
                wait,
                started.elapsed()
            );
        }
        // Whatever the upstream's latency: no 3 admissions within 500 ms
        // (a few ms of slack for the timer's granularity).
        check(
            admitted
                .windows(3)
                .all(|w| w[2] - w[0] >= Duration::from_millis(495)),
            "never 3 permits within 500 ms",
        )?;
        if fake.is_some() {
            check(
                waited
                    .iter()
                    .filter(|w| **w >= Duration::from_millis(400))
                    .count()
                    == 2,
                "the third and fifth calls waited for the next window",
            )?;
        }
    }

    section("Concurrency pool: 6 calls through 2 slots");
    {
        if let Some(api) = &fake {
            println!("(FakeApi takes 200 ms per call)");
            api.inject("/comments/*", Fault::latency(Duration::from_millis(200)));
        }
        let pooled = Client::builder(&base)
            .concurrency_limit(ConcurrencyLimitLayer::new(2).max_queue(8))
            .build()?;
        let started = Instant::now();
        let calls: Vec<_> = (1..=6)
            .map(|id| {
                let pooled = pooled.clone();
                tokio::spawn(async move { pooled.get(format!("/comments/{id}")).send().await })
            })
            .collect();
        let mut queued = 0;
        for (n, call) in calls.into_iter().enumerate() {
            let res = call.await??;
            let wait = res.summary().queue_wait;
            queued += usize::from(!wait.is_zero());
            println!(
                "  call {}: status {}  waited {:>7.0?} for a slot  took {:.0?}",
                n + 1,
                res.status(),
                wait,
                res.elapsed()
            );
        }
        println!("all 6 in {:.2?}", started.elapsed());
        if fake.is_some() {
            check(
                queued == 4,
                "4 of the 6 calls waited for one of the 2 slots",
            )?;
        } else {
            println!("{queued} of the 6 calls waited for one of the 2 slots");
        }
    }

    section("Cache: a miss, a hit, and a burst of 20 concurrent GETs for one URL");
    {
        if let Some(api) = &fake {
            api.inject("/users/*", Fault::latency(Duration::from_millis(50)));
        }
        let hits = |path: &str| fake.as_ref().map_or(0, |api| api.hits(path));
        let cache = CacheLayer::new(Duration::from_secs(60));
        let cached = Client::builder(&base).cache(cache.clone()).build()?;
        let (before2, before3) = (hits("/users/2"), hits("/users/3"));
        let first = cached.get("/users/2").send().await?;
        let second = cached.get("/users/2").send().await?;
        for (name, res) in [("first", &first), ("second", &second)] {
            println!(
                "  {name} GET /users/2: {}  cache {:?}  attempts {}  took {:.2?}",
                res.status(),
                res.summary().cache,
                res.summary().attempts,
                res.elapsed()
            );
        }
        check(
            second.summary().cache == Some(CacheStatus::Hit),
            "the second GET was a hit",
        )?;
        if fake.is_some() {
            check(
                hits("/users/2") - before2 == 1,
                "FakeApi saw one request for the two GETs",
            )?;
        }
        let started = Instant::now();
        let burst: Vec<_> = (0..20)
            .map(|_| {
                let cached = cached.clone();
                tokio::spawn(async move { cached.get("/users/3").send().await })
            })
            .collect();
        let mut fetched = 0;
        for call in burst {
            let res = call.await??.error_for_status()?;
            fetched += usize::from(res.summary().cache == Some(CacheStatus::Miss));
        }
        println!(
            "  20 concurrent GETs /users/3 in {:.2?}: {fetched} fetched upstream; cache stats {:?}",
            started.elapsed(),
            cache.stats()
        );
        check(fetched == 1, "the burst was one upstream request")?;
        if fake.is_some() {
            check(
                hits("/users/3") - before3 == 1,
                "FakeApi saw one request for the burst",
            )?;
        }
    }

    if let Some(api) = &fake {
        api.clear_faults();

        section("Batching: single-id lookups against an endpoint limited to 10 calls/s");
        let limited = || -> Result<Client, Failure> {
            Ok(Client::builder(api.url())
                .rate_limit(RateLimitLayer::new(Quota::per_second(10)?))
                .build()?)
        };
        let metadata = limited()?.batched(BatchSpec::get("/metadata").max_batch(50));
        let before = api.hits("/metadata");
        let started = Instant::now();
        let calls: Vec<_> = (1..=200u64)
            .map(|id| {
                let metadata = metadata.clone();
                tokio::spawn(async move { metadata.load(id).await })
            })
            .collect();
        for call in calls {
            call.await??;
        }
        let batched_calls = api.hits("/metadata") - before;
        println!(
            "  batched:   200 ids in {batched_calls} requests, {:.2?}",
            started.elapsed()
        );
        let single = limited()?;
        let before = api.hits("/metadata");
        let started = Instant::now();
        let calls: Vec<_> = (1..=30u64)
            .map(|id| {
                let single = single.clone();
                tokio::spawn(
                    async move { single.get("/metadata").query(&[("id", id)]).send().await },
                )
            })
            .collect();
        for call in calls {
            call.await??.error_for_status()?;
        }
        println!(
            "  unbatched:  30 ids in {} requests, {:.2?} (200 would take about 20 s)",
            api.hits("/metadata") - before,
            started.elapsed()
        );
        check(
            batched_calls == 4,
            "200 single-id calls made 4 batched requests",
        )?;

        section("Auth: FakeApi now requires a bearer token");
        api.require_bearer("demo-s3cret");
        let anonymous = client.get("/posts/1").send().await?;
        let authed = Client::builder(api.url())
            .bearer_auth("demo-s3cret")
            .build()?;
        let with_token = authed.get("/posts/1").send().await?;
        println!(
            "without a credential: {}; with bearer_auth: {}",
            anonymous.status(),
            with_token.status()
        );
        println!("Debug of that client: {authed:?}");
        check(
            anonymous.status() == 401 && with_token.status() == 200,
            "401 without the token, 200 with it",
        )?;
        check(
            !format!("{authed:?}").contains("demo-s3cret"),
            "the token is not in the client's Debug output",
        )?;

        section("Auth: OAuth2 client credentials, refreshed after the server revokes the token");
        api.issue_tokens("demo-client", "demo-client-secret", 3600);
        let oauth = Client::builder(api.url())
            .oauth2_client_credentials(
                format!("{}/oauth/token", api.url()),
                "demo-client",
                "demo-client-secret",
            )
            .build()?;
        let calls: Vec<_> = (1..=5)
            .map(|id| {
                let oauth = oauth.clone();
                tokio::spawn(async move { oauth.get(format!("/users/{id}")).send().await })
            })
            .collect();
        for call in calls {
            call.await??.error_for_status()?;
        }
        println!(
            "5 concurrent calls with no token yet: {} token grant(s)",
            api.hits("/oauth/token")
        );
        check(api.hits("/oauth/token") == 1, "one grant served all five")?;
        api.revoke_tokens();
        let before = api.hits("/users/1");
        let after_refresh = oauth.get("/users/1").send().await?;
        println!(
            "after the revocation: status {} (the server saw {} requests: a 401, then the replay), {} grants in all",
            after_refresh.status(),
            api.hits("/users/1") - before,
            api.hits("/oauth/token")
        );
        check(
            after_refresh.status() == 200 && api.hits("/oauth/token") == 2,
            "a 401 led to one refresh and one replay",
        )?;
        api.allow_anonymous();

        println!("\nFakeApi received {} requests in all.", api.total_hits());
    }

    section("The structured record of a response (ApiResponse::to_json)");
    let res = client.get("/users/1").send().await?;
    let mut record = res.to_json();
    record["headers"] = json!("(omitted here)");
    println!("{}", serde_json::to_string_pretty(&record)?);
    Ok(())
}
