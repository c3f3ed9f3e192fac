//! [`RequestBuilder`]: one call, from path to [`ApiResponse`].

use std::fmt;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request};
use serde::Serialize;
use tokio::time::Instant;

use std::sync::Arc;

use crate::client::Client;
use crate::endpoint::Endpoint;
use crate::error::{Error, ErrorKind};
use crate::response::{ApiResponse, Summary};
use crate::stream::StreamingResponse;
use crate::transport::RequestBody;
use crate::url::{fill_template, RedactedUri};

/// A request being built; finish it with [`send`](RequestBuilder::send).
///
/// Mistakes (an invalid header, an unserializable body, a bad path
/// parameter) are kept and returned by `send` as an [`Error`] naming what was
/// wrong, never as a panic.
///
/// # Paths
///
/// The path is joined under the base URL's path: with the base
/// `https://h/api/v1`, `/posts/1` and `posts/1` both mean
/// `https://h/api/v1/posts/1`. It may carry a query (`/posts?userId=1`).
/// Characters not allowed in a URL (spaces, non-ASCII) are percent-encoded.
/// Refused with [`ErrorKind::InvalidUrl`]: an absolute URL to another
/// origin, a `//host` reference, and `.`/`..` segments (also as `%2e`), so
/// that no path leaves the base URL. An absolute URL to an origin allowed
/// with [`ClientBuilder::allow_origin`](crate::ClientBuilder::allow_origin)
/// is sent as it is; a client built with
/// [`Client::builder_without_base`](crate::Client::builder_without_base)
/// takes absolute URLs only. An absolute URL with user information
/// (`https://user:pw@host/`) is refused.
///
/// `{name}` placeholders are filled by [`path_param`](Self::path_param), each
/// value percent-encoded as exactly one segment: `/` or `..` in a value can
/// never change which resource is addressed.
///
/// ```no_run
/// # async fn run(client: tollgate::Client) -> Result<(), tollgate::Error> {
/// let user_input = "../admin";
/// let res = client
///     .get("/users/{id}/posts")
///     .path_param("id", "42")
///     .query(&[("page", 2)])
///     .header("x-trace", "abc")
///     .timeout(std::time::Duration::from_secs(2))
///     .send()
///     .await?;
/// // A value that would leave its segment is an error, not a new path:
/// let err = client.get("/users/{id}").path_param("id", user_input).send().await.unwrap_err();
/// assert_eq!(err.kind(), tollgate::ErrorKind::InvalidRequest);
/// # Ok(()) }
/// ```
#[must_use = "a request does nothing until it is sent"]
pub struct RequestBuilder {
    client: Client,
    method: Method,
    path: String,
    params: Vec<(String, String)>,
    query: Option<String>,
    headers: HeaderMap,
    body: Option<Bytes>,
    timeout: Option<Option<Duration>>,
    error: Option<Error>,
    /// The declared endpoint this call is of (its settings are the middle
    /// level).
    endpoint: Option<Arc<Endpoint>>,
    /// Settings few calls use, boxed so that the send future stays small.
    extras: Option<Box<Extras>>,
}

/// A request's rarer settings.
#[derive(Default)]
struct Extras {
    credential: Option<tollgate_core::Credential>,
    /// A streamed body (`body_stream`, a multipart form with a file),
    /// which replaces `body`.
    stream: Option<RequestBody>,
    /// `None`: the cache's rule; `Some(None)`: bypass; `Some(Some(ttl))`.
    #[cfg(feature = "cache")]
    cache: Option<Option<Duration>>,
    /// The HTTP version asked for (`RequestBuilder::version`).
    version: Option<http::Version>,
    /// Typed extensions for the layers (`RequestBuilder::extension`).
    extensions: http::Extensions,
}

impl fmt::Debug for RequestBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.headers.keys().map(HeaderName::as_str).collect();
        f.debug_struct("RequestBuilder")
            .field("method", &self.method)
            .field("path", &crate::url::redact(&self.path))
            .field("headers", &names)
            .field("body_len", &self.body.as_ref().map(Bytes::len))
            .finish_non_exhaustive()
    }
}

/// Parses a header name and value, naming the header (never the value) on
/// error.
pub(crate) fn header_pair<K, V>(name: K, value: V) -> Result<(HeaderName, HeaderValue), Error>
where
    HeaderName: TryFrom<K>,
    <HeaderName as TryFrom<K>>::Error: Into<http::Error>,
    HeaderValue: TryFrom<V>,
    <HeaderValue as TryFrom<V>>::Error: Into<http::Error>,
{
    let name = HeaderName::try_from(name).map_err(|e| {
        Error::new(ErrorKind::InvalidRequest, "invalid header name").with_source(e.into())
    })?;
    let value = HeaderValue::try_from(value).map_err(|e| {
        Error::new(
            ErrorKind::InvalidRequest,
            format!("invalid value for header `{name}` (CR, LF, NUL and other control bytes are not allowed)"),
        )
        .with_source(e.into())
    })?;
    Ok((name, value))
}

