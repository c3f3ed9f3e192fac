//! Adversarial tests of `Client::batched` (attack 12), over loopback: to
//! FakeApi's `/metadata?id=..`, or to a tiny canned server for answers
//! FakeApi never gives (items twice, out of order, not asked for, odd ids).
//! A test marked `LIMITATION` shows a documented limit; the rest are
//! guards (the adversary's `BROKEN` ones were fixed: a batcher shared
//! across runtimes, and a failed batch's status and `retry_after`).
#![cfg(all(
    feature = "batch",
    feature = "limit",
    feature = "retry",
    feature = "cache"
))]

use std::future::Future;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use http::StatusCode;
use tokio::time::Instant;
use tollgate::{BatchSpec, Client, ErrorKind};
use tollgate_cache::CacheLayer;
use tollgate_limit::{ConcurrencyLimitLayer, Quota, RateLimitLayer};
use tollgate_retry::RetryLayer;
use tollgate_testkit::{response, FakeApi, Fault, Piece, RawServer};

/// A server on 127.0.0.1 answering every request with `answer(query)`
/// (status, JSON body), one request per connection; it records each
/// request (`RawServer::seen`).
async fn canned<F>(answer: F) -> (String, RawServer)
where
    F: Fn(&str) -> (u16, String) + Send + Sync + 'static,
{
    let raw = RawServer::start(move |seen| {
        let target = seen.head.split_whitespace().nth(1).unwrap_or("");
        let query = target.split_once('?').map_or("", |(_, q)| q);
        let (status, body) = answer(query);
        vec![
            Piece::Bytes(response(
                &format!("{status} X"),
                &[
                    ("content-type", "application/json"),
                    ("connection", "close"),
                ],
                body.as_bytes(),
            )),
            Piece::Close,
        ]
    })
    .await;
    (raw.url(), raw)
}

/// The queries a [`canned`] server was asked, in order.
fn queries(raw: &RawServer) -> Vec<String> {
    raw.seen()
        .iter()
        .map(|seen| {
            let target = seen.head.split_whitespace().nth(1).unwrap_or("");
            target.split_once('?').map_or("", |(_, q)| q).to_owned()
        })
        .collect()
}

/// The ids of a query `id=1&id=2`.
fn ids(query: &str) -> Vec<String> {
    query
        .split('&')
        .filter_map(|pair| pair.strip_prefix("id="))
        .map(str::to_owned)
        .collect()
}

// ---------------------------------------------------------------------------
// Runtimes
// ---------------------------------------------------------------------------

/// A `Batched` kept across runtimes (in a `static`, used by several
/// `#[tokio::test]`s): a load polled once on a runtime that then ends
/// leaves the batch's flush timer dead, and every later load on a live
/// runtime joins that batch and is never sent: it ends at the client's
/// timeout, every time, while the server is fine.
#[test]
fn a_batched_endpoint_used_from_a_runtime_that_ended_still_serves_the_next() {
    let live = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("runtime");
    let (api, metadata) = live.block_on(async {
        let api = FakeApi::start().await.expect("fake api");
        let client = Client::builder(api.url())
            .timeout(Duration::from_secs(2))
            .build()
            .expect("client");
        let metadata = client.batched(BatchSpec::get("/metadata"));
        (api, metadata)
    });
    {
        let ended = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        ended.block_on(async {
            let mut load = Box::pin(metadata.load(1));
            let mut cx = Context::from_waker(Waker::noop());
            assert!(matches!(load.as_mut().poll(&mut cx), Poll::Pending));
        });
    }
    live.block_on(async {
        for id in [2, 3] {
            let item = metadata.load(id).await;
            assert!(
                matches!(&item, Ok(v) if v["id"] == id),
                "load({id}) got {item:?}; requests sent: {}",
                api.hits("/metadata")
            );
        }
    });
}

/// Many clones of one `Batched` on a multi-threaded runtime, all at once:
/// each load gets its own item, and they share requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_clones_on_many_threads_each_get_their_own_item() {
    let api = FakeApi::start().await.expect("fake api");
    let client = Client::new(api.url()).expect("client");
    let metadata = client.batched(BatchSpec::get("/metadata").max_batch(25));
    let tasks: Vec<_> = (1..=400u64)
        .map(|id| {
            let metadata = metadata.clone();
            tokio::spawn(async move { (id, metadata.load(id).await) })
        })
        .collect();
    for task in tasks {
        let (id, item) = task.await.expect("task");
        assert_eq!(item.expect("item")["id"], id);
    }
    let hits = api.hits("/metadata");
    assert!((16..400).contains(&hits), "{hits} requests for 400 ids");
}

