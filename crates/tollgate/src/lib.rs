//! Tollgate: an HTTP API client over tower and hyper-util.
//!
//! The facade gives reqwest-style verb helpers (`get`, `post`, `put`,
//! `patch`, `delete`, `head`) on a [`Client`] with a base URL, and returns a
//! structured [`ApiResponse`]: status, headers, the whole body, JSON
//! decoding, when it was received, how long it took, and a [`Summary`] of
//! what the middleware did. Every failure is an [`Error`] with a
//! [`kind`](Error::kind) to match on; no input makes it panic.
//!
//! ```
//! use tollgate::Client;
//! use tollgate_testkit::FakeApi;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let api = FakeApi::start().await?; // a real HTTP server on 127.0.0.1
//! let client = Client::builder(api.url()).build()?;
//!
//! let post = client.get("/posts/{id}").path_param("id", 1).send().await?;
//! assert_eq!(post.status(), 200);
//! assert_eq!(post.data()?["userId"], 1);
//!
//! let missing = client.get("/posts/9999").send().await?;
//! let err = missing.error_for_status().unwrap_err();
//! assert_eq!(err.status().map(|s| s.as_u16()), Some(404));
//! # Ok(()) }
//! ```
//!
//! # The stack
//!
//! A call passes down through the layers and its response comes back up,
//! outermost first, in the order of the repository's `docs/ARCHITECTURE.md`
//! (the numbers are its positions; 6 is for a layer still to come).
//! The stack is built in one place, the crate's `stack.rs`. A layer the
//! builder did not switch on is absent, not a no-op.
//!
//! ```text
//!   send() ──► 1 trace span (`http.request`, OpenTelemetry field names)
//!              2 total timeout   ClientBuilder::timeout / RequestBuilder::timeout:
//!                                covers every attempt, every wait and the body read
//!              3 cache           ClientBuilder::cache (tollgate-cache): a hit returns
//!                                at once, with no attempt and no permit (a fresh hit
//!                                is answered before the stack is entered, by the
//!                                layer's own rules); concurrent misses for one URL
//!                                make one request
//!              4 redirects       ClientBuilder::redirect (tower-http's follow-redirect):
//!                                up to 10 hops on the base URL's origin by default,
//!                                each hop a new request through everything below;
//!                                credentials never follow a chain off the origin
//!              5 retry           ClientBuilder::retry (tollgate-retry): gets the
//!                                call's deadline, starts no retry that would pass it;
//!                                each attempt's body is read whole just below it, so
//!                                a body cut after the headers is retried too
//!             (6 circuit breaker, not yet)
//!              7 rate limit      ClientBuilder::rate_limit (tollgate-limit): every
//!                                attempt takes a permit; upstream 429s pause it
//!              8 auth            ClientBuilder::bearer_auth, token_source, auth, ...
//!                                (tollgate-auth): each attempt gets a current
//!                                credential, only for the base URL's origin; a 401
//!                                refreshes the token once and replays once
//!              9 attempt timeout ClientBuilder::attempt_timeout: bounds one attempt;
//!                                retry treats its expiry as a retryable timeout
//!                your layers     ClientBuilder::layer (tower-http's TraceLayer,
//!                                SetRequestHeaderLayer, ...): each attempt as sent
//!             10 concurrency     ClientBuilder::concurrency_limit (tollgate-limit):
//!                                FIFO queue, bounded in length and time
//!             10b decompression  features gzip (default), deflate, brotli, zstd
//!                                (tower-http): Accept-Encoding sent, the body decoded
//!                                here, so every limit above counts decoded bytes
//!             11 transport       hyper-util pooled client (HTTP/1.1, HTTP/2 by ALPN,
//!                                HTTPS via rustls/ring; connect timeout over DNS, TCP
//!                                and TLS; read timeout on every wait for data; proxies:
//!                                ClientBuilder::proxy; TLS options: identity, ...), or
//!                                ClientBuilder::transport
//!   ◄── ApiResponse: each layer's record (CacheStatus, RetryRecord, PermitWait,
//!       QueueWait) read into Summary
//! ```
//!
//! # Coming from reqwest
//!
//! `docs/COMING_FROM_REQWEST.md` in the repository maps each reqwest call to
//! the facade's. In short: a client has a base URL, and an absolute URL to
//! another origin is refused unless allowed
//! ([`ClientBuilder::allow_origin`]); [`Client::builder_without_base`] takes
//! absolute URLs anywhere, as reqwest does. `send` reads the whole body, so
//! [`ApiResponse::text`] and [`ApiResponse::json`] are not async; `text`
//! honours the charset and reports bytes that are not text as
//! [`ErrorKind::Decode`] ([`ApiResponse::text_lossy`] is reqwest's reading).
//! [`Error::is_timeout`], `is_connect`, `is_status`, `is_decode`,
//! `is_redirect`, `is_body`, `is_request` and `is_builder` map to
//! [`ErrorKind`]s.
//!
//! # Observability
//!
//! Each call has one `http.request` span at `DEBUG` with the OpenTelemetry
//! HTTP client fields: `http.request.method`, `url.full` (sensitive query
//! values redacted), `url.template` (an endpoint's or a path's `{param}`
//! template), `server.address`, `server.port`, `otel.kind = "client"`,
//! `http.response.status_code`, and for a failure or a 4xx/5xx status
//! `error.type` and `otel.status_code = "ERROR"` (the convention for client
//! spans). [`ClientBuilder::propagate_traceparent`] sends W3C `traceparent`
//! ([`TraceContext`]); [`ClientBuilder::log_bodies`] logs bodies with
//! sensitive fields redacted; the `metrics` feature records calls,
//! attempts, outcomes, durations, cache results and waits (see the
//! `metrics` module).
//!
//! # Endpoints, levels and tracking ids
//!
//! Named [`Endpoint`]s (`get_user: GET /users/{user_id}`) are declared on
//! the builder or loaded from JSON ([`ClientBuilder::endpoints_json`]) or
//! TOML (`ClientBuilder::endpoints_toml`, feature `toml`) and
//! called by name ([`Client::call`]). Headers, query parameters and
//! timeouts come from three levels, the narrower replacing the wider for the
//! same name: the client's defaults, the endpoint's, the request's own.
//! Every call carries a tracking id in `x-request-id` (configurable with
//! [`ClientBuilder::request_id_header`], off with
//! [`ClientBuilder::no_request_id`]), the same on every retry, and in
//! [`Summary::request_id`]. For tests without sockets, put the testkit's
//! `StubTransport` under the client with [`ClientBuilder::transport`].
//!
//! # Choices
//!
//! - A default deadline of 30 s per call and 10 s per connect (DNS, TCP
//!   and the TLS handshake together): a hung upstream cannot hold a caller
//!   forever. [`ClientBuilder::no_timeout`] removes the call's deadline; the
//!   read timeout (30 s, [`ClientBuilder::read_timeout`]) still bounds each
//!   wait for the response head and for each piece of its body, so a body
//!   that stalls after the headers gives back its connection and pool
//!   slot.
//! - Redirects are followed up to 10 hops ([`RedirectPolicy`]), only on the
//!   base URL's origin unless the policy allows others; a refused one is an
//!   [`ErrorKind::Redirect`] error. [`ApiResponse::url`] is the URL the
//!   response came from and [`ApiResponse::redirects`] the hops followed.
//! - Compressed bodies (gzip by default; deflate, brotli and zstd with their
//!   features) are asked for and decoded below every other layer, so the
//!   body limit applies to the decoded size (see `ClientBuilder::gzip`).
//! - Response bodies are buffered up to 16 MiB
//!   ([`ClientBuilder::max_response_body`]); a larger body is an
//!   [`ErrorKind::BodyTooLarge`] error, refused from `Content-Length` before
//!   reading when it is known.
//! - Downloads of any size: [`RequestBuilder::send_streaming`] answers a
//!   [`StreamingResponse`] at the head, its body read chunk by chunk
//!   (`chunk().await`, or as a `Stream`) under the call's deadline and read
//!   timeout, holding its pool slot until it ends or is dropped, past the
//!   cache; its `bytes()`/`text()`/`json()` read the rest within the
//!   16 MiB limit. Uploads: [`RequestBuilder::body_stream`] (sent once:
//!   never retried, a 307/308 not followed), [`RequestBuilder::form`]
//!   (urlencoded) and [`RequestBuilder::multipart`] ([`multipart::Form`],
//!   files streamed from disk). See the [`stream`] module for each rule.
//! - `Accept: application/json` and `User-Agent: tollgate/<version>` are sent
//!   unless replaced.
//! - A base URL with credentials in it is refused: they would ride along in
//!   every logged URL. Use an auth layer: credentials set on the builder go
//!   only to the base URL's origin, are marked sensitive, and never appear in
//!   `Debug` or tracing output. A 401 replay happens inside the auth layer,
//!   so it takes no second rate-limit permit and does not count as an
//!   attempt in [`Summary::attempts`].
//! - With retry on, a call that fails after retrying keeps the kind of its
//!   last attempt's error (`Connect`, `Timeout`, ...) and says how many
//!   attempts it made; a response returned without waiting out a too-long
//!   `Retry-After` explains that in its `error_for_status` error
//!   ([`Error::retry_after`]).
//! - No proxy unless one is set ([`ClientBuilder::proxy`]); the
//!   environment's `HTTPS_PROXY`/`NO_PROXY` only with
//!   [`ClientBuilder::proxy_from_env`], since a library that silently routes
//!   traffic through an environment's proxy surprises. Proxy credentials go
//!   to the proxy only (see [`Proxy`]); a proxy that refuses is an
//!   [`ErrorKind::Proxy`] error. A proxy URL that could be read two ways
//!   (an unencoded `@`, `#`, `?` or `/` in a password, a port over 65535)
//!   is an [`ErrorKind::Builder`] error, never a guess.
//! - TLS trusts Mozilla's roots by default; the platform's store (feature
//!   `native-roots`), a client certificate (`ClientBuilder::identity`) or a
//!   whole `rustls::ClientConfig` (`ClientBuilder::use_rustls_config`) are
//!   options.
//! - Tracing: one `debug` span per call. `url.full` shows the URL with the
//!   values of sensitive query parameters (`api_key`, `token`, ... see
//!   [`DEFAULT_SENSITIVE_QUERY_PARAMS`]) redacted; `Display` and `Debug` of
//!   errors and responses never show a query string or a header value.
//!
#![deny(missing_docs)]

