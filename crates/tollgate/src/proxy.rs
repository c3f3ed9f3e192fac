//! Proxies: [`Proxy`] (HTTP, HTTPS and SOCKS5 proxies, chosen per request
//! by scheme and [`NoProxy`] rules), read from the builder or, when asked,
//! from `HTTPS_PROXY`/`HTTP_PROXY`/`ALL_PROXY`/`NO_PROXY`.
//!
//! The machinery is hyper-util's (`client-proxy`): its `Matcher` decides
//! whether a destination goes through a proxy (curl's `NO_PROXY` rules) and
//! parses a proxy URL's credentials, its `Tunnel` speaks CONNECT and its
//! `SocksV5` the SOCKS5 handshake. Written here, because hyper-util has no
//! such piece: the connector that picks one of them per destination (its
//! connectors each take one fixed proxy), the `Proxy-Authorization` header
//! on requests sent to an HTTP proxy in absolute form (a connector cannot add
//! headers), a one-shot connector handing the tunnels a connection made
//! (and timed) by us, and a typed error: hyper-util's tunnel and SOCKS
//! errors are not public types, so they are sorted here by their variant
//! names.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::PROXY_AUTHORIZATION;
use http::{HeaderValue, Request, Uri};
use hyper_util::client::legacy::connect::proxy::{SocksV5, Tunnel};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::client::proxy::matcher::Matcher;
use tower::{BoxError, Service, ServiceExt};

use crate::error::{Error, ErrorKind};

/// A proxy for some or all of a client's requests, set with
/// [`ClientBuilder::proxy`](crate::ClientBuilder::proxy).
///
/// Schemes: `http://` (plain HTTP requests are sent to it in absolute form,
/// HTTPS ones through a `CONNECT` tunnel), `https://` (the same, over TLS to
/// the proxy; needs the `rustls` feature), `socks5://` (the destination's
/// name resolved here) and `socks5h://` (resolved by the proxy). A URL
/// without a scheme is `http://`. Credentials come from the URL's user
/// information (percent-decoded) or [`basic_auth`](Self::basic_auth).
///
/// ```
/// use tollgate::{NoProxy, Proxy};
///
/// let proxy = Proxy::all("http://proxy.internal:3128")?
///     .basic_auth("me", "s3cret")
///     .no_proxy(NoProxy::from_string("localhost, .internal, 10.0.0.0/8"));
/// assert!(!format!("{proxy:?}").contains("s3cret"));
/// let client = tollgate::Client::builder("https://api.example.com").proxy(proxy).build()?;
/// # let _ = client;
/// # Ok::<(), tollgate::Error>(())
/// ```
///
/// Where credentials go: the proxy's only to the proxy (on the `CONNECT`
/// request for a tunnel, on each request for plain HTTP through an HTTP
/// proxy, in the SOCKS5 handshake), never to the origin; with proxies set, a
/// `Proxy-Authorization` header on a request that does not go to an HTTP
/// proxy in absolute form is removed. The origin's credentials reach an
/// HTTPS origin only inside TLS, so a proxy never sees them; a plain
/// `http://` origin's requests are readable by an HTTP proxy, as they are
/// by anything else on the way.
///
/// Refusals: a tunnel (`CONNECT`, SOCKS5) the proxy refuses is an
/// [`ErrorKind::Proxy`] error (with `status()` 407 when an HTTP proxy asked
/// for credentials). A plain `http://` request sent to an HTTP proxy is
/// answered by the proxy like by any server: a 407 or 403 from it comes
/// back as a response with that status (as with reqwest), which
/// [`ApiResponse::error_for_status`](crate::ApiResponse::error_for_status)
/// turns into an error.
#[derive(Clone)]
pub struct Proxy {
    scope: Scope,
    /// The URL as checked: `scheme://authority/`, the scheme lower-cased
    /// (user information included, percent-encoded as given).
    url: String,
    shown: String,
    auth: Option<Auth>,
    no_proxy: Option<NoProxy>,
    /// A problem with the credentials, reported by the builder.
    error: Option<String>,
}

/// Credentials set with [`Proxy::basic_auth`].
#[derive(Clone)]
struct Auth {
    basic: HeaderValue,
    user: String,
    password: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scope {
    All,
    Http,
    Https,
}

impl fmt::Debug for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Proxy")
            .field("scope", &self.scope)
            .field("url", &self.shown)
            .field(
                "credentials",
                &(self.auth.is_some() || self.url_has_credentials()),
            )
            .field("no_proxy", &self.no_proxy)
            .finish()
    }
}

