//! Streaming, both ways: [`StreamingResponse`] (a response whose body is
//! read as it arrives, from
//! [`RequestBuilder::send_streaming`](crate::RequestBuilder::send_streaming))
//! and request bodies from a stream
//! ([`RequestBuilder::body_stream`](crate::RequestBuilder::body_stream)).
//!
//! # A streamed response
//!
//! The call goes through the whole stack as a buffered one does, with these
//! differences, each chosen here:
//!
//! - **No body limit on the stream.** `max_response_body` does not cap
//!   [`chunk`](StreamingResponse::chunk) or the [`Stream`]: the caller reads
//!   what it wants. [`bytes`](StreamingResponse::bytes),
//!   [`text`](StreamingResponse::text), [`json`](StreamingResponse::json) and
//!   [`into_buffered`](StreamingResponse::into_buffered) read the rest into
//!   memory and apply it (`BodyTooLarge`).
//! - **The deadline still ends the read.** The call's total timeout covers
//!   the head and every chunk: a body still arriving when it passes ends
//!   with an [`ErrorKind::Timeout`] error. The read timeout
//!   (`ClientBuilder::read_timeout`) bounds each wait between two chunks.
//! - **The pool slot is held until the body ends or is dropped.** The
//!   concurrency pool's permit rides in the body: dropping the
//!   `StreamingResponse` (at any point) frees it. A rate-limit permit is spent
//!   at admission, as for any call.
//! - **The cache is bypassed**: a streamed response is neither answered from
//!   the cache nor stored (storing it would mean buffering it).
//! - **Retry** still retries on the status (a `503`, a `429`) before the body
//!   is handed over; once the head is handed over nothing is retried: a body
//!   cut midway is the caller's [`ErrorKind::Body`] error.
//! - **Decompression** still decodes: the chunks are decoded bytes.
//!
//! # A streamed request body
//!
//! Sent once, as it streams: never retried (retry, a 401's replay by the
//! auth layer and a 307/308 redirect all need the body again, so the first
//! response is the answer: a `503` comes back as the `503`, a `307` as the
//! `307`), and never given to the cache. An error from the stream ends the
//! call with an [`ErrorKind::Body`] error, over HTTP/1.1 and HTTP/2 alike,
//! and the request is not finished (the HTTP/1.1 connection is closed, the
//! HTTP/2 stream reset; nothing more is sent). So does a stream
//! longer or shorter than a `Content-Length` the caller set (see
//! [`RequestBuilder::body_stream`](crate::RequestBuilder::body_stream)).
//! The read timeout counts each piece of the body sent as progress: the
//! wait for the response head starts when the body has been sent in full.
//! The stream is dropped when the call ends (its response read or dropped,
//! its future dropped, or the call failed), even when the server answered
//! before reading it all and keeps the connection open.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_core::Stream;
use http::{Method, StatusCode, Uri};
use http_body::{Body as HttpBody, Frame, SizeHint};
use serde::de::DeserializeOwned;
use tokio::time::{Instant, Sleep};
use tower::BoxError;

use crate::error::{Error, ErrorKind, TimedOut};
use crate::response::{head_accessors, ApiResponse, ResponseHead, Summary};
use crate::transport::ResponseBody;

/// A response whose body is read as it arrives: a download of any size.
/// Made by
/// [`RequestBuilder::send_streaming`](crate::RequestBuilder::send_streaming);
/// see the [module docs](self) for what holds while it is read.
///
/// Read it chunk by chunk with [`chunk`](Self::chunk), as a
/// [`Stream`] of `Result<Bytes, Error>`, or whole with
/// [`bytes`](Self::bytes), [`text`](Self::text) or [`json`](Self::json)
/// (bounded by `max_response_body`).
///
/// ```no_run
/// # async fn run(client: tollgate::Client) -> Result<(), tollgate::Error> {
/// let mut res = client.get("/export").send_streaming().await?.error_for_status()?;
/// let mut total = 0;
/// while let Some(chunk) = res.chunk().await? {
///     total += chunk.len();
/// }
/// println!("{total} bytes from {}", res.url());
/// # Ok(()) }
/// ```
pub struct StreamingResponse {
    head: ResponseHead,
    body: CallBody,
    received_at: SystemTime,
    started: Instant,
    elapsed: Duration,
    max_body: usize,
}

