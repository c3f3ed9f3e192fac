//! The bottom of the stack (position 11 in `stack.rs`): by default a
//! hyper-util legacy client with connection pooling, bounded connects and
//! bounded reads.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body::Body as HttpBody;
use http_body_util::combinators::UnsyncBoxBody;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::time::{Instant, Sleep};
use tollgate_core::SharedError;
use tower::{BoxError, Service};

use crate::error::Error;
#[cfg(any(not(feature = "http2"), not(feature = "rustls")))]
use crate::error::ErrorKind;
use crate::proxy::{Proxies, ProxyConnector, ProxyHeaders};

/// The request body type of the stack: either whole in memory (replayable:
/// retry, a 307/308 redirect and auth's 401 replay may send it again) or
/// streamed (sent once, never replayed), the body of
/// [`RequestBuilder::body_stream`](crate::RequestBuilder::body_stream) and of
/// a multipart form with a file.
///
/// It is `tollgate_core::ReplayableBody`, the type the retry layer hands its
/// inner service, so that retry takes it as it is. A layer given to
/// [`ClientBuilder::layer`](crate::ClientBuilder::layer) or a
/// [`transport`](crate::ClientBuilder::transport) makes one with
/// `RequestBody::from_bytes` (or `From<Bytes>`), reads it as any
/// `http_body::Body`, and asks [`is_replayable`](RequestBody::is_replayable)
/// whether it is whole in memory. (Before streaming bodies it was
/// `Full<Bytes>`.)
pub type RequestBody = tollgate_core::ReplayableBody;

/// The response body type the facade reads from its stack.
pub type ResponseBody = UnsyncBoxBody<Bytes, BoxError>;

/// Settings of the default transport.
#[derive(Clone, Debug)]
pub(crate) struct TransportConfig {
    pub(crate) connect_timeout: Option<Duration>,
    pub(crate) read_timeout: Option<Duration>,
    pub(crate) pool_idle_timeout: Option<Duration>,
    pub(crate) pool_max_idle_per_host: usize,
    pub(crate) http2_prior_knowledge: bool,
    #[cfg(feature = "rustls")]
    pub(crate) extra_roots: Vec<Vec<u8>>,
    /// Roots, client certificate, or a caller's own rustls config.
    #[cfg(feature = "rustls")]
    pub(crate) tls: crate::tls::TlsOptions,
    /// The proxies, in the order they were added (the first that takes a
    /// destination is used).
    pub(crate) proxies: Vec<crate::proxy::ProxySpec>,
}

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig {
            connect_timeout: Some(Duration::from_secs(10)),
            read_timeout: Some(crate::client::DEFAULT_READ_TIMEOUT),
            pool_idle_timeout: Some(Duration::from_secs(90)),
            pool_max_idle_per_host: usize::MAX,
            http2_prior_knowledge: false,
            #[cfg(feature = "rustls")]
            extra_roots: Vec::new(),
            #[cfg(feature = "rustls")]
            tls: crate::tls::TlsOptions::default(),
            proxies: Vec::new(),
        }
    }
}

/// The built-in transport's connector: TLS over a direct connection or one
/// through a proxy.
#[cfg(feature = "rustls")]
type Connector = ConnectTimeout<hyper_rustls::HttpsConnector<ProxyConnector>>;
/// The built-in transport's connector.
#[cfg(not(feature = "rustls"))]
type Connector = ConnectTimeout<ProxyConnector>;

/// The built-in transport's concrete type.
pub(crate) type HyperClient =
    ReadTimeout<ProxyHeaders<hyper_util::client::legacy::Client<Connector, RequestBody>>>;