impl Proxy {
    /// A proxy for every request, `http://` and `https://` alike.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Builder`] for a URL that does not parse, has no host,
    /// or has a scheme other than `http`, `https`, `socks5` and `socks5h`
    /// (in any case: `SOCKS5://` is `socks5://`); for one with a path other
    /// than `/`, a query or a fragment (an unencoded `/`, `?` or `#` in a
    /// password cuts the URL there), more than one `@` (an `@` in a
    /// password must be `%40`), or a port outside 1..=65535; and for
    /// credentials in it that [`basic_auth`](Self::basic_auth) would refuse
    /// once percent-decoded (or that are not UTF-8). The message shows no
    /// credentials.
    pub fn all(url: impl AsRef<str>) -> Result<Proxy, Error> {
        Proxy::new(Scope::All, url.as_ref())
    }

    /// A proxy for `http://` requests only.
    ///
    /// # Errors
    ///
    /// As [`all`](Self::all).
    pub fn http(url: impl AsRef<str>) -> Result<Proxy, Error> {
        Proxy::new(Scope::Http, url.as_ref())
    }

    /// A proxy for `https://` requests only.
    ///
    /// # Errors
    ///
    /// As [`all`](Self::all).
    pub fn https(url: impl AsRef<str>) -> Result<Proxy, Error> {
        Proxy::new(Scope::Https, url.as_ref())
    }

    fn new(scope: Scope, url: &str) -> Result<Proxy, Error> {
        let (url, shown) = check_url(url).map_err(|e| Error::new(ErrorKind::Builder, e))?;
        Ok(Proxy {
            scope,
            url,
            shown,
            auth: None,
            no_proxy: None,
            error: None,
        })
    }

    fn url_has_credentials(&self) -> bool {
        self.url
            .parse::<Uri>()
            .ok()
            .and_then(|u| u.authority().map(|a| a.as_str().contains('@')))
            .unwrap_or(false)
    }

    /// The error [`ClientBuilder::proxy`](crate::ClientBuilder::proxy)
    /// reports for this proxy, if any.
    pub(crate) fn error(&self) -> Option<Error> {
        self.error
            .as_ref()
            .map(|e| Error::new(ErrorKind::Builder, e.clone()))
    }

    /// Credentials for the proxy: `Proxy-Authorization: Basic ...` for an
    /// HTTP(S) proxy, the username/password method for SOCKS5. They replace
    /// any in the URL. A user with `:` or either part with a control
    /// character, or for a SOCKS5 proxy either part empty or over 255 bytes
    /// (RFC 1929: `socks5://user@host` with no password is one), is an [`ErrorKind::Builder`] from
    /// [`ClientBuilder::build`](crate::ClientBuilder::build).
    pub fn basic_auth(mut self, user: impl Into<String>, password: impl Into<String>) -> Proxy {
        let (user, password) = (user.into(), password.into());
        let scheme = self.url.split_once("://").map_or("", |(scheme, _)| scheme);
        match check_credentials(scheme, &user, &password) {
            Ok(basic) => {
                self.auth = Some(Auth {
                    basic,
                    user,
                    password,
                });
            }
            Err(e) => self.error = Some(e),
        }
        self
    }

    /// Destinations that bypass this proxy (`None`: none do).
    pub fn no_proxy(mut self, no_proxy: Option<NoProxy>) -> Proxy {
        self.no_proxy = no_proxy;
        self
    }
}

/// Destinations that bypass a proxy, with curl's `NO_PROXY` rules:
/// comma-separated entries, each an IP address, a network
/// (`192.168.0.0/16`), a domain that matches itself and its subdomains
/// (`example.com` and `.example.com` alike), or `*` for everything (IP
/// addresses included). Ports are not looked at: an entry with a port
/// (`localhost:8080`, `127.0.0.1:8080`, `[::1]:8080`) is taken for its host,
/// and matches that host on every port (the simpler rule to state; Go's
/// rule matches the port as well).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NoProxy(String);

impl NoProxy {
    /// The rules of a `NO_PROXY` list; `None` when it has no entry.
    pub fn from_string(list: &str) -> Option<NoProxy> {
        list.split(',')
            .any(|s| !s.trim().is_empty())
            .then(|| NoProxy(list.to_owned()))
    }
}

/// The environment variables [`proxy_from_env`](crate::ClientBuilder::proxy_from_env)
/// reads, upper case first, then lower case.
pub(crate) const ENV_VARS: [[&str; 2]; 4] = [
    ["ALL_PROXY", "all_proxy"],
    ["HTTP_PROXY", "http_proxy"],
    ["HTTPS_PROXY", "https_proxy"],
    ["NO_PROXY", "no_proxy"],
];

/// The settings of one source of proxies: a [`Proxy`] from the builder or
/// the environment's variables.
#[derive(Clone)]
pub(crate) enum ProxySpec {
    One(Proxy),
    Env {
        all: String,
        http: String,
        https: String,
        no: String,
    },
}

impl fmt::Debug for ProxySpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProxySpec::One(p) => p.fmt(f),
            ProxySpec::Env { .. } => f.write_str("ProxySpec::Env"),
        }
    }
}