impl fmt::Debug for StreamingResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Header names only: values may be credentials or cookies.
        let names: Vec<&str> = self
            .head
            .headers
            .keys()
            .map(http::HeaderName::as_str)
            .collect();
        f.debug_struct("StreamingResponse")
            .field("status", &self.head.status)
            .field("method", &self.head.method)
            .field(
                "url",
                &crate::url::display_without_query(&self.head.url).to_string(),
            )
            .field("headers", &names)
            .field("summary", &self.head.summary)
            .finish_non_exhaustive()
    }
}

/// What [`StreamingResponse::new`] takes from the call.
pub(crate) struct Head {
    pub(crate) method: Method,
    pub(crate) url: Uri,
    pub(crate) parts: http::response::Parts,
    pub(crate) body: ResponseBody,
    pub(crate) started: Instant,
    /// The call's total deadline: when, and how long it was.
    pub(crate) deadline: Option<(Instant, Duration)>,
    pub(crate) summary: Summary,
    pub(crate) max_body: usize,
}

impl StreamingResponse {
    pub(crate) fn new(head: Head) -> Self {
        let Head {
            method,
            url,
            parts,
            body,
            started,
            deadline,
            summary,
            max_body,
        } = head;
        let head = ResponseHead::new(method, url, parts, summary);
        StreamingResponse {
            body: CallBody {
                inner: Some(body),
                deadline: deadline.map(|(at, d)| Deadline {
                    at,
                    d,
                    sleep: Box::pin(tokio::time::sleep_until(at)),
                }),
                method: head.method.clone(),
                url: head.url.clone(),
                status: head.status,
            },
            head,
            received_at: SystemTime::now(),
            elapsed: started.elapsed(),
            started,
            max_body,
        }
    }

    head_accessors!(
        "The response itself for 1xx to 3xx, an [`ErrorKind::Status`] error for \
         4xx and 5xx. The body is not read: the error has no snippet of it (read \
         it first with [`into_buffered`](Self::into_buffered) for one)."
    );

    /// When the head arrived, on the wall clock.
    pub fn received_at(&self) -> SystemTime {
        self.received_at
    }

    /// How long the call took until the head arrived (the body is read
    /// after).
    pub fn elapsed(&self) -> Duration {
        self.elapsed
    }

    /// The body's length, when the server declared it (and the body is not
    /// being decoded) and nothing of it was read yet; `None` otherwise.
    pub fn content_length(&self) -> Option<u64> {
        self.body.inner.as_ref()?.size_hint().exact()
    }

    fn status_error(&self) -> Option<Error> {
        let status = self.head.status;
        (status.is_client_error() || status.is_server_error()).then(|| {
            Error::new(ErrorKind::Status, "")
                .with_status(status)
                .with_request(&self.head.method, &self.head.url)
        })
    }