/// Puts every header of `from` into `into`, replacing values of the same
/// name.
pub(crate) fn merge_headers(into: &mut HeaderMap, from: HeaderMap) {
    let mut last: Option<HeaderName> = None;
    for (name, value) in from {
        match name {
            Some(name) => {
                into.insert(name.clone(), value);
                last = Some(name);
            }
            None => {
                if let Some(name) = &last {
                    into.append(name.clone(), value);
                }
            }
        }
    }
}

/// The `Content-Length` a caller set (through a request's or the client's
/// headers), if any.
///
/// # Errors
///
/// [`ErrorKind::InvalidRequest`] for a `Content-Length` that is not one
/// decimal number (repeated values must agree, RFC 9110 section 8.6).
fn declared_length(headers: &http::HeaderMap) -> Result<Option<u64>, Error> {
    let mut declared: Option<u64> = None;
    for value in headers.get_all(CONTENT_LENGTH) {
        let n = value
            .to_str()
            .ok()
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse::<u64>().ok());
        match (n, declared) {
            (Some(n), Some(d)) if n != d => {
                return Err(Error::new(
                    ErrorKind::InvalidRequest,
                    "the request has Content-Length headers that disagree",
                ))
            }
            (Some(n), _) => declared = Some(n),
            (None, _) => {
                return Err(Error::new(
                    ErrorKind::InvalidRequest,
                    "the request's Content-Length is not a number of bytes",
                ))
            }
        }
    }
    Ok(declared)
}

/// A body in memory has a known length: a caller's `Content-Length` that
/// says otherwise is refused before anything is sent (hyper would send the
/// header as it is: a shorter one cuts the body, a longer one leaves the
/// server waiting for bytes that never come).
///
/// # Errors
///
/// [`ErrorKind::InvalidRequest`]: a `Content-Length` that is not one number,
/// or not the body's length.
fn check_declared_length(request: &Request<RequestBody>) -> Result<(), Error> {
    let Some(declared) = declared_length(request.headers())? else {
        return Ok(());
    };
    let actual = http_body::Body::size_hint(request.body()).exact();
    match actual {
        Some(actual) if actual != declared => Err(Error::new(
            ErrorKind::InvalidRequest,
            format!(
                "the request's Content-Length ({declared}) is not the length of its body \
                 ({actual} bytes)"
            ),
        )),
        _ => Ok(()),
    }
}

/// Holds a streamed body to the `Content-Length` its caller set, if any
/// (see [`RequestBuilder::body_stream`]): the body is sent as exactly that
/// many bytes or the call fails with [`ErrorKind::Body`], never truncated or
/// overlong.
///
/// # Errors
///
/// [`ErrorKind::InvalidRequest`] for a `Content-Length` that is not one
/// decimal number (repeated values must agree, RFC 9110 section 8.6).
fn hold_to_declared_length(request: &mut Request<RequestBody>) -> Result<(), Error> {
    let declared = declared_length(request.headers())?;
    if let Some(n) = declared {
        if n == 0 {
            // hyper would send `Content-Length: 0` and never read the
            // stream: sent chunked instead, the stream read to its end, and
            // an empty body on the wire unless it yields data (an error).
            request.headers_mut().remove(CONTENT_LENGTH);
        } else {
            request
                .headers_mut()
                .insert(CONTENT_LENGTH, HeaderValue::from(n));
        }
        let body = std::mem::take(request.body_mut());
        *request.body_mut() = RequestBody::streaming(crate::stream::ExactLength::new(body, n));
    }
    Ok(())
}

impl RequestBuilder {
    pub(crate) fn new(client: Client, method: Method, path: String) -> Self {
        RequestBuilder {
            client,
            method,
            path,
            params: Vec::new(),
            query: None,
            headers: HeaderMap::new(),
            body: None,
            timeout: None,
            error: None,
            endpoint: None,
            extras: None,
        }
    }

    fn extras(&mut self) -> &mut Extras {
        self.extras.get_or_insert_with(Box::default)
    }

    pub(crate) fn fail(mut self, err: Error) -> Self {
        self.error.get_or_insert(err);
        self
    }

    pub(crate) fn for_endpoint(client: Client, endpoint: Arc<Endpoint>) -> Self {
        let mut builder =
            RequestBuilder::new(client, endpoint.method.clone(), endpoint.path.clone());
        builder.endpoint = Some(endpoint);
        builder
    }

    /// Sets this call's tracking id (sent in the client's request-id header,
    /// `x-request-id` by default) instead of a generated one.
    pub fn request_id(self, id: &str) -> Self {
        let name = self
            .client
            .inner
            .request_id
            .clone()
            .unwrap_or(HeaderName::from_static(
                crate::client::DEFAULT_REQUEST_ID_HEADER,
            ));
        self.header(name, id)
    }