impl ProxySpec {
    /// Whether it names a proxy at all (an environment may name none).
    pub(crate) fn is_set(&self) -> bool {
        match self {
            ProxySpec::One(_) => true,
            ProxySpec::Env {
                all, http, https, ..
            } => !(all.is_empty() && http.is_empty() && https.is_empty()),
        }
    }

    /// The proxies an environment names, read through `var` (a lookup of
    /// one variable). In a CGI program (`REQUEST_METHOD` set) `HTTP_PROXY`
    /// is ignored in every spelling (as curl and Go do): a request's
    /// `Proxy:` header arrives there as `HTTP_PROXY` ("httpoxy"), and where
    /// names compare without regard to case (Windows) `http_proxy` is the
    /// same variable.
    pub(crate) fn from_env(var: impl Fn(&str) -> Option<String>) -> Result<ProxySpec, Error> {
        let cgi = var("REQUEST_METHOD").is_some();
        let mut values: [String; 4] = Default::default();
        for (value, names) in values.iter_mut().zip(ENV_VARS) {
            for name in names {
                if cgi && name.eq_ignore_ascii_case("HTTP_PROXY") {
                    continue;
                }
                if let Some(v) = var(name).filter(|v| !v.trim().is_empty()) {
                    if name.eq_ignore_ascii_case("NO_PROXY") {
                        *value = v;
                    } else {
                        // A variable set to something unusable must not
                        // mean "no proxy": traffic meant for a proxy would
                        // go direct.
                        *value = check_url(v.trim())
                            .map_err(|e| Error::new(ErrorKind::Builder, format!("{name}: {e}")))?
                            .0;
                    }
                    break;
                }
            }
        }
        let [all, http, https, no] = values;
        Ok(ProxySpec::Env {
            all,
            http,
            https,
            no,
        })
    }
}

/// The URL with a scheme, or `http://` before it.
fn with_scheme(url: &str) -> String {
    if url.contains("://") {
        url.to_owned()
    } else {
        format!("http://{url}")
    }
}

/// Checks a proxy URL: the URL hyper-util's matcher is given (its scheme
/// lower-cased, its path `/`), and the URL as it may be shown
/// (`scheme://host:port`, no credentials). The errors never show the URL's
/// user information.
///
/// Refused, because each would send traffic or credentials somewhere other
/// than the URL seems to say: a path other than `/`, a query or a fragment
/// (an unencoded `/`, `?` or `#` in a password cuts the URL there), more
/// than one `@` (the host is taken after the last, the credentials before
/// the first), a port outside 1..=65535 (it would become the default port),
/// credentials that [`Proxy::basic_auth`] would refuse once percent-decoded
/// (a `:` in the user, control characters, text that is not UTF-8), and
/// SOCKS5 credentials over 255 bytes (RFC 1929).
fn check_url(url: &str) -> Result<(String, String), String> {
    let url = with_scheme(url);
    let uri: Uri = url.parse().map_err(|_| {
        "the proxy URL is not a valid URL (user information must be percent-encoded)".to_owned()
    })?;
    let scheme = uri.scheme_str().unwrap_or("http").to_ascii_lowercase();
    if !matches!(scheme.as_str(), "http" | "https" | "socks5" | "socks5h") {
        return Err(format!(
            "unsupported proxy scheme `{scheme}` (http, https, socks5 and socks5h are)"
        ));
    }
    #[cfg(not(feature = "rustls"))]
    if scheme == "https" {
        return Err(
            "an https proxy needs TLS, and tollgate was built without its `rustls` feature"
                .to_owned(),
        );
    }
    let rest = url.split_once("://").map_or("", |(_, rest)| rest);
    let (authority, tail) = rest.split_at(rest.find(['/', '?', '#']).unwrap_or(rest.len()));
    if !(tail.is_empty() || tail == "/") {
        return Err(
            "the proxy URL has a path, a query or a fragment (a proxy URL is \
                    scheme://[user:password@]host[:port]; a `/`, `?` or `#` in the user \
                    information must be percent-encoded)"
                .to_owned(),
        );
    }
    if authority.matches('@').count() > 1 {
        return Err(
            "the proxy URL has more than one `@` (an `@` in the user information must be \
             percent-encoded as %40)"
                .to_owned(),
        );
    }
    let normalized = format!("{scheme}://{authority}/");
    let uri: Uri = normalized.parse().map_err(|_| {
        "the proxy URL is not a valid URL (user information must be percent-encoded)".to_owned()
    })?;
    if uri.authority().map(|a| a.as_str()) != Some(authority) {
        return Err("the proxy URL is not a valid URL".to_owned());
    }
    let host = uri
        .host()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| "the proxy URL has no host".to_owned())?;
    // Read from the text: the http crate takes a port that does not fit in
    // 16 bits and then reports none, which would mean the default port.
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, hp)| hp);
    let port_text = match host_port.strip_prefix('[') {
        Some(bracketed) => bracketed
            .split_once(']')
            .and_then(|(_, rest)| rest.strip_prefix(':')),
        None => host_port.rsplit_once(':').map(|(_, port)| port),
    };
    let port = match port_text.filter(|p| !p.is_empty()) {
        None => default_port(&scheme),
        Some(port) => port
            .parse::<u16>()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| "the proxy URL's port is not a number from 1 to 65535".to_owned())?,
    };
    if let Some((userinfo, _)) = authority.rsplit_once('@') {
        let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
        let decode = |part: &str| {
            percent_encoding::percent_decode_str(part)
                .decode_utf8()
                .map(|s| s.into_owned())
                .map_err(|_| {
                    "the proxy URL's user information is not UTF-8 once percent-decoded".to_owned()
                })
        };
        let (user, password) = (decode(user)?, decode(password)?);
        check_credentials(&scheme, &user, &password)
            .map_err(|e| format!("{e} (in the proxy URL)"))?;
    }
    Ok((normalized, format!("{scheme}://{host}:{port}")))
}

