//! [`BatchLayer`] and [`Batch`]: single-item calls in, batched calls out.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::task::AbortHandle;
use tokio::time::{Instant, Sleep};
use tower::{BoxError, Layer, Service};

use crate::error::{BatchError, SharedError};

/// The default for [`BatchLayer::max_in_flight`].
pub const DEFAULT_MAX_IN_FLIGHT: usize = 4;

/// The default for [`BatchLayer::max_pending`].
pub const DEFAULT_MAX_PENDING: usize = 10_000;

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
/// | a dropped caller | leaves the batch and frees its pending slot; a key every caller of which left before its batch is sent (while gathering, or while waiting for a slot) is not asked for |
/// | concurrency | up to [`max_in_flight`](Self::max_in_flight) batched calls at once (default 4), so a slow batch does not stall the next; full batches beyond it wait, in order |
/// | bounded | at most [`max_pending`](Self::max_pending) callers (default 10 000) wait for their batch to be sent; one more is refused at once with [`BatchError::TooManyPending`] |
/// | the caller's deadline | [`max_wait`](Self::max_wait) bounds a caller's whole wait, call included: [`BatchError::TimedOut`] (default: no bound of its own; the inner service bounds its call) |
///
/// A caller is *pending* from its call until its batch's call starts (the
/// batch holds an in-flight slot) or until it leaves (its future is dropped
/// or times out). Callers in flight are bounded by `max_in_flight` batches
/// of callers that were each pending first.
///
/// # Deadlines
///
/// The batcher's requests are keys, not `http::Request`s, so a deadline
/// cannot come in a request extension, and this crate depends on no other
/// layer crate (such as `tollgate-retry`'s `Deadline`). The caller's
/// deadline is therefore a setting of the layer, [`max_wait`](Self::max_wait),
/// the same for every caller. The `tollgate` facade sets it to the client's
/// timeout, so `Batched::load` is bounded like any call.
///
/// # Numbers
///
/// Setters clamp rather than fail: `max_batch`, `max_in_flight` and
/// `max_pending` are at least 1 (a batcher that can send nothing, or refuses
/// every caller, is not one), and `max_in_flight` is at most tokio's
/// semaphore limit (`usize::MAX >> 3`). Durations take any value: zero
/// flushes (or times out) at the next turn of the runtime, and a duration so
/// long that it overflows the clock means never.
///
/// The batched call is made on a tokio task, so the inner service and its
/// futures must be `Send + 'static`, and the calls must come from inside a
/// tokio runtime ([`BatchError::Closed`] otherwise). `poll_ready` is always
/// ready: the inner service is polled ready on that task, just before each
/// batched call. The batcher is not one of the layers of a request's chain:
/// its inner service is the chain (in the `tollgate` facade, a whole client
/// call), so a batched call is cached, retried and rate limited like any
/// other.
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
/// let batcher = BatchLayer::new(50, Duration::from_millis(5))
///     .max_pending(1_000)
///     .max_wait(Duration::from_secs(10))
///     .layer(lookup_many);
///
/// let (a, b) = tokio::join!(batcher.clone().oneshot(1), batcher.clone().oneshot(2));
/// assert_eq!((a?, b?), ("item 1".to_owned(), "item 2".to_owned()));
/// # Ok(()) }
/// ```
pub struct BatchLayer<K, V> {
    max_batch: usize,
    max_delay: Duration,
    max_in_flight: usize,
    max_pending: usize,
    max_wait: Option<Duration>,
    _types: PhantomData<fn(K) -> V>,
}

impl<K, V> Clone for BatchLayer<K, V> {
    fn clone(&self) -> Self {
        BatchLayer {
            max_batch: self.max_batch,
            max_delay: self.max_delay,
            max_in_flight: self.max_in_flight,
            max_pending: self.max_pending,
            max_wait: self.max_wait,
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
            .field("max_pending", &self.max_pending)
            .field("max_wait", &self.max_wait)
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
            max_pending: DEFAULT_MAX_PENDING,
            max_wait: None,
            _types: PhantomData,
        }
    }

