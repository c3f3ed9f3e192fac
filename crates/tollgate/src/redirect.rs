//! Layer 4: redirects, followed above retry, so that each hop is a new
//! request down the rest of the stack (retry, the rate limiter, auth, the
//! pool).
//!
//! The machinery is tower-http's [`FollowRedirect`]: it resolves
//! `Location` against the URL of the hop, turns a `POST` answered by 301 or
//! 302 (and anything but `HEAD` answered by 303) into a body-less `GET`
//! without `Content-Type`, `Content-Length`, `Content-Encoding` and
//! `Transfer-Encoding`, keeps method and body for 307 and 308, and returns a
//! 3xx whose `Location` is missing or unusable as the response. The facade
//! brings its own [`Policy`](tower_http::follow_redirect::policy::Policy),
//! because tower-http's own pieces do not keep what the facade promises:
//!
//! - its `FilterCredentials` compares each hop with the one before, so a
//!   chain `a → b → b` sends `a`'s `Authorization` to `b` on the second hop
//!   (the shape of Go's CVE-2024-45336). Here, once a chain has left the
//!   origin of the request, the caller's own credentials stay off for the
//!   rest of it;
//! - a followed hop is a new `Request` with no extensions; the facade's ride
//!   there (the call's `Deadline`, a per-request `Credential` that the auth
//!   layer scopes to its origins), so the policy puts them back;
//! - it says neither how many hops were followed nor to which URL the
//!   credentials finally went, so the policy keeps a record for the call.
//!
//! Nothing is written by hand but the policy, its origin check and the
//! record.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use http::header::{AUTHORIZATION, COOKIE, PROXY_AUTHORIZATION};
use http::{Extensions, HeaderName, Method, Request, Response, StatusCode, Uri};
use tower::{BoxError, Layer, Service};
use tower_http::follow_redirect::policy::{Action as TowerAction, Attempt as TowerAttempt, Policy};
use tower_http::follow_redirect::FollowRedirect;

use crate::error::{Error, ErrorKind};
use crate::transport::RequestBody;

/// The number of hops [`RedirectPolicy::default`] follows.
pub const DEFAULT_MAX_REDIRECTS: u32 = 10;

/// Which redirects a client follows (stack position 4), set with
/// [`ClientBuilder::redirect`](crate::ClientBuilder::redirect).
///
/// The default follows up to [`DEFAULT_MAX_REDIRECTS`] hops, on the base
/// URL's origin only. Whatever the policy:
///
/// - a redirect to another origin (scheme, host or port: `https` → `http`
///   is a change) than the base URL's is an [`ErrorKind::Redirect`] error,
///   unless [`allow_origin`](Self::allow_origin) or
///   [`allow_any_origin`](Self::allow_any_origin) allows it;
/// - once a chain leaves the origin of the request, the caller's own
///   credentials are not sent again in it: `Authorization`,
///   `Proxy-Authorization`, `Cookie`, every header marked sensitive (a
///   per-request [`Credential`](crate::Credential) without the auth layer),
///   the header of [`api_key_header`](crate::ClientBuilder::api_key_header),
///   the query parameter of
///   [`api_key_query`](crate::ClientBuilder::api_key_query) or of a
///   per-request query credential, and a sensitive query parameter (see
///   [`redact_query_param`](crate::ClientBuilder::redact_query_param)) that
///   the request itself carried are removed (from a `Location` that echoes
///   them), even on a later hop back to the first origin. The auth layer
///   decides for itself, by the URL of each hop, and sends the client's
///   credential only to its origins. (A limit: the query parameter of an
///   `AuthLayer` given whole to `ClientBuilder::auth` is not known here, so
///   a server that echoes it into a `Location` for an allowed other origin
///   sends it there; use the `api_key_query` shortcut);
/// - a `Location` that is not `http` or `https`, or carries user
///   information (`http://user:pw@host/`), is an [`ErrorKind::Redirect`]
///   error; one that is missing, not UTF-8 or not a URL leaves the 3xx as
///   the response;
/// - a loop (the same method and URL twice in one chain) is an
///   [`ErrorKind::Redirect`] error.
///
/// 301/302/303 turn a `POST` into a `GET` without a body; 307/308 keep the
/// method and the body. A body in memory (`body`, `json`, `form`, a
/// multipart form of text and bytes) is sent again on the next hop; a body
/// streamed once (`body_stream`, a multipart form with a file part) cannot
/// be, so a 307 or 308 answering it is returned as the response, with its
/// `Location`, rather than followed without the body (a 301/302/303 still
/// turns it into a body-less `GET` and is followed).
///
/// ```
/// use tollgate::{Client, RedirectPolicy};
///
/// let client = Client::builder("https://api.example.com")
///     .redirect(RedirectPolicy::limited(3).allow_origin("https://files.example.com")?)
///     .build()?;
/// let strict = Client::builder("https://api.example.com")
///     .redirect(RedirectPolicy::none())
///     .build()?;
/// # Ok::<(), tollgate::Error>(())
/// ```
#[derive(Clone)]
pub struct RedirectPolicy {
    rule: Rule,
    origins: Allowed,
}

