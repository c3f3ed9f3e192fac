//! Which request bodies can be sent again.
//!
//! Two ways in, one rule:
//!
//! - [`ReplayableBody`] wraps **any** request body. A body already whole in
//!   memory, or one whose exact size is within a limit, is buffered and can
//!   be sent again; any other (larger, or of unknown size) is sent once, as
//!   it streams. The retry layer hands its inner service this type.
//! - [`ReplayBody`] is the older trait over the crate's own list of body
//!   types, kept for [`try_clone_request`].

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, Request};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full, Limited};
use tower::BoxError;

/// A request body that may be sent again on a retry.
///
/// Buffered bodies answer with a copy (for `Full<Bytes>` and `Bytes` a
/// shared reference to the same buffer, not a copy of the data); streaming
/// bodies answer `None`, and a request with such a body is sent exactly once.
/// Implement it for your own body type, or buffer the request first with
/// [`buffer_request`].
pub trait ReplayBody: Sized {
    /// A body with the same content, or `None` if this one cannot be sent
    /// again.
    fn try_clone(&self) -> Option<Self>;
}

macro_rules! replay_by_clone {
    ($($t:ty),* $(,)?) => {$(
        impl ReplayBody for $t {
            fn try_clone(&self) -> Option<Self> {
                Some(self.clone())
            }
        }
    )*};
}

replay_by_clone!(Full<Bytes>, Empty<Bytes>, Bytes, String, Vec<u8>, ());

impl ReplayBody for ReplayableBody {
    fn try_clone(&self) -> Option<Self> {
        ReplayableBody::try_clone(self)
    }
}

impl ReplayBody for hyper::body::Incoming {
    fn try_clone(&self) -> Option<Self> {
        None
    }
}

impl<D, E> ReplayBody for http_body_util::combinators::UnsyncBoxBody<D, E> {
    fn try_clone(&self) -> Option<Self> {
        None
    }
}

impl<D, E> ReplayBody for http_body_util::combinators::BoxBody<D, E> {
    fn try_clone(&self) -> Option<Self> {
        None
    }
}

/// A copy of the request for another attempt (method, URI, version,
/// headers, extensions and body), if its body can be replayed. The auth
/// layer uses it to replay a request after a 401.
///
/// ```
/// use bytes::Bytes;
/// use http_body_util::Full;
///
/// let req = http::Request::put("/x").body(Full::new(Bytes::from("data"))).unwrap();
/// let copy = tollgate_core::try_clone_request(&req).expect("a Full body can be replayed");
/// assert_eq!(copy.method(), "PUT");
/// ```
pub fn try_clone_request<B: ReplayBody>(req: &Request<B>) -> Option<Request<B>> {
    Some(with_parts_of(req, req.body().try_clone()?))
}

/// A copy of the request for another attempt, for a body of **any** type:
/// one whose body is whole in memory, recognised by its type
/// ([`ReplayableBody`] when buffered, `Full<Bytes>`, `Empty<Bytes>`,
/// `Bytes`, `String`), or `None`. A streaming body (`Incoming`, axum's
/// `Body`, a boxed body, ...) is never copied, and never replaced by an
/// empty one: its request is sent once. The auth layer replays a request
/// after a 401 with it.
///
/// ```
/// use bytes::Bytes;
/// use http_body_util::{BodyExt, Full};
///
/// let req = http::Request::put("/x").body(Full::new(Bytes::from("data"))).unwrap();
/// assert!(tollgate_core::try_clone_request_any(&req).is_some());
/// let streaming = http::Request::put("/x").body(Full::new(Bytes::from("data")).boxed_unsync()).unwrap();
/// assert!(tollgate_core::try_clone_request_any(&streaming).is_none());
/// ```
pub fn try_clone_request_any<B: 'static>(req: &Request<B>) -> Option<Request<B>> {
    Some(with_parts_of(req, try_clone_body(req.body())?))
}

/// A copy of a body whole in memory, recognised by its type (see
/// [`try_clone_request_any`]); `None` for any other body.
pub fn try_clone_body<B: 'static>(body: &B) -> Option<B> {
    let any = body as &dyn Any;
    if let Some(b) = any.downcast_ref::<ReplayableBody>() {
        return cast(b.try_clone()?);
    }
    copy_as::<Full<Bytes>, B>(any)
        .or_else(|| copy_as::<Bytes, B>(any))
        .or_else(|| copy_as::<String, B>(any))
        .or_else(|| copy_as::<Empty<Bytes>, B>(any))
}

