//! [`ResponseFuture`]: waiting for a turn and a permit, then the call, then
//! learning from the answer.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, SystemTime};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower::{BoxError, Service};

use super::layer::Shared;
use super::queue::Queues;
use super::service::Place;
use super::store::{StoreError, StoreFuture, StoreTimedOut, UnixNanos};
use super::PermitWait;
use crate::call::{take_error, Call, Stage, StageProj};
use crate::error::{QueueFull, RateLimited, WaitTooLong};
use tollgate_core::upstream_pause;

/// A waiting caller's place in its lane; dropping it (the caller left)
/// gives the place up and wakes the next caller.
struct Ticket {
    shared: Arc<Shared>,
    hash: u64,
    id: u64,
    /// In a lane (reject mode asks without one).
    queued: bool,
    /// Counted in `waiting` (what `max_queue` bounds): a head that only
    /// waits for the store's answer is not, until it has to wait for time.
    counted: bool,
}

impl Ticket {
    fn leave(&mut self) {
        if std::mem::take(&mut self.queued) {
            let mut lanes = self.shared.queues.lock(self.hash);
            self.shared.queues.leave(&mut lanes, self.hash, self.id);
        }
        if std::mem::take(&mut self.counted) {
            self.shared.queues.waiting.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Counts the caller in `waiting`, unless `max_queue` callers already
    /// wait: then `false`.
    fn count(&mut self) -> bool {
        if self.counted {
            return true;
        }
        let before = self.shared.queues.waiting.fetch_add(1, Ordering::AcqRel);
        if self.shared.max_queue.is_some_and(|max| before >= max) {
            self.shared.queues.waiting.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        self.counted = true;
        true
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.leave();
    }
}

/// The shortest wait before asking a store again that named a time not
/// after now (a store's bug, or the end of the time base): tokio's timer
/// resolution, so that nothing spins.
const MIN_RETRY: Duration = Duration::from_millis(1);

struct Waiting<S, R> {
    sleep: Option<Pin<Box<Sleep>>>,
    /// The store's answer this caller waits for, when the store answers
    /// later, and when it was asked.
    asking: Option<(StoreFuture<Result<(), UnixNanos>>, Instant)>,
    service: Option<S>,
    request: Option<R>,
    key: String,
    latest: u64,
    arrived: u64,
    ticket: Ticket,
}

/// What a waiting caller does next.
enum Next {
    /// Sleep until this instant, then look again.
    Sleep(Instant),
    /// Look again now (a store's answer is to be waited for).
    Again,
    /// Served: the permit was taken at this time.
    Served(UnixNanos),
}

impl<S, R> Waiting<S, R> {
    /// Waits for this caller's turn, then for its permit's time, then takes
    /// the permit: `Ok(granted_at)`, or a refusal when the permit turns out
    /// to come after the caller's latest time (a pause learned meanwhile), or
    /// the store's failure.
    fn poll_permit(&mut self, cx: &mut Context<'_>) -> Poll<Result<u64, BoxError>> {
        let shared = Arc::clone(&self.ticket.shared);
        loop {
            let next = if self.asking.is_some() {
                match self.poll_asking(&shared, cx) {
                    Poll::Ready(Ok(next)) => next,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => return Poll::Pending,
                }
            } else {
                let mut lanes = shared.queues.lock(self.ticket.hash);
                let now = shared.now();
                let ahead =
                    Queues::position(&mut lanes, self.ticket.hash, self.ticket.id, cx.waker());
                if ahead > 0 {
                    // Not our turn yet: woken when it is, or refused when
                    // our own latest time comes first.
                    if now >= self.latest {
                        let at = shared.store.estimate(
                            &self.key,
                            now,
                            u64::try_from(ahead).unwrap_or(u64::MAX),
                        );
                        drop(lanes);
                        return Poll::Ready(Err(self.too_long(at.unwrap_or(now).max(now))));
                    }
                    drop(lanes);
                    if self.latest == u64::MAX {
                        return Poll::Pending;
                    }
                    // Wake at our latest time: still not our turn then, and
                    // we are refused.
                    Next::Sleep(shared.instant(self.latest))
                } else {
                    let local = shared.paused_until(self.ticket.hash, now);
                    let answer = match local {
                        Some(until) => Ok(Ok(Err(until))),
                        None => shared.store.check(&self.key, now).now_or_later(),
                    };
                    drop(lanes);
                    match answer {
                        Ok(answer) => match self.decided(&shared, answer, now) {
                            Ok(next) => next,
                            Err(e) => return Poll::Ready(Err(e)),
                        },
                        Err(later) => {
                            // Asked; wait for the answer outside the lock.
                            self.asking = Some((later, Instant::now()));
                            Next::Again
                        }
                    }
                }
            };
            match next {
                Next::Served(at) => return Poll::Ready(Ok(at)),
                Next::Again => {}
                Next::Sleep(deadline) => {
                    match &mut self.sleep {
                        Some(sleep) => sleep.as_mut().reset(deadline),
                        None => self.sleep = Some(Box::pin(tokio::time::sleep_until(deadline))),
                    }
                    if let Some(sleep) = &mut self.sleep {
                        ready!(sleep.as_mut().poll(cx));
                    }
                }
            }
        }
    }

    /// Waits for the store's answer, bounded by the store timeout and by
    /// the caller's latest time. `Ok(next)` for what to do next.
    fn poll_asking(
        &mut self,
        shared: &Shared,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Next, BoxError>> {
        let Some((asking, asked)) = &mut self.asking else {
            return Poll::Ready(Ok(Next::Again));
        };
        let asked = *asked;
        if let Poll::Ready(answer) = Pin::new(asking).poll(cx) {
            self.asking = None;
            let now = shared.now();
            if now > self.latest && !shared.reject {
                // Too late to be used, even a yes: the caller's bound holds
                // (a permit taken is wasted, which never loosens the limit).
                return Poll::Ready(Err(self.too_long(now)));
            }
            return Poll::Ready(self.decided(shared, answer, now));
        }
        // Not yet: wake at the store timeout or the caller's latest time,
        // whichever comes first (in reject mode the round trip is not a wait
        // for a permit: only the store timeout bounds it).
        let timeout = asked.checked_add(shared.store_timeout);
        let latest =
            (self.latest != u64::MAX && !shared.reject).then(|| shared.instant(self.latest));
        let Some(deadline) = [timeout, latest].into_iter().flatten().min() else {
            return Poll::Pending;
        };
        match &mut self.sleep {
            Some(sleep) => sleep.as_mut().reset(deadline),
            None => self.sleep = Some(Box::pin(tokio::time::sleep_until(deadline))),
        }
        if let Some(sleep) = &mut self.sleep {
            ready!(sleep.as_mut().poll(cx));
        }
        self.asking = None;
        let now = shared.now();
        if now >= self.latest && !shared.reject {
            return Poll::Ready(Err(self.too_long(now)));
        }
        self.ticket.leave();
        Poll::Ready(Err(Box::new(StoreError::new(StoreTimedOut(
            shared.store_timeout,
        )))))
    }

    /// Acts on a store's answer at `now`: served (the permit is taken and
    /// the lane left), a time to sleep until, or the refusal.
    fn decided(
        &mut self,
        shared: &Shared,
        answer: Result<Result<(), UnixNanos>, StoreError>,
        now: UnixNanos,
    ) -> Result<Next, BoxError> {
        match answer {
            Ok(Ok(())) => {
                self.ticket.leave();
                Ok(Next::Served(now))
            }
            Ok(Err(at)) if at > self.latest => Err(self.too_long(at)),
            // A store naming the present or the past at the caller's latest
            // time (a store's bug, or the end of the time base): refused,
            // never asked again in a loop.
            Ok(Err(_)) if now >= self.latest && !shared.reject => Err(self.too_long(now)),
            Ok(Err(at)) => {
                if !self.ticket.count() {
                    let max = shared.max_queue.unwrap_or(usize::MAX);
                    self.ticket.leave();
                    return Err(Box::new(QueueFull { max_queue: max }));
                }
                Ok(Next::Sleep(if at > now {
                    shared.instant(at)
                } else {
                    // The store named the present or the past.
                    Instant::now() + MIN_RETRY
                }))
            }
            Err(e) => {
                self.ticket.leave();
                Err(Box::new(e))
            }
        }
    }

    /// Leaves the lane, refused: the permit comes at `at`, after the
    /// caller's latest time. Both durations count from the caller's arrival.
    fn too_long(&mut self, at: u64) -> BoxError {
        self.ticket.leave();
        let needed = Duration::from_nanos(at.saturating_sub(self.arrived));
        if self.ticket.shared.reject {
            return Box::new(RateLimited {
                retry_after: needed,
            });
        }
        let max = Duration::from_nanos(self.latest.saturating_sub(self.arrived));
        Box::new(WaitTooLong { needed, max })
    }
}

pin_project! {
    /// The response future of [`RateLimit`](super::RateLimit).
    pub struct ResponseFuture<S, R>
    where
        S: Service<R>,
    {
        #[pin]
        state: Stage<Waiting<S, R>, S, R, S::Future>,
        context: Option<(Arc<Shared>, String)>,
        waited: Duration,
    }
}

impl<S, R> std::fmt::Debug for ResponseFuture<S, R>
where
    S: Service<R>,
    S::Error: Into<BoxError>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.state.describe("waiting for a permit");
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}

impl<S, R> ResponseFuture<S, R>
where
    S: Service<R>,
    S::Error: Into<BoxError>,
{
    pub(crate) fn calling(
        future: S::Future,
        shared: Arc<Shared>,
        key: String,
        waited: Duration,
    ) -> Self {
        ResponseFuture {
            state: Stage::Call {
                call: Call::calling(future),
            },
            context: Some((shared, key)),
            waited,
        }
    }

    pub(crate) fn failed(error: BoxError) -> Self {
        ResponseFuture {
            state: Stage::Failed { error: Some(error) },
            context: None,
            waited: Duration::ZERO,
        }
    }

    /// A caller with a place in its key's lane; counted in `waiting`.
    #[allow(clippy::too_many_arguments, reason = "one constructor, called once")]
    pub(crate) fn waiting(
        shared: Arc<Shared>,
        key: String,
        place: Place,
        latest: u64,
        arrived: u64,
        service: S,
        request: R,
    ) -> Self {
        ResponseFuture {
            state: Stage::Waiting {
                waiting: Box::new(Waiting {
                    sleep: None,
                    asking: place.asking,
                    service: Some(service),
                    request: Some(request),
                    key: key.clone(),
                    latest,
                    arrived,
                    ticket: Ticket {
                        shared: Arc::clone(&shared),
                        hash: place.hash,
                        id: place.id,
                        queued: place.queued,
                        counted: place.counted,
                    },
                }),
            },
            context: Some((shared, key)),
            waited: Duration::ZERO,
        }
    }
}

impl<S, B, ResB> Future for ResponseFuture<S, Request<B>>
where
    S: Service<Request<B>, Response = Response<ResB>>,
    S::Error: Into<BoxError>,
{
    type Output = Result<Response<ResB>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StageProj::Waiting { waiting } => {
                    let granted = match ready!(waiting.poll_permit(cx)) {
                        Ok(at) => at,
                        Err(e) => {
                            // Done: a later poll gets an error, never a
                            // second try at a permit.
                            this.state.set(Stage::Failed { error: None });
                            return Poll::Ready(Err(e));
                        }
                    };
                    *this.waited = Duration::from_nanos(granted.saturating_sub(waiting.arrived));
                    let (Some(service), Some(request)) =
                        (waiting.service.take(), waiting.request.take())
                    else {
                        return Poll::Ready(Err("rate limit: polled after completion".into()));
                    };
                    this.state.set(Stage::Call {
                        call: Call::ready_then(service, request),
                    });
                }
                StageProj::Call { call } => {
                    let mut response = ready!(call.poll_call(cx))?;
                    response.extensions_mut().insert(PermitWait(*this.waited));
                    if let Some((shared, key)) = this.context.take() {
                        learn(&shared, &key, &mut response);
                    }
                    return Poll::Ready(Ok(response));
                }
                StageProj::Failed { error } => {
                    return Poll::Ready(Err(take_error(error)));
                }
            }
        }
    }
}