#[derive(Clone)]
enum Rule {
    None,
    Limited(u32),
    Custom(Arc<CustomFn>),
}

type CustomFn = dyn Fn(Attempt<'_>) -> Action + Send + Sync;

#[derive(Clone)]
enum Allowed {
    /// The base URL's origin and these.
    Listed(Vec<OriginKey>),
    Any,
}

impl fmt::Debug for RedirectPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("RedirectPolicy");
        match &self.rule {
            Rule::None => d.field("rule", &"none"),
            Rule::Limited(n) => d.field("max_redirects", n),
            Rule::Custom(_) => d.field("rule", &"custom"),
        };
        match &self.origins {
            Allowed::Listed(list) => {
                let list: Vec<String> = list.iter().map(ToString::to_string).collect();
                d.field("other_origins", &list)
            }
            Allowed::Any => d.field("other_origins", &"any"),
        };
        d.finish()
    }
}

impl Default for RedirectPolicy {
    /// [`limited`](Self::limited)`(`[`DEFAULT_MAX_REDIRECTS`]`)`.
    fn default() -> Self {
        RedirectPolicy::limited(DEFAULT_MAX_REDIRECTS)
    }
}

impl RedirectPolicy {
    /// Follows no redirect: a 3xx is the response. The layer is then absent
    /// from the stack.
    pub fn none() -> Self {
        RedirectPolicy {
            rule: Rule::None,
            origins: Allowed::Listed(Vec::new()),
        }
    }

    /// Follows up to `max` hops; one more is an [`ErrorKind::Redirect`]
    /// error ("too many redirects"). `limited(0)` makes every redirect that
    /// error (where [`none`](Self::none) returns the 3xx).
    pub fn limited(max: u32) -> Self {
        RedirectPolicy {
            rule: Rule::Limited(max),
            origins: Allowed::Listed(Vec::new()),
        }
    }

    /// Asks `decide` about each redirect the origin check and the loop check
    /// let through: [`Attempt::follow`], [`Attempt::stop`] (the 3xx is the
    /// response) or [`Attempt::error`]. There is no hop limit but the one
    /// `decide` keeps (with [`Attempt::hops`]) and the call's deadline.
    ///
    /// ```
    /// use tollgate::RedirectPolicy;
    ///
    /// let policy = RedirectPolicy::custom(|attempt| {
    ///     if attempt.hops() >= 3 {
    ///         attempt.error("more than 3 redirects")
    ///     } else if attempt.url().path().starts_with("/login") {
    ///         attempt.stop()
    ///     } else {
    ///         attempt.follow()
    ///     }
    /// });
    /// ```
    pub fn custom(decide: impl Fn(Attempt<'_>) -> Action + Send + Sync + 'static) -> Self {
        RedirectPolicy {
            rule: Rule::Custom(Arc::new(decide)),
            origins: Allowed::Listed(Vec::new()),
        }
    }

    /// Follows redirects to `origin` too (an absolute `http` or `https` URL;
    /// its path is ignored). Credentials still stay off a hop there (see
    /// above), unless the auth layer names that origin.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Builder`] for a URL that is not `http` or `https`, has
    /// no host, or carries user information.
    pub fn allow_origin(mut self, origin: &str) -> Result<Self, Error> {
        let key = origin
            .parse::<Uri>()
            .ok()
            .filter(|u| !has_userinfo(u))
            .and_then(|u| OriginKey::of(&u))
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::Builder,
                    "a redirect origin must be an absolute http or https URL without user information",
                )
            })?;
        if let Allowed::Listed(list) = &mut self.origins {
            list.push(key);
        }
        Ok(self)
    }

    /// Follows redirects to any origin. Credentials still stay off a hop to
    /// another origin than the request's (see above).
    pub fn allow_any_origin(mut self) -> Self {
        self.origins = Allowed::Any;
        self
    }

    /// Whether the policy follows anything (the layer is absent if not).
    pub(crate) fn follows(&self) -> bool {
        !matches!(self.rule, Rule::None)
    }
}