    /// The next chunk of the body, `None` at its end. Chunks are handed on
    /// as they arrive (decoded, when the body was compressed), whatever
    /// their size.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Timeout`] when the call's deadline passes or no data
    /// came for the read timeout, [`ErrorKind::Body`] when the body failed
    /// (a connection cut, a decoding error). After an error the stream
    /// ends.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, Error> {
        std::future::poll_fn(|cx| self.body.poll_chunk(cx))
            .await
            .transpose()
    }

    /// The rest of the body as a [`Stream`] of chunks (the response itself
    /// is one; this names it for readers of reqwest's `bytes_stream`).
    pub fn bytes_stream(self) -> impl Stream<Item = Result<Bytes, Error>> + Send {
        self
    }

    /// Reads the rest of the body into an [`ApiResponse`], at most the
    /// client's `max_response_body` bytes: what `send` would have
    /// answered.
    ///
    /// # Errors
    ///
    /// As [`chunk`](Self::chunk), and [`ErrorKind::BodyTooLarge`] past the
    /// limit.
    pub async fn into_buffered(mut self) -> Result<ApiResponse, Error> {
        let max = self.max_body;
        let mut first: Option<Bytes> = None;
        let mut rest: Vec<u8> = Vec::new();
        let mut len = 0usize;
        while let Some(chunk) = self.chunk().await? {
            len = len.saturating_add(chunk.len());
            if len > max {
                return Err(Error::new(
                    ErrorKind::BodyTooLarge,
                    format!("the body exceeds the limit of {max} bytes"),
                )
                .with_status(self.head.status)
                .with_request(&self.head.method, &self.head.url));
            }
            // One chunk is kept as it is; more are joined.
            match first.take() {
                None if rest.is_empty() => first = Some(chunk),
                None => rest.extend_from_slice(&chunk),
                Some(one) => {
                    rest.extend_from_slice(&one);
                    rest.extend_from_slice(&chunk);
                }
            }
        }
        let body = first.unwrap_or_else(|| Bytes::from(rest));
        let elapsed = self.started.elapsed();
        Ok(ApiResponse::from_head(
            self.head,
            body,
            SystemTime::now(),
            elapsed,
        ))
    }

    /// The rest of the body, at most `max_response_body` bytes.
    ///
    /// # Errors
    ///
    /// As [`into_buffered`](Self::into_buffered).
    pub async fn bytes(self) -> Result<Bytes, Error> {
        Ok(self.into_buffered().await?.into_bytes())
    }

    /// The rest of the body as text in its charset, as
    /// [`ApiResponse::text`] reads it (the `Content-Type` charset, a
    /// byte-order mark, UTF-8 otherwise).
    ///
    /// # Errors
    ///
    /// As [`into_buffered`](Self::into_buffered), and
    /// [`ErrorKind::Decode`] for bytes that are not text in the charset.
    pub async fn text(self) -> Result<String, Error> {
        self.into_buffered().await?.text()
    }

    /// Reads the rest of the body and decodes it from JSON as `T`, in one
    /// step.
    ///
    /// # Errors
    ///
    /// As [`into_buffered`](Self::into_buffered), and
    /// [`ErrorKind::Decode`] with serde's reason and the start of the body.
    pub async fn json<T: DeserializeOwned>(self) -> Result<T, Error> {
        self.into_buffered().await?.json()
    }
}

impl Stream for StreamingResponse {
    type Item = Result<Bytes, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().body.poll_chunk(cx)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        match &self.body.inner {
            Some(b) if b.is_end_stream() => (0, Some(0)),
            None => (0, Some(0)),
            Some(_) => (0, None),
        }
    }
}

/// The body of a streamed call: the stack's, under the call's deadline,
/// ended (`None`) after its end or its first error.
struct CallBody {
    inner: Option<ResponseBody>,
    deadline: Option<Deadline>,
    // For the errors.
    method: Method,
    url: Uri,
    status: StatusCode,
}

/// The call's total deadline over its body.
struct Deadline {
    at: Instant,
    d: Duration,
    /// Wakes a reader waiting for data when it passes.
    sleep: Pin<Box<Sleep>>,
}

impl CallBody {
    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, Error>>> {
        loop {
            let Some(body) = self.inner.as_mut() else {
                return Poll::Ready(None);
            };
            // Checked before each read too: a body that always has data
            // ready never waits for the timer.
            if let Some(deadline) = &self.deadline {
                if Instant::now() >= deadline.at {
                    return Poll::Ready(Some(Err(self.timed_out())));
                }
            }
            match Pin::new(body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) if data.is_empty() => continue,
                    Ok(data) => return Poll::Ready(Some(Ok(data))),
                    // Trailers: not part of the data.
                    Err(_) => continue,
                },
                Poll::Ready(Some(Err(e))) => {
                    // Dropped at once: the connection and the pool slot go.
                    self.inner = None;
                    let error = crate::error::body_error(e)
                        .with_status(self.status)
                        .with_request(&self.method, &self.url);
                    return Poll::Ready(Some(Err(error)));
                }
                Poll::Ready(None) => {
                    self.inner = None;
                    return Poll::Ready(None);
                }
                Poll::Pending => {}
            }
            let Some(deadline) = self.deadline.as_mut() else {
                return Poll::Pending;
            };
            if deadline.sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            return Poll::Ready(Some(Err(self.timed_out())));
        }
    }

    /// The deadline's error; the body is dropped (its connection and pool
    /// slot go at once).
    fn timed_out(&mut self) -> Error {
        self.inner = None;
        let d = self.deadline.as_ref().map_or(Duration::ZERO, |d| d.d);
        Error::new(
            ErrorKind::Timeout,
            format!("no complete response within {d:?}"),
        )
        .with_source(TimedOut)
        .with_status(self.status)
        .with_request(&self.method, &self.url)
    }
}

