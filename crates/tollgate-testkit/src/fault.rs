//! Faults a test scripts onto a [`FakeApi`](crate::FakeApi) route.

use std::time::Duration;

use http::{HeaderName, HeaderValue, StatusCode};

/// What the fake API does instead of (or before) answering normally.
///
/// A fault is attached to a route pattern with
/// [`FakeApi::inject`](crate::FakeApi::inject). By default it applies to every
/// matching request until [`FakeApi::clear_faults`](crate::FakeApi::clear_faults);
/// [`Fault::times`] limits it to the next `n` matching requests. Faults on one
/// route are used in the order they were injected: once the first is used up,
/// the next applies.
///
/// ```
/// use std::time::Duration;
/// use http::StatusCode;
/// use tollgate_testkit::Fault;
///
/// // The next two requests get 503 with `Retry-After: 1`.
/// let flaky = Fault::status(StatusCode::SERVICE_UNAVAILABLE).times(2).retry_after("1");
/// // Every request waits 200 ms, then is answered normally.
/// let slow = Fault::latency(Duration::from_millis(200));
/// // The next request's connection is closed without a response.
/// let reset = Fault::drop_connection().times(1);
/// // The next request gets its headers and half its body, then the
/// // connection closes.
/// let cut = Fault::cut_body().times(1);
/// // Every response sends half its body, then nothing more.
/// let stalled = Fault::stall_body();
/// # let _ = (flaky, slow, reset, cut, stalled);
/// ```
#[derive(Clone, Debug)]
pub struct Fault {
    pub(crate) kind: FaultKind,
    pub(crate) remaining: Option<u64>,
    pub(crate) delay: Duration,
    pub(crate) headers: Vec<(HeaderName, HeaderValue)>,
}

#[derive(Clone, Debug)]
pub(crate) enum FaultKind {
    /// Answer with this status and a small JSON error body.
    Status(StatusCode),
    /// Wait `delay`, then answer normally.
    Latency,
    /// Close the connection without answering.
    Drop,
    /// Answer 200 with a body that is not valid JSON.
    MalformedJson,
    /// Answer normally, but send only the first half of the body, then
    /// stall (`Stall`) or close the connection (`Cut`).
    PartialBody(BodyEnd),
    /// Answer normally, sending the body a few bytes at a time with this
    /// pause before each piece.
    Trickle(Duration),
}

/// How a [`FaultKind::PartialBody`] ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BodyEnd {
    /// Send nothing more; keep the connection open.
    Stall,
    /// Close the connection.
    Cut,
}

impl Fault {
    fn new(kind: FaultKind) -> Self {
        Self {
            kind,
            remaining: None,
            delay: Duration::ZERO,
            headers: Vec::new(),
        }
    }

    /// Answer with `status` and a JSON body `{"error": "<reason>"}`.
    pub fn status(status: StatusCode) -> Self {
        Self::new(FaultKind::Status(status))
    }

    /// Wait `delay`, then answer as the route normally does.
    ///
    /// A long delay (say an hour) makes an upstream that hangs.
    pub fn latency(delay: Duration) -> Self {
        Self::new(FaultKind::Latency).delay(delay)
    }

    /// Close the connection without sending a response (the client sees the
    /// connection closed before a message completed).
    pub fn drop_connection() -> Self {
        Self::new(FaultKind::Drop)
    }

    /// Answer `200 OK` with `Content-Type: application/json` and a truncated,
    /// unparsable JSON body.
    pub fn malformed_json() -> Self {
        Self::new(FaultKind::MalformedJson)
    }

    /// Answer as the route normally does (status, headers and the body's
    /// full `Content-Length`), but send only the first half of the body,
    /// then nothing more, keeping the connection open: a body that stalls
    /// after the headers. The client waits until its own timeouts end it.
    pub fn stall_body() -> Self {
        Self::new(FaultKind::PartialBody(BodyEnd::Stall))
    }

    /// Answer as the route normally does (status, headers and the body's
    /// full `Content-Length`), but send only the first half of the body,
    /// then close the connection: a body cut after the headers. The client
    /// sees the body end early (an error reading it), not a missing
    /// response.
    pub fn cut_body() -> Self {
        Self::new(FaultKind::PartialBody(BodyEnd::Cut))
    }

    /// Answer as the route normally does, but send the body 8 bytes at a
    /// time, waiting `every` before each piece: a body that trickles.
    pub fn trickle_body(every: Duration) -> Self {
        Self::new(FaultKind::Trickle(every))
    }

    /// Apply only to the next `n` matching requests.
    pub fn times(mut self, n: u64) -> Self {
        self.remaining = Some(n);
        self
    }

    /// Wait this long before the fault takes effect.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// Add a `Retry-After` header with this value (delay-seconds or an
    /// HTTP-date; it is sent as given, so invalid values can be tested too).
    ///
    /// # Panics
    ///
    /// If `value` is not a valid header value (a programming error in a test).
    pub fn retry_after(self, value: &str) -> Self {
        self.header("retry-after", value)
    }

    /// Add a header to the fault's response.
    ///
    /// # Panics
    ///
    /// If the name or the value is invalid (a programming error in a test).
    pub fn header(mut self, name: &str, value: &str) -> Self {
        let name = HeaderName::try_from(name).expect("Fault::header: invalid header name");
        let value = HeaderValue::try_from(value).expect("Fault::header: invalid header value");
        self.headers.push((name, value));
        self
    }

    /// Takes one use of the fault; false when it is used up.
    pub(crate) fn take(&mut self) -> bool {
        match &mut self.remaining {
            None => true,
            Some(0) => false,
            Some(n) => {
                *n -= 1;
                true
            }
        }
    }
}

/// Does a route pattern match a request path?
///
/// `"*"` matches every path, `"/posts/*"` matches `/posts` and every path
/// below it, and anything else matches exactly.
pub(crate) fn route_matches(pattern: &str, path: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    match pattern.strip_suffix("/*") {
        Some(prefix) => {
            path == prefix
                || path
                    .strip_prefix(prefix)
                    .is_some_and(|rest| rest.starts_with('/'))
        }
        None => pattern == path,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_exactly_by_prefix_or_everything() {
        assert!(route_matches("*", "/anything"));
        assert!(route_matches("/posts/1", "/posts/1"));
        assert!(!route_matches("/posts/1", "/posts/10"));
        assert!(route_matches("/posts/*", "/posts"));
        assert!(route_matches("/posts/*", "/posts/7/comments"));
        assert!(!route_matches("/posts/*", "/postsecret"));
    }

    #[test]
    fn times_counts_down_and_unbounded_never_ends() {
        let mut f = Fault::drop_connection().times(2);
        assert!(f.take() && f.take());
        assert!(!f.take());
        let mut forever = Fault::malformed_json();
        assert!((0..1000).all(|_| forever.take()));
    }
}
