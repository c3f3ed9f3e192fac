//! [`ResponseFuture`]: waiting for a slot, then the call.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use pin_project_lite::pin_project;
use tokio::sync::{AcquireError, OwnedSemaphorePermit};
use tokio::time::{Instant, Sleep};
use tower::{BoxError, Service};

use super::body::PermitBody;
use super::layer::Pool;
use super::QueueWait;
use crate::call::{take_error, Call, Stage, StageProj};
use crate::error::PoolQueueTimeout;

type Acquire = Pin<Box<dyn Future<Output = Result<OwnedSemaphorePermit, AcquireError>> + Send>>;

/// Counts a call as waiting until dropped, whatever ends the wait.
struct WaitingGuard(Arc<Pool>);

impl Drop for WaitingGuard {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What a queued call holds while it waits (boxed: only queued calls pay).
struct Waiting<S, R> {
    acquire: Acquire,
    /// The permit, when the first poll (at call time) got one at once.
    early: Option<Result<OwnedSemaphorePermit, AcquireError>>,
    timeout: Option<Pin<Box<Sleep>>>,
    started: Instant,
    service: Option<S>,
    request: Option<R>,
    _waiting: WaitingGuard,
}

pin_project! {
    /// The response future of [`ConcurrencyLimit`](super::ConcurrencyLimit).
    pub struct ResponseFuture<S, R>
    where
        S: Service<R>,
    {
        #[pin]
        state: Stage<Waiting<S, R>, S, R, S::Future>,
        permit: Option<OwnedSemaphorePermit>,
        waited: Duration,
    }
}

impl<S, R> std::fmt::Debug for ResponseFuture<S, R>
where
    S: Service<R>,
    S::Error: Into<BoxError>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.state.describe("waiting for a slot");
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
    pub(crate) fn calling(future: S::Future, permit: OwnedSemaphorePermit) -> Self {
        ResponseFuture {
            state: Stage::Call {
                call: Call::calling(future),
            },
            permit: Some(permit),
            waited: Duration::ZERO,
        }
    }

    pub(crate) fn failed(error: BoxError) -> Self {
        ResponseFuture {
            state: Stage::Failed { error: Some(error) },
            permit: None,
            waited: Duration::ZERO,
        }
    }

    /// A queued call; the caller has counted it in `pool.waiting`.
    pub(crate) fn waiting(pool: Arc<Pool>, service: S, request: R) -> Self {
        let semaphore = Arc::clone(&pool.semaphore);
        let timeout = pool.queue_timeout.map(|t| Box::pin(tokio::time::sleep(t)));
        // Take the place in the semaphore's FIFO queue now, at call time:
        // tokio's acquire joins the queue only when first polled, and a call
        // made later but polled first would otherwise overtake this one.
        let mut acquire: Acquire = Box::pin(semaphore.acquire_owned());
        let early = match acquire
            .as_mut()
            .poll(&mut Context::from_waker(std::task::Waker::noop()))
        {
            Poll::Ready(result) => Some(result),
            Poll::Pending => None,
        };
        ResponseFuture {
            state: Stage::Waiting {
                waiting: Box::new(Waiting {
                    acquire,
                    early,
                    timeout,
                    started: Instant::now(),
                    service: Some(service),
                    request: Some(request),
                    _waiting: WaitingGuard(pool),
                }),
            },
            permit: None,
            waited: Duration::ZERO,
        }
    }
}

impl<S, B, ResB> Future for ResponseFuture<S, Request<B>>
where
    S: Service<Request<B>, Response = Response<ResB>>,
    S::Error: Into<BoxError>,
{
    type Output = Result<Response<PermitBody<ResB>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StageProj::Waiting { waiting } => {
                    let polled = match waiting.early.take() {
                        Some(result) => Poll::Ready(result),
                        None => waiting.acquire.as_mut().poll(cx),
                    };
                    let permit = match polled {
                        Poll::Ready(Ok(permit)) => permit,
                        Poll::Ready(Err(closed)) => return Poll::Ready(Err(Box::new(closed))),
                        Poll::Pending => {
                            if let Some(timeout) = &mut waiting.timeout {
                                if timeout.as_mut().poll(cx).is_ready() {
                                    let waited = waiting.started.elapsed();
                                    return Poll::Ready(Err(Box::new(PoolQueueTimeout { waited })));
                                }
                            }
                            return Poll::Pending;
                        }
                    };
                    *this.waited = waiting.started.elapsed();
                    *this.permit = Some(permit);
                    let (Some(service), Some(request)) =
                        (waiting.service.take(), waiting.request.take())
                    else {
                        return Poll::Ready(Err(
                            "concurrency limit: polled after completion".into()
                        ));
                    };
                    // Leaving the queue: the guard in `waiting` is dropped here.
                    this.state.set(Stage::Call {
                        call: Call::ready_then(service, request),
                    });
                }
                StageProj::Call { call } => {
                    let response = ready!(call.poll_call(cx))?;
                    let Some(permit) = this.permit.take() else {
                        return Poll::Ready(Err(
                            "concurrency limit: polled after completion".into()
                        ));
                    };
                    let mut response = response.map(|body| PermitBody::new(body, permit));
                    response.extensions_mut().insert(QueueWait(*this.waited));
                    return Poll::Ready(Ok(response));
                }
                StageProj::Failed { error } => {
                    return Poll::Ready(Err(take_error(error)));
                }
            }
        }
    }
}