fn copy_as<T: Clone + 'static, B: 'static>(any: &dyn Any) -> Option<B> {
    cast(any.downcast_ref::<T>()?.clone())
}

/// `value` as a `B`, when `T` and `B` are the same type.
fn cast<T: 'static, B: 'static>(value: T) -> Option<B> {
    let mut slot = Some(value);
    (&mut slot as &mut dyn Any)
        .downcast_mut::<Option<B>>()
        .and_then(Option::take)
}

fn with_parts_of<A, B>(req: &Request<A>, body: B) -> Request<B> {
    let mut copy = Request::new(body);
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    *copy.extensions_mut() = req.extensions().clone();
    copy
}

/// The default for the retry layer's replay limit
/// (`RetryLayer::max_replay_body`): 64 KiB, as linkerd's.
pub const DEFAULT_MAX_REPLAY_BODY: usize = 64 * 1024;

/// A request body that can be sent again if it was buffered, or streams
/// once if it could not be: the body type the retry layer hands its inner
/// service, whatever body its callers send (`Full<Bytes>`, axum's `Body`,
/// hyper's `Incoming`, a boxed stream, ...).
///
/// Made by [`ReplayableBody::buffer`] with a limit:
///
/// | the body | becomes |
/// |----------|---------|
/// | already whole in memory: `Full<Bytes>`, `Bytes`, `String`, `Empty<Bytes>`, a buffered `ReplayableBody` | buffered at once, whatever its size (taken, not copied) |
/// | ended already (`is_end_stream`) | buffered, empty |
/// | of exact size (`size_hint`) within the limit | read into memory first, then buffered |
/// | larger, or of unknown size | streamed once, never replayed |
///
/// A buffered body is [`try_clone`](ReplayableBody::try_clone)d for each
/// attempt by sharing its buffer (no copy of the data). Its `Debug` shows
/// whether it is replayable and its length, never its content.
///
/// ```
/// use bytes::Bytes;
/// use http_body_util::{BodyExt, Full};
/// use tollgate_core::ReplayableBody;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tower::BoxError> {
/// // Of exact size within the limit: read, then replayable.
/// let boxed = Full::new(Bytes::from("data")).boxed_unsync();
/// let body = ReplayableBody::buffer(boxed, 1024).await?;
/// let copy = body.try_clone().expect("buffered");
/// assert_eq!(copy.collect().await?.to_bytes(), "data");
///
/// // Over the limit (or of unknown size): streamed once.
/// let boxed = Full::new(Bytes::from("data")).boxed_unsync();
/// let body = ReplayableBody::buffer(boxed, 2).await?;
/// assert!(!body.is_replayable());
/// assert_eq!(body.collect().await?.to_bytes(), "data");
/// # Ok(()) }
/// ```
pub struct ReplayableBody {
    kind: Kind,
}

enum Kind {
    Buffered {
        data: Bytes,
        // Boxed: rare, and a `HeaderMap` would triple the body's size.
        trailers: Option<Box<HeaderMap>>,
        // What of it was sent already.
        sent_data: bool,
        sent_trailers: bool,
    },
    Streaming(UnsyncBoxBody<Bytes, BoxError>),
}

impl ReplayableBody {
    /// A replayable body of these bytes.
    pub fn from_bytes(data: impl Into<Bytes>) -> Self {
        ReplayableBody::buffered(data.into(), None)
    }

    fn buffered(data: Bytes, trailers: Option<Box<HeaderMap>>) -> Self {
        ReplayableBody {
            kind: Kind::Buffered {
                data,
                trailers,
                sent_data: false,
                sent_trailers: false,
            },
        }
    }

    /// `body` sent once, as it streams: never replayed.
    pub fn streaming<B>(body: B) -> Self
    where
        B: Body + Send + 'static,
        B::Error: Into<BoxError>,
    {
        ReplayableBody {
            kind: Kind::Streaming(
                body.map_frame(|f| f.map_data(|mut d| d.copy_to_bytes(d.remaining())))
                    .map_err(Into::into)
                    .boxed_unsync(),
            ),
        }
    }

