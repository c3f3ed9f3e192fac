//! Layer 10b: response decompression, on async-compression's decoders (the
//! codecs tower-http and reqwest use too).
//!
//! tower-http's `DecompressionLayer` was used here until adversary 11 found
//! what it cannot be told to do differently (`tests/attack11_compression.rs`):
//! a gzip body of several members was cut to the first and handed over as
//! whole (its decoder is built without `multiple_members`); bytes after the
//! end of a gzip, deflate or brotli stream were dropped; `GZIP` and `x-gzip`
//! were not decoded (tokens compared byte for byte); two `Content-Encoding`
//! lines were decoded once and both removed; a `HEAD` lost its
//! `Content-Length`; a `Range` request asked for gzip and then could not
//! decode the slice it got. The glue is hand-written; the codecs are not.
//!
//! The rules:
//! - `Accept-Encoding` names each codec that is on, unless the caller set
//!   one or the request has a `Range` (a range of an encoded representation
//!   cannot be decoded on its own; reqwest does the same).
//! - A response is decoded when its `Content-Encoding`, all its lines and
//!   list items together, is exactly one coding that is on (tokens compared
//!   without case; `x-gzip` is gzip), and it has a body to decode: not the
//!   answer to a `HEAD`, not a `206` (a slice), not `204` or `304`. Then
//!   `Content-Encoding` and `Content-Length` go (the length was the encoded
//!   one). Stacked codings (`gzip, br`) and unknown ones are left as they
//!   came, headers and all.
//! - A `204` or `304` naming a coding that is on loses the two headers too,
//!   so that a cache refreshing a decoded entry with a `304`'s headers never
//!   labels it encoded.
//! - A gzip or zstd body may hold several members or frames: all are
//!   decoded. Bytes after the end of the compressed data are a body error, as
//!   is a body cut short. An empty body is an empty body.
//! - A `Transfer-Encoding` other than `chunked` (hyper removes only the
//!   chunking) on a response with a body is refused as a body error, never
//!   retried: its bytes are not the representation, and nothing says so
//!   once they are handed on. (A `HEAD`'s, `204`'s or `304`'s has no body
//!   and is let through.)
//! - The decoded body comes in chunks of at most 8 KiB, so the body limit
//!   above (the retry buffer's, the call's, the cache's) sees a bomb as it
//!   grows.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{BufMut as _, Bytes, BytesMut};
use futures_core::Stream;
use http::header::{ACCEPT_ENCODING, CONTENT_ENCODING, CONTENT_LENGTH, RANGE, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::io::{AsyncBufRead, AsyncRead};
use tokio_util::io::StreamReader;
use tower::{BoxError, Layer, Service};

use crate::transport::ResponseBody;
use crate::RequestBody;

/// The most one decoded chunk holds (chunks read together share one
/// allocation of this size).
const CHUNK: usize = 8 * 1024;

/// A content coding this build can decode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Coding {
    Gzip,
    Deflate,
    Brotli,
    Zstd,
}

impl Coding {
    const ALL: [Coding; 4] = [Coding::Gzip, Coding::Deflate, Coding::Brotli, Coding::Zstd];

