//! [`Cache`]: the service [`CacheLayer`] makes.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{
    AGE, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_RANGE, IF_MATCH, IF_MODIFIED_SINCE, IF_NONE_MATCH,
    IF_RANGE, IF_UNMODIFIED_SINCE, RANGE, TRANSFER_ENCODING,
};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri};
use http_body::Body;
use http_body_util::BodyExt;
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower::{BoxError, Service, ServiceExt};

use crate::body::CacheBody;
use crate::entry::later;
use crate::entry::Stored;
use crate::flight::{FlightKey, Leader, Outcome, Role, Ticket};
use crate::key::{identity, is_credential, normalize_uri, vary_of};
use crate::layer::CacheLayer;
use crate::policy::{decide, Decision};
use crate::status::{Bypass, CacheStatus, CacheTtl, CoalescedError, FromTier};
use crate::store::{Counters, Store};
use crate::tier::{decode, encode, public_key, tier_key};

/// Caches responses; made by [`CacheLayer`].
///
/// `poll_ready` is the inner service's. A hit is answered without calling
/// it; a miss takes the service that was polled ready and leaves a clone.
#[derive(Clone)]
pub struct Cache<S> {
    inner: S,
    store: Arc<Store>,
}

impl<S> Cache<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, layer: CacheLayer) -> Self {
        Cache {
            inner,
            store: layer.store,
        }
    }

    /// A layer caching for `ttl` ([`CacheLayer::new`]).
    pub fn layer(ttl: std::time::Duration) -> CacheLayer {
        CacheLayer::new(ttl)
    }

    tollgate_core::inner_accessors!();
}

impl<S: fmt::Debug> fmt::Debug for Cache<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cache")
            .field("config", &self.store.config)
            .field("inner", &self.inner)
            .finish()
    }
}

