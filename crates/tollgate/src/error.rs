//! The facade's error type.

use std::borrow::Cow;
use std::error::Error as StdError;
use std::fmt;

use http::{Method, StatusCode, Uri};
use tower::BoxError;

use crate::url::display_without_query;

/// What went wrong, for callers to match on.
///
/// New kinds are added as Tollgate's layers are plugged in, so matches need a
/// wildcard arm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The client could not be built (a bad base URL, TLS set-up, an invalid
    /// default header).
    Builder,
    /// The request's URL is invalid or refused: it does not parse, leaves
    /// the base URL's origin for one not allowed
    /// (`ClientBuilder::allow_origin`), is relative on a client without a
    /// base URL, carries user information, or contains `.`/`..` segments.
    InvalidUrl,
    /// The request could not be built: an invalid header name or value
    /// (CR, LF and other forbidden bytes), a missing or unsafe path
    /// parameter, or a body that could not be serialized.
    InvalidRequest,
    /// No connection could be made (refused, unreachable, DNS, the connect
    /// timeout, the TLS handshake): the request was never sent.
    Connect,
    /// The request or an attempt ran out of time.
    Timeout,
    /// The request failed after connecting: the connection was reset or
    /// closed before a complete response, or the peer broke the protocol.
    Transport,
    /// The response had an error status (from
    /// [`ApiResponse::error_for_status`](crate::ApiResponse::error_for_status)).
    Status,
    /// Reading the response body failed.
    Body,
    /// The response body is larger than the client's limit.
    BodyTooLarge,
    /// The response body is not the JSON the caller asked for, or not text
    /// in its charset (`ApiResponse::text`).
    Decode,
    /// Refused without waiting because too many were waiting already: the
    /// concurrency pool's queue was full, or a batched endpoint's callers
    /// waiting for their batch reached its bound (`BatchLayer::max_pending`).
    TooManyPending,
    /// The call waited in the concurrency pool's queue past its timeout.
    PendingTimeout,
    /// Over the rate limit in reject mode (see [`Error::retry_after`]).
    RateLimited,
    /// The next rate-limit permit was further away than the allowed wait.
    WaitTooLong,
    /// Too many callers were already waiting for a rate-limit permit.
    QueueFull,
    /// The rate limiter's shared store (Redis, say) could not decide, and
    /// fails closed (its source is a `tollgate_limit::rate::StoreError`).
    /// Nothing was sent.
    LimiterUnavailable,
    /// A batched endpoint's answer had no item with the id asked for.
    NotInBatch,
    /// No credential could be had: the token refresh failed or timed out
    /// (its source is a `tollgate_auth::AuthError`).
    Auth,
    /// A redirect was refused: to an origin the redirect policy does not
    /// allow, to a scheme other than `http`/`https` or a URL with user
    /// information, a loop, more hops than the policy's limit, or the
    /// policy's own refusal (see `RedirectPolicy`).
    Redirect,
    /// A proxy answered and refused: it asked for credentials or refused
    /// the ones it got ([`Error::status`] is then 407 for an HTTP proxy),
    /// refused the `CONNECT` tunnel (a 403, say) or the SOCKS5 request, or
    /// broke the handshake. Nothing reached the origin. A proxy that
    /// cannot be reached at all is [`ErrorKind::Connect`], like any
    /// connection that cannot be made; a bad proxy URL is
    /// [`ErrorKind::Builder`].
    Proxy,
}

