//! [`Client`] and [`ClientBuilder`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, USER_AGENT};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response};
use http_body::Body as HttpBody;
use serde::de::DeserializeOwned;
use tower::{BoxError, Service};

use crate::endpoint::Endpoint;
use crate::error::{Error, ErrorKind};
use crate::request::RequestBuilder;
use crate::transport::{self, RequestBody, Stack, Transport, TransportBody, TransportConfig};
use crate::url::BaseUrl;

/// The default for [`ClientBuilder::request_id_header`].
pub const DEFAULT_REQUEST_ID_HEADER: &str = "x-request-id";

/// The default for [`ClientBuilder::timeout`].
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// The default for [`ClientBuilder::read_timeout`].
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// The default for [`ClientBuilder::max_response_body`]: 16 MiB.
pub const DEFAULT_MAX_RESPONSE_BODY: usize = 16 << 20;
/// Query parameters whose values are redacted in tracing output by default
/// (compared without regard to case). Add more with
/// [`ClientBuilder::redact_query_param`].
pub const DEFAULT_SENSITIVE_QUERY_PARAMS: &[&str] = &[
    "access_token",
    "api_key",
    "apikey",
    "api-key",
    "key",
    "token",
    "secret",
    "client_secret",
    "password",
    "signature",
    "sig",
    "x-amz-signature",
    "x-goog-signature",
    "awsaccesskeyid",
];

/// An HTTP API client: a base URL, default headers and a tower stack over a
/// pooled hyper-util connection.
///
/// Cloning is cheap (one `Arc`), and clones share the connection pool and
/// every layer's state. Build one with [`Client::builder`].
///
/// ```no_run
/// # async fn run() -> Result<(), tollgate::Error> {
/// #[derive(serde::Deserialize)]
/// struct Post { id: u64, title: String }
///
/// let client = tollgate::Client::builder("https://jsonplaceholder.typicode.com").build()?;
/// let post: Post = client.get_json("/posts/1").await?;
/// let created = client.post("/posts").json(&serde_json::json!({"title": "hi"})).send().await?;
/// assert_eq!(created.status(), 201);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<ClientInner>,
}

pub(crate) struct ClientInner {
    pub(crate) base: BaseUrl,
    pub(crate) headers: HeaderMap,
    pub(crate) timeout: Option<Duration>,
    pub(crate) max_body: usize,
    pub(crate) sensitive_query: Vec<String>,
    /// Query parameters sent with every request (the widest level).
    pub(crate) default_query: Vec<crate::endpoint::QueryPair>,
    pub(crate) endpoints: std::collections::HashMap<String, Arc<Endpoint>>,
    /// The header carrying each call's tracking id, if any.
    pub(crate) request_id: Option<HeaderName>,
    pub(crate) stack: Stack,
    /// Whether a layer in the stack wants the call's deadline (retry, rate
    /// limit) as a `Deadline` request extension.
    #[cfg_attr(not(any(feature = "retry", feature = "limit")), allow(dead_code))]
    pub(crate) wants_deadline: bool,
    /// Whether an auth layer is in the stack (it applies a request's own
    /// credential; without one, the request builder does).
    pub(crate) has_auth: bool,
    /// The cache layer, to answer hits before entering the stack.
    #[cfg(feature = "cache")]
    pub(crate) cache: Option<tollgate_cache::CacheLayer>,
    /// The cache partition of a client with credentials of its own.
    #[cfg(feature = "cache")]
    pub(crate) partition: Option<tollgate_core::Partition>,
}

/// A partition no other client has.
#[cfg(feature = "cache")]
fn next_partition() -> tollgate_core::Partition {
    static CLIENTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = CLIENTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    tollgate_core::Partition::of(&("tollgate client", n))
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = &self.inner;
        // Header names only: default headers may hold credentials.
        let names: Vec<&str> = i.headers.keys().map(HeaderName::as_str).collect();
        f.debug_struct("Client")
            .field("base_url", &i.base.as_str())
            .field("default_headers", &names)
            .field("timeout", &i.timeout)
            .field("max_response_body", &i.max_body)
            .finish_non_exhaustive()
    }
}

