//! [`RateLimitLayer`] and its settings.

use std::fmt::{self, Write as _};
use std::sync::Arc;
use std::time::Duration;

use http::{Extensions, HeaderMap, HeaderName, Method, Uri};
use tokio::time::Instant;
use tower::Layer;

use super::queue::Queues;
use super::service::RateLimit;
use super::store::{MemoryStore, RateLimitStore, UnixNanos, DEFAULT_MAX_MEMORY};
use crate::quota::Quota;

/// What a key extractor sees of a request.
#[derive(Debug)]
pub struct KeyInput<'a> {
    /// The method.
    pub method: &'a Method,
    /// The URI.
    pub uri: &'a Uri,
    /// The headers.
    pub headers: &'a HeaderMap,
    /// The extensions (where axum puts `ConnectInfo`, for per-IP limits).
    pub extensions: &'a Extensions,
}

type KeyFn = Arc<dyn Fn(&KeyInput<'_>) -> Option<String> + Send + Sync>;

/// How requests are split into separately limited keys.
#[derive(Clone)]
pub struct KeyBy(pub(crate) KeyFn);

impl fmt::Debug for KeyBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyBy(..)")
    }
}

impl KeyBy {
    /// One limiter per upstream host: the request URI's authority, or the
    /// `Host` header when the URI has none (a server's view), as
    /// `host:port`, the host in lowercase and the port the scheme's default
    /// when none is written. `api.test`, `API.test` and `api.test:80` share
    /// one limiter.
    pub fn host() -> KeyBy {
        KeyBy(Arc::new(|r: &KeyInput<'_>| {
            let authority = match r.uri.authority() {
                Some(a) => a.as_str().to_owned(),
                None => r.headers.get(http::header::HOST)?.to_str().ok()?.to_owned(),
            };
            let authority = authority.rsplit('@').next().unwrap_or_default();
            let default_port = match r.uri.scheme_str() {
                Some("https") => "443",
                _ => "80",
            };
            let (host, port) = match authority.rsplit_once(':') {
                // An IPv6 literal's colons are inside its brackets.
                Some((h, p)) if !p.contains(']') => (h, p),
                _ => (authority, default_port),
            };
            Some(format!("{}:{port}", host.to_ascii_lowercase()))
        }))
    }

    /// One limiter per value of this header (an API key, a tenant id).
    /// Requests without it share one limiter. Values that are not UTF-8 are
    /// kept apart byte for byte (never merged by a lossy conversion).
    pub fn header(name: HeaderName) -> KeyBy {
        KeyBy(Arc::new(move |r: &KeyInput<'_>| {
            let value = r.headers.get(&name)?;
            Some(match std::str::from_utf8(value.as_bytes()) {
                Ok(text) => text.to_owned(),
                // \u{1} cannot start a header value's text, so these never
                // meet a UTF-8 key.
                Err(_) => {
                    let mut key = String::from("\u{1}");
                    for byte in value.as_bytes() {
                        let _ = write!(key, "{byte:02x}");
                    }
                    key
                }
            })
        }))
    }

    /// Any key a function computes; `None` means the shared limiter.
    pub fn func<F>(f: F) -> KeyBy
    where
        F: Fn(&KeyInput<'_>) -> Option<String> + Send + Sync + 'static,
    {
        KeyBy(Arc::new(f))
    }
}

/// Rate limits requests; see the [module docs](super).
///
/// Clones of the layer, and all services it makes, share one limiter.
#[derive(Clone)]
pub struct RateLimitLayer {
    pub(crate) shared: Arc<Shared>,
}

pub(crate) struct Shared {
    pub(crate) quota: Quota,
    pub(crate) store: Arc<dyn RateLimitStore>,
    pub(crate) key: Option<KeyBy>,
    pub(crate) max_keys: usize,
    pub(crate) reject: bool,
    pub(crate) max_wait: Option<Duration>,
    pub(crate) max_queue: Option<usize>,
    pub(crate) learn: bool,
    pub(crate) max_pause: Duration,
    pub(crate) max_memory: usize,
    pub(crate) epoch: Instant,
    /// `epoch` on the absolute time base ([`UnixNanos`]): the system clock
    /// read once, when the limiter was built.
    pub(crate) epoch_unix: UnixNanos,
    /// The lanes of waiting callers, shared by every layer derived from
    /// one (`max_wait` and the like keep it; a new store starts anew).
    pub(crate) queues: Arc<Queues>,
    /// How long a store's answer may take (for a store that answers later).
    pub(crate) store_timeout: Duration,
    /// Pauses learned from the upstream that a store answering later is
    /// still writing: they hold callers back meanwhile.
    pub(crate) learned: Arc<LearnedPauses>,
    /// Whether `store` was given by the user (then `max_keys` and
    /// `max_memory`, settings of the built-in store, leave it alone).
    pub(crate) custom_store: bool,
}

