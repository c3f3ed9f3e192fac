//! [`ClientBuilder`]: a client's settings, and the layers it switches on.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, USER_AGENT};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response};
use http_body::Body as HttpBody;
use tower::{BoxError, Layer, Service};

use crate::client::{
    Client, ClientInner, DEFAULT_MAX_RESPONSE_BODY, DEFAULT_REQUEST_ID_HEADER,
    DEFAULT_SENSITIVE_QUERY_PARAMS, DEFAULT_TIMEOUT,
};
use crate::endpoint::Endpoint;
use crate::error::{Error, ErrorKind};
use crate::stack::{AttemptService, Layers, Stack};
use crate::transport::{self, RequestBody, TransportConfig};
use crate::url::Origins;

/// Configures and builds a [`Client`].
///
/// Options are consuming setters; invalid input (a bad URL, a header value
/// with CR or LF) is reported by [`build`](ClientBuilder::build), never by a
/// panic.
///
/// ```
/// use std::time::Duration;
///
/// # #[cfg(feature = "rustls")] {
/// let client = tollgate::Client::builder("https://api.example.com/v1")
///     .user_agent("my-app/1.0")
///     .default_header("x-tenant", "acme")
///     .timeout(Duration::from_secs(5))
///     .build()?;
/// assert_eq!(client.base_url(), "https://api.example.com/v1");
/// # }
/// # Ok::<(), tollgate::Error>(())
/// ```
pub struct ClientBuilder {
    base: String,
    headers: HeaderMap,
    default_query: Vec<crate::endpoint::QueryPair>,
    endpoints: Vec<Endpoint>,
    request_id: Option<HeaderName>,
    error: Option<Error>,
    timeout: Option<Duration>,
    max_body: usize,
    sensitive_query: Vec<String>,
    transport_config: TransportConfig,
    /// A transport of the caller's own, kept generic until `build` so that
    /// the stack over it is boxed once.
    transport: Option<CustomTransport>,
    /// The layers switched on (see `stack.rs`); auth is resolved at build.
    layers: Layers,
    #[cfg(feature = "auth")]
    auth: Option<Auth>,
    /// Position 4, made into a layer at `build`.
    #[cfg(feature = "redirect")]
    redirect: crate::RedirectPolicy,
    /// The header and query names of the builder's API key, kept off a
    /// redirect to another origin.
    #[cfg_attr(not(feature = "redirect"), allow(dead_code))]
    secret_headers: Vec<HeaderName>,
    #[cfg_attr(not(feature = "redirect"), allow(dead_code))]
    secret_query: Vec<String>,
    /// The codecs decoded (position 10b), each on with its feature: gzip,
    /// deflate, brotli, zstd.
    #[cfg_attr(
        not(any(
            feature = "gzip",
            feature = "deflate",
            feature = "brotli",
            feature = "zstd"
        )),
        allow(dead_code)
    )]
    codecs: [bool; 4],
    /// No base URL: requests take absolute URLs (`Client::builder_without_base`).
    without_base: bool,
    /// Origins besides the base URL's that absolute URLs may go to.
    allowed_origins: Vec<String>,
    /// Whether calls send a W3C `traceparent`.
    traceparent: bool,
    /// The most bytes of a body logged, if bodies are logged.
    log_bodies: Option<std::num::NonZeroUsize>,
}

/// Builds the stack over a caller's transport: the closure keeps its type.
type CustomTransport = Box<dyn FnOnce(Finish<'_>) -> Result<Stack, Error> + Send + Sync>;

/// What building the stack over a transport needs from `build`.
struct Finish<'a> {
    layers: Layers,
    #[cfg(feature = "auth")]
    auth: Option<Auth>,
    base: &'a Origins,
    max_body: usize,
}

impl Finish<'_> {
    /// Resolves the auth layer (an OAuth2 token source asks over `transport`
    /// itself, below every layer, so the API's own credentials never reach
    /// the token endpoint) and builds the stack over `transport`.
    #[cfg_attr(not(feature = "auth"), allow(clippy::unnecessary_wraps))]
    fn over<T, B>(self, transport: T) -> Result<Stack, Error>
    where
        T: Service<Request<RequestBody>, Response = Response<B>> + Clone + Send + Sync + 'static,
        T::Error: Into<BoxError>,
        T::Future: Send + 'static,
        B: HttpBody<Data = Bytes, Error: Into<BoxError>> + Send + 'static,
    {
        #[allow(unused_mut, reason = "the auth feature sets a layer")]
        let mut layers = self.layers;
        #[cfg(feature = "auth")]
        if let Some(auth) = self.auth {
            layers.auth = Some(auth_layer(auth, self.base, transport.clone())?);
        }
        #[cfg(not(feature = "auth"))]
        let _ = self.base;
        Ok(layers.build(transport, self.max_body))
    }
}

/// The credential configured on a [`ClientBuilder`].
#[cfg(feature = "auth")]
enum Auth {
    Layer(tollgate_auth::AuthLayer),
    ClientCredentials {
        token_url: String,
        client_id: String,
        client_secret: String,
    },
}

impl fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.headers.keys().map(HeaderName::as_str).collect();
        f.debug_struct("ClientBuilder")
            .field("base_url", &self.base)
            .field("default_headers", &names)
            .field("timeout", &self.timeout)
            .field("custom_transport", &self.transport.is_some())
            .finish_non_exhaustive()
    }
}

impl ClientBuilder {
    pub(crate) fn new(base: String) -> Self {
        ClientBuilder {
            base,
            headers: HeaderMap::new(),
            default_query: Vec::new(),
            endpoints: Vec::new(),
            request_id: Some(HeaderName::from_static(DEFAULT_REQUEST_ID_HEADER)),
            error: None,
            timeout: Some(DEFAULT_TIMEOUT),
            max_body: DEFAULT_MAX_RESPONSE_BODY,
            sensitive_query: DEFAULT_SENSITIVE_QUERY_PARAMS
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            transport_config: TransportConfig::default(),
            transport: None,
            layers: Layers::default(),
            #[cfg(feature = "auth")]
            auth: None,
            #[cfg(feature = "redirect")]
            redirect: crate::RedirectPolicy::default(),
            secret_headers: Vec::new(),
            secret_query: Vec::new(),
            codecs: [true; 4],
            without_base: false,
            allowed_origins: Vec::new(),
            traceparent: false,
            log_bodies: None,
        }
    }