    /// Fills the `{name}` placeholder of the path with `value`,
    /// percent-encoded as one segment. An empty value, `.` or `..`, a
    /// placeholder without a value, or a value without a placeholder, makes
    /// `send` fail with [`ErrorKind::InvalidRequest`] naming the parameter.
    #[allow(
        clippy::needless_pass_by_value,
        reason = "`path_param(\"id\", 42)` must accept owned numbers and strings alike"
    )]
    pub fn path_param(mut self, name: impl Into<String>, value: impl ToString) -> Self {
        self.params.push((name.into(), value.to_string()));
        self
    }

    /// Adds query parameters from anything `serde_urlencoded` can serialize:
    /// a struct, a map, or a slice of pairs. Calls accumulate; `None` fields
    /// are left out.
    pub fn query<T: Serialize + ?Sized>(mut self, query: &T) -> Self {
        match serde_urlencoded::to_string(query) {
            Ok(encoded) if encoded.is_empty() => self,
            Ok(encoded) => {
                match &mut self.query {
                    Some(q) => {
                        q.push('&');
                        q.push_str(&encoded);
                    }
                    None => self.query = Some(encoded),
                }
                self
            }
            Err(e) => self.fail(
                Error::new(
                    ErrorKind::InvalidRequest,
                    "query parameters could not be encoded",
                )
                .with_source(e),
            ),
        }
    }

    /// Adds a header, replacing the client's default of the same name.
    pub fn header<K, V>(mut self, name: K, value: V) -> Self
    where
        HeaderName: TryFrom<K>,
        <HeaderName as TryFrom<K>>::Error: Into<http::Error>,
        HeaderValue: TryFrom<V>,
        <HeaderValue as TryFrom<V>>::Error: Into<http::Error>,
    {
        match header_pair(name, value) {
            Ok((name, value)) => {
                self.headers.append(name, value);
                self
            }
            Err(e) => self.fail(e),
        }
    }

    /// Adds all these headers, replacing defaults of the same names.
    pub fn headers(mut self, headers: HeaderMap) -> Self {
        merge_headers(&mut self.headers, headers);
        self
    }

    /// Sends `value` as JSON, with `Content-Type: application/json` unless a
    /// content type was set.
    pub fn json<T: Serialize + ?Sized>(mut self, value: &T) -> Self {
        match serde_json::to_vec(value) {
            Ok(body) => {
                self.headers
                    .entry(CONTENT_TYPE)
                    .or_insert(HeaderValue::from_static("application/json"));
                self.set_body(Bytes::from(body));
                self
            }
            Err(e) => self.fail(
                Error::new(
                    ErrorKind::InvalidRequest,
                    "the JSON body could not be serialized",
                )
                .with_source(e),
            ),
        }
    }

    /// Sends these bytes as the body. A `Content-Length` header set by the
    /// caller (on the request or the client) must be their length: one
    /// that is not is an [`ErrorKind::InvalidRequest`] before anything is
    /// sent (hyper would send it as it is, cutting the body or leaving the
    /// server waiting). The same holds for every body in memory (`json`,
    /// `form`, a multipart form without files).
    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.set_body(body.into());
        self
    }

    /// A body in memory, replacing a streamed one.
    fn set_body(&mut self, body: Bytes) {
        if let Some(extras) = &mut self.extras {
            extras.stream = None;
        }
        self.body = Some(body);
    }

    /// Sends `value` as an HTML form (`application/x-www-form-urlencoded`,
    /// by `serde_urlencoded`: a struct, a map, or a slice of pairs), with
    /// that `Content-Type` unless one was set.
    pub fn form<T: Serialize + ?Sized>(mut self, value: &T) -> Self {
        match serde_urlencoded::to_string(value) {
            Ok(body) => {
                self.headers
                    .entry(CONTENT_TYPE)
                    .or_insert(HeaderValue::from_static(
                        "application/x-www-form-urlencoded",
                    ));
                self.set_body(Bytes::from(body));
                self
            }
            Err(e) => self.fail(
                Error::new(ErrorKind::InvalidRequest, "the form could not be encoded")
                    .with_source(e),
            ),
        }
    }

    /// Sends a `multipart/form-data` body (with its `Content-Type` and
    /// boundary, replacing one that was set). A form of text and bytes
    /// parts is a body in memory; one with a file part
    /// ([`Part::file`](crate::multipart::Part::file)) streams the file from
    /// disk and is sent once, as [`body_stream`](Self::body_stream).
    pub fn multipart(mut self, form: crate::multipart::Form) -> Self {
        let (content_type, body) = form.into_body();
        self.headers.insert(CONTENT_TYPE, content_type);
        match body {
            crate::multipart::FormBody::Whole(bytes) => self.set_body(bytes),
            crate::multipart::FormBody::Streamed(body) => {
                self.body = None;
                self.extras().stream = Some(body);
            }
        }
        self
    }

    /// Sends the chunks of `stream` as the body, as they come (HTTP/1.1
    /// chunked, or HTTP/2 frames): an upload of any size, never held in
    /// memory whole.
    ///
    /// A streamed body is sent once: retry does not resend it (a `503`
    /// comes back as the `503`), a `307`/`308` redirect is not followed
    /// (the `3xx` response comes back; `301`/`302`/`303` are followed as a
    /// `GET` without a body), the auth layer does not replay it after a
    /// `401`, and the cache is bypassed. An error from the stream ends the
    /// call with [`ErrorKind::Body`](crate::ErrorKind::Body), and the
    /// request is not completed (its connection is closed).
    ///
    /// **A `Content-Length` set by the caller** (on the request, the
    /// endpoint or the client) is held to: the stream must yield exactly
    /// that many bytes. One byte more, or an end before the declared length,
    /// fails the call with [`ErrorKind::Body`](crate::ErrorKind::Body) and
    /// the request is not completed: the server never sees a truncated or
    /// overlong body as a whole request. (hyper, which reqwest and this
    /// client send with, fails a short body but silently cuts a long one at
    /// the declared length; Go's `net/http` fails both, as this does.) To
    /// hold the length, the chunk that completes it is sent once the stream
    /// has ended. A `Content-Length` that is not one decimal number (or
    /// repeated with different values) is an
    /// [`ErrorKind::InvalidRequest`](crate::ErrorKind::InvalidRequest).
    /// Without one, the body is sent chunked (HTTP/1.1); with a declared
    /// length of zero too (hyper would send `Content-Length: 0` without
    /// reading the stream, so data from it would go unnoticed): an empty
    /// chunked body, or a `Body` error if the stream yields data.
    ///
    /// ```no_run
    /// # async fn run(client: tollgate::Client) -> Result<(), tollgate::Error> {
    /// # let chunks: Vec<Result<bytes::Bytes, std::io::Error>> = Vec::new();
    /// # struct Iter<I>(I);
    /// # impl<I: Iterator + Unpin> futures_core::Stream for Iter<I> {
    /// #     type Item = I::Item;
    /// #     fn poll_next(mut self: std::pin::Pin<&mut Self>, _: &mut std::task::Context<'_>)
    /// #         -> std::task::Poll<Option<I::Item>> { std::task::Poll::Ready(self.0.next()) }
    /// # }
    /// # let stream = Iter(chunks.into_iter());
    /// // `stream`: any `Stream<Item = Result<Bytes, E>>` (tokio-util's
    /// // `ReaderStream` over a file, a channel's receiver, ...).
    /// let res = client.post("/upload").body_stream(stream).send().await?;
    /// # Ok(()) }
    /// ```
    pub fn body_stream<S, E>(mut self, stream: S) -> Self
    where
        S: futures_core::Stream<Item = Result<Bytes, E>> + Send + 'static,
        E: Into<tower::BoxError> + 'static,
    {
        self.body = None;
        self.extras().stream = Some(RequestBody::streaming(crate::stream::StreamBody::new(
            stream, None,
        )));
        self
    }

    /// The deadline of this call, replacing the client's (and the
    /// endpoint's). `Duration::MAX` (or any duration too long for the
    /// clock) means no deadline; zero would fail every call and is an
    /// [`ErrorKind::InvalidRequest`] from `send`.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        if timeout.is_zero() {
            return self.fail(Error::new(
                ErrorKind::InvalidRequest,
                "a request timeout of zero would fail every call",
            ));
        }
        self.timeout = Some(Some(timeout));
        self
    }

    /// Skips the client's cache for this request: it is neither answered
    /// from the cache nor stored.
    #[cfg(feature = "cache")]
    pub fn no_cache(mut self) -> Self {
        self.extras().cache = Some(None);
        self
    }

    /// Keeps this request's response in the client's cache for `ttl`,
    /// whatever the cache's freshness rule (`no-store` is still honoured).
    #[cfg(feature = "cache")]
    pub fn cache_ttl(mut self, ttl: Duration) -> Self {
        self.extras().cache = Some(Some(ttl));
        self
    }

    /// Sends this request with `credential` instead of the client's own (a
    /// gateway calling an API for the user it serves). It goes only to the
    /// client's origins, like the client's own, and replaces a header of
    /// the same name.
    ///
    /// ```
    /// # async fn run(client: tollgate::Client) -> Result<(), Box<dyn std::error::Error>> {
    /// use tollgate::Credential;
    ///
    /// let user_token = "token-of-user-42";
    /// let me = client.get("/me").credential(Credential::bearer(user_token)?).send().await?;
    /// # Ok(()) }
    /// ```
    pub fn credential(mut self, credential: tollgate_core::Credential) -> Self {
        self.extras().credential = Some(credential);
        self
    }

    /// `Authorization: Bearer <token>` on this request, marked sensitive; a
    /// shortcut for [`credential`](Self::credential). An invalid token is an
    /// [`ErrorKind::InvalidRequest`](crate::ErrorKind::InvalidRequest) that
    /// does not show it.
    pub fn bearer_auth(self, token: impl AsRef<str>) -> Self {
        match tollgate_core::Credential::bearer(token) {
            Ok(credential) => self.credential(credential),
            Err(e) => {
                let error =
                    Error::new(crate::ErrorKind::InvalidRequest, e.to_string()).with_source(e);
                self.fail(error)
            }
        }
    }

    /// Sends the request and reads the whole response body.
    ///
    /// A response with an error status is still `Ok`: call
    /// [`ApiResponse::error_for_status`] to turn it into an error.
    ///
    /// # Errors
    ///
    /// An [`Error`] whose [`kind`](Error::kind) says what failed:
    /// `InvalidUrl`/`InvalidRequest` before anything is sent, `Connect`,
    /// `Timeout`, `Transport`, `Body` or `BodyTooLarge` after.
    pub async fn send(self) -> Result<ApiResponse, Error> {
        // Everything that can be done before the first await is done in a
        // plain function, so the future carries only what the exchange needs.
        let Prepared {
            request,
            method,
            uri,
            stack,
            deadline,
            max_body,
            span,
            started,
            request_id,
            log_bodies,
        } = match self.prepare(false)? {
            Step::Send(prepared) => prepared,
            Step::Answered(response) => return Ok(*response),
        };
        // Layers 1 and 2 (the span, the total deadline), then the stack.
        let result = crate::stack::call(
            stack,
            request,
            max_body,
            deadline,
            started,
            span.clone(),
            log_bodies,
        )
        .await;
        let elapsed = started.elapsed();
        match result {
            Ok((parts, bytes)) => {
                crate::observe::record_status(&span, parts.status);
                tracing::debug!(parent: &span, elapsed_ms = elapsed.as_secs_f64() * 1e3, "response received");
                let mut summary = Summary::from_extensions(&parts.extensions);
                summary.request_id = request_id.map(String::from);
                let response = ApiResponse::new(
                    method,
                    uri,
                    parts,
                    bytes,
                    SystemTime::now(),
                    elapsed,
                    summary,
                );
                // (Its body was logged, if asked, as it was read: `stack::call`.)
                crate::observe::finished(&span, &response, None);
                Ok(response)
            }
            Err(e) => {
                crate::observe::record_error(&span, e.kind());
                tracing::debug!(parent: &span, error = %e, "request failed");
                #[cfg(feature = "metrics")]
                crate::metrics::error(&method, &uri, e.kind(), elapsed);
                Err(e.with_request(&method, &uri))
            }
        }
    }

    /// Sends the request and hands back the response as soon as its head
    /// has arrived, with the body to read as it comes: a
    /// [`StreamingResponse`] (downloads of any size; see the
    /// [`stream`](crate::stream) module for the rules it keeps: the deadline
    /// and read timeout over the body, the pool slot held until the body
    /// ends or is dropped, no cache, no body limit on the stream itself).
    ///
    /// ```no_run
    /// # async fn run(client: tollgate::Client) -> Result<(), tollgate::Error> {
    /// let mut res = client.get("/export").send_streaming().await?;
    /// while let Some(chunk) = res.chunk().await? {
    ///     // write `chunk` somewhere
    /// #   let _ = chunk;
    /// }
    /// // or, in one step, bounded by `max_response_body`:
    /// let posts: serde_json::Value = client.get("/posts").send_streaming().await?.json().await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`send`](Self::send), for everything up to the response's head.
    pub async fn send_streaming(self) -> Result<StreamingResponse, Error> {
        let Step::Send(Prepared {
            request,
            method,
            uri,
            stack,
            deadline,
            max_body,
            span,
            started,
            request_id,
            // A streamed response's body is the caller's to read: not logged.
            log_bodies: _,
        }) = self.prepare(true)?
        else {
            // `prepare` takes no cache shortcut for a streaming call.
            return Err(Error::new(
                ErrorKind::InvalidRequest,
                "a streaming call was answered from the cache",
            ));
        };
        let result =
            crate::stack::call_streaming(stack, request, deadline, started, span.clone()).await;
        match result {
            Ok(response) => {
                let (parts, body) = response.into_parts();
                crate::observe::record_status(&span, parts.status);
                tracing::debug!(parent: &span, elapsed_ms = started.elapsed().as_secs_f64() * 1e3, "response head received");
                let mut summary = Summary::from_extensions(&parts.extensions);
                summary.request_id = request_id.map(String::from);
                // Counted when the head arrives: the duration is the time to
                // the head (the body is the caller's to read, or not).
                #[cfg(feature = "metrics")]
                crate::metrics::response(&method, &uri, parts.status, started.elapsed(), &summary);
                Ok(StreamingResponse::new(crate::stream::Head {
                    method,
                    url: uri,
                    parts,
                    body,
                    started,
                    deadline: deadline.and_then(|d| Some((started.checked_add(d)?, d))),
                    summary,
                    max_body,
                }))
            }
            Err(e) => {
                crate::observe::record_error(&span, e.kind());
                tracing::debug!(parent: &span, error = %e, "request failed");
                #[cfg(feature = "metrics")]
                crate::metrics::error(&method, &uri, e.kind(), started.elapsed());
                Err(e.with_request(&method, &uri))
            }
        }
    }

    /// Validates and builds the `http::Request`, and opens the span;
    /// `streaming`: for `send_streaming` (no cache, no body buffer).
    fn prepare(self, streaming: bool) -> Result<Step, Error> {
        let RequestBuilder {
            client,
            method,
            path,
            params,
            query,
            headers,
            body,
            timeout,
            error,
            endpoint,
            extras,
        } = self;
        let mut extras = extras.map(|e| *e).unwrap_or_default();
        if let Some(e) = error {
            return Err(e);
        }
        let inner = &*client.inner;
        // Query parameters from the three levels: client, endpoint, request.
        let endpoint_query = endpoint.as_ref().map_or(&[][..], |e| &e.query[..]);
        let query =
            crate::endpoint::merge_query(&inner.default_query, endpoint_query, query.as_deref());
        let uri = if params.is_empty() && !path.bytes().any(|b| b == b'{' || b == b'}') {
            inner.base.join(&path, query.as_deref())?
        } else {
            inner
                .base
                .join(&fill_template(&path, &params)?, query.as_deref())?
        };

        let started = Instant::now();
        let deadline = timeout
            .or_else(|| endpoint.as_ref()?.timeout.map(Some))
            .unwrap_or(inner.timeout);
        let body = body.unwrap_or_default();
        let streamed_body = extras.stream.is_some();
        // A streamed body is not logged: it is read once, by the transport.
        let logged_body = inner
            .log_bodies
            .filter(|_| !streamed_body)
            .map(|_| body.clone());
        let mut request = Request::new(match extras.stream.take() {
            Some(stream) => stream,
            None => RequestBody::from_bytes(body),
        });
        if streaming {
            // Let through unbuffered by the retry stage's body buffer.
            request.extensions_mut().insert(crate::buffer::Streamed);
        }
        // Only retry and the rate limiter read it.
        if let Some(at) = deadline
            .filter(|_| inner.stack.wants_deadline)
            .and_then(|d| started.checked_add(d))
        {
            // Retry starts no attempt, and the rate limiter grants no permit,
            // whose wait would pass this.
            request.extensions_mut().insert(tollgate_core::Deadline(at));
        }
        *request.method_mut() = method.clone();
        *request.uri_mut() = uri.clone();
        let mut all_headers = inner.headers.clone();
        if let Some(e) = endpoint.as_ref().filter(|e| !e.headers.is_empty()) {
            merge_headers(&mut all_headers, e.headers.clone());
        }
        if !headers.is_empty() {
            merge_headers(&mut all_headers, headers);
        }
        // The call's tracking id: its own, or a new one. Set here, above
        // retry, so that every attempt carries the same.
        // The client's defaults hold an empty placeholder for it, so that
        // setting it replaces a value rather than growing the copied map.
        let request_id = match &inner.request_id {
            Some(name) => match all_headers.get(name).filter(|v| !v.is_empty()) {
                Some(own) => Some(own.clone()),
                None => {
                    // A tower-http `RequestId` the caller passed on (the id
                    // of the request its server is handling), else a new one.
                    let id = crate::observe::caller_request_id(&extras.extensions)
                        .unwrap_or_else(new_request_id);
                    all_headers.insert(name.clone(), id.clone());
                    Some(id)
                }
            },
            None => None,
        };
        let trace_id = inner
            .traceparent
            .then(|| crate::observe::propagate(&mut all_headers, &extras.extensions))
            .flatten();
        let content_type = logged_body
            .as_ref()
            .and_then(|_| all_headers.get(CONTENT_TYPE).cloned());
        *request.headers_mut() = all_headers;
        if streamed_body {
            hold_to_declared_length(&mut request)?;
        } else {
            check_declared_length(&request)?;
        }
        #[cfg(feature = "cache")]
        {
            if streaming || streamed_body {
                // A streamed response is not stored (that would buffer
                // it), a streamed request body not given to the cache.
                extras.cache = Some(None);
            }
            match extras.cache {
                Some(None) => {
                    request.extensions_mut().insert(tollgate_cache::Bypass);
                }
                Some(Some(ttl)) => {
                    request
                        .extensions_mut()
                        .insert(tollgate_cache::CacheTtl(ttl));
                }
                None => {}
            }
            if let Some(partition) = inner.partition {
                request.extensions_mut().insert(partition);
            }
        }
        if let Some(credential) = extras.credential {
            // The auth layer applies it, after its origin check; without
            // one, the request is for the base URL's origin by construction.
            if inner.stack.has_auth {
                request.extensions_mut().insert(credential);
            } else {
                // Its query parameter, if it is one, stays off a redirect
                // chain that leaves the origin (see `RedirectPolicy`).
                #[cfg(feature = "redirect")]
                if let Some(name) = credential.query_name() {
                    request
                        .extensions_mut()
                        .insert(crate::redirect::SecretQuery(name.to_owned()));
                }
                credential.apply(&mut request, true);
            }
        }

        if let Some(version) = extras.version {
            *request.version_mut() = version;
        }
        // The caller's extensions; the facade's own (set above) win.
        if !extras.extensions.is_empty() {
            let own = std::mem::replace(request.extensions_mut(), extras.extensions);
            request.extensions_mut().extend(own);
        }

        let span = tracing::debug_span!(
            "http.request",
            "http.request.method" = %method,
            "url.full" = %RedactedUri { uri: &uri, sensitive: &inner.sensitive_query },
            "server.address" = uri.host().unwrap_or_default(),
            "server.port" = crate::observe::server_port(&uri),
            "url.template" = tracing::field::Empty,
            "otel.kind" = "client",
            "http.response.status_code" = tracing::field::Empty,
            "error.type" = tracing::field::Empty,
            "otel.status_code" = tracing::field::Empty,
            "trace_id" = tracing::field::Empty,
        );
        // The path template, for `url.template`: the endpoint's, or a path
        // with placeholders (its query left out); built only for a span
        // that is on.
        if (endpoint.is_some() || !params.is_empty()) && !span.is_disabled() {
            if let Some(template) = inner
                .base
                .template(path.split('?').next().unwrap_or_default())
            {
                span.record("url.template", template);
            }
        }
        if let Some(trace_id) = &trace_id {
            span.record("trace_id", trace_id.as_str());
        }
        if let (Some(max), Some(body)) = (inner.log_bodies, &logged_body) {
            crate::observe::log_request_body(&span, body, content_type.as_ref(), max);
        }
        // Layer 3's fast path: a fresh response in the client's cache
        // answers at once, without entering the stack (see `stack.rs`).
        #[cfg(not(feature = "cache"))]
        let _ = streamed_body;
        #[cfg(feature = "cache")]
        if let Some(hit) = inner
            .stack
            .cache_fast_path(&mut request)
            .filter(|_| !streaming)
        {
            if hit.body().len() <= inner.max_body {
                let elapsed = started.elapsed();
                crate::observe::record_status(&span, hit.status());
                tracing::debug!(parent: &span, elapsed_ms = elapsed.as_secs_f64() * 1e3, "response received from the cache");
                let (parts, body) = hit.into_parts();
                let mut summary = Summary::from_extensions(&parts.extensions);
                summary.request_id = request_id.and_then(|id| id.to_str().ok().map(str::to_owned));
                let response = ApiResponse::new(
                    method,
                    uri,
                    parts,
                    body,
                    SystemTime::now(),
                    elapsed,
                    summary,
                );
                crate::observe::finished(&span, &response, inner.log_bodies);
                return Ok(Step::Answered(Box::new(response)));
            }
        }
        Ok(Step::Send(Prepared {
            request,
            method,
            uri,
            stack: inner.stack.service(),
            deadline,
            max_body: inner.max_body,
            span,
            started,
            request_id: request_id.and_then(|id| id.to_str().ok().map(Box::from)),
            log_bodies: inner.log_bodies,
        }))
    }
}