impl ErrorKind {
    fn describe(self) -> &'static str {
        match self {
            ErrorKind::Builder => "invalid client configuration",
            ErrorKind::InvalidUrl => "invalid URL",
            ErrorKind::InvalidRequest => "invalid request",
            ErrorKind::Connect => "connection failed",
            ErrorKind::Timeout => "timed out",
            ErrorKind::Transport => "request failed",
            ErrorKind::Status => "error status",
            ErrorKind::Body => "reading the response body failed",
            ErrorKind::BodyTooLarge => "response body too large",
            ErrorKind::Decode => "decoding the response failed",
            ErrorKind::TooManyPending => "too many requests waiting",
            ErrorKind::PendingTimeout => "waited too long for a free slot",
            ErrorKind::RateLimited => "rate limited",
            ErrorKind::WaitTooLong => "the rate-limit wait would be too long",
            ErrorKind::QueueFull => "too many callers waiting for a rate-limit permit",
            ErrorKind::LimiterUnavailable => "the rate limiter's store could not decide",
            ErrorKind::Auth => "getting a credential failed",
            ErrorKind::NotInBatch => "the batched answer has no item with this id",
            ErrorKind::Redirect => "redirect refused",
            ErrorKind::Proxy => "the proxy refused",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

/// The error of every fallible facade call.
///
/// It has a [`kind`](Error::kind) to match on, the status where there is
/// one, the request it belongs to, and the underlying error as its
/// [`source`](std::error::Error::source). Its `Display` and `Debug` never show
/// a URL's query string (where API keys tend to live) nor header values.
///
/// ```
/// use tollgate::{Client, ErrorKind};
///
/// let err = Client::builder("ftp://example.com").build().unwrap_err();
/// assert_eq!(err.kind(), ErrorKind::Builder);
/// ```
pub struct Error {
    inner: Box<Inner>,
}

struct Inner {
    kind: ErrorKind,
    message: Cow<'static, str>,
    source: Option<BoxError>,
    status: Option<StatusCode>,
    method: Option<Method>,
    url: Option<Uri>,
    snippet: Option<String>,
    retry_after: Option<std::time::Duration>,
}

/// How much of a body a decode or status error keeps.
const SNIPPET_CHARS: usize = 200;

impl Error {
    pub(crate) fn new(kind: ErrorKind, message: impl Into<Cow<'static, str>>) -> Self {
        Error {
            inner: Box::new(Inner {
                kind,
                message: message.into(),
                source: None,
                status: None,
                method: None,
                url: None,
                snippet: None,
                retry_after: None,
            }),
        }
    }

    pub(crate) fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.inner.source = Some(source.into());
        self
    }

    pub(crate) fn with_request(mut self, method: &Method, url: &Uri) -> Self {
        self.inner.method = Some(method.clone());
        self.inner.url = Some(url.clone());
        self
    }

    pub(crate) fn with_status(mut self, status: StatusCode) -> Self {
        self.inner.status = Some(status);
        self
    }

    pub(crate) fn with_snippet(mut self, body: &[u8]) -> Self {
        let text = String::from_utf8_lossy(body);
        let mut snippet: String = text.chars().take(SNIPPET_CHARS).collect();
        if text.chars().nth(SNIPPET_CHARS).is_some() {
            snippet.push('…');
        }
        self.inner.snippet = Some(snippet);
        self
    }

    #[cfg_attr(not(any(feature = "retry", feature = "limit")), allow(dead_code))]
    pub(crate) fn with_retry_after(mut self, wait: std::time::Duration) -> Self {
        self.inner.retry_after = Some(wait);
        self
    }

    /// How long to wait before trying again: what the server asked when the
    /// retry layer did not wait because it was longer than its cap, or when
    /// the rate limiter (in reject mode) admits a request again.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        self.inner.retry_after
    }

    /// What went wrong.
    pub fn kind(&self) -> ErrorKind {
        self.inner.kind
    }

    /// The response status, for [`ErrorKind::Status`] and errors about a
    /// response's body.
    pub fn status(&self) -> Option<StatusCode> {
        self.inner.status
    }

    /// Whether the request or an attempt ran out of time.
    pub fn is_timeout(&self) -> bool {
        self.inner.kind == ErrorKind::Timeout
    }

    /// Whether no connection could be made.
    pub fn is_connect(&self) -> bool {
        self.inner.kind == ErrorKind::Connect
    }

