//! [`ApiResponse`]: a complete response with what the stack did to get it.

use std::fmt;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::response::Parts;
use http::{Extensions, HeaderMap, Method, StatusCode, Uri, Version};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::error::{Error, ErrorKind};

/// What the middleware did for one call.
///
/// Each layer records its part in the response's extensions; the facade
/// collects them here. Without a layer, its field keeps the default shown
/// below, which is then the truth: one attempt, no cache, no wait, no
/// tracking id.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Summary {
    /// Attempts made, the first included (1 without a retry layer). After
    /// redirects, the attempts of the last hop.
    pub attempts: u32,
    /// Redirects followed (0 without the redirect layer, or when the
    /// response came from the cache).
    pub redirects: u32,
    /// Whether the body came from the cache rather than from this call's
    /// own download: a hit, a response shared with a concurrent identical
    /// call, a stale entry renewed by a `304`, or a stale entry served
    /// because the upstream failed (false without a cache layer).
    pub from_cache: bool,
    /// What the cache did (`None` without a cache layer).
    #[cfg(feature = "cache")]
    pub cache: Option<tollgate_cache::CacheStatus>,
    /// Time spent waiting for a rate-limit permit (zero without a limiter;
    /// after redirects, the last hop's wait).
    pub permit_wait: Duration,
    /// Time spent in the concurrency pool's queue (zero without a pool, or
    /// when a slot was free).
    pub queue_wait: Duration,
    /// The call's tracking id, as sent in its request-id header
    /// (`x-request-id` by default; `None` with
    /// [`no_request_id`](crate::ClientBuilder::no_request_id)).
    pub request_id: Option<String>,
}

impl Default for Summary {
    fn default() -> Self {
        Summary {
            attempts: 1,
            redirects: 0,
            from_cache: false,
            #[cfg(feature = "cache")]
            cache: None,
            permit_wait: Duration::ZERO,
            queue_wait: Duration::ZERO,
            request_id: None,
        }
    }
}

impl Summary {
    /// Reads the layers' records from a response's extensions.
    pub(crate) fn from_extensions(extensions: &Extensions) -> Summary {
        #[allow(unused_mut, reason = "each layer's feature adds its part")]
        let mut summary = Summary::default();
        #[cfg(feature = "retry")]
        if let Some(record) = extensions.get::<tollgate_retry::RetryRecord>() {
            summary.attempts = record.attempts;
        }
        #[cfg(feature = "redirect")]
        if let Some(followed) = extensions.get::<crate::redirect::Followed>() {
            summary.redirects = followed.hops;
        }
        #[cfg(feature = "limit")]
        if let Some(wait) = extensions.get::<tollgate_limit::QueueWait>() {
            summary.queue_wait = wait.0;
        }
        #[cfg(feature = "limit")]
        if let Some(wait) = extensions.get::<tollgate_limit::PermitWait>() {
            summary.permit_wait = wait.0;
        }
        #[cfg(feature = "cache")]
        if let Some(status) = extensions.get::<tollgate_cache::CacheStatus>() {
            summary.cache = Some(*status);
            summary.from_cache = status.is_from_cache();
            // Answered from memory: no attempt of this call's own.
            if matches!(
                status,
                tollgate_cache::CacheStatus::Hit | tollgate_cache::CacheStatus::Coalesced
            ) {
                summary.attempts = 0;
            }
        }
        #[cfg(not(any(
            feature = "retry",
            feature = "limit",
            feature = "cache",
            feature = "redirect"
        )))]
        let _ = extensions;
        summary
    }
}

/// A response's head and the record of its call: what [`ApiResponse`] and
/// [`StreamingResponse`](crate::StreamingResponse) both hold, with the
/// accessors both give ([`head_accessors`]).
pub(crate) struct ResponseHead {
    pub(crate) method: Method,
    pub(crate) url: Uri,
    pub(crate) status: StatusCode,
    pub(crate) version: Version,
    pub(crate) headers: HeaderMap,
    pub(crate) extensions: Extensions,
    pub(crate) summary: Summary,
}

impl ResponseHead {
    pub(crate) fn new(method: Method, url: Uri, parts: Parts, summary: Summary) -> Self {
        // After redirects, the URL the response came from.
        #[cfg(feature = "redirect")]
        let url = parts
            .extensions
            .get::<crate::redirect::Followed>()
            .map_or(url, |f| f.url.clone());
        ResponseHead {
            method,
            url,
            status: parts.status,
            version: parts.version,
            headers: parts.headers,
            extensions: parts.extensions,
            summary,
        }
    }
}

