//! [`RateLimit`].

use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use tower::{BoxError, Service};

use super::future::ResponseFuture;
use super::layer::{KeyInput, RateLimitLayer, Shared};
use super::queue::Queues;
use super::store::{StoreError, StoreFuture, UnixNanos};
use crate::error::{QueueFull, RateLimited, WaitTooLong};
use tokio::time::Instant;

/// Rate limits the inner service; made by [`RateLimitLayer`].
///
/// # Clone
///
/// Clones share one limiter: two clones never get twice the rate.
#[derive(Clone)]
pub struct RateLimit<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S: fmt::Debug> fmt::Debug for RateLimit<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimit")
            .field("inner", &self.inner)
            .field("quota", &self.shared.quota)
            .finish_non_exhaustive()
    }
}

impl<S> RateLimit<S> {
    /// Wraps `inner` with the layer's limiter.
    pub fn new(inner: S, layer: RateLimitLayer) -> Self {
        RateLimit {
            inner,
            shared: layer.shared,
        }
    }

    /// A layer for `quota` ([`RateLimitLayer::new`]).
    pub fn layer(quota: crate::Quota) -> RateLimitLayer {
        RateLimitLayer::new(quota)
    }

    tollgate_core::inner_accessors!();
}

impl<S, B, ResB> Service<Request<B>> for RateLimit<S>
where
    S: Service<Request<B>, Response = Response<ResB>> + Clone,
    S::Error: Into<BoxError>,
{
    type Response = Response<ResB>;
    type Error = BoxError;
    type Future = ResponseFuture<S, Request<B>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let shared = Arc::clone(&self.shared);
        let key = match &shared.key {
            Some(key) => (key.0)(&KeyInput {
                method: req.method(),
                uri: req.uri(),
                headers: req.headers(),
                extensions: req.extensions(),
            })
            .unwrap_or_default(),
            None => String::new(),
        };
        let now = shared.now();
        let mut latest = if shared.reject {
            now
        } else {
            shared.max_wait.map_or(u64::MAX, |w| {
                now.saturating_add(u64::try_from(w.as_nanos()).unwrap_or(u64::MAX))
            })
        };
        // The call's deadline, when an outer layer set one: a permit beyond
        // it is refused now rather than waited for until the deadline cuts
        // the call off.
        if let Some(deadline) = req.extensions().get::<tollgate_core::Deadline>() {
            latest = latest.min(shared.nanos_at(deadline.0));
        }
        match shared.admit(&key, now, latest) {
            Admit::Now => {
                // A permit now: go with the service the caller polled ready.
                let clone = self.inner.clone();
                let mut ready = std::mem::replace(&mut self.inner, clone);
                ResponseFuture::calling(ready.call(req), shared, key, Duration::ZERO)
            }
            Admit::Refused(error) => ResponseFuture::failed(error),
            // Wait in the response future with a fresh clone, polled ready
            // only once the permit is taken.
            Admit::Queued(place) => {
                ResponseFuture::waiting(shared, key, place, latest, now, self.inner.clone(), req)
            }
        }
    }
}

/// A waiting caller's place: its lane, its id, and the store's answer it
/// is waiting for (and since when), if it asked a store that answers later.
pub(crate) struct Place {
    pub(crate) hash: u64,
    pub(crate) id: u64,
    pub(crate) asking: Option<(StoreFuture<Result<(), UnixNanos>>, Instant)>,
    /// In the lane (reject mode asks without one).
    pub(crate) queued: bool,
    /// Counted in `waiting`.
    pub(crate) counted: bool,
}

/// What a caller gets on arrival.
pub(crate) enum Admit {
    /// A permit, taken.
    Now,
    /// A place in its key's lane, or the store's answer to wait for.
    Queued(Place),
    /// Refused at once.
    Refused(BoxError),
}

impl Shared {
    /// The refusal for a permit that comes at `at`, after `latest`.
    fn refusal(&self, now: u64, at: u64, latest: u64) -> BoxError {
        let needed = Duration::from_nanos(at.saturating_sub(now));
        if self.reject {
            Box::new(RateLimited {
                retry_after: needed,
            })
        } else {
            Box::new(WaitTooLong {
                needed,
                max: Duration::from_nanos(latest.saturating_sub(now)),
            })
        }
    }

