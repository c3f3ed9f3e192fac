//! One reading of transport failures: [`TransportFailure`].

use std::error::Error as StdError;
use std::fmt;
use std::io;

use crate::{chain, ReadBodyError};

/// How a request failed on its way to the server or back, read from an
/// error's chain.
///
/// The retry layer asks it whether a request was never sent (safe to retry
/// whatever its method); the `tollgate` facade turns it into its
/// `ErrorKind`. Both read an error the same way because both call
/// [`classify`](TransportFailure::classify).
///
/// | kind | the request | retry | the facade's `ErrorKind` |
/// |------|-------------|-------|--------------------------|
/// | [`Connect`](Self::Connect) | never sent | any method | `Connect` |
/// | [`ConnectTimeout`](Self::ConnectTimeout) | never sent | any method | `Connect` |
/// | [`Tls`](Self::Tls) | never sent | never (a retry would not fix it) | `Connect` |
/// | [`Refused`](Self::Refused) | never sent | never (a retry would not fix it) | `Connect` (`Proxy` for a proxy's refusal) |
/// | [`ResetBeforeResponse`](Self::ResetBeforeResponse) | maybe processed | idempotent methods | `Transport` |
/// | [`ResetMidBody`](Self::ResetMidBody) | processed | idempotent methods | `Body` |
/// | [`Timeout`](Self::Timeout) | maybe processed | idempotent methods | `Timeout` |
///
/// ```
/// use std::io;
/// use tollgate_core::{SharedError, TransportFailure};
///
/// let refused = io::Error::from(io::ErrorKind::ConnectionRefused);
/// assert_eq!(TransportFailure::classify(&refused), Some(TransportFailure::Connect));
/// // Shared by the callers of a coalesced request: read the same.
/// let shared = SharedError::new(io::Error::from(io::ErrorKind::ConnectionReset).into());
/// let kind = TransportFailure::classify(&shared).unwrap();
/// assert_eq!(kind, TransportFailure::ResetBeforeResponse);
/// assert!(!kind.request_not_sent());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TransportFailure {
    /// No connection could be made: refused, host or network unreachable,
    /// the name did not resolve. The request was never sent.
    Connect,
    /// No connection within the connect timeout (DNS, TCP and the TLS
    /// handshake). The request was never sent.
    ConnectTimeout,
    /// The TLS handshake failed (a certificate refused, no common
    /// protocol). The request was never sent, and a retry would not help.
    Tls,
    /// The connection was refused by policy, not by chance: a proxy that
    /// asked for credentials or refused the ones it got (407), or refused
    /// the tunnel; an `io::Error` of kind `PermissionDenied` inside a
    /// connect error. The request was never sent, and a retry would not
    /// help (a proxy that locks accounts after failed logins must not see
    /// each call fail several times).
    Refused,
    /// The connection was closed or reset before a complete response head
    /// arrived: the server may have processed the request.
    ResetBeforeResponse,
    /// The connection was closed or reset while the response body was read
    /// (a [`ReadBodyError`] is in the chain): the server processed the
    /// request.
    ResetMidBody,
    /// An attempt, or a wait for the response's data, ran out of time after
    /// the connection was made: the server may have processed the request.
    Timeout,
}