/// Methods that change the resource: their success invalidates it.
fn is_unsafe(method: &Method) -> bool {
    !matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

/// What the cache needs to know of a request's headers, read in one pass
/// (cheaper than a lookup per name: requests carry few headers).
#[derive(Default)]
struct Scan {
    /// Conditional, range, or `Cache-Control: no-store`.
    bypass: bool,
    /// `Cache-Control: no-cache` (or `max-age=0`): revalidate whatever is
    /// stored, and take no other request's answer.
    no_cache: bool,
    /// Carries a credential header (see `key::is_credential`).
    credential: bool,
}

fn scan(headers: &HeaderMap, credential_headers: &[http::HeaderName]) -> Scan {
    let mut out = Scan::default();
    for (name, value) in headers {
        if name == IF_NONE_MATCH
            || name == IF_MODIFIED_SINCE
            || name == IF_MATCH
            || name == IF_UNMODIFIED_SINCE
            || name == IF_RANGE
            || name == RANGE
        {
            out.bypass = true;
        } else if name == CACHE_CONTROL {
            // Lossy: one non-ASCII byte must not hide `no-store`.
            let text = String::from_utf8_lossy(value.as_bytes()).to_ascii_lowercase();
            for directive in text.split(',').map(str::trim) {
                out.bypass |= directive == "no-store";
                out.no_cache |= directive == "no-cache" || directive == "max-age=0";
            }
        } else if is_credential(name, credential_headers) {
            out.credential = true;
        }
    }
    out
}

/// A response from the stored one.
fn respond<B>(stored: &Stored, status: CacheStatus, now: Instant) -> Response<CacheBody<B>> {
    respond_with(stored, status, now, CacheBody::full)
}

/// A response from the stored one, its body made by `body`.
pub(crate) fn respond_with<T>(
    stored: &Stored,
    status: CacheStatus,
    now: Instant,
    body: impl FnOnce(Bytes) -> T,
) -> Response<T> {
    let mut response = Response::new(body(stored.body.clone()));
    *response.status_mut() = stored.status;
    *response.version_mut() = stored.version;
    let mut headers = stored.headers.clone();
    if status == CacheStatus::Coalesced {
        // Fresh from upstream: no `Age` (the stored one is a placeholder).
        headers.remove(AGE);
    } else {
        headers.insert(AGE, stored.age(now));
    }
    *response.headers_mut() = headers;
    response.extensions_mut().insert(status);
    response
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for Cache<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    ReqB: Send + 'static,
    ResB: Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError>,
{
    type Response = Response<CacheBody<ResB>>;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, ResB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: Request<ReqB>) -> Self::Future {
        let store = &self.store;
        // `CacheLayer::answer` may have taken the decision already.
        let decided = req
            .extensions_mut()
            .remove::<Routed>()
            .filter(|r| Arc::ptr_eq(&r.store, store))
            .map(|r| r.route);
        match decided.unwrap_or_else(|| route(store, &req)) {
            Route::Unsafe(uri) if store.tier.is_some() => {
                Counters::bump(&store.counters.bypassed);
                // Read-your-writes across the tier too: the response comes
                // back once the tier's copies are gone (or its calls timed
                // out).
                let keys = written_keys(store, &uri, &req);
                let future = self.inner.call(req);
                let store = store.clone();
                ResponseFuture::new(Kind::Slow {
                    future: Box::pin(async move {
                        let response = future.await.map_err(Into::into)?;
                        let status = response.status();
                        if status.is_success() || status.is_redirection() {
                            store.invalidate(&uri);
                            if let Some(tier) = &store.tier {
                                for key in &keys {
                                    tier.delete(&store.counters, key).await;
                                }
                            }
                        }
                        Ok(streamed(response, CacheStatus::Bypass))
                    }),
                })
            }
            Route::Unsafe(uri) => {
                Counters::bump(&store.counters.bypassed);
                ResponseFuture::new(Kind::Invalidate {
                    future: Box::pin(self.inner.call(req)),
                    store: store.clone(),
                    uri,
                })
            }
            Route::Bypass => {
                Counters::bump(&store.counters.bypassed);
                ResponseFuture::new(Kind::Bypass {
                    future: Box::pin(self.inner.call(req)),
                })
            }
            Route::Hit(stored, now) => {
                Counters::bump(&store.counters.hits);
                ResponseFuture::new(Kind::Ready {
                    response: Some(respond(&stored, CacheStatus::Hit, now)),
                })
            }
            Route::Miss {
                uri,
                identity,
                found,
                no_cache,
            } => {
                // Take the service that was polled ready; leave a clone.
                let clone = self.inner.clone();
                let service = std::mem::replace(&mut self.inner, clone);
                let key = FlightKey {
                    uri: Arc::from(uri),
                    method: req.method().clone(),
                    identity,
                };
                ResponseFuture::new(Kind::Slow {
                    future: Box::pin(fetch(store.clone(), service, req, key, found, no_cache)),
                })
            }
        }
    }
}

/// Where a request goes.
#[derive(Clone)]
pub(crate) enum Route {
    /// An unsafe method: through, then invalidate this URI if it succeeds.
    Unsafe(String),
    /// Not for the cache.
    Bypass,
    /// A fresh stored response, as of then.
    Hit(Arc<Stored>, Instant),
    /// Upstream, for this key, with what is stored (stale) if anything;
    /// `no_cache`: the request takes no other request's answer.
    Miss {
        uri: String,
        identity: u128,
        found: Option<Arc<Stored>>,
        no_cache: bool,
    },
}

/// A decision [`CacheLayer::answer`] took and left in the request's
/// extensions, for the layer of the same cache to use rather than take it
/// again.
#[derive(Clone)]
pub(crate) struct Routed {
    pub(crate) store: Arc<Store>,
    pub(crate) route: Route,
}

/// The one decision a request gets, for the layer and for
/// [`CacheLayer::answer`].
pub(crate) fn route<B>(store: &Store, req: &Request<B>) -> Route {
    let config = &store.config;
    if is_unsafe(req.method()) {
        return Route::Unsafe(normalize_uri(req.uri()));
    }
    let scanned = scan(req.headers(), &config.credential_headers);
    if scanned.bypass
        || !config.methods.contains(req.method())
        || req.extensions().get::<Bypass>().is_some()
    {
        return Route::Bypass;
    }
    let uri = normalize_uri(req.uri());
    let identity = identity(req, &config.credential_headers, scanned.credential);
    let found = store.lookup(&uri, req.method(), identity, req.headers());
    let now = Instant::now();
    match found {
        Some(stored) if !scanned.no_cache && stored.is_fresh(now) => Route::Hit(stored, now),
        found => Route::Miss {
            uri,
            identity,
            found,
            no_cache: scanned.no_cache,
        },
    }
}

type Slow<B> = Pin<Box<dyn Future<Output = Result<Response<CacheBody<B>>, BoxError>> + Send>>;

pin_project! {
    // Only a hit is inline: the other paths box their future, so a hit's
    // future stays small whatever the inner service's is.
    #[project = KindProj]
    enum Kind<F, B> {
        Ready { response: Option<Response<CacheBody<B>>> },
        Bypass { future: Pin<Box<F>> },
        Invalidate { future: Pin<Box<F>>, store: Arc<Store>, uri: String },
        Slow { future: Slow<B> },
    }
}

pin_project! {
    /// The response future of [`Cache`].
    pub struct ResponseFuture<F, B> {
        #[pin]
        kind: Kind<F, B>,
    }
}

impl<F, B> ResponseFuture<F, B> {
    fn new(kind: Kind<F, B>) -> Self {
        ResponseFuture { kind }
    }
}

impl<F, B> fmt::Debug for ResponseFuture<F, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::Ready { .. } => "hit",
            Kind::Bypass { .. } => "bypass",
            Kind::Invalidate { .. } => "unsafe method",
            Kind::Slow { .. } => "miss",
        };
        f.debug_struct("ResponseFuture")
            .field("kind", &kind)
            .finish()
    }
}

