//! One bounded body reader: [`read_body`].

use std::error::Error as StdError;
use std::fmt;

use bytes::{Buf, Bytes, BytesMut};
use http_body::Body;
use http_body_util::BodyExt;
use tower::BoxError;

use crate::BodyTooLarge;

/// Returns `Pending` once (after asking to be polled again), then `Ready`.
async fn yield_once() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            std::task::Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            std::task::Poll::Pending
        }
    })
    .await;
}

/// Reads a whole body into memory, refusing one over `max_bytes`.
///
/// A body whose declared size is over the limit (its
/// [`size_hint`](Body::size_hint): hyper sets it from `Content-Length`) is
/// refused before a byte is read; any other is counted while it is read and
/// refused as soon as it passes the limit, without reading the rest. A body
/// of exactly `max_bytes` is read. Trailers are dropped. A body that arrives
/// in one piece is returned without a copy.
///
/// # Errors
///
/// [`ReadBodyError::TooLarge`] over the limit;
/// [`ReadBodyError::Body`] with the body's own error, unchanged, when
/// reading fails. Either way the body is consumed.
///
/// ```
/// use bytes::Bytes;
/// use http_body_util::Full;
/// use tollgate_core::{read_body, ReadBodyError};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let body = Full::new(Bytes::from("hello"));
/// assert_eq!(read_body(body, 5).await.unwrap(), "hello");
/// let err = read_body(Full::new(Bytes::from("hello")), 4).await.unwrap_err();
/// assert!(err.is_too_large());
/// assert!(matches!(err, ReadBodyError::TooLarge(tollgate_core::BodyTooLarge { limit: 4 })));
/// # }
/// ```
pub async fn read_body<B>(body: B, max_bytes: usize) -> Result<Bytes, ReadBodyError>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    let too_large = || ReadBodyError::TooLarge(BodyTooLarge { limit: max_bytes });
    if body.size_hint().lower() > max_bytes as u64 {
        return Err(too_large());
    }
    let mut body = std::pin::pin!(body);
    let mut first: Option<Bytes> = None;
    let mut rest: Option<BytesMut> = None;
    let mut len: usize = 0;
    let mut frames = 0usize;
    loop {
        frames += 1;
        if frames.is_multiple_of(crate::replay::FRAMES_PER_POLL) {
            // A body that is always ready (endless empty frames) must not
            // hold the thread: yield, so a timeout around the read can fire.
            yield_once().await;
        }
        let Some(frame) = body.frame().await else {
            break;
        };
        let frame = frame.map_err(|e| ReadBodyError::Body(e.into()))?;
        let Ok(mut data) = frame.into_data() else {
            continue; // trailers
        };
        let n = data.remaining();
        len = len.saturating_add(n);
        if len > max_bytes {
            return Err(too_large());
        }
        if n == 0 {
            continue;
        }
        match (&mut first, &mut rest) {
            (None, _) => first = Some(data.copy_to_bytes(n)),
            (Some(head), None) => {
                let mut buf = BytesMut::with_capacity(len);
                buf.extend_from_slice(head);
                while data.has_remaining() {
                    let chunk = data.chunk();
                    buf.extend_from_slice(chunk);
                    let c = chunk.len();
                    data.advance(c);
                }
                rest = Some(buf);
            }
            (Some(_), Some(buf)) => {
                while data.has_remaining() {
                    let chunk = data.chunk();
                    buf.extend_from_slice(chunk);
                    let c = chunk.len();
                    data.advance(c);
                }
            }
        }
    }
    Ok(match (rest, first) {
        (Some(buf), _) => buf.freeze(),
        (None, Some(one)) => one,
        (None, None) => Bytes::new(),
    })
}

/// Why [`read_body`] returned no body.
#[derive(Debug)]
#[non_exhaustive]
pub enum ReadBodyError {
    /// The body is over the limit (declared, or counted while reading). The
    /// [`BodyTooLarge`] is also this error's `source`, for code that
    /// downcasts it from a chain.
    TooLarge(BodyTooLarge),
    /// Reading failed; the body's own error, unchanged.
    Body(BoxError),
}

impl ReadBodyError {
    /// Whether the body was over the limit.
    pub fn is_too_large(&self) -> bool {
        matches!(self, ReadBodyError::TooLarge(_))
    }

    /// The error to hand on through a `tower::BoxError` stack: a boxed
    /// [`BodyTooLarge`] (for callers that `downcast_ref` it), or the
    /// body's own error as it came.
    pub fn into_box(self) -> BoxError {
        match self {
            ReadBodyError::TooLarge(e) => Box::new(e),
            ReadBodyError::Body(e) => e,
        }
    }
}