    /// Whether the response had an error status.
    pub fn is_status(&self) -> bool {
        self.inner.kind == ErrorKind::Status
    }

    /// Whether the body was not the expected JSON.
    pub fn is_decode(&self) -> bool {
        self.inner.kind == ErrorKind::Decode
    }

    /// Whether a redirect was refused ([`ErrorKind::Redirect`]), as
    /// reqwest's `Error::is_redirect`.
    pub fn is_redirect(&self) -> bool {
        self.inner.kind == ErrorKind::Redirect
    }

    /// Whether reading the response body failed or the body was over the
    /// limit ([`ErrorKind::Body`], [`ErrorKind::BodyTooLarge`]), as reqwest's
    /// `Error::is_body`.
    pub fn is_body(&self) -> bool {
        matches!(self.inner.kind, ErrorKind::Body | ErrorKind::BodyTooLarge)
    }

    /// Whether sending the request failed: no connection, or the exchange
    /// broke off before a complete response ([`ErrorKind::Connect`],
    /// [`ErrorKind::Transport`]), as reqwest's `Error::is_request` (which is
    /// true for its connect errors too). A timeout is
    /// [`is_timeout`](Self::is_timeout) only.
    pub fn is_request(&self) -> bool {
        matches!(self.inner.kind, ErrorKind::Connect | ErrorKind::Transport)
    }

    /// Whether the client or the request could not be built: a bad client
    /// setting ([`ErrorKind::Builder`]), or a request refused before it was
    /// sent ([`ErrorKind::InvalidUrl`], [`ErrorKind::InvalidRequest`]), as
    /// reqwest's `Error::is_builder` (true there for an invalid URL or header
    /// given to a request builder too).
    pub fn is_builder(&self) -> bool {
        matches!(
            self.inner.kind,
            ErrorKind::Builder | ErrorKind::InvalidUrl | ErrorKind::InvalidRequest
        )
    }

    /// The method of the request this error belongs to, if it got that far.
    pub fn method(&self) -> Option<&Method> {
        self.inner.method.as_ref()
    }

    /// The URL of the request this error belongs to, if it got that far.
    /// Unlike the error's `Display`, this includes the query string.
    pub fn url(&self) -> Option<&Uri> {
        self.inner.url.as_ref()
    }

    /// The start of the response body (at most 200 characters), for decode
    /// and status errors: enough to see what the server said instead.
    pub fn body_snippet(&self) -> Option<&str> {
        self.inner.snippet.as_deref()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = &self.inner;
        f.write_str(i.kind.describe())?;
        if !i.message.is_empty() {
            write!(f, ": {}", i.message)?;
        }
        if let Some(status) = i.status {
            if i.kind == ErrorKind::Status {
                write!(f, " {status}")?;
            } else {
                write!(f, " (status {status})")?;
            }
        }
        if let (Some(method), Some(url)) = (&i.method, &i.url) {
            write!(f, " for {method} {}", display_without_query(url))?;
        }
        Ok(())
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = &self.inner;
        let mut d = f.debug_struct("Error");
        d.field("kind", &i.kind).field("message", &i.message);
        if let Some(status) = i.status {
            d.field("status", &status);
        }
        if let Some(method) = &i.method {
            d.field("method", method);
        }
        if let Some(url) = &i.url {
            d.field("url", &display_without_query(url).to_string());
        }
        if let Some(source) = &i.source {
            d.field("source", source);
        }
        if let Some(snippet) = &i.snippet {
            d.field("body_snippet", snippet);
        }
        d.finish()
    }
}

impl StdError for Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.inner
            .source
            .as_deref()
            .map(|e| e as &(dyn StdError + 'static))
    }
}

/// The error the facade's timeout produces, kept as the source of
/// [`ErrorKind::Timeout`] errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimedOut;

impl fmt::Display for TimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the request's deadline passed")
    }
}

impl StdError for TimedOut {}