macro_rules! verb {
    ($(#[$doc:meta])* $name:ident, $method:ident) => {
        $(#[$doc])*
        pub fn $name(&self, path: impl Into<String>) -> RequestBuilder {
            self.request(Method::$method, path)
        }
    };
}

impl Client {
    /// Starts building a client for the API at `base_url`.
    ///
    /// The URL is checked by [`ClientBuilder::build`]: it must be `http` or
    /// `https`, have a host, and carry no credentials, query or fragment.
    pub fn builder(base_url: impl Into<String>) -> ClientBuilder {
        ClientBuilder::new(base_url.into())
    }

    /// A client with default settings; the same as
    /// `Client::builder(base_url).build()`.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Builder`] for an invalid base URL.
    pub fn new(base_url: impl Into<String>) -> Result<Client, Error> {
        Client::builder(base_url).build()
    }

    /// Starts a request with any method. `path` is joined under the base
    /// URL's path (see [`RequestBuilder`] for the rules).
    pub fn request(&self, method: Method, path: impl Into<String>) -> RequestBuilder {
        RequestBuilder::new(self.clone(), method, path.into())
    }

    verb!(
        /// Starts a `GET` request.
        get, GET
    );
    verb!(
        /// Starts a `POST` request.
        post, POST
    );
    verb!(
        /// Starts a `PUT` request.
        put, PUT
    );
    verb!(
        /// Starts a `PATCH` request.
        patch, PATCH
    );
    verb!(
        /// Starts a `DELETE` request.
        delete, DELETE
    );
    verb!(
        /// Starts a `HEAD` request.
        head, HEAD
    );

    /// `GET path`, fail on an error status, decode the JSON body as `T`.
    ///
    /// # Errors
    ///
    /// Every error of [`RequestBuilder::send`], [`ErrorKind::Status`] for a
    /// 4xx or 5xx response, [`ErrorKind::Decode`] when the body is not a `T`.
    pub async fn get_json<T: DeserializeOwned>(&self, path: impl Into<String>) -> Result<T, Error> {
        self.get(path).send().await?.error_for_status()?.json()
    }

    /// The base URL requests are joined to (without a trailing slash).
    pub fn base_url(&self) -> String {
        self.inner.base.as_str()
    }

    /// Starts a call of the named [`Endpoint`]: its method and path
    /// template, its headers, query and timeout. Fill its placeholders with
    /// [`path_param`](RequestBuilder::path_param); a missing one is an error
    /// naming it, as is an unknown endpoint name (from `send`).
    pub fn call(&self, endpoint: &str) -> RequestBuilder {
        match self.inner.endpoints.get(endpoint) {
            Some(e) => RequestBuilder::for_endpoint(self.clone(), e.clone()),
            None => RequestBuilder::new(self.clone(), Method::GET, String::new()).fail(Error::new(
                ErrorKind::InvalidRequest,
                format!("unknown endpoint `{endpoint}`"),
            )),
        }
    }

    /// The declared endpoint called `name`.
    pub fn endpoint(&self, name: &str) -> Option<&Endpoint> {
        self.inner.endpoints.get(name).map(|e| &**e)
    }
}

/// The optional layers between the facade and the transport.
struct Layers {
    #[cfg(feature = "retry")]
    retry: Option<tollgate_retry::RetryLayer>,
    /// The client's body limit, for reading bodies inside attempts.
    #[cfg_attr(not(feature = "retry"), allow(dead_code))]
    max_body: usize,
    attempt_timeout: Option<Duration>,
    #[cfg(feature = "limit")]
    concurrency: Option<tollgate_limit::ConcurrencyLimitLayer>,
    #[cfg(feature = "limit")]
    rate_limit: Option<tollgate_limit::RateLimitLayer>,
    #[cfg(feature = "auth")]
    auth: Option<tollgate_auth::AuthLayer>,
    #[cfg(feature = "cache")]
    cache: Option<tollgate_cache::CacheLayer>,
}

impl Layers {
    fn is_empty(&self) -> bool {
        #[cfg(feature = "retry")]
        if self.retry.is_some() {
            return false;
        }
        #[cfg(feature = "limit")]
        if self.concurrency.is_some() || self.rate_limit.is_some() {
            return false;
        }
        #[cfg(feature = "auth")]
        if self.auth.is_some() {
            return false;
        }
        #[cfg(feature = "cache")]
        if self.cache.is_some() {
            return false;
        }
        self.attempt_timeout.is_none()
    }

    /// Layers 4 to 8 of the stack over `transport`, outermost first (see the
    /// crate docs), boxed once. The pool (8) changes the body type, so it is
    /// a branch here rather than an optional layer.
    #[cfg_attr(not(feature = "limit"), allow(unused_mut))]
    fn compose<S: Transport<B>, B: TransportBody>(mut self, transport: S) -> Stack {
        #[cfg(feature = "limit")]
        if let Some(pool) = self.concurrency.take() {
            return self.upper(tower::Layer::layer(&pool, transport));
        }
        self.upper(transport)
    }

    /// Layers 3 to 7 over `inner`, boxed once. The cache (3) and retry
    /// (4, with the body buffered just below it) change the body type, so
    /// they are branches too.
    #[cfg_attr(not(any(feature = "cache", feature = "retry")), allow(unused_mut))]
    fn upper<S: Transport<B>, B: TransportBody>(mut self, inner: S) -> Stack {
        #[cfg(feature = "cache")]
        let cache = self.cache.take();
        #[cfg(not(feature = "cache"))]
        let cache = NoCache;
        #[cfg(feature = "retry")]
        if let Some(retry) = self.retry.take() {
            // The body is read inside each attempt, so that one cut after
            // the headers is retried (for the methods retry allows) before
            // the caller has seen anything.
            let max = self.max_body;
            let buffered = crate::buffer::Buffer::new(self.lower(inner), max);
            return top(cache, tower::Layer::layer(&retry, buffered));
        }
        top(cache, self.lower(inner))
    }

    /// Layers 5 to 7 over `inner`.
    fn lower<S: Transport<B>, B: TransportBody>(self, inner: S) -> impl Transport<B> {
        let builder = tower::ServiceBuilder::new();
        #[cfg(feature = "limit")]
        let builder = builder.option_layer(self.rate_limit);
        #[cfg(feature = "auth")]
        let builder = builder.option_layer(self.auth);
        let builder = builder
            .option_layer(self.attempt_timeout.map(tower::timeout::TimeoutLayer::new))
            .map_err(Into::<BoxError>::into);
        builder.service(inner)
    }
}

/// Without the cache feature: no cache layer.
#[cfg(not(feature = "cache"))]
struct NoCache;

/// Layer 3, the cache, if any, over `inner`, boxed.
#[cfg(feature = "cache")]
fn top<S: Transport<B>, B: TransportBody>(
    cache: Option<tollgate_cache::CacheLayer>,
    inner: S,
) -> Stack {
    match cache {
        Some(cache) => transport::boxed(tower::Layer::layer(&cache, inner)),
        None => transport::boxed(inner),
    }
}

/// Layer 3, the cache, if any, over `inner`, boxed.
#[cfg(not(feature = "cache"))]
fn top<S: Transport<B>, B: TransportBody>(_: NoCache, inner: S) -> Stack {
    transport::boxed(inner)
}

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
    transport: Option<Stack>,
    attempt_timeout: Option<Duration>,
    #[cfg(feature = "retry")]
    retry: Option<tollgate_retry::RetryLayer>,
    #[cfg(feature = "limit")]
    concurrency: Option<tollgate_limit::ConcurrencyLimitLayer>,
    #[cfg(feature = "limit")]
    rate_limit: Option<tollgate_limit::RateLimitLayer>,
    #[cfg(feature = "auth")]
    auth: Option<Auth>,
    #[cfg(feature = "cache")]
    cache: Option<tollgate_cache::CacheLayer>,
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
    fn new(base: String) -> Self {
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
            attempt_timeout: None,
            #[cfg(feature = "retry")]
            retry: None,
            #[cfg(feature = "limit")]
            concurrency: None,
            #[cfg(feature = "limit")]
            rate_limit: None,
            #[cfg(feature = "auth")]
            auth: None,
            #[cfg(feature = "cache")]
            cache: None,
        }
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
    /// [`timeout`](RequestBuilder::timeout) replaces it.
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
    /// (default 30 s, [`DEFAULT_READ_TIMEOUT`]): for the response head from
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
    /// [`ErrorKind`]).
    pub fn transport<S, B>(mut self, service: S) -> Self
    where
        S: Service<Request<RequestBody>, Response = Response<B>> + Clone + Send + Sync + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
        B: HttpBody<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        self.transport = Some(transport::boxed(service));
        self
    }

    /// Retries failed attempts with this layer (stack position 4: below the
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
        self.retry = Some(layer);
        self
    }

    /// Rate limits every attempt with this layer (stack position 5: below
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
        self.rate_limit = Some(layer);
        self
    }

    /// Bounds the requests in flight with this pool (stack position 8, just
    /// above the connection pool): calls beyond the limit wait in its FIFO
    /// queue, and fail with [`ErrorKind::TooManyPending`] or
    /// [`ErrorKind::PendingTimeout`] as it is configured. The time a call
    /// waited is in its [`Summary::queue_wait`](crate::Summary::queue_wait).
    ///
    /// ```
    /// use std::time::Duration;
    /// use tollgate_limit::ConcurrencyLimitLayer;
    ///
    /// let client = tollgate::Client::builder("https://api.example.com")
    ///     .concurrency_limit(ConcurrencyLimitLayer::new(16).max_pending(256).pending_timeout(Duration::from_secs(2)))
    ///     .build()?;
    /// # Ok::<(), tollgate::Error>(())
    /// ```
    #[cfg(feature = "limit")]
    pub fn concurrency_limit(mut self, layer: tollgate_limit::ConcurrencyLimitLayer) -> Self {
        self.concurrency = Some(layer);
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
    /// [`RequestBuilder::no_cache`].
    ///
    /// A client with credentials of its own (`bearer_auth`, ...) keeps its
    /// responses in a partition of its own, so two clients sharing one
    /// cache layer never see each other's responses; a request's own
    /// [`credential`](RequestBuilder::credential) partitions it further.
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
        self.cache = Some(layer);
        self
    }

    /// Authenticates every request with this layer (stack position 6: below
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
    pub fn api_key_header(self, name: impl AsRef<str>, key: impl AsRef<str>) -> Self {
        self.auth_or_fail(tollgate_auth::AuthLayer::api_key_header(name, key))
    }

    /// An API key as the query parameter `name` on every request to the
    /// base URL's origin. The parameter is added below the tracing span, and
    /// its name is redacted in tracing output anyway.
    #[cfg(feature = "auth")]
    pub fn api_key_query(self, name: impl AsRef<str>, key: impl AsRef<str>) -> Self {
        let redact = name.as_ref().to_owned();
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

    /// Bounds each attempt (stack position 7); with retry on, an attempt
    /// that times out is retried like a connection failure. The whole call
    /// stays bounded by [`timeout`](Self::timeout). `Duration::MAX` means
    /// no limit; zero is an [`ErrorKind::Builder`] from `build`.
    pub fn attempt_timeout(mut self, timeout: Duration) -> Self {
        if timeout.is_zero() {
            return self.zero_timeout("attempt timeout");
        }
        self.attempt_timeout = Some(timeout);
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
        let base = BaseUrl::parse(&self.base)?;
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
        // Layers that want the call's deadline: retry starts no retry past it,
        // the rate limiter grants no permit beyond it.
        #[allow(unused_mut, reason = "each layer's feature adds to it")]
        let mut wants_deadline = false;
        #[cfg(feature = "retry")]
        {
            wants_deadline |= self.retry.is_some();
        }
        #[cfg(feature = "limit")]
        {
            wants_deadline |= self.rate_limit.is_some();
        }
        #[cfg(feature = "cache")]
        let cache_handle = self.cache.clone();
        #[allow(unused_mut, reason = "the auth feature sets a layer later")]
        let mut layers = Layers {
            #[cfg(feature = "retry")]
            retry: self.retry,
            max_body: self.max_body,
            attempt_timeout: self.attempt_timeout,
            #[cfg(feature = "limit")]
            concurrency: self.concurrency,
            #[cfg(feature = "limit")]
            rate_limit: self.rate_limit,
            #[cfg(feature = "auth")]
            auth: None,
            #[cfg(feature = "cache")]
            cache: self.cache,
        };
        // The stack is boxed exactly once: a second box would cost every call
        // another future allocation and every body frame another indirection.
        // The OAuth2 token source asks over the transport itself, below every
        // layer, so the API's own credentials never reach the token endpoint.
        #[cfg(feature = "auth")]
        let auth = self.auth;
        #[cfg(feature = "auth")]
        let has_auth = auth.is_some();
        #[cfg(not(feature = "auth"))]
        let has_auth = false;
        let stack = match self.transport {
            Some(custom) => {
                #[cfg(feature = "auth")]
                if let Some(auth) = auth {
                    layers.auth = Some(auth_layer(auth, &base, custom.clone())?);
                }
                if layers.is_empty() {
                    custom
                } else {
                    layers.compose(custom)
                }
            }
            None => {
                // Without TLS, the built-in transport would send an https
                // request in cleartext (to port 443, credentials and all).
                #[cfg(not(feature = "rustls"))]
                {
                    if base.is_https() {
                        return Err(transport::no_tls("the base URL"));
                    }
                    #[cfg(feature = "auth")]
                    if let Some(Auth::ClientCredentials { token_url, .. }) = &auth {
                        if token_url
                            .get(..8)
                            .is_some_and(|s| s.eq_ignore_ascii_case("https://"))
                        {
                            return Err(transport::no_tls("the OAuth2 token URL"));
                        }
                    }
                }
                let hyper = transport::hyper_client(&self.transport_config)?;
                #[cfg(feature = "auth")]
                if let Some(auth) = auth {
                    layers.auth = Some(auth_layer(auth, &base, hyper.clone())?);
                }
                layers.compose(hyper)
            }
        };
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
                wants_deadline,
                has_auth,
                #[cfg(feature = "cache")]
                partition: has_auth.then(next_partition),
                #[cfg(feature = "cache")]
                cache: cache_handle,
            }),
        })
    }
}

/// The auth layer a builder's settings describe, sent to the base URL's
/// origin unless it names its own.
#[cfg(feature = "auth")]
fn auth_layer<S, B>(
    auth: Auth,
    base: &BaseUrl,
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
            let source =
                tollgate_auth::ClientCredentials::new(transport, url, client_id, client_secret)
                    .map_err(|e| Error::new(ErrorKind::Builder, e.to_string()).with_source(e))?;
            tollgate_auth::AuthLayer::token_source(source)
        }
    };
    if layer.has_origin() {
        return Ok(layer);
    }
    let origin = tollgate_auth::Origin::parse(&base.as_str())
        .map_err(|e| Error::new(ErrorKind::Builder, e.to_string()).with_source(e))?;
    Ok(layer.origin(origin))
}