impl fmt::Display for ReadBodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadBodyError::TooLarge(_) => f.write_str("the body is too large"),
            ReadBodyError::Body(_) => f.write_str("reading the body failed"),
        }
    }
}

impl StdError for ReadBodyError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            ReadBodyError::TooLarge(e) => Some(e),
            ReadBodyError::Body(e) => Some(&**e),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use http_body::{Frame, SizeHint};
    use http_body_util::Full;

    use super::*;

    /// A body that lies about its size or fails after some chunks.
    struct Chunks {
        chunks: Vec<Result<Bytes, std::io::Error>>,
        hint: SizeHint,
        polled: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    }

    impl Body for Chunks {
        type Data = Bytes;
        type Error = std::io::Error;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
            self.polled
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if self.chunks.is_empty() {
                return Poll::Ready(None);
            }
            Poll::Ready(Some(self.chunks.remove(0).map(Frame::data)))
        }
        fn size_hint(&self) -> SizeHint {
            self.hint
        }
    }

    fn chunks(
        parts: Vec<Result<Bytes, std::io::Error>>,
        hint: SizeHint,
    ) -> (Chunks, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        let polled = std::sync::Arc::default();
        (
            Chunks {
                chunks: parts,
                hint,
                polled: std::sync::Arc::clone(&polled),
            },
            polled,
        )
    }

    #[tokio::test]
    async fn a_declared_size_over_the_limit_is_refused_before_reading() {
        let (body, polled) = chunks(vec![Ok(Bytes::from("x"))], SizeHint::with_exact(1_000));
        let err = read_body(body, 10).await.expect_err("declared too large");
        assert!(matches!(
            err,
            ReadBodyError::TooLarge(BodyTooLarge { limit: 10 })
        ));
        assert_eq!(
            polled.load(std::sync::atomic::Ordering::SeqCst),
            0,
            "not a byte read"
        );
    }

    #[tokio::test]
    async fn an_undeclared_body_is_refused_once_it_passes_the_limit() {
        let parts = vec![
            Ok(Bytes::from("aaaa")),
            Ok(Bytes::from("bbbb")),
            Ok(Bytes::from("cccc")),
        ];
        let (body, polled) = chunks(parts, SizeHint::default());
        let err = read_body(body, 6).await.expect_err("too large");
        assert!(err.is_too_large());
        assert_eq!(
            polled.load(std::sync::atomic::Ordering::SeqCst),
            2,
            "stopped at the chunk that passed"
        );
        let boxed = err.into_box();
        assert_eq!(
            boxed.downcast_ref::<BodyTooLarge>(),
            Some(&BodyTooLarge { limit: 6 })
        );
    }

    #[tokio::test]
    async fn a_body_of_exactly_the_limit_is_read_whole() {
        let parts = vec![
            Ok(Bytes::from("ab")),
            Ok(Bytes::new()),
            Ok(Bytes::from("cd")),
            Ok(Bytes::from("e")),
        ];
        let (body, _) = chunks(parts, SizeHint::default());
        assert_eq!(read_body(body, 5).await.expect("at the limit"), "abcde");
        assert_eq!(
            read_body(Full::new(Bytes::new()), 0).await.expect("empty"),
            ""
        );
    }

    #[tokio::test]
    async fn the_bodys_own_error_is_kept() {
        let parts = vec![
            Ok(Bytes::from("ab")),
            Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "cut",
            )),
        ];
        let (body, _) = chunks(parts, SizeHint::default());
        let err = read_body(body, 100).await.expect_err("cut");
        let source = StdError::source(&err).expect("the body's error");
        let io = source
            .downcast_ref::<std::io::Error>()
            .expect("an io::Error");
        assert_eq!(io.kind(), std::io::ErrorKind::ConnectionReset);
        let boxed = err.into_box();
        assert!(boxed.is::<std::io::Error>(), "handed on unchanged");
    }

    #[tokio::test]
    async fn a_single_chunk_is_not_copied() {
        let data = Bytes::from(vec![7u8; 64]);
        let read = read_body(Full::new(data.clone()), 64).await.expect("read");
        assert_eq!(read.as_ptr(), data.as_ptr());
        let parts = vec![Ok(Bytes::from("a")), Ok(Bytes::from("b"))];
        let (body, _) = chunks(parts, SizeHint::default());
        assert_eq!(read_body(body, 2).await.expect("two"), "ab");
    }
}