/// Sorts an error from the service stack into a kind by walking its chain
/// (with `tollgate_core::chain`, which also enters a shared error and the
/// error an `io::Error` wraps). Layers' own error types are recognised
/// first; a transport failure is read by
/// [`tollgate_core::TransportFailure`], the same reading the retry layer
/// makes, and mapped by [`transport_kind`].
pub(crate) fn classify(err: BoxError) -> Error {
    let mut kind = None;
    #[allow(unused_mut, reason = "the limit feature sets it")]
    let mut retry_after = None;
    let mut status = None;
    let mut proxy_message = None;
    for e in tollgate_core::chain(&*err) {
        // A body read inside an attempt (with retry on).
        if let Some(failed) = e.downcast_ref::<crate::buffer::BodyFailed>() {
            kind = Some(ErrorKind::Body);
            status = Some(failed.status);
            break;
        }
        if e.is::<crate::buffer::BodyTooLarge>() || e.is::<tollgate_core::BodyTooLarge>() {
            kind = Some(ErrorKind::BodyTooLarge);
            break;
        }
        if e.is::<TimedOut>() {
            kind = Some(ErrorKind::Timeout);
            break;
        }
        // A streamed request body that failed.
        if e.is::<crate::stream::UploadFailed>() {
            kind = Some(ErrorKind::Body);
            break;
        }
        #[cfg(feature = "limit")]
        if e.is::<tollgate_limit::PoolQueueFull>() {
            kind = Some(ErrorKind::TooManyPending);
            break;
        }
        #[cfg(feature = "limit")]
        if e.is::<tollgate_limit::PoolQueueTimeout>() {
            kind = Some(ErrorKind::PendingTimeout);
            break;
        }
        #[cfg(feature = "limit")]
        if let Some(limited) = e.downcast_ref::<tollgate_limit::RateLimited>() {
            kind = Some(ErrorKind::RateLimited);
            retry_after = Some(limited.retry_after);
            break;
        }
        #[cfg(feature = "limit")]
        if e.is::<tollgate_limit::WaitTooLong>() {
            kind = Some(ErrorKind::WaitTooLong);
            break;
        }
        #[cfg(feature = "limit")]
        if e.is::<tollgate_limit::QueueFull>() {
            kind = Some(ErrorKind::QueueFull);
            break;
        }
        #[cfg(feature = "limit")]
        if e.is::<tollgate_limit::rate::StoreError>() {
            kind = Some(ErrorKind::LimiterUnavailable);
            break;
        }
        #[cfg(feature = "redirect")]
        if e.is::<crate::redirect::RedirectError>() {
            kind = Some(ErrorKind::Redirect);
            break;
        }
        #[cfg(feature = "auth")]
        if e.is::<tollgate_auth::AuthError>() {
            kind = Some(ErrorKind::Auth);
            break;
        }
        // A proxy's refusal, or a proxy that could not be reached (the
        // message then names the proxy, without credentials).
        if let Some(proxy) = e.downcast_ref::<crate::proxy::ProxyError>() {
            kind = Some(proxy.kind());
            status = proxy.status();
            proxy_message = Some(proxy.to_string());
            break;
        }
    }
    let kind =
        kind.unwrap_or_else(|| transport_kind(tollgate_core::TransportFailure::classify(&*err)));
    #[allow(unused_mut, reason = "the retry feature adds to it")]
    let mut message = innermost_message(&*err);
    if let Some(proxy) = proxy_message {
        message = if proxy.ends_with(&message) {
            proxy
        } else {
            format!("{proxy}: {message}")
        };
    }
    #[cfg(feature = "retry")]
    if let Some(retry) = find::<tollgate_retry::RetryError>(&*err) {
        message = format!("{message} (after {} attempts)", retry.record.attempts);
    }
    let mut error = Error::new(kind, message).with_source(err);
    if let Some(wait) = retry_after {
        error = error.with_retry_after(wait);
    }
    if let Some(status) = status {
        error = error.with_status(status);
    }
    error
}