/// A redirect a [`RedirectPolicy::custom`] function decides about.
#[derive(Debug)]
pub struct Attempt<'a> {
    status: StatusCode,
    next: &'a Uri,
    previous: &'a Uri,
    hops: u32,
}

impl Attempt<'_> {
    /// The status of the redirect (301, 302, 303, 307 or 308).
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The URL the redirect points to, resolved against
    /// [`previous`](Self::previous).
    pub fn url(&self) -> &Uri {
        self.next
    }

    /// The URL that answered with the redirect.
    pub fn previous(&self) -> &Uri {
        self.previous
    }

    /// How many redirects this call has followed already (0 at the first).
    pub fn hops(&self) -> u32 {
        self.hops
    }

    /// Follow this redirect.
    pub fn follow(self) -> Action {
        Action(Decision::Follow)
    }

    /// Do not follow: the 3xx is the response.
    pub fn stop(self) -> Action {
        Action(Decision::Stop)
    }

    /// Fail the call with an [`ErrorKind::Redirect`] error saying `reason`.
    /// (Do not put the URL's query in it: error messages are logged.)
    pub fn error(self, reason: impl Into<String>) -> Action {
        Action(Decision::Error(reason.into()))
    }
}

/// What a [`RedirectPolicy::custom`] function decided (made by [`Attempt`]).
#[derive(Debug)]
pub struct Action(Decision);

#[derive(Debug)]
enum Decision {
    Follow,
    Stop,
    Error(String),
}

/// Why a redirect was not followed: the source of an
/// [`ErrorKind::Redirect`] error. Its text names an origin at most, never a
/// path or a query.
#[derive(Debug)]
pub(crate) enum RedirectError {
    TooMany(u32),
    Loop,
    OtherOrigin(OriginKey),
    Scheme,
    UserInfo,
    Refused(String),
}

impl fmt::Display for RedirectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RedirectError::TooMany(n) => write!(f, "too many redirects (more than {n})"),
            RedirectError::Loop => f.write_str("a redirect loop (the same URL twice)"),
            RedirectError::OtherOrigin(o) => write!(
                f,
                "a redirect to {o}, an origin the redirect policy does not allow"
            ),
            RedirectError::Scheme => f.write_str("a redirect to a URL that is not http or https"),
            RedirectError::UserInfo => f.write_str("a redirect to a URL with user information"),
            RedirectError::Refused(reason) => write!(f, "redirect refused: {reason}"),
        }
    }
}

impl std::error::Error for RedirectError {}

/// A scheme, host (lowercase) and port, the default port standing in for
/// an absent one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct OriginKey {
    https: bool,
    host: String,
    port: u16,
}

impl OriginKey {
    pub(crate) fn of(uri: &Uri) -> Option<OriginKey> {
        let https = match uri.scheme_str()? {
            s if s.eq_ignore_ascii_case("https") => true,
            s if s.eq_ignore_ascii_case("http") => false,
            _ => return None,
        };
        let host = uri.host().filter(|h| !h.is_empty())?.to_ascii_lowercase();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        Some(OriginKey { https, host, port })
    }
}

impl fmt::Display for OriginKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.https { "https" } else { "http" };
        write!(f, "{scheme}://{}:{}", self.host, self.port)
    }
}

fn has_userinfo(uri: &Uri) -> bool {
    uri.authority().is_some_and(|a| a.as_str().contains('@'))
}

/// The query parameter of a per-request credential put on the request
/// itself (without an auth layer): removed after leaving the origin.
#[derive(Clone, Debug)]
pub(crate) struct SecretQuery(pub(crate) String);