fn streamed<B>(response: Response<B>, status: CacheStatus) -> Response<CacheBody<B>> {
    let mut response = response.map(CacheBody::stream);
    response.extensions_mut().insert(status);
    response
}

impl<F, B, E> Future for ResponseFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<CacheBody<B>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Ready { response } => Poll::Ready(
                response
                    .take()
                    .ok_or_else(|| "cache: response future polled after completion".into()),
            ),
            KindProj::Bypass { future } => {
                let response = ready!(future.as_mut().poll(cx)).map_err(Into::into)?;
                Poll::Ready(Ok(streamed(response, CacheStatus::Bypass)))
            }
            KindProj::Invalidate { future, store, uri } => {
                let response = ready!(future.as_mut().poll(cx)).map_err(Into::into)?;
                let status = response.status();
                if status.is_success() || status.is_redirection() {
                    store.invalidate(uri);
                }
                Poll::Ready(Ok(streamed(response, CacheStatus::Bypass)))
            }
            KindProj::Slow { future } => future.as_mut().poll(cx),
        }
    }
}

/// A miss, or a stale entry: lead the flight for the key, wait for it, or
/// fetch alone.
///
/// A waiter takes the leader's answer only if the cache could have served
/// it that answer (stored or storable, fresh, its `Vary` values matching);
/// otherwise it fetches for itself. A key whose last answer could not be
/// shared is remembered for a while, and its requests fetch alone at once.
/// A request with `Cache-Control: no-cache` never waits on another's fetch.
async fn fetch<S, ReqB, ResB>(
    store: Arc<Store>,
    service: S,
    req: Request<ReqB>,
    key: FlightKey,
    mut found: Option<Arc<Stored>>,
    no_cache: bool,
) -> Result<Response<CacheBody<ResB>>, BoxError>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    S::Error: Into<BoxError>,
    ResB: Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError>,
{
    // Only a request that goes upstream pays for its tier key.
    let tier_key = store.tier.as_ref().and_then(|_| {
        tier_key(
            req.method(),
            &key.uri,
            req.headers(),
            req.extensions(),
            &store.config.credential_headers,
        )
    });
    let tier_key = tier_key.as_deref();
    let mut role = if store.flights.is_unshared(&key, Instant::now()) {
        Role::Alone(store.flights.alone(&key.uri))
    } else {
        store.flights.join(key.clone(), !no_cache)
    };
    loop {
        let waiter = match role {
            Role::Leader(leader, ticket) => {
                let tier = Tiered {
                    key: tier_key,
                    ask: !no_cache,
                };
                return lead(
                    &store,
                    service,
                    req,
                    &key,
                    found,
                    Some(leader),
                    ticket,
                    tier,
                )
                .await;
            }
            Role::Alone(ticket) => {
                let tier = Tiered {
                    key: tier_key,
                    ask: !no_cache,
                };
                return lead(&store, service, req, &key, found, None, ticket, tier).await;
            }
            Role::Waiter(waiter) => waiter,
        };
        let outcome = waiter.outcome().await;
        let now = Instant::now();
        match outcome {
            Outcome::Shared(stored)
                if stored.vary.matches(req.headers()) && stored.is_fresh(now) =>
            {
                Counters::bump(&store.counters.coalesced);
                return Ok(respond(&stored, CacheStatus::Coalesced, now));
            }
            Outcome::Stale(stored) if stored.vary.matches(req.headers()) => {
                Counters::bump(&store.counters.stale);
                return Ok(respond(&stored, CacheStatus::Stale, now));
            }
            Outcome::Failed(error) => return Err(Box::new(error)),
            Outcome::Shared(_) | Outcome::Stale(_) | Outcome::NotShared => {
                // Not an answer the cache could give this request. The
                // leader may have stored one for it, else it asks itself.
                found = store.lookup(&key.uri, &key.method, key.identity, req.headers());
                if let Some(stored) = found.as_ref().filter(|s| s.is_fresh(now)) {
                    Counters::bump(&store.counters.hits);
                    return Ok(respond(stored, CacheStatus::Hit, now));
                }
                let ticket = store.flights.alone(&key.uri);
                // The leader asked the tier for this key already.
                let tier = Tiered {
                    key: tier_key,
                    ask: false,
                };
                return lead(&store, service, req, &key, found, None, ticket, tier).await;
            }
            Outcome::Abandoned => {
                // The leader was cancelled. Look again, then lead or wait.
                found = store.lookup(&key.uri, &key.method, key.identity, req.headers());
                if let Some(stored) = found.as_ref().filter(|s| s.is_fresh(now)) {
                    Counters::bump(&store.counters.hits);
                    return Ok(respond(stored, CacheStatus::Hit, now));
                }
                role = store.flights.join(key.clone(), true);
            }
        }
    }
}

