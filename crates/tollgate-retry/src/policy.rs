//! What is retried: methods, statuses and errors. Knows nothing of tower.

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;

use http::{Method, StatusCode};

/// Why an attempt was retried (or would have been).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RetryReason {
    /// The response had a retryable status.
    Status(StatusCode),
    /// No connection could be made: the request was never sent.
    Connect,
    /// The connection was reset or closed before a response arrived, or
    /// (in the facade, which reads each attempt's body below retry) while
    /// its body was read.
    Reset,
    /// The attempt timed out: before its response headers arrived, or (in
    /// the facade, which reads each attempt's body below retry) while its
    /// body was read.
    Timeout,
    /// The custom predicate asked for a retry.
    Custom,
}

impl fmt::Display for RetryReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RetryReason::Status(s) => write!(f, "status {}", s.as_u16()),
            RetryReason::Connect => f.write_str("connect error"),
            RetryReason::Reset => f.write_str("connection reset before a response"),
            RetryReason::Timeout => f.write_str("attempt timed out"),
            RetryReason::Custom => f.write_str("custom predicate"),
        }
    }
}

/// What an attempt produced, as the custom predicate sees it.
#[derive(Debug)]
pub enum Outcome<'a> {
    /// A response arrived with this status.
    Status(StatusCode),
    /// The attempt failed with this error.
    Error(&'a (dyn StdError + Send + Sync + 'static)),
}

/// A custom retry decision: `Some(true)` retry, `Some(false)` do not,
/// `None` leave it to the built-in rules.
pub type Predicate = Arc<dyn Fn(&Method, Outcome<'_>) -> Option<bool> + Send + Sync>;

/// Which attempts are retried.
#[derive(Clone)]
pub(crate) struct Classifier {
    pub(crate) statuses: Vec<StatusCode>,
    pub(crate) methods: Vec<Method>,
    pub(crate) errors: bool,
    pub(crate) predicate: Option<Predicate>,
}

impl fmt::Debug for Classifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Classifier")
            .field("statuses", &self.statuses)
            .field("methods", &self.methods)
            .field("errors", &self.errors)
            .field("predicate", &self.predicate.as_ref().map(|_| "custom"))
            .finish()
    }
}

/// The idempotent methods of RFC 9110 §9.2.2, retried by default.
pub const IDEMPOTENT_METHODS: [Method; 6] = [
    Method::GET,
    Method::HEAD,
    Method::OPTIONS,
    Method::TRACE,
    Method::PUT,
    Method::DELETE,
];

/// The statuses retried by default: 408, 429, 500, 502, 503, 504.
pub const RETRYABLE_STATUSES: [StatusCode; 6] = [
    StatusCode::REQUEST_TIMEOUT,
    StatusCode::TOO_MANY_REQUESTS,
    StatusCode::INTERNAL_SERVER_ERROR,
    StatusCode::BAD_GATEWAY,
    StatusCode::SERVICE_UNAVAILABLE,
    StatusCode::GATEWAY_TIMEOUT,
];

impl Default for Classifier {
    fn default() -> Self {
        Classifier {
            statuses: RETRYABLE_STATUSES.to_vec(),
            methods: IDEMPOTENT_METHODS.to_vec(),
            errors: true,
            predicate: None,
        }
    }
}

impl Classifier {
    /// May a request with this method be retried at all? (A connect error is
    /// retryable whatever the method: nothing was sent.)
    pub(crate) fn method_allowed(&self, method: &Method) -> bool {
        self.methods.contains(method)
    }

    pub(crate) fn classify_status(
        &self,
        method: &Method,
        status: StatusCode,
    ) -> Option<RetryReason> {
        if let Some(p) = &self.predicate {
            match p(method, Outcome::Status(status)) {
                Some(true) => return Some(RetryReason::Custom),
                Some(false) => return None,
                None => {}
            }
        }
        (self.method_allowed(method) && self.statuses.contains(&status))
            .then_some(RetryReason::Status(status))
    }

