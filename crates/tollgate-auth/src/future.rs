//! [`ResponseFuture`]: waiting for a token, calling, and one replay after a
//! 401.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use pin_project_lite::pin_project;
use tower::{BoxError, Service};

use crate::error::AuthError;
use crate::layer::Config;
use crate::token::{Current, Tokens};

type Refresh = Pin<Box<dyn Future<Output = Result<Current, AuthError>> + Send>>;

/// What a request refreshing tokens needs to know.
#[derive(Clone)]
pub(crate) struct TokenCtx {
    tokens: Arc<Tokens>,
    skew: Duration,
    timeout: Duration,
    replay: bool,
}

impl TokenCtx {
    pub(crate) fn new(tokens: &Arc<Tokens>, config: &Config) -> Self {
        TokenCtx {
            tokens: tokens.clone(),
            skew: config.skew,
            timeout: config.timeout,
            replay: config.replay_unauthorized,
        }
    }

    fn refresh(&self, stale: Option<u64>) -> Refresh {
        let (tokens, skew, timeout) = (self.tokens.clone(), self.skew, self.timeout);
        Box::pin(async move { tokens.refresh(stale, skew, timeout).await })
    }
}

/// What a 401 needs: a copy of the request, a service to send it with, and
/// which token was refused.
struct Replay<S, B> {
    service: S,
    request: Request<B>,
    generation: u64,
    ctx: TokenCtx,
}

pin_project! {
    #[project = StateProj]
    enum State<S, B>
    where
        S: Service<Request<B>>,
    {
        // The states other than `Called` are boxed: they are rare (a refresh,
        // a replay), and the future of every request stays the size of the
        // inner one.
        /// Waiting for a token before the first attempt.
        Token { refresh: Refresh, pending: Box<(Option<S>, Option<Request<B>>, TokenCtx)> },
        /// Polling the inner service ready, then calling it.
        Ready { pending: Box<(Option<S>, Option<Request<B>>)> },
        Called { #[pin] future: S::Future },
        /// A 401 came back: waiting for a new token to replay with.
        Renewing { refresh: Refresh },
    }
}

pin_project! {
    /// The response future of [`Auth`](crate::Auth).
    pub struct ResponseFuture<S, B>
    where
        S: Service<Request<B>>,
    {
        #[pin]
        state: State<S, B>,
        // Boxed: only requests with a token carry one, and the future of a
        // static credential stays small.
        replay: Option<Box<Replay<S, B>>>,
    }
}

impl<S, B> fmt::Debug for ResponseFuture<S, B>
where
    S: Service<Request<B>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Token { .. } => "waiting for a token",
            State::Ready { .. } | State::Called { .. } => "in flight",
            State::Renewing { .. } => "renewing a refused token",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .field("can_replay", &self.replay.is_some())
            .finish_non_exhaustive()
    }
}

/// Puts the token on `request` and keeps a copy for a 401, if the body can
/// be replayed: one whole in memory, recognised by its type
/// ([`try_clone_request_any`](tollgate_core::try_clone_request_any)). Any
/// other body is sent once, and its 401 returned as it is: never resent
/// empty.
fn prepare<S: Clone, B: 'static>(
    service: &S,
    request: &mut Request<B>,
    current: &Current,
    ctx: &TokenCtx,
) -> Option<Box<Replay<S, B>>> {
    current.credential.apply(request, true);
    if !ctx.replay {
        return None;
    }
    Some(Box::new(Replay {
        service: service.clone(),
        request: tollgate_core::try_clone_request_any(request)?,
        generation: current.generation,
        ctx: ctx.clone(),
    }))
}

impl<S, B, ResB> ResponseFuture<S, B>
where
    S: Service<Request<B>, Response = Response<ResB>> + Clone,
    S::Error: Into<BoxError>,
    B: 'static,
{
    /// Called already; nothing to replay.
    pub(crate) fn called(future: S::Future) -> Self {
        ResponseFuture {
            state: State::Called { future },
            replay: None,
        }
    }

    /// With a fresh token at hand: call at once.
    pub(crate) fn with_token(
        service: &mut S,
        mut request: Request<B>,
        current: &Current,
        ctx: &TokenCtx,
    ) -> Self {
        let replay = prepare(service, &mut request, current, ctx);
        ResponseFuture {
            state: State::Called {
                future: service.call(request),
            },
            replay,
        }
    }

    /// Without one: refresh first.
    pub(crate) fn refreshing(service: S, request: Request<B>, ctx: TokenCtx) -> Self {
        ResponseFuture {
            state: State::Token {
                refresh: ctx.refresh(None),
                pending: Box::new((Some(service), Some(request), ctx)),
            },
            replay: None,
        }
    }
}

impl<S, B, ResB> Future for ResponseFuture<S, B>
where
    S: Service<Request<B>, Response = Response<ResB>> + Clone,
    S::Error: Into<BoxError>,
    B: 'static,
{
    type Output = Result<Response<ResB>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Token { refresh, pending } => {
                    let current = ready!(refresh.as_mut().poll(cx))?;
                    let (service, request, ctx) = &mut **pending;
                    let (Some(service), Some(mut request)) = (service.take(), request.take())
                    else {
                        return Poll::Ready(Err(POLLED_AFTER_DONE.into()));
                    };
                    *this.replay = prepare(&service, &mut request, &current, ctx);
                    this.state.set(State::Ready {
                        pending: Box::new((Some(service), Some(request))),
                    });
                }
                StateProj::Ready { pending } => {
                    let (service, request) = &mut **pending;
                    let Some(svc) = service.as_mut() else {
                        return Poll::Ready(Err(POLLED_AFTER_DONE.into()));
                    };
                    ready!(svc.poll_ready(cx)).map_err(Into::into)?;
                    let (Some(mut svc), Some(request)) = (service.take(), request.take()) else {
                        return Poll::Ready(Err(POLLED_AFTER_DONE.into()));
                    };
                    let future = svc.call(request);
                    this.state.set(State::Called { future });
                }
                StateProj::Called { future } => {
                    let response = ready!(future.poll(cx)).map_err(Into::into)?;
                    if response.status() != StatusCode::UNAUTHORIZED {
                        return Poll::Ready(Ok(response));
                    }
                    let Some(replay) = this.replay.as_ref() else {
                        return Poll::Ready(Ok(response));
                    };
                    tracing::debug!(
                        target: "tollgate_auth",
                        "401 to a token: refreshing it and replaying the request once"
                    );
                    let refresh = replay.ctx.refresh(Some(replay.generation));
                    this.state.set(State::Renewing { refresh });
                }
                StateProj::Renewing { refresh } => {
                    let current = ready!(refresh.as_mut().poll(cx))?;
                    let Some(replay) = this.replay.take() else {
                        return Poll::Ready(Err(POLLED_AFTER_DONE.into()));
                    };
                    let Replay {
                        service,
                        mut request,
                        ..
                    } = *replay;
                    current.credential.apply(&mut request, true);
                    this.state.set(State::Ready {
                        pending: Box::new((Some(service), Some(request))),
                    });
                }
            }
        }
    }
}

const POLLED_AFTER_DONE: &str = "auth: response future polled after completion";
