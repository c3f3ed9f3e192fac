//! `multipart/form-data` bodies (RFC 7578), for
//! [`RequestBuilder::multipart`](crate::RequestBuilder::multipart).
//!
//! ```no_run
//! # async fn run(client: tollgate::Client) -> Result<(), tollgate::Error> {
//! use tollgate::multipart::{Form, Part};
//!
//! let form = Form::new()
//!     .text("title", "Quarterly report")
//!     .part("thumb", Part::bytes(vec![0x89, b'P', b'N', b'G']).file_name("t.png").mime_str("image/png")?)
//!     // Streamed from disk as it is sent, never read whole into memory.
//!     .part("report", Part::file("report.pdf").await?);
//! let res = client.post("/upload").multipart(form).send().await?;
//! # Ok(()) }
//! ```
//!
//! What is chosen here:
//!
//! - **The boundary** is random per form (`tollgate-` and 128 random bits
//!   as 32 hex digits): a body cannot guess it, and two forms never share
//!   one.
//! - **Names and file names** are sent as UTF-8 in quotes, with `"`, CR and
//!   LF percent-encoded (`%22`, `%0D`, `%0A`), as the HTML standard's form
//!   encoding does (RFC 7578 section 2): a hostile file name cannot end its
//!   header line or its quoted string. Nothing else is escaped (as browsers
//!   do): a name that itself contains `; filename="` is read as a file name
//!   by some lax parsers (multer is one), so names from untrusted input
//!   are best checked by the caller.
//! - **A file part** gets its file name from the path's last component and
//!   `application/octet-stream` unless given ([`Part::mime_str`]); its
//!   length is taken when it is opened and exactly that many bytes are sent:
//!   a file that grew meanwhile is read only up to that length (its first
//!   bytes are sent, those added are not, and the call succeeds);
//!   a file that shrank fails the call with a `Body` error when its read
//!   ends short, before anything after it (the closing boundary) is sent,
//!   so the server never sees a complete form with a cut file in it.
//! - **The body**: a form of text and bytes parts is one buffer in memory
//!   (replayable: retry and redirects may send it again); a form with a
//!   file part is streamed and sent once (see
//!   [`RequestBuilder::body_stream`](crate::RequestBuilder::body_stream)),
//!   with its exact `Content-Length`.
//!
//! Written here rather than taken from a crate: the encoding is some forty
//! lines, and the crates that do it either belong to another client
//! (reqwest's is not separate) or bring a stack of their own.

use std::collections::VecDeque;
use std::fmt;
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use futures_core::Stream;
use http::HeaderValue;
use tokio::io::AsyncReadExt;
use tokio_util::io::ReaderStream;

use crate::error::{Error, ErrorKind};
use crate::transport::RequestBody;

/// A `multipart/form-data` form: named parts, sent in the order added.
pub struct Form {
    boundary: String,
    parts: Vec<(String, Part)>,
}

impl fmt::Debug for Form {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.parts.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("Form")
            .field("boundary", &self.boundary)
            .field("parts", &names)
            .finish()
    }
}

impl Default for Form {
    fn default() -> Self {
        Form::new()
    }
}

/// One part of a [`Form`]: text, bytes, or a file streamed from disk, with
/// an optional file name and content type.
pub struct Part {
    body: PartBody,
    file_name: Option<String>,
    mime: Option<HeaderValue>,
}

impl fmt::Debug for Part {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the content.
        let (kind, len) = match &self.body {
            PartBody::Bytes(b) => ("bytes", b.len() as u64),
            PartBody::File { len, .. } => ("file", *len),
        };
        f.debug_struct("Part")
            .field("kind", &kind)
            .field("len", &len)
            .field("file_name", &self.file_name)
            .field("mime", &self.mime)
            .finish()
    }
}

enum PartBody {
    Bytes(Bytes),
    File { file: tokio::fs::File, len: u64 },
}

/// The body of a form, for the request builder.
pub(crate) enum FormBody {
    /// Every part in memory.
    Whole(Bytes),
    /// With a file: streamed, once.
    Streamed(RequestBody),
}

impl Form {
    /// An empty form with a new random boundary.
    pub fn new() -> Self {
        Form {
            boundary: format!("tollgate-{:032x}", fastrand::u128(..)),
            parts: Vec::new(),
        }
    }

    /// This form's boundary.
    pub fn boundary(&self) -> &str {
        &self.boundary
    }

