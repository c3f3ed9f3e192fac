//! The retry loop, as a state machine.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, PoisonError};
use std::task::{ready, Context, Poll};
use std::time::{Duration, SystemTime};

use http::request::Parts;
use http::{Request, Response, StatusCode};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower::{BoxError, Service};

use crate::layer::Config;
use crate::record::{RetryError, RetryEvent, RetryRecord, Stopped};
use tollgate_core::parse_retry_after;
use tollgate_core::NotBefore;
use tollgate_core::{try_clone_request, BufferBody, ReplayableBody};

pin_project! {
    /// The response future of [`Retry`](crate::Retry).
    ///
    /// Dropping it at any point cancels the attempt in flight or the wait;
    /// it holds no permit of its own.
    pub struct ResponseFuture<S>
    where
        S: Service<Request<ReplayableBody>>,
    {
        #[pin]
        state: State<S::Future>,
        service: S,
        // The request for the next attempt; None when its body cannot be
        // sent again, and then nothing is retried.
        replay: Option<Request<ReplayableBody>>,
        method: http::Method,
        config: Arc<Config>,
        attempts: u32,
        // Out of line until the first retry or stop: the success path, by
        // far the commonest, keeps a smaller future.
        history: Option<Box<RetryRecord>>,
        deadline: Option<Instant>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        // Reading the request's body into memory before the first attempt
        // (boxed: rare, and the common future stays small).
        Buffering { pending: Box<(Option<Parts>, BufferBody)> },
        // Reading the body failed: nothing was sent.
        Failed { error: Option<BoxError> },
        Calling { #[pin] future: F },
        Waiting { sleep: Pin<Box<Sleep>> },
        Readying,
    }
}

impl<S> std::fmt::Debug for ResponseFuture<S>
where
    S: Service<Request<ReplayableBody>>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("attempts", &self.attempts)
            .field("history", &self.history)
            .finish_non_exhaustive()
    }
}

impl<S> ResponseFuture<S>
where
    S: Service<Request<ReplayableBody>>,
{
    pub(crate) fn new(
        future: S::Future,
        service: S,
        replay: Option<Request<ReplayableBody>>,
        method: http::Method,
        config: Arc<Config>,
        deadline: Option<Instant>,
    ) -> Self {
        ResponseFuture {
            state: State::Calling { future },
            service,
            replay,
            method,
            config,
            attempts: 1,
            history: None,
            deadline,
        }
    }

    /// The body must be read first; `service` was polled ready.
    pub(crate) fn buffering(
        parts: Parts,
        body: BufferBody,
        service: S,
        method: http::Method,
        config: Arc<Config>,
        deadline: Option<Instant>,
    ) -> Self {
        ResponseFuture {
            state: State::Buffering {
                pending: Box::new((Some(parts), body)),
            },
            service,
            replay: None,
            method,
            config,
            attempts: 0,
            history: None,
            deadline,
        }
    }

    /// Reading the body failed at once.
    pub(crate) fn failed(
        error: BoxError,
        service: S,
        method: http::Method,
        config: Arc<Config>,
    ) -> Self {
        ResponseFuture {
            state: State::Failed { error: Some(error) },
            service,
            replay: None,
            method,
            config,
            attempts: 0,
            history: None,
            deadline: None,
        }
    }
}

/// What to do after a retryable outcome.
enum Next {
    Retry(Duration, bool),
    Stop(Stopped),
}

fn decide(
    config: &Config,
    retries: u32,
    deadline: Option<Instant>,
    retry_after: Option<Duration>,
) -> Next {
    if retries >= config.max_retries {
        return Next::Stop(Stopped::MaxRetries);
    }
    let (delay, from_header) = match retry_after {
        Some(requested) if requested > config.max_retry_after => {
            return Next::Stop(Stopped::RetryAfterTooLong {
                requested,
                cap: config.max_retry_after,
            })
        }
        // The server's delay is a floor under the backoff, not a
        // replacement: `Retry-After: 0` from a struggling server does not
        // turn a backoff schedule into a tight loop.
        Some(requested) => {
            let mut rng = config.rng.lock().unwrap_or_else(PoisonError::into_inner);
            let backoff = config.backoff.delay(retries, &mut rng);
            (requested.max(backoff), true)
        }
        None => {
            let mut rng = config.rng.lock().unwrap_or_else(PoisonError::into_inner);
            (config.backoff.delay(retries, &mut rng), false)
        }
    };
    if let Some(deadline) = deadline {
        if Instant::now()
            .checked_add(delay)
            .is_none_or(|t| t >= deadline)
        {
            return Next::Stop(Stopped::Deadline { wait: delay });
        }
    }
    if let Some(budget) = &config.budget {
        if !budget.try_withdraw() {
            return Next::Stop(Stopped::Budget);
        }
    }
    Next::Retry(delay, from_header)
}