/// The error a streamed request body ended with, as the facade finds it in
/// an error's chain: the call fails with [`ErrorKind::Body`].
#[derive(Debug)]
pub(crate) struct UploadFailed(BoxError);

impl fmt::Display for UploadFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the request body failed: {}", self.0)
    }
}

impl std::error::Error for UploadFailed {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

pin_project_lite::pin_project! {
    /// An `http_body::Body` of the chunks of a [`Stream`], ending at its
    /// end; its first error ends it as an [`UploadFailed`].
    pub(crate) struct StreamBody<S> {
        #[pin]
        stream: S,
        done: bool,
        len: Option<u64>,
    }
}

impl<S> StreamBody<S> {
    /// `len`: the exact length, when known (sent as `Content-Length`).
    pub(crate) fn new(stream: S, len: Option<u64>) -> Self {
        StreamBody {
            stream,
            done: false,
            len,
        }
    }
}

impl<S, E> HttpBody for StreamBody<S>
where
    S: Stream<Item = Result<Bytes, E>>,
    E: Into<BoxError>,
{
    type Data = Bytes;
    type Error = UploadFailed;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, UploadFailed>>> {
        let this = self.project();
        if *this.done {
            return Poll::Ready(None);
        }
        match this.stream.poll_next(cx) {
            Poll::Ready(Some(Ok(data))) => Poll::Ready(Some(Ok(Frame::data(data)))),
            Poll::Ready(Some(Err(e))) => {
                *this.done = true;
                Poll::Ready(Some(Err(UploadFailed(e.into()))))
            }
            Poll::Ready(None) => {
                *this.done = true;
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        match self.len {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

/// A streamed body that did not match the `Content-Length` the caller set
/// (`ExactLength`): the call fails with [`ErrorKind::Body`], the request
/// unfinished.
#[derive(Debug)]
pub(crate) enum LengthMismatch {
    /// More than the declared length.
    Longer { declared: u64 },
    /// The end came after `sent` of the declared bytes.
    Shorter { declared: u64, sent: u64 },
}

impl fmt::Display for LengthMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LengthMismatch::Longer { declared } => write!(
                f,
                "the streamed body is longer than its Content-Length of {declared} bytes"
            ),
            LengthMismatch::Shorter { declared, sent } => write!(
                f,
                "the streamed body ended after {sent} of the {declared} bytes its \
                 Content-Length declares"
            ),
        }
    }
}

impl std::error::Error for LengthMismatch {}

pin_project_lite::pin_project! {
    /// A streamed body held to the `Content-Length` its caller declared:
    /// exactly `declared` bytes, or an [`UploadFailed`] error
    /// ([`LengthMismatch`]) before the request is complete.
    ///
    /// hyper, given a `Content-Length` and a longer body, sends the declared
    /// length and stops there (the rest is silently dropped, the request a
    /// success); given a shorter one, it fails the request. Neither may pass
    /// for a success here, so the frame that completes the length is held
    /// back until the stream says it has ended: more data after it is an
    /// error, and hyper never has the whole declared length to send. In its
    /// place an empty data frame is passed on at once, so that the chunk
    /// counts as progress for the read timeout.
    pub(crate) struct ExactLength<B> {
        #[pin]
        inner: B,
        declared: u64,
        sent: u64,
        // The frame that completes the length, until the stream's end.
        held: Option<Frame<Bytes>>,
        done: bool,
    }
}

impl<B> ExactLength<B> {
    pub(crate) fn new(inner: B, declared: u64) -> Self {
        ExactLength {
            inner,
            declared,
            sent: 0,
            held: None,
            done: false,
        }
    }
}

impl<B> HttpBody for ExactLength<B>
where
    B: HttpBody<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        if *this.done {
            return Poll::Ready(None);
        }
        let declared = *this.declared;
        let fail = |e: LengthMismatch| Poll::Ready(Some(Err(UploadFailed(e.into()).into())));
        loop {
            match this.inner.as_mut().poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    *this.done = true;
                    if *this.sent < declared {
                        return fail(LengthMismatch::Shorter {
                            declared,
                            sent: *this.sent,
                        });
                    }
                    return Poll::Ready(this.held.take().map(Ok));
                }
                Poll::Ready(Some(Err(e))) => {
                    *this.done = true;
                    return Poll::Ready(Some(Err(e.into())));
                }
                Poll::Ready(Some(Ok(frame))) => {
                    let len = frame.data_ref().map_or(0, |d| d.len() as u64);
                    if len == 0 {
                        // An empty chunk or trailers: nothing to count;
                        // behind a held frame, nothing to send either.
                        if this.held.is_some() {
                            continue;
                        }
                        return Poll::Ready(Some(Ok(frame)));
                    }
                    if len > declared - *this.sent {
                        *this.done = true;
                        *this.held = None;
                        return fail(LengthMismatch::Longer { declared });
                    }
                    *this.sent += len;
                    if *this.sent == declared {
                        *this.held = Some(frame);
                        // The caller's stream yielded a chunk: news, even
                        // held back. An empty data frame says so to the
                        // transport's read timeout, which counts each frame
                        // as progress (hyper sends nothing for it over
                        // HTTP/1.1, an empty DATA frame over HTTP/2).
                        return Poll::Ready(Some(Ok(Frame::data(Bytes::new()))));
                    }
                    return Poll::Ready(Some(Ok(frame)));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        if self.declared == 0 && !self.done {
            // Unknown until the stream ends: an exact zero would let the
            // transport send an empty body without reading the stream.
            return SizeHint::default();
        }
        // Still to come: the bytes not yet counted and the held frame.
        let held = self
            .held
            .as_ref()
            .and_then(Frame::data_ref)
            .map_or(0, |d| d.len() as u64);
        SizeHint::with_exact(self.declared - self.sent + held)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::convert::Infallible;

    use proptest::prelude::*;

    use super::*;

    /// These chunks, each ready at once.
    struct Chunks(VecDeque<Bytes>);

    impl Stream for Chunks {
        type Item = Result<Bytes, Infallible>;

        fn poll_next(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            Poll::Ready(self.0.pop_front().map(Ok))
        }
    }

    proptest! {
        /// Against a model: a stream of exactly the declared length comes
        /// through whole; any other ends in one error, and before it the
        /// transport never had the whole declared length (so hyper, which
        /// stops at it, cannot finish the request).
        #[test]
        fn exact_length_passes_the_declared_length_or_fails_before_reaching_it(
            sizes in proptest::collection::vec(0usize..5, 0..6),
            declared in 0u64..20,
        ) {
            let chunks: VecDeque<Bytes> = sizes
                .iter()
                .enumerate()
                .map(|(i, n)| Bytes::from(vec![i as u8; *n]))
                .collect();
            let whole: Vec<u8> = chunks.iter().flat_map(|c| c.to_vec()).collect();
            let mut body = std::pin::pin!(ExactLength::new(
                StreamBody::new(Chunks(chunks), None),
                declared,
            ));
            let mut cx = Context::from_waker(std::task::Waker::noop());
            let mut sent = Vec::new();
            let mut errors = 0;
            for _ in 0..32 {
                match body.as_mut().poll_frame(&mut cx) {
                    Poll::Ready(Some(Ok(frame))) => {
                        prop_assert_eq!(errors, 0, "nothing after the error");
                        sent.extend_from_slice(frame.data_ref().expect("data"));
                    }
                    Poll::Ready(Some(Err(e))) => {
                        prop_assert!(e.is::<UploadFailed>());
                        errors += 1;
                    }
                    Poll::Ready(None) => break,
                    Poll::Pending => prop_assert!(false, "never pending"),
                }
            }
            prop_assert!(body.is_end_stream());
            if whole.len() as u64 == declared {
                prop_assert_eq!(errors, 0);
                prop_assert_eq!(sent, whole);
            } else {
                prop_assert_eq!(errors, 1);
                prop_assert!(sent.len() as u64 <= declared);
                prop_assert!(declared == 0 || (sent.len() as u64) < declared);
                prop_assert_eq!(&whole[..sent.len()], &sent[..]);
            }
        }
    }
}