/// Holds credentials to [`Proxy::basic_auth`]'s rules (tollgate-core's
/// checks), and SOCKS5 ones to RFC 1929's 1 to 255 bytes each. The message never
/// shows them.
fn check_credentials(scheme: &str, user: &str, password: &str) -> Result<HeaderValue, String> {
    let credential = tollgate_core::Credential::basic(user, password)
        .map_err(|e| format!("proxy credentials: {e}"))?;
    // RFC 1929 gives each a length byte of 1 to 255: a longer one wraps
    // the byte and desynchronises the handshake, and an empty one is not a
    // username/password at all (a proxy that needs none takes no
    // `basic_auth`).
    let fits = |part: &str| (1..=255).contains(&part.len());
    if scheme.starts_with("socks5") && !(fits(user) && fits(password)) {
        return Err(
            "proxy credentials: a SOCKS5 user name and password are each 1 to 255 bytes \
             (RFC 1929)"
                .to_owned(),
        );
    }
    let mut carrier = Request::new(());
    credential.apply(&mut carrier, true);
    let mut value = carrier
        .headers_mut()
        .remove(http::header::AUTHORIZATION)
        .ok_or_else(|| "proxy credentials: not a header".to_owned())?;
    value.set_sensitive(true);
    Ok(value)
}

/// A `NO_PROXY` list as hyper-util's matcher is given it: whether it has
/// `*` (everything bypasses; handled here, as the matcher does not apply
/// `*` to IP addresses), and the other entries with any port taken off
/// (`localhost:8080`, `127.0.0.1:8080`, `[::1]:8080`): a destination is
/// matched by its host, whatever its port. The matcher would take such an
/// entry for a name that matches nothing.
fn no_proxy_rules(list: &str) -> (bool, String) {
    let mut all = false;
    let entries: Vec<&str> = list
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .filter_map(|e| {
            all |= e == "*";
            (e != "*").then(|| without_port(e))
        })
        .collect();
    (all, entries.join(","))
}

/// A `NO_PROXY` entry without its `:port`, if it has one; a bare IPv6
/// address (more than one `:`) is left whole, a bracketed one unbracketed.
fn without_port(entry: &str) -> &str {
    let is_port = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    if let Some(inner) = entry.strip_prefix('[') {
        return match inner.split_once(']') {
            Some((host, "")) => host,
            Some((host, rest)) if rest.strip_prefix(':').is_some_and(is_port) => host,
            _ => entry,
        };
    }
    match entry.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') && is_port(port) => host,
        _ => entry,
    }
}

fn default_port(scheme: &str) -> u16 {
    match scheme {
        "https" => 443,
        "socks5" | "socks5h" => 1080,
        _ => 80,
    }
}

/// The proxies of one client, compiled for matching.
pub(crate) struct Proxies {
    entries: Vec<Entry>,
}

struct Entry {
    matcher: Matcher,
    auth: Option<Auth>,
    /// `NO_PROXY` has `*`: every destination bypasses this proxy
    /// (hyper-util's matcher compares `*` with names only, not addresses).
    bypass_all: bool,
}

impl fmt::Debug for Proxies {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Proxies")
            .field("entries", &self.entries.len())
            .finish()
    }
}