#[cfg(feature = "batch")]
mod batch;
mod buffer;
mod builder;
mod client;
#[cfg(any(
    feature = "gzip",
    feature = "deflate",
    feature = "brotli",
    feature = "zstd"
))]
mod decode;
mod endpoint;
mod error;
#[cfg(feature = "metrics")]
pub mod metrics;
pub mod multipart;
mod observe;
mod proxy;
#[cfg(feature = "redirect")]
mod redirect;
mod request;
mod response;
mod stack;
pub mod stream;
#[cfg(feature = "rustls")]
mod tls;
mod transport;
mod url;

#[cfg(feature = "batch")]
pub use batch::{BatchSpec, Batched};
pub use builder::ClientBuilder;
pub use client::{
    Client, DEFAULT_MAX_RESPONSE_BODY, DEFAULT_READ_TIMEOUT, DEFAULT_REQUEST_ID_HEADER,
    DEFAULT_SENSITIVE_QUERY_PARAMS, DEFAULT_TIMEOUT,
};
pub use endpoint::Endpoint;
pub use error::{Error, ErrorKind, TimedOut};
pub use observe::{TraceContext, SENSITIVE_BODY_FIELDS};
pub use proxy::{NoProxy, Proxy};
#[cfg(feature = "redirect")]
pub use redirect::{
    Action as RedirectAction, Attempt as RedirectAttempt, RedirectPolicy, DEFAULT_MAX_REDIRECTS,
};
pub use request::RequestBuilder;
pub use response::{ApiResponse, Summary};
pub use stack::AttemptService;
pub use stream::StreamingResponse;
#[cfg(feature = "rustls")]
pub use tls::Identity;
pub use tollgate_core::{Credential, InvalidCredential};
pub use transport::{RequestBody, ResponseBody};

#[cfg(feature = "auth")]
pub use tollgate_auth as auth;
#[cfg(feature = "batch")]
pub use tollgate_batch as batch_layer;
#[cfg(feature = "cache")]
pub use tollgate_cache as cache;
/// The vocabulary the layers share (`Deadline`, `NotBefore`, `Credential`,
/// `Partition`, the server-signal parsers).
pub use tollgate_core as shared;
#[cfg(feature = "limit")]
pub use tollgate_limit as limit;
/// The layer crates, re-exported: one dependency on `tollgate` is enough to
/// configure every layer (`tollgate::retry::RetryLayer`,
/// `tollgate::limit::Quota`, ...). Each is there with its feature.
#[cfg(feature = "retry")]
pub use tollgate_retry as retry;

/// Re-exports of the crates in Tollgate's public API, so users need not pin
/// matching versions themselves.
pub mod reexports {
    pub use bytes;
    pub use http;
    /// rustls, for [`ClientBuilder::use_rustls_config`](crate::ClientBuilder::use_rustls_config).
    #[cfg(feature = "rustls")]
    pub use rustls;
    pub use serde_json;
    pub use tower;
}

/// The README's example, compiled and run as a doc test so it stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