    /// Whether to ask for gzip bodies and decode them (on by default with
    /// the `gzip` feature). Decoding sits just above the transport (stack
    /// position 10b), so the body limit
    /// ([`max_response_body`](Self::max_response_body)), the retry layer
    /// and the cache all see the decoded body: a small body that inflates
    /// past the limit is an [`ErrorKind::BodyTooLarge`] error, not memory.
    /// A decoded response has no `Content-Encoding` nor `Content-Length`.
    /// A caller's own `Accept-Encoding` header is sent as it is; a body in
    /// a coding turned off (or `identity`) is left as it came.
    #[cfg(feature = "gzip")]
    pub fn gzip(mut self, enable: bool) -> Self {
        self.codecs[0] = enable;
        self
    }

    /// Whether to ask for deflate (zlib) bodies and decode them (on by
    /// default with the `deflate` feature); see [`gzip`](Self::gzip).
    #[cfg(feature = "deflate")]
    pub fn deflate(mut self, enable: bool) -> Self {
        self.codecs[1] = enable;
        self
    }

    /// Whether to ask for brotli (`br`) bodies and decode them (on by
    /// default with the `brotli` feature); see [`gzip`](Self::gzip).
    #[cfg(feature = "brotli")]
    pub fn brotli(mut self, enable: bool) -> Self {
        self.codecs[2] = enable;
        self
    }

    /// Whether to ask for zstd bodies and decode them (on by default with
    /// the `zstd` feature); see [`gzip`](Self::gzip).
    #[cfg(feature = "zstd")]
    pub fn zstd(mut self, enable: bool) -> Self {
        self.codecs[3] = enable;
        self
    }

    /// Which redirects to follow (stack position 4, above retry: each hop
    /// is a new request through retry, the rate limiter, auth and the
    /// pool). The default, [`RedirectPolicy::default`](crate::RedirectPolicy::default),
    /// follows up to 10 hops on the base URL's origin; a redirect elsewhere
    /// is an [`ErrorKind::Redirect`] error unless the policy allows that
    /// origin, and credentials never follow a chain off the request's
    /// origin. [`RedirectPolicy::none`](crate::RedirectPolicy::none) returns
    /// every 3xx as it is.
    #[cfg(feature = "redirect")]
    pub fn redirect(mut self, policy: crate::RedirectPolicy) -> Self {
        self.redirect = policy;
        self
    }

    fn fail(mut self, err: Error) -> Self {
        self.error.get_or_insert(err);
        self
    }

    /// Sends this header on every request (a request's own header of the
    /// same name replaces it). The value is checked by `build`: CR, LF and
    /// other bytes not allowed in a header are an error naming the header.
    pub fn default_header<K, V>(mut self, name: K, value: V) -> Self
    where
        HeaderName: TryFrom<K>,
        <HeaderName as TryFrom<K>>::Error: Into<http::Error>,
        HeaderValue: TryFrom<V>,
        <HeaderValue as TryFrom<V>>::Error: Into<http::Error>,
    {
        match crate::request::header_pair(name, value) {
            Ok((name, value)) => {
                self.headers.insert(name, value);
                self
            }
            Err(e) => self.fail(Error::new(ErrorKind::Builder, e.to_string())),
        }
    }

    /// Sends all these headers on every request, replacing earlier defaults
    /// of the same names.
    pub fn default_headers(mut self, headers: HeaderMap) -> Self {
        crate::request::merge_headers(&mut self.headers, headers);
        self
    }

    /// Sends this query parameter with every request (a request's or an
    /// endpoint's parameter of the same name replaces it).
    pub fn default_query(mut self, name: &str, value: &str) -> Self {
        match crate::endpoint::QueryPair::new(name, value) {
            Some(pair) => {
                self.default_query.retain(|q| q.name != pair.name);
                self.default_query.push(pair);
                self
            }
            None => self.fail(Error::new(
                ErrorKind::Builder,
                format!("invalid query parameter `{name}`"),
            )),
        }
    }

    /// Declares a named endpoint, called with [`Client::call`].
    pub fn endpoint(mut self, endpoint: Endpoint) -> Self {
        self.endpoints.push(endpoint);
        self
    }

    /// Declares the endpoints of a JSON spec: an object of name to either
    /// `"METHOD /path/{param}"` or `{"method", "path", "headers", "query",
    /// "timeout_ms"}`. An invalid spec (a `timeout_ms` of 0 included) is an
    /// [`ErrorKind::Builder`] from `build`.
    ///
    /// ```
    /// # #[cfg(feature = "rustls")] {
    /// let client = tollgate::Client::builder("https://api.example.com")
    ///     .endpoints_json(r#"{
    ///         "get_user": "GET /users/{user_id}",
    ///         "search": {"method": "GET", "path": "/search", "query": {"limit": "20"}, "timeout_ms": 2000}
    ///     }"#)
    ///     .build()?;
    /// assert_eq!(client.endpoint("get_user").map(|e| e.path()), Some("/users/{user_id}"));
    /// # }
    /// # Ok::<(), tollgate::Error>(())
    /// ```
    pub fn endpoints_json(mut self, json: &str) -> Self {
        match crate::endpoint::from_json(json) {
            Ok(endpoints) => {
                self.endpoints.extend(endpoints);
                self
            }
            Err(e) => self.fail(e),
        }
    }

    /// Declares the endpoints of a TOML spec: a table of name to either
    /// `"METHOD /path/{param}"` or a table with `method`, `path`, `headers`,
    /// `query` and `timeout_ms`, as [`endpoints_json`](Self::endpoints_json).
    ///
    /// ```
    /// let client = tollgate::Client::builder("https://api.example.com")
    ///     .endpoints_toml(r#"
    ///         get_user = "GET /users/{user_id}"
    ///
    ///         [search]
    ///         method = "GET"
    ///         path = "/search"
    ///         query = { limit = "20" }
    ///         timeout_ms = 2000
    ///     "#)
    ///     .build()?;
    /// assert_eq!(client.endpoint("search").map(|e| e.path()), Some("/search"));
    /// # Ok::<(), tollgate::Error>(())
    /// ```
    #[cfg(feature = "toml")]
    pub fn endpoints_toml(mut self, toml: &str) -> Self {
        match crate::endpoint::from_toml(toml) {
            Ok(endpoints) => {
                self.endpoints.extend(endpoints);
                self
            }
            Err(e) => self.fail(e),
        }
    }

    /// The header that carries each call's tracking id (default
    /// `x-request-id`). Every call gets a new random id unless it sets the
    /// header itself; retries keep it, and it is in
    /// [`Summary::request_id`](crate::Summary::request_id).
    pub fn request_id_header(mut self, name: HeaderName) -> Self {
        self.request_id = Some(name);
        self
    }

    /// Sends no tracking id.
    pub fn no_request_id(mut self) -> Self {
        self.request_id = None;
        self
    }

