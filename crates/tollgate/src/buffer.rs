//! Reading a response body whole, bounded: for the facade's caller, and,
//! with retry on, inside each attempt (the [`Buffer`] layer, just below
//! retry), so that a body cut after the headers is retried like a
//! connection failure: the caller has seen nothing of it yet.
//!
//! The retry layer hands the service below it a
//! [`ReplayableBody`](tollgate_core::ReplayableBody), which is the stack's
//! [`RequestBody`]: [`Buffer`] passes it down as it is (whole in memory, or
//! streamed once).
//!
//! The body is read within the attempt's deadline when stack position 9
//! set one ([`AttemptTimeout`] leaves it on the response as an
//! [`AttemptDeadline`]): an attempt timeout bounds the whole attempt, body
//! included, and a body that trickles past it is retried as a timeout.
//!
//! A redirect the layer above will follow or refuse (301, 302, 303, 307,
//! 308 with a `Location`, when the client's redirect policy is the default
//! limited one: [`Buffer::new`]'s `redirects_decided`) is handed up unread:
//! the redirect layer drops its body (a bomb or a broken body there must not fail the
//! call). Under `RedirectPolicy::none()` or a custom policy, which may hand
//! the redirect to the caller, its body is read as any other: within the
//! attempt, retried when cut.
//!
//! A body the stack refused to read (`decode::ForeignTransferCoding`) is a
//! final body error, never retried: the same answer would be refused again.
//!
//! A streaming call (`RequestBuilder::send_streaming`, marked with the
//! [`Streamed`] extension) is let through unbuffered: its body goes to the
//! caller as it arrives. Retry still decides on its status (a 503 is retried
//! before the caller has seen anything), but a body cut after the head is the
//! caller's `Body` error, never retried: part of it may have been read.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::Body as HttpBody;
use http_body_util::{Either, Full};
use tokio::time::Instant;
use tower::{BoxError, Service};

use crate::transport::RequestBody;

/// Why a body could not be read whole.
pub(crate) enum ReadError {
    /// It is larger than the limit (declared or read so far).
    TooLarge,
    /// Reading it failed.
    Failed(BoxError),
}

/// Reads a body into memory, refusing more than `max` bytes: at once when the
/// declared size says so, otherwise as soon as the limit is passed. A body of
/// one chunk is kept without copying. (`tollgate_core::read_body`, the
/// workspace's one bounded reader.)
pub(crate) async fn collect<B>(body: B, max: usize) -> Result<Bytes, ReadError>
where
    B: HttpBody<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    tollgate_core::read_body(body, max)
        .await
        .map_err(|e| match e {
            tollgate_core::ReadBodyError::TooLarge(_) => ReadError::TooLarge,
            other => ReadError::Failed(other.into_box()),
        })
}

/// A body larger than the client's limit, found inside an attempt. Not
/// retryable: nothing in its chain says connection failure.
#[derive(Debug)]
pub(crate) struct BodyTooLarge {
    pub(crate) max: usize,
}

impl fmt::Display for BodyTooLarge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the body exceeds the limit of {} bytes", self.max)
    }
}

impl std::error::Error for BodyTooLarge {}

/// A body that failed while being read inside an attempt. Its source is an
/// `io::Error` of kind `UnexpectedEof` wrapping the original error, which
/// `tollgate_retry` classifies as a reset: retried for idempotent methods
/// (and with an idempotency key), never for others.
#[derive(Debug)]
pub(crate) struct BodyFailed {
    pub(crate) status: StatusCode,
    source: io::Error,
}

impl fmt::Display for BodyFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the response body ({}) ended early", self.status)
    }
}

