//! [`BatchLayer`] and [`Batch`]: single-item calls in, batched calls out.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::sync::{oneshot, Semaphore};
use tower::{BoxError, Layer, Service};

use crate::error::{BatchError, SharedError};

/// The default for [`BatchLayer::max_in_flight`].
pub const DEFAULT_MAX_IN_FLIGHT: usize = 4;

/// Turns a service of batches (`Vec<K>` in, `HashMap<K, V>` out) into a
/// service of single items (`K` in, `V` out).
///
/// Items wait until `max_batch` distinct keys are waiting or `max_delay` has
/// passed since the first of them, whichever comes first; then one batched
/// call carries them all, and each caller gets its own item.
///
/// | rule | how |
/// |------|-----|
/// | flush | at `max_batch` distinct keys, or `max_delay` after the first, whichever is first |
/// | duplicates | a key asked for by several callers is in the batch once; each of them gets a clone of its item |
/// | a missing item | [`BatchError::Missing`], for that caller only |
/// | a failed batch | [`BatchError::Failed`] for each of its callers, sharing the one error |
/// | a dropped caller | leaves the batch; a key every caller of which left before the flush is not asked for |
/// | concurrency | up to [`max_in_flight`](Self::max_in_flight) batched calls at once (default 4), so a slow batch does not stall the next |
///
/// The batched call is made on a tokio task, so the inner service and its
/// futures must be `Send + 'static`, and the calls must come from inside a
/// tokio runtime. `poll_ready` is always ready: the inner service is polled
/// ready on that task, just before each batched call. The batcher is not one
/// of the layers of a request's chain: its inner service is the chain (in
/// the `tollgate` facade, a whole client call), so a batched call is cached,
/// retried and rate limited like any other.
///
/// ```
/// use std::collections::HashMap;
/// use std::time::Duration;
/// use tower::{service_fn, Layer, ServiceExt};
/// use tollgate_batch::BatchLayer;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tollgate_batch::BatchError> {
/// // One upstream call answers many ids.
/// let lookup_many = service_fn(|ids: Vec<u64>| async move {
///     Ok::<_, tower::BoxError>(ids.into_iter().map(|id| (id, format!("item {id}"))).collect::<HashMap<_, _>>())
/// });
/// let batcher = BatchLayer::new(50, Duration::from_millis(5)).layer(lookup_many);
///
/// let (a, b) = tokio::join!(batcher.clone().oneshot(1), batcher.clone().oneshot(2));
/// assert_eq!((a?, b?), ("item 1".to_owned(), "item 2".to_owned()));
/// # Ok(()) }
/// ```
pub struct BatchLayer<K, V> {
    max_batch: usize,
    max_delay: Duration,
    max_in_flight: usize,
    _types: PhantomData<fn(K) -> V>,
}

impl<K, V> Clone for BatchLayer<K, V> {
    fn clone(&self) -> Self {
        BatchLayer {
            max_batch: self.max_batch,
            max_delay: self.max_delay,
            max_in_flight: self.max_in_flight,
            _types: PhantomData,
        }
    }
}

impl<K, V> fmt::Debug for BatchLayer<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BatchLayer")
            .field("max_batch", &self.max_batch)
            .field("max_delay", &self.max_delay)
            .field("max_in_flight", &self.max_in_flight)
            .finish()
    }
}

impl<K, V> BatchLayer<K, V> {
    /// Batches of at most `max_batch` keys (at least 1), each flushed at
    /// most `max_delay` after its first key arrived.
    pub fn new(max_batch: usize, max_delay: Duration) -> Self {
        BatchLayer {
            max_batch: max_batch.max(1),
            max_delay,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            _types: PhantomData,
        }
    }

    /// How many batched calls may be in flight at once (default 4, at
    /// least 1). Full batches beyond it wait for one to finish.
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = n.max(1);
        self
    }
}

impl<S, K, V> Layer<S> for BatchLayer<K, V> {
    type Service = Batch<S, K, V>;

    fn layer(&self, inner: S) -> Batch<S, K, V> {
        Batch {
            inner,
            shared: Arc::new(Shared {
                max_batch: self.max_batch,
                max_delay: self.max_delay,
                in_flight: Arc::new(Semaphore::new(self.max_in_flight)),
                pending: Mutex::new(Pending::default()),
            }),
        }
    }
}

type Reply<V> = oneshot::Sender<Result<V, BatchError>>;

/// The batch being gathered.
struct Pending<K, V> {
    /// Each key's callers, in the order the keys first arrived.
    keys: Vec<(K, Vec<Reply<V>>)>,
    index: HashMap<K, usize>,
    /// Counts flushed batches, so a flush timer knows whether its batch went
    /// already.
    generation: u64,
}

impl<K, V> Default for Pending<K, V> {
    fn default() -> Self {
        Pending {
            keys: Vec::new(),
            index: HashMap::new(),
            generation: 0,
        }
    }
}

impl<K, V> Pending<K, V> {
    fn take(&mut self) -> Vec<(K, Vec<Reply<V>>)> {
        self.generation += 1;
        self.index.clear();
        std::mem::take(&mut self.keys)
    }
}

struct Shared<K, V> {
    max_batch: usize,
    max_delay: Duration,
    in_flight: Arc<Semaphore>,
    pending: Mutex<Pending<K, V>>,
}

