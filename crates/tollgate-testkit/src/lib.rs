//! Test support for Tollgate: [`FakeApi`], a real HTTP server on loopback,
//! [`FaultProxy`], a TCP proxy that breaks connections on purpose, and
//! [`StubTransport`], canned answers in process with no sockets, and
//! [`HttpProxy`] and [`Socks5Proxy`], forward proxies that record what they
//! were asked (CONNECT targets, SOCKS5 targets, proxy credentials), and
//! [`TlsFront`] (feature `tls`), TLS with a self-signed certificate in
//! front of any of them, and [`RawServer`], which answers with exactly the
//! bytes a test gives it.
//!
//! `FakeApi` serves JSONPlaceholder's resources (`/posts`, `/users`,
//! `/comments`), a batch endpoint (`/metadata?id=1&id=2..`) and an echo
//! endpoint (`/anything`), and lets a test script faults per route: the next N
//! responses with a status (and `Retry-After`), added latency, a dropped
//! connection, malformed JSON, a required bearer token, and `Cache-Control` on
//! responses. It counts the requests it received per path and keeps the last
//! one of each, so a test can assert what reached the server.
//!
//! [`FaultProxy`] sits between a client and a `FakeApi` (or any address on
//! loopback) and does what networks do: added latency, a reset after N
//! bytes, a close before the response, trickled answers, answers that stop
//! and never end, and a blackhole; scripted, or drawn at a seeded rate with
//! a [`FaultMix`], with [counters](ProxyStats) of what it did.
//!
//! It is a real server speaking HTTP/1.1 and HTTP/2 (h2c) on `127.0.0.1`:
//! integration tests exercise the same code path as production, with no mocks
//! between the client and the socket. It only ever binds the loopback address.
//!
//! ```
//! use std::time::Duration;
//! use tollgate_testkit::{Fault, FakeApi};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> std::io::Result<()> {
//! let api = FakeApi::start().await?;
//! api.inject("/posts/*", Fault::latency(Duration::from_millis(5)));
//! api.inject("/users/1", Fault::drop_connection().times(1));
//! api.cache_control("/posts/*", "max-age=60");
//! // ... point a client at `api.url()` and assert on `api.hits("/posts/1")`.
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]

pub mod data;
mod fake_api;
mod fault;
mod logs;
mod proxy;
mod raw;
mod redis;
mod stub;
#[cfg(feature = "tls")]
mod tls_front;
mod tunnel_proxy;

pub use fake_api::{FakeApi, RecordedRequest, MAX_REQUEST_BODY};
pub use fault::Fault;
pub use logs::CapturedLogs;
pub use proxy::{FaultMix, FaultProxy, ProxyFault, ProxyStats};
pub use raw::{response, Piece, RawServer, Seen};
pub use redis::{RedisServer, HOW_TO_GET_REDIS};
pub use stub::{Params, Reply, StubTransport};
#[cfg(feature = "tls")]
pub use tls_front::{TlsFront, TlsFrontBuilder};
pub use tunnel_proxy::{HttpProxy, Socks5Proxy};

/// The README's example, compiled and run as a doc test so it stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