    /// The `User-Agent` header (default `tollgate/<version>`).
    pub fn user_agent<V>(self, value: V) -> Self
    where
        HeaderValue: TryFrom<V>,
        <HeaderValue as TryFrom<V>>::Error: Into<http::Error>,
    {
        self.default_header(USER_AGENT, value)
    }

    /// The deadline of a whole call, from `send` until the body is read
    /// (default 30 s). A request's own
    /// [`timeout`](crate::RequestBuilder::timeout) replaces it.
    ///
    /// `Duration::MAX` (or any duration too long for the clock) means no
    /// deadline, as [`no_timeout`](Self::no_timeout). Zero would fail every
    /// call: it is an [`ErrorKind::Builder`] from `build`.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        if timeout.is_zero() {
            return self.zero_timeout("timeout");
        }
        self.timeout = Some(timeout);
        self
    }

    /// Refuses a zero duration for the setting `name`.
    fn zero_timeout(self, name: &str) -> Self {
        self.fail(Error::new(
            ErrorKind::Builder,
            format!("a {name} of zero would fail every call"),
        ))
    }

    /// No default deadline. A hung upstream then holds a call until the
    /// request's own timeout, if any: use with care.
    pub fn no_timeout(mut self) -> Self {
        self.timeout = None;
        self
    }

    /// How long connecting may take (default 10 s): the whole set-up of a
    /// connection, DNS, TCP and the TLS handshake. A connection not ready in
    /// time is an [`ErrorKind::Connect`] error (nothing was sent, so retry
    /// may retry it for any method). `Duration::MAX` means no limit; zero
    /// is an [`ErrorKind::Builder`] from `build`. A custom
    /// [`transport`](Self::transport) bounds its own connections.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        if timeout.is_zero() {
            return self.zero_timeout("connect timeout");
        }
        self.transport_config.connect_timeout = Some(timeout);
        self
    }

    /// How long the built-in transport waits for data before it gives up
    /// (default 30 s, [`DEFAULT_READ_TIMEOUT`](crate::DEFAULT_READ_TIMEOUT)): for the response head from
    /// the moment the request is handed to it, then for each piece of the
    /// body, the wait starting again after every piece (as reqwest's
    /// `read_timeout`). A body that stops after the headers, or trickles
    /// slower than this, ends with an [`ErrorKind::Timeout`] error, giving
    /// back its connection and pool slot, even with
    /// [`no_timeout`](Self::no_timeout); the total [`timeout`](Self::timeout)
    /// still bounds a body that trickles just fast enough. The wait for the
    /// head includes getting a connection, so a read timeout shorter than
    /// the [`connect_timeout`](Self::connect_timeout) cuts connecting too
    /// (as a `Timeout`).
    ///
    /// While a streamed request body
    /// ([`body_stream`](crate::RequestBuilder::body_stream), a multipart form
    /// with a file) is sent, each piece of it the transport takes counts as
    /// progress (and each chunk the caller's stream yields, even one held
    /// back to check a declared `Content-Length`): the wait for the head
    /// starts when it has been sent in full, and an upload that stalls for
    /// this long is a `Timeout`.
    ///
    /// Limitation: progress is what the transport takes from the body, not
    /// what reaches the server. The kernel's send buffer takes up to
    /// several MiB at once (Linux grows it to `net.ipv4.tcp_wmem`'s
    /// maximum, 4 MiB by default), and while those bytes drain to a slow
    /// reader nothing more is taken: a streamed upload to a server that
    /// reads less than that buffer per read timeout (4 MiB in 30 s is
    /// ~140 KiB/s) is cut with a `Timeout` while the server still reads.
    /// A body in memory over 256 KiB is handed to the transport in 64 KiB
    /// frames (slices of it, nothing copied), each one progress in the same
    /// way; a smaller one is handed over whole, and the wait for the head
    /// runs from the hand-over. For big uploads to very slow servers, raise
    /// the read timeout (or set `Duration::MAX`) and bound the call with
    /// [`timeout`](Self::timeout).
    ///
    /// With retry on, a read timeout is retried like an attempt timeout
    /// (idempotent methods only). `Duration::MAX` means no read timeout;
    /// zero is an [`ErrorKind::Builder`] from `build`. A custom
    /// [`transport`](Self::transport) bounds its own reads.
    pub fn read_timeout(mut self, timeout: Duration) -> Self {
        if timeout.is_zero() {
            return self.zero_timeout("read timeout");
        }
        self.transport_config.read_timeout = Some(timeout);
        self
    }

    /// How long an idle pooled connection is kept (default 90 s). Zero
    /// keeps none; `Duration::MAX` keeps them until the server closes them.
    pub fn pool_idle_timeout(mut self, timeout: Duration) -> Self {
        self.transport_config.pool_idle_timeout = Some(timeout);
        self
    }

    /// The most idle connections kept per host (default unlimited).
    pub fn pool_max_idle_per_host(mut self, max: usize) -> Self {
        self.transport_config.pool_max_idle_per_host = max;
        self
    }

    /// Speak HTTP/2 without negotiation, also over cleartext (h2c). Over TLS,
    /// HTTP/2 is negotiated by ALPN without this.
    pub fn http2_prior_knowledge(mut self) -> Self {
        self.transport_config.http2_prior_knowledge = true;
        self
    }

    /// Trusts this DER-encoded root certificate besides Mozilla's roots (for
    /// a private CA, or a test server).
    #[cfg(feature = "rustls")]
    pub fn add_root_certificate_der(mut self, der: impl Into<Vec<u8>>) -> Self {
        self.transport_config.extra_roots.push(der.into());
        self
    }

    /// Trusts every certificate in this PEM buffer (curl's `--cacert`, a
    /// CA bundle file) besides Mozilla's roots.
    ///
    /// ```
    /// # let pem = rcgen::generate_simple_self_signed(vec!["localhost".into()])
    /// #     .unwrap().cert.pem();
    /// let client = tollgate::Client::builder("https://api.internal")
    ///     .add_root_certificates_pem(pem.as_bytes())?
    ///     .build()?;
    /// # Ok::<(), tollgate::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Builder`] when a PEM certificate does not decode or
    /// there is none.
    #[cfg(feature = "rustls")]
    pub fn add_root_certificates_pem(mut self, pem: &[u8]) -> Result<Self, Error> {
        use rustls::pki_types::pem::PemObject as _;
        let certs = rustls::pki_types::CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| {
                Error::new(
                    ErrorKind::Builder,
                    "root certificates: a certificate in the PEM does not decode",
                )
            })?;
        if certs.is_empty() {
            return Err(Error::new(
                ErrorKind::Builder,
                "root certificates: no certificate in the PEM",
            ));
        }
        self.transport_config
            .extra_roots
            .extend(certs.into_iter().map(|c| c.as_ref().to_vec()));
        Ok(self)
    }

    /// Sends requests through this proxy when it takes their destination
    /// (its scheme and [`NoProxy`](crate::NoProxy) rules; see
    /// [`Proxy`](crate::Proxy)). Proxies are tried in the order they were
    /// added, the first that takes a destination is used, and a
    /// destination none takes is connected to directly. None is used by
    /// default, not even the environment's
    /// ([`proxy_from_env`](Self::proxy_from_env)). Proxy credentials go
    /// only to the proxy. A custom [`transport`](Self::transport) makes its
    /// own connections: a proxy set with it is an [`ErrorKind::Builder`]
    /// from `build` (rather than silently not used).
    ///
    /// A proxy that refuses is an [`ErrorKind::Proxy`] error; one that
    /// cannot be reached is an [`ErrorKind::Connect`] error naming it. The
    /// connect timeout covers reaching the proxy, its handshake and the
    /// TLS handshake with the origin.
    pub fn proxy(mut self, proxy: crate::Proxy) -> Self {
        if let Some(e) = proxy.error() {
            return self.fail(e);
        }
        self.transport_config
            .proxies
            .push(crate::proxy::ProxySpec::One(proxy));
        self
    }

    /// Forgets every proxy set so far ([`proxy`](Self::proxy),
    /// [`proxy_from_env`](Self::proxy_from_env)): connections are direct.
    pub fn no_proxy(mut self) -> Self {
        self.transport_config.proxies.clear();
        self
    }

    /// Uses the proxies the process environment names: `HTTPS_PROXY` for
    /// `https://` requests, `HTTP_PROXY` for `http://` ones, `ALL_PROXY`
    /// for both when the other is unset, and `NO_PROXY` (curl's rules, see
    /// [`NoProxy`](crate::NoProxy)) for the destinations that bypass them;
    /// each upper case first, then lower case. The variables are read now,
    /// not at each request. In a CGI program (`REQUEST_METHOD` set),
    /// `HTTP_PROXY` is ignored ("httpoxy": a request's `Proxy` header
    /// arrives there under that name).
    ///
    /// Off unless called, unlike reqwest: a library that silently routes
    /// an application's API traffic (and its credentials' tunnel) through
    /// whatever proxy the environment names surprises; asking for it is
    /// one call. A variable set to a URL that cannot be used is an
    /// [`ErrorKind::Builder`] error from `build` naming the variable, not
    /// a silent direct connection.
    pub fn proxy_from_env(self) -> Self {
        self.proxy_from_env_with(|name| std::env::var(name).ok())
    }

    /// As [`proxy_from_env`](Self::proxy_from_env), with the variables read
    /// through `var` (a lookup of one variable by name) instead of the
    /// process environment: for tests, and for settings kept elsewhere.
    ///
    /// ```
    /// use std::collections::HashMap;
    ///
    /// let env = HashMap::from([("HTTPS_PROXY", "http://proxy.internal:3128"), ("NO_PROXY", "localhost")]);
    /// let client = tollgate::Client::builder("https://api.example.com")
    ///     .proxy_from_env_with(|name| env.get(name).map(|v| v.to_string()))
    ///     .build()?;
    /// # let _ = client;
    /// # Ok::<(), tollgate::Error>(())
    /// ```
    pub fn proxy_from_env_with(mut self, var: impl Fn(&str) -> Option<String>) -> Self {
        match crate::proxy::ProxySpec::from_env(var) {
            Ok(spec) => {
                self.transport_config.proxies.push(spec);
                self
            }
            Err(e) => self.fail(e),
        }
    }

    /// Whether to trust Mozilla's root certificates (webpki-roots; on by
    /// default).
    #[cfg(feature = "rustls")]
    pub fn tls_built_in_webpki_certs(mut self, enable: bool) -> Self {
        self.transport_config.tls.webpki_roots = enable;
        self.transport_config.tls.touched = true;
        self
    }

    /// Whether to trust the platform's root certificates too (off by
    /// default; feature `native-roots`), read by rustls-native-certs when
    /// the client is built: on Linux the system's CA bundle (and
    /// `SSL_CERT_FILE`/`SSL_CERT_DIR`), on macOS and Windows their
    /// keychain and certificate store. For a private CA installed on the
    /// machine; combine with
    /// [`tls_built_in_webpki_certs(false)`](Self::tls_built_in_webpki_certs)
    /// to trust the platform's store only. (rustls-native-certs rather than
    /// rustls-platform-verifier: it keeps rustls's own verifier, the one
    /// every other setting here configures, and is what reqwest's
    /// `rustls-tls-native-roots` and hyper-rustls use.) No certificate
    /// trusted at all is an [`ErrorKind::Builder`] error from `build`.
    #[cfg(feature = "native-roots")]
    pub fn tls_built_in_native_certs(mut self, enable: bool) -> Self {
        self.transport_config.tls.native_roots = enable;
        self.transport_config.tls.touched = true;
        self
    }

    /// Presents this client certificate to servers that ask for one
    /// (mutual TLS). It is never sent to a proxy (an `https://` proxy's TLS
    /// has no client certificate). A key that does not fit the certificate
    /// is an [`ErrorKind::Builder`] error from `build`.
    #[cfg(feature = "rustls")]
    pub fn identity(mut self, identity: crate::Identity) -> Self {
        self.transport_config.tls.identity = Some(identity);
        self.transport_config.tls.touched = true;
        self
    }

    /// Uses the caller's own rustls configuration for TLS (its roots,
    /// verifier, client certificate, protocol versions and crypto
    /// provider), to origins and to an `https://` proxy alike. When its
    /// `alpn_protocols` is empty, tollgate sets them (`h2` and `http/1.1`
    /// with the `http2` feature, `http/1.1` without) so HTTP/2 is
    /// negotiated as usual; a list of the caller's is kept (less `h2`
    /// without the `http2` feature), and the proxy's TLS offers none.
    /// Combined with another TLS setting
    /// ([`add_root_certificate_der`](Self::add_root_certificate_der),
    /// [`identity`](Self::identity), `tls_built_in_*`) it is an
    /// [`ErrorKind::Builder`] error from `build`, not a silent override.
    #[cfg(feature = "rustls")]
    pub fn use_rustls_config(mut self, config: rustls::ClientConfig) -> Self {
        self.transport_config.tls.custom = Some(Arc::new(config));
        self
    }

    /// The largest response body the client buffers (default 16 MiB). A
    /// larger `Content-Length` fails before reading; a body without one fails
    /// as soon as it passes the limit: [`ErrorKind::BodyTooLarge`], never
    /// retried. `usize::MAX` means no limit; 0 accepts only empty bodies.
    pub fn max_response_body(mut self, bytes: usize) -> Self {
        self.max_body = bytes;
        self
    }

    /// Redacts the value of this query parameter in tracing output, besides
    /// [`DEFAULT_SENSITIVE_QUERY_PARAMS`].
    pub fn redact_query_param(mut self, name: impl Into<String>) -> Self {
        self.sensitive_query.push(name.into());
        self
    }

    /// Sends requests through `service` instead of the built-in hyper-util
    /// client: a custom stack, a stub in tests, or a client with special
    /// connectors. It receives absolute-form URIs and must resolve with a
    /// response or an error (which the facade classifies into an
    /// [`ErrorKind`]). Request bodies are [`RequestBody`]s (whole in memory,
    /// or streamed once: see its docs); a response body it answers with is
    /// read as it arrives by
    /// [`send_streaming`](crate::RequestBuilder::send_streaming).
    /// It makes its own connections, so a [`proxy`](Self::proxy) set with
    /// it is an [`ErrorKind::Builder`] from `build`.
    pub fn transport<S, B>(mut self, service: S) -> Self
    where
        S: Service<Request<RequestBody>, Response = Response<B>> + Clone + Send + Sync + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
        B: HttpBody<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        self.transport = Some(Box::new(move |finish: Finish<'_>| finish.over(service)));
        self
    }

    /// Adds a tower layer of your own, such as tower-http's
    /// `SetRequestHeaderLayer` or `TraceLayer`, without replacing the
    /// transport.
    ///
    /// **Where it sits**: one position, below retry and the rate limiter,
    /// above auth, the attempt timeout, the concurrency pool and the
    /// transport. So it sees each attempt: once per attempt (with retry on,
    /// a header it sets is on every attempt, and a span it opens is per
    /// attempt). A cache hit never reaches it, nor a call the rate limiter
    /// refuses. It never sees the auth layer's credential: auth puts it on
    /// below, after the layer, and checks the request's origin then, so a
    /// layer that points a request elsewhere never carries the credential
    /// there, and a layer that logs URIs (tower-http's `TraceLayer`) never
    /// logs an API key auth puts in the query. (A per-request credential
    /// without the auth layer is on the request already, marked sensitive.)
    /// Its time counts against the call's total timeout, not the attempt
    /// timeout, and it holds no pool slot while it works; the pool below may
    /// still queue the request or refuse it (the error comes back up through
    /// the layer). An OAuth2 token request
    /// ([`oauth2_client_credentials`](Self::oauth2_client_credentials)) does
    /// not pass it, nor does auth's replay after a 401. One position rather
    /// than several keeps a layer's view simple to state: per attempt,
    /// before the credential.
    ///
    /// The layer wraps an [`AttemptService`]: requests carry a
    /// [`RequestBody`] (whole in memory, or streamed once: see its docs),
    /// and the layer may answer with
    /// any body of `Bytes` (tower-http's trace and decompression bodies
    /// included). Layers added first are outermost, as with
    /// `tower::ServiceBuilder`. Each costs a call one box, like every layer
    /// that is on (see the stack's docs); a client without one pays nothing.
    ///
    /// ```
    /// use http::{HeaderName, HeaderValue};
    /// use tower_http::set_header::SetRequestHeaderLayer;
    ///
    /// let client = tollgate::Client::builder("http://api.internal")
    ///     .layer(SetRequestHeaderLayer::overriding(
    ///         HeaderName::from_static("x-tenant"),
    ///         HeaderValue::from_static("acme"),
    ///     ))
    ///     .build()?;
    /// # Ok::<(), tollgate::Error>(())
    /// ```
    pub fn layer<L, B>(mut self, layer: L) -> Self
    where
        L: Layer<AttemptService> + Send + Sync + 'static,
        L::Service:
            Service<Request<RequestBody>, Response = Response<B>> + Clone + Send + Sync + 'static,
        <L::Service as Service<Request<RequestBody>>>::Error: Into<BoxError>,
        <L::Service as Service<Request<RequestBody>>>::Future: Send + 'static,
        B: HttpBody<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        self.layers.user.push(Arc::new(move |inner| {
            crate::stack::boxed(layer.layer(inner))
        }));
        self
    }

    /// Retries failed attempts with this layer (stack position 5: below the
    /// cache and the total deadline, above rate limiting, auth and the
    /// attempt timeout, so every attempt takes a permit and a fresh
    /// credential). The call's deadline is handed to it, so no retry starts
    /// whose wait would pass it.
    ///
    /// With retry on, each attempt reads its response body whole (up to
    /// [`max_response_body`](Self::max_response_body)) before retry sees
    /// the response: the caller has seen nothing yet, so a body cut after
    /// the headers, or stalled past the
    /// [`read_timeout`](Self::read_timeout), is retried like a connection
    /// reset, for the methods the layer retries (idempotent ones unless
    /// [`with_idempotency_key`](tollgate_retry::RetryLayer::with_idempotency_key)).
    /// A body too large is an [`ErrorKind::BodyTooLarge`] error at once,
    /// never retried. When every attempt's body fails, the error is
    /// [`ErrorKind::Body`] (or `Timeout`), with the status.
    ///
    /// ```
    /// use tollgate_retry::RetryLayer;
    ///
    /// let client = tollgate::Client::builder("https://api.example.com")
    ///     .retry(RetryLayer::new().max_retries(2))
    ///     .attempt_timeout(std::time::Duration::from_secs(2))
    ///     .build()?;
    /// # Ok::<(), tollgate::Error>(())
    /// ```
    #[cfg(feature = "retry")]
    pub fn retry(mut self, layer: tollgate_retry::RetryLayer) -> Self {
        self.layers.retry = Some(layer);
        self
    }

    /// Rate limits every attempt with this layer (stack position 7: below
    /// retry, so each retry takes a permit too; above auth and the
    /// connection). Callers wait their turn, or fail with
    /// [`ErrorKind::WaitTooLong`], [`ErrorKind::QueueFull`] or
    /// [`ErrorKind::RateLimited`] as the layer is configured; the wait is in
    /// [`Summary::permit_wait`](crate::Summary::permit_wait). A 429 or 503
    /// with `Retry-After` pauses the limiter for every caller, and the retry
    /// layer waits until the same instant rather than twice.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tollgate_limit::{Quota, RateLimitLayer};
    ///
    /// let client = tollgate::Client::builder("https://api.example.com")
    ///     .rate_limit(RateLimitLayer::new(Quota::window(100, Duration::from_secs(60)).unwrap()).max_wait(Duration::from_secs(10)))
    ///     .build()?;
    /// # Ok::<(), tollgate::Error>(())
    /// ```
    #[cfg(feature = "limit")]
    pub fn rate_limit(mut self, layer: tollgate_limit::RateLimitLayer) -> Self {
        self.layers.rate_limit = Some(layer);
        self
    }

    /// Bounds the requests in flight with this pool (stack position 10, just
    /// above the transport): calls beyond the limit wait in its FIFO
    /// queue, and fail with [`ErrorKind::TooManyPending`] or
    /// [`ErrorKind::PendingTimeout`] as it is configured. The time a call
    /// waited is in its [`Summary::queue_wait`](crate::Summary::queue_wait).
    ///
    /// ```
    /// use std::time::Duration;
    /// use tollgate_limit::ConcurrencyLimitLayer;
    ///
    /// let client = tollgate::Client::builder("https://api.example.com")
    ///     .concurrency_limit(ConcurrencyLimitLayer::new(16).max_queue(256).queue_timeout(Duration::from_secs(2)))
    ///     .build()?;
    /// # Ok::<(), tollgate::Error>(())
    /// ```
    #[cfg(feature = "limit")]
    pub fn concurrency_limit(mut self, layer: tollgate_limit::ConcurrencyLimitLayer) -> Self {
        self.layers.concurrency = Some(layer);
        self
    }

    /// Caches responses with this layer (stack position 3: below the total
    /// deadline, above retry and rate limiting, so a hit costs no attempt
    /// and no permit). Keep a clone of the layer to read its
    /// [`stats`](tollgate_cache::CacheLayer::stats) or
    /// [`invalidate`](tollgate_cache::CacheLayer::invalidate) a URI: clones
    /// share one cache. A fresh hit is answered before the call enters the
    /// stack at all ([`CacheLayer::answer`](tollgate_cache::CacheLayer::answer):
    /// the same key, identity and freshness rules), which more than halves
    /// its cost; everything else goes through the layer. What it did for a
    /// response is in
    /// [`Summary::cache`](crate::Summary::cache); a request can opt out with
    /// [`crate::RequestBuilder::no_cache`].
    ///
    /// A client with credentials of its own (`bearer_auth`, ...) keeps its
    /// responses in a partition of its own, so two clients sharing one
    /// cache layer never see each other's responses; a request's own
    /// [`credential`](crate::RequestBuilder::credential) partitions it further.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tollgate_cache::CacheLayer;
    ///
    /// let cache = CacheLayer::new(Duration::from_secs(30));
    /// let client = tollgate::Client::builder("https://api.example.com")
    ///     .cache(cache.clone())
    ///     .build()?;
    /// assert_eq!(cache.stats().hits, 0);
    /// # Ok::<(), tollgate::Error>(())
    /// ```
    #[cfg(feature = "cache")]
    pub fn cache(mut self, layer: tollgate_cache::CacheLayer) -> Self {
        self.layers.cache = Some(layer);
        self
    }

    /// Authenticates every request with this layer (stack position 8: below
    /// retry and rate limiting, so each attempt gets a current credential).
    /// Unless the layer names its origins, credentials go only to the base
    /// URL's origin (scheme, host and port): never to another host, even
    /// when a path given to a request is an absolute URL elsewhere.
    ///
    /// The shortcuts [`bearer_auth`](Self::bearer_auth),
    /// [`basic_auth`](Self::basic_auth),
    /// [`api_key_header`](Self::api_key_header),
    /// [`api_key_query`](Self::api_key_query),
    /// [`token_source`](Self::token_source) and
    /// [`oauth2_client_credentials`](Self::oauth2_client_credentials) each
    /// set one; the last one set wins.
    ///
    /// ```
    /// use tollgate_auth::AuthLayer;
    ///
    /// let client = tollgate::Client::builder("https://api.example.com")
    ///     .auth(
    ///         AuthLayer::api_key_header("x-api-key", "k3y")?
    ///             .origin("https://api.example.com".parse()?)
    ///             .origin("https://files.example.com".parse()?),
    ///     )
    ///     .build()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[cfg(feature = "auth")]
    pub fn auth(mut self, layer: tollgate_auth::AuthLayer) -> Self {
        self.auth = Some(Auth::Layer(layer));
        self
    }

    #[cfg(feature = "auth")]
    fn auth_or_fail(
        self,
        layer: Result<tollgate_auth::AuthLayer, tollgate_auth::InvalidCredential>,
    ) -> Self {
        match layer {
            Ok(layer) => self.auth(layer),
            Err(e) => self.fail(Error::new(ErrorKind::Builder, e.to_string()).with_source(e)),
        }
    }

    /// `Authorization: Bearer <token>` on every request to the base URL's
    /// origin. A token with CR, LF or another byte a header cannot carry is
    /// an [`ErrorKind::Builder`] from `build` that does not show it.
    ///
    /// ```
    /// let client = tollgate::Client::builder("https://api.example.com").bearer_auth("s3cret").build()?;
    /// assert!(!format!("{client:?}").contains("s3cret"));
    /// assert!(tollgate::Client::builder("https://api.example.com").bearer_auth("a\r\nb").build().is_err());
    /// # Ok::<(), tollgate::Error>(())
    /// ```
    #[cfg(feature = "auth")]
    pub fn bearer_auth(self, token: impl AsRef<str>) -> Self {
        self.auth_or_fail(tollgate_auth::AuthLayer::bearer(token))
    }

    /// `Authorization: Basic ...` on every request to the base URL's origin.
    #[cfg(feature = "auth")]
    pub fn basic_auth(self, user: impl AsRef<str>, password: impl AsRef<str>) -> Self {
        self.auth_or_fail(tollgate_auth::AuthLayer::basic(user, password))
    }

    /// An API key in the header `name` on every request to the base URL's
    /// origin.
    #[cfg(feature = "auth")]
    pub fn api_key_header(mut self, name: impl AsRef<str>, key: impl AsRef<str>) -> Self {
        if let Ok(header) = HeaderName::try_from(name.as_ref()) {
            self.secret_headers.push(header);
        }
        self.auth_or_fail(tollgate_auth::AuthLayer::api_key_header(name, key))
    }

    /// An API key as the query parameter `name` on every request to the
    /// base URL's origin. The parameter is added below the tracing span, and
    /// its name is redacted in tracing output anyway.
    #[cfg(feature = "auth")]
    pub fn api_key_query(mut self, name: impl AsRef<str>, key: impl AsRef<str>) -> Self {
        let redact = name.as_ref().to_owned();
        self.secret_query.push(redact.clone());
        self.auth_or_fail(tollgate_auth::AuthLayer::api_key_query(name, key))
            .redact_query_param(redact)
    }

    /// Tokens from `source`, refreshed before they expire (10 s early),
    /// single-flight, and after a 401 (one refresh, one replay). For other
    /// settings, pass [`AuthLayer::token_source`](tollgate_auth::AuthLayer::token_source)
    /// to [`auth`](Self::auth).
    #[cfg(feature = "auth")]
    pub fn token_source(self, source: impl tollgate_auth::TokenSource) -> Self {
        self.auth(tollgate_auth::AuthLayer::token_source(source))
    }

    /// OAuth2 client credentials: tokens from `token_url` for this client,
    /// asked for over the client's own connection pool (not through its
    /// layers, so the API's credentials never go to the token endpoint),
    /// with the secret in a Basic header. Refreshed as with
    /// [`token_source`](Self::token_source).
    #[cfg(feature = "auth")]
    pub fn oauth2_client_credentials(
        mut self,
        token_url: impl Into<String>,
        client_id: impl Into<String>,
        client_secret: impl Into<String>,
    ) -> Self {
        self.auth = Some(Auth::ClientCredentials {
            token_url: token_url.into(),
            client_id: client_id.into(),
            client_secret: client_secret.into(),
        });
        self
    }

    /// Bounds each attempt (stack position 9): its head, and, with retry on,
    /// the reading of its body (retry reads each attempt's body whole), so
    /// an attempt that times out, a body trickling past the bound included,
    /// is retried like a connection failure. A streamed response's body is
    /// bounded by the total timeout and the read timeout instead. The
    /// concurrency pool (position 10) is below it: an attempt's wait for a
    /// pool slot counts against the attempt timeout (the rate limiter's wait
    /// for a permit, above it, does not). The whole call
    /// stays bounded by [`timeout`](Self::timeout). `Duration::MAX` means
    /// no limit; zero is an [`ErrorKind::Builder`] from `build`.
    pub fn attempt_timeout(mut self, timeout: Duration) -> Self {
        if timeout.is_zero() {
            return self.zero_timeout("attempt timeout");
        }
        self.layers.attempt_timeout = Some(timeout);
        self
    }

    /// Builds the client.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Builder`] for an invalid base URL, an invalid default
    /// header, or a TLS set-up that fails. Without the `rustls` feature, an
    /// `https` base URL (or OAuth2 token URL) is refused too, unless a
    /// [`transport`](Self::transport) of one's own is set: the built-in
    /// transport would send it in cleartext.
    pub fn build(self) -> Result<Client, Error> {
        if let Some(e) = self.error {
            return Err(e);
        }
        if self.transport.is_some()
            && self
                .transport_config
                .proxies
                .iter()
                .any(crate::proxy::ProxySpec::is_set)
        {
            // The proxy would be silently not used: traffic meant for it
            // would go wherever the custom transport sends it.
            return Err(Error::new(
                ErrorKind::Builder,
                "a proxy and a custom transport: the transport makes its own connections \
                 and would not use the proxy",
            ));
        }
        let base = Origins::new(
            (!self.without_base).then_some(self.base.as_str()),
            &self.allowed_origins,
        )?;
        let mut endpoints = std::collections::HashMap::new();
        for endpoint in self.endpoints {
            if let Some(e) = &endpoint.error {
                return Err(Error::new(ErrorKind::Builder, e.clone()));
            }
            endpoints.insert(endpoint.name.clone(), Arc::new(endpoint));
        }
        let mut headers = self.headers;
        headers
            .entry(ACCEPT)
            .or_insert(HeaderValue::from_static("application/json"));
        if let Some(name) = &self.request_id {
            // A placeholder each call replaces with its own id (see
            // `RequestBuilder::prepare`).
            headers
                .entry(name.clone())
                .or_insert(HeaderValue::from_static(""));
        }
        headers
            .entry(USER_AGENT)
            .or_insert(HeaderValue::from_static(concat!(
                "tollgate/",
                env!("CARGO_PKG_VERSION")
            )));
        #[allow(unused_mut, reason = "the redirect feature sets a layer")]
        let mut layers = self.layers;
        #[cfg(feature = "redirect")]
        if self.redirect.follows() {
            // The origins a client may call are origins a redirect may go
            // to; a client without a base URL nor allowed origins follows
            // redirects anywhere (as it takes URLs to anywhere). Credentials
            // stay off a hop to another origin than the request's either way.
            let mut policy = self.redirect;
            for origin in base.other_origins() {
                policy = policy.allow_origin(origin)?;
            }
            let first = base.base.as_ref().or(base.allowed.first());
            if first.is_none() {
                policy = policy.allow_any_origin();
            }
            // (Without any origin, `allow_any_origin` makes this one unused.)
            let base_uri: http::Uri = first
                .map_or_else(
                    || "http://localhost".to_owned(),
                    crate::url::BaseUrl::as_str,
                )
                .parse()
                .map_err(|_| Error::new(ErrorKind::Builder, "the base URL is not a valid URI"))?;
            layers.redirect = Some(crate::redirect::RedirectLayer::new(
                policy,
                &base_uri,
                self.sensitive_query.clone(),
                self.secret_query,
                self.secret_headers,
            )?);
        }
        #[cfg(any(
            feature = "gzip",
            feature = "deflate",
            feature = "brotli",
            feature = "zstd"
        ))]
        {
            layers.decompression = crate::decode::DecompressionLayer::new(self.codecs);
        }
        let finish = Finish {
            layers,
            #[cfg(feature = "auth")]
            auth: self.auth,
            base: &base,
            max_body: self.max_body,
        };
        let stack = match self.transport {
            Some(custom) => custom(finish)?,
            None => {
                // Without TLS, the built-in transport would send an https
                // request in cleartext (to port 443, credentials and all).
                #[cfg(not(feature = "rustls"))]
                {
                    if base.is_https() {
                        return Err(transport::no_tls("the base URL"));
                    }
                    #[cfg(feature = "auth")]
                    if let Some(Auth::ClientCredentials { token_url, .. }) = &finish.auth {
                        if token_url
                            .get(..8)
                            .is_some_and(|s| s.eq_ignore_ascii_case("https://"))
                        {
                            return Err(transport::no_tls("the OAuth2 token URL"));
                        }
                    }
                }
                finish.over(transport::hyper_client(&self.transport_config)?)?
            }
        };
        #[cfg(feature = "cache")]
        let partition = stack.has_auth.then(next_partition);
        Ok(Client {
            inner: Arc::new(ClientInner {
                base,
                headers,
                timeout: self.timeout,
                max_body: self.max_body,
                sensitive_query: self.sensitive_query,
                default_query: self.default_query,
                endpoints,
                request_id: self.request_id,
                stack,
                traceparent: self.traceparent,
                log_bodies: self.log_bodies,
                #[cfg(feature = "cache")]
                partition,
            }),
        })
    }
}