    fn token(self) -> &'static str {
        match self {
            Coding::Gzip => "gzip",
            Coding::Deflate => "deflate",
            Coding::Brotli => "br",
            Coding::Zstd => "zstd",
        }
    }

    /// Whether the crate was built with this codec.
    fn compiled(self) -> bool {
        match self {
            Coding::Gzip => cfg!(feature = "gzip"),
            Coding::Deflate => cfg!(feature = "deflate"),
            Coding::Brotli => cfg!(feature = "brotli"),
            Coding::Zstd => cfg!(feature = "zstd"),
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    /// The coding a `Content-Encoding` token names, without case.
    fn of(token: &str) -> Option<Coding> {
        let token = token.trim();
        if token.eq_ignore_ascii_case("gzip") || token.eq_ignore_ascii_case("x-gzip") {
            return Some(Coding::Gzip);
        }
        Coding::ALL
            .into_iter()
            .find(|c| token.eq_ignore_ascii_case(c.token()))
    }
}

/// Layer 10b: asks for and decodes compressed responses.
#[derive(Clone, Debug)]
pub(crate) struct DecompressionLayer {
    /// Which codings are on, by [`Coding::index`].
    on: [bool; 4],
    /// `Accept-Encoding` naming them.
    accept: HeaderValue,
}

impl DecompressionLayer {
    /// The layer for these codecs (gzip, deflate, brotli, zstd), each only
    /// when the crate was built with it; `None` when none is on.
    pub(crate) fn new(asked: [bool; 4]) -> Option<Self> {
        let mut on = [false; 4];
        let mut names = Vec::new();
        for coding in Coding::ALL {
            if asked[coding.index()] && coding.compiled() {
                on[coding.index()] = true;
                names.push(coding.token());
            }
        }
        let accept = HeaderValue::from_str(&names.join(", ")).ok()?;
        names.first()?;
        Some(DecompressionLayer { on, accept })
    }
}

impl<S> Layer<S> for DecompressionLayer {
    type Service = Decompression<S>;

    fn layer(&self, inner: S) -> Decompression<S> {
        Decompression {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service of [`DecompressionLayer`].
#[derive(Clone, Debug)]
pub(crate) struct Decompression<S> {
    inner: S,
    layer: DecompressionLayer,
}

impl<S> Service<Request<RequestBody>> for Decompression<S>
where
    S: Service<Request<RequestBody>, Response = Response<ResponseBody>, Error = BoxError>,
{
    type Response = Response<ResponseBody>;
    type Error = BoxError;
    type Future = DecompressionFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<RequestBody>) -> Self::Future {
        let headers = req.headers_mut();
        if !headers.contains_key(ACCEPT_ENCODING) && !headers.contains_key(RANGE) {
            headers.insert(ACCEPT_ENCODING, self.layer.accept.clone());
        }
        DecompressionFuture {
            head: req.method() == Method::HEAD,
            on: self.layer.on,
            inner: self.inner.call(req),
        }
    }
}

pin_project_lite::pin_project! {
    /// The future of [`Decompression`].
    pub(crate) struct DecompressionFuture<F> {
        #[pin]
        inner: F,
        head: bool,
        on: [bool; 4],
    }
}

impl<F> std::future::Future for DecompressionFuture<F>
where
    F: std::future::Future<Output = Result<Response<ResponseBody>, BoxError>>,
{
    type Output = Result<Response<ResponseBody>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let res = ready!(this.inner.poll(cx))?;
        Poll::Ready(decode(res, *this.head, *this.on))
    }
}

/// The coding a response's `Content-Encoding` names, when it is exactly one
/// coding (all its lines and list items together) and that one is on.
fn single_coding(headers: &HeaderMap, on: [bool; 4]) -> Option<Coding> {
    let mut tokens = headers
        .get_all(CONTENT_ENCODING)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .filter(|t| !t.trim_ascii().is_empty());
    let only = tokens.next()?;
    if tokens.next().is_some() {
        return None;
    }
    let coding = Coding::of(std::str::from_utf8(only).ok()?)?;
    on[coding.index()].then_some(coding)
}

/// Whether a `Transfer-Encoding` names a coding other than `chunked`.
fn foreign_transfer_coding(headers: &HeaderMap) -> bool {
    headers
        .get_all(TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
        .any(|t| !t.is_empty() && !t.eq_ignore_ascii_case(b"chunked"))
}

/// The error a response in a transfer coding other than `chunked` gets.
#[derive(Debug)]
pub(crate) struct ForeignTransferCoding;

impl std::fmt::Display for ForeignTransferCoding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the response is in a transfer coding other than chunked, which is not decoded")
    }
}

impl std::error::Error for ForeignTransferCoding {}

fn decode(
    res: Response<ResponseBody>,
    head: bool,
    on: [bool; 4],
) -> Result<Response<ResponseBody>, BoxError> {
    let bodiless =
        head || res.status() == StatusCode::NO_CONTENT || res.status() == StatusCode::NOT_MODIFIED;
    if !bodiless && foreign_transfer_coding(res.headers()) {
        // The head is handed on; its body fails at its first read (a body
        // error, which the retry buffer knows not to retry: the same
        // answer would be refused again).
        let (parts, _) = res.into_parts();
        return Ok(Response::from_parts(
            parts,
            http_body_util::BodyExt::boxed_unsync(Failed(Some(ForeignTransferCoding.into()))),
        ));
    }
    if head || res.status() == StatusCode::PARTIAL_CONTENT {
        return Ok(res);
    }
    let Some(coding) = single_coding(res.headers(), on) else {
        return Ok(res);
    };
    let (mut parts, body) = res.into_parts();
    parts.headers.remove(CONTENT_ENCODING);
    parts.headers.remove(CONTENT_LENGTH);
    if parts.status == StatusCode::NO_CONTENT || parts.status == StatusCode::NOT_MODIFIED {
        return Ok(Response::from_parts(parts, body));
    }
    let body = http_body_util::BodyExt::boxed_unsync(Decoded::new(coding, body));
    Ok(Response::from_parts(parts, body))
}

/// A body that fails at its first read.
struct Failed(Option<BoxError>);

impl HttpBody for Failed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Poll::Ready(self.0.take().map(Err))
    }
}