    /// Adds a text field.
    pub fn text(self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.part(name, Part::text(value))
    }

    /// Adds a part.
    pub fn part(mut self, name: impl Into<String>, part: Part) -> Self {
        self.parts.push((name.into(), part));
        self
    }

    /// The `Content-Type` and the body.
    pub(crate) fn into_body(self) -> (HeaderValue, FormBody) {
        let content_type =
            HeaderValue::try_from(format!("multipart/form-data; boundary={}", self.boundary))
                .unwrap_or(HeaderValue::from_static("multipart/form-data"));
        let mut segments = VecDeque::new();
        let mut head = BytesMut::new();
        let mut len: u64 = 0;
        let mut streamed = false;
        for (name, part) in self.parts {
            head.extend_from_slice(b"--");
            head.extend_from_slice(self.boundary.as_bytes());
            head.extend_from_slice(b"\r\nContent-Disposition: form-data; name=\"");
            escape_into(&mut head, &name);
            head.extend_from_slice(b"\"");
            if let Some(file_name) = &part.file_name {
                head.extend_from_slice(b"; filename=\"");
                escape_into(&mut head, file_name);
                head.extend_from_slice(b"\"");
            }
            head.extend_from_slice(b"\r\n");
            if let Some(mime) = &part.mime {
                head.extend_from_slice(b"Content-Type: ");
                head.extend_from_slice(mime.as_bytes());
                head.extend_from_slice(b"\r\n");
            }
            head.extend_from_slice(b"\r\n");
            match part.body {
                PartBody::Bytes(bytes) => {
                    head.extend_from_slice(&bytes);
                }
                PartBody::File { file, len: n } => {
                    streamed = true;
                    len += head.len() as u64 + n;
                    segments.push_back(Segment::Bytes(head.split().freeze()));
                    segments.push_back(Segment::File {
                        reader: ReaderStream::with_capacity(file.take(n), 64 * 1024),
                        left: n,
                    });
                }
            }
            head.extend_from_slice(b"\r\n");
        }
        head.extend_from_slice(b"--");
        head.extend_from_slice(self.boundary.as_bytes());
        head.extend_from_slice(b"--\r\n");
        if !streamed {
            return (content_type, FormBody::Whole(head.freeze()));
        }
        len += head.len() as u64;
        segments.push_back(Segment::Bytes(head.freeze()));
        let body = crate::stream::StreamBody::new(FormStream { segments }, Some(len));
        (
            content_type,
            FormBody::Streamed(RequestBody::streaming(body)),
        )
    }
}

/// `text` into a quoted header parameter: `"`, CR and LF percent-encoded
/// (see the module docs).
fn escape_into(out: &mut BytesMut, text: &str) {
    for byte in text.bytes() {
        match byte {
            b'"' => out.extend_from_slice(b"%22"),
            b'\r' => out.extend_from_slice(b"%0D"),
            b'\n' => out.extend_from_slice(b"%0A"),
            other => out.extend_from_slice(&[other]),
        }
    }
}

impl Part {
    /// A text part.
    pub fn text(value: impl Into<String>) -> Self {
        Part::bytes(value.into())
    }

    /// A part of these bytes (give it a [`file_name`](Self::file_name) to
    /// send it as a file from memory).
    pub fn bytes(value: impl Into<Bytes>) -> Self {
        Part {
            body: PartBody::Bytes(value.into()),
            file_name: None,
            mime: None,
        }
    }