impl TransportFailure {
    /// Reads `error`'s chain (with [`chain`]: through [`SharedError`],
    /// `io::Error`, hyper's and hyper-util's errors) and says how the
    /// request failed; `None` for anything that is not a transport failure
    /// (a layer's own refusal, a body over its limit, a protocol error).
    ///
    /// The outermost recognisable error decides: a hyper-util connect error
    /// is a connect failure (a timeout inside it is a connect timeout, an
    /// `InvalidData` I/O error inside it a TLS failure) whatever it wraps.
    /// Recognising hyper-util's client error needs this crate's `hyper-util`
    /// feature (the retry layer and the facade turn it on); without it, the
    /// I/O errors inside are read.
    ///
    /// [`SharedError`]: crate::SharedError
    pub fn classify(error: &(dyn StdError + 'static)) -> Option<TransportFailure> {
        // A body read anywhere in the chain says when the failure came: a
        // body over its limit is no transport failure, a read that failed
        // came after the response head.
        let mut in_body = false;
        for e in chain(error) {
            match e.downcast_ref::<ReadBodyError>() {
                Some(ReadBodyError::TooLarge(_)) => return None,
                Some(ReadBodyError::Body(_)) => in_body = true,
                None => {}
            }
        }
        let reset = if in_body {
            TransportFailure::ResetMidBody
        } else {
            TransportFailure::ResetBeforeResponse
        };
        for e in chain(error) {
            if e.is::<tokio::time::error::Elapsed>() || is_tower_elapsed(e) {
                return Some(TransportFailure::Timeout);
            }
            #[cfg(feature = "hyper-util")]
            if e.downcast_ref::<hyper_util::client::legacy::Error>()
                .is_some_and(hyper_util::client::legacy::Error::is_connect)
            {
                return Some(if in_body { reset } else { connect_failure(e) });
            }
            if let Some(h) = e.downcast_ref::<hyper::Error>() {
                if h.is_timeout() {
                    return Some(TransportFailure::Timeout);
                }
                if h.is_incomplete_message() || h.is_closed() || h.is_canceled() {
                    return Some(reset);
                }
            }
            if let Some(io) = e.downcast_ref::<io::Error>() {
                use io::ErrorKind as K;
                match io.kind() {
                    K::ConnectionRefused
                    | K::AddrNotAvailable
                    | K::HostUnreachable
                    | K::NetworkUnreachable => {
                        // Never "never sent" once a response was being read.
                        return Some(if in_body {
                            reset
                        } else {
                            TransportFailure::Connect
                        });
                    }
                    K::ConnectionReset
                    | K::ConnectionAborted
                    | K::BrokenPipe
                    | K::UnexpectedEof => return Some(reset),
                    K::TimedOut => return Some(TransportFailure::Timeout),
                    _ => {}
                }
            }
        }
        None
    }

    /// Whether the request was certainly never sent (no connection was
    /// made): a retry cannot repeat it, whatever its method.
    pub fn request_not_sent(self) -> bool {
        matches!(
            self,
            TransportFailure::Connect
                | TransportFailure::ConnectTimeout
                | TransportFailure::Tls
                | TransportFailure::Refused
        )
    }

    /// Whether trying again may succeed: every kind but
    /// [`Tls`](Self::Tls) and [`Refused`](Self::Refused).
    pub fn is_transient(self) -> bool {
        !matches!(self, TransportFailure::Tls | TransportFailure::Refused)
    }

    /// Whether time ran out ([`ConnectTimeout`](Self::ConnectTimeout) or
    /// [`Timeout`](Self::Timeout)).
    pub fn is_timeout(self) -> bool {
        matches!(
            self,
            TransportFailure::ConnectTimeout | TransportFailure::Timeout
        )
    }

    /// A short lowercase name (`"connect"`, `"reset before response"`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            TransportFailure::Connect => "connect",
            TransportFailure::ConnectTimeout => "connect timeout",
            TransportFailure::Tls => "tls",
            TransportFailure::Refused => "refused",
            TransportFailure::ResetBeforeResponse => "reset before response",
            TransportFailure::ResetMidBody => "reset mid-body",
            TransportFailure::Timeout => "timeout",
        }
    }
}

impl fmt::Display for TransportFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