impl<K, V> Shared<K, V> {
    fn lock(&self) -> MutexGuard<'_, Pending<K, V>> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A service of single items over a service of batches; made by
/// [`BatchLayer`]. Clones share one batch.
pub struct Batch<S, K, V> {
    inner: S,
    shared: Arc<Shared<K, V>>,
}

impl<S: Clone, K, V> Clone for Batch<S, K, V> {
    fn clone(&self) -> Self {
        Batch {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S: fmt::Debug, K, V> fmt::Debug for Batch<S, K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Batch")
            .field("inner", &self.inner)
            .field("max_batch", &self.shared.max_batch)
            .field("max_delay", &self.shared.max_delay)
            .finish_non_exhaustive()
    }
}

impl<S, K, V> Batch<S, K, V> {
    /// The service of batches.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Keys waiting for the next flush.
    pub fn waiting(&self) -> usize {
        self.shared.lock().keys.len()
    }
}

impl<S, K, V> Service<K> for Batch<S, K, V>
where
    S: Service<Vec<K>, Response = HashMap<K, V>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    K: Eq + Hash + Clone + Send + 'static,
    V: Clone + Send + 'static,
{
    type Response = V;
    type Error = BatchError;
    type Future = ResponseFuture<V>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BatchError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, key: K) -> ResponseFuture<V> {
        let (tx, rx) = oneshot::channel();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return ResponseFuture { rx, closed: true };
        };
        let shared = &self.shared;
        let mut pending = shared.lock();
        let first = pending.keys.is_empty();
        match pending.index.get(&key) {
            Some(&i) => pending.keys[i].1.push(tx),
            None => {
                let i = pending.keys.len();
                pending.index.insert(key.clone(), i);
                pending.keys.push((key, vec![tx]));
            }
        }
        if pending.keys.len() >= shared.max_batch {
            let batch = pending.take();
            drop(pending);
            runtime.spawn(run(shared.clone(), self.inner.clone(), batch));
        } else if first {
            let generation = pending.generation;
            drop(pending);
            runtime.spawn(flush_later(shared.clone(), self.inner.clone(), generation));
        }
        ResponseFuture { rx, closed: false }
    }
}

/// Flushes the batch `generation` after `max_delay`, unless it went already.
async fn flush_later<S, K, V>(shared: Arc<Shared<K, V>>, service: S, generation: u64)
where
    S: Service<Vec<K>, Response = HashMap<K, V>> + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    K: Eq + Hash + Clone + Send + 'static,
    V: Clone + Send + 'static,
{
    tokio::time::sleep(shared.max_delay).await;
    let batch = {
        let mut pending = shared.lock();
        if pending.generation != generation || pending.keys.is_empty() {
            return;
        }
        pending.take()
    };
    run(shared, service, batch).await;
}

/// Makes one batched call and answers its callers.
async fn run<S, K, V>(shared: Arc<Shared<K, V>>, service: S, batch: Vec<(K, Vec<Reply<V>>)>)
where
    S: Service<Vec<K>, Response = HashMap<K, V>> + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    K: Eq + Hash + Clone + Send + 'static,
    V: Clone + Send + 'static,
{
    // Keys whose callers all left are not asked for.
    let batch: Vec<(K, Vec<Reply<V>>)> = batch
        .into_iter()
        .filter(|(_, replies)| replies.iter().any(|r| !r.is_closed()))
        .collect();
    if batch.is_empty() {
        return;
    }
    let Ok(_permit) = shared.in_flight.clone().acquire_owned().await else {
        return;
    };
    let keys: Vec<K> = batch.iter().map(|(k, _)| k.clone()).collect();
    tracing::debug!(target: "tollgate_batch", keys = keys.len(), "batched call");
    let mut service = service;
    let ready: Result<(), BoxError> =
        std::future::poll_fn(|cx| service.poll_ready(cx).map_err(Into::into)).await;
    let result = match ready {
        Ok(()) => service.call(keys).await.map_err(Into::into),
        Err(e) => Err(e),
    };
    match result {
        Ok(mut items) => {
            for (key, replies) in batch {
                let item = items.remove(&key);
                let last = replies.len().saturating_sub(1);
                let mut item = item;
                for (i, reply) in replies.into_iter().enumerate() {
                    let answer = match &item {
                        None => Err(BatchError::Missing),
                        Some(v) if i < last => Ok(v.clone()),
                        Some(_) => item.take().ok_or(BatchError::Missing),
                    };
                    let _ = reply.send(answer);
                }
            }
        }
        Err(error) => {
            let shared_error = SharedError::new(error);
            for (_, replies) in batch {
                for reply in replies {
                    let _ = reply.send(Err(BatchError::Failed(shared_error.clone())));
                }
            }
        }
    }
}

pin_project! {
    /// The response future of [`Batch`]: the caller's own item.
    pub struct ResponseFuture<V> {
        #[pin]
        rx: oneshot::Receiver<Result<V, BatchError>>,
        closed: bool,
    }
}

impl<V> fmt::Debug for ResponseFuture<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<V> Future for ResponseFuture<V> {
    type Output = Result<V, BatchError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if *this.closed {
            return Poll::Ready(Err(BatchError::Closed));
        }
        this.rx
            .poll(cx)
            .map(|r| r.unwrap_or(Err(BatchError::Closed)))
    }
}