impl std::error::Error for BodyFailed {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// Reads each response body whole inside the attempt, at most `max` bytes;
/// see the module docs.
#[derive(Clone, Debug)]
#[cfg_attr(not(feature = "retry"), allow(dead_code))]
pub(crate) struct Buffer<S> {
    inner: S,
    max: usize,
    redirects_decided: bool,
}

impl<S> Buffer<S> {
    /// Reads each body whole, at most `max` bytes. `redirects_decided`: the
    /// client's redirect layer follows or refuses every followable redirect
    /// (its default, limited policy), so their bodies are left unread (see
    /// the module docs).
    #[cfg_attr(not(feature = "retry"), allow(dead_code))]
    pub(crate) fn new(inner: S, max: usize, redirects_decided: bool) -> Self {
        Buffer {
            inner,
            max,
            redirects_decided,
        }
    }
}

/// The request extension of a streaming call: its response body is not
/// read in the attempt (see the module docs).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Streamed;

impl<S, B> Service<Request<tollgate_core::ReplayableBody>> for Buffer<S>
where
    S: Service<Request<RequestBody>, Response = Response<B>>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<Either<Full<Bytes>, B>>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<tollgate_core::ReplayableBody>) -> Self::Future {
        let streamed = req.extensions().get::<Streamed>().is_some();
        let response = self.inner.call(req);
        let max = self.max;
        let redirects_decided = self.redirects_decided;
        Box::pin(async move {
            let (parts, body) = response.await.map_err(Into::into)?.into_parts();
            if streamed || (redirects_decided && followable(&parts)) {
                return Ok(Response::from_parts(parts, Either::Right(body)));
            }
            let read = collect(body, max);
            let read = match parts.extensions.get::<AttemptDeadline>() {
                Some(&AttemptDeadline(at)) => tokio::time::timeout_at(at, read)
                    .await
                    .map_err(|_| tower::timeout::error::Elapsed::new())?,
                None => read.await,
            };
            match read {
                Ok(bytes) => Ok(Response::from_parts(parts, Either::Left(Full::new(bytes)))),
                Err(ReadError::TooLarge) => Err(BodyTooLarge { max }.into()),
                // A timeout stays one: retried as a timeout, reported as one.
                Err(ReadError::Failed(e)) if crate::error::has_timeout(&*e) => Err(e),
                // The read error marks it as cut after the head (a reset to
                // retry), unless the stack refused the body itself.
                Err(ReadError::Failed(e)) => Err(BodyFailed {
                    status: parts.status,
                    source: io::Error::new(
                        if refused(&*e) {
                            io::ErrorKind::InvalidData
                        } else {
                            io::ErrorKind::UnexpectedEof
                        },
                        tollgate_core::ReadBodyError::Body(e),
                    ),
                }
                .into()),
            }
        })
    }
}

/// Whether a body error is the stack's own refusal to read it (see the
/// module docs), not a failure a retry could get past.
fn refused(error: &(dyn std::error::Error + 'static)) -> bool {
    #[cfg(any(
        feature = "gzip",
        feature = "deflate",
        feature = "brotli",
        feature = "zstd"
    ))]
    if tollgate_core::chain(error).any(|e| e.is::<crate::decode::ForeignTransferCoding>()) {
        return true;
    }
    let _ = error;
    false
}

/// Whether a response is a redirect the layer above may follow (see the
/// module docs).
fn followable(parts: &http::response::Parts) -> bool {
    matches!(parts.status.as_u16(), 301 | 302 | 303 | 307 | 308)
        && parts.headers.contains_key(http::header::LOCATION)
}

/// When the attempt a response belongs to must end, in the response's
/// extensions (put there by [`AttemptTimeout`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct AttemptDeadline(pub(crate) Instant);

/// Stack position 9: bounds an attempt's head by the attempt timeout and
/// leaves its deadline on the response ([`AttemptDeadline`]), so that
/// [`Buffer`] reads the body within the same bound. (tower's
/// `TimeoutLayer` bounds the head alone.)
#[derive(Clone, Copy, Debug)]
pub(crate) struct AttemptTimeoutLayer(pub(crate) Duration);

impl<S> tower::Layer<S> for AttemptTimeoutLayer {
    type Service = AttemptTimeout<S>;

    fn layer(&self, inner: S) -> AttemptTimeout<S> {
        AttemptTimeout {
            inner,
            timeout: self.0,
        }
    }
}

/// The service of [`AttemptTimeoutLayer`].
#[derive(Clone, Debug)]
pub(crate) struct AttemptTimeout<S> {
    inner: S,
    timeout: Duration,
}

impl<S, R, B> Service<Request<R>> for AttemptTimeout<S>
where
    S: Service<Request<R>, Response = Response<B>>,
    S::Error: Into<BoxError>,
{
    type Response = Response<B>;
    type Error = BoxError;
    type Future = AttemptFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<R>) -> Self::Future {
        // `Duration::MAX` (no limit) has no instant: no sleep, no deadline.
        let deadline = Instant::now().checked_add(self.timeout);
        AttemptFuture {
            inner: self.inner.call(req),
            sleep: deadline.map(tokio::time::sleep_until),
            deadline,
        }
    }
}