/// Builds the hyper-util client: HTTP/1.1, HTTP/2 by ALPN over TLS (or by
/// prior knowledge when asked), HTTPS through rustls with the ring provider.
/// The connect timeout bounds the whole connection set-up (DNS, TCP and the
/// TLS handshake); the read timeout every wait for the response head and
/// for each piece of its body.
pub(crate) fn hyper_client(cfg: &TransportConfig) -> Result<HyperClient, Error> {
    let mut http = HttpConnector::new();
    // Without TLS, the connector itself refuses anything but `http`: an
    // `https` URL must never go out in cleartext.
    http.enforce_http(cfg!(not(feature = "rustls")));
    http.set_nodelay(true);
    http.set_connect_timeout(cfg.connect_timeout);

    let mut builder = hyper_util::client::legacy::Client::builder(TokioExecutor::new());
    // No pool timer: hyper-util then drops expired idle connections when it
    // next looks at them instead of from a background interval. The interval
    // kept a timer pending at all times, so every park of the runtime armed
    // a kernel timer (a VM exit on virtual machines): ~5 µs of CPU per request
    // at concurrency 1, measured in benches/loopback.rs.
    builder
        .pool_idle_timeout(cfg.pool_idle_timeout)
        .pool_max_idle_per_host(cfg.pool_max_idle_per_host);
    #[cfg(feature = "http2")]
    builder.http2_only(cfg.http2_prior_knowledge);
    #[cfg(not(feature = "http2"))]
    if cfg.http2_prior_knowledge {
        return Err(Error::new(
            ErrorKind::Builder,
            "HTTP/2 prior knowledge needs the `http2` feature",
        ));
    }

    // Proxies (none by default): the connector below TLS picks a direct
    // connection, a CONNECT or SOCKS5 tunnel, or an HTTP proxy per
    // destination; `ProxyHeaders` puts the proxy's credentials on requests
    // sent to an HTTP proxy in absolute form, and on nothing else.
    let proxies = Proxies::compile(&cfg.proxies);
    #[cfg(feature = "rustls")]
    {
        let (origin_tls, proxy_tls) = crate::tls::client_configs(&cfg.extra_roots, &cfg.tls)?;
        let below_tls = ProxyConnector::new(http, proxies.clone(), proxy_tls);
        // Built from the config as it is (`From`, not the builder, which
        // panics on a config with ALPN set): `client_configs` sets ALPN.
        let https = hyper_rustls::HttpsConnector::from((below_tls, origin_tls));
        let connector = ConnectTimeout {
            inner: https,
            timeout: cfg.connect_timeout,
        };
        Ok(ReadTimeout::new(
            ProxyHeaders::new(builder.build(connector), proxies),
            cfg.read_timeout,
        ))
    }
    #[cfg(not(feature = "rustls"))]
    {
        let connector = ConnectTimeout {
            inner: ProxyConnector::new(http, proxies.clone()),
            timeout: cfg.connect_timeout,
        };
        Ok(ReadTimeout::new(
            ProxyHeaders::new(builder.build(connector), proxies),
            cfg.read_timeout,
        ))
    }
}

/// The instant `d` after `now`, or `None` when that is too far for the
/// clock (`Duration::MAX` and the like mean no limit).
fn after(d: Option<Duration>) -> Option<Instant> {
    Instant::now().checked_add(d?)
}

/// Bounds a whole connection set-up: hyper-util's `HttpConnector` bounds
/// each TCP connect, but nothing bounded the TLS handshake after it, so a
/// server that accepted and then said nothing held the call (and a pool
/// slot) until the call's own deadline, or forever without one.
#[derive(Clone, Debug)]
pub(crate) struct ConnectTimeout<C> {
    inner: C,
    timeout: Option<Duration>,
}

/// The error a connection set-up ends with when it takes too long.
#[derive(Debug)]
struct ConnectTimedOut(Duration);

impl fmt::Display for ConnectTimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "no connection (TCP and TLS) within {:?}, the client's connect timeout",
            self.0
        )
    }
}

impl std::error::Error for ConnectTimedOut {}

impl<C> Service<Uri> for ConnectTimeout<C>
where
    C: Service<Uri>,
    C::Future: Send + 'static,
    C::Error: Into<BoxError>,
    C::Response: Send + 'static,
{
    type Response = C::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<C::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.inner.call(uri);
        let timeout = self.timeout;
        Box::pin(async move {
            let Some((d, at)) = timeout.zip(after(timeout)) else {
                return connecting.await.map_err(Into::into);
            };
            match tokio::time::timeout_at(at, connecting).await {
                Ok(result) => result.map_err(Into::into),
                Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, ConnectTimedOut(d)).into()),
            }
        })
    }
}

/// The error a response ends with when no data came for the read timeout.
#[derive(Debug)]
struct ReadTimedOut(Duration);

impl fmt::Display for ReadTimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "no data from the server for {:?}, the client's read timeout",
            self.0
        )
    }
}

impl std::error::Error for ReadTimedOut {}

/// An `io::Error` of kind `TimedOut`: the facade classifies it as a
/// timeout, and retry as a retryable one.
fn read_timed_out(d: Duration) -> BoxError {
    io::Error::new(io::ErrorKind::TimedOut, ReadTimedOut(d)).into()
}

