//! [`CacheBody`]: a stored body, or the upstream's streamed through.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

pin_project! {
    /// The body of a response from [`Cache`](crate::Cache): bytes from the
    /// cache (or buffered to be stored), or the upstream's body unbuffered.
    /// When a body without a `Content-Length` turned out larger than the
    /// per-entry limit, what was read is sent first and the rest streams
    /// after it: nothing is lost.
    pub struct CacheBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B> {
        Full { data: Option<Bytes> },
        Stream { #[pin] inner: B },
        Prefix { prefix: Option<Bytes>, rest: Pin<Box<B>> },
    }
}

impl<B> CacheBody<B> {
    /// Bytes in memory.
    pub(crate) fn full(data: Bytes) -> Self {
        CacheBody {
            kind: Kind::Full {
                data: (!data.is_empty()).then_some(data),
            },
        }
    }

    /// The upstream's body, untouched.
    pub(crate) fn stream(inner: B) -> Self {
        CacheBody {
            kind: Kind::Stream { inner },
        }
    }

    /// What was buffered, then the rest of the upstream's body.
    pub(crate) fn prefix(prefix: Bytes, rest: Pin<Box<B>>) -> Self {
        CacheBody {
            kind: Kind::Prefix {
                prefix: Some(prefix),
                rest,
            },
        }
    }

    /// Whether the body is in memory (from the cache, or buffered to be
    /// stored) rather than streamed from upstream.
    pub fn is_buffered(&self) -> bool {
        matches!(self.kind, Kind::Full { .. })
    }
}

impl<B> std::fmt::Debug for CacheBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            Kind::Full { data } => f
                .debug_struct("CacheBody::Full")
                .field("len", &data.as_ref().map_or(0, Bytes::len))
                .finish(),
            Kind::Stream { .. } => f.write_str("CacheBody::Stream"),
            Kind::Prefix { .. } => f.write_str("CacheBody::Prefix"),
        }
    }
}

impl<B> Body for CacheBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.project().kind.project() {
            KindProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            KindProj::Stream { inner } => inner.poll_frame(cx),
            KindProj::Prefix { prefix, rest } => match prefix.take() {
                Some(bytes) => Poll::Ready(Some(Ok(Frame::data(bytes)))),
                None => rest.as_mut().poll_frame(cx),
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full { data } => data.is_none(),
            Kind::Stream { inner } => inner.is_end_stream(),
            Kind::Prefix { prefix, rest } => prefix.is_none() && rest.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            Kind::Stream { inner } => inner.size_hint(),
            Kind::Prefix { prefix, rest } => {
                let extra = prefix.as_ref().map_or(0, |p| p.len() as u64);
                let inner = rest.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(inner.lower() + extra);
                if let Some(upper) = inner.upper() {
                    hint.set_upper(upper + extra);
                }
                hint
            }
        }
    }
}