pin_project_lite::pin_project! {
    /// The future of [`AttemptTimeout`].
    pub(crate) struct AttemptFuture<F> {
        #[pin]
        inner: F,
        #[pin]
        sleep: Option<tokio::time::Sleep>,
        deadline: Option<Instant>,
    }
}

impl<F, B, E> Future for AttemptFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<B>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(result) = this.inner.poll(cx) {
            let mut res = result.map_err(Into::into)?;
            if let Some(at) = *this.deadline {
                res.extensions_mut().insert(AttemptDeadline(at));
            }
            return Poll::Ready(Ok(res));
        }
        match this.sleep.as_pin_mut().map(|sleep| sleep.poll(cx)) {
            Some(Poll::Ready(())) => Poll::Ready(Err(tower::timeout::error::Elapsed::new().into())),
            _ => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `left` chunks of 8 bytes, of unknown size, then an error if `fail`.
    #[derive(Debug)]
    struct Chunks {
        left: usize,
        fail: bool,
    }

    impl HttpBody for Chunks {
        type Data = Bytes;
        type Error = io::Error;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<http_body::Frame<Bytes>, io::Error>>> {
            if self.left > 0 {
                self.left -= 1;
                return Poll::Ready(Some(Ok(http_body::Frame::data(Bytes::from_static(
                    b"01234567",
                )))));
            }
            if std::mem::take(&mut self.fail) {
                return Poll::Ready(Some(Err(io::ErrorKind::ConnectionReset.into())));
            }
            Poll::Ready(None)
        }
    }

    fn chunks(left: usize, fail: bool) -> Chunks {
        Chunks { left, fail }
    }

    #[tokio::test]
    async fn collect_refuses_a_body_of_unknown_size_as_it_passes_the_limit() {
        assert!(matches!(
            collect(chunks(3, false), 23).await,
            Err(ReadError::TooLarge)
        ));
        let whole = collect(chunks(3, false), 24).await;
        assert!(matches!(whole, Ok(b) if b.len() == 24));
        assert!(matches!(
            collect(chunks(1, true), 100).await,
            Err(ReadError::Failed(_))
        ));
    }

    /// What the retry layer decides about the errors the buffer makes: a
    /// failed body is a reset (retried for idempotent methods), a body too
    /// large is nothing it retries.
    #[cfg(feature = "retry")]
    #[tokio::test]
    async fn a_failed_body_is_a_reset_to_retry_and_a_large_one_is_final() {
        use tower::ServiceExt;

        let service = |left: usize, fail: bool| {
            Buffer::new(
                tower::service_fn(move |_: Request<RequestBody>| async move {
                    Ok::<_, io::Error>(Response::new(chunks(left, fail)))
                }),
                20,
                false,
            )
        };
        let request = || Request::new(tollgate_core::ReplayableBody::default());

        let failed = service(1, true).oneshot(request()).await.expect_err("cut");
        assert_eq!(
            tollgate_retry::error_kind(&*failed),
            Some(tollgate_retry::RetryReason::Reset)
        );
        assert_eq!(
            crate::error::classify(failed).kind(),
            crate::ErrorKind::Body
        );

        let large = service(3, false)
            .oneshot(request())
            .await
            .expect_err("24 bytes over 20");
        assert_eq!(tollgate_retry::error_kind(&*large), None);
        assert_eq!(
            crate::error::classify(large).kind(),
            crate::ErrorKind::BodyTooLarge
        );

        let whole = service(2, false)
            .oneshot(request())
            .await
            .expect("16 bytes");
        assert_eq!(whole.into_body().size_hint().exact(), Some(16));
    }

    /// A streaming call's body is handed up unread: past the limit, and
    /// with its failure left for the caller to meet.
    #[tokio::test]
    async fn a_streaming_calls_body_passes_unread() {
        use http_body_util::BodyExt;
        use tower::ServiceExt;

        let service = |left: usize, fail: bool| {
            Buffer::new(
                tower::service_fn(move |_: Request<RequestBody>| async move {
                    Ok::<_, io::Error>(Response::new(chunks(left, fail)))
                }),
                20,
                false,
            )
        };
        let streamed = || {
            let mut req = Request::new(tollgate_core::ReplayableBody::default());
            req.extensions_mut().insert(Streamed);
            req
        };
        let large = service(3, false)
            .oneshot(streamed())
            .await
            .expect("not read");
        assert_eq!(large.into_body().size_hint().exact(), None);
        let cut = service(1, true)
            .oneshot(streamed())
            .await
            .expect("not read");
        assert!(cut.into_body().collect().await.is_err());
    }
}