fn finish(leader: Option<Leader<'_>>, outcome: Outcome) {
    if let Some(leader) = leader {
        leader.finish(outcome);
    }
}

/// The leader's error; shared with its waiters, if it has any.
fn fail(leader: Option<Leader<'_>>, error: BoxError) -> BoxError {
    match leader {
        Some(leader) if leader.has_waiters() => {
            let shared = CoalescedError::new(error);
            leader.finish(Outcome::Failed(shared.clone()));
            Box::new(shared)
        }
        _ => error,
    }
}

enum Buffered<B> {
    Whole(Bytes),
    /// Over the limit: what was read, and the rest.
    Overflow(Bytes, Pin<Box<B>>),
    Failed(BoxError),
}

/// Reads `body` into memory up to `limit` bytes.
async fn buffer<B>(body: B, limit: usize) -> Buffered<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let mut body = Box::pin(body);
    let mut first: Option<Bytes> = None;
    let mut rest = BytesMut::new();
    loop {
        match body.as_mut().frame().await {
            None => break,
            Some(Err(e)) => return Buffered::Failed(e.into()),
            Some(Ok(frame)) => {
                let Ok(data) = frame.into_data() else {
                    continue; // trailers are not stored
                };
                let len = first.as_ref().map_or(0, Bytes::len) + rest.len() + data.len();
                match first.take() {
                    None if rest.is_empty() => first = Some(data),
                    Some(f) => {
                        rest.extend_from_slice(&f);
                        rest.extend_from_slice(&data);
                    }
                    None => rest.extend_from_slice(&data),
                }
                if len > limit {
                    let read = first.take().unwrap_or_else(|| rest.split().freeze());
                    return Buffered::Overflow(read, body);
                }
            }
        }
    }
    Buffered::Whole(first.unwrap_or_else(|| rest.freeze()))
}

fn has_validators(headers: &HeaderMap) -> bool {
    headers.contains_key(http::header::ETAG) || headers.contains_key(http::header::LAST_MODIFIED)
}

/// How long past freshness a response stays useful.
fn retention(store: &Store, headers: &HeaderMap) -> Duration {
    let revalidation = if has_validators(headers) {
        store.config.keep_for_revalidation
    } else {
        Duration::ZERO
    };
    revalidation.max(store.config.stale_if_error)
}