/// Bounds each wait: for the response head from the moment the request is
/// handed to the transport (or, with a streamed request body, from the last
/// frame of it the transport took: while it is sent, each frame is
/// progress, and the wait for the head starts when it has been sent in
/// full), then between two pieces of the response body. A body that stops
/// (or a head that never comes, or an upload that stalls) ends with a
/// timeout error instead of holding its connection, its pool slot and its
/// caller.
///
/// It also owns a streamed request body's life (see [`Upload`]): the body's
/// error is the call's error over either protocol, and the body is dropped
/// when the call ends, even if the connection still holds the request.
///
/// Progress is what the transport takes from the body, not what reaches the
/// server: bytes the kernel's send buffer took (megabytes, on a fast
/// link) and drains to a slow reader are not counted while they drain (see
/// `ClientBuilder::read_timeout`).
#[derive(Clone, Debug)]
pub(crate) struct ReadTimeout<S> {
    inner: S,
    timeout: Option<Duration>,
}

impl<S> ReadTimeout<S> {
    fn new(inner: S, timeout: Option<Duration>) -> Self {
        ReadTimeout { inner, timeout }
    }
}

impl<S, B> Service<Request<RequestBody>> for ReadTimeout<S>
where
    S: Service<Request<RequestBody>, Response = Response<B>>,
    S::Error: Into<BoxError>,
    B: HttpBody<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Response = Response<ReadTimeoutBody<B>>;
    type Error = BoxError;
    type Future = ReadTimeoutFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<RequestBody>) -> Self::Future {
        // A body in memory is sent at once: the wait starts now, at no cost
        // (a large one is handed on in frames, each progress, as a streamed
        // one). A streamed one (whatever the read timeout) lives in a slot shared
        // with the call: it reports each frame the transport takes, keeps
        // its error for the call, and is dropped when the call ends.
        let (req, upload) = if req.body().is_replayable() {
            if self.timeout.is_some() && is_large(req.body()) {
                let (req, upload) = watch_upload(framed(req));
                (req, Some(upload))
            } else {
                (req, None)
            }
        } else {
            let (req, upload) = watch_upload(req);
            (req, Some(upload))
        };
        ReadTimeoutFuture {
            inner: self.inner.call(req),
            timeout: self.timeout,
            deadline: after(self.timeout),
            upload,
            sleep: None,
        }
    }
}

/// A body in memory over this many bytes is handed to the transport in
/// frames of [`FRAME`] bytes, each taken frame counting as progress for
/// the read timeout, as a streamed body's do: sent whole it would count
/// none, and a big upload to a slow server would be cut while it still
/// reads. Smaller bodies fit in the socket's buffers at once.
const FRAMED_OVER: u64 = 256 * 1024;

/// The frame size of a large body in memory (zero-copy slices of it).
const FRAME: usize = 64 * 1024;

fn is_large(body: &RequestBody) -> bool {
    HttpBody::size_hint(body)
        .exact()
        .is_some_and(|n| n > FRAMED_OVER)
}

/// The request with its body in memory handed on in [`Framed`] pieces.
#[inline(never)]
fn framed(req: Request<RequestBody>) -> Request<RequestBody> {
    let (parts, body) = req.into_parts();
    let body = RequestBody::streaming(Framed {
        body,
        rest: Bytes::new(),
    });
    Request::from_parts(parts, body)
}

/// A body whose data frames are cut into pieces of at most [`FRAME`]
/// bytes (slices of the same buffer: nothing is copied); its trailers and
/// its size are the body's.
struct Framed {
    body: RequestBody,
    /// What is left of the frame being cut.
    rest: Bytes,
}

impl HttpBody for Framed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.rest.is_empty() {
            match std::task::ready!(Pin::new(&mut this.body).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => this.rest = data,
                    Err(trailers) => return Poll::Ready(Some(Ok(trailers))),
                },
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => return Poll::Ready(None),
            }
        }
        let piece = this.rest.split_to(this.rest.len().min(FRAME));
        Poll::Ready(Some(Ok(http_body::Frame::data(piece))))
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty() && self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        let rest = self.rest.len() as u64;
        let inner = self.body.size_hint();
        let mut hint = http_body::SizeHint::new();
        hint.set_lower(inner.lower().saturating_add(rest));
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper.saturating_add(rest));
        }
        hint
    }
}