/// What `prepare` decided: send the request, or it is answered already.
/// (`Prepared` stays unboxed: it is the common case, and is moved once.)
#[allow(
    clippy::large_enum_variant,
    reason = "the large variant is the common one"
)]
enum Step {
    Send(Prepared),
    #[cfg_attr(not(feature = "cache"), allow(dead_code))]
    Answered(Box<ApiResponse>),
}

/// What [`RequestBuilder::send`] needs after its first await.
struct Prepared {
    request: Request<RequestBody>,
    method: Method,
    uri: http::Uri,
    stack: crate::stack::Boxed,
    deadline: Option<Duration>,
    max_body: usize,
    span: tracing::Span,
    started: Instant,
    /// Boxed text rather than the `HeaderValue`: the send future stays small.
    request_id: Option<Box<str>>,
    /// `ClientBuilder::log_bodies`: the most bytes of a body logged.
    log_bodies: Option<std::num::NonZeroUsize>,
}

/// A random 128-bit tracking id as 32 hex digits (written by hand: `format!`
/// cost more than the rest of a call's preparation).
fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut bits = fastrand::u128(..);
    let mut text = [0u8; 32];
    for byte in text.iter_mut().rev() {
        *byte = HEX[(bits & 0xf) as usize];
        bits >>= 4;
    }
    HeaderValue::from_bytes(&text).unwrap_or(HeaderValue::from_static("0"))
}