/// What the cache keeps of the request it sends, for the answer's rules.
struct Asked {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    ttl: Option<Duration>,
}

fn build_stored(
    store: &Store,
    (status, version, mut headers): (StatusCode, http::Version, HeaderMap),
    body: Bytes,
    decision: Decision,
    vary: crate::key::Vary,
    received: Instant,
) -> Stored {
    // Hop-by-hop headers describe one connection, not the response.
    for name in [
        http::header::CONNECTION,
        http::header::TRANSFER_ENCODING,
        http::header::TE,
        http::header::TRAILER,
        http::header::UPGRADE,
        http::header::PROXY_AUTHENTICATE,
    ] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    let initial_age = Stored::strip_age(&mut headers);
    let fresh_until = later(received, decision.ttl);
    let stale_until = later(fresh_until, retention(store, &headers));
    Stored {
        status,
        version,
        headers,
        body,
        stored_at: received,
        initial_age,
        fresh_until,
        stale_until,
        must_revalidate: decision.must_revalidate,
        serve_stale: !decision.no_stale,
        vary,
    }
}

/// Fetches for this request (and its waiters, if it leads a flight). The
/// answer is stored only if `ticket` is still current (no write to the URI
/// since it was taken), and shared with the waiters only if the cache could
/// serve it to them.
#[allow(
    clippy::too_many_arguments,
    reason = "one fetch's inputs, from three call sites of one function"
)]
async fn lead<S, ReqB, ResB>(
    store: &Store,
    service: S,
    mut req: Request<ReqB>,
    key: &FlightKey,
    found: Option<Arc<Stored>>,
    leader: Option<Leader<'_>>,
    ticket: Ticket<'_>,
    tier: Tiered<'_>,
) -> Result<Response<CacheBody<ResB>>, BoxError>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    S::Error: Into<BoxError>,
    ResB: Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError>,
{
    let config = &store.config;
    // The entry was looked up when the call was made, before this fetch's
    // ticket was taken: a write may have come in between and invalidated
    // it. Only an entry the store still holds may be revalidated or served
    // stale, so pre-write data never reaches a request made after the
    // write.
    let found = found.filter(|f| {
        store
            .lookup(&key.uri, req.method(), key.identity, req.headers())
            .is_some_and(|now| Arc::ptr_eq(&now, f))
    });
    // A request with no credential is answered as by a shared cache.
    let shared = key.identity == 0;
    let unshared_for = config.unshared_for;
    let asked = Asked {
        method: req.method().clone(),
        uri: req.uri().clone(),
        headers: req.headers().clone(),
        ttl: req.extensions().get::<CacheTtl>().map(|t| t.0),
    };
    // Memory had nothing fresh: another replica may have fetched it.
    if let (true, Some(tier_key)) = (tier.ask, tier.key) {
        if let Some(stored) = from_tier(store, tier_key, &asked.headers, shared).await {
            let now = Instant::now();
            store.insert(
                &ticket,
                key.uri.clone(),
                asked.method,
                key.identity,
                &asked.headers,
                stored.clone(),
            );
            store.flights.set_unshared(key, false, unshared_for);
            finish(leader, Outcome::Shared(stored.clone()));
            Counters::bump(&store.counters.hits);
            Counters::bump(&store.counters.tier_hits);
            let mut response = respond(&stored, CacheStatus::Hit, now);
            response.extensions_mut().insert(FromTier);
            return Ok(response);
        }
    }
    // A stale entry with validators: ask whether it changed.
    let revalidating = found.clone().filter(|s| s.has_validators());
    if let Some(stored) = &revalidating {
        if let Some(etag) = stored.etag() {
            req.headers_mut().insert(IF_NONE_MATCH, etag.clone());
        }
        if let Some(modified) = stored.last_modified() {
            req.headers_mut()
                .insert(IF_MODIFIED_SINCE, modified.clone());
        }
    }
    Counters::bump(&store.counters.misses);
    let result = service.oneshot(req).await.map_err(Into::into);
    let received = Instant::now();
    let stale = found.filter(|s| s.can_serve_stale(received));
    let response = match result {
        Ok(response) => response,
        Err(error) => {
            if let Some(stale) = stale {
                tracing::debug!(target: "tollgate_cache", error = %error, "upstream failed: serving the stale entry");
                Counters::bump(&store.counters.stale);
                finish(leader, Outcome::Stale(stale.clone()));
                return Ok(respond(&stale, CacheStatus::Stale, received));
            }
            return Err(fail(leader, error));
        }
    };
    let (mut parts, body) = response.into_parts();

    if let (Some(stored), StatusCode::NOT_MODIFIED) = (&revalidating, parts.status) {
        drop(body);
        // RFC 9111 §4.3.4: the 304's headers update the stored ones.
        let mut headers = stored.headers.clone();
        for name in parts.headers.keys() {
            if [CONTENT_LENGTH, TRANSFER_ENCODING, CONTENT_RANGE].contains(name) {
                continue;
            }
            headers.remove(name);
            for value in parts.headers.get_all(name) {
                headers.append(name.clone(), value.clone());
            }
        }
        let decision = decide(
            config.freshness,
            asked.ttl,
            shared,
            &asked.method,
            &asked.uri,
            &asked.headers,
            stored.status,
            &headers,
        );
        let renewed = Arc::new(build_stored(
            store,
            (stored.status, stored.version, headers),
            stored.body.clone(),
            decision.unwrap_or(Decision {
                ttl: Duration::ZERO,
                must_revalidate: true,
                no_stale: true,
            }),
            stored.vary.clone(),
            received,
        ));
        let inserted = decision.is_some()
            && store.insert(
                &ticket,
                key.uri.clone(),
                asked.method,
                key.identity,
                &asked.headers,
                renewed.clone(),
            );
        Counters::bump(&store.counters.revalidated);
        let shareable = decision.is_some() && renewed.is_fresh(received);
        store.flights.set_unshared(key, !shareable, unshared_for);
        finish(
            leader,
            if shareable {
                Outcome::Shared(renewed.clone())
            } else {
                Outcome::NotShared
            },
        );
        if inserted {
            to_tier(store, tier.key, &renewed, &ticket).await;
        }
        let mut response = respond(&renewed, CacheStatus::Revalidated, received);
        // What the layers below recorded (attempts, waits) stays on it.
        let status = CacheStatus::Revalidated;
        let mut extensions = parts.extensions;
        extensions.insert(status);
        *response.extensions_mut() = extensions;
        return Ok(response);
    }

    if parts.status.is_server_error() {
        if let Some(stale) = stale {
            tracing::debug!(target: "tollgate_cache", status = %parts.status, "upstream failed: serving the stale entry");
            Counters::bump(&store.counters.stale);
            finish(leader, Outcome::Stale(stale.clone()));
            return Ok(respond(&stale, CacheStatus::Stale, received));
        }
    }

    let decision = config
        .statuses
        .contains(&parts.status)
        .then(|| {
            decide(
                config.freshness,
                asked.ttl,
                shared,
                &asked.method,
                &asked.uri,
                &asked.headers,
                parts.status,
                &parts.headers,
            )
        })
        .flatten()
        // Worth keeping: fresh for a while, or kept to be revalidated or
        // served stale; and reusable at all (`no-cache` without validators
        // never is).
        .filter(|d| !d.ttl.is_zero() || !retention(store, &parts.headers).is_zero())
        .filter(|d| !d.must_revalidate || has_validators(&parts.headers));
    let vary = decision.and_then(|_| vary_of(&parts.headers, &asked.headers));
    let declared = body.size_hint().lower();
    parts.extensions.insert(CacheStatus::Miss);
    let (Some(decision), Some(vary)) = (decision, vary) else {
        // Not storable (`Vary: *` included): streamed as it comes, and
        // shared with nobody, who could not have had it from the cache.
        store.flights.set_unshared(key, true, unshared_for);
        finish(leader, Outcome::NotShared);
        return Ok(Response::from_parts(parts, CacheBody::stream(body)));
    };
    if declared > config.max_entry_bytes as u64 {
        // Never buffered: streamed as it comes.
        store.flights.set_unshared(key, true, unshared_for);
        finish(leader, Outcome::NotShared);
        return Ok(Response::from_parts(parts, CacheBody::stream(body)));
    }
    match buffer(body, config.max_entry_bytes).await {
        Buffered::Whole(bytes) => {
            let stored = Arc::new(build_stored(
                store,
                (parts.status, parts.version, parts.headers.clone()),
                bytes.clone(),
                decision,
                vary,
                received,
            ));
            let inserted = store.insert(
                &ticket,
                key.uri.clone(),
                asked.method,
                key.identity,
                &asked.headers,
                stored.clone(),
            );
            // Waiters joined before any write that refused the insert: the
            // answer is still one the cache could have given them.
            let shareable = stored.is_fresh(received);
            store.flights.set_unshared(key, !shareable, unshared_for);
            finish(
                leader,
                if shareable {
                    Outcome::Shared(stored.clone())
                } else {
                    Outcome::NotShared
                },
            );
            if inserted {
                to_tier(store, tier.key, &stored, &ticket).await;
            }
            Ok(Response::from_parts(parts, CacheBody::full(bytes)))
        }
        Buffered::Overflow(read, rest) => {
            store.flights.set_unshared(key, true, unshared_for);
            finish(leader, Outcome::NotShared);
            Ok(Response::from_parts(parts, CacheBody::prefix(read, rest)))
        }
        Buffered::Failed(error) => Err(fail(leader, error)),
    }
}