    /// How many batched calls may be in flight at once (default 4; clamped
    /// to at least 1 and at most tokio's semaphore limit, `usize::MAX >> 3`).
    /// Full batches beyond it wait for one to finish, first come first
    /// served.
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = n.clamp(1, Semaphore::MAX_PERMITS);
        self
    }

    /// How many callers may wait for their batch to be sent, gathering or
    /// waiting for an in-flight slot (default 10 000, at least 1). A call
    /// beyond it fails at once with [`BatchError::TooManyPending`]. Below
    /// `max_batch`, batches go by delay only.
    ///
    /// Named `max_pending`, not `max_queue` as the limiters' bound: the
    /// limiters' queue holds callers refused capacity for now, in line for
    /// it, and is empty while capacity lasts; a batcher's pending callers
    /// are mostly gathering, waiting by design for their batch to fill, and
    /// are there even when nothing is scarce. It bounds the batcher's
    /// buffer, not a line.
    pub fn max_pending(mut self, n: usize) -> Self {
        self.max_pending = n.max(1);
        self
    }

    /// The longest a caller waits for its item, from its call to its answer
    /// (gathering, waiting for a slot and the batched call itself); past it
    /// the caller gets [`BatchError::TimedOut`] and leaves its batch.
    /// Default: no bound here (the inner service bounds its own call).
    pub fn max_wait(mut self, wait: Duration) -> Self {
        self.max_wait = Some(wait);
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
                max_pending: self.max_pending,
                max_wait: self.max_wait,
                max_in_flight: self.max_in_flight,
                in_flight: Arc::new(Semaphore::new(self.max_in_flight)),
                pending: Arc::new(AtomicUsize::new(0)),
                generation: AtomicU64::new(0),
                gathering: Mutex::new(Gathering::default()),
            }),
        }
    }
}

/// A caller's place among the pending: counted once, given back once, by
/// whichever comes first (its batch is sent, or the caller leaves).
struct Ticket {
    counted: AtomicBool,
    pending: Arc<AtomicUsize>,
}