/// reqwest's everyday request settings.
impl RequestBuilder {
    /// `Authorization: Basic <base64(user:password)>` on this request,
    /// marked sensitive; a shortcut for [`credential`](Self::credential)
    /// (so it goes only to the client's origins when the client has an auth
    /// layer). An invalid user (empty, with a `:` or a control character) is
    /// an [`ErrorKind::InvalidRequest`] from `send` that shows neither part.
    pub fn basic_auth(self, user: impl AsRef<str>, password: impl AsRef<str>) -> Self {
        match tollgate_core::Credential::basic(user, password) {
            Ok(credential) => self.credential(credential),
            Err(e) => {
                let error = Error::new(ErrorKind::InvalidRequest, e.to_string()).with_source(e);
                self.fail(error)
            }
        }
    }

    /// The HTTP version to send this request with (default: HTTP/1.1, or
    /// what ALPN or [`http2_prior_knowledge`](crate::ClientBuilder::http2_prior_knowledge)
    /// chose). `HTTP_10` sends HTTP/1.0. `HTTP_2` over a connection that is
    /// HTTP/1 is refused by the transport (an [`ErrorKind::Transport`]
    /// error), as hyper-util refuses it.
    pub fn version(mut self, version: http::Version) -> Self {
        self.extras().version = Some(version);
        self
    }