/// The accessors of a [`ResponseHead`] held in a field `head`, written once
/// for [`ApiResponse`] and [`StreamingResponse`](crate::StreamingResponse),
/// and their `error_for_status` pair (documented by the first sentence given;
/// the type has a `status_error(&self) -> Option<Error>`).
macro_rules! head_accessors {
    ($error_for_status:literal) => {
        /// The status code.
        pub fn status(&self) -> http::StatusCode {
            self.head.status
        }

        /// The HTTP version the response came over.
        pub fn version(&self) -> http::Version {
            self.head.version
        }

        /// The response headers.
        pub fn headers(&self) -> &http::HeaderMap {
            &self.head.headers
        }

        /// The response's extensions: each layer's typed record of what it
        /// did.
        pub fn extensions(&self) -> &http::Extensions {
            &self.head.extensions
        }

        /// The method of the request.
        pub fn method(&self) -> &http::Method {
            &self.head.method
        }

        /// The URL the response came from: the request's, or after
        /// redirects the last one followed (as sent: without a credential
        /// the chain dropped, and without one the auth layer added below).
        pub fn url(&self) -> &http::Uri {
            &self.head.url
        }

        /// How many redirects were followed to get this response (see
        /// [`RedirectPolicy`](crate::RedirectPolicy); also
        /// [`Summary::redirects`](crate::Summary::redirects)).
        pub fn redirects(&self) -> u32 {
            self.head.summary.redirects
        }

        /// What the middleware did: attempts, cache, time waited for a
        /// permit or a pool slot, the tracking id. (A streamed call
        /// bypasses the cache: its `from_cache` is false.)
        pub fn summary(&self) -> &crate::Summary {
            &self.head.summary
        }

        /// The address of the peer the response came from (the built-in
        /// transport's connection, after redirects the last hop's). `None`
        /// for a response from the cache, or from a custom
        /// [`transport`](crate::ClientBuilder::transport) that does not set
        /// hyper-util's `HttpInfo`.
        pub fn remote_addr(&self) -> Option<std::net::SocketAddr> {
            self.head
                .extensions
                .get::<hyper_util::client::legacy::connect::HttpInfo>()
                .map(hyper_util::client::legacy::connect::HttpInfo::remote_addr)
        }

        #[doc = $error_for_status]
        ///
        /// # Errors
        ///
        /// For a 4xx or 5xx status.
        pub fn error_for_status(self) -> Result<Self, crate::Error> {
            match self.status_error() {
                Some(e) => Err(e),
                None => Ok(self),
            }
        }

        /// As [`error_for_status`](Self::error_for_status), by reference.
        ///
        /// # Errors
        ///
        /// For a 4xx or 5xx status.
        pub fn error_for_status_ref(&self) -> Result<&Self, crate::Error> {
            match self.status_error() {
                Some(e) => Err(e),
                None => Ok(self),
            }
        }
    };
}
pub(crate) use head_accessors;

/// A complete response: status, headers, the whole body, and how it was
/// obtained.
///
/// ```no_run
/// # async fn run(client: tollgate::Client) -> Result<(), tollgate::Error> {
/// let res = client.get("/posts/1").send().await?.error_for_status()?;
/// let title = res.data()?["title"].clone();
/// println!("{} in {:?}, attempts {}", res.status(), res.elapsed(), res.summary().attempts);
/// tracing::info!(record = %res.to_json(), "fetched");
/// # Ok(()) }
/// ```
pub struct ApiResponse {
    head: ResponseHead,
    body: Bytes,
    received_at: SystemTime,
    elapsed: Duration,
}

impl fmt::Debug for ApiResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiResponse")
            .field("status", &self.head.status)
            .field("method", &self.head.method)
            .field(
                "url",
                &crate::url::display_without_query(&self.head.url).to_string(),
            )
            .field("body_len", &self.body.len())
            .field("elapsed", &self.elapsed)
            .field("summary", &self.head.summary)
            .finish_non_exhaustive()
    }
}

/// Response headers whose values never appear in [`ApiResponse::to_json`].
const REDACTED_HEADERS: &[&str] = &[
    "set-cookie",
    "authorization",
    "proxy-authorization",
    "cookie",
];

impl ApiResponse {
    pub(crate) fn new(
        method: Method,
        url: Uri,
        parts: Parts,
        body: Bytes,
        received_at: SystemTime,
        elapsed: Duration,
        summary: Summary,
    ) -> Self {
        Self::from_head(
            ResponseHead::new(method, url, parts, summary),
            body,
            received_at,
            elapsed,
        )
    }