/// Puts a streamed request body in its [`Upload`] slot: the request the
/// transport gets, and the call's hold on the slot. Out of line: most
/// requests have a body in memory.
#[inline(never)]
fn watch_upload(req: Request<RequestBody>) -> (Request<RequestBody>, CallEnd) {
    let (parts, body) = req.into_parts();
    let upload = Arc::new(Upload::new(body));
    let body = RequestBody::streaming(UploadBody {
        upload: upload.clone(),
        end: End::Open,
    });
    (Request::from_parts(parts, body), CallEnd(upload))
}

/// A streamed request body shared by the body the transport polls
/// ([`UploadBody`]) and its call ([`CallEnd`]): when the transport last
/// took a frame of it, the error it ended with, and the caller's body
/// itself, in a slot the call's end empties.
struct Upload {
    start: Instant,
    /// Nanoseconds from `start` to the last progress.
    last: AtomicU64,
    slot: Mutex<Slot>,
}

/// What [`Upload`] keeps behind its lock.
struct Slot {
    /// The caller's body, until its end, its error or the call's end.
    body: Option<RequestBody>,
    /// The transport's task waiting on the body, woken when the call ends
    /// so that its next poll gets [`CallEnded`] at once.
    waker: Option<Waker>,
    /// The error the body ended with: the call's error, whatever the
    /// transport makes of it (hyper's HTTP/2 client turns it into a
    /// `RST_STREAM` and reports that instead).
    failed: Option<SharedError>,
}