    pub(crate) fn classify_error(
        &self,
        method: &Method,
        error: &(dyn StdError + Send + Sync + 'static),
    ) -> Option<RetryReason> {
        if let Some(p) = &self.predicate {
            match p(method, Outcome::Error(error)) {
                Some(true) => return Some(RetryReason::Custom),
                Some(false) => return None,
                None => {}
            }
        }
        if !self.errors {
            return None;
        }
        let kind = error_kind(error)?;
        (kind == RetryReason::Connect || self.method_allowed(method)).then_some(kind)
    }
}

/// Sorts a transport error into connect, reset or timeout by walking its
/// source chain; `None` for anything else (TLS failures, invalid requests,
/// protocol errors, a body over its limit), which a retry would not fix.
///
/// It reads the error with [`tollgate_core::TransportFailure::classify`],
/// the same reading the `tollgate` facade turns into its `ErrorKind`: a
/// request that was never sent (no connection, a connect timeout) is
/// [`RetryReason::Connect`] and is retried whatever its method; a reset
/// before the response or during its body is [`RetryReason::Reset`], a
/// timeout [`RetryReason::Timeout`], both retried for retryable methods only.
pub fn error_kind(error: &(dyn StdError + 'static)) -> Option<RetryReason> {
    use tollgate_core::TransportFailure as F;
    let failure = F::classify(error)?;
    if !failure.is_transient() {
        return None;
    }
    Some(if failure.request_not_sent() {
        RetryReason::Connect
    } else if failure.is_timeout() {
        RetryReason::Timeout
    } else {
        RetryReason::Reset
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io(kind: std::io::ErrorKind) -> std::io::Error {
        std::io::Error::new(kind, "x")
    }

    #[test]
    fn default_statuses_and_methods() {
        let c = Classifier::default();
        for s in [408, 429, 500, 502, 503, 504] {
            let s = StatusCode::from_u16(s).expect("status");
            assert_eq!(
                c.classify_status(&Method::GET, s),
                Some(RetryReason::Status(s))
            );
            assert_eq!(
                c.classify_status(&Method::POST, s),
                None,
                "POST is not idempotent"
            );
        }
        for s in [400, 401, 403, 404, 409, 501, 505] {
            let s = StatusCode::from_u16(s).expect("status");
            assert_eq!(c.classify_status(&Method::GET, s), None, "{s}");
        }
        assert!(IDEMPOTENT_METHODS.iter().all(|m| c.method_allowed(m)));
        assert!(!c.method_allowed(&Method::PATCH));
    }

    #[test]
    fn errors_are_sorted_by_kind() {
        let c = Classifier::default();
        let reset = io(std::io::ErrorKind::ConnectionReset);
        assert_eq!(
            c.classify_error(&Method::GET, &reset),
            Some(RetryReason::Reset)
        );
        assert_eq!(
            c.classify_error(&Method::POST, &reset),
            None,
            "a POST may have been processed"
        );
        let refused = io(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(
            c.classify_error(&Method::POST, &refused),
            Some(RetryReason::Connect),
            "nothing was sent"
        );
        let elapsed = tower::timeout::error::Elapsed::new();
        assert_eq!(
            c.classify_error(&Method::GET, &elapsed),
            Some(RetryReason::Timeout)
        );
        let wrapped = std::io::Error::other(tower::timeout::error::Elapsed::new());
        assert_eq!(
            c.classify_error(&Method::GET, &wrapped),
            Some(RetryReason::Timeout)
        );
        let other = io(std::io::ErrorKind::InvalidData);
        assert_eq!(c.classify_error(&Method::GET, &other), None);
    }

    #[test]
    fn an_unreachable_host_is_a_request_never_sent() {
        let c = Classifier::default();
        for kind in [
            std::io::ErrorKind::HostUnreachable,
            std::io::ErrorKind::NetworkUnreachable,
            std::io::ErrorKind::AddrNotAvailable,
        ] {
            assert_eq!(
                c.classify_error(&Method::POST, &io(kind)),
                Some(RetryReason::Connect),
                "{kind:?}: nothing was sent"
            );
        }
    }

    #[test]
    fn the_predicate_decides_first() {
        let c = Classifier {
            predicate: Some(Arc::new(|m: &Method, o: Outcome<'_>| match o {
                Outcome::Status(s) if s == StatusCode::CONFLICT => Some(true),
                Outcome::Status(_) if m == Method::DELETE => Some(false),
                _ => None,
            })),
            ..Classifier::default()
        };
        assert_eq!(
            c.classify_status(&Method::POST, StatusCode::CONFLICT),
            Some(RetryReason::Custom)
        );
        assert_eq!(
            c.classify_status(&Method::DELETE, StatusCode::BAD_GATEWAY),
            None
        );
        assert!(c
            .classify_status(&Method::GET, StatusCode::BAD_GATEWAY)
            .is_some());
    }
}