    /// Makes `body` replayable if it can be, reading at most `limit` bytes
    /// into memory (see the table above). The future is ready at its first
    /// poll unless the body has to be read.
    ///
    /// # Errors
    ///
    /// The body's own error, if reading it fails; [`BodyTooLarge`] if a body
    /// that declared an exact size within the limit sends more.
    pub fn buffer<B>(mut body: B, limit: usize) -> BufferBody
    where
        B: Body + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let done = |r| BufferBody {
            state: BufferState::Done(Some(r)),
        };
        if let Some(whole) = take_in_memory(&mut body) {
            return done(Ok(whole));
        }
        if body.is_end_stream() {
            return done(Ok(ReplayableBody::default()));
        }
        match body.size_hint().exact() {
            Some(n) if n <= limit as u64 => BufferBody {
                state: BufferState::Reading {
                    body: ReplayableBody::streaming(body),
                    data: BytesMut::new(),
                    first: None,
                    trailers: None,
                    // The declared size bounds the data: a body that sends
                    // more than it said is refused.
                    declared: usize::try_from(n).unwrap_or(limit),
                    limit,
                },
            },
            _ => done(Ok(ReplayableBody::streaming(body))),
        }
    }

    /// Whether this body can be sent again.
    pub fn is_replayable(&self) -> bool {
        matches!(self.kind, Kind::Buffered { .. })
    }

    /// A copy with the same content, from its start (sharing the buffer),
    /// or `None` for a streaming body.
    pub fn try_clone(&self) -> Option<Self> {
        match &self.kind {
            Kind::Buffered { data, trailers, .. } => {
                Some(ReplayableBody::buffered(data.clone(), trailers.clone()))
            }
            Kind::Streaming(_) => None,
        }
    }

    /// The buffered bytes (all of them, whatever was sent already), or the
    /// body itself when it streams or carries trailers.
    ///
    /// # Errors
    ///
    /// The body itself, when it is not buffered bytes alone.
    pub fn into_bytes(self) -> Result<Bytes, Self> {
        match self.kind {
            Kind::Buffered {
                data,
                trailers: None,
                ..
            } => Ok(data),
            kind => Err(ReplayableBody { kind }),
        }
    }
}

/// A body whole in memory, taken out of `body` (left empty) without a copy.
fn take_in_memory<B: 'static>(body: &mut B) -> Option<ReplayableBody> {
    let any = body as &mut dyn Any;
    if let Some(b) = any.downcast_mut::<ReplayableBody>() {
        return Some(std::mem::take(b));
    }
    if let Some(full) = any.downcast_mut::<Full<Bytes>>() {
        // `Full` gives its one frame at its first poll, never pending.
        let mut cx = Context::from_waker(Waker::noop());
        let data = match Pin::new(full).poll_frame(&mut cx) {
            Poll::Ready(Some(Ok(frame))) => frame.into_data().unwrap_or_default(),
            _ => Bytes::new(),
        };
        return Some(ReplayableBody::from_bytes(data));
    }
    if let Some(bytes) = any.downcast_mut::<Bytes>() {
        return Some(ReplayableBody::from_bytes(std::mem::take(bytes)));
    }
    if let Some(string) = any.downcast_mut::<String>() {
        return Some(ReplayableBody::from_bytes(std::mem::take(string)));
    }
    if any.is::<Empty<Bytes>>() {
        return Some(ReplayableBody::default());
    }
    None
}

impl Default for ReplayableBody {
    /// An empty, replayable body.
    fn default() -> Self {
        ReplayableBody::from_bytes(Bytes::new())
    }
}

impl From<Bytes> for ReplayableBody {
    fn from(data: Bytes) -> Self {
        ReplayableBody::from_bytes(data)
    }
}

impl From<String> for ReplayableBody {
    fn from(data: String) -> Self {
        ReplayableBody::from_bytes(data)
    }
}

impl From<&'static str> for ReplayableBody {
    fn from(data: &'static str) -> Self {
        ReplayableBody::from_bytes(data)
    }
}

impl fmt::Debug for ReplayableBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("ReplayableBody");
        match &self.kind {
            Kind::Buffered { data, trailers, .. } => d
                .field("replayable", &true)
                .field("len", &data.len())
                .field("trailers", &trailers.is_some()),
            Kind::Streaming(_) => d.field("replayable", &false),
        };
        d.finish()
    }
}