/// The auth layer a builder's settings describe, sent to the base URL's
/// origin unless it names its own.
#[cfg(feature = "auth")]
fn auth_layer<S, B>(
    auth: Auth,
    base: &Origins,
    transport: S,
) -> Result<tollgate_auth::AuthLayer, Error>
where
    S: Service<Request<RequestBody>, Response = Response<B>> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    B: HttpBody + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let layer = match auth {
        Auth::Layer(layer) => layer,
        Auth::ClientCredentials {
            token_url,
            client_id,
            client_secret,
        } => {
            let url = token_url
                .parse::<http::Uri>()
                .ok()
                .filter(|u| u.scheme().is_some() && u.host().is_some())
                .ok_or_else(|| {
                    Error::new(
                        ErrorKind::Builder,
                        "the OAuth2 token URL is not an absolute URL",
                    )
                })?;
            // The token request's body is a `Full<Bytes>`; the transport
            // takes the stack's body type.
            let transport = tower::ServiceExt::map_request(
                transport,
                |req: Request<http_body_util::Full<bytes::Bytes>>| req.map(RequestBody::streaming),
            );
            let source =
                tollgate_auth::ClientCredentials::new(transport, url, client_id, client_secret)
                    .map_err(|e| Error::new(ErrorKind::Builder, e.to_string()).with_source(e))?;
            tollgate_auth::AuthLayer::token_source(source)
        }
    };
    if layer.has_origin() {
        return Ok(layer);
    }
    // The client's credential goes to the base URL's origin only: not to the
    // other allowed origins (a file host or a presigned URL must not get the
    // API's token) unless the layer names them. A client without a base URL
    // has no origin to send it to by default.
    if base.base.is_none() {
        return Err(Error::new(
            ErrorKind::Builder,
            "a client without a base URL sends its credential only to origins named on the \
             auth layer: use `ClientBuilder::auth(AuthLayer::...(..)?.origin(..))`",
        ));
    }
    let origin = tollgate_auth::Origin::parse(&base.as_str())
        .map_err(|e| Error::new(ErrorKind::Builder, e.to_string()).with_source(e))?;
    Ok(layer.origin(origin))
}