impl Ticket {
    fn release(&self) {
        if self.counted.swap(false, Ordering::AcqRel) {
            self.pending.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// One caller in a batch: where its answer goes, and its place.
struct Caller<V> {
    reply: oneshot::Sender<Result<V, BatchError>>,
    ticket: Arc<Ticket>,
}

impl<V> Caller<V> {
    fn left(&self) -> bool {
        self.reply.is_closed()
    }
}

type Entries<K, V> = Vec<(K, Vec<Caller<V>>)>;

/// The batch being gathered.
struct Gathering<K, V> {
    /// Each key's callers, in the order the keys first arrived.
    keys: Entries<K, V>,
    index: HashMap<K, usize>,
    /// The flush timer of this batch; stopped when the batch goes by size,
    /// so no timer outlives its batch.
    timer: Timer,
}

/// The flush timer of the batch being gathered.
enum Timer {
    None,
    /// Being spawned by a caller (outside the lock: a runtime that is
    /// shutting down drops the task at once, and its [`TimerGuard`] takes
    /// the lock).
    Starting,
    Running(AbortHandle),
}

impl<K, V> Default for Gathering<K, V> {
    fn default() -> Self {
        Gathering {
            keys: Vec::new(),
            index: HashMap::new(),
            timer: Timer::None,
        }
    }
}

impl<K: Eq + Hash + Clone, V> Gathering<K, V> {
    /// Takes the batch; `generation` counts it as sent (before its timer
    /// is stopped, so that the timer's guard, should the stop drop it here,
    /// sees it went).
    fn take(&mut self, generation: &AtomicU64) -> Entries<K, V> {
        generation.fetch_add(1, Ordering::AcqRel);
        if let Timer::Running(timer) = std::mem::replace(&mut self.timer, Timer::None) {
            timer.abort();
        }
        self.index.clear();
        std::mem::take(&mut self.keys)
    }

    /// Forgets callers that left, and keys none of whose callers is left.
    fn prune(&mut self) {
        for (_, callers) in &mut self.keys {
            callers.retain(|c| !c.left());
        }
        self.keys.retain(|(_, callers)| !callers.is_empty());
        self.index.clear();
        for (i, (key, _)) in self.keys.iter().enumerate() {
            self.index.insert(key.clone(), i);
        }
    }

    /// Adds a caller; callers that left are forgotten before a list would
    /// grow, so what they leave behind stays within a constant factor of
    /// the callers still waiting.
    fn push(&mut self, key: K, caller: Caller<V>) {
        if let Some(&i) = self.index.get(&key) {
            let callers = &mut self.keys[i].1;
            if callers.len() == callers.capacity() {
                callers.retain(|c| !c.left());
            }
            callers.push(caller);
            return;
        }
        if self.keys.len() == self.keys.capacity() {
            self.prune();
        }
        self.index.insert(key.clone(), self.keys.len());
        self.keys.push((key, vec![caller]));
    }
}

struct Shared<K, V> {
    max_batch: usize,
    max_delay: Duration,
    max_pending: usize,
    max_wait: Option<Duration>,
    max_in_flight: usize,
    in_flight: Arc<Semaphore>,
    /// Callers counted as pending (see [`BatchLayer`]).
    pending: Arc<AtomicUsize>,
    /// Counts batches sent (changed under the lock), so that a flush timer
    /// knows whether its batch went already; read without the lock by a
    /// timer's [`TimerGuard`].
    generation: AtomicU64,
    gathering: Mutex<Gathering<K, V>>,
}

impl<K, V> Shared<K, V> {
    fn lock(&self) -> MutexGuard<'_, Gathering<K, V>> {
        self.gathering
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
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
            .field("max_pending", &self.shared.max_pending)
            .field("max_wait", &self.shared.max_wait)
            .finish_non_exhaustive()
    }
}

impl<S, K, V> Batch<S, K, V> {
    /// A layer sending batches of up to `max_batch` keys, after at most
    /// `max_delay` ([`BatchLayer::new`]).
    pub fn layer(max_batch: usize, max_delay: Duration) -> BatchLayer<K, V> {
        BatchLayer::new(max_batch, max_delay)
    }

    // The inner service is the service of batches.
    tollgate_core::inner_accessors!();

    /// Keys waiting for the next flush (keys whose callers all left may be
    /// counted until the batch is pruned or sent).
    pub fn waiting(&self) -> usize {
        self.shared.lock().keys.len()
    }

    /// Callers waiting for their batch to be sent, gathering or waiting for
    /// an in-flight slot; never above [`BatchLayer::max_pending`].
    pub fn pending(&self) -> usize {
        self.shared.pending.load(Ordering::Acquire)
    }

    /// Batched calls in flight right now; never above
    /// [`BatchLayer::max_in_flight`].
    pub fn in_flight(&self) -> usize {
        self.shared
            .max_in_flight
            .saturating_sub(self.shared.in_flight.available_permits())
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
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return ResponseFuture::failed(BatchError::Closed);
        };
        let shared = &self.shared;
        let mut gathering = shared.lock();
        // Counted under the lock: only this adds to `pending`, and leaving
        // callers only take from it, so the bound holds.
        if shared.pending.load(Ordering::Acquire) >= shared.max_pending {
            return ResponseFuture::failed(BatchError::TooManyPending {
                max_pending: shared.max_pending,
            });
        }
        shared.pending.fetch_add(1, Ordering::AcqRel);
        let ticket = Arc::new(Ticket {
            counted: AtomicBool::new(true),
            pending: shared.pending.clone(),
        });
        let (tx, rx) = oneshot::channel();
        gathering.push(
            key,
            Caller {
                reply: tx,
                ticket: ticket.clone(),
            },
        );
        if gathering.keys.len() >= shared.max_batch {
            // Keys whose callers all left do not make a batch full.
            gathering.prune();
        }
        if gathering.keys.len() >= shared.max_batch {
            let batch = gathering.take(&shared.generation);
            drop(gathering);
            runtime.spawn(run(shared.clone(), self.inner.clone(), batch));
        } else if gathering.needs_timer() {
            gathering.timer = Timer::Starting;
            let generation = shared.generation.load(Ordering::Acquire);
            drop(gathering);
            let guard = TimerGuard {
                shared: shared.clone(),
                generation,
                armed: true,
            };
            let timer = runtime.spawn(flush_later(guard, self.inner.clone()));
            let mut gathering = shared.lock();
            match gathering.timer {
                Timer::Starting if shared.generation.load(Ordering::Acquire) == generation => {
                    gathering.timer = Timer::Running(timer.abort_handle());
                }
                // The batch went already (by size, or its timer's runtime
                // shut down and the guard failed it): this timer finds
                // that out itself and ends.
                _ => {}
            }
        }
        ResponseFuture::waiting(rx, ticket, shared.max_wait)
    }
}

impl<K, V> Gathering<K, V> {
    /// Whether the batch being gathered needs a timer started: it has none,
    /// or the one it had ended without sending it (its task was dropped
    /// with its runtime before its guard could take the batch).
    fn needs_timer(&self) -> bool {
        match &self.timer {
            Timer::None => true,
            Timer::Starting => false,
            Timer::Running(timer) => timer.is_finished(),
        }
    }
}

/// A flush timer's hold on its batch: if the timer's task is dropped
/// before it sent the batch (its runtime shut down; a task spawned on a
/// runtime shutting down is dropped at once), the batch is taken and its
/// callers answered [`BatchError::Closed`] rather than left waiting for a
/// timer that is gone. Callers on another runtime then start a new batch.
struct TimerGuard<K, V> {
    shared: Arc<Shared<K, V>>,
    generation: u64,
    armed: bool,
}

impl<K, V> Drop for TimerGuard<K, V> {
    fn drop(&mut self) {
        // A batch that went (by size, or by this timer) is not this
        // guard's: and `take` counts it before it stops the timer, so a
        // stop that drops the task with the lock held returns here.
        if !self.armed || self.shared.generation.load(Ordering::Acquire) != self.generation {
            return;
        }
        let mut gathering = self.shared.lock();
        if self.shared.generation.load(Ordering::Acquire) != self.generation {
            return;
        }
        self.shared.generation.fetch_add(1, Ordering::AcqRel);
        gathering.timer = Timer::None;
        gathering.index.clear();
        let batch = std::mem::take(&mut gathering.keys);
        drop(gathering);
        for (_, callers) in batch {
            for caller in callers {
                caller.ticket.release();
                // The reply is dropped unsent: the caller's answer is
                // `Closed`.
            }
        }
    }
}

/// Flushes the guard's batch after `max_delay`, unless it went already.
async fn flush_later<S, K, V>(mut guard: TimerGuard<K, V>, service: S)
where
    S: Service<Vec<K>, Response = HashMap<K, V>> + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    K: Eq + Hash + Clone + Send + 'static,
    V: Clone + Send + 'static,
{
    let started = Instant::now();
    match started.checked_add(guard.shared.max_delay) {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
    let shared = guard.shared.clone();
    let batch = {
        let mut gathering = shared.lock();
        if shared.generation.load(Ordering::Acquire) != guard.generation {
            return;
        }
        // This task is the timer: it must not abort itself.
        gathering.timer = Timer::None;
        guard.armed = false;
        gathering.take(&shared.generation)
    };
    run(shared, service, batch).await;
}

/// Waits for an in-flight slot, or until every caller of `batch` left.
async fn slot<K, V>(
    semaphore: Arc<Semaphore>,
    batch: &mut Entries<K, V>,
) -> Option<OwnedSemaphorePermit> {
    let mut acquire = std::pin::pin!(semaphore.acquire_owned());
    std::future::poll_fn(|cx| {
        if let Poll::Ready(permit) = acquire.as_mut().poll(cx) {
            return Poll::Ready(permit.ok());
        }
        // Registers interest in each caller leaving; ready once all did.
        let mut all_left = true;
        for (_, callers) in batch.iter_mut() {
            for caller in callers.iter_mut() {
                if caller.reply.poll_closed(cx).is_pending() {
                    all_left = false;
                }
            }
        }
        if all_left {
            Poll::Ready(None)
        } else {
            Poll::Pending
        }
    })
    .await
}

/// Makes one batched call and answers its callers.
async fn run<S, K, V>(shared: Arc<Shared<K, V>>, service: S, mut batch: Entries<K, V>)
where
    S: Service<Vec<K>, Response = HashMap<K, V>> + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    K: Eq + Hash + Clone + Send + 'static,
    V: Clone + Send + 'static,
{
    let permit = slot(shared.in_flight.clone(), &mut batch).await;
    // In flight now (or given up): the callers are no longer pending.
    for (_, callers) in &batch {
        for caller in callers {
            caller.ticket.release();
        }
    }
    let Some(_permit) = permit else {
        return;
    };
    // Keys whose callers all left are not asked for.
    let batch: Entries<K, V> = batch
        .into_iter()
        .filter_map(|(key, mut callers)| {
            callers.retain(|c| !c.left());
            (!callers.is_empty()).then_some((key, callers))
        })
        .collect();
    if batch.is_empty() {
        return;
    }
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
            for (key, callers) in batch {
                let mut item = items.remove(&key);
                let last = callers.len().saturating_sub(1);
                for (i, caller) in callers.into_iter().enumerate() {
                    let answer = match &item {
                        None => Err(BatchError::Missing),
                        Some(v) if i < last => Ok(v.clone()),
                        Some(_) => item.take().ok_or(BatchError::Missing),
                    };
                    let _ = caller.reply.send(answer);
                }
            }
        }
        Err(error) => {
            let shared_error = SharedError::new(error);
            for (_, callers) in batch {
                for caller in callers {
                    let _ = caller
                        .reply
                        .send(Err(BatchError::Failed(shared_error.clone())));
                }
            }
        }
    }
}

