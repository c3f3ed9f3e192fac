//! Adversary 4: `TransportFailure::classify`, the one reading of "was it
//! sent?". A failure reading the response body means the request was sent
//! and answered: it must never read as "never sent" (which retry takes as
//! safe to repeat for a POST), whatever error the body reports.

use std::io;

use tollgate_core::{ReadBodyError, SharedError, TransportFailure};

/// A response body whose read fails with an I/O error of a connect kind
/// (a proxied or decompressed body, a body streamed from another source,
/// reports what its own source said): the response head had arrived, so
/// the request was sent. `classify` notes it is in the body, then lets the
/// inner `ConnectionRefused` decide: `Connect`, "never sent", retryable
/// for any method.
#[test]

fn a_failure_reading_the_response_body_is_never_read_as_never_sent() {
    for kind in [
        io::ErrorKind::ConnectionRefused,
        io::ErrorKind::HostUnreachable,
        io::ErrorKind::NetworkUnreachable,
        io::ErrorKind::AddrNotAvailable,
    ] {
        let err = ReadBodyError::Body(Box::new(io::Error::new(kind, "upstream of the body")));
        let failure = TransportFailure::classify(&err);
        assert!(
            !failure.is_some_and(TransportFailure::request_not_sent),
            "{kind:?} in a body read read as {failure:?}"
        );
    }
}

/// The plain cases hold: refused is never sent; a reset before the
/// response and a reset in the body are not; a body over its limit is no
/// transport failure; a shared error reads as what it wraps.
#[test]
fn the_plain_cases_read_as_documented() {
    let refused = io::Error::from(io::ErrorKind::ConnectionRefused);
    assert_eq!(
        TransportFailure::classify(&refused),
        Some(TransportFailure::Connect)
    );
    let reset = io::Error::from(io::ErrorKind::ConnectionReset);
    let before = TransportFailure::classify(&reset).expect("reset");
    assert!(!before.request_not_sent());
    let mid = ReadBodyError::Body(Box::new(io::Error::from(io::ErrorKind::ConnectionReset)));
    assert_eq!(
        TransportFailure::classify(&mid),
        Some(TransportFailure::ResetMidBody)
    );
    let too_large = ReadBodyError::TooLarge(tollgate_core::BodyTooLarge { limit: 1 });
    assert_eq!(TransportFailure::classify(&too_large), None);
    let shared = SharedError::new(Box::new(ReadBodyError::Body(Box::new(io::Error::from(
        io::ErrorKind::UnexpectedEof,
    )))));
    assert_eq!(
        TransportFailure::classify(&shared),
        Some(TransportFailure::ResetMidBody)
    );
}

/// `SharedError` is transparent: a report that walks `source()` prints
/// each error of the chain once, and `chain` (for typed lookups) still
/// finds the shared error's inner type.
#[test]
fn a_shared_error_report_prints_each_error_once() {
    let inner = ReadBodyError::Body(Box::new(io::Error::other("root")));
    let shared = SharedError::new(Box::new(inner));
    let mut printed = vec![shared.to_string()];
    let mut next = std::error::Error::source(&shared);
    while let Some(e) = next {
        printed.push(e.to_string());
        next = e.source();
    }
    assert_eq!(printed, ["reading the body failed", "root"]);
    assert!(tollgate_core::chain(&shared).any(|e| e.is::<ReadBodyError>()));
    assert_eq!(shared.clone().to_string(), shared.to_string());
}