// ---------------------------------------------------------------------------
// Whole-batch failures
// ---------------------------------------------------------------------------

/// 404, 429 and 500 for the whole batch (no retry): every caller gets the
/// status, once; the next batch goes through.
#[tokio::test(start_paused = true)]
async fn a_whole_batch_answered_404_429_or_500_fails_every_caller_with_its_status() {
    let api = FakeApi::start().await.expect("fake api");
    let client = Client::new(api.url()).expect("client");
    let metadata = client.batched(BatchSpec::get("/metadata"));
    for status in [
        StatusCode::NOT_FOUND,
        StatusCode::TOO_MANY_REQUESTS,
        StatusCode::INTERNAL_SERVER_ERROR,
    ] {
        api.inject("/metadata", Fault::status(status).times(1));
        let (a, b) = tokio::join!(metadata.load(1), metadata.load(2));
        for result in [a, b] {
            let err = result.expect_err("the batch failed");
            assert_eq!(err.kind(), ErrorKind::Status, "{status}: {err}");
        }
        assert_eq!(metadata.load(3).await.expect("next")["id"], 3);
    }
    assert_eq!(api.hits("/metadata"), 6);
}

/// A body cut mid-answer, a malformed body, a connection dropped: every
/// caller of the batch gets one error of the matching kind (never an item,
/// never `NotInBatch`), and the next batch goes through.
#[tokio::test(start_paused = true)]
async fn a_cut_malformed_or_dropped_answer_fails_every_caller_once() {
    let api = FakeApi::start().await.expect("fake api");
    let client = Client::new(api.url()).expect("client");
    let metadata = client.batched(BatchSpec::get("/metadata"));
    for (fault, kinds) in [
        (
            Fault::cut_body(),
            &[ErrorKind::Body, ErrorKind::Transport][..],
        ),
        (Fault::malformed_json(), &[ErrorKind::Decode][..]),
        (Fault::drop_connection(), &[ErrorKind::Transport][..]),
    ] {
        api.inject("/metadata", fault.times(1));
        let (a, b, c) = tokio::join!(metadata.load(1), metadata.load(2), metadata.load(1));
        let mut seen = Vec::new();
        for result in [a, b, c] {
            let err = result.expect_err("the batch failed");
            assert!(kinds.contains(&err.kind()), "{kinds:?}: {err}");
            seen.push(err.kind());
        }
        assert!(seen.windows(2).all(|w| w[0] == w[1]), "{seen:?}");
        assert_eq!(metadata.load(3).await.expect("next")["id"], 3);
    }
}

/// An answer whose body stalls: every caller ends at the client's timeout
/// (counted from its load), with `Timeout`.
#[tokio::test(start_paused = true)]
async fn a_stalled_answer_ends_every_caller_at_the_client_timeout() {
    let api = FakeApi::start().await.expect("fake api");
    api.inject("/metadata", Fault::stall_body());
    let client = Client::builder(api.url())
        .timeout(Duration::from_secs(2))
        .build()
        .expect("client");
    let metadata = client.batched(BatchSpec::get("/metadata"));
    let started = Instant::now();
    let (a, b) = tokio::join!(metadata.load(1), metadata.load(2));
    for result in [a, b] {
        assert_eq!(result.expect_err("stalled").kind(), ErrorKind::Timeout);
    }
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(2) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
}

// ---------------------------------------------------------------------------
// Composition
// ---------------------------------------------------------------------------

/// A batch answered 503 then retried: each caller gets its item once, from
/// the second request.
#[tokio::test(start_paused = true)]
async fn a_retried_batch_answers_each_caller_once() {
    let api = FakeApi::start().await.expect("fake api");
    api.inject(
        "/metadata",
        Fault::status(StatusCode::SERVICE_UNAVAILABLE).times(1),
    );
    let client = Client::builder(api.url())
        .retry(RetryLayer::new().seed(7))
        .build()
        .expect("client");
    let metadata = client.batched(BatchSpec::get("/metadata"));
    let (a, b, a_again) = tokio::join!(metadata.load(1), metadata.load(2), metadata.load(1));
    assert_eq!(a.expect("1")["id"], 1);
    assert_eq!(b.expect("2")["id"], 2);
    assert_eq!(a_again.expect("1 again")["id"], 1);
    assert_eq!(api.hits("/metadata"), 2, "one batch, one retry");
}