/// Gives the caller's pending place back when its future is dropped.
struct Leave(Option<Arc<Ticket>>);

impl Drop for Leave {
    fn drop(&mut self) {
        if let Some(ticket) = &self.0 {
            ticket.release();
        }
    }
}

pin_project! {
    /// The response future of [`Batch`]: the caller's own item.
    ///
    /// Dropping it leaves the batch: the caller's pending place is given
    /// back at once, and its key is not asked for if no other caller wants
    /// it.
    pub struct ResponseFuture<V> {
        rx: Option<oneshot::Receiver<Result<V, BatchError>>>,
        error: Option<BatchError>,
        // Boxed, so that the future stays `Unpin`; only with `max_wait`.
        deadline: Option<Pin<Box<Sleep>>>,
        started: Instant,
        leave: Leave,
    }
}

impl<V> ResponseFuture<V> {
    fn failed(error: BatchError) -> Self {
        ResponseFuture {
            rx: None,
            error: Some(error),
            deadline: None,
            started: Instant::now(),
            leave: Leave(None),
        }
    }

    fn waiting(
        rx: oneshot::Receiver<Result<V, BatchError>>,
        ticket: Arc<Ticket>,
        max_wait: Option<Duration>,
    ) -> Self {
        let started = Instant::now();
        ResponseFuture {
            rx: Some(rx),
            error: None,
            deadline: max_wait
                .and_then(|wait| started.checked_add(wait))
                .map(|at| Box::pin(tokio::time::sleep_until(at))),
            started,
            leave: Leave(Some(ticket)),
        }
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
        if let Some(error) = this.error.take() {
            return Poll::Ready(Err(error));
        }
        let Some(rx) = this.rx.as_mut() else {
            // Polled after its answer.
            return Poll::Ready(Err(BatchError::Closed));
        };
        if let Poll::Ready(answer) = Pin::new(rx).poll(cx) {
            *this.rx = None;
            return Poll::Ready(answer.unwrap_or(Err(BatchError::Closed)));
        }
        if let Some(deadline) = this.deadline.as_mut() {
            if deadline.as_mut().poll(cx).is_ready() {
                // Leave now, not at drop: the key is not asked for if no
                // other caller wants it.
                *this.rx = None;
                if let Some(ticket) = &this.leave.0 {
                    ticket.release();
                }
                return Poll::Ready(Err(BatchError::TimedOut {
                    waited: this.started.elapsed(),
                }));
            }
        }
        Poll::Pending
    }
}