/// How a request reaches its destination through a proxy.
#[derive(Clone)]
pub(crate) struct Via {
    /// `http://host:port` (or `https://` for a TLS proxy): what the base
    /// connector is called with.
    proxy: Uri,
    /// The proxy as errors show it.
    shown: String,
    how: How,
    basic: Option<HeaderValue>,
    socks_auth: Option<(String, String)>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum How {
    /// Plain HTTP sent to the proxy in absolute form.
    Forward,
    /// A `CONNECT` tunnel.
    Connect,
    /// A SOCKS5 tunnel; `true` when the proxy resolves the name.
    Socks { remote_dns: bool },
}

impl Proxies {
    /// `None` when there is no proxy to match.
    pub(crate) fn compile(specs: &[ProxySpec]) -> Option<Arc<Proxies>> {
        let entries: Vec<Entry> = specs
            .iter()
            .map(|spec| match spec {
                ProxySpec::One(p) => {
                    let builder = Matcher::builder();
                    let builder = match p.scope {
                        Scope::All => builder.all(p.url.as_str()),
                        Scope::Http => builder.http(p.url.as_str()),
                        Scope::Https => builder.https(p.url.as_str()),
                    };
                    let (bypass_all, no) =
                        no_proxy_rules(p.no_proxy.as_ref().map_or("", |n| n.0.as_str()));
                    Entry {
                        matcher: builder.no(no).build(),
                        auth: p.auth.clone(),
                        bypass_all,
                    }
                }
                ProxySpec::Env {
                    all,
                    http,
                    https,
                    no,
                } => {
                    let (bypass_all, no) = no_proxy_rules(no);
                    Entry {
                        matcher: Matcher::builder()
                            .all(all)
                            .http(http)
                            .https(https)
                            .no(no)
                            .build(),
                        auth: None,
                        bypass_all,
                    }
                }
            })
            .collect();
        (!entries.is_empty()).then(|| Arc::new(Proxies { entries }))
    }

    /// The first proxy that takes `dst`, if any.
    pub(crate) fn route(&self, dst: &Uri) -> Option<Via> {
        let (intercept, auth) = self
            .entries
            .iter()
            .filter(|e| !e.bypass_all)
            .find_map(|e| e.matcher.intercept(dst).map(|i| (i, &e.auth)))?;
        let uri = intercept.uri();
        let scheme = uri.scheme_str().unwrap_or("http").to_ascii_lowercase();
        let host = uri.host()?;
        let port = uri.port_u16().unwrap_or(default_port(&scheme));
        let how = match scheme.as_str() {
            "socks5" => How::Socks { remote_dns: false },
            "socks5h" => How::Socks { remote_dns: true },
            _ if dst.scheme_str() == Some("https") => How::Connect,
            _ => How::Forward,
        };
        let connect_scheme = if scheme == "https" { "https" } else { "http" };
        let proxy = format!("{connect_scheme}://{host}:{port}/").parse().ok()?;
        let (basic, socks_auth) = match auth {
            Some(a) => (
                Some(a.basic.clone()),
                Some((a.user.clone(), a.password.clone())),
            ),
            None => (
                intercept.basic_auth().cloned(),
                intercept
                    .raw_auth()
                    .map(|(u, p)| (u.to_owned(), p.to_owned())),
            ),
        };
        Some(Via {
            proxy,
            shown: format!("{scheme}://{host}:{port}"),
            how,
            basic,
            socks_auth,
        })
    }
}

/// Puts the proxy's `Proxy-Authorization` on requests sent to an HTTP
/// proxy in absolute form, and takes the header off every other request
/// (direct, or through a tunnel, where it would reach the origin).
#[derive(Clone, Debug)]
pub(crate) struct ProxyHeaders<S> {
    inner: S,
    proxies: Option<Arc<Proxies>>,
}

impl<S> ProxyHeaders<S> {
    pub(crate) fn new(inner: S, proxies: Option<Arc<Proxies>>) -> Self {
        ProxyHeaders { inner, proxies }
    }
}

impl<S, B> Service<Request<B>> for ProxyHeaders<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        if let Some(proxies) = &self.proxies {
            match proxies.route(req.uri()) {
                Some(Via {
                    how: How::Forward,
                    basic: Some(basic),
                    ..
                }) => {
                    req.headers_mut().insert(PROXY_AUTHORIZATION, basic);
                }
                Some(Via {
                    how: How::Forward, ..
                }) => {}
                _ => {
                    req.headers_mut().remove(PROXY_AUTHORIZATION);
                }
            }
        }
        self.inner.call(req)
    }
}

/// The error of a connection through a proxy.
#[derive(Debug)]
pub(crate) struct ProxyError {
    shown: String,
    failure: Failure,
    detail: String,
    source: Option<BoxError>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Failure {
    /// No connection to the proxy.
    Unreachable,
    /// The destination's name did not resolve (`socks5://`).
    Dns,
    /// The proxy asked for credentials, or refused the ones it got.
    AuthRequired,
    /// The proxy refused the tunnel.
    Refused,
    /// The proxy broke the handshake.
    Handshake,
}

impl ProxyError {
    /// The facade's kind: a proxy that could not be reached (or a name that
    /// did not resolve) is [`ErrorKind::Connect`], like any connection that
    /// could not be made; a proxy that answered and refused is
    /// [`ErrorKind::Proxy`].
    pub(crate) fn kind(&self) -> ErrorKind {
        match self.failure {
            Failure::Unreachable | Failure::Dns => ErrorKind::Connect,
            _ => ErrorKind::Proxy,
        }
    }