/// The rate limiter in reject mode: a batch is one call for the quota, and
/// a refused batch fails each of its callers with `RateLimited`, nothing
/// sent; the next second's batch goes.
#[tokio::test(start_paused = true)]
async fn a_batch_is_one_permit_and_a_refused_batch_fails_each_caller_cleanly() {
    let api = FakeApi::start().await.expect("fake api");
    let client = Client::builder(api.url())
        .rate_limit(RateLimitLayer::new(Quota::per_second(1).expect("quota")).reject())
        .build()
        .expect("client");
    let metadata = client.batched(BatchSpec::get("/metadata").max_batch(3));
    let (a, b, c) = tokio::join!(metadata.load(1), metadata.load(2), metadata.load(3));
    assert_eq!(
        (
            a.expect("1")["id"].clone(),
            b.expect("2")["id"].clone(),
            c.expect("3")["id"].clone()
        ),
        (1.into(), 2.into(), 3.into())
    );
    let (d, e) = tokio::join!(metadata.load(4), metadata.load(5));
    for refused in [d, e] {
        let err = refused.expect_err("over the quota");
        assert_eq!(err.kind(), ErrorKind::RateLimited, "{err}");
    }
    assert_eq!(api.hits("/metadata"), 1, "the refused batch was not sent");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(metadata.load(4).await.expect("4")["id"], 4);
}

/// The concurrency pool with no queue under two batches at once: the batch
/// that gets the slot answers its callers, the refused one fails each of
/// its callers with the pool's error; none hangs.
#[tokio::test(start_paused = true)]
async fn a_batch_refused_by_the_pool_fails_its_callers_and_the_other_answers() {
    let api = FakeApi::start().await.expect("fake api");
    api.inject(
        "/metadata",
        Fault::latency(Duration::from_millis(500)).times(1),
    );
    let client = Client::builder(api.url())
        .concurrency_limit(ConcurrencyLimitLayer::new(1).max_queue(0))
        .build()
        .expect("client");
    let metadata = client.batched(BatchSpec::get("/metadata").max_batch(2));
    let (a, b, c, d) = tokio::join!(
        metadata.load(1),
        metadata.load(2),
        metadata.load(3),
        metadata.load(4)
    );
    assert_eq!(a.expect("1")["id"], 1);
    assert_eq!(b.expect("2")["id"], 2);
    for refused in [c, d] {
        let err = refused.expect_err("no slot");
        assert_eq!(err.kind(), ErrorKind::TooManyPending, "{err}");
    }
    assert_eq!(api.hits("/metadata"), 1);
}

/// The cache under the batcher: a batch asked again (same ids, same order)
/// is answered from the cache, each caller its own item.
#[tokio::test(start_paused = true)]
async fn a_cached_batch_gives_each_caller_its_own_item() {
    let api = FakeApi::start().await.expect("fake api");
    let client = Client::builder(api.url())
        .cache(CacheLayer::new(Duration::from_secs(60)))
        .build()
        .expect("client");
    let metadata = client.batched(BatchSpec::get("/metadata"));
    for _ in 0..2 {
        let (a, b) = tokio::join!(metadata.load(1), metadata.load(2));
        assert_eq!(a.expect("1")["id"], 1);
        assert_eq!(b.expect("2")["id"], 2);
    }
    assert_eq!(api.hits("/metadata"), 1, "the second batch was a cache hit");
}

// ---------------------------------------------------------------------------
// Odd answers
// ---------------------------------------------------------------------------