/// The facade's kind for a transport failure: no connection (refused, DNS,
/// a connect timeout, TLS) is `Connect`; a timeout after connecting is
/// `Timeout`; a body cut after the head is `Body`; a connection lost before
/// the response, or anything else, is `Transport`.
pub(crate) fn transport_kind(failure: Option<tollgate_core::TransportFailure>) -> ErrorKind {
    use tollgate_core::TransportFailure as F;
    match failure {
        Some(F::Connect | F::ConnectTimeout | F::Tls | F::Refused) => ErrorKind::Connect,
        Some(F::Timeout) => ErrorKind::Timeout,
        Some(F::ResetMidBody) => ErrorKind::Body,
        _ => ErrorKind::Transport,
    }
}

/// The error of a response body that failed while being read: a
/// [`ErrorKind::Timeout`] when the read timeout (or another timeout) ended
/// it, [`ErrorKind::Body`] otherwise.
pub(crate) fn body_error(err: BoxError) -> Error {
    if has_timeout(&*err) {
        let message = innermost_message(&*err);
        return Error::new(ErrorKind::Timeout, message).with_source(err);
    }
    Error::new(ErrorKind::Body, err.to_string()).with_source(err)
}

/// Whether a timeout is anywhere in an error chain (the chain an
/// `io::Error` or a shared error wraps included).
pub(crate) fn has_timeout(err: &(dyn StdError + 'static)) -> bool {
    tollgate_core::chain(err).any(|e| {
        e.is::<TimedOut>()
            || e.is::<tower::timeout::error::Elapsed>()
            || e.is::<tokio::time::error::Elapsed>()
            || e.downcast_ref::<hyper::Error>()
                .is_some_and(hyper::Error::is_timeout)
            || e.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
    })
}

/// The first error of type `T` in a chain.
#[cfg(feature = "retry")]
fn find<'a, T: StdError + 'static>(err: &'a (dyn StdError + 'static)) -> Option<&'a T> {
    // Bounded, as `tollgate_core::chain` is: a cyclic chain must end.
    let mut cur = Some(err);
    for _ in 0..MAX_CHAIN {
        let e = cur?;
        if let Some(found) = e.downcast_ref::<T>() {
            return Some(found);
        }
        cur = e.source();
    }
    None
}

/// The most links of an error chain the facade walks (a cyclic chain, a
/// user's error type's bug, must not hang a call).
const MAX_CHAIN: usize = 64;

/// The most specific message in an error chain ("connection refused" rather
/// than "client error (Connect)").
fn innermost_message(err: &(dyn StdError + 'static)) -> String {
    let mut last = err;
    for _ in 0..MAX_CHAIN {
        match last.source() {
            Some(next) => last = next,
            None => break,
        }
    }
    last.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_hides_the_query_string() {
        let url: Uri = "http://h/p?api_key=SECRET".parse().expect("uri");
        let e = Error::new(ErrorKind::Connect, "refused").with_request(&Method::GET, &url);
        assert_eq!(
            e.to_string(),
            "connection failed: refused for GET http://h/p"
        );
        assert!(!format!("{e:?}").contains("SECRET"));
        assert_eq!(e.url().and_then(Uri::query), Some("api_key=SECRET"));
    }

    #[test]
    fn snippet_is_bounded() {
        let e = Error::new(ErrorKind::Decode, "x").with_snippet("é".repeat(500).as_bytes());
        let s = e.body_snippet().expect("snippet");
        assert_eq!(s.chars().count(), SNIPPET_CHARS + 1);
    }

    #[test]
    fn timeouts_are_found_anywhere_in_the_chain() {
        let wrapped: BoxError = Box::new(std::io::Error::other(TimedOut));
        assert_eq!(classify(wrapped).kind(), ErrorKind::Timeout);
        let other: BoxError = "boom".into();
        assert_eq!(classify(other).kind(), ErrorKind::Transport);
    }
}
