//! [`Auth`]: the service [`AuthLayer`] makes.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::AUTHORIZATION;
use http::{Request, Response};
use tower::{BoxError, Service};

use crate::future::{ResponseFuture, TokenCtx};
use crate::layer::{AuthLayer, Config, Source};
use tollgate_core::Credential;

/// Attaches credentials to requests; made by [`AuthLayer`].
///
/// Request bodies may be of any type (`Full<Bytes>`, axum's `Body`,
/// hyper's `Incoming`, ...): a static credential needs no replay at all.
/// With a token source, a request is replayed after a 401 when its body is
/// whole in memory: a [`ReplayableBody`](tollgate_core::ReplayableBody)
/// that was buffered (what the retry layer above hands down), or
/// `Full<Bytes>`, `Bytes`, `String`, `Empty<Bytes>`. Any other body
/// streams once, and such a request's 401 is returned as it is, never
/// resent with an empty body. To replay other bodies, put the retry layer
/// above, or make them a buffered `ReplayableBody` first
/// ([`ReplayableBody::buffer`](tollgate_core::ReplayableBody::buffer)).
///
/// `poll_ready` is the inner service's. A request that needs a token
/// refresh waits for it inside its response future, so an idle clone holds
/// nothing.
#[derive(Clone)]
pub struct Auth<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S> Auth<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, layer: AuthLayer) -> Self {
        Auth {
            inner,
            config: layer.config,
        }
    }

    /// A layer attaching `credential` ([`AuthLayer::new`]); the other
    /// constructors ([`AuthLayer::bearer`], [`AuthLayer::token_source`],
    /// ...) are on the layer.
    pub fn layer(credential: Credential) -> AuthLayer {
        AuthLayer::new(credential)
    }

    tollgate_core::inner_accessors!();
}

impl<S: fmt::Debug> fmt::Debug for Auth<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Auth")
            .field("config", &*self.config)
            .field("inner", &self.inner)
            .finish()
    }
}

impl<S, B, ResB> Service<Request<B>> for Auth<S>
where
    S: Service<Request<B>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    B: 'static,
{
    type Response = Response<ResB>;
    type Error = BoxError;
    type Future = ResponseFuture<S, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let config = &self.config;
        let own = req.extensions_mut().remove::<Credential>();
        if !config.allows(req.uri()) {
            tracing::debug!(
                target: "tollgate_auth",
                "credential withheld: the request is for another origin"
            );
            return ResponseFuture::called(self.inner.call(req));
        }
        if let Some(own) = own {
            own.apply(&mut req, config.overwrite);
            return ResponseFuture::called(self.inner.call(req));
        }
        match &config.source {
            Source::Static(credential) => {
                credential.apply(&mut req, config.overwrite);
                ResponseFuture::called(self.inner.call(req))
            }
            Source::Tokens(tokens) => {
                if !config.overwrite && req.headers().contains_key(AUTHORIZATION) {
                    return ResponseFuture::called(self.inner.call(req));
                }
                // Take the service that was polled ready; leave a clone.
                let ctx = TokenCtx::new(tokens, config);
                match tokens.fresh(config.skew) {
                    // Called at once: the ready service is used in place.
                    Some(current) => {
                        ResponseFuture::with_token(&mut self.inner, req, &current, &ctx)
                    }
                    None => {
                        // Called after the refresh: take the service that was
                        // polled ready, and leave a clone.
                        let clone = self.inner.clone();
                        let ready = std::mem::replace(&mut self.inner, clone);
                        ResponseFuture::refreshing(ready, req, ctx)
                    }
                }
            }
        }
    }
}