impl Upload {
    fn new(body: RequestBody) -> Self {
        Upload {
            start: Instant::now(),
            last: AtomicU64::new(0),
            slot: Mutex::new(Slot {
                body: Some(body),
                waker: None,
                failed: None,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Slot> {
        // A panic while polling the caller's stream poisons the lock; the
        // slot is still consistent (each field is set in one step).
        self.slot.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn progressed(&self) {
        let nanos = u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last.fetch_max(nanos, Ordering::Relaxed);
    }

    /// The instant `d` after the last progress.
    fn idle_until(&self, d: Duration) -> Option<Instant> {
        let last = Duration::from_nanos(self.last.load(Ordering::Relaxed));
        self.start.checked_add(last)?.checked_add(d)
    }

    /// The error the body ended with, if it failed.
    fn failed(&self) -> Option<SharedError> {
        self.lock().failed.clone()
    }
}

/// The call's hold on its [`Upload`]: in the response future, then in the
/// response body. Dropped when the call ends (its response body ended,
/// failed or dropped, its future failed or dropped), it drops the caller's
/// body at once, without waiting for the transport to poll it again (hyper
/// may not, on a connection whose socket is blocked or whose server
/// answered early and keeps the upload unread), and wakes the transport:
/// its next poll gets [`CallEnded`], and the request is abandoned (the
/// HTTP/1.1 connection closed, the HTTP/2 stream reset).
struct CallEnd(Arc<Upload>);

impl Drop for CallEnd {
    fn drop(&mut self) {
        let (body, waker) = {
            let mut slot = self.0.lock();
            (slot.body.take(), slot.waker.take())
        };
        // Outside the lock: the caller's stream may do anything when
        // dropped.
        drop(body);
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// The error the transport gets from a streamed request body polled after
/// its call ended.
#[derive(Debug)]
struct CallEnded;

impl fmt::Display for CallEnded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the call ended before its request body was sent in full")
    }
}

impl std::error::Error for CallEnded {}

/// Where an [`UploadBody`] is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum End {
    Open,
    /// Its end was handed on.
    Whole,
    /// An error was handed on.
    Failed,
}

/// The streamed request body the transport polls: the caller's, from the
/// [`Upload`] slot. Each frame the caller's body yields (or its end) is
/// progress; its error is kept for the call.
struct UploadBody {
    upload: Arc<Upload>,
    end: End,
}

impl HttpBody for UploadBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.end != End::Open {
            return Poll::Ready(None);
        }
        let mut slot = this.upload.lock();
        let Some(body) = slot.body.as_mut() else {
            this.end = End::Failed;
            return Poll::Ready(Some(Err(CallEnded.into())));
        };
        let polled = match Pin::new(body).poll_frame(cx) {
            Poll::Pending => {
                match &mut slot.waker {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    waker => *waker = Some(cx.waker().clone()),
                }
                return Poll::Pending;
            }
            Poll::Ready(Some(Ok(frame))) => Some(Ok(frame)),
            Poll::Ready(Some(Err(e))) => {
                let failed = SharedError::new(e);
                slot.failed = Some(failed.clone());
                this.end = End::Failed;
                Some(Err(Box::new(failed) as BoxError))
            }
            Poll::Ready(None) => {
                this.end = End::Whole;
                None
            }
        };
        // The caller's body is dropped as soon as it has ended.
        let ended = if this.end == End::Open {
            None
        } else {
            slot.body.take()
        };
        drop(slot);
        drop(ended);
        this.upload.progressed();
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        match self.end {
            End::Whole => true,
            End::Failed => false,
            // An emptied slot is not an end: the next poll is an error, so
            // that a body cut short never passes for a whole one.
            End::Open => self
                .upload
                .lock()
                .body
                .as_ref()
                .is_some_and(HttpBody::is_end_stream),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self.end {
            End::Whole => http_body::SizeHint::with_exact(0),
            _ => self
                .upload
                .lock()
                .body
                .as_ref()
                .map_or_else(http_body::SizeHint::default, HttpBody::size_hint),
        }
    }
}

/// The error of a call that failed: a request body that failed is the
/// call's error, over HTTP/2 too (where hyper reports a reset stream
/// instead). Out of line: the common path is a success.
#[cold]
#[inline(never)]
fn call_error(error: BoxError, upload: Option<&CallEnd>) -> BoxError {
    match upload.and_then(|u| u.0.failed()) {
        Some(failed) => Box::new(failed),
        None => error,
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`ReadTimeout`].
    pub(crate) struct ReadTimeoutFuture<F> {
        #[pin]
        inner: F,
        timeout: Option<Duration>,
        deadline: Option<Instant>,
        // A streamed request body: the deadline moves with its progress,
        // its error is the call's, and it ends with the call.
        upload: Option<CallEnd>,
        // Made at the first wait: a response that is ready at once costs no
        // timer.
        #[pin]
        sleep: Option<Sleep>,
    }
}

impl<F, B, E> Future for ReadTimeoutFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<ReadTimeoutBody<B>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Poll::Ready(result) = this.inner.poll(cx) {
            let timeout = *this.timeout;
            let upload = this.upload.take();
            return Poll::Ready(match result {
                Ok(res) => Ok(res.map(|body| ReadTimeoutBody {
                    upload,
                    ..ReadTimeoutBody::new(body, timeout)
                })),
                // The upload, if any, ends with the call (dropped below).
                Err(e) => Err(call_error(e.into(), upload.as_ref())),
            });
        }
        let (Some(d), Some(at)) = (*this.timeout, *this.deadline) else {
            return Poll::Pending;
        };
        if this.sleep.is_none() {
            this.sleep.set(Some(tokio::time::sleep_until(at)));
        }
        let Some(mut sleep) = this.sleep.as_pin_mut() else {
            return Poll::Pending;
        };
        loop {
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            // The timer is not moved at each frame of a streamed upload:
            // when it fires, it moves to the idle wait's end, if the upload
            // progressed since it was set.
            match this.upload.as_ref().and_then(|u| u.0.idle_until(d)) {
                Some(later) if later > sleep.deadline() => {
                    *this.deadline = Some(later);
                    sleep.as_mut().reset(later);
                }
                _ => {
                    // The call ends here: so does its upload.
                    *this.upload = None;
                    return Poll::Ready(Err(read_timed_out(d)));
                }
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// A response body whose every wait for data is bounded.
    pub(crate) struct ReadTimeoutBody<B> {
        #[pin]
        inner: B,
        timeout: Option<Duration>,
        // Whether the timer runs for the current wait.
        armed: bool,
        #[pin]
        sleep: Option<Sleep>,
        // The call's streamed request body, ended with this body.
        upload: Option<CallEnd>,
    }
}

impl<B> ReadTimeoutBody<B> {
    fn new(inner: B, timeout: Option<Duration>) -> Self {
        ReadTimeoutBody {
            inner,
            timeout,
            armed: false,
            sleep: None,
            upload: None,
        }
    }
}

impl<B> HttpBody for ReadTimeoutBody<B>
where
    B: HttpBody<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        if let Poll::Ready(frame) = this.inner.poll_frame(cx) {
            *this.armed = false;
            if this.upload.is_some() && !matches!(frame, Some(Ok(_))) {
                // The response ended (or failed): so does the call, and an
                // upload still held by the connection is dropped.
                *this.upload = None;
            }
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let Some(d) = *this.timeout else {
            return Poll::Pending;
        };
        if !*this.armed {
            // The wait starts now: the timer is set once per wait, not per
            // poll.
            let Some(at) = after(Some(d)) else {
                return Poll::Pending;
            };
            match this.sleep.as_mut().as_pin_mut() {
                Some(sleep) => sleep.reset(at),
                None => this.sleep.set(Some(tokio::time::sleep_until(at))),
            }
            *this.armed = true;
        }
        match this.sleep.as_pin_mut().map(|s| s.poll(cx)) {
            Some(Poll::Ready(())) => {
                *this.upload = None;
                Poll::Ready(Some(Err(read_timed_out(d))))
            }
            _ => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The error for an `https` URL on a client built without TLS.
#[cfg(not(feature = "rustls"))]
pub(crate) fn no_tls(what: &str) -> Error {
    Error::new(
        ErrorKind::Builder,
        format!(
            "{what} is https, but tollgate was built without TLS (its `rustls` feature is \
             off): refused rather than sent in cleartext"
        ),
    )
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use proptest::prelude::*;

    use super::*;

    /// A body that sends one byte after each of its delays.
    struct Delayed {
        delays: VecDeque<Duration>,
        sleep: Option<Pin<Box<Sleep>>>,
    }

    impl HttpBody for Delayed {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
            let Some(delay) = self.delays.front().copied() else {
                return Poll::Ready(None);
            };
            let sleep = self
                .sleep
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(delay)));
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.sleep = None;
            self.delays.pop_front();
            Poll::Ready(Some(Ok(http_body::Frame::data(Bytes::from_static(b"x")))))
        }
    }

    /// A body that is never ready: a caller's stream that never ends.
    struct Endless;

    impl HttpBody for Endless {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
            Poll::Pending
        }
    }

    #[test]
    fn an_upload_cut_by_its_call_ending_is_an_error_to_the_transport_never_an_end() {
        let upload = Arc::new(Upload::new(RequestBody::streaming(Endless)));
        let mut body = UploadBody {
            upload: upload.clone(),
            end: End::Open,
        };
        let woken = Arc::new(Woken(AtomicU64::new(0)));
        let waker = Waker::from(woken.clone());
        let mut cx = Context::from_waker(&waker);
        assert!(Pin::new(&mut body).poll_frame(&mut cx).is_pending());
        drop(CallEnd(upload.clone()));
        assert!(upload.lock().body.is_none(), "the caller's body is dropped");
        assert_eq!(woken.0.load(Ordering::SeqCst), 1, "the transport is woken");
        assert!(!body.is_end_stream());
        match Pin::new(&mut body).poll_frame(&mut cx) {
            Poll::Ready(Some(Err(e))) => assert!(e.is::<CallEnded>()),
            other => panic!("not an error: {:?}", other.map(|f| f.map(|r| r.is_ok()))),
        }
    }

    struct Woken(AtomicU64);

    impl std::task::Wake for Woken {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    proptest! {
        /// Against a model of the bound: a body read through the read
        /// timeout fails exactly when one of its waits is longer than the
        /// timeout, and then at that wait's start plus the timeout; the
        /// total time never counts.
        #[test]
        fn the_read_timeout_fails_exactly_the_bodies_with_a_long_wait(
            gaps in proptest::collection::vec(0u64..20, 0..12),
            timeout in 0u64..20,
        ) {
            // Waits in tens of milliseconds, the timeout between two of
            // them, so that no wait ties with it.
            let timeout = Duration::from_millis(timeout * 10 + 5);
            let delays: VecDeque<Duration> =
                gaps.iter().map(|g| Duration::from_millis(g * 10)).collect();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .expect("runtime");
            let (result, took) = runtime.block_on(async {
                let body = ReadTimeoutBody::new(
                    Delayed { delays: delays.clone(), sleep: None },
                    Some(timeout),
                );
                let started = Instant::now();
                let result = crate::buffer::collect(body, usize::MAX).await;
                (result, started.elapsed())
            });
            // The model.
            let first_long = delays.iter().position(|d| *d > timeout);
            match first_long {
                None => {
                    let read = result.ok().map(|b| b.len());
                    prop_assert_eq!(read, Some(delays.len()));
                    prop_assert_eq!(took, delays.iter().sum::<Duration>());
                }
                Some(i) => {
                    let failed_timed_out = matches!(
                        &result,
                        Err(crate::buffer::ReadError::Failed(e)) if crate::error::has_timeout(&**e)
                    );
                    prop_assert!(failed_timed_out);
                    prop_assert_eq!(took, delays.iter().take(i).sum::<Duration>() + timeout);
                }
            }
        }
    }
}