    /// 407 when the proxy asked for credentials.
    pub(crate) fn status(&self) -> Option<http::StatusCode> {
        (self.failure == Failure::AuthRequired && !self.shown.starts_with("socks"))
            .then_some(http::StatusCode::PROXY_AUTHENTICATION_REQUIRED)
    }

    fn new(via: &Via, failure: Failure, detail: impl Into<String>) -> Self {
        let error = ProxyError {
            shown: via.shown.clone(),
            failure,
            detail: detail.into(),
            source: None,
        };
        if error.is_refusal() {
            // What the retry layer reads: a refusal, never transient.
            error.with_source(std::io::Error::from(std::io::ErrorKind::PermissionDenied))
        } else {
            error
        }
    }

    /// The proxy answered and said no: asking again would get the same.
    fn is_refusal(&self) -> bool {
        matches!(self.failure, Failure::AuthRequired | Failure::Refused)
    }

    /// Sets the error's source; a refusal's source is a `PermissionDenied`
    /// I/O error wrapping it, which `tollgate_core::TransportFailure` reads
    /// as [`Refused`](tollgate_core::TransportFailure::Refused): never
    /// retried.
    fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        let source = source.into();
        self.source = Some(
            if self.is_refusal()
                && source
                    .downcast_ref::<std::io::Error>()
                    .is_none_or(|e| e.kind() != std::io::ErrorKind::PermissionDenied)
            {
                Box::new(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    source,
                ))
            } else {
                source
            },
        );
        self
    }

    /// Sorts hyper-util's tunnel error (not a public type) by its variant.
    fn tunnel(via: &Via, err: impl std::error::Error + Send + Sync + 'static) -> Self {
        let variant = format!("{err:?}");
        let (failure, detail) = if variant.starts_with("ProxyAuthRequired") {
            (
                Failure::AuthRequired,
                if via.basic.is_some() {
                    "refused the credentials it was given (407)"
                } else {
                    "asked for credentials (407) and none were set"
                },
            )
        } else if variant.starts_with("TunnelUnsuccessful") {
            (Failure::Refused, "refused the CONNECT tunnel")
        } else {
            (Failure::Handshake, "broke off the CONNECT handshake")
        };
        ProxyError::new(via, failure, detail).with_source(err)
    }

    /// Sorts hyper-util's SOCKS error (not a public type) by its variant.
    fn socks(via: &Via, err: impl fmt::Debug + fmt::Display) -> Self {
        let variant = format!("{err:?}");
        let failure = if variant.starts_with("V5(Auth") {
            Failure::AuthRequired
        } else if variant.starts_with("V5(Command") {
            Failure::Refused
        } else {
            Failure::Handshake
        };
        // The message names the SOCKS reply; the error holds no credential.
        ProxyError::new(via, failure, format!("SOCKS5: {err}"))
    }
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the proxy {} {}", self.shown, self.detail)
    }
}

impl std::error::Error for ProxyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// A connector that hands out one connection made beforehand: hyper-util's
/// tunnels call a connector for the proxy, and this one gives them the
/// connection the proxy connector made (and whose failure it reported).
struct Once<T>(Option<T>);

impl<T> Service<Uri> for Once<T> {
    type Response = T;
    type Error = io::Error;
    type Future = std::future::Ready<Result<T, io::Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), io::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        std::future::ready(
            self.0
                .take()
                .ok_or_else(|| io::Error::other("the proxy connection was used already")),
        )
    }
}

/// A connection to the proxy: TCP, or TLS over TCP for an `https://` proxy.
#[cfg(feature = "rustls")]
type ProxyIo = hyper_rustls::MaybeHttpsStream<hyper_util::rt::TokioIo<tokio::net::TcpStream>>;
/// A connection to the proxy: TCP.
#[cfg(not(feature = "rustls"))]
type ProxyIo = hyper_util::rt::TokioIo<tokio::net::TcpStream>;

/// The connector under TLS: direct, or through the proxy `route` picks.
#[derive(Clone)]
pub(crate) struct ProxyConnector {
    http: HttpConnector,
    /// Reaches a proxy: TCP, or TLS for an `https://` proxy.
    #[cfg(feature = "rustls")]
    to_proxy: hyper_rustls::HttpsConnector<HttpConnector>,
    proxies: Option<Arc<Proxies>>,
}

impl fmt::Debug for ProxyConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxyConnector")
            .field("proxies", &self.proxies)
            .finish_non_exhaustive()
    }
}

impl ProxyConnector {
    /// `proxy_tls` is the TLS set-up towards an `https://` proxy.
    pub(crate) fn new(
        http: HttpConnector,
        proxies: Option<Arc<Proxies>>,
        #[cfg(feature = "rustls")] proxy_tls: rustls::ClientConfig,
    ) -> Self {
        ProxyConnector {
            #[cfg(feature = "rustls")]
            to_proxy: hyper_rustls::HttpsConnector::from((http.clone(), proxy_tls)),
            http,
            proxies,
        }
    }
}