impl Body for ReplayableBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.get_mut().kind {
            Kind::Buffered {
                data,
                trailers,
                sent_data,
                sent_trailers,
            } => {
                if !std::mem::replace(sent_data, true) && !data.is_empty() {
                    return Poll::Ready(Some(Ok(Frame::data(data.clone()))));
                }
                if !std::mem::replace(sent_trailers, true) {
                    if let Some(t) = trailers {
                        return Poll::Ready(Some(Ok(Frame::trailers((**t).clone()))));
                    }
                }
                Poll::Ready(None)
            }
            Kind::Streaming(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Buffered {
                data,
                trailers,
                sent_data,
                sent_trailers,
            } => (*sent_data || data.is_empty()) && (*sent_trailers || trailers.is_none()),
            Kind::Streaming(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Buffered {
                data, sent_data, ..
            } => SizeHint::with_exact(if *sent_data { 0 } else { data.len() as u64 }),
            Kind::Streaming(body) => body.size_hint(),
        }
    }
}

/// The future of [`ReplayableBody::buffer`]: ready at its first poll unless
/// the body must be read into memory.
#[must_use = "futures do nothing unless polled"]
pub struct BufferBody {
    state: BufferState,
}

enum BufferState {
    Done(Option<Result<ReplayableBody, BoxError>>),
    Reading {
        body: ReplayableBody,
        // One chunk is kept as it is; more are joined.
        first: Option<Bytes>,
        data: BytesMut,
        trailers: Option<Box<HeaderMap>>,
        /// The body's declared exact size.
        declared: usize,
        /// Data and trailers together stay within this.
        limit: usize,
    },
}

/// The bytes a trailer map holds (names and values).
fn trailer_bytes(trailers: &HeaderMap) -> usize {
    trailers
        .iter()
        .map(|(k, v)| k.as_str().len().saturating_add(v.len()))
        .fold(0, usize::saturating_add)
}

/// Frames read in one poll before yielding: a body that is always ready
/// (endless empty frames) must not hold the thread, or a timeout around it
/// could never fire.
pub(crate) const FRAMES_PER_POLL: usize = 64;

impl fmt::Debug for BufferBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let reading = matches!(self.state, BufferState::Reading { .. });
        f.debug_struct("BufferBody")
            .field("reading", &reading)
            .finish()
    }
}

impl Future for BufferBody {
    type Output = Result<ReplayableBody, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let mut frames = 0;
        loop {
            match &mut this.state {
                BufferState::Done(result) => {
                    return Poll::Ready(
                        result
                            .take()
                            .unwrap_or_else(|| Err("BufferBody polled after completion".into())),
                    )
                }
                BufferState::Reading {
                    body,
                    first,
                    data,
                    trailers,
                    declared,
                    limit,
                } => {
                    frames += 1;
                    if frames > FRAMES_PER_POLL {
                        cx.waker().wake_by_ref();
                        return Poll::Pending;
                    }
                    let kept = trailers.as_deref().map_or(0, trailer_bytes);
                    let result = match std::task::ready!(Pin::new(&mut *body).poll_frame(cx)) {
                        Some(Ok(frame)) => match frame.into_data() {
                            Ok(chunk) => {
                                let len = first.as_ref().map_or(0, Bytes::len) + data.len();
                                let len = len.saturating_add(chunk.len());
                                if len > *declared {
                                    Some(Err(BodyTooLarge { limit: *declared }.into()))
                                } else if len.saturating_add(kept) > *limit {
                                    Some(Err(BodyTooLarge { limit: *limit }.into()))
                                } else {
                                    match first.take() {
                                        None if data.is_empty() => *first = Some(chunk),
                                        None => data.extend_from_slice(&chunk),
                                        Some(head) => {
                                            data.extend_from_slice(&head);
                                            data.extend_from_slice(&chunk);
                                        }
                                    }
                                    None
                                }
                            }
                            Err(frame) => match frame.into_trailers() {
                                Ok(t) => {
                                    let len = first.as_ref().map_or(0, Bytes::len) + data.len();
                                    let total =
                                        len.saturating_add(kept).saturating_add(trailer_bytes(&t));
                                    if total > *limit {
                                        Some(Err(BodyTooLarge { limit: *limit }.into()))
                                    } else {
                                        trailers.get_or_insert_with(Default::default).extend(t);
                                        None
                                    }
                                }
                                Err(_) => None,
                            },
                        },
                        Some(Err(e)) => Some(Err(e)),
                        None => {
                            let bytes = match first.take() {
                                Some(head) => head,
                                None => std::mem::take(data).freeze(),
                            };
                            Some(Ok(ReplayableBody::buffered(bytes, trailers.take())))
                        }
                    };
                    if let Some(result) = result {
                        this.state = BufferState::Done(Some(result));
                    }
                }
            }
        }
    }
}