/// What the redirect layer knows of the client.
pub(crate) struct Config {
    rule: Rule,
    origins: Allowed,
    base: OriginKey,
    /// Query parameters whose values are secret (the client's sensitive
    /// list): removed after leaving the origin if the request carried them.
    sensitive_query: Vec<String>,
    /// Query parameters removed after leaving the origin whether or not the
    /// request carried them (the auth layer adds them below this layer).
    secret_query: Vec<String>,
    /// Headers removed after leaving the origin, besides the standard ones
    /// and those marked sensitive.
    secret_headers: Vec<HeaderName>,
}

/// Layer 4: follows redirects by a [`RedirectPolicy`].
#[derive(Clone)]
pub(crate) struct RedirectLayer {
    config: Arc<Config>,
}

impl RedirectLayer {
    /// Whether the policy follows or refuses every followable redirect,
    /// never handing one to the caller (the default, limited policy; a
    /// custom one may stop).
    pub(crate) fn decides_every_redirect(&self) -> bool {
        matches!(self.config.rule, Rule::Limited(_))
    }

    pub(crate) fn new(
        policy: RedirectPolicy,
        base: &Uri,
        sensitive_query: Vec<String>,
        secret_query: Vec<String>,
        secret_headers: Vec<HeaderName>,
    ) -> Result<RedirectLayer, Error> {
        let base = OriginKey::of(base).ok_or_else(|| {
            Error::new(
                ErrorKind::Builder,
                "the base URL has no origin to redirect from",
            )
        })?;
        Ok(RedirectLayer {
            config: Arc::new(Config {
                rule: policy.rule,
                origins: policy.origins,
                base,
                sensitive_query,
                secret_query,
                secret_headers,
            }),
        })
    }
}

impl<S> Layer<S> for RedirectLayer {
    type Service = Redirect<S>;

    fn layer(&self, inner: S) -> Redirect<S> {
        Redirect {
            inner,
            config: self.config.clone(),
        }
    }
}

/// The service of [`RedirectLayer`]: tower-http's [`FollowRedirect`] with a
/// policy of its own for each call.
#[derive(Clone)]
pub(crate) struct Redirect<S> {
    inner: S,
    config: Arc<Config>,
}

/// What a call's redirects did, in the final response's extensions.
#[derive(Clone, Debug)]
pub(crate) struct Followed {
    /// Redirects followed.
    pub(crate) hops: u32,
    /// The URL the final response came from, as sent.
    pub(crate) url: Uri,
}

impl<S, B> Service<Request<RequestBody>> for Redirect<S>
where
    S: Service<Request<RequestBody>, Response = Response<B>, Error = BoxError> + Clone,
{
    type Response = Response<B>;
    type Error = BoxError;
    type Future = RedirectFuture<S>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<RequestBody>) -> Self::Future {
        // The service polled ready goes into the call; a clone stays.
        let clone = self.inner.clone();
        let ready = std::mem::replace(&mut self.inner, clone);
        let trail = Arc::new(Mutex::new(Trail::default()));
        let policy = CallPolicy {
            config: self.config.clone(),
            trail: trail.clone(),
            first: None,
            chain: None,
            left: false,
        };
        RedirectFuture {
            inner: FollowRedirect::with_policy(ready, policy).call(req),
            trail,
        }
    }
}

/// What the policy tells the layer's future about the call.
#[derive(Default)]
struct Trail {
    hops: u32,
    /// The last hop's URL, as sent (after any query was removed); `None`
    /// until a redirect is followed.
    url: Option<Uri>,
}

pin_project_lite::pin_project! {
    /// The future of [`Redirect`]: tower-http's, and the record.
    pub(crate) struct RedirectFuture<S>
    where
        S: Service<Request<RequestBody>>,
    {
        #[pin]
        inner: tower_http::follow_redirect::ResponseFuture<S, RequestBody, CallPolicy>,
        trail: Arc<Mutex<Trail>>,
    }
}

impl<S, B> Future for RedirectFuture<S>
where
    S: Service<Request<RequestBody>, Response = Response<B>, Error = BoxError> + Clone,
{
    type Output = Result<Response<B>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut res = std::task::ready!(this.inner.poll(cx))?;
        let trail = this.trail.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(url) = &trail.url {
            res.extensions_mut().insert(Followed {
                hops: trail.hops,
                url: url.clone(),
            });
        }
        Poll::Ready(Ok(res))
    }
}

