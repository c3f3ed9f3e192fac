//! [`CacheLayer`], its builder, and what it can tell.

use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, Method, StatusCode, Uri};
use tower::Layer;

use crate::key::normalize_uri;
use crate::policy::Freshness;
use crate::service::Cache;
use crate::store::{Config, Store};
use crate::tier::{CacheTier, Tier, DEFAULT_TIER_TIMEOUT};

/// The default for [`CacheBuilder::max_bytes`]: 64 MiB.
pub const DEFAULT_MAX_BYTES: u64 = 64 << 20;
/// The default for [`CacheBuilder::max_entry_bytes`]: 1 MiB.
pub const DEFAULT_MAX_ENTRY_BYTES: usize = 1 << 20;
/// The default for [`CacheBuilder::keep_for_revalidation`]: 10 minutes.
pub const DEFAULT_KEEP_FOR_REVALIDATION: Duration = Duration::from_secs(600);
/// The default for [`CacheBuilder::remember_uncacheable`]: 10 seconds.
pub const DEFAULT_REMEMBER_UNCACHEABLE: Duration = Duration::from_secs(10);

/// Caches HTTP responses in memory, shared by every clone.
///
/// # Contents
///
/// - Freshness: [`CacheLayer::new`] (fixed TTL) or [`CacheLayer::http`]
///   (HTTP's rules), then [`CacheBuilder`] for the rest.
/// - Handles: [`invalidate`](Self::invalidate), [`clear`](Self::clear),
///   [`stats`](Self::stats).
///
/// # Rules
///
/// | rule | how |
/// |------|-----|
/// | what is stored | responses to `GET` and `HEAD` (configurable) with a 2xx status other than 206 (configurable); never `no-store` on the request or the response, never a response with `Set-Cookie`, never a `private` one for a request without a credential (see [Shared](#shared)); `no-cache` is stored only with a validator (`ETag`, `Last-Modified`), revalidated before every reuse and never served stale. A fixed TTL overrides freshness, never these rules ([`Freshness`]) |
/// | how long | [`Freshness::Fixed`] or [`Freshness::Http`]; a request's [`CacheTtl`](crate::CacheTtl) overrides; freshness is capped at 2^31 s ([`MAX_FRESHNESS`](crate::MAX_FRESHNESS)) and every other duration saturates, so `Duration::MAX` anywhere is never a panic |
/// | the key | the method, the [normalized URI](crate::normalize_uri), the request headers the response's `Vary` names (`Vary: *` is never stored), and an identity of the request's credentials (see [Credentials](#credentials)). A response fetched with one credential is never served to a request with another |
/// | revalidation | a stale entry with an `ETag` or `Last-Modified` is asked for with `If-None-Match` / `If-Modified-Since`; a `304` renews it without a body |
/// | stale-if-error | within [`stale_if_error`](CacheBuilder::stale_if_error) of going stale, an entry is served when the upstream fails (an error or a 5xx), marked [`CacheStatus::Stale`](crate::CacheStatus::Stale); never one that said `must-revalidate` (or, for a request without a credential, `proxy-revalidate` or `s-maxage`) |
/// | single-flight | concurrent misses for one key make one upstream request; the others wait for its response, or get its error; a cancelled request hands the fetch to the next. A waiter takes the response only if the cache could have served it that response (storable, fresh, its `Vary` values matching); otherwise it sends its own request. A key whose response could not be shared is remembered for [`remember_uncacheable`](CacheBuilder::remember_uncacheable), and its requests go upstream at once rather than wait. A request with `Cache-Control: no-cache` (or `max-age=0`) never waits on another's |
/// | invalidation | a `POST`, `PUT`, `PATCH` or `DELETE` answered with a 2xx or 3xx drops every stored response for its URI. Read-your-writes: a request made after the write completed never joins a fetch that started before it, and such a fetch stores nothing. [`invalidate`](Self::invalidate) and [`clear`](Self::clear) are writes too |
/// | memory | capacity in bytes, weighed over body, headers and bookkeeping; a response over the per-entry limit is streamed through, not stored; a body that will not be stored is never buffered |
/// | what happened | a [`CacheStatus`](crate::CacheStatus) in the response's extensions; an `Age` header on responses from the cache |
///
/// Conditional requests (`If-None-Match`, ...), range requests, and requests
/// with a [`Bypass`](crate::Bypass) or `Cache-Control: no-store` go straight
/// through.
///
/// # Shared
///
/// One layer is shared by every client, clone and task that uses it, so it
/// is a *shared* cache in RFC 9111's sense for every request without a
/// credential: a `private` response to such a request is never stored (nor
/// handed to a waiting request), and [`Freshness::Http`] honours
/// `s-maxage`. A request partitioned to one credential (a credential
/// header, a `tollgate_core::Credential` (`tollgate_auth::Credential`) or a [`Partition`](crate::Partition))
/// has entries only that credential can read, as a private cache would: a
/// `private` response to it is stored for it.
///
/// # Credentials
///
/// These request headers identify a credential, and partition the cache by
/// their values: `Authorization`, `Proxy-Authorization`, `Cookie`, every
/// header whose name contains `auth`, `cookie`, `credential`, `key`, `jwt`,
/// `password`, `secret`, `session`, `signature` or `token` (`Api-Key`,
/// `X-Api-Key`, `X-Auth-Token`, `X-Session-Id`, `X-Amz-Security-Token`,
/// `X-Hub-Signature`, ...), and any named with
/// [`credential_header`](CacheBuilder::credential_header). Two requests that
/// differ in any of them never share an entry, nor a fetch; the order the
/// headers were set in does not matter. Their values are hashed with a key
/// random per process, never kept. Erring this way costs hits, never a
/// leak: an idempotency key on a `GET` keeps its response to itself.
///
/// # Tier
///
/// [`CacheBuilder::tier`] adds a second tier behind memory, typically one
/// that the replicas of a service share (`tollgate_redis::RedisCacheTier`),
/// so that what one replica fetched the others serve.
///
/// | rule | how |
/// |------|-----|
/// | lookup | a request that finds nothing fresh in memory looks in the tier before going upstream, inside the single-flight: only the flight's leader asks, its followers get its answer ([`CacheStatus::Coalesced`](crate::CacheStatus::Coalesced)). A tier hit fills memory and is answered as [`CacheStatus::Hit`](crate::CacheStatus::Hit) with a [`FromTier`](crate::FromTier) beside it, counted in [`CacheStats::tier_hits`]. A request with `Cache-Control: no-cache` skips the tier (it asked for the upstream) |
/// | fill | a response stored in memory is written to the tier (before the response is handed back, within the timeout) with its remaining freshness as the TTL; one with no freshness left (or `no-cache`, revalidated on every reuse) is not written; a revalidated one is written again |
/// | keys | the hex SHA-256 of the method, the normalized URI and the request's credential headers and `Credential` (see [Credentials](#credentials)): the same in every replica of one build, so a credential's entries are shared between replicas and never reach another credential; neither the URI nor a credential is ever in a key in clear. A request with a [`Partition`](crate::Partition) never uses the tier: a partition is a hash keyed per process, which no other replica can match |
/// | `Vary` | the entry carries the request header values its response varies on; a lookup whose values differ is a miss. The tier keeps one variant per key (the last written); memory keeps up to eight |
/// | encoding | a version byte ([`TIER_FORMAT_VERSION`](crate::TIER_FORMAT_VERSION)) first, then length-prefixed binary: the key it was written under, the wall-clock time it was written, its age and freshness left then, status, version, headers, `Vary` values, body. Chosen over JSON: bodies are bytes (base64 would add a third), it needs no serializer, and every length is checked. An entry that cannot be decoded, of another version, written under another key, or with no freshness left, is a miss, never an error |
/// | time | a replica reading an entry ages it by the wall-clock time since it was written (a reader whose clock is behind counts none), so every replica serves it with the same `Age` and lets it go when it would have; clock skew between replicas shifts that by the skew. The wall clock is read once when the layer is built and moved on by tokio's |
/// | size | an entry whose encoding (body, headers and all) is over [`max_entry_bytes`](CacheBuilder::max_entry_bytes) is neither written nor read |
/// | failures | every call is bounded by [`tier_timeout`](CacheBuilder::tier_timeout) (10 ms by default); a slower answer, or an error, is a miss: the request goes on with memory and the upstream and never fails because of the tier. It is counted ([`CacheStats::tier_errors`]), logged once when the tier starts failing and once when it answers again (target `tollgate_cache`), and the tier is left alone for [`TIER_RETRY`](crate::TIER_RETRY) (no request waits on it then; [`CacheStats::tier_skipped`]), then asked again, so it comes back by itself |
/// | writes | a successful unsafe request drops the tier's entries of its URI for requests without a credential and for the writer's credential before its response is handed back, so no replica *fetches* the old one from the tier after the write; other credentials' entries of that URI there end with their freshness, and so do the copies other replicas already hold in memory (the tier shares entries, not invalidations). A fill on the writer's replica that raced the write deletes what it wrote; one on another replica that lands after the write's delete stays until its freshness ends (the replicas share no write log). [`invalidate`](Self::invalidate) drops the entries without a credential too; [`clear`](Self::clear) only memory |
///
/// The tier must be trusted like the cache's memory: it holds responses,
/// including those fetched with a credential (filed under a hash of it).
///
/// # Time
///
/// Freshness is measured on tokio's clock (each entry carries its own
/// deadline), so tests with paused time see entries expire exactly.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use bytes::Bytes;
/// use http::{Request, Response};
/// use http_body_util::Full;
/// use tower::{service_fn, Layer, ServiceExt};
/// use tollgate_cache::{CacheLayer, CacheStatus};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tower::BoxError> {
/// let upstream = service_fn(|_req: Request<()>| async {
///     Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from("{\"id\":1}"))))
/// });
/// let cache = CacheLayer::new(Duration::from_secs(60));
/// let service = cache.layer(upstream);
///
/// let first = service.clone().oneshot(Request::get("http://api.test/posts/1").body(())?).await?;
/// assert_eq!(first.extensions().get::<CacheStatus>(), Some(&CacheStatus::Miss));
/// let second = service.oneshot(Request::get("http://api.test/posts/1").body(())?).await?;
/// assert_eq!(second.extensions().get::<CacheStatus>(), Some(&CacheStatus::Hit));
/// assert_eq!(cache.stats().hits, 1);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct CacheLayer {
    pub(crate) store: Arc<Store>,
}

