//! [`AuthLayer`]: what to attach, and where.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::Uri;
use tower::Layer;

use crate::origin::Origin;
use crate::service::Auth;
use crate::token::{TokenSource, Tokens};
use tollgate_core::{Credential, InvalidCredential};

/// The default for [`AuthLayer::refresh_skew`]: refresh a token when less
/// than this much of its lifetime is left.
pub const DEFAULT_REFRESH_SKEW: Duration = Duration::from_secs(10);
/// The default for [`AuthLayer::refresh_timeout`].
pub const DEFAULT_REFRESH_TIMEOUT: Duration = Duration::from_secs(10);

/// Attaches a credential to each request for the origins it is meant for.
///
/// # Contents
///
/// - Static credentials: [`bearer`](AuthLayer::bearer),
///   [`basic`](AuthLayer::basic), [`api_key_header`](AuthLayer::api_key_header),
///   [`api_key_query`](AuthLayer::api_key_query), or any
///   [`Credential`] with [`new`](AuthLayer::new).
/// - Refreshing tokens: [`token_source`](AuthLayer::token_source), with
///   [`refresh_skew`](AuthLayer::refresh_skew) and
///   [`refresh_timeout`](AuthLayer::refresh_timeout).
/// - Where credentials go: [`origin`](AuthLayer::origin),
///   [`any_origin`](AuthLayer::any_origin).
/// - [`overwrite`](AuthLayer::overwrite) a caller's own header;
///   [`replay_unauthorized`](AuthLayer::replay_unauthorized).
///
/// # Origins
///
/// Credentials go only to requests whose URI is on an origin named with
/// [`origin`](AuthLayer::origin) (scheme, host and port), so a redirect or
/// an absolute URL to another host never carries them. A request whose URI
/// is a path alone (as servers see them) gets them too: it has no origin to
/// leak to. Until an origin is named, absolute URIs get nothing;
/// [`any_origin`](AuthLayer::any_origin) lifts the check. The `tollgate`
/// facade names its base URL's origin.
///
/// # Which credential
///
/// A [`Credential`] in the request's extensions (put there by a gateway for
/// the user it serves) wins over the layer's own. A header or query
/// parameter the caller set on the request is kept unless
/// [`overwrite`](AuthLayer::overwrite) is on.
///
/// # Tokens
///
/// With a [`TokenSource`], all clones share one current token. It is
/// refreshed when less than the skew (10 s) of its lifetime is left, by one
/// refresh at a time however many requests wait for it, bounded by the
/// refresh timeout (10 s); a failure is an [`AuthError`](crate::AuthError)
/// on the requests that waited for it.
///
/// Refreshes are bounded however the source behaves:
///
/// - A token is used for at least half its lifetime, and at least 1 s,
///   after it arrived, even when the skew says sooner: a token that lives
///   no longer than the skew is refreshed at half-life, and one with
///   `expires_in` 0 once a second at most, never on every request.
/// - After a failed (or timed-out) refresh, no other starts for 1 s, then
///   2, 4, ... up to 30 s while failures go on; a success ends the back-off.
///   Meanwhile a token whose lifetime is not over (and that no 401 refused)
///   is still used; without one, requests get the last
///   [`AuthError`](crate::AuthError) at once.
/// - Lifetimes, skews and timeouts of any size are taken as they are; one
///   so long that it leaves the clock's range means never.
///
/// A 401 answered to a token invalidates it: one refresh, and the request
/// is replayed once with the new token if its body is whole in memory (see
/// [`Auth`](crate::Auth)); a request whose body streamed gets its 401
/// back as it is. A second 401 is returned as it is.
///
/// # Example
///
/// ```
/// use bytes::Bytes;
/// use http::{header::AUTHORIZATION, Request, Response};
/// use http_body_util::Full;
/// use tower::{service_fn, ServiceBuilder, ServiceExt};
/// use tollgate_auth::AuthLayer;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tower::BoxError> {
/// let upstream = service_fn(|req: Request<Full<Bytes>>| async move {
///     let seen = req.headers().get(AUTHORIZATION).map(|v| v.is_sensitive());
///     Ok::<_, std::convert::Infallible>(Response::new(format!("{seen:?}")))
/// });
/// let service = ServiceBuilder::new()
///     .layer(AuthLayer::bearer("s3cret")?.origin("https://api.example.com".parse()?))
///     .service(upstream);
///
/// let ours = Request::get("https://api.example.com/users").body(Full::default())?;
/// assert_eq!(service.clone().oneshot(ours).await?.into_body(), "Some(true)");
/// let theirs = Request::get("https://elsewhere.example/").body(Full::default())?;
/// assert_eq!(service.oneshot(theirs).await?.into_body(), "None");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct AuthLayer {
    pub(crate) config: Arc<Config>,
}

#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) source: Source,
    origins: Origins,
    pub(crate) overwrite: bool,
    pub(crate) replay_unauthorized: bool,
    pub(crate) skew: Duration,
    pub(crate) timeout: Duration,
}

#[derive(Clone)]
pub(crate) enum Source {
    Static(Credential),
    Tokens(Arc<Tokens>),
}

