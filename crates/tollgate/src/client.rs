//! [`Client`]: the client and its call path (its builder is in `builder.rs`,
//! its stack in `stack.rs`).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderName, Method};
use serde::de::DeserializeOwned;

use crate::builder::ClientBuilder;
use crate::endpoint::Endpoint;
use crate::error::{Error, ErrorKind};
use crate::request::RequestBuilder;
use crate::stack::Stack;
use crate::url::Origins;

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
    // OAuth2 and OpenID Connect values that travel in queries.
    "refresh_token",
    "id_token",
    "client_assertion",
    "assertion",
    "code",
    "code_verifier",
    "session",
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
    /// The base URL and the other allowed origins.
    pub(crate) base: Origins,
    pub(crate) headers: HeaderMap,
    pub(crate) timeout: Option<Duration>,
    pub(crate) max_body: usize,
    pub(crate) sensitive_query: Vec<String>,
    /// Query parameters sent with every request (the widest level).
    pub(crate) default_query: Vec<crate::endpoint::QueryPair>,
    pub(crate) endpoints: std::collections::HashMap<String, Arc<Endpoint>>,
    /// The header carrying each call's tracking id, if any.
    pub(crate) request_id: Option<HeaderName>,
    /// The layers and the transport (see `stack.rs`).
    pub(crate) stack: Stack,
    /// Whether each call sends a W3C `traceparent`.
    pub(crate) traceparent: bool,
    /// The most bytes of a body logged (`ClientBuilder::log_bodies`).
    pub(crate) log_bodies: Option<std::num::NonZeroUsize>,
    /// The cache partition of a client with credentials of its own.
    #[cfg(feature = "cache")]
    pub(crate) partition: Option<tollgate_core::Partition>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = &self.inner;
        // Header names only: default headers may hold credentials.
        let names: Vec<&str> = i.headers.keys().map(HeaderName::as_str).collect();
        f.debug_struct("Client")
            .field("base_url", &i.base.as_str())
            .field(
                "allowed_origins",
                &i.base.other_origins().collect::<Vec<_>>(),
            )
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

    /// Starts building a client without a base URL: every request takes an
    /// absolute URL (`client.get("https://api.example.com/x")`), as with
    /// reqwest. With [`ClientBuilder::allow_origin`], only to those origins;
    /// without, to any `http` or `https` origin (there is no SSRF guard then:
    /// never pass it URLs from untrusted input). Redirects are followed to
    /// the same origins. The client's own credential is sent only to the
    /// origins named on its auth layer
    /// ([`AuthLayer::origin`](tollgate_auth::AuthLayer::origin)): a client
    /// without a base URL whose credential names none is an
    /// [`ErrorKind::Builder`] error from `build`, so a token never goes to
    /// whatever URL the client is handed. [`ClientBuilder::default`] is the
    /// same builder.
    ///
    /// ```
    /// let client = tollgate::Client::builder_without_base().build()?;
    /// let req = client.get("https://api.example.com/x");
    /// # Ok::<(), tollgate::Error>(())
    /// ```
    pub fn builder_without_base() -> ClientBuilder {
        ClientBuilder::without_base()
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

    /// The base URL requests are joined to (without a trailing slash); empty
    /// for a client without one.
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