impl CacheLayer {
    /// A cache that keeps responses for `ttl`, whatever the server says
    /// (but `no-store`), with the other defaults of [`CacheBuilder`].
    pub fn new(ttl: Duration) -> CacheLayer {
        CacheLayer::builder(Freshness::Fixed(ttl)).build()
    }

    /// A cache that follows HTTP's rules for a private cache
    /// ([`Freshness::Http`]), keeping responses that say nothing about
    /// freshness for `default_ttl` if given.
    pub fn http(default_ttl: Option<Duration>) -> CacheLayer {
        CacheLayer::builder(Freshness::Http { default_ttl }).build()
    }

    /// Starts configuring a cache.
    pub fn builder(freshness: Freshness) -> CacheBuilder {
        CacheBuilder {
            config: Config {
                freshness,
                methods: vec![Method::GET, Method::HEAD],
                statuses: (200..300)
                    .filter(|s| *s != 206)
                    .filter_map(|s| StatusCode::from_u16(s).ok())
                    .collect(),
                max_entry_bytes: DEFAULT_MAX_ENTRY_BYTES,
                stale_if_error: Duration::ZERO,
                keep_for_revalidation: DEFAULT_KEEP_FOR_REVALIDATION,
                credential_headers: Vec::new(),
                max_variants: 8,
                unshared_for: DEFAULT_REMEMBER_UNCACHEABLE,
            },
            max_bytes: DEFAULT_MAX_BYTES,
            tier: TierSetting {
                tier: None,
                timeout: DEFAULT_TIER_TIMEOUT,
            },
        }
    }