    pub(crate) fn from_head(
        head: ResponseHead,
        body: Bytes,
        received_at: SystemTime,
        elapsed: Duration,
    ) -> Self {
        ApiResponse {
            head,
            body,
            received_at,
            elapsed,
        }
    }

    head_accessors!(
        "The response itself for 1xx to 3xx, an [`ErrorKind::Status`] error for \
         4xx and 5xx (with the status and the start of the body)."
    );

    /// The whole body.
    pub fn bytes(&self) -> &Bytes {
        &self.body
    }

    /// The whole body, taken out of the response.
    pub fn into_bytes(self) -> Bytes {
        self.body
    }

    /// The body as text, decoded from the charset its `Content-Type` names
    /// (UTF-8 when it names none, as reqwest); a byte-order mark is
    /// honoured and removed. With the `charset` feature (on by default)
    /// every label of the WHATWG Encoding Standard is known (`iso-8859-1`,
    /// `shift_jis`, `utf-16le`, ...); without it, only UTF-8 and US-ASCII.
    ///
    /// Unlike reqwest's `text`, bytes that are not text in that charset are
    /// an error rather than U+FFFD: use [`text_lossy`](Self::text_lossy)
    /// for the forgiving reading.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Decode`] for bytes that are not text in the charset, or
    /// a charset that is not known (with the status and the request's URL).
    pub fn text(&self) -> Result<String, Error> {
        crate::response::decode_text(
            &self.body,
            self.head.headers.get(http::header::CONTENT_TYPE),
            false,
        )
        .map_err(|why| {
            Error::new(ErrorKind::Decode, why)
                .with_status(self.head.status)
                .with_request(&self.head.method, &self.head.url)
        })
    }

    /// The body as text in its charset (see [`text`](Self::text)), with
    /// bytes that are not text replaced by U+FFFD (an unknown charset reads
    /// as UTF-8). Never fails.
    pub fn text_lossy(&self) -> String {
        decode_text(
            &self.body,
            self.head.headers.get(http::header::CONTENT_TYPE),
            true,
        )
        .unwrap_or_else(|_| String::from_utf8_lossy(&self.body).into_owned())
    }

    /// The `Content-Length` the server announced, if it sent one that
    /// parses. A decoded (decompressed) response has none. The length of
    /// the body read is `bytes().len()`; for a `HEAD` request this is the
    /// size the resource would have.
    pub fn content_length(&self) -> Option<u64> {
        self.head
            .headers
            .get(http::header::CONTENT_LENGTH)?
            .to_str()
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// The body decoded from JSON as `T`.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Decode`] with serde's reason and the start of the body.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, Error> {
        serde_json::from_slice(&self.body).map_err(|e| self.decode_error(e))
    }

    /// The body as a JSON value; an empty body is `null`.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Decode`] when the body is not JSON.
    pub fn data(&self) -> Result<Value, Error> {
        if self.body.is_empty() {
            return Ok(Value::Null);
        }
        self.json()
    }

    fn decode_error(&self, e: serde_json::Error) -> Error {
        Error::new(ErrorKind::Decode, e.to_string())
            .with_source(e)
            .with_status(self.head.status)
            .with_request(&self.head.method, &self.head.url)
            .with_snippet(&self.body)
    }

    /// When the response was complete, on the wall clock.
    pub fn received_at(&self) -> SystemTime {
        self.received_at
    }

    /// How long the call took, from `send` until the body was read.
    pub fn elapsed(&self) -> Duration {
        self.elapsed
    }

    fn status_error(&self) -> Option<Error> {
        if !(self.head.status.is_client_error() || self.head.status.is_server_error()) {
            return None;
        }
        #[allow(unused_mut, reason = "the retry feature adds to it")]
        let mut err = Error::new(ErrorKind::Status, "");
        #[cfg(feature = "retry")]
        if let Some(record) = self.head.extensions.get::<tollgate_retry::RetryRecord>() {
            if let Some(stopped) = &record.stopped {
                err = Error::new(
                    ErrorKind::Status,
                    format!("after {} attempts: {stopped}", record.attempts),
                );
            }
            if let Some(tollgate_retry::Stopped::RetryAfterTooLong { requested, .. }) =
                record.stopped
            {
                err = err.with_retry_after(requested);
            }
        }
        Some(
            err.with_status(self.head.status)
                .with_request(&self.head.method, &self.head.url)
                .with_snippet(&self.body),
        )
    }

