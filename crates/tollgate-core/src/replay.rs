//! Which request bodies can be sent again.

use bytes::Bytes;
use http::Request;
use http_body::Body;
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
    let body = req.body().try_clone()?;
    let mut copy = Request::new(body);
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    *copy.extensions_mut() = req.extensions().clone();
    Some(copy)
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
}