/// Reads a request's body into memory so that it can be retried, refusing
/// bodies over `max_bytes` (checked against the declared size first, then
/// while reading).
///
/// # Errors
///
/// A [`BodyTooLarge`] when the body is over the limit, or the body's own
/// error when reading fails. The body is consumed either way: to send a large
/// body once without retries, do not buffer it (a streaming body is never
/// retried).
///
/// ```
/// use bytes::Bytes;
/// use http_body_util::{BodyExt, Full};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tower::BoxError> {
/// let streaming = http::Request::post("/upload").body(Full::new(Bytes::from("data")).boxed_unsync())?;
/// let replayable = tollgate_core::buffer_request(streaming, 1 << 20).await?;
/// assert_eq!(replayable.body().clone().collect().await?.to_bytes(), "data");
/// # Ok(()) }
/// ```
pub async fn buffer_request<B>(
    req: Request<B>,
    max_bytes: usize,
) -> Result<Request<Full<Bytes>>, BoxError>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let (parts, body) = req.into_parts();
    if body.size_hint().lower() > max_bytes as u64 {
        return Err(Box::new(BodyTooLarge { limit: max_bytes }));
    }
    let collected = Limited::new(body, max_bytes)
        .collect()
        .await
        .map_err(|e| -> BoxError {
            if e.is::<http_body_util::LengthLimitError>() {
                Box::new(BodyTooLarge { limit: max_bytes })
            } else {
                e
            }
        })?;
    Ok(Request::from_parts(parts, Full::new(collected.to_bytes())))
}

/// A request body over the limit of [`buffer_request`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyTooLarge {
    /// The limit, in bytes.
    pub limit: usize,
}

impl std::fmt::Display for BodyTooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the request body is over the {} byte replay limit",
            self.limit
        )
    }
}

impl std::error::Error for BodyTooLarge {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_keep_everything_but_streaming_bodies_refuse() {
        let mut req = Request::put("http://h/x")
            .header("a", "1")
            .body(Full::new(Bytes::from("b")))
            .expect("req");
        req.extensions_mut().insert(7u8);
        let copy = try_clone_request(&req).expect("replayable");
        assert_eq!(
            (copy.method(), copy.uri(), &copy.headers()["a"]),
            (req.method(), req.uri(), &req.headers()["a"])
        );
        assert_eq!(copy.extensions().get::<u8>(), Some(&7));
        let streaming = Request::new(Full::new(Bytes::from("b")).boxed_unsync());
        assert!(try_clone_request(&streaming).is_none());
    }

    #[tokio::test]
    async fn buffering_enforces_the_limit() {
        let big = Request::new(Full::new(Bytes::from(vec![0u8; 100])).boxed_unsync());
        let err = buffer_request(big, 10).await.expect_err("too large");
        assert_eq!(
            err.downcast_ref::<BodyTooLarge>(),
            Some(&BodyTooLarge { limit: 10 })
        );
        let small = Request::new(Full::new(Bytes::from("ok")).boxed_unsync());
        assert!(buffer_request(small, 10).await.is_ok());
    }

    /// Chunks of `chunk`, `Pending` once before each, of declared size
    /// `declared` (unknown when `None`).
    struct Slow {
        chunks: Vec<&'static str>,
        declared: Option<u64>,
        pending: bool,
    }

