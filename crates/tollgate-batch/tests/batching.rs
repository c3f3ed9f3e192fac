//! The batcher's rules, with tokio's clock paused: flush by size and by
//! delay, duplicates, missing items, failures, dropped callers, batches in
//! flight at once, and a property: every caller gets its own item.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proptest::prelude::*;
use tokio::time::Instant;
use tollgate_batch::{BatchError, BatchLayer};
use tower::{service_fn, BoxError, Layer, ServiceExt};

type Calls = Arc<Mutex<Vec<(Vec<u64>, Instant)>>>;

/// A batch service answering `id * 10` for every id but 13 (missing), after
/// `delay`, recording each batch and when it was called.
fn upstream(
    delay: Duration,
) -> (
    Calls,
    impl tower::Service<Vec<u64>, Response = HashMap<u64, u64>, Error = BoxError, Future = impl Send>
        + Clone
        + Send
        + 'static,
) {
    let calls: Calls = Arc::default();
    let c = calls.clone();
    let service = service_fn(move |ids: Vec<u64>| {
        c.lock().expect("lock").push((ids.clone(), Instant::now()));
        async move {
            tokio::time::sleep(delay).await;
            if ids.contains(&666) {
                return Err::<HashMap<u64, u64>, BoxError>("upstream exploded".into());
            }
            Ok(ids
                .into_iter()
                .filter(|id| *id != 13)
                .map(|id| (id, id * 10))
                .collect())
        }
    });
    (calls, service)
}

#[tokio::test(start_paused = true)]
async fn a_partial_batch_waits_exactly_max_delay() {
    let (calls, upstream) = upstream(Duration::ZERO);
    let batcher = BatchLayer::new(50, Duration::from_millis(20)).layer(upstream);
    let started = Instant::now();
    let (a, b, c) = tokio::join!(
        batcher.clone().oneshot(1),
        batcher.clone().oneshot(2),
        batcher.clone().oneshot(3)
    );
    assert_eq!((a.expect("a"), b.expect("b"), c.expect("c")), (10, 20, 30));
    let calls = calls.lock().expect("lock");
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].0, vec![1, 2, 3]);
    assert_eq!(calls[0].1 - started, Duration::from_millis(20));
}

#[tokio::test(start_paused = true)]
async fn a_full_batch_goes_at_once() {
    let (calls, upstream) = upstream(Duration::ZERO);
    let batcher = BatchLayer::new(4, Duration::from_secs(60)).layer(upstream);
    let started = Instant::now();
    let results: Vec<_> = futures_join((1..=8).map(|id| batcher.clone().oneshot(id))).await;
    assert_eq!(
        results
            .into_iter()
            .map(|r| r.expect("item"))
            .collect::<Vec<_>>(),
        vec![10, 20, 30, 40, 50, 60, 70, 80]
    );
    let calls = calls.lock().expect("lock");
    assert_eq!(
        calls.iter().map(|c| c.0.clone()).collect::<Vec<_>>(),
        vec![vec![1, 2, 3, 4], vec![5, 6, 7, 8]]
    );
    assert!(
        calls.iter().all(|c| c.1 == started),
        "no waiting for the delay"
    );
}

#[tokio::test(start_paused = true)]
async fn duplicates_are_asked_once_and_answered_to_all() {
    let (calls, upstream) = upstream(Duration::ZERO);
    let batcher = BatchLayer::new(50, Duration::from_millis(5)).layer(upstream);
    let results = futures_join(
        [7, 7, 8, 7]
            .into_iter()
            .map(|id| batcher.clone().oneshot(id)),
    )
    .await;
    let values: Vec<u64> = results.into_iter().map(|r| r.expect("item")).collect();
    assert_eq!(values, vec![70, 70, 80, 70]);
    assert_eq!(calls.lock().expect("lock")[0].0, vec![7, 8]);
}

#[tokio::test(start_paused = true)]
async fn a_missing_item_fails_only_its_caller() {
    let (_, upstream) = upstream(Duration::ZERO);
    let batcher = BatchLayer::new(50, Duration::from_millis(5)).layer(upstream);
    let (ok, missing) = tokio::join!(batcher.clone().oneshot(12), batcher.clone().oneshot(13));
    assert_eq!(ok.expect("present"), 120);
    assert!(matches!(missing, Err(BatchError::Missing)), "{missing:?}");
}