    /// Puts `value` in the request's extensions, where the layers (yours
    /// given to [`ClientBuilder::layer`](crate::ClientBuilder::layer)
    /// included) can read it. The facade's own extensions (the deadline,
    /// the cache settings, a per-request credential) win over one of the
    /// same type.
    pub fn extension<T: Clone + Send + Sync + 'static>(mut self, value: T) -> Self {
        self.extras().extensions.insert(value);
        self
    }

    /// A copy of this request, to send it again; `None` when it holds an
    /// error (it would fail anyway), as reqwest's `try_clone`.
    ///
    /// Every setting the builder holds today is cloned: the body is in
    /// memory (`Bytes`, cloned without copying). A body read from a stream
    /// can be sent only once: such a builder must return `None` here.
    pub fn try_clone(&self) -> Option<RequestBuilder> {
        if self.error.is_some() {
            return None;
        }
        // A stream body cannot be read twice.
        let extras = match self.extras.as_deref() {
            Some(e) if e.stream.is_some() => return None,
            Some(e) => Some(Box::new(Extras {
                credential: e.credential.clone(),
                stream: None,
                #[cfg(feature = "cache")]
                cache: e.cache,
                version: e.version,
                extensions: e.extensions.clone(),
            })),
            None => None,
        };
        Some(RequestBuilder {
            client: self.client.clone(),
            method: self.method.clone(),
            path: self.path.clone(),
            params: self.params.clone(),
            query: self.query.clone(),
            headers: self.headers.clone(),
            body: self.body.clone(),
            timeout: self.timeout,
            error: None,
            endpoint: self.endpoint.clone(),
            extras,
        })
    }
}