impl Shared {
    /// Now, on the absolute time base: the system clock when the limiter was
    /// built plus tokio's monotonic time since (so a stepped system clock
    /// never moves a limiter, and paused time in tests does).
    pub(crate) fn now(&self) -> UnixNanos {
        self.nanos_at(Instant::now())
    }

    /// An instant on the absolute time base (saturating at both ends).
    pub(crate) fn nanos_at(&self, at: Instant) -> UnixNanos {
        let nanos = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        if at >= self.epoch {
            self.epoch_unix.saturating_add(nanos(at - self.epoch))
        } else {
            self.epoch_unix.saturating_sub(nanos(self.epoch - at))
        }
    }

    /// A learned pause still being written to the store, for the lane
    /// `hash`, if it holds at `now`.
    pub(crate) fn paused_until(&self, hash: u64, now: UnixNanos) -> Option<UnixNanos> {
        self.learned.until(hash, now)
    }

    /// A new built-in store for the current settings (a new limiter: its
    /// own lanes too), unless the user gave one.
    fn renew_store(&mut self) {
        if !self.custom_store {
            self.store = Arc::new(MemoryStore::with_memory(
                &self.quota,
                self.max_keys,
                self.max_memory,
            ));
            self.queues = Arc::new(Queues::new());
        }
    }

    /// The instant of a time on the absolute base (the limiter's start if
    /// before it; about 30 years on if beyond what an instant can hold).
    pub(crate) fn instant(&self, at: UnixNanos) -> Instant {
        let after = Duration::from_nanos(at.saturating_sub(self.epoch_unix));
        self.epoch
            .checked_add(after)
            .unwrap_or_else(|| self.epoch + Duration::from_secs(30 * 365 * 86_400))
    }
}

/// The system clock as [`UnixNanos`] (0 if it reads before 1970).
fn unix_now() -> UnixNanos {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

impl fmt::Debug for RateLimitLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &*self.shared;
        f.debug_struct("RateLimitLayer")
            .field("quota", &s.quota)
            .field("keyed", &s.key.is_some())
            .field("reject", &s.reject)
            .field("max_wait", &s.max_wait)
            .field("max_queue", &s.max_queue)
            .field("learn_from_upstream", &s.learn)
            .finish_non_exhaustive()
    }
}

/// The default bound of the key table.
pub const DEFAULT_MAX_KEYS: usize = 10_000;

/// The default bound on a store's answer
/// ([`RateLimitLayer::store_timeout`]).
pub const DEFAULT_STORE_TIMEOUT: Duration = Duration::from_millis(50);

/// Pauses learned from the upstream while a store that answers later is
/// still recording them, per lane: a caller arriving meanwhile must not be
/// served by the store's older state. Bounded: past `MAX` lanes, expired
/// ones are dropped, then the new one is not kept (the store still gets
/// it).
#[derive(Debug, Default)]
pub(crate) struct LearnedPauses {
    /// The latest end of any pause kept: callers skip the lock once it has
    /// passed (the common case).
    latest: std::sync::atomic::AtomicU64,
    pauses: std::sync::Mutex<std::collections::HashMap<u64, UnixNanos>>,
}

impl LearnedPauses {
    const MAX: usize = 4_096;

    pub(crate) fn until(&self, hash: u64, now: UnixNanos) -> Option<UnixNanos> {
        if self.latest.load(std::sync::atomic::Ordering::Acquire) <= now {
            return None;
        }
        let pauses = self
            .pauses
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        pauses.get(&hash).copied().filter(|&until| until > now)
    }

    pub(crate) fn insert(&self, hash: u64, now: UnixNanos, until: UnixNanos) {
        let mut pauses = self
            .pauses
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if pauses.len() >= Self::MAX {
            pauses.retain(|_, &mut end| end > now);
            if pauses.len() >= Self::MAX {
                return;
            }
        }
        let end = pauses.entry(hash).or_insert(until);
        *end = (*end).max(until);
        self.latest
            .fetch_max(until, std::sync::atomic::Ordering::AcqRel);
    }
}

impl RateLimitLayer {
    /// Callers wait for a permit of `quota` (a client's behaviour), without
    /// a bound on the wait or the queue until set; the limiter learns pauses
    /// from the upstream's answers (capped at 60 s).
    pub fn new(quota: Quota) -> Self {
        RateLimitLayer {
            shared: Arc::new(Shared {
                quota,
                store: Arc::new(MemoryStore::with_memory(
                    &quota,
                    DEFAULT_MAX_KEYS,
                    DEFAULT_MAX_MEMORY,
                )),
                key: None,
                max_keys: DEFAULT_MAX_KEYS,
                reject: false,
                max_wait: None,
                max_queue: None,
                learn: true,
                max_pause: Duration::from_secs(60),
                max_memory: DEFAULT_MAX_MEMORY,
                epoch: Instant::now(),
                epoch_unix: unix_now(),
                queues: Arc::new(Queues::new()),
                store_timeout: DEFAULT_STORE_TIMEOUT,
                learned: Arc::new(LearnedPauses::default()),
                custom_store: false,
            }),
        }
    }

