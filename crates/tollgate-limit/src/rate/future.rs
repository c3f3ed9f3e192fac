//! [`ResponseFuture`]: waiting for the reserved permit, then the call, then
//! learning from the answer.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, SystemTime};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tokio::time::Sleep;
use tower::{BoxError, Service};

use super::feedback::upstream_pause;
use super::layer::Shared;
use super::store::Reservation;
use super::PermitWait;
use crate::call::{take_error, Call, Stage, StageProj};

/// Holds a waiting caller's reservation and queue place; dropping it (the
/// caller left) gives both back.
struct Ticket {
    shared: Arc<Shared>,
    key: String,
    reservation: Option<Reservation>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.shared.waiting.fetch_sub(1, Ordering::AcqRel);
        if let Some(r) = self.reservation.take() {
            self.shared.store.cancel(&self.key, r);
        }
    }
}

struct Waiting<S, R> {
    sleep: Pin<Box<Sleep>>,
    service: Option<S>,
    request: Option<R>,
    ticket: Ticket,
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

    /// A caller with a reserved permit in the future; counted in `waiting`.
    pub(crate) fn waiting(
        shared: Arc<Shared>,
        key: String,
        reservation: Reservation,
        service: S,
        request: R,
    ) -> Self {
        let sleep = Box::pin(tokio::time::sleep_until(shared.instant(reservation.at)));
        let waited = Duration::from_nanos(reservation.at.saturating_sub(shared.now()));
        ResponseFuture {
            state: Stage::Waiting {
                waiting: Box::new(Waiting {
                    sleep,
                    service: Some(service),
                    request: Some(request),
                    ticket: Ticket {
                        shared: Arc::clone(&shared),
                        key: key.clone(),
                        reservation: Some(reservation),
                    },
                }),
            },
            context: Some((shared, key)),
            waited,
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
                    ready!(waiting.sleep.as_mut().poll(cx));
                    // The permit is used from here on: it is not given back.
                    waiting.ticket.reservation = None;
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

/// Pauses the limiter when the upstream asks, and says until when on the
/// response, so the retry layer above waits until that same instant.
fn learn<B>(shared: &Shared, key: &str, response: &mut Response<B>) {
    if !shared.learn || !super::feedback::might_signal(response.status(), response.headers()) {
        return;
    }
    let Some(pause) = upstream_pause(response.status(), response.headers(), SystemTime::now())
    else {
        return;
    };
    let pause = pause.min(shared.max_pause);
    let now = shared.now();
    let until = now.saturating_add(u64::try_from(pause.as_nanos()).unwrap_or(u64::MAX));
    shared.store.pause(key, until);
    tracing::debug!(
        pause_ms = u64::try_from(pause.as_millis()).unwrap_or(u64::MAX),
        key,
        "upstream asked to slow down; limiter paused"
    );
    if response
        .extensions()
        .get::<tollgate_retry::NotBefore>()
        .is_none()
    {
        response
            .extensions_mut()
            .insert(tollgate_retry::NotBefore(shared.instant(until)));
    }
}