    /// Answers `request` from the cache if it holds a fresh response for
    /// it: exactly what the layer does on a hit (same key, credential
    /// identity, freshness, `Age` and [`CacheStatus::Hit`](crate::CacheStatus::Hit),
    /// counted as a hit), without an inner service to fall back on. `None`
    /// for anything else, which is not counted: send the request through the
    /// layer then, and it uses the decision taken here (left in the
    /// request's extensions) rather than look it up again. A client that
    /// owns its stack (the `tollgate` facade) uses it to answer hits without
    /// entering the stack.
    ///
    /// ```
    /// use std::time::Duration;
    /// use bytes::Bytes;
    /// use http::{Request, Response};
    /// use http_body_util::Full;
    /// use tower::{service_fn, Layer, ServiceExt};
    /// use tollgate_cache::CacheLayer;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tower::BoxError> {
    /// let cache = CacheLayer::new(Duration::from_secs(60));
    /// let get = || Request::get("http://api.test/x").body(()).unwrap();
    /// assert!(cache.answer(&mut get()).is_none());
    /// let upstream = service_fn(|_req: Request<()>| async {
    ///     Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from("x"))))
    /// });
    /// cache.layer(upstream).oneshot(get()).await?;
    /// assert_eq!(cache.answer(&mut get()).map(|r| r.into_body()), Some(Bytes::from("x")));
    /// # Ok(()) }
    /// ```
    pub fn answer<B>(
        &self,
        request: &mut http::Request<B>,
    ) -> Option<http::Response<bytes::Bytes>> {
        match crate::service::route(&self.store, request) {
            crate::service::Route::Hit(stored, now) => {
                crate::store::Counters::bump(&self.store.counters.hits);
                Some(crate::service::respond_with(
                    &stored,
                    crate::CacheStatus::Hit,
                    now,
                    |body| body,
                ))
            }
            route => {
                request.extensions_mut().insert(crate::service::Routed {
                    store: self.store.clone(),
                    route,
                });
                None
            }
        }
    }

