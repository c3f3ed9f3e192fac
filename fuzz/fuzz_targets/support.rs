//! What the facade targets share: a client over an in-process transport
//! that records the URL it was asked for, and the URL invariants.
#![allow(dead_code)]

use std::future::Future;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body_util::Full;
use tollgate::{Client, ClientBuilder, RequestBody};

/// Base URLs and the path each keeps (no trailing slash).
pub const BASES: [(&str, &str); 4] = [
    ("http://api.test", ""),
    ("http://api.test/v1", "/v1"),
    ("http://api.test/api/v2/", "/api/v2"),
    ("https://api.test:8443/a%20b", "/a%20b"),
];

pub type Seen = Arc<Mutex<Option<Uri>>>;

/// A client on `base` whose transport records the last URI and answers 200.
pub fn client(
    base: &str,
    configure: impl FnOnce(ClientBuilder) -> ClientBuilder,
) -> (Client, Seen) {
    let (client, seen) = try_client(base, configure);
    (client.expect("a valid base URL builds"), seen)
}

/// As [`client`], with the builder's error.
pub fn try_client(
    base: &str,
    configure: impl FnOnce(ClientBuilder) -> ClientBuilder,
) -> (Result<Client, tollgate::Error>, Seen) {
    let seen: Seen = Arc::default();
    let record = seen.clone();
    let transport = tower::service_fn(move |req: Request<RequestBody>| {
        *record.lock().expect("lock") = Some(req.uri().clone());
        async {
            Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from_static(b"{}"))))
        }
    });
    let builder = Client::builder(base).transport(transport).no_request_id();
    (configure(builder).build(), seen)
}

thread_local! {
    /// One current-thread runtime per fuzzing thread: building one per
    /// input would cost more than the input.
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
}

/// Runs a future on this thread's current-thread runtime (the client's
/// deadline needs a timer).
pub fn block_on<F: Future>(f: F) -> F::Output {
    RUNTIME.with(|rt| rt.block_on(f))
}

/// `scheme://` at the start: an absolute URL.
pub fn is_absolute(path: &str) -> bool {
    match path.split_once("://") {
        Some((scheme, _)) => {
            scheme
                .as_bytes()
                .first()
                .is_some_and(u8::is_ascii_alphabetic)
                && scheme
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'-' | b'.'))
        }
        None => false,
    }
}

/// `.` or `..`, each dot possibly `%2e`.
pub fn is_dot_segment(segment: &str) -> bool {
    let decoded = segment.replace("%2e", ".").replace("%2E", ".");
    decoded == "." || decoded == ".."
}

/// The URL a request went to stays on the base's origin and, unless the
/// template is an absolute URL, under its path; no dot segments.
pub fn check_uri(uri: &Uri, base_path: &str, template: &str) {
    assert_eq!(uri.host(), Some("api.test"), "left the origin: {uri}");
    let port = uri.port_u16();
    let scheme = uri.scheme_str();
    assert!(
        (scheme == Some("http") && port.is_none())
            || (scheme == Some("https") && port == Some(8443)),
        "left the origin: {uri}"
    );
    let path = uri.path();
    assert!(path.starts_with('/'), "{uri}");
    if !is_absolute(template) {
        let under = path == base_path
            || path
                .strip_prefix(base_path)
                .is_some_and(|rest| rest.starts_with('/') || (rest.is_empty()));
        assert!(
            under || (base_path.is_empty()),
            "{template:?} left {base_path:?}: {uri}"
        );
    }
    assert!(
        !path.split('/').any(is_dot_segment),
        "a dot segment in {uri} from {template:?}"
    );
}