    /// Asks the store for `key` at `now`, unless a pause learned from the
    /// upstream is still being written to it: then that pause answers.
    fn ask(&self, hash: u64, key: &str, now: u64) -> StoreFuture<Result<(), UnixNanos>> {
        match self.paused_until(hash, now) {
            Some(until) => StoreFuture::ready(Err(until)),
            None => self.store.check(key, now),
        }
    }

    /// What a store's answer known at arrival decides: a permit, a refusal,
    /// or (`None`) a wait in the lane.
    fn decided(
        &self,
        answer: Result<Result<(), UnixNanos>, StoreError>,
        now: u64,
        latest: u64,
    ) -> Option<Admit> {
        match answer {
            Ok(Ok(())) => Some(Admit::Now),
            Ok(Err(at)) if at > latest => Some(Admit::Refused(self.refusal(now, at, latest))),
            Ok(Err(_)) => None,
            Err(e) => Some(Admit::Refused(Box::new(e))),
        }
    }

    /// A permit now, a place in the lane, or a refusal.
    pub(crate) fn admit(&self, key: &str, now: u64, latest: u64) -> Admit {
        if latest < now {
            // The call's deadline has already passed: nothing to wait for.
            return Admit::Refused(self.refusal(now, now, latest));
        }
        let mut asking = None;
        if self.reject || (key.is_empty() && self.queues.unkeyed_is_empty()) {
            // Nobody waits (in reject mode nobody ever does): ask the store
            // without a lock (the common case).
            let hash = if key.is_empty() {
                0
            } else {
                self.queues.hash(key)
            };
            match self.ask(hash, key, now).now_or_later() {
                Ok(answer) => {
                    if let Some(decided) = self.decided(answer, now, latest) {
                        return decided;
                    }
                }
                Err(later) if self.reject => {
                    // Reject mode waits for the store's answer only, out of
                    // any lane: concurrent callers ask concurrently.
                    return Admit::Queued(Place {
                        hash,
                        id: u64::MAX,
                        asking: Some((later, Instant::now())),
                        queued: false,
                        counted: false,
                    });
                }
                // Asked already (a store may start its work when asked):
                // the answer goes with the caller into the lane, never
                // asked for twice.
                Err(later) => asking = Some((later, Instant::now())),
            }
        }
        let hash = self.queues.hash(key);
        let mut lanes = self.queues.lock(hash);
        let ahead = Queues::len(&lanes, hash);
        if ahead == 0 && asking.is_none() {
            match self.ask(hash, key, now).now_or_later() {
                Ok(answer) => {
                    if let Some(decided) = self.decided(answer, now, latest) {
                        return decided;
                    }
                }
                // The head of the lane, waiting for the store's answer.
                Err(later) => asking = Some((later, Instant::now())),
            }
        } else if ahead > 0 && latest != u64::MAX {
            // Refused at once if, even with everyone ahead served in turn,
            // the permit would come too late. (An estimate: a waiter that
            // turns out later than this is refused when its time is up.)
            let at = self
                .store
                .estimate(key, now, u64::try_from(ahead).unwrap_or(u64::MAX));
            if let Some(at) = at.filter(|&at| at > latest) {
                return Admit::Refused(self.refusal(now, at, latest));
            }
        }
        // A caller waiting only for the store's answer is not counted in
        // `waiting` (what `max_queue` bounds) until it has to wait for time.
        let counted = asking.is_none();
        if counted {
            let before = self.queues.waiting.fetch_add(1, Ordering::AcqRel);
            if let Some(max) = self.max_queue {
                if before >= max {
                    self.queues.waiting.fetch_sub(1, Ordering::AcqRel);
                    return Admit::Refused(Box::new(QueueFull { max_queue: max }));
                }
            }
        }
        let id = self.queues.join(&mut lanes, hash);
        Admit::Queued(Place {
            hash,
            id,
            asking,
            queued: true,
            counted,
        })
    }
}