    /// Drops every stored response for `uri` (all methods, credentials and
    /// variants). With a [tier](CacheBuilder::tier), also the tier's entries
    /// of requests without a credential for it, on a task of its own (none
    /// outside a tokio runtime); other credentials' entries there end with
    /// their freshness.
    pub fn invalidate(&self, uri: &Uri) {
        let uri = normalize_uri(uri);
        self.store.invalidate(&uri);
        if let Some(tier) = &self.store.tier {
            let keys = self
                .store
                .config
                .methods
                .iter()
                .map(|m| crate::tier::public_key(m, &uri))
                .collect();
            tier.delete_later(self.store.counters.clone(), keys);
        }
    }

    /// Drops everything in memory. A [tier](CacheBuilder::tier) is left
    /// as it is: its entries end with their freshness.
    pub fn clear(&self) {
        self.store.clear();
    }

    /// Counters since the cache was built.
    pub fn stats(&self) -> CacheStats {
        let c = &self.store.counters;
        CacheStats {
            hits: c.hits.load(Ordering::Relaxed),
            misses: c.misses.load(Ordering::Relaxed),
            coalesced: c.coalesced.load(Ordering::Relaxed),
            revalidated: c.revalidated.load(Ordering::Relaxed),
            stale: c.stale.load(Ordering::Relaxed),
            bypassed: c.bypassed.load(Ordering::Relaxed),
            evictions: c.evictions.load(Ordering::Relaxed),
            tier_hits: c.tier_hits.load(Ordering::Relaxed),
            tier_misses: c.tier_misses.load(Ordering::Relaxed),
            tier_errors: c.tier_errors.load(Ordering::Relaxed),
            tier_skipped: c.tier_skipped.load(Ordering::Relaxed),
            tier_writes: c.tier_writes.load(Ordering::Relaxed),
            entries: self.store.entry_count(),
            bytes: self.store.weighted_size(),
        }
    }
}