    fn with(self, f: impl FnOnce(&mut Shared)) -> Self {
        let s = &*self.shared;
        let mut next = Shared {
            quota: s.quota,
            store: Arc::clone(&s.store),
            key: s.key.clone(),
            max_keys: s.max_keys,
            reject: s.reject,
            max_wait: s.max_wait,
            max_queue: s.max_queue,
            learn: s.learn,
            max_pause: s.max_pause,
            max_memory: s.max_memory,
            epoch: s.epoch,
            epoch_unix: s.epoch_unix,
            queues: Arc::clone(&s.queues),
            store_timeout: s.store_timeout,
            learned: Arc::clone(&s.learned),
            custom_store: s.custom_store,
        };
        f(&mut next);
        RateLimitLayer {
            shared: Arc::new(next),
        }
    }

    /// Refuses over-limit requests at once with [`RateLimited`](crate::RateLimited)
    /// (a server's behaviour) instead of waiting.
    pub fn reject(self) -> Self {
        self.with(|s| s.reject = true)
    }

    /// A caller whose permit is further away than this fails at once with
    /// [`WaitTooLong`](crate::WaitTooLong), without waiting first; a caller
    /// already waiting whose permit moves further away (a pause learned
    /// meanwhile) fails as soon as that is known, and never later than its
    /// maximum. Waits run on tokio's timer, which has a resolution of one
    /// millisecond: a permit due within the maximum may be taken up to 1 ms
    /// after it.
    pub fn max_wait(self, max: Duration) -> Self {
        self.with(|s| s.max_wait = Some(max))
    }

    /// At most this many callers wait; more fail at once with
    /// [`QueueFull`](crate::QueueFull).
    pub fn max_queue(self, max: usize) -> Self {
        self.with(|s| s.max_queue = Some(max))
    }

    /// One limiter per key (default: one for all requests).
    pub fn keyed_by(self, key: KeyBy) -> Self {
        self.with(|s| s.key = Some(key))
    }

    /// Bounds the key table (default 10 000 keys). Only idle keys (whose
    /// state no longer constrains anything) are evicted, so a full table
    /// never resets a key's limit: while every key in it is active, new keys
    /// share one overflow limiter under the same quota (see
    /// [`MemoryStore`]). 0 is taken as 1.
    pub fn max_keys(self, max: usize) -> Self {
        self.with(|s| {
            s.max_keys = max;
            s.renew_store();
        })
    }

    /// Bounds the key table's memory too (default 64 MiB): a window quota
    /// keeps `count` timestamps per key, so a large window makes each key
    /// costly. The table holds at most `max_bytes / (96 + 8 · count)` window
    /// keys, or `max_bytes / 96` smooth ones, and never more than
    /// [`max_keys`](Self::max_keys).
    pub fn max_memory(self, max_bytes: usize) -> Self {
        self.with(|s| {
            s.max_memory = max_bytes;
            s.renew_store();
        })
    }

    /// Keeps the limiter's state in `store` (a shared backend; see
    /// [`RateLimitStore`] for what it must do, and the `conformance` suite
    /// for how that is checked). A store that answers later costs each
    /// waiting caller one boxed future per decision; a store failure fails
    /// the caller with [`StoreError`](crate::StoreError). Later
    /// [`max_keys`](Self::max_keys) and [`max_memory`](Self::max_memory)
    /// settings, which configure the built-in store, leave it alone.
    pub fn store(self, store: Arc<dyn RateLimitStore>) -> Self {
        self.with(|s| {
            s.store = store;
            s.custom_store = true;
            s.queues = Arc::new(Queues::new());
        })
    }

    /// How long a store that answers later (a shared store, a network round
    /// trip away) may take to answer (default 50 ms; `Duration::MAX`: no
    /// bound). A caller whose answer takes longer fails with a
    /// [`StoreError`](crate::StoreError), and a late answer is never used:
    /// a yes used late lets the upstream see two calls closer than the
    /// quota allows, by the lateness. So the upstream sees the quota's
    /// spacing less at most this timeout. The in-process store always
    /// answers at once and is not affected. A learned pause written to such
    /// a store is bounded by it too.
    pub fn store_timeout(self, timeout: Duration) -> Self {
        self.with(|s| s.store_timeout = timeout)
    }

    /// Whether upstream answers (429/503 `Retry-After`, `RateLimit`,
    /// `X-RateLimit-*`) pause the limiter for everyone sharing it (default
    /// true), and for at most how long (default 60 s).
    pub fn learn_from_upstream(self, learn: bool, max_pause: Duration) -> Self {
        self.with(|s| {
            s.learn = learn;
            s.max_pause = max_pause;
        })
    }

    /// Callers waiting for a permit right now.
    pub fn waiting(&self) -> usize {
        self.shared
            .queues
            .waiting
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> RateLimit<S> {
        RateLimit::new(inner, self.clone())
    }
}