/// A connection made by [`ProxyConnector`].
#[derive(Debug)]
pub(crate) struct Conn {
    io: ProxyIo,
    /// Requests on it go to an HTTP proxy in absolute form.
    forward: bool,
}

impl Connection for Conn {
    fn connected(&self) -> Connected {
        self.io.connected().proxy(self.forward)
    }
}

impl hyper::rt::Read for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
}

/// `dst` with its port written out (hyper-util's tunnels assume 443 for a
/// URI without one, also for `http`).
fn with_port(dst: &Uri) -> Result<Uri, BoxError> {
    let host = dst.host().ok_or("the URL has no host")?;
    let port = dst
        .port_u16()
        .unwrap_or(if dst.scheme_str() == Some("https") {
            443
        } else {
            80
        });
    let scheme = dst.scheme_str().unwrap_or("http");
    Ok(format!("{scheme}://{host}:{port}/").parse()?)
}

impl Service<Uri> for ProxyConnector {
    type Response = Conn;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Conn, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // HttpConnector is always ready, and each call below uses a clone.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        // Without TLS, nothing may go out to an https origin in cleartext,
        // through a tunnel or not.
        #[cfg(not(feature = "rustls"))]
        if dst.scheme() == Some(&http::uri::Scheme::HTTPS) {
            return Box::pin(async {
                Err(
                    "an https URL, and tollgate was built without TLS (its `rustls` feature \
                     is off): refused rather than sent in cleartext"
                        .into(),
                )
            });
        }
        let via = self.proxies.as_ref().and_then(|p| p.route(&dst));
        let Some(via) = via else {
            let connecting = self.http.clone().oneshot(dst);
            return Box::pin(async move {
                let tcp = connecting.await?;
                #[cfg(feature = "rustls")]
                let io = hyper_rustls::MaybeHttpsStream::Http(tcp);
                #[cfg(not(feature = "rustls"))]
                let io = tcp;
                Ok(Conn { io, forward: false })
            });
        };
        #[cfg(feature = "rustls")]
        let connecting = self.to_proxy.clone().oneshot(via.proxy.clone());
        #[cfg(not(feature = "rustls"))]
        let connecting = self.http.clone().oneshot(via.proxy.clone());
        Box::pin(async move {
            let io = connecting.await.map_err(|e| {
                ProxyError::new(&via, Failure::Unreachable, "could not be reached").with_source(e)
            })?;
            let io = match via.how {
                How::Forward => return Ok(Conn { io, forward: true }),
                How::Connect => {
                    let mut tunnel = Tunnel::new(via.proxy.clone(), Once(Some(io)));
                    if let Some(basic) = via.basic.clone() {
                        tunnel = tunnel.with_auth(basic);
                    }
                    tunnel
                        .oneshot(with_port(&dst)?)
                        .await
                        .map_err(|e| ProxyError::tunnel(&via, e))?
                }
                How::Socks { remote_dns } => {
                    let target = if remote_dns {
                        with_port(&dst)?
                    } else {
                        resolve(&dst).await.map_err(|e| {
                            ProxyError::new(
                                &via,
                                Failure::Dns,
                                "was not used: the name did not resolve",
                            )
                            .with_source(e)
                        })?
                    };
                    // Names are resolved above, never by hyper-util's
                    // blocking lookup.
                    let mut socks =
                        SocksV5::new(via.proxy.clone(), Once(Some(io))).local_dns(false);
                    if let Some((user, password)) = via.socks_auth.clone() {
                        socks = socks.with_auth(user, password);
                    }
                    socks
                        .oneshot(target)
                        .await
                        .map_err(|e| ProxyError::socks(&via, e))?
                }
            };
            Ok(Conn { io, forward: false })
        })
    }
}

