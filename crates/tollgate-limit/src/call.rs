//! What both limit layers do once their wait is over: poll a fresh clone of
//! the inner service ready (so that nothing below was reserved while
//! waiting), call it, and await its answer.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use pin_project_lite::pin_project;
use tower::{BoxError, Service};

pin_project! {
    #[project = CallProj]
    pub(crate) enum Call<S, R, F> {
        Readying { service: S, request: Option<R> },
        Calling { #[pin] future: F },
    }
}

impl<S, R> Call<S, R, S::Future>
where
    S: Service<R>,
    S::Error: Into<BoxError>,
{
    /// Poll `service` ready, then call it with `request`.
    pub(crate) fn ready_then(service: S, request: R) -> Self {
        Call::Readying {
            service,
            request: Some(request),
        }
    }

    /// Already called (the caller's service was ready and nothing waited).
    pub(crate) fn calling(future: S::Future) -> Self {
        Call::Calling { future }
    }

    pub(crate) fn describe(&self) -> &'static str {
        match self {
            Call::Readying { .. } => "waiting for the inner service",
            Call::Calling { .. } => "in flight",
        }
    }

    pub(crate) fn poll_call(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<S::Response, BoxError>> {
        loop {
            match self.as_mut().project() {
                CallProj::Readying { service, request } => {
                    ready!(service.poll_ready(cx)).map_err(Into::into)?;
                    let Some(request) = request.take() else {
                        return Poll::Ready(Err("limit: polled after completion".into()));
                    };
                    let future = service.call(request);
                    self.set(Call::Calling { future });
                }
                CallProj::Calling { future } => return future.poll(cx).map_err(Into::into),
            }
        }
    }
}

pin_project! {
    /// A limit layer's response future's stages: its own wait (`W`, boxed so
    /// that calls which never wait carry none of it), then [`Call`], or an
    /// error decided at once.
    #[project = StageProj]
    pub(crate) enum Stage<W, S, R, F> {
        Waiting { waiting: Box<W> },
        Call { #[pin] call: Call<S, R, F> },
        Failed { error: Option<BoxError> },
    }
}

impl<W, S, R> Stage<W, S, R, S::Future>
where
    S: Service<R>,
    S::Error: Into<BoxError>,
{
    /// What the stage is doing, for `Debug`; `waiting` names the layer's wait.
    pub(crate) fn describe(&self, waiting: &'static str) -> &'static str {
        match self {
            Stage::Waiting { .. } => waiting,
            Stage::Call { call } => call.describe(),
            Stage::Failed { .. } => "failed",
        }
    }
}

/// A [`Stage::Failed`] error, taken (a second poll gets a plain error).
pub(crate) fn take_error(error: &mut Option<BoxError>) -> BoxError {
    error
        .take()
        .unwrap_or_else(|| "limit: polled after completion".into())
}