/// Items out of order, each twice, an item not asked for, an item without
/// an id, one id as a string, one id left out: each caller gets its own
/// item or `NotInBatch`, never another's.
#[tokio::test(start_paused = true)]
async fn odd_answers_give_each_caller_its_own_item_or_not_in_batch() {
    let (url, seen) = canned(|query| {
        let mut items = vec![
            r#"{"id": 999999, "name": "not asked"}"#.to_owned(),
            r#"{"name": "no id"}"#.to_owned(),
            r#"{"id": null}"#.to_owned(),
        ];
        for id in ids(query).iter().rev().filter(|id| *id != "5") {
            let item = if id == "7" {
                format!(r#"{{"id": "{id}", "name": "item-{id}"}}"#)
            } else {
                format!(r#"{{"id": {id}, "name": "item-{id}"}}"#)
            };
            items.push(item.clone());
            items.push(item);
        }
        (200, format!(r#"{{"items": [{}]}}"#, items.join(",")))
    })
    .await;
    let client = Client::new(url).expect("client");
    let metadata = client.batched(BatchSpec::get("/metadata"));
    let (one, two, five, seven, one_again) = tokio::join!(
        metadata.load(1),
        metadata.load(2),
        metadata.load(5),
        metadata.load(7),
        metadata.load("1")
    );
    assert_eq!(one.expect("1")["name"], "item-1");
    assert_eq!(two.expect("2")["name"], "item-2");
    assert_eq!(seven.expect("7")["name"], "item-7");
    assert_eq!(one_again.expect("1 again")["name"], "item-1");
    assert_eq!(five.expect_err("left out").kind(), ErrorKind::NotInBatch);
    assert_eq!(queries(&seen), vec!["id=1&id=2&id=5&id=7"]);
}

/// An empty list of items, an answer without the list, a list that is not
/// where the spec says: `NotInBatch` for the first (the call succeeded, no
/// item), `Decode` for the others; never a success.
#[tokio::test(start_paused = true)]
async fn empty_and_shapeless_answers_are_errors_for_every_caller() {
    for (body, kind) in [
        (r#"{"items": []}"#, ErrorKind::NotInBatch),
        (r"{}", ErrorKind::Decode),
        (r#"{"items": {"id": 1}}"#, ErrorKind::Decode),
        (r#"[{"id": 1}]"#, ErrorKind::Decode),
    ] {
        let (url, _) = canned(move |_| (200, body.to_owned())).await;
        let client = Client::new(url).expect("client");
        let metadata = client.batched(BatchSpec::get("/metadata"));
        let (a, b) = tokio::join!(metadata.load(1), metadata.load(2));
        for result in [a, b] {
            let err = result.expect_err(body);
            assert_eq!(err.kind(), kind, "{body}: {err}");
        }
    }
}

/// An id past `u64` (a 30-digit number), answered as a JSON number with
/// the very digits asked for. The docs say ids are "a number or a string,
/// compared as text", but serde_json reads the number as an `f64` and
/// `Number::to_string` gives `1.2345678901234568e29`, so the item the
/// server sent is reported `NotInBatch`: a present item said missing.
#[tokio::test(start_paused = true)]
#[ignore = "LIMITATION: BatchSpec docs: a numeric id past 64 bits is read as a float by serde_json and never matched (NotInBatch, never another item)"]
async fn an_id_past_u64_answered_as_a_number_is_found() {
    const BIG: &str = "123456789012345678901234567890";
    let (url, _) = canned(|query| {
        let items: Vec<String> = ids(query)
            .iter()
            .map(|id| format!(r#"{{"id": {id}, "name": "item-{id}"}}"#))
            .collect();
        (200, format!(r#"{{"items": [{}]}}"#, items.join(",")))
    })
    .await;
    let client = Client::new(url).expect("client");
    let metadata = client.batched(BatchSpec::get("/metadata"));
    let (small, big) = tokio::join!(metadata.load(42), metadata.load(BIG));
    assert_eq!(small.expect("42")["name"], "item-42");
    let big = big.map(|item| item["name"].clone());
    assert!(
        matches!(&big, Ok(name) if *name == format!("item-{BIG}")),
        "{big:?}"
    );
}

/// An id carrying `&`, `=` and a space is sent as one query value (not
/// smuggled in as a second id) and finds nothing; the plain id next to it
/// gets its item.
#[tokio::test(start_paused = true)]
async fn an_id_with_query_syntax_is_one_value_and_takes_no_other_item() {
    let api = FakeApi::start().await.expect("fake api");
    let client = Client::new(api.url()).expect("client");
    let metadata = client.batched(BatchSpec::get("/metadata"));
    let (sneaky, plain) = tokio::join!(metadata.load("3&id=4 x"), metadata.load(5));
    assert_eq!(
        sneaky.expect_err("no such id").kind(),
        ErrorKind::NotInBatch
    );
    assert_eq!(plain.expect("5")["id"], 5);
    let seen = api.last_request("/metadata").expect("seen");
    let query = seen.uri.query().expect("query").to_owned();
    assert_eq!(query.matches("id=").count(), 2, "{query}");
    assert!(!query.contains("id=4"), "{query}");
}

/// One caller past the batcher's 10 000 pending callers is refused at once
/// with `TooManyPending`, and nothing is buffered for it.
#[tokio::test(start_paused = true)]
async fn a_flood_past_ten_thousand_pending_loads_is_refused_typed_at_once() {
    let api = FakeApi::start().await.expect("fake api");
    let client = Client::new(api.url()).expect("client");
    let metadata = client.batched(
        BatchSpec::get("/metadata")
            .max_batch(usize::MAX)
            .max_delay(Duration::from_secs(3600)),
    );
    let mut cx = Context::from_waker(Waker::noop());
    let mut loads = Vec::new();
    for id in 0..tollgate_batch::DEFAULT_MAX_PENDING {
        let mut load = Box::pin(metadata.load(id));
        assert!(load.as_mut().poll(&mut cx).is_pending(), "load {id}");
        loads.push(load);
    }
    let mut refused = Box::pin(metadata.load("one too many"));
    match refused.as_mut().poll(&mut cx) {
        Poll::Ready(Err(err)) => assert_eq!(err.kind(), ErrorKind::TooManyPending, "{err}"),
        other => panic!("{other:?}"),
    }
    drop(loads);
    assert_eq!(api.hits("/metadata"), 0);
    // The places are free again: the next load waits (is not refused).
    let mut again = Box::pin(metadata.load(7));
    assert!(again.as_mut().poll(&mut cx).is_pending(), "a place again");
}

/// `BatchSpec` numbers at 0, 1 and MAX (batch size, linger, batches in
/// flight): each a real load that gets its item.
#[tokio::test(start_paused = true)]
async fn batch_spec_numbers_at_zero_one_and_max_each_answer() {
    let api = FakeApi::start().await.expect("fake api");
    let client = Client::builder(api.url())
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    for max_batch in [0, 1, usize::MAX] {
        for max_delay in [Duration::ZERO, Duration::from_millis(1)] {
            for max_in_flight in [0, 1, usize::MAX] {
                let metadata = client.batched(
                    BatchSpec::get("/metadata")
                        .max_batch(max_batch)
                        .max_delay(max_delay)
                        .max_in_flight(max_in_flight),
                );
                let (a, b) = tokio::join!(metadata.load(1), metadata.load(2));
                let case = format!("{max_batch} {max_delay:?} {max_in_flight}");
                assert_eq!(a.expect(&case)["id"], 1, "{case}");
                assert_eq!(b.expect(&case)["id"], 2, "{case}");
            }
        }
    }
}

/// A whole batch answered 404, 429 or 503 (no retry): each caller's error
/// is `Status`, and `Error::status` ("the response status, for
/// `ErrorKind::Status`") must say which, or the caller cannot tell an
/// unknown endpoint (404) from "slow down" (429) from a passing outage.
#[tokio::test(start_paused = true)]
async fn a_failed_batch_tells_each_caller_its_status() {
    let api = FakeApi::start().await.expect("fake api");
    let client = Client::new(api.url()).expect("client");
    let metadata = client.batched(BatchSpec::get("/metadata"));
    for status in [
        StatusCode::NOT_FOUND,
        StatusCode::TOO_MANY_REQUESTS,
        StatusCode::SERVICE_UNAVAILABLE,
    ] {
        api.inject("/metadata", Fault::status(status).times(1));
        let (a, b) = tokio::join!(metadata.load(1), metadata.load(2));
        for result in [a, b] {
            let err = result.expect_err("the batch failed");
            assert_eq!(err.kind(), ErrorKind::Status, "{err}");
            assert_eq!(err.status(), Some(status), "{err:?}");
        }
    }
}

/// A batch refused by the rate limiter in reject mode: each caller's
/// `RateLimited` error must carry `retry_after` ("when the rate limiter (in
/// reject mode) admits a request again"), as a plain request's does.
#[tokio::test(start_paused = true)]
async fn a_rate_limited_batch_tells_each_caller_when_to_retry() {
    let api = FakeApi::start().await.expect("fake api");
    let client = Client::builder(api.url())
        .rate_limit(RateLimitLayer::new(Quota::per_second(1).expect("quota")).reject())
        .build()
        .expect("client");
    client.get("/posts/1").send().await.expect("the one permit");
    let plain = client.get("/posts/2").send().await.expect_err("refused");
    assert_eq!(plain.kind(), ErrorKind::RateLimited);
    assert!(plain.retry_after().is_some(), "a plain request: {plain:?}");
    let metadata = client.batched(BatchSpec::get("/metadata"));
    let (a, b) = tokio::join!(metadata.load(1), metadata.load(2));
    for result in [a, b] {
        let err = result.expect_err("refused");
        assert_eq!(err.kind(), ErrorKind::RateLimited, "{err}");
        assert!(err.retry_after().is_some(), "a batched load: {err:?}");
    }
}