impl<S> Layer<S> for CacheLayer {
    type Service = Cache<S>;

    fn layer(&self, inner: S) -> Cache<S> {
        Cache::new(inner, self.clone())
    }
}

impl fmt::Debug for CacheLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheLayer")
            .field("config", &self.store.config)
            .finish_non_exhaustive()
    }
}

/// Counters of a [`CacheLayer`] (from [`CacheLayer::stats`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct CacheStats {
    /// Responses served fresh from the cache.
    pub hits: u64,
    /// Requests that went upstream as leaders (or alone).
    pub misses: u64,
    /// Requests that waited for another's identical request.
    pub coalesced: u64,
    /// Stale entries renewed by a `304`.
    pub revalidated: u64,
    /// Stale entries served because the upstream failed.
    pub stale: u64,
    /// Requests that did not use the cache.
    pub bypassed: u64,
    /// Entries evicted to stay within the capacity.
    pub evictions: u64,
    /// Responses served from the [tier](CacheBuilder::tier) (also counted
    /// in `hits`): a miss in memory that another replica had fetched.
    pub tier_hits: u64,
    /// Lookups in the tier that found nothing usable: nothing there, or an
    /// entry that could not be decoded, of another version, for another
    /// key, with other `Vary` values, or with no freshness left.
    pub tier_misses: u64,
    /// Tier calls that failed or took longer than
    /// [`tier_timeout`](CacheBuilder::tier_timeout).
    pub tier_errors: u64,
    /// Tier calls not made because the tier failed within the last
    /// [`TIER_RETRY`](crate::TIER_RETRY).
    pub tier_skipped: u64,
    /// Entries written to the tier.
    pub tier_writes: u64,
    /// URIs with stored responses.
    pub entries: u64,
    /// Bytes counted against the capacity.
    pub bytes: u64,
}

/// Configures a [`CacheLayer`]; from [`CacheLayer::builder`].
#[derive(Debug, Clone)]
pub struct CacheBuilder {
    config: Config,
    max_bytes: u64,
    tier: TierSetting,
}

#[derive(Clone)]
struct TierSetting {
    tier: Option<Arc<dyn CacheTier>>,
    timeout: Duration,
}