/// What a fetch does with the tier: the request's key there (`None`
/// without a tier, or for a request it cannot serve), and whether to look
/// in it before going upstream.
#[derive(Clone, Copy)]
struct Tiered<'a> {
    key: Option<&'a str>,
    ask: bool,
}

/// A fresh entry for this request from the tier, if it has one the cache
/// could serve it: of this version, filed under this very key (a tier that
/// answers another key's entry is a miss), within the per-entry limit, its
/// `Vary` values matching, fresh, and never `private` for a request
/// without a credential.
async fn from_tier(
    store: &Store,
    tier_key: &str,
    request: &HeaderMap,
    shared: bool,
) -> Option<Arc<Stored>> {
    let tier = store.tier.as_ref()?;
    // No answer is counted as such (errors, skipped), not as a miss.
    let bytes = tier.get(&store.counters, tier_key).await?;
    let now = Instant::now();
    let stored = bytes
        .filter(|b| b.len() <= store.config.max_entry_bytes)
        .and_then(|b| decode(b, tier_key, now, tier.wall_ms(now), |h| retention(store, h)))
        .filter(|s| s.vary.matches(request) && s.is_fresh(now))
        .filter(|s| !(shared && crate::policy::has_directive(&s.headers, "private")));
    if stored.is_none() {
        Counters::bump(&store.counters.tier_misses);
    }
    stored.map(Arc::new)
}