/// One call's policy: tower-http clones it into the call's future.
#[derive(Clone)]
pub(crate) struct CallPolicy {
    config: Arc<Config>,
    trail: Arc<Mutex<Trail>>,
    /// The call's own request, as far as later hops need it. Only cheap
    /// clones here: most calls are never redirected, and pay for nothing
    /// more (see `chain`).
    first: Option<First>,
    /// Worked out at the first redirect.
    chain: Option<Chain>,
    /// Whether the chain has left the first request's origin (for good).
    left: bool,
}

/// The call's own request.
#[derive(Clone)]
struct First {
    method: Method,
    uri: Uri,
    /// Put back on every hop.
    extensions: Extensions,
}

/// What a redirected call needs, worked out at its first redirect.
#[derive(Clone)]
struct Chain {
    /// The first request's origin.
    origin: Option<OriginKey>,
    /// Query parameters to remove once the chain has left that origin.
    strip_query: Vec<String>,
    /// Every (method, URL) of the chain, to tell a loop.
    visited: Vec<(Method, Uri)>,
}

impl Chain {
    fn of(first: &First, config: &Config) -> Chain {
        let carried = query_names(&first.uri);
        let own = first.extensions.get::<SecretQuery>().map(|s| &s.0);
        let strip_query = config
            .secret_query
            .iter()
            .chain(own)
            .chain(
                config
                    .sensitive_query
                    .iter()
                    .filter(|s| carried.iter().any(|c| c.eq_ignore_ascii_case(s))),
            )
            .cloned()
            .collect();
        Chain {
            origin: OriginKey::of(&first.uri),
            strip_query,
            visited: vec![(first.method.clone(), first.uri.clone())],
        }
    }
}

impl CallPolicy {
    fn allowed(&self, origin: &OriginKey) -> bool {
        match &self.config.origins {
            Allowed::Any => true,
            Allowed::Listed(list) => *origin == self.config.base || list.contains(origin),
        }
    }

    fn decide(&mut self, attempt: &TowerAttempt<'_>) -> Result<TowerAction, RedirectError> {
        let next = attempt.location();
        let Some(origin) = OriginKey::of(next) else {
            return Err(RedirectError::Scheme);
        };
        if has_userinfo(next) {
            return Err(RedirectError::UserInfo);
        }
        if !self.allowed(&origin) {
            return Err(RedirectError::OtherOrigin(origin));
        }
        let hops = self
            .trail
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .hops;
        match &self.config.rule {
            Rule::None => return Ok(TowerAction::Stop),
            Rule::Limited(max) if hops >= *max => return Err(RedirectError::TooMany(*max)),
            Rule::Limited(_) => {}
            Rule::Custom(decide) => {
                let asked = Attempt {
                    status: attempt.status(),
                    next,
                    previous: attempt.previous(),
                    hops,
                };
                match decide(asked).0 {
                    Decision::Follow => {}
                    Decision::Stop => return Ok(TowerAction::Stop),
                    Decision::Error(reason) => return Err(RedirectError::Refused(reason)),
                }
            }
        }
        let chain = match (&mut self.chain, &self.first) {
            (Some(chain), _) => chain,
            (chain @ None, Some(first)) => chain.insert(Chain::of(first, &self.config)),
            // tower-http shows the policy the call's request first.
            (None, None) => return Err(RedirectError::Refused("no first request".into())),
        };
        if chain
            .visited
            .iter()
            .any(|(m, u)| m == attempt.method() && u == next)
        {
            return Err(RedirectError::Loop);
        }
        chain.visited.push((attempt.method().clone(), next.clone()));
        if chain.origin.as_ref() != Some(&origin) {
            self.left = true;
        }
        self.trail
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .hops = hops + 1;
        Ok(TowerAction::Follow)
    }

    /// Removes the caller's credentials from a hop after the chain left the
    /// request's origin.
    fn strip(&self, req: &mut Request<RequestBody>) {
        let headers = req.headers_mut();
        for name in [AUTHORIZATION, PROXY_AUTHORIZATION, COOKIE] {
            headers.remove(name);
        }
        for name in &self.config.secret_headers {
            headers.remove(name);
        }
        let sensitive: Vec<HeaderName> = headers
            .iter()
            .filter(|(_, v)| v.is_sensitive())
            .map(|(n, _)| n.clone())
            .collect();
        for name in sensitive {
            headers.remove(name);
        }
        let strip_query = self.chain.as_ref().map_or(&[][..], |c| &c.strip_query[..]);
        if let Some(uri) = without_params(req.uri(), strip_query) {
            *req.uri_mut() = uri;
        }
    }
}