#[derive(Clone)]
enum Origins {
    Named(Vec<Origin>),
    Any,
}

impl Config {
    /// Whether credentials may go with a request for `uri`.
    pub(crate) fn allows(&self, uri: &Uri) -> bool {
        match &self.origins {
            Origins::Any => true,
            _ if uri.authority().is_none() && uri.scheme().is_none() => true,
            Origins::Named(list) => list.iter().any(|o| o.matches(uri)),
        }
    }
}

impl AuthLayer {
    /// Attaches `credential` to every request for the named origins.
    pub fn new(credential: Credential) -> Self {
        AuthLayer::with_source(Source::Static(credential))
    }

    fn with_source(source: Source) -> Self {
        AuthLayer {
            config: Arc::new(Config {
                source,
                origins: Origins::Named(Vec::new()),
                overwrite: false,
                replay_unauthorized: true,
                skew: DEFAULT_REFRESH_SKEW,
                timeout: DEFAULT_REFRESH_TIMEOUT,
            }),
        }
    }

    /// `Authorization: Bearer <token>`.
    ///
    /// # Errors
    ///
    /// As [`Credential::bearer`].
    pub fn bearer(token: impl AsRef<str>) -> Result<Self, InvalidCredential> {
        Ok(AuthLayer::new(Credential::bearer(token)?))
    }

    /// `Authorization: Basic ...`.
    ///
    /// # Errors
    ///
    /// As [`Credential::basic`].
    pub fn basic(
        user: impl AsRef<str>,
        password: impl AsRef<str>,
    ) -> Result<Self, InvalidCredential> {
        Ok(AuthLayer::new(Credential::basic(user, password)?))
    }

    /// An API key in the header `name`.
    ///
    /// # Errors
    ///
    /// As [`Credential::api_key_header`].
    pub fn api_key_header(
        name: impl AsRef<str>,
        key: impl AsRef<str>,
    ) -> Result<Self, InvalidCredential> {
        Ok(AuthLayer::new(Credential::api_key_header(name, key)?))
    }

    /// An API key as the query parameter `name`.
    ///
    /// # Errors
    ///
    /// As [`Credential::api_key_query`].
    pub fn api_key_query(
        name: impl AsRef<str>,
        key: impl AsRef<str>,
    ) -> Result<Self, InvalidCredential> {
        Ok(AuthLayer::new(Credential::api_key_query(name, key)?))
    }

    /// Tokens from `source`, refreshed before they expire and after a 401.
    pub fn token_source(source: impl TokenSource) -> Self {
        AuthLayer::with_source(Source::Tokens(Arc::new(Tokens::new(Box::new(source)))))
    }

    fn config(&mut self) -> &mut Config {
        Arc::make_mut(&mut self.config)
    }

    /// Sends credentials to `origin` too. Call it once per origin.
    pub fn origin(mut self, origin: Origin) -> Self {
        if let Origins::Named(list) = &mut self.config().origins {
            list.push(origin);
        }
        self
    }

    /// Sends credentials with every request, whatever its origin. Only for
    /// stacks that can reach one upstream, never for one that follows
    /// redirects.
    pub fn any_origin(mut self) -> Self {
        self.config().origins = Origins::Any;
        self
    }

    /// Whether an origin has been named, or every origin allowed.
    pub fn has_origin(&self) -> bool {
        match &self.config.origins {
            Origins::Named(list) => !list.is_empty(),
            Origins::Any => true,
        }
    }

    /// Replaces a header or query parameter of the same name that the
    /// caller put on the request (default: the caller's is kept).
    pub fn overwrite(mut self, overwrite: bool) -> Self {
        self.config().overwrite = overwrite;
        self
    }

    /// Whether a 401 to a token from the source leads to one refresh and one
    /// replay (default on).
    pub fn replay_unauthorized(mut self, replay: bool) -> Self {
        self.config().replay_unauthorized = replay;
        self
    }

    /// Refresh a token when less than this much of its lifetime is left
    /// (default 10 s), but not before half its lifetime has passed. Zero
    /// refreshes at expiry; `Duration::MAX` at half-life.
    pub fn refresh_skew(mut self, skew: Duration) -> Self {
        self.config().skew = skew;
        self
    }

    /// How long one refresh may take (default 10 s). Zero fails every
    /// refresh that does not end at its first poll (and backs off);
    /// `Duration::MAX` means no limit.
    pub fn refresh_timeout(mut self, timeout: Duration) -> Self {
        self.config().timeout = timeout;
        self
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Auth<S> {
        Auth::new(inner, self.clone())
    }
}

impl fmt::Debug for AuthLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.config, f)
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("AuthLayer");
        match &self.source {
            Source::Static(c) => d.field("credential", c),
            Source::Tokens(_) => d.field("token_source", &"[redacted]"),
        };
        match &self.origins {
            Origins::Named(list) => d.field("origins", list),
            Origins::Any => d.field("origins", &"any"),
        };
        d.field("overwrite", &self.overwrite)
            .field("refresh_skew", &self.skew)
            .field("refresh_timeout", &self.timeout)
            .finish()
    }
}