/// A partition no other client has.
#[cfg(feature = "cache")]
fn next_partition() -> tollgate_core::Partition {
    static CLIENTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = CLIENTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    tollgate_core::Partition::of(&("tollgate client", n))
}

/// A builder for a client without a base URL: the same as
/// [`Client::builder_without_base`].
impl Default for ClientBuilder {
    fn default() -> Self {
        Client::builder_without_base()
    }
}

/// Many origins.
impl ClientBuilder {
    pub(crate) fn without_base() -> Self {
        let mut builder = ClientBuilder::new(String::new());
        builder.without_base = true;
        builder
    }

    /// Lets requests go to `origin` too, given as an absolute URL
    /// (`client.get("https://files.example.com/a/b")`); its path is ignored.
    /// Call it once per origin. An absolute URL to an origin neither the
    /// base URL's nor allowed is an [`ErrorKind::InvalidUrl`] error before
    /// anything is sent, so a path from user input cannot point the client
    /// elsewhere. Relative paths still join under the base URL.
    ///
    /// An allowed origin is allowed as a redirect target too (see
    /// [`RedirectPolicy`](crate::RedirectPolicy)). The client's own
    /// credential (`bearer_auth`, ...) still goes to the base URL's origin
    /// only: name other origins on the auth layer
    /// ([`AuthLayer::origin`](tollgate_auth::AuthLayer::origin)) to send it
    /// there too. On a client without a base URL, allowed origins are the
    /// only ones it calls.
    ///
    /// An origin that is not `http`/`https`, has no host or carries
    /// credentials, a query or a fragment is an [`ErrorKind::Builder`] from
    /// `build`.
    ///
    /// ```
    /// let client = tollgate::Client::builder("https://api.example.com")
    ///     .allow_origin("https://files.example.com")
    ///     .build()?;
    /// let file = client.get("https://files.example.com/reports/1.csv"); // allowed
    /// let refused = client.get("https://evil.example.net/"); // an error from `send`
    /// # Ok::<(), tollgate::Error>(())
    /// ```
    pub fn allow_origin(mut self, origin: impl Into<String>) -> Self {
        self.allowed_origins.push(origin.into());
        self
    }
}