impl Policy<RequestBody, BoxError> for CallPolicy {
    fn redirect(&mut self, attempt: &TowerAttempt<'_>) -> Result<TowerAction, BoxError> {
        self.decide(attempt).map_err(Into::into)
    }

    fn on_request(&mut self, req: &mut Request<RequestBody>) {
        match &self.first {
            None => {
                // The call's own request: remember what later hops need.
                self.first = Some(First {
                    method: req.method().clone(),
                    uri: req.uri().clone(),
                    extensions: req.extensions().clone(),
                });
            }
            Some(first) => {
                *req.extensions_mut() = first.extensions.clone();
                if self.left {
                    self.strip(req);
                }
                // A hop: its URL, as sent, is the response's.
                self.trail
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .url = Some(req.uri().clone());
            }
        }
    }

    fn clone_body(&self, body: &RequestBody) -> Option<RequestBody> {
        // In memory: replayable. Streamed (`body_stream`, a multipart form
        // with a file): `None`, and tower-http then hands back a 307/308
        // as it came rather than follow it without its body.
        body.try_clone()
    }
}

/// The names of a URL's query parameters, percent-decoded.
fn query_names(uri: &Uri) -> Vec<String> {
    uri.query()
        .map(|q| {
            q.split('&')
                .map(|p| p.split_once('=').map_or(p, |(n, _)| n))
                .map(|n| {
                    percent_encoding::percent_decode_str(n)
                        .decode_utf8_lossy()
                        .into_owned()
                })
                .collect()
        })
        .unwrap_or_default()
}

/// `uri` without the query parameters named in `names` (compared without
/// regard to case, after percent-decoding); `None` when none is there.
fn without_params(uri: &Uri, names: &[String]) -> Option<Uri> {
    let query = uri.query()?;
    let named = |p: &str| {
        let name = p.split_once('=').map_or(p, |(n, _)| n);
        let name = percent_encoding::percent_decode_str(name).decode_utf8_lossy();
        names.iter().any(|s| s.eq_ignore_ascii_case(&name))
    };
    if !query.split('&').any(named) {
        return None;
    }
    let kept: Vec<&str> = query.split('&').filter(|p| !named(p)).collect();
    let mut path_and_query = uri.path().to_owned();
    if !kept.is_empty() {
        path_and_query.push('?');
        path_and_query.push_str(&kept.join("&"));
    }
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(path_and_query.parse().ok()?);
    Uri::from_parts(parts).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uri(s: &str) -> Uri {
        s.parse().expect("uri")
    }

    #[test]
    fn origins_compare_scheme_host_and_port() {
        let a = OriginKey::of(&uri("https://API.example.com/x")).expect("origin");
        assert_eq!(
            Some(&a),
            OriginKey::of(&uri("https://api.example.com:443/y")).as_ref()
        );
        assert_ne!(
            Some(&a),
            OriginKey::of(&uri("http://api.example.com/")).as_ref()
        );
        assert_ne!(
            Some(&a),
            OriginKey::of(&uri("https://api.example.com:8443/")).as_ref()
        );
        assert!(OriginKey::of(&uri("/relative")).is_none());
    }

    #[test]
    fn named_query_parameters_are_removed_and_others_kept() {
        let names = vec!["api_key".to_owned(), "Token".to_owned()];
        let u = uri("http://h/p?a=1&api_key=s&%74oken=t&b=2");
        assert_eq!(
            without_params(&u, &names).expect("changed").to_string(),
            "http://h/p?a=1&b=2"
        );
        assert!(without_params(&uri("http://h/p?a=1"), &names).is_none());
        assert_eq!(
            without_params(&uri("http://h/p?api_key=s"), &names)
                .expect("changed")
                .to_string(),
            "http://h/p"
        );
    }

    #[test]
    fn allow_origin_refuses_what_is_not_an_origin() {
        for bad in ["", "/x", "ftp://h", "http://u:p@h", "not a url"] {
            let err = RedirectPolicy::default()
                .allow_origin(bad)
                .expect_err("not an origin");
            assert_eq!(err.kind(), ErrorKind::Builder, "{bad}");
        }
    }
}