    /// A structured record for logs: status, the URL it came from (without
    /// its query), the redirects followed, headers, data (the JSON body,
    /// else the text, else `null`), `received_at` (RFC 3339), `elapsed_ms`
    /// and the summary. Values of `Set-Cookie`, `Cookie` and
    /// `Authorization`, and headers marked sensitive, show as `"REDACTED"`.
    pub fn to_json(&self) -> Value {
        let mut headers = Map::new();
        for (name, value) in &self.head.headers {
            let shown = if value.is_sensitive() || REDACTED_HEADERS.contains(&name.as_str()) {
                Value::from("REDACTED")
            } else {
                Value::from(String::from_utf8_lossy(value.as_bytes()).into_owned())
            };
            match headers.get_mut(name.as_str()) {
                Some(Value::Array(values)) => values.push(shown),
                Some(single) => *single = Value::Array(vec![single.take(), shown]),
                None => {
                    headers.insert(name.as_str().to_owned(), shown);
                }
            }
        }
        let data = match self.data() {
            Ok(v) => v,
            Err(_) => Value::from(self.text_lossy()),
        };
        #[allow(unused_mut, reason = "the cache feature adds to it")]
        let mut record = serde_json::json!({
            "status": self.head.status.as_u16(),
            "headers": headers,
            "data": data,
            "received_at": humantime::format_rfc3339_millis(self.received_at).to_string(),
            "elapsed_ms": self.elapsed.as_secs_f64() * 1e3,
            "attempts": self.head.summary.attempts,
            "redirects": self.head.summary.redirects,
            "url": crate::url::display_without_query(&self.head.url).to_string(),
            "from_cache": self.head.summary.from_cache,
            "permit_wait_ms": self.head.summary.permit_wait.as_secs_f64() * 1e3,
            "queue_wait_ms": self.head.summary.queue_wait.as_secs_f64() * 1e3,
            "request_id": self.head.summary.request_id,
        });
        #[cfg(feature = "cache")]
        if let Some(status) = self.head.summary.cache {
            record["cache"] = Value::from(status.as_str());
        }
        record
    }
}

/// Decodes `body` from the charset of `content_type` (UTF-8 without one),
/// honouring and removing a byte-order mark. `lossy`: malformed bytes become
/// U+FFFD and an unknown charset reads as UTF-8; otherwise both are errors.
fn decode_text(
    body: &[u8],
    content_type: Option<&http::HeaderValue>,
    lossy: bool,
) -> Result<String, String> {
    let label = content_type
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<mime::Mime>().ok())
        .and_then(|m| m.get_param(mime::CHARSET).map(|c| c.as_str().to_owned()));
    #[cfg(feature = "charset")]
    {
        let (encoding, body) = match encoding_rs::Encoding::for_bom(body) {
            Some((encoding, bom)) => (encoding, &body[bom..]),
            None => {
                let named = label
                    .as_deref()
                    .map(|l| (l, encoding_rs::Encoding::for_label(l.as_bytes())));
                match named {
                    None => (encoding_rs::UTF_8, body),
                    Some((_, Some(encoding))) => (encoding, body),
                    Some((_, None)) if lossy => (encoding_rs::UTF_8, body),
                    Some((l, None)) => {
                        return Err(format!("the body's charset `{}` is not known", shown(l)))
                    }
                }
            }
        };
        if lossy {
            return Ok(encoding.decode_without_bom_handling(body).0.into_owned());
        }
        encoding
            .decode_without_bom_handling_and_without_replacement(body)
            .map(std::borrow::Cow::into_owned)
            .ok_or_else(|| format!("the body is not valid {} text", encoding.name()))
    }
    #[cfg(not(feature = "charset"))]
    {
        let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
        match label.as_deref() {
            None => {}
            Some(l)
                if ["utf-8", "utf8", "us-ascii", "ascii"]
                    .iter()
                    .any(|k| l.eq_ignore_ascii_case(k)) => {}
            Some(_) if lossy => {}
            Some(l) => {
                return Err(format!(
                    "the body's charset `{}` needs tollgate's `charset` feature",
                    shown(l)
                ))
            }
        }
        if lossy {
            return Ok(String::from_utf8_lossy(body).into_owned());
        }
        String::from_utf8(body.to_vec()).map_err(|_| "the body is not valid UTF-8 text".to_owned())
    }
}

/// A charset label as shown in an error: at most 40 characters, printable.
fn shown(label: &str) -> String {
    label.chars().take(40).filter(|c| !c.is_control()).collect()
}