    impl Body for Slow {
        type Data = Bytes;
        type Error = std::io::Error;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
            if std::mem::replace(&mut self.pending, false) {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            self.pending = true;
            if self.chunks.is_empty() {
                return Poll::Ready(None);
            }
            let chunk = self.chunks.remove(0);
            Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(chunk.as_bytes())))))
        }

        fn size_hint(&self) -> SizeHint {
            self.declared.map(SizeHint::with_exact).unwrap_or_default()
        }
    }

    fn slow(chunks: &[&'static str], declared: Option<u64>) -> Slow {
        Slow {
            chunks: chunks.to_vec(),
            declared,
            pending: true,
        }
    }

    #[tokio::test]
    async fn a_body_in_memory_is_replayable_whatever_its_size() {
        let big = Full::new(Bytes::from(vec![1u8; 1000]));
        let body = ReplayableBody::buffer(big, 10).await.expect("taken");
        assert!(body.is_replayable());
        let copy = body.try_clone().expect("replayable");
        assert_eq!(copy.collect().await.expect("read").to_bytes().len(), 1000);
        let s = ReplayableBody::buffer(String::from("text"), 0)
            .await
            .expect("taken");
        assert_eq!(s.into_bytes().expect("bytes"), "text");
    }

    #[tokio::test]
    async fn a_body_of_exact_size_within_the_limit_is_read_then_replayable() {
        let body = ReplayableBody::buffer(slow(&["ab", "cd"], Some(4)), 4)
            .await
            .expect("read");
        assert!(body.is_replayable());
        for _ in 0..2 {
            let copy = body.try_clone().expect("replayable");
            assert_eq!(copy.collect().await.expect("read").to_bytes(), "abcd");
        }
    }

    #[tokio::test]
    async fn larger_or_unknown_bodies_stream_once() {
        for (declared, limit) in [(Some(4), 3), (None, 1 << 20)] {
            let body = ReplayableBody::buffer(slow(&["ab", "cd"], declared), limit)
                .await
                .expect("not read");
            assert!(!body.is_replayable());
            assert!(body.try_clone().is_none());
            assert_eq!(body.collect().await.expect("read").to_bytes(), "abcd");
        }
    }

    #[tokio::test]
    async fn a_body_sending_more_than_it_declared_is_refused() {
        let err = ReplayableBody::buffer(slow(&["ab", "cd"], Some(2)), 3)
            .await
            .expect_err("lied");
        // Refused at its declared size, before the replay limit.
        assert_eq!(
            err.downcast_ref::<BodyTooLarge>(),
            Some(&BodyTooLarge { limit: 2 })
        );
    }

    #[test]
    fn only_bodies_in_memory_are_cloned_by_type() {
        assert!(try_clone_body(&Full::new(Bytes::from("x"))).is_some());
        assert!(try_clone_body(&String::from("x")).is_some());
        assert!(try_clone_body(&ReplayableBody::from("x")).is_some());
        let streaming = ReplayableBody::streaming(Full::new(Bytes::from("x")));
        assert!(try_clone_body(&streaming).is_none());
        assert!(try_clone_body(&Full::new(Bytes::from("x")).boxed_unsync()).is_none());
    }

    #[test]
    fn debug_shows_no_content() {
        let body = ReplayableBody::from("s3cret-canary");
        let shown = format!("{body:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("len: 13"), "{shown}");
    }

    #[tokio::test]
    async fn a_buffered_body_keeps_its_trailers_on_every_copy() {
        let mut trailers = HeaderMap::new();
        trailers.insert("checksum", http::HeaderValue::from_static("abc"));
        let body = Full::new(Bytes::from("data"))
            .with_trailers(std::future::ready(Some(Ok::<_, std::convert::Infallible>(
                trailers,
            ))))
            .boxed_unsync();
        // Declares 4 bytes; its trailers come after (and count against the
        // replay limit with the data: 4 + 11 bytes here).
        let body = ReplayableBody::buffer(body, 64).await.expect("read");
        for _ in 0..2 {
            let copy = body.try_clone().expect("replayable");
            let collected = copy.collect().await.expect("read");
            let got = collected
                .trailers()
                .and_then(|t| t.get("checksum"))
                .cloned();
            assert_eq!(got.as_ref().map(|v| v.as_bytes()), Some(&b"abc"[..]));
            assert_eq!(collected.to_bytes(), "data");
        }
        assert!(body.into_bytes().is_err(), "trailers are not bytes alone");
    }
}