/// The response body's data as a stream of `io` results, for
/// [`StreamReader`]; its own error travels inside an [`Inner`].
struct Frames(ResponseBody);

impl Stream for Frames {
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            return match ready!(Pin::new(&mut self.0).poll_frame(cx)) {
                None => Poll::Ready(None),
                Some(Err(e)) => Poll::Ready(Some(Err(io::Error::other(Inner(e))))),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) if data.is_empty() => continue,
                    Ok(data) => Poll::Ready(Some(Ok(data))),
                    // Trailers of an encoded body: not part of the data.
                    Err(_) => continue,
                },
            };
        }
    }
}

/// The response body's own error, carried through the decoder.
#[derive(Debug)]
struct Inner(BoxError);

impl std::fmt::Display for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for Inner {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

type Reader = StreamReader<Frames, Bytes>;

/// One decoder over the body.
enum Decoder {
    #[cfg(feature = "gzip")]
    Gzip(async_compression::tokio::bufread::GzipDecoder<Reader>),
    #[cfg(feature = "deflate")]
    Deflate(async_compression::tokio::bufread::ZlibDecoder<Reader>),
    #[cfg(feature = "brotli")]
    Brotli(async_compression::tokio::bufread::BrotliDecoder<Reader>),
    #[cfg(feature = "zstd")]
    Zstd(async_compression::tokio::bufread::ZstdDecoder<Reader>),
    /// A coding this build lacks (never made: [`single_coding`] only names
    /// codings that are on, and only compiled ones can be).
    #[allow(dead_code, reason = "the variant of a build without codecs")]
    None(Reader),
}

impl Decoder {
    fn new(coding: Coding, reader: Reader) -> Decoder {
        match coding {
            #[cfg(feature = "gzip")]
            Coding::Gzip => {
                let mut d = async_compression::tokio::bufread::GzipDecoder::new(reader);
                d.multiple_members(true);
                Decoder::Gzip(d)
            }
            #[cfg(feature = "deflate")]
            Coding::Deflate => {
                Decoder::Deflate(async_compression::tokio::bufread::ZlibDecoder::new(reader))
            }
            #[cfg(feature = "brotli")]
            Coding::Brotli => Decoder::Brotli(
                async_compression::tokio::bufread::BrotliDecoder::new(reader),
            ),
            #[cfg(feature = "zstd")]
            Coding::Zstd => {
                let mut d = async_compression::tokio::bufread::ZstdDecoder::new(reader);
                d.multiple_members(true);
                Decoder::Zstd(d)
            }
            #[allow(unreachable_patterns, reason = "every coding may be compiled")]
            _ => Decoder::None(reader),
        }
    }

    fn reader(&mut self) -> &mut Reader {
        match self {
            #[cfg(feature = "gzip")]
            Decoder::Gzip(d) => d.get_mut(),
            #[cfg(feature = "deflate")]
            Decoder::Deflate(d) => d.get_mut(),
            #[cfg(feature = "brotli")]
            Decoder::Brotli(d) => d.get_mut(),
            #[cfg(feature = "zstd")]
            Decoder::Zstd(d) => d.get_mut(),
            Decoder::None(r) => r,
        }
    }
}

impl AsyncRead for Decoder {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            #[cfg(feature = "gzip")]
            Decoder::Gzip(d) => Pin::new(d).poll_read(cx, buf),
            #[cfg(feature = "deflate")]
            Decoder::Deflate(d) => Pin::new(d).poll_read(cx, buf),
            #[cfg(feature = "brotli")]
            Decoder::Brotli(d) => Pin::new(d).poll_read(cx, buf),
            #[cfg(feature = "zstd")]
            Decoder::Zstd(d) => Pin::new(d).poll_read(cx, buf),
            Decoder::None(r) => Pin::new(r).poll_read(cx, buf),
        }
    }
}

/// Where a [`Decoded`] body is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Nothing decoded yet (an empty body is then an empty body).
    Start,
    /// Decoding.
    Reading,
    /// The compressed data ended: anything after it is an error.
    Checking,
    /// Ended, or failed.
    Done,
}