/// Counts a learned pause (feature `metrics`). The labels are the status
/// that asked and whether the pause was cut to `max_pause`; never the key,
/// which may be a credential.
#[cfg(feature = "metrics")]
fn record_pause(status: http::StatusCode, asked: Duration, pause: Duration) {
    let capped = if asked > pause { "true" } else { "false" };
    let code = status.as_u16().to_string();
    metrics::counter!("tollgate.client.rate_limit.pauses",
        "http.response.status_code" => code.clone(), "capped" => capped)
    .increment(1);
    metrics::histogram!("tollgate.client.rate_limit.pause_duration",
        "http.response.status_code" => code, "capped" => capped)
    .record(pause.as_secs_f64());
}

/// Pauses the limiter when the upstream asks, and says until when on the
/// response, so the retry layer above waits until that same instant.
fn learn<B>(shared: &Shared, key: &str, response: &mut Response<B>) {
    if !shared.learn || !tollgate_core::may_signal(response.status(), response.headers()) {
        return;
    }
    let Some(asked) = upstream_pause(response.status(), response.headers(), SystemTime::now())
    else {
        return;
    };
    let pause = asked.min(shared.max_pause);
    #[cfg(feature = "metrics")]
    record_pause(response.status(), asked, pause);
    let now = shared.now();
    let until = now.saturating_add(u64::try_from(pause.as_nanos()).unwrap_or(u64::MAX));
    match shared.store.pause(key, now, until).now_or_later() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "the learned pause could not be stored"),
        // A store that answers later records the pause in the background,
        // so the response is not held back by it; meanwhile the layer holds
        // the pause itself, and the write is bounded by the store timeout.
        Err(later) => {
            shared.learned.insert(shared.queues.hash(key), now, until);
            let timeout = shared.store_timeout;
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    runtime.spawn(async move {
                        let outcome = if timeout == Duration::MAX {
                            Ok(later.await)
                        } else {
                            tokio::time::timeout(timeout, later).await
                        };
                        match outcome {
                            Ok(Ok(())) => {}
                            Ok(Err(e)) => {
                                tracing::warn!(error = %e, "the learned pause could not be stored");
                            }
                            Err(_) => tracing::warn!(
                                "the learned pause was not stored within the store timeout"
                            ),
                        }
                    });
                }
                Err(_) => tracing::warn!("no tokio runtime to store the learned pause with"),
            }
        }
    }
    // The key may be a credential (an API key header): the logs get a short
    // keyed hash of it, never its text.
    tracing::debug!(
        pause_ms = u64::try_from(pause.as_millis()).unwrap_or(u64::MAX),
        asked_ms = u64::try_from(asked.as_millis()).unwrap_or(u64::MAX),
        key_hash = %format_args!("{:08x}", shared.queues.hash(key) >> 32),
        "upstream asked to slow down; limiter paused"
    );
    // Retry above waits until the same instant instead of a second wait of
    // its own; but only for a pause that was not cut short by the cap: a
    // longer wait is not waited for at all, and retry then finds the
    // server's own delay in the response (and returns it to the caller).
    if asked <= shared.max_pause
        && response
            .extensions()
            .get::<tollgate_core::NotBefore>()
            .is_none()
    {
        response
            .extensions_mut()
            .insert(tollgate_core::NotBefore(shared.instant(until)));
    }
}