    /// A file part, streamed from disk as the request is sent (never read
    /// whole into memory): its file name is the path's last component, its
    /// content type `application/octet-stream` (change either with
    /// [`file_name`](Self::file_name) and [`mime_str`](Self::mime_str)).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidRequest`] when the file cannot be opened or is
    /// not a regular file (a FIFO or a device is refused before it is
    /// opened, so that opening never blocks), or when it reports a size of 0
    /// but has content, as `/proc` and `/sys` files do (its length is what
    /// the part is sent with: read such a file and use [`bytes`](Self::bytes)).
    /// The error names the file, with the I/O error as its source.
    pub async fn file(path: impl AsRef<Path>) -> Result<Part, Error> {
        let path = path.as_ref();
        let failed = |what: &str, e: std::io::Error| {
            Error::new(
                ErrorKind::InvalidRequest,
                format!("the file {} could not be {what}", path.display()),
            )
            .with_source(e)
        };
        let not_regular = || {
            Error::new(
                ErrorKind::InvalidRequest,
                format!("{} is not a regular file", path.display()),
            )
        };
        // Looked at before it is opened: opening a FIFO with no writer (or
        // a device) can block for ever. Checked again on the open file, in
        // case the path changed in between.
        let meta = tokio::fs::metadata(path)
            .await
            .map_err(|e| failed("opened", e))?;
        if !meta.is_file() {
            return Err(not_regular());
        }
        let mut file = tokio::fs::File::open(path)
            .await
            .map_err(|e| failed("opened", e))?;
        let meta = file.metadata().await.map_err(|e| failed("read", e))?;
        if !meta.is_file() {
            return Err(not_regular());
        }
        if meta.len() == 0 {
            // A file that says it is empty but reads data (procfs, sysfs)
            // has no length to send it with: refused rather than sent empty.
            let mut one = [0u8; 1];
            let read = tokio::io::AsyncReadExt::read(&mut file, &mut one)
                .await
                .map_err(|e| failed("read", e))?;
            if read > 0 {
                return Err(Error::new(
                    ErrorKind::InvalidRequest,
                    format!(
                        "{} reports a size of 0 but has content (a /proc or /sys file?): \
                         read it and send it with Part::bytes",
                        path.display()
                    ),
                ));
            }
        }
        Ok(Part {
            body: PartBody::File {
                file,
                len: meta.len(),
            },
            file_name: path.file_name().map(|n| n.to_string_lossy().into_owned()),
            mime: Some(HeaderValue::from_static("application/octet-stream")),
        })
    }

    /// Sets the file name sent for this part.
    pub fn file_name(mut self, name: impl Into<String>) -> Self {
        self.file_name = Some(name.into());
        self
    }

    /// Sets the part's content type (`image/png`, `text/plain;
    /// charset=utf-8`).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidRequest`] when it is not a media type.
    pub fn mime_str(mut self, mime: &str) -> Result<Self, Error> {
        let invalid = || {
            Error::new(
                ErrorKind::InvalidRequest,
                "invalid content type for a multipart part",
            )
        };
        let parsed: mime::Mime = mime.parse().map_err(|e| invalid().with_source(e))?;
        let value = HeaderValue::from_str(parsed.as_ref()).map_err(|e| invalid().with_source(e))?;
        self.mime = Some(value);
        Ok(self)
    }
}

/// The pieces of a streamed form: the bytes between files, and the files.
enum Segment {
    Bytes(Bytes),
    /// A file, read up to the length it had when opened (`Take`): `left`
    /// bytes of it are still to come.
    File {
        reader: ReaderStream<tokio::io::Take<tokio::fs::File>>,
        left: u64,
    },
}

/// A file part that ended `left` bytes short of the length it had when
/// opened: sending on would make a well-formed form with a cut file in it.
fn file_shrank(left: u64) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::UnexpectedEof,
        format!(
            "a multipart file part ended {left} bytes short of the length it had when \
             opened (the file shrank while it was sent)"
        ),
    )
}

struct FormStream {
    segments: VecDeque<Segment>,
}

impl Stream for FormStream {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            match self.segments.front_mut() {
                None => return Poll::Ready(None),
                Some(Segment::Bytes(bytes)) => {
                    let bytes = std::mem::take(bytes);
                    self.segments.pop_front();
                    if !bytes.is_empty() {
                        return Poll::Ready(Some(Ok(bytes)));
                    }
                }
                Some(Segment::File { reader, left }) => match Pin::new(reader).poll_next(cx) {
                    Poll::Ready(Some(Ok(bytes))) => {
                        // `Take` never reads past the length: a file that
                        // grew is sent as it was when opened.
                        *left = left.saturating_sub(bytes.len() as u64);
                        return Poll::Ready(Some(Ok(bytes)));
                    }
                    Poll::Ready(Some(Err(e))) => {
                        self.segments.clear();
                        return Poll::Ready(Some(Err(e)));
                    }
                    Poll::Ready(None) if *left > 0 => {
                        // Nothing after it: the form is never completed.
                        let left = *left;
                        self.segments.clear();
                        return Poll::Ready(Some(Err(file_shrank(left))));
                    }
                    Poll::Ready(None) => {
                        self.segments.pop_front();
                    }
                    Poll::Pending => return Poll::Pending,
                },
            }
        }
    }
}