/// Writes a stored response to the tier, with its remaining freshness as
/// the TTL: not one with no freshness left (or revalidated on every reuse),
/// not one whose encoding is over the per-entry limit. A write to the URI
/// while it was being sent deletes it again.
async fn to_tier(store: &Store, tier_key: Option<&str>, stored: &Stored, ticket: &Ticket<'_>) {
    let (Some(tier), Some(tier_key)) = (store.tier.as_ref(), tier_key) else {
        return;
    };
    let now = Instant::now();
    if !stored.is_fresh(now) {
        return;
    }
    let left = stored.fresh_until.saturating_duration_since(now);
    if left < Duration::from_millis(1) {
        return;
    }
    let Some(value) = encode(
        tier_key,
        stored,
        now,
        tier.wall_ms(now),
        left,
        &store.config.credential_headers,
    )
    .filter(|v| v.len() <= store.config.max_entry_bytes) else {
        return;
    };
    tier.put(&store.counters, tier_key, value, left).await;
    if !ticket.is_current() {
        tier.delete(&store.counters, tier_key).await;
    }
}

/// The tier keys a successful write to `uri` drops: every cached method's,
/// for requests without a credential and for the writer's.
fn written_keys<B>(store: &Store, uri: &str, req: &Request<B>) -> Vec<String> {
    let mut keys = Vec::new();
    for method in &store.config.methods {
        keys.push(public_key(method, uri));
        if let Some(own) = tier_key(
            method,
            uri,
            req.headers(),
            req.extensions(),
            &store.config.credential_headers,
        ) {
            if !keys.contains(&own) {
                keys.push(own);
            }
        }
    }
    keys
}