impl<S, ResB> Future for ResponseFuture<S>
where
    S: Service<Request<ReplayableBody>, Response = Response<ResB>>,
    S::Error: Into<BoxError>,
{
    type Output = Result<Response<ResB>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Buffering { pending } => {
                    let (parts, buffering) = &mut **pending;
                    let body = match ready!(Pin::new(buffering).poll(cx)) {
                        Ok(body) => body,
                        // The caller's body failed: nothing was sent.
                        Err(e) => return Poll::Ready(Err(e)),
                    };
                    let Some(parts) = parts.take() else {
                        return Poll::Ready(Err(POLLED_AFTER_DONE.into()));
                    };
                    // The service was polled ready in `call`; asking again
                    // is harmless, and the attempt is made as any other.
                    *this.replay = Some(Request::from_parts(parts, body));
                    this.state.set(State::Readying);
                }
                StateProj::Failed { error } => {
                    return Poll::Ready(Err(error
                        .take()
                        .unwrap_or_else(|| POLLED_AFTER_DONE.into())));
                }
                StateProj::Calling { future } => {
                    let result = ready!(future.poll(cx)).map_err(Into::into);
                    let method = &*this.method;
                    let (reason, retry_after) = match &result {
                        Ok(res) => {
                            match this.config.classifier.classify_status(method, res.status()) {
                                Some(reason) => {
                                    let honours = matches!(
                                        res.status(),
                                        StatusCode::TOO_MANY_REQUESTS
                                            | StatusCode::SERVICE_UNAVAILABLE
                                    );
                                    // A layer below that already scheduled the
                                    // server's wait says until when; waiting until
                                    // that same instant means one signal is never
                                    // waited for twice.
                                    let after = match res.extensions().get::<NotBefore>() {
                                        Some(NotBefore(at)) => {
                                            Some(at.saturating_duration_since(Instant::now()))
                                        }
                                        None => res
                                            .headers()
                                            .get(http::header::RETRY_AFTER)
                                            .filter(|_| honours)
                                            .and_then(|v| parse_retry_after(v, SystemTime::now())),
                                    };
                                    (reason, after)
                                }
                                None => {
                                    return Poll::Ready(finish(
                                        result,
                                        *this.attempts,
                                        this.history.take(),
                                    ))
                                }
                            }
                        }
                        Err(e) => match this.config.classifier.classify_error(method, &**e) {
                            Some(reason) => (reason, None),
                            None => {
                                return Poll::Ready(finish(
                                    result,
                                    *this.attempts,
                                    this.history.take(),
                                ))
                            }
                        },
                    };
                    let history = this.history.get_or_insert_with(Box::default);
                    let retries = u32::try_from(history.retries.len()).unwrap_or(u32::MAX);
                    if this.replay.is_none() && retries < this.config.max_retries {
                        // A retry was wanted, but the body streamed: it
                        // cannot be sent again, so the outcome is final.
                        tracing::debug!(
                            "http.request.resend_count" = retries,
                            reason = %reason,
                            stopped = %Stopped::BodyNotReplayable,
                            "not retrying"
                        );
                        history.stopped = Some(Stopped::BodyNotReplayable);
                        return Poll::Ready(finish(result, *this.attempts, this.history.take()));
                    }
                    match decide(this.config, retries, *this.deadline, retry_after) {
                        Next::Stop(stopped) => {
                            tracing::debug!(
                                "http.request.resend_count" = retries,
                                reason = %reason,
                                stopped = %stopped,
                                "not retrying"
                            );
                            history.stopped = Some(stopped);
                            return Poll::Ready(finish(
                                result,
                                *this.attempts,
                                this.history.take(),
                            ));
                        }
                        Next::Retry(delay, from_retry_after) => {
                            tracing::debug!(
                                "http.request.resend_count" = retries + 1,
                                reason = %reason,
                                delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                                from_retry_after,
                                "retrying"
                            );
                            history.retries.push(RetryEvent {
                                reason,
                                delay,
                                from_retry_after,
                            });
                            // The failed response (and its body) is dropped here.
                            drop(result);
                            if delay.is_zero() {
                                this.state.set(State::Readying);
                            } else {
                                this.state.set(State::Waiting {
                                    sleep: Box::pin(tokio::time::sleep(delay)),
                                });
                            }
                        }
                    }
                }
                StateProj::Waiting { sleep } => {
                    ready!(sleep.as_mut().poll(cx));
                    this.state.set(State::Readying);
                }
                StateProj::Readying => {
                    if let Err(e) = ready!(this.service.poll_ready(cx)) {
                        return Poll::Ready(finish(
                            Err(e.into()),
                            *this.attempts,
                            this.history.take(),
                        ));
                    }
                    // A body that will not copy again (one that streams) is
                    // sent itself, once: its outcome is then final.
                    let request = match this.replay.as_ref().and_then(try_clone_request) {
                        Some(copy) => copy,
                        None => match this.replay.take() {
                            Some(last) => last,
                            None => {
                                return Poll::Ready(finish(
                                    Err(POLLED_AFTER_DONE.into()),
                                    *this.attempts,
                                    this.history.take(),
                                ));
                            }
                        },
                    };
                    *this.attempts += 1;
                    let future = this.service.call(request);
                    this.state.set(State::Calling { future });
                }
            }
        }
    }
}