/// `dst` with its host resolved here (`socks5://`), without blocking the
/// runtime (hyper-util's own local resolution is a blocking lookup).
async fn resolve(dst: &Uri) -> Result<Uri, BoxError> {
    let dst = with_port(dst)?;
    let host = dst.host().ok_or("the URL has no host")?;
    let port = dst.port_u16().unwrap_or(80);
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if bare.parse::<std::net::IpAddr>().is_ok() {
        return Ok(dst);
    }
    // The first IPv4 address, else the first: a proxy is likelier to reach
    // IPv4, and the SOCKS5 request carries one address only.
    let addrs: Vec<std::net::SocketAddr> = tokio::net::lookup_host((bare, port)).await?.collect();
    let addr = addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| addrs.first())
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address for the host"))?;
    let scheme = dst.scheme_str().unwrap_or("http");
    Ok(format!("{scheme}://{addr}/").parse()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(specs: &[ProxySpec], dst: &str) -> Option<Via> {
        Proxies::compile(specs)?.route(&dst.parse().expect("uri"))
    }

    #[test]
    fn bad_proxy_urls_are_builder_errors_that_hide_credentials() {
        for url in [
            "ftp://p:1",
            "http://",
            "socks4://p:1",
            "http://us er:pw@p:1",
        ] {
            let err = Proxy::all(url).expect_err(url);
            assert_eq!(err.kind(), ErrorKind::Builder, "{url}");
        }
        let err = Proxy::all("gopher://me:s3cret@p:1").expect_err("scheme");
        assert!(!format!("{err} {err:?}").contains("s3cret"));
    }

    #[test]
    fn the_scheme_of_the_destination_picks_the_proxy() {
        let specs = [
            ProxySpec::One(Proxy::http("http://h:1").expect("proxy")),
            ProxySpec::One(Proxy::https("socks5h://s:2").expect("proxy")),
        ];
        let via = route(&specs, "http://a.test/").expect("http proxied");
        assert!(via.how == How::Forward && via.shown == "http://h:1");
        let via = route(&specs, "https://a.test/").expect("https proxied");
        assert!(via.how == How::Socks { remote_dns: true } && via.shown == "socks5h://s:2");
    }

    #[test]
    fn credentials_in_the_url_are_decoded_and_never_shown() {
        let p = Proxy::all("http://me:s%40cret@p:3128").expect("proxy");
        assert!(!format!("{p:?}").contains("cret"));
        let via = route(&[ProxySpec::One(p)], "https://a.test/").expect("proxied");
        assert!(via.how == How::Connect);
        let expected = check_credentials("http", "me", "s@cret").expect("header");
        assert_eq!(via.basic.as_ref(), Some(&expected));
        assert_eq!(via.shown, "http://p:3128");
    }

    #[test]
    fn no_proxy_bypasses_and_env_is_read_through_the_given_lookup() {
        let env = |name: &str| match name {
            "https_proxy" => Some("http://p:1".to_owned()),
            "NO_PROXY" => Some("127.0.0.1, .internal".to_owned()),
            _ => None,
        };
        let spec = ProxySpec::from_env(env).expect("env");
        assert!(route(std::slice::from_ref(&spec), "https://127.0.0.1:9/").is_none());
        assert!(route(std::slice::from_ref(&spec), "https://x.internal/").is_none());
        assert!(route(std::slice::from_ref(&spec), "http://a.test/").is_none());
        assert!(route(&[spec], "https://a.test/").is_some());
    }

    #[test]
    fn an_unusable_env_proxy_is_an_error_not_a_direct_connection() {
        let env = |name: &str| (name == "HTTPS_PROXY").then(|| "ftp://me:s3cret@p".to_owned());
        let err = ProxySpec::from_env(env).expect_err("bad scheme");
        assert!(err.to_string().contains("HTTPS_PROXY"), "{err}");
        assert!(!err.to_string().contains("s3cret"));
    }

    #[test]
    fn the_transport_settings_debug_shows_no_proxy_credentials() {
        let mut cfg = crate::transport::TransportConfig::default();
        cfg.proxies.push(ProxySpec::One(
            Proxy::all("http://me:url-s3cret@p:1")
                .expect("proxy")
                .basic_auth("me", "auth-s3cret"),
        ));
        let env =
            |name: &str| (name == "ALL_PROXY").then(|| "socks5://u:env-s3cret@s:2".to_owned());
        cfg.proxies
            .push(ProxySpec::from_env(env).expect("env proxy"));
        let shown = format!("{cfg:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("http://p:1"), "{shown}");
        assert_eq!(NoProxy::from_string(" , "), None);
    }

    #[test]
    fn no_proxy_entries_lose_their_port_and_star_is_everything() {
        assert_eq!(
            no_proxy_rules(
                " localhost:8080, 127.0.0.1:1, [::1]:443, [::2], ::3, 10.0.0.0/8, a.test:x"
            ),
            (
                false,
                "localhost,127.0.0.1,::1,::2,::3,10.0.0.0/8,a.test:x".to_owned()
            )
        );
        assert_eq!(no_proxy_rules("a.test, *"), (true, "a.test".to_owned()));
        let p = Proxy::all("SOCKS5h://p.test:1").expect("proxy");
        assert_eq!(p.url, "socks5h://p.test:1/");
        let spec = ProxySpec::One(p.no_proxy(NoProxy::from_string("*")));
        assert!(route(&[spec], "http://[::1]:9/").is_none());
    }

    #[test]
    fn cgi_programs_ignore_http_proxy() {
        let env = |name: &str| match name {
            "REQUEST_METHOD" => Some("GET".to_owned()),
            "HTTP_PROXY" => Some("http://evil:1".to_owned()),
            _ => None,
        };
        let spec = ProxySpec::from_env(env).expect("env");
        assert!(route(&[spec], "http://a.test/").is_none());
    }
}