/// Observability.
impl ClientBuilder {
    /// Sends a W3C Trace Context `traceparent` header with every call (off
    /// by default): a child of the [`TraceContext`](crate::TraceContext) in
    /// the request's extensions (put there with
    /// [`RequestBuilder::extension`](crate::RequestBuilder::extension)), or
    /// a new sampled trace when there is none. A `traceparent` the request
    /// carries already is sent as it is. The trace id is in the call's span
    /// (`trace_id`). Every attempt and redirect hop of one call carries the
    /// same header. No OpenTelemetry dependency: with an OpenTelemetry
    /// tracer, build the `TraceContext` from its current span's ids.
    pub fn propagate_traceparent(mut self, enable: bool) -> Self {
        self.traceparent = enable;
        self
    }

    /// Logs request and response bodies at `DEBUG`, in the call's span
    /// (off by default), at most `max_len` bytes each (then `…(N bytes)`;
    /// 0 turns it off again). The request body is logged when the call
    /// starts, the response body once it is read (a cache hit's too).
    /// Values of JSON object keys and urlencoded form fields whose name
    /// contains one of [`SENSITIVE_BODY_FIELDS`](crate::SENSITIVE_BODY_FIELDS)
    /// (`password`, `token`, `secret`, `api_key`, `authorization`, ...) are
    /// shown as `"REDACTED"`; `text/*` and XML bodies are shown as they
    /// are (redact nothing: keep secrets out of them, or this off); any other
    /// type, and JSON that does not parse, only as its length. A secret
    /// inside a string value (JSON text quoted inside JSON, say) is not
    /// seen: the field's name is all that is checked. Headers are
    /// never logged here: the span shows the URL with its sensitive query
    /// values redacted, as always.
    pub fn log_bodies(mut self, max_len: usize) -> Self {
        self.log_bodies = std::num::NonZeroUsize::new(max_len);
        self
    }
}