#[tokio::test(start_paused = true)]
async fn a_failed_batch_fails_each_caller_with_its_error() {
    let (calls, upstream) = upstream(Duration::ZERO);
    let batcher = BatchLayer::new(50, Duration::from_millis(5)).layer(upstream);
    let results = futures_join(
        [1, 666, 2]
            .into_iter()
            .map(|id| batcher.clone().oneshot(id)),
    )
    .await;
    for result in results {
        match result {
            Err(BatchError::Failed(e)) => assert_eq!(e.to_string(), "upstream exploded"),
            other => panic!("expected the shared failure, got {other:?}"),
        }
    }
    assert_eq!(
        calls.lock().expect("lock").len(),
        1,
        "one call, one failure, shared"
    );
}

#[tokio::test(start_paused = true)]
async fn a_dropped_caller_leaves_without_disturbing_the_others() {
    let (calls, upstream) = upstream(Duration::ZERO);
    let batcher = BatchLayer::new(50, Duration::from_millis(10)).layer(upstream);
    let kept = tokio::spawn(batcher.clone().oneshot(1));
    let dropped = tokio::spawn(batcher.clone().oneshot(2));
    let shared = tokio::spawn(batcher.clone().oneshot(3));
    let shared_dropped = tokio::spawn(batcher.clone().oneshot(3));
    tokio::task::yield_now().await;
    dropped.abort();
    shared_dropped.abort();
    assert_eq!(kept.await.expect("task").expect("item"), 10);
    assert_eq!(shared.await.expect("task").expect("item"), 30);
    assert_eq!(
        calls.lock().expect("lock")[0].0,
        vec![1, 3],
        "2 had no caller left"
    );
}

#[tokio::test(start_paused = true)]
async fn a_slow_batch_does_not_stall_the_next() {
    let (calls, upstream) = upstream(Duration::from_secs(10));
    let batcher = BatchLayer::new(2, Duration::from_millis(5))
        .max_in_flight(2)
        .layer(upstream);
    let started = Instant::now();
    let results = futures_join((1..=4).map(|id| batcher.clone().oneshot(id))).await;
    assert!(results.iter().all(Result::is_ok));
    assert_eq!(
        started.elapsed(),
        Duration::from_secs(10),
        "both batches ran at once"
    );
    assert_eq!(calls.lock().expect("lock").len(), 2);

    // With one in flight, the second batch waits for the first.
    let (_, upstream) = self::upstream(Duration::from_secs(10));
    let serial = BatchLayer::new(2, Duration::from_millis(5))
        .max_in_flight(1)
        .layer(upstream);
    let started = Instant::now();
    futures_join((1..=4).map(|id| serial.clone().oneshot(id))).await;
    assert_eq!(started.elapsed(), Duration::from_secs(20));
}

/// Runs the futures concurrently on spawned tasks; results in order.
async fn futures_join<F>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.expect("task"));
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Whatever the keys, batch size and timing, each caller gets its own
    /// key's item, and no batch is larger than max_batch.
    #[test]
    fn every_caller_gets_its_own_item(
        ids in proptest::collection::vec(0u64..40, 1..120),
        max_batch in 1usize..20,
        gaps in proptest::collection::vec(0u64..8, 120),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().expect("runtime");
        rt.block_on(async {
            let (calls, upstream) = upstream(Duration::from_millis(3));
            let batcher = BatchLayer::new(max_batch, Duration::from_millis(5)).layer(upstream);
            let mut tasks = Vec::new();
            for (i, id) in ids.iter().copied().enumerate() {
                tasks.push((id, tokio::spawn(batcher.clone().oneshot(id))));
                tokio::time::advance(Duration::from_millis(gaps[i])).await;
            }
            for (id, task) in tasks {
                let result = task.await.expect("task");
                match id {
                    13 => assert!(matches!(result, Err(BatchError::Missing))),
                    _ => assert_eq!(result.expect("item"), id * 10),
                }
            }
            for (batch, _) in calls.lock().expect("lock").iter() {
                assert!(batch.len() <= max_batch);
                let mut unique = batch.clone();
                unique.sort_unstable();
                unique.dedup();
                assert_eq!(unique.len(), batch.len(), "a key twice in one batch");
            }
        });
    }
}

#[test]
fn the_service_offers_its_layer_and_inner_accessors() {
    use tollgate_batch::Batch;
    let layer = Batch::<(), u32, u32>::layer(4, Duration::from_millis(5));
    let mut batch = layer.layer(7u8);
    *batch.get_mut() += 1;
    assert_eq!(*batch.get_ref(), 8);
    assert_eq!(batch.into_inner(), 8);
}