const POLLED_AFTER_DONE: &str = "retry: response future polled after completion";

/// Returns the result with the record: in the response's extensions, or
/// around the error when a retry happened.
fn finish<ResB>(
    result: Result<Response<ResB>, BoxError>,
    attempts: u32,
    history: Option<Box<RetryRecord>>,
) -> Result<Response<ResB>, BoxError> {
    let mut record = history.map(|h| *h).unwrap_or_default();
    record.attempts = attempts;
    match result {
        Ok(mut res) => {
            res.extensions_mut().insert(record);
            Ok(res)
        }
        Err(e) if record.attempts > 1 || record.stopped.is_some() => {
            Err(Box::new(RetryError::new(record, e)))
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RetryLayer;

    #[test]
    fn decisions_check_limits_in_order() {
        let layer = RetryLayer::new()
            .max_retries(1)
            .max_retry_after(Duration::from_secs(5));
        let c = &*layer.config;
        assert!(matches!(
            decide(c, 0, None, Some(Duration::from_secs(6))),
            Next::Stop(Stopped::RetryAfterTooLong { .. })
        ));
        assert!(
            matches!(decide(c, 0, None, Some(Duration::from_secs(5))), Next::Retry(d, true) if d == Duration::from_secs(5))
        );
        // Retry-After is a floor: a shorter one than the backoff waits the
        // backoff. The first backoff is at most 100 ms, the third at most
        // 400 ms; draws are jittered, so compare with the same seed.
        let seeded = RetryLayer::new()
            .max_retries(5)
            .backoff(
                crate::Backoff::exponential(Duration::from_secs(1))
                    .expect("valid")
                    .cap(Duration::from_secs(8))
                    .expect("valid"),
            )
            .seed(3);
        let again = RetryLayer::new()
            .max_retries(5)
            .backoff(
                crate::Backoff::exponential(Duration::from_secs(1))
                    .expect("valid")
                    .cap(Duration::from_secs(8))
                    .expect("valid"),
            )
            .seed(3);
        let Next::Retry(with_zero, true) = decide(&seeded.config, 2, None, Some(Duration::ZERO))
        else {
            panic!("retried")
        };
        let Next::Retry(backoff, false) = decide(&again.config, 2, None, None) else {
            panic!("retried")
        };
        assert_eq!(with_zero, backoff, "Retry-After: 0 still waits the backoff");
        assert!(matches!(
            decide(c, 1, None, None),
            Next::Stop(Stopped::MaxRetries)
        ));
        let past = Instant::now();
        assert!(matches!(
            decide(c, 0, Some(past), None),
            Next::Stop(Stopped::Deadline { .. })
        ));
    }
}
