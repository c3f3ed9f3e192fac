//! Credentials for HTTP clients as a tower layer.
//!
//! [`AuthLayer`] attaches a [`Credential`] to each request for the origins
//! it is configured for: a static bearer token, basic auth, an API key in a
//! header or in the query, or tokens from a [`TokenSource`] (such as OAuth2
//! [`ClientCredentials`]) refreshed before they expire and after a 401.
//!
//! | rule | how |
//! |------|-----|
//! | credentials are checked when configured | CR, LF, NUL or any byte a header cannot carry is an [`InvalidCredential`] naming the field, not the value |
//! | secrets stay secret | header values are marked sensitive; `Debug` of every credential, token, source and layer prints a redaction; nothing is logged |
//! | credentials never cross origins | only requests on an [`Origin`] the layer names get them, so a redirect or an absolute URL elsewhere goes without |
//! | the caller decides | an explicit header is kept unless [`overwrite`](AuthLayer::overwrite); a [`Credential`] in the request's extensions replaces the layer's own |
//! | refresh is single-flight, early and bounded | within the skew (10 s) of expiry; one refresh however many requests wait; a timeout (10 s); a failure is an [`AuthError`] shared by the waiting requests |
//! | no refresh storms | a token is used for at least half its lifetime and at least 1 s; a failed refresh is backed off (1 s, doubling, at most 30 s), during which a token not yet expired is still used, or else the last error comes back at once |
//! | a 401 is answered once | the refused token is invalidated, refreshed once, and the request replayed once if its body is whole in memory; a second 401 is returned |
//! | any request body | a static credential works over any body (`Full<Bytes>`, axum's `Body`, hyper's `Incoming`, ...); with tokens, a body whole in memory (`Full<Bytes>`, `Bytes`, `String`, a buffered [`ReplayableBody`](tollgate_core::ReplayableBody), as the retry layer above hands down) is replayed after a 401, and any other is sent once: its 401 is returned, never resent with an empty body |
//!
//! # Readiness
//!
//! `poll_ready` is the inner service's. Waiting for a token happens inside
//! the response future, so an idle or cloned service holds nothing, and a
//! dropped request does not cancel the refresh it began: the fetch runs on a
//! task of its own, bounded by the refresh timeout, and the requests waiting
//! or coming after take its token (so callers that give up early, with
//! deadlines shorter than the token endpoint's answer, do not make it fetch
//! again and again).
//!
//! # In the stack
//!
//! In the `tollgate` facade this is layer 6, below retry and rate limiting:
//! every attempt gets a current credential. A 401 replay happens inside this
//! layer, so it takes no second rate-limit permit and no retry; there is at
//! most one per attempt.
#![deny(missing_docs)]

mod error;
mod future;
mod layer;
mod oauth2;
mod origin;
mod service;
mod token;

pub use error::{AuthError, SharedError};
pub use future::ResponseFuture;
pub use layer::{AuthLayer, DEFAULT_REFRESH_SKEW, DEFAULT_REFRESH_TIMEOUT};
pub use oauth2::{ClientCredentials, TokenEndpointError, MAX_TOKEN_RESPONSE};
pub use origin::{InvalidOrigin, Origin};
pub use service::Auth;
pub use token::{token_fn, FnTokenSource, Token, TokenFuture, TokenSource};
pub use tollgate_core::{Credential, InvalidCredential};

/// The README's example, compiled and run as a doc test so it stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
