//! The bottom of the stack: a boxed tower service of `http::Request`, by
//! default a hyper-util legacy client with connection pooling.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body as HttpBody;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tower::util::BoxCloneSyncService;
use tower::{BoxError, Service};

use crate::error::{Error, ErrorKind};

/// The request body type of the stack: a complete, cheaply clonable buffer,
/// so that layers such as retry can replay it.
pub type RequestBody = Full<Bytes>;

/// The response body type the facade reads from its stack.
pub type ResponseBody = UnsyncBoxBody<Bytes, BoxError>;

/// The type-erased service the facade sends requests through.
pub(crate) type Stack = BoxCloneSyncService<Request<RequestBody>, Response<ResponseBody>, BoxError>;

/// A service the stack can be built over: its bounds, stated once.
pub(crate) trait Transport<B>:
    Service<
        Request<RequestBody>,
        Response = Response<B>,
        Error: Into<BoxError>,
        Future: Send + 'static,
    > + Clone
    + Send
    + Sync
    + 'static
{
}

impl<S, B> Transport<B> for S where
    S: Service<
            Request<RequestBody>,
            Response = Response<B>,
            Error: Into<BoxError>,
            Future: Send + 'static,
        > + Clone
        + Send
        + Sync
        + 'static
{
}

/// A response body the facade can read: its bounds, stated once.
pub(crate) trait TransportBody:
    HttpBody<Data = Bytes, Error: Into<BoxError>> + Send + 'static
{
}

impl<B> TransportBody for B where B: HttpBody<Data = Bytes, Error: Into<BoxError>> + Send + 'static {}

/// Erases a caller's service (and its body type) into a [`Stack`].
pub(crate) fn boxed<S: Transport<B>, B: TransportBody>(service: S) -> Stack {
    BoxCloneSyncService::new(Erase(service))
}

/// Boxes the response body and the error in one step: one future adapter on
/// every call instead of tower's `map_response` and `map_err` chained.
#[derive(Clone)]
struct Erase<S>(S);

impl<S, B> Service<Request<RequestBody>> for Erase<S>
where
    S: Service<Request<RequestBody>, Response = Response<B>>,
    S::Error: Into<BoxError>,
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody>;
    type Error = BoxError;
    type Future = EraseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.0.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<RequestBody>) -> Self::Future {
        EraseFuture {
            inner: self.0.call(req),
        }
    }
}

pin_project_lite::pin_project! {
    struct EraseFuture<F> {
        #[pin]
        inner: F,
    }
}

impl<F, B, E> Future for EraseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Output = Result<Response<ResponseBody>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().inner.poll(cx) {
            Poll::Ready(Ok(res)) => {
                Poll::Ready(Ok(res.map(|b| b.map_err(Into::into).boxed_unsync())))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e.into())),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Settings of the default transport.
#[derive(Clone, Debug)]
pub(crate) struct TransportConfig {
    pub(crate) connect_timeout: Option<Duration>,
    pub(crate) pool_idle_timeout: Option<Duration>,
    pub(crate) pool_max_idle_per_host: usize,
    pub(crate) http2_prior_knowledge: bool,
    #[cfg(feature = "rustls")]
    pub(crate) extra_roots: Vec<Vec<u8>>,
}

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig {
            connect_timeout: Some(Duration::from_secs(10)),
            pool_idle_timeout: Some(Duration::from_secs(90)),
            pool_max_idle_per_host: usize::MAX,
            http2_prior_knowledge: false,
            #[cfg(feature = "rustls")]
            extra_roots: Vec::new(),
        }
    }
}

/// The built-in transport's concrete type.
#[cfg(feature = "rustls")]
pub(crate) type HyperClient =
    hyper_util::client::legacy::Client<hyper_rustls::HttpsConnector<HttpConnector>, RequestBody>;
/// The built-in transport's concrete type.
#[cfg(not(feature = "rustls"))]
pub(crate) type HyperClient = hyper_util::client::legacy::Client<HttpConnector, RequestBody>;

/// Builds the hyper-util client: HTTP/1.1, HTTP/2 by ALPN over TLS (or by
/// prior knowledge when asked), HTTPS through rustls with the ring provider.
pub(crate) fn hyper_client(cfg: &TransportConfig) -> Result<HyperClient, Error> {
    let mut http = HttpConnector::new();
    // Without TLS, the connector itself refuses anything but `http`: an
    // `https` URL must never go out in cleartext.
    http.enforce_http(cfg!(not(feature = "rustls")));
    http.set_nodelay(true);
    http.set_connect_timeout(cfg.connect_timeout);

    let mut builder = hyper_util::client::legacy::Client::builder(TokioExecutor::new());
    // No pool timer: hyper-util then drops expired idle connections when it
    // next looks at them instead of from a background interval. The interval
    // kept a timer pending at all times, so every park of the runtime armed
    // a kernel timer (a VM exit on virtual machines): ~5 µs of CPU per request
    // at concurrency 1, measured in benches/loopback.rs.
    builder
        .pool_idle_timeout(cfg.pool_idle_timeout)
        .pool_max_idle_per_host(cfg.pool_max_idle_per_host);
    #[cfg(feature = "http2")]
    builder.http2_only(cfg.http2_prior_knowledge);
    #[cfg(not(feature = "http2"))]
    if cfg.http2_prior_knowledge {
        return Err(Error::new(
            ErrorKind::Builder,
            "HTTP/2 prior knowledge needs the `http2` feature",
        ));
    }

    #[cfg(feature = "rustls")]
    {
        let tls = tls_config(cfg)?;
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http();
        #[cfg(feature = "http2")]
        let https = https.enable_all_versions();
        #[cfg(not(feature = "http2"))]
        let https = https.enable_http1();
        Ok(builder.build(https.wrap_connector(http)))
    }
    #[cfg(not(feature = "rustls"))]
    {
        Ok(builder.build(http))
    }
}

/// The error for an `https` URL on a client built without TLS.
#[cfg(not(feature = "rustls"))]
pub(crate) fn no_tls(what: &str) -> Error {
    Error::new(
        ErrorKind::Builder,
        format!(
            "{what} is https, but tollgate was built without TLS (its `rustls` feature is \
             off): refused rather than sent in cleartext"
        ),
    )
}

#[cfg(feature = "rustls")]
fn tls_config(cfg: &TransportConfig) -> Result<rustls::ClientConfig, Error> {
    use std::sync::Arc;

    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for der in &cfg.extra_roots {
        roots
            .add(rustls::pki_types::CertificateDer::from(der.clone()))
            .map_err(|e| {
                Error::new(ErrorKind::Builder, "invalid root certificate").with_source(e)
            })?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::new(ErrorKind::Builder, "TLS set-up failed").with_source(e))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}