impl fmt::Debug for TierSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tier")
            .field("set", &self.tier.is_some())
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl CacheBuilder {
    /// The capacity in bytes (default 64 MiB), counting bodies, headers
    /// and per-entry bookkeeping. The least useful entries are evicted
    /// beyond it.
    pub fn max_bytes(mut self, bytes: u64) -> Self {
        self.max_bytes = bytes;
        self
    }

    /// The largest body stored (default 1 MiB). A larger response is
    /// streamed through unbuffered and not stored.
    pub fn max_entry_bytes(mut self, bytes: usize) -> Self {
        self.config.max_entry_bytes = bytes;
        self
    }

    /// The methods whose responses are stored (default `GET` and `HEAD`).
    pub fn methods(mut self, methods: impl IntoIterator<Item = Method>) -> Self {
        self.config.methods = methods.into_iter().collect();
        self
    }

    /// The statuses stored (default every 2xx but 206).
    pub fn statuses(mut self, statuses: impl IntoIterator<Item = StatusCode>) -> Self {
        self.config.statuses = statuses.into_iter().collect();
        self
    }

    /// Serves a stale entry, within this long of going stale, when the
    /// upstream fails with an error or a 5xx (default: never).
    pub fn stale_if_error(mut self, grace: Duration) -> Self {
        self.config.stale_if_error = grace;
        self
    }

    /// How long a stale entry with an `ETag` or `Last-Modified` is kept for
    /// revalidation (default 10 minutes).
    pub fn keep_for_revalidation(mut self, keep: Duration) -> Self {
        self.config.keep_for_revalidation = keep;
        self
    }

    /// Also partitions by this request header, besides those the cache
    /// already counts as credentials (see [Credentials](CacheLayer#credentials)):
    /// a tenant id, a user id, anything that tells users apart.
    pub fn credential_header(mut self, name: HeaderName) -> Self {
        if !self.config.credential_headers.contains(&name) {
            self.config.credential_headers.push(name);
        }
        self
    }

    /// How long a key whose response could not be shared (not storable,
    /// not fresh, `Vary: *`, over the per-entry limit) lets its requests go
    /// upstream at once, rather than wait on a request whose answer they
    /// could not use (default [`DEFAULT_REMEMBER_UNCACHEABLE`]; zero waits
    /// every time). A storable response forgets it at once.
    pub fn remember_uncacheable(mut self, how_long: Duration) -> Self {
        self.config.unshared_for = how_long;
        self
    }

    /// A second tier behind memory, typically shared by every replica of a
    /// service (`tollgate_redis::RedisCacheTier`). See [Tier](CacheLayer#tier).
    ///
    /// Two layers sharing one tier act as two replicas: what one fetched,
    /// the other serves.
    ///
    /// ```
    /// use std::collections::HashMap;
    /// use std::sync::{Arc, Mutex};
    /// use std::time::Duration;
    /// use bytes::Bytes;
    /// use http::{Request, Response};
    /// use http_body_util::Full;
    /// use tower::{service_fn, Layer, ServiceExt};
    /// use tollgate_cache::{CacheLayer, CacheStatus, CacheTier, Freshness, FromTier, TierFuture};
    ///
    /// /// A tier in a map (no TTLs: an example, not a cache).
    /// #[derive(Default)]
    /// struct Map(Mutex<HashMap<String, Bytes>>);
    ///
    /// impl CacheTier for Map {
    ///     fn get(&self, key: &str) -> TierFuture<Option<Bytes>> {
    ///         let found = self.0.lock().unwrap().get(key).cloned();
    ///         Box::pin(async move { Ok(found) })
    ///     }
    ///     fn put(&self, key: &str, value: Bytes, _ttl: Duration) -> TierFuture<()> {
    ///         self.0.lock().unwrap().insert(key.to_owned(), value);
    ///         Box::pin(async { Ok(()) })
    ///     }
    ///     fn delete(&self, key: &str) -> TierFuture<()> {
    ///         self.0.lock().unwrap().remove(key);
    ///         Box::pin(async { Ok(()) })
    ///     }
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tower::BoxError> {
    /// let shared = Arc::new(Map::default());
    /// let replica = || {
    ///     CacheLayer::builder(Freshness::Fixed(Duration::from_secs(60)))
    ///         .tier(shared.clone())
    ///         .build()
    /// };
    /// let upstream = service_fn(|_req: Request<()>| async {
    ///     Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from("{\"id\":1}"))))
    /// });
    /// let get = || Request::get("http://api.test/posts/1").body(());
    /// let a = replica().layer(upstream).oneshot(get()?).await?;
    /// assert_eq!(a.extensions().get::<CacheStatus>(), Some(&CacheStatus::Miss));
    /// let b = replica().layer(upstream).oneshot(get()?).await?;
    /// assert_eq!(b.extensions().get::<CacheStatus>(), Some(&CacheStatus::Hit));
    /// assert!(b.extensions().get::<FromTier>().is_some());
    /// # Ok(()) }
    /// ```
    pub fn tier(mut self, tier: Arc<dyn CacheTier>) -> Self {
        self.tier.tier = Some(tier);
        self
    }

    /// How long a request waits for the [tier](Self::tier) at most, per
    /// call (default [`DEFAULT_TIER_TIMEOUT`], 10 ms): a slower answer is a
    /// miss (counted in [`CacheStats::tier_errors`]).
    pub fn tier_timeout(mut self, timeout: Duration) -> Self {
        self.tier.timeout = timeout;
        self
    }

    /// Builds the cache.
    pub fn build(self) -> CacheLayer {
        let tier = self
            .tier
            .tier
            .map(|tier| Tier::new(tier, self.tier.timeout));
        CacheLayer {
            store: Arc::new(Store::new(self.config, self.max_bytes, tier)),
        }
    }
}