/// A decoded response body.
struct Decoded {
    decoder: Decoder,
    buf: BytesMut,
    state: State,
}

impl Decoded {
    fn new(coding: Coding, body: ResponseBody) -> Decoded {
        Decoded {
            decoder: Decoder::new(coding, StreamReader::new(Frames(body))),
            buf: BytesMut::new(),
            state: State::Start,
        }
    }

    /// The body's own error taken back out of the decoder's `io::Error`;
    /// a decoding error as it is.
    fn error(e: io::Error) -> BoxError {
        if e.get_ref().is_some_and(|inner| inner.is::<Inner>()) {
            if let Some(inner) = e.into_inner() {
                if let Ok(inner) = inner.downcast::<Inner>() {
                    return inner.0;
                }
            }
            return "the response body failed".into();
        }
        Box::new(e)
    }
}

impl HttpBody for Decoded {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            match this.state {
                State::Done => return Poll::Ready(None),
                State::Start => {
                    // An empty body (a coding named over nothing) is empty,
                    // not a truncated stream.
                    let reader = Pin::new(this.decoder.reader());
                    match ready!(reader.poll_fill_buf(cx)) {
                        Ok([]) => {
                            this.state = State::Done;
                            return Poll::Ready(None);
                        }
                        Ok(_) => this.state = State::Reading,
                        Err(e) => {
                            this.state = State::Done;
                            return Poll::Ready(Some(Err(Self::error(e))));
                        }
                    }
                }
                State::Reading => {
                    if this.buf.capacity() == 0 {
                        this.buf.reserve(CHUNK);
                    }
                    let mut limited = (&mut this.buf).limit(CHUNK);
                    let read = tokio_util::io::poll_read_buf(
                        Pin::new(&mut this.decoder),
                        cx,
                        &mut limited,
                    );
                    match ready!(read) {
                        Ok(0) => this.state = State::Checking,
                        Ok(_) => {
                            let chunk = this.buf.split().freeze();
                            return Poll::Ready(Some(Ok(Frame::data(chunk))));
                        }
                        Err(e) => {
                            this.state = State::Done;
                            return Poll::Ready(Some(Err(Self::error(e))));
                        }
                    }
                }
                State::Checking => {
                    let reader = Pin::new(this.decoder.reader());
                    let left = ready!(reader.poll_fill_buf(cx));
                    this.state = State::Done;
                    return match left {
                        Ok([]) => Poll::Ready(None),
                        Ok(_) => Poll::Ready(Some(Err(
                            "data after the end of the compressed body".into(),
                        ))),
                        Err(e) => Poll::Ready(Some(Err(Self::error(e)))),
                    };
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.state == State::Done
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(lines: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for line in lines {
            map.append(
                CONTENT_ENCODING,
                HeaderValue::from_str(line).expect("value"),
            );
        }
        map
    }

    #[test]
    fn one_coding_in_any_case_and_x_gzip_is_gzip() {
        let on = [true; 4];
        for one in [
            "gzip", "GZIP", " gzip ", "x-gzip", "X-Gzip", "gzip,", ", gzip",
        ] {
            assert_eq!(
                single_coding(&headers(&[one]), on),
                Some(Coding::Gzip),
                "{one}"
            );
        }
        assert_eq!(single_coding(&headers(&["BR"]), on), Some(Coding::Brotli));
    }

    #[test]
    fn stacked_unknown_or_off_codings_are_not_decoded() {
        let on = [true; 4];
        for lines in [
            &["gzip, gzip"][..],
            &["gzip", "gzip"],
            &["gzip", "br"],
            &["identity"],
            &["compress"],
            &[""],
        ] {
            assert_eq!(single_coding(&headers(lines), on), None, "{lines:?}");
        }
        assert_eq!(
            single_coding(&headers(&["gzip"]), [false, true, true, true]),
            None
        );
    }

    #[test]
    fn only_chunked_is_a_known_transfer_coding() {
        let te = |v: &str| {
            let mut map = HeaderMap::new();
            map.insert(TRANSFER_ENCODING, HeaderValue::from_str(v).expect("value"));
            map
        };
        assert!(!foreign_transfer_coding(&HeaderMap::new()));
        assert!(!foreign_transfer_coding(&te("chunked")));
        assert!(!foreign_transfer_coding(&te("Chunked")));
        assert!(foreign_transfer_coding(&te("gzip, chunked")));
    }

    #[test]
    fn no_codec_on_is_no_layer() {
        assert!(DecompressionLayer::new([false; 4]).is_none());
    }
}