fn is_tower_elapsed(e: &(dyn StdError + 'static)) -> bool {
    e.is::<tower::timeout::error::Elapsed>()
}

/// Inside a connect error: a timeout, a TLS failure, or neither.
#[cfg(feature = "hyper-util")]
fn connect_failure(error: &(dyn StdError + 'static)) -> TransportFailure {
    for e in chain(error) {
        if e.is::<tokio::time::error::Elapsed>() || is_tower_elapsed(e) {
            return TransportFailure::ConnectTimeout;
        }
        if let Some(io) = e.downcast_ref::<io::Error>() {
            match io.kind() {
                io::ErrorKind::TimedOut => return TransportFailure::ConnectTimeout,
                // rustls (through hyper-rustls and tokio-rustls) reports a
                // refused certificate or a failed handshake as InvalidData.
                io::ErrorKind::InvalidData => return TransportFailure::Tls,
                // A proxy's refusal (the facade's proxy connector says so).
                io::ErrorKind::PermissionDenied => return TransportFailure::Refused,
                _ => {}
            }
        }
    }
    TransportFailure::Connect
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SharedError;

    fn io(kind: io::ErrorKind) -> io::Error {
        io::Error::new(kind, "x")
    }

    #[test]
    fn io_kinds_are_read() {
        use io::ErrorKind as K;
        for (kind, want) in [
            (K::ConnectionRefused, Some(TransportFailure::Connect)),
            (K::HostUnreachable, Some(TransportFailure::Connect)),
            (K::NetworkUnreachable, Some(TransportFailure::Connect)),
            (K::AddrNotAvailable, Some(TransportFailure::Connect)),
            (
                K::ConnectionReset,
                Some(TransportFailure::ResetBeforeResponse),
            ),
            (K::BrokenPipe, Some(TransportFailure::ResetBeforeResponse)),
            (
                K::UnexpectedEof,
                Some(TransportFailure::ResetBeforeResponse),
            ),
            (K::TimedOut, Some(TransportFailure::Timeout)),
            (K::InvalidData, None),
            (K::PermissionDenied, None),
        ] {
            assert_eq!(TransportFailure::classify(&io(kind)), want, "{kind:?}");
        }
    }

    #[test]
    fn timeouts_are_found_through_io_and_shared_errors() {
        let wrapped = io::Error::other(tower::timeout::error::Elapsed::new());
        assert_eq!(
            TransportFailure::classify(&wrapped),
            Some(TransportFailure::Timeout)
        );
        let shared = SharedError::new(wrapped.into());
        assert_eq!(
            TransportFailure::classify(&shared),
            Some(TransportFailure::Timeout)
        );
    }

    #[test]
    fn a_reset_while_reading_the_body_is_mid_body() {
        let cut = ReadBodyError::Body(Box::new(io(io::ErrorKind::ConnectionReset)));
        assert_eq!(
            TransportFailure::classify(&cut),
            Some(TransportFailure::ResetMidBody)
        );
        let stalled = ReadBodyError::Body(Box::new(io(io::ErrorKind::TimedOut)));
        assert_eq!(
            TransportFailure::classify(&stalled),
            Some(TransportFailure::Timeout)
        );
        // Wherever the read error is in the chain.
        let wrapped = io::Error::new(
            io::ErrorKind::UnexpectedEof,
            ReadBodyError::Body(Box::new(io(io::ErrorKind::ConnectionReset))),
        );
        assert_eq!(
            TransportFailure::classify(&wrapped),
            Some(TransportFailure::ResetMidBody)
        );
        let large = ReadBodyError::TooLarge(crate::BodyTooLarge { limit: 1 });
        assert_eq!(TransportFailure::classify(&large), None);
    }

    #[test]
    fn what_was_sent_decides_the_questions() {
        assert!(TransportFailure::Connect.request_not_sent());
        assert!(TransportFailure::Tls.request_not_sent());
        assert!(!TransportFailure::Tls.is_transient());
        assert!(TransportFailure::Refused.request_not_sent());
        assert!(!TransportFailure::Refused.is_transient());
        assert!(!TransportFailure::ResetBeforeResponse.request_not_sent());
        assert!(TransportFailure::ConnectTimeout.is_timeout());
        let other: tower::BoxError = "boom".into();
        assert_eq!(TransportFailure::classify(&*other), None);
    }
}