#[cfg(test)]
mod tests {
    fn assert_send<T: Send>(_: &T) {}

    #[test]
    fn the_send_future_is_send() {
        // Callers spawn calls onto multi-thread runtimes; this must compile.
        let client = crate::Client::new("http://127.0.0.1:1").expect("valid");
        let fut = client.get("/x").send();
        assert_send(&fut);
        // Every caller moves this future at least once (into a task or a
        // block_on); profiling showed moves of a 1.8 KB future costing more
        // than the deadline's timer. Keep it small.
        assert!(
            std::mem::size_of_val(&fut) <= 640,
            "{}",
            std::mem::size_of_val(&fut)
        );
    }

    #[test]
    fn the_streaming_send_future_is_send() {
        let client = crate::Client::new("http://127.0.0.1:1").expect("valid");
        assert_send(&client.get("/x").send_streaming());
        struct Empty;
        impl futures_core::Stream for Empty {
            type Item = Result<bytes::Bytes, std::io::Error>;
            fn poll_next(
                self: std::pin::Pin<&mut Self>,
                _: &mut std::task::Context<'_>,
            ) -> std::task::Poll<Option<Self::Item>> {
                std::task::Poll::Ready(None)
            }
        }
        let upload = client.post("/x").body_stream(Empty);
        assert_send(&upload.send_streaming());
    }
}
