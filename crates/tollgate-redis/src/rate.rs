//! [`RedisRateLimitStore`]: one quota shared by every replica, decided in
//! Redis by one Lua script per call.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::fmt;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use redis::Script;
use sha2::{Digest, Sha256};
use tollgate_limit::gcra::Gcra;
use tollgate_limit::rate::{MemoryStore, RateLimitStore, StoreError, StoreFuture, UnixNanos};
use tollgate_limit::{Quota, QuotaKind, RateLimitLayer};

use crate::connect::{cluster, manager_with, redacted, Conn, InvalidRedisUrl, Tls};

/// The Lua script: every decision, pause and format rule in one place.
const SCRIPT: &str = include_str!("rate.lua");

/// The format of the state in Redis: in every key's name and every value.
pub const FORMAT_VERSION: u32 = 1;

/// The Redis call timeout when none is set.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(50);

/// How many keys the local deny cache remembers when not told.
pub const DEFAULT_DENY_CACHE_KEYS: usize = 10_000;

/// How often a degraded store asks Redis whether it is back.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(100);

/// How many keys decided by the local share while Redis was away are
/// resumed without a burst when it is back.
const MAX_RESUMED_KEYS: usize = 1_024;

/// The largest window quota (permits per period) kept in Redis: a window
/// keeps one timestamp per permit in its period.
pub const MAX_WINDOW_COUNT: u32 = 1_000_000;

/// What the store does while Redis is slow or down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Degraded {
    /// Refuse: every caller fails with a [`StoreError`] whose source is
    /// [`RedisUnavailable`]. Nothing reaches the upstream that Redis did
    /// not admit.
    FailClosed,
    /// Admit every caller: the upstream's own limit is all that holds.
    FailOpen,
    /// Each replica limits itself to its share of the quota: `count /
    /// replicas` per period (at least one), in process, smooth and without
    /// a burst, its first permit one share interval after the outage began
    /// (Redis may have granted a burst just before). Back in shared mode,
    /// the keys it decided resume in Redis without a burst. With the
    /// replicas counted right, the upstream sees at most the quota.
    LocalShare {
        /// How many replicas share the quota (0 is taken as 1).
        replicas: u32,
    },
}

/// Whose clock decides.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Clock {
    /// Redis's `TIME`: replicas' clocks do not matter (the default). Times
    /// are answered on the caller's clock (its `now` plus the delay Redis
    /// computed).
    #[default]
    Redis,
    /// The `now` each caller passes (the conformance suite drives time this
    /// way). Replicas' clocks must then agree, and a key's expiry in Redis
    /// assumes they run at real speed.
    Caller,
}

/// Which way the store is deciding now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// In Redis: one quota for every replica.
    Shared,
    /// Redis failed or was too slow: the [`Degraded`] mode is in force
    /// until a probe finds Redis back.
    Degraded,
}

/// The source of a [`StoreError`] when Redis could not decide and the
/// store fails closed (or Redis answered something this store cannot
/// read).
#[derive(Debug)]
pub struct RedisUnavailable {
    reason: String,
}

impl fmt::Display for RedisUnavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "redis rate-limit store: {}", self.reason)
    }
}

impl std::error::Error for RedisUnavailable {}

/// What the store did, counted since it was built.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisLimitStats {
    /// Decisions Redis made (permits and refusals).
    pub shared: u64,
    /// Decisions the degraded mode made.
    pub degraded: u64,
    /// Refusals the local deny cache answered without asking Redis.
    pub deny_cache: u64,
    /// Times the store went from shared to degraded.
    pub degradations: u64,
    /// Times a probe found Redis back.
    pub recoveries: u64,
    /// Pauses written to Redis.
    pub pauses: u64,
}

/// The answer of [`RedisRateLimitStore::decide`]: the decision and Redis's
/// clock when it was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RedisDecision {
    /// `Ok(())`: a permit taken; `Err(at)`: none before `at` (caller's clock).
    pub permit: Result<(), UnixNanos>,
    /// The decision's time on the deciding clock (Redis `TIME`, or the
    /// caller's `now` with [`Clock::Caller`]).
    pub decided_at: UnixNanos,
}

/// A configuration the store cannot run with.
#[derive(Debug)]
#[non_exhaustive]
pub enum BuildError {
    /// The URL cannot be used.
    Url(InvalidRedisUrl),
    /// No quota was given.
    NoQuota,
    /// A window quota over [`MAX_WINDOW_COUNT`].
    WindowTooLarge(u32),
    /// A timeout of zero: no Redis answer could ever be used.
    ZeroTimeout,
    /// `build` was called outside a tokio runtime.
    NoRuntime,
    /// A namespace with `{` or `}` (they would break the key's hash tag).
    Namespace,
    /// [`Degraded::LocalShare`]: no quota at most this quota's share could
    /// be made (its burst or its period out of a quota's range).
    NoLocalShare(Quota),
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BuildError::Url(e) => e.fmt(f),
            BuildError::NoQuota => f.write_str("a redis rate-limit store needs at least one quota"),
            BuildError::NoRuntime => {
                f.write_str("a redis rate-limit store is built inside a tokio runtime")
            }
            BuildError::ZeroTimeout => {
                f.write_str("a redis rate-limit store's timeout must be above zero")
            }
            BuildError::Namespace => f.write_str("a redis namespace may not contain `{` or `}`"),
            BuildError::NoLocalShare(q) => write!(f, "no local share can be made of the quota {q}"),
            BuildError::WindowTooLarge(n) => write!(
                f,
                "a window quota of {n} permits per period keeps {n} timestamps per key in Redis \
                 (at most {MAX_WINDOW_COUNT}): use a smooth quota"
            ),
        }
    }
}

impl std::error::Error for BuildError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            BuildError::Url(e) => Some(e),
            _ => None,
        }
    }
}

/// Builds a [`RedisRateLimitStore`]; from [`RedisRateLimitStore::builder`].
#[derive(Clone)]
pub struct RedisRateLimitBuilder {
    url: String,
    quotas: Vec<Quota>,
    namespace: String,
    timeout: Duration,
    degraded: Degraded,
    clock: Clock,
    deny_cache_keys: usize,
    tls: Tls,
    cluster: bool,
}

impl fmt::Debug for RedisRateLimitBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisRateLimitBuilder")
            .field("url", &redacted(&self.url))
            .field("quotas", &self.quotas)
            .field("namespace", &self.namespace)
            .field("timeout", &self.timeout)
            .field("degraded", &self.degraded)
            .field("clock", &self.clock)
            .finish_non_exhaustive()
    }
}

impl RedisRateLimitBuilder {
    /// Adds a quota. Every quota is checked and committed in one script: a
    /// call refused by one spends nothing of another (10 per second and
    /// 1000 per hour, say).
    pub fn quota(mut self, quota: Quota) -> Self {
        self.quotas.push(quota);
        self
    }

    /// The prefix of every key (default `tollgate`): clients that must not
    /// share a quota use different namespaces.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// The bound on each Redis call, connecting included (default 50 ms).
    /// A call that takes longer is decided by the [`Degraded`] mode.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// What happens while Redis is slow or down (default
    /// [`Degraded::FailClosed`]).
    pub fn degraded(mut self, mode: Degraded) -> Self {
        self.degraded = mode;
        self
    }

    /// Whose clock decides (default [`Clock::Redis`]).
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// The URL names one node of a Redis Cluster: the store finds the
    /// others, and follows each key to the node holding its slot (`MOVED`,
    /// `ASK`). A key's quotas and pause share one hash tag, so one script
    /// decides them on one node.
    pub fn cluster(mut self) -> Self {
        self.cluster = true;
        self
    }

    /// For `rediss://`: trust this PEM root certificate (a private CA)
    /// instead of the webpki roots.
    pub fn tls_root_certificate(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls.root_cert = Some(pem.into());
        self
    }

    /// How many keys the local deny cache remembers (default 10 000; 0
    /// turns it off).
    pub fn deny_cache_keys(mut self, keys: usize) -> Self {
        self.deny_cache_keys = keys;
        self
    }

    /// The store. Connects lazily: Redis being down now is not an error
    /// (the first calls are then decided by the degraded mode). Call it
    /// inside a tokio runtime (the connection's tasks live there).
    ///
    /// # Errors
    ///
    /// A URL that cannot be used, no quota, a window quota over
    /// [`MAX_WINDOW_COUNT`], a zero timeout, a namespace with braces, a
    /// local share that cannot be made, or no tokio runtime.
    pub fn build(self) -> Result<RedisRateLimitStore, BuildError> {
        if self.quotas.is_empty() {
            return Err(BuildError::NoQuota);
        }
        if self.timeout.is_zero() {
            return Err(BuildError::ZeroTimeout);
        }
        if tokio::runtime::Handle::try_current().is_err() {
            // The connection's tasks live on the runtime it is made in.
            return Err(BuildError::NoRuntime);
        }
        if self.namespace.contains(['{', '}']) {
            // Redis Cluster hashes the first `{...}` of a name: a brace in
            // the namespace would move the hash tag off the key's hash.
            return Err(BuildError::Namespace);
        }
        let mut args = Vec::with_capacity(self.quotas.len());
        let mut fallback = Vec::new();
        let mut share_interval = 0;
        for quota in &self.quotas {
            args.push(QuotaArgs::new(quota)?);
            if let Degraded::LocalShare { replicas } = self.degraded {
                let share =
                    local_share(quota, replicas.max(1)).ok_or(BuildError::NoLocalShare(*quota))?;
                fallback.push(MemoryStore::new(&share, self.deny_cache_keys.max(1_000)));
                share_interval = share_interval.max(Gcra::new(&share).interval());
            }
        }
        let conn = if self.cluster {
            cluster(std::slice::from_ref(&self.url), self.timeout, &self.tls)
        } else {
            manager_with(&self.url, self.timeout, &self.tls).map(Conn::Single)
        }
        .map_err(BuildError::Url)?;
        let linger_ms = self
            .quotas
            .iter()
            .map(|q| u64::try_from(q.period().as_millis()).unwrap_or(u64::MAX))
            .max()
            .unwrap_or(0)
            .min(1 << 40);
        // The script's last arguments never change: built once here.
        let mut tail = vec![args.len().to_string(), linger_ms.to_string()];
        for a in &args {
            tail.extend(a.values.iter().cloned());
        }
        Ok(RedisRateLimitStore {
            inner: Arc::new(Inner {
                conn,
                script: Script::new(SCRIPT),
                quotas: self.quotas,
                args,
                tail,
                names: NameCache::default(),
                namespace: self.namespace,
                timeout: self.timeout,
                degraded: self.degraded,
                clock: self.clock,
                fallback,
                share_interval,
                degraded_since: AtomicU64::new(0),
                degraded_keys: Mutex::new(HashMap::new()),
                deny: DenyCache::new(self.deny_cache_keys),
                health: Health::default(),
                stats: Counters::default(),
                url: redacted(&self.url),
            }),
        })
    }
}

/// A quota's share for one of `replicas`: `count / replicas` per period
/// (at least one), smooth and without a burst, whatever the quota's kind.
/// The share takes over from Redis in the middle of a period, after Redis
/// may have granted a burst: a burst of its own on top would pass the
/// quota's bound (a smooth share with no burst keeps a window's bound too:
/// at most `count / replicas` in any period). `None` when no such quota
/// exists (more than one permit per nanosecond).
fn local_share(quota: &Quota, replicas: u32) -> Option<Quota> {
    let count = (quota.count() / replicas).max(1);
    Quota::per(count, quota.period()).ok()?.with_burst(1).ok()
}

/// A quota as the script's arguments.
#[derive(Clone, Debug)]
struct QuotaArgs {
    /// Part of the key's name: state of another quota is never read.
    tag: String,
    values: [String; 6],
}

fn pair(nanos: u64) -> (String, String) {
    (
        (nanos / 1_000_000_000).to_string(),
        (nanos % 1_000_000_000).to_string(),
    )
}

impl QuotaArgs {
    fn new(quota: &Quota) -> Result<QuotaArgs, BuildError> {
        match quota.kind() {
            QuotaKind::Smooth => {
                let gcra = Gcra::new(quota);
                let (is, in_) = pair(gcra.interval());
                let (ts, tn) = pair(gcra.tolerance());
                Ok(QuotaArgs {
                    tag: format!("g{}b{}", gcra.interval(), quota.burst()),
                    values: ["g".into(), is, in_, ts, tn, "0".into()],
                })
            }
            QuotaKind::Window => {
                if quota.count() > MAX_WINDOW_COUNT {
                    return Err(BuildError::WindowTooLarge(quota.count()));
                }
                // As the in-process window: the period at most 2^62 ns, the
                // ramp after a pause one period / count apart.
                let period = u64::try_from(quota.period().as_nanos())
                    .unwrap_or(u64::MAX)
                    .min(1 << 62);
                let step = (period / u64::from(quota.count())).max(1);
                let (ps, pn) = pair(period);
                let (ss, sn) = pair(step);
                Ok(QuotaArgs {
                    tag: format!("w{}p{}", quota.count(), period),
                    values: ["w".into(), ps, pn, ss, sn, quota.count().to_string()],
                })
            }
        }
    }
}

/// A rate-limit store in Redis: every replica that points at the same
/// Redis and namespace shares one quota per key, and one learned pause.
///
/// - **One script per decision**: a Lua script (EVALSHA, falling back to
///   EVAL when Redis does not have it) checks every quota of the key and
///   commits them together; a refusal by one spends nothing of another.
///   GCRA and strict windows make exactly the decisions they make in
///   process, to the nanosecond, and pass the same conformance suite.
/// - **Redis's clock** (`TIME`) by default; the answers are on the
///   caller's clock (its `now` plus the delay), so replicas' clocks do not
///   matter.
/// - **Keys**: `<namespace>:rl1<r|c>:{<hash>}:<quota>:<s|l>`. The hash (the
///   first 16 bytes of SHA-256 over the namespace and the key, in hex) is
///   the Redis Cluster hash tag: a key's quotas live in one slot; the key
///   itself (it may be a credential) never leaves the process. `1` is the
///   format version, also the first field of every value; `<quota>` names
///   the quota, so a replica with another quota never reads this state.
///   Every key expires once its state constrains nothing.
/// - **Pauses** learned from the upstream are written to Redis (never
///   shortening one in force), so one replica's 429 holds back every
///   replica; the replica that learned it holds it in its deny cache at
///   once.
/// - **Deny cache**: once Redis says "not before T" for a key, this
///   replica answers its callers of that key "not before T" until T
///   without asking again (a few tens of nanoseconds).
/// - **Degradation**: each Redis call is bounded by the
///   [`timeout`](RedisRateLimitBuilder::timeout); a call that fails or
///   takes longer switches the store to its [`Degraded`] mode (logged and
///   counted), in which callers are answered at once without Redis. A
///   probe asks Redis every [`PROBE_INTERVAL`] and switches back to shared
///   mode when it answers. A caller never waits on Redis longer than the
///   timeout.
///
/// ```no_run
/// use std::time::Duration;
/// use tollgate_limit::Quota;
/// use tollgate_redis::{Degraded, RedisRateLimitStore};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let store = RedisRateLimitStore::builder("redis://127.0.0.1:6379")
///     .quota(Quota::per_second(100)?)
///     .quota(Quota::window(5_000, Duration::from_secs(3_600))?)
///     .degraded(Degraded::LocalShare { replicas: 4 })
///     .build()?;
/// // A tower layer: callers wait their turn for the shared permits.
/// let layer = store.layer().max_wait(Duration::from_secs(5));
/// # let _ = layer;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisRateLimitStore {
    inner: Arc<Inner>,
}

struct Inner {
    conn: Conn,
    script: Script,
    quotas: Vec<Quota>,
    args: Vec<QuotaArgs>,
    /// The script's arguments after the call's own: the number of quotas,
    /// how long a pause key outlives its pause (ms: the longest ramp of
    /// this replica's quotas after a pause), each quota's values (built
    /// once).
    tail: Vec<String>,
    /// The Redis key names of the keys used lately.
    names: NameCache,
    namespace: String,
    timeout: Duration,
    degraded: Degraded,
    clock: Clock,
    fallback: Vec<MemoryStore>,
    /// The longest interval of the local shares: a key's first local
    /// permit comes no sooner than this after the store degraded.
    share_interval: u64,
    /// When the store last degraded, on the caller's clock.
    degraded_since: AtomicU64,
    /// The keys the local share decided while degraded (their Redis keys),
    /// by keyed hash.
    degraded_keys: Mutex<HashMap<u64, Vec<String>>>,
    deny: DenyCache,
    health: Health,
    stats: Counters,
    url: String,
}

impl fmt::Debug for RedisRateLimitStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisRateLimitStore")
            .field("url", &self.inner.url)
            .field("quotas", &self.inner.quotas)
            .field("namespace", &self.inner.namespace)
            .field("timeout", &self.inner.timeout)
            .field("degraded", &self.inner.degraded)
            .field("mode", &self.mode())
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Counters {
    shared: AtomicU64,
    degraded: AtomicU64,
    deny_cache: AtomicU64,
    degradations: AtomicU64,
    recoveries: AtomicU64,
    pauses: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

#[derive(Default)]
struct Health {
    degraded: AtomicBool,
    probing: AtomicBool,
}

/// What went wrong with one Redis call.
enum CallError {
    /// Redis unreachable, or too slow: the degraded mode decides.
    Unavailable(String),
    /// Redis answered, but not something this store can use (state of
    /// another format, a script error): the caller fails, whatever the
    /// mode, since the state cannot be trusted either way.
    Refused(String),
}

impl RedisRateLimitStore {
    /// A builder for a store at `url` (`redis://`, `rediss://` for TLS
    /// through rustls, `redis+unix://`).
    pub fn builder(url: impl Into<String>) -> RedisRateLimitBuilder {
        RedisRateLimitBuilder {
            url: url.into(),
            quotas: Vec::new(),
            namespace: "tollgate".to_owned(),
            timeout: DEFAULT_TIMEOUT,
            degraded: Degraded::FailClosed,
            clock: Clock::Redis,
            deny_cache_keys: DEFAULT_DENY_CACHE_KEYS,
            tls: Tls::default(),
            cluster: false,
        }
    }

    /// A [`RateLimitLayer`] over this store: the first quota (for the
    /// layer's own records), the store, and a store timeout a little above
    /// the store's own (the store answers by then, from Redis or from its
    /// degraded mode). Set the waits and the key on it as on any.
    pub fn layer(&self) -> RateLimitLayer {
        RateLimitLayer::new(self.inner.quotas[0])
            .store(Arc::new(self.clone()))
            .store_timeout(self.inner.timeout.saturating_add(Duration::from_millis(20)))
    }

    /// The mode in force.
    pub fn mode(&self) -> Mode {
        if self.inner.health.degraded.load(Ordering::Acquire) {
            Mode::Degraded
        } else {
            Mode::Shared
        }
    }

    /// What the store did so far.
    pub fn stats(&self) -> RedisLimitStats {
        let c = &self.inner.stats;
        RedisLimitStats {
            shared: c.shared.load(Ordering::Relaxed),
            degraded: c.degraded.load(Ordering::Relaxed),
            deny_cache: c.deny_cache.load(Ordering::Relaxed),
            degradations: c.degradations.load(Ordering::Relaxed),
            recoveries: c.recoveries.load(Ordering::Relaxed),
            pauses: c.pauses.load(Ordering::Relaxed),
        }
    }

    /// Asks Redis for one permit for `key` at `now` (the caller's clock),
    /// bypassing the deny cache and the degraded mode: the decision and
    /// Redis's clock when it was made (what the multi-replica tests
    /// measure the quota on).
    ///
    /// # Errors
    ///
    /// Redis unreachable, too slow, or holding state this store cannot read.
    pub async fn decide(&self, key: &str, now: UnixNanos) -> Result<RedisDecision, StoreError> {
        match self.inner.call("check", key, now, 0).await {
            Ok(decision) => Ok(decision),
            Err(CallError::Unavailable(reason) | CallError::Refused(reason)) => {
                Err(StoreError::new(RedisUnavailable { reason }))
            }
        }
    }

    /// The Redis keys of `key`'s state (for operators and tests).
    pub fn redis_keys(&self, key: &str) -> Vec<String> {
        self.inner.keys(key)
    }

    /// The command a check of `key` sends (`EVALSHA`, the script's hash,
    /// the key count, the keys, the arguments), for measuring the script
    /// with `redis-benchmark` (the `redis_limit` bench). Not a stable API.
    #[doc(hidden)]
    pub fn script_command(&self, key: &str) -> Vec<String> {
        let inner = &self.inner;
        let keys = inner.keys(key);
        let mut command = vec![
            "EVALSHA".to_owned(),
            inner.script.get_hash().to_owned(),
            keys.len().to_string(),
        ];
        command.extend(keys);
        let clock = match inner.clock {
            Clock::Redis => "redis",
            Clock::Caller => "caller",
        };
        command.extend(["check", clock, "0", "0", "0", "0"].map(str::to_owned));
        command.extend(inner.tail.iter().cloned());
        command
    }
}

impl Inner {
    fn keys(&self, key: &str) -> Vec<String> {
        let mut hasher = Sha256::new();
        hasher.update(self.namespace.as_bytes());
        hasher.update([0]);
        hasher.update(key.as_bytes());
        let digest = hasher.finalize();
        let mut hash = String::with_capacity(32);
        for byte in &digest[..16] {
            hash.push_str(&format!("{byte:02x}"));
        }
        let clock = match self.clock {
            Clock::Redis => 'r',
            Clock::Caller => 'c',
        };
        let base = format!("{}:rl{FORMAT_VERSION}{clock}:{{{hash}}}", self.namespace);
        std::iter::once(format!("{base}:pause"))
            .chain(
                self.args
                    .iter()
                    .flat_map(|a| [format!("{base}:{}:s", a.tag), format!("{base}:{}:l", a.tag)]),
            )
            .collect()
    }

    /// One script call, bounded by the timeout. `delay` is a pause's
    /// `until - now`.
    async fn call(
        &self,
        op: &str,
        key: &str,
        now: UnixNanos,
        delay: u64,
    ) -> Result<RedisDecision, CallError> {
        if op == "probe" {
            let probe = [format!(
                "{}:rl{FORMAT_VERSION}:{{probe}}:probe",
                self.namespace
            )];
            return self.call_keys(op, &probe, now, delay).await;
        }
        let names = self.names.get(key, || self.keys(key));
        self.call_keys(op, &names, now, delay).await
    }

    /// [`call`](Self::call) with the Redis keys given. The command is
    /// written straight into one buffer: the keys, the call's own
    /// arguments (numbers written as they are), then the arguments built
    /// once at build time.
    async fn call_keys(
        &self,
        op: &str,
        keys: &[String],
        now: UnixNanos,
        delay: u64,
    ) -> Result<RedisDecision, CallError> {
        const SEC: u64 = 1_000_000_000;
        let hash = self.script.get_hash();
        let size = 64
            + hash.len()
            + keys.iter().map(String::len).sum::<usize>()
            + self.tail.iter().map(String::len).sum::<usize>();
        let mut evalsha = redis::Cmd::with_capacity(9 + keys.len() + self.tail.len(), size);
        evalsha.arg("EVALSHA").arg(hash).arg(keys.len());
        for k in keys {
            evalsha.arg(k.as_bytes());
        }
        evalsha
            .arg(op)
            .arg(match self.clock {
                Clock::Redis => "redis",
                Clock::Caller => "caller",
            })
            .arg(now / SEC)
            .arg(now % SEC)
            .arg(delay / SEC)
            .arg(delay % SEC);
        for a in &self.tail {
            evalsha.arg(a.as_bytes());
        }
        let answer = match tokio::time::timeout(
            self.timeout,
            self.conn.eval(&self.script, &evalsha),
        )
        .await
        {
            Err(_) => {
                return Err(CallError::Unavailable(format!(
                    "no answer within {:?}",
                    self.timeout
                )))
            }
            Ok(Err(e)) => return Err(classify(&e)),
            Ok(Ok(answer)) => answer,
        };
        decision(&answer, now)
    }

    /// The degraded mode's answer.
    fn fallback_answer(
        &self,
        key: &str,
        now: UnixNanos,
    ) -> Result<Result<(), UnixNanos>, StoreError> {
        bump(&self.stats.degraded);
        match self.degraded {
            Degraded::FailClosed => Err(StoreError::new(RedisUnavailable {
                reason: "redis unavailable; failing closed".to_owned(),
            })),
            Degraded::FailOpen => Ok(Ok(())),
            Degraded::LocalShare { .. } => {
                if self.used_while_degraded(key) {
                    // Redis may have granted a burst just before: a share
                    // starts one interval after the outage did, never at
                    // once (one immediate permit per replica would pass
                    // the quota's bound).
                    let since = self.degraded_since.load(Ordering::Acquire).min(now);
                    let until = since.saturating_add(self.share_interval);
                    for store in &self.fallback {
                        store.pause_sync(key, now, until);
                    }
                }
                // Every quota's share conforms first, so a refusal by one
                // spends no other (two callers racing may spend one share
                // for nothing: never more than the share).
                let latest = self
                    .fallback
                    .iter()
                    .map(|store| store.estimate_sync(key, now, 0))
                    .fold(now, u64::max);
                if latest > now {
                    return Ok(Err(latest));
                }
                for store in &self.fallback {
                    if let Err(at) = store.check_sync(key, now) {
                        return Ok(Err(at));
                    }
                }
                Ok(Ok(()))
            }
        }
    }

    /// Remembers that the local share decided for `key` (at most
    /// [`MAX_RESUMED_KEYS`]), so that Redis resumes it without a burst.
    /// Whether this is the key's first local decision of this outage.
    fn used_while_degraded(&self, key: &str) -> bool {
        let mut used = self
            .degraded_keys
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let hash = self.deny.hasher.hash_one(key);
        if used.contains_key(&hash) {
            return false;
        }
        if used.len() < MAX_RESUMED_KEYS {
            used.insert(hash, self.keys(key));
        }
        true
    }

    /// Back in shared mode: each key the local share decided resumes in
    /// Redis without a burst (a pause ending now: Redis does not know what
    /// the shares granted meanwhile, and a burst on top would pass the
    /// quota's bound).
    async fn resume_without_burst(&self) {
        let used: Vec<Vec<String>> = self
            .degraded_keys
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain()
            .map(|(_, keys)| keys)
            .collect();
        for keys in used {
            // Redis's clock (or the caller's, 0 then: a pause ending in
            // the past changes nothing there; caller-clock stores resume
            // from their local share's own no-burst state).
            if self.call_keys("pause", &keys, 0, 1).await.is_err() {
                return;
            }
        }
    }

    fn fallback_pause(&self, key: &str, now: UnixNanos, until: UnixNanos) {
        for store in &self.fallback {
            store.pause_sync(key, now, until);
        }
    }
}

/// The script's answer read without collecting it: `{0, now s, now ns}`
/// (a permit) or `{1, at s, at ns, now s, now ns}` (none before `at`).
fn decision(answer: &redis::Value, now: UnixNanos) -> Result<RedisDecision, CallError> {
    let mut numbers = [0u64; 5];
    let mut len = 0;
    let other = || CallError::Refused("an answer of another format from the script".to_owned());
    let redis::Value::Array(items) = answer else {
        return Err(other());
    };
    for item in items {
        let redis::Value::Int(n) = item else {
            return Err(other());
        };
        let slot = numbers.get_mut(len).ok_or_else(other)?;
        *slot = u64::try_from(*n).map_err(|_| other())?;
        len += 1;
    }
    let time = |s: u64, n: u64| s.saturating_mul(1_000_000_000).saturating_add(n);
    match &numbers[..len] {
        [0, s, n] => Ok(RedisDecision {
            permit: Ok(()),
            decided_at: time(*s, *n),
        }),
        [1, as_, an, s, n] => {
            let (at, server_now) = (time(*as_, *an), time(*s, *n));
            // On the caller's clock: its now plus the delay Redis found.
            let at = now.saturating_add(at.saturating_sub(server_now));
            Ok(RedisDecision {
                // A refusal names a later time; at the end of time the
                // caller's now is all there is.
                permit: Err(at.max(now)),
                decided_at: server_now,
            })
        }
        _ => Err(other()),
    }
}

/// An outage (the degraded mode decides) or state this store cannot read
/// (the caller fails: no mode can make a sound decision over it).
fn classify(e: &redis::RedisError) -> CallError {
    let text = e.to_string();
    if text.contains("TOLLGATE_FORMAT") || text.contains("WRONGTYPE") {
        return CallError::Refused(format!(
            "state in Redis of another format or type than format {FORMAT_VERSION}"
        ));
    }
    if e.kind() == redis::ErrorKind::UnexpectedReturnType {
        return CallError::Refused("an answer of another format from the script".to_owned());
    }
    // Unreachable, dropped, timed out, loading, read-only after a failover,
    // a script still running: Redis cannot decide now.
    CallError::Unavailable(text)
}

/// Switches to the degraded mode (once per outage: logged and counted) and
/// starts the probe that switches back.
fn degrade(inner: &Arc<Inner>, reason: &str, now: UnixNanos) {
    if !inner.health.degraded.swap(true, Ordering::AcqRel) {
        inner.degraded_since.store(now, Ordering::Release);
        bump(&inner.stats.degradations);
        tracing::warn!(
            redis = %inner.url,
            mode = ?inner.degraded,
            %reason,
            "redis rate-limit store degraded: deciding without Redis until it answers again"
        );
    }
    ensure_probe(inner);
}

/// Starts the probe unless one runs. Also called by degraded callers: a
/// probe whose runtime ended (its task dropped) is started again.
fn ensure_probe(inner: &Arc<Inner>) {
    if inner.health.probing.swap(true, Ordering::AcqRel) {
        return;
    }
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => {
            runtime.spawn(probe(ProbeGuard(Arc::downgrade(inner))));
        }
        Err(_) => inner.health.probing.store(false, Ordering::Release),
    }
}

/// Marks the probe as gone when its task ends or is dropped.
struct ProbeGuard(Weak<Inner>);

impl Drop for ProbeGuard {
    fn drop(&mut self) {
        if let Some(inner) = self.0.upgrade() {
            inner.health.probing.store(false, Ordering::Release);
        }
    }
}

/// Asks Redis every [`PROBE_INTERVAL`] with the script itself (a `PING`
/// answers where a script that writes is refused: out of memory, no
/// replicas, no permission), and switches back to shared mode once it
/// runs.
async fn probe(guard: ProbeGuard) {
    loop {
        tokio::time::sleep(PROBE_INTERVAL).await;
        let Some(inner) = guard.0.upgrade() else {
            return;
        };
        if !inner.health.degraded.load(Ordering::Acquire) {
            return;
        }
        if let Err(CallError::Unavailable(_)) = inner.call("probe", "", 0, 0).await {
            continue;
        }
        inner.resume_without_burst().await;
        inner.health.degraded.store(false, Ordering::Release);
        bump(&inner.stats.recoveries);
        tracing::info!(redis = %inner.url, "redis rate-limit store back in shared mode");
        return;
    }
}

impl Inner {
    /// A check decided in Redis, or by the degraded mode when Redis fails.
    async fn check_shared(self: Arc<Self>, key: String, now: UnixNanos) -> CheckAnswer {
        match self.call("check", &key, now, 0).await {
            Ok(decision) => {
                bump(&self.stats.shared);
                match decision.permit {
                    Ok(()) => {
                        // The local share learns what this replica was
                        // given, so an outage starts from it rather than
                        // from a full share.
                        for store in &self.fallback {
                            let _ = store.check_sync(&key, now);
                        }
                    }
                    Err(at) => self.deny.remember(&key, at, now, false),
                }
                Ok(decision.permit)
            }
            Err(CallError::Refused(reason)) => Err(StoreError::new(RedisUnavailable { reason })),
            Err(CallError::Unavailable(reason)) => {
                degrade(&self, &reason, now);
                self.fallback_answer(&key, now)
            }
        }
    }

    /// A pause written to Redis; held here whatever Redis does.
    async fn pause_shared(
        self: Arc<Self>,
        key: String,
        now: UnixNanos,
        until: UnixNanos,
    ) -> Result<(), StoreError> {
        match self.call("pause", &key, now, until - now).await {
            Ok(decision) => {
                bump(&self.stats.pauses);
                // The pause's end, or later when a quota is spent past it:
                // the time a check would be told, held here as a pause is.
                if let Err(at) = decision.permit {
                    self.deny.remember(&key, at, now, true);
                }
                Ok(())
            }
            Err(CallError::Refused(reason)) => Err(StoreError::new(RedisUnavailable { reason })),
            Err(CallError::Unavailable(reason)) => {
                // Held here (deny cache, local share) though not shared.
                degrade(&self, &reason, now);
                Ok(())
            }
        }
    }
}

type CheckAnswer = Result<Result<(), UnixNanos>, StoreError>;

/// Runs a Redis call in its caller's task, and finishes it on a task of
/// its own only if the caller stops waiting first (its `max_wait`, its
/// deadline, the layer's store timeout): the call still ends, within the
/// store's timeout, and an outage it meets is still noticed. A caller who
/// waits to the end (nearly every one) costs no task.
fn detached<T: Send + 'static>(
    future: impl std::future::Future<Output = Result<T, StoreError>> + Send + 'static,
) -> StoreFuture<T> {
    StoreFuture::later(FinishOnDrop {
        future: Some(Box::pin(future)),
        // The runtime the call was made on: a caller may drop the future
        // where no runtime is current, and the call must still end there.
        runtime: tokio::runtime::Handle::try_current().ok(),
    })
}

/// A future that, dropped before it is done, is finished on the tokio
/// runtime it was made on (without one, or on a runtime shutting down, it
/// is dropped: nothing could run it).
struct FinishOnDrop<F: std::future::Future + Send + 'static>
where
    F::Output: Send,
{
    future: Option<std::pin::Pin<Box<F>>>,
    runtime: Option<tokio::runtime::Handle>,
}

impl<F, T> std::future::Future for FinishOnDrop<F>
where
    F: std::future::Future<Output = Result<T, StoreError>> + Send + 'static,
    T: Send,
{
    type Output = Result<T, StoreError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let Some(future) = self.future.as_mut() else {
            // Polled after its answer: an error, as `StoreFuture`'s own
            // ready answers give, never a wait without a wake-up.
            return std::task::Poll::Ready(Err(StoreError::new("store answer read twice")));
        };
        let answer = std::task::ready!(future.as_mut().poll(cx));
        self.future = None;
        std::task::Poll::Ready(answer)
    }
}

impl<F> Drop for FinishOnDrop<F>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send,
{
    fn drop(&mut self) {
        if let Some(future) = self.future.take() {
            let runtime = self
                .runtime
                .take()
                .or_else(|| tokio::runtime::Handle::try_current().ok());
            if let Some(runtime) = runtime {
                // Its answer goes nowhere: what matters is that it ends,
                // and that an outage it meets switches the mode.
                runtime.spawn(async move {
                    let _ = future.await;
                });
            }
        }
    }
}

impl RateLimitStore for RedisRateLimitStore {
    fn check(&self, key: &str, now: UnixNanos) -> StoreFuture<Result<(), UnixNanos>> {
        let inner = &self.inner;
        if let Some(at) = inner.deny.until(key, now) {
            bump(&inner.stats.deny_cache);
            return StoreFuture::ready(Err(at));
        }
        if inner.health.degraded.load(Ordering::Acquire) {
            ensure_probe(inner);
            return match inner.fallback_answer(key, now) {
                Ok(answer) => StoreFuture::ready(answer),
                Err(e) => StoreFuture::failed(e),
            };
        }
        detached(Arc::clone(inner).check_shared(key.to_owned(), now))
    }

    fn estimate(&self, key: &str, now: UnixNanos, ahead: u64) -> Option<UnixNanos> {
        let inner = &self.inner;
        if inner.health.degraded.load(Ordering::Acquire) && !inner.fallback.is_empty() {
            let local = inner
                .fallback
                .iter()
                .map(|s| s.estimate_sync(key, now, ahead))
                .max();
            return local;
        }
        // "Not before T" holds for the first caller; those after it come
        // later still, so T is never later than the truth.
        inner.deny.until(key, now)
    }

    fn pause(&self, key: &str, now: UnixNanos, until: UnixNanos) -> StoreFuture<()> {
        if until <= now {
            return StoreFuture::ready(());
        }
        let inner = &self.inner;
        // This replica holds it at once (a pause is never dropped from the
        // deny cache for room); the degraded mode too.
        inner.deny.remember(key, until, now, true);
        inner.fallback_pause(key, now, until);
        if inner.health.degraded.load(Ordering::Acquire) {
            ensure_probe(inner);
            return StoreFuture::ready(());
        }
        detached(Arc::clone(inner).pause_shared(key.to_owned(), now, until))
    }
}

/// "Not before T" per key, as Redis last said, on the caller's clock.
///
/// Keys are held as keyed hashes (a key may be a credential); a collision
/// makes one key wait as long as another, never admits anything. Bounded:
/// when a shard is full, passed entries are dropped, and if none has
/// passed the new one is not remembered (Redis is asked instead).
/// The deny cache's maps hold keys already hashed (keyed SipHash): they
/// use the hash as it is rather than hashing it again.
#[derive(Default, Clone, Copy)]
struct Prehashed(u64);

impl std::hash::Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used; anything else still hashes soundly.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type DenyMap = HashMap<u64, UnixNanos, std::hash::BuildHasherDefault<Prehashed>>;

struct DenyCache {
    shards: Box<[Mutex<DenyMap>]>,
    /// Room per shard for refusals.
    per_shard: usize,
    /// Whether any pause was held (with no room for refusals, the cache
    /// is then still read).
    holds_pauses: AtomicBool,
    hasher: RandomState,
}

const SHARDS: usize = 16;

/// Room per shard for pauses when the cache is smaller (or off): pauses
/// are few (one per key the upstream throttled) and must be held.
const PAUSE_ROOM: usize = 64;

impl DenyCache {
    fn new(keys: usize) -> DenyCache {
        DenyCache {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(DenyMap::default()))
                .collect(),
            per_shard: keys.div_ceil(SHARDS),
            holds_pauses: AtomicBool::new(false),
            hasher: RandomState::new(),
        }
    }

    fn shard(&self, hash: u64) -> &Mutex<DenyMap> {
        // Middle bits pick the shard: the map uses the hash as it is, its
        // low bits for the bucket and its top bits for the tag.
        &self.shards[usize::try_from((hash >> 32) % SHARDS as u64).unwrap_or(0)]
    }

    /// The time a refusal named, while it is still ahead.
    fn until(&self, key: &str, now: UnixNanos) -> Option<UnixNanos> {
        if self.per_shard == 0 && !self.holds_pauses.load(Ordering::Relaxed) {
            return None;
        }
        let hash = self.hasher.hash_one(key);
        let shard = self
            .shard(hash)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        shard.get(&hash).copied().filter(|&at| at > now)
    }

    /// Remembers "not before `at`". A `pause` must be held: when the shard
    /// is full of entries still ahead, the one ending first gives way.
    fn remember(&self, key: &str, at: UnixNanos, now: UnixNanos, pause: bool) {
        if (self.per_shard == 0 && !pause) || at <= now {
            return;
        }
        if pause {
            self.holds_pauses.store(true, Ordering::Relaxed);
        }
        let room = if pause {
            self.per_shard.max(PAUSE_ROOM)
        } else {
            self.per_shard
        };
        let hash = self.hasher.hash_one(key);
        let mut shard = self
            .shard(hash)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(old) = shard.get_mut(&hash) {
            *old = (*old).max(at);
            return;
        }
        if shard.len() >= room {
            shard.retain(|_, &mut until| until > now);
            if shard.len() >= room {
                if !pause {
                    return;
                }
                // A pause outranks a refusal: the entry ending first goes.
                let first = shard
                    .iter()
                    .min_by_key(|(_, &until)| until)
                    .map(|(&k, _)| k);
                if let Some(first) = first {
                    shard.remove(&first);
                }
            }
        }
        shard.insert(hash, at);
    }
}

/// The Redis key names of the keys used lately, so that a call neither
/// hashes its key with SHA-256 nor formats the names again.
///
/// Held by a 128-bit keyed hash of the key (two SipHash-1-3 with random
/// keys of this process), never the key itself (it may be a credential).
/// Unlike the deny cache's, a collision here would matter (one key would
/// decide on another's state), so the entry is found by the first 64 bits
/// and checked against the other 64: two keys collide with a chance of
/// 2^-128 a pair, which no number of keys a process sees comes near
/// (2^-128 × (10^12 keys)^2 is about 3 × 10^-15). The names themselves
/// are the same SHA-256 names as ever: the key layout does not change.
/// Bounded: a shard that is full is emptied.
struct NameCache {
    shards: Box<[Mutex<NameMap>]>,
    hashers: [RandomState; 2],
}

type NameMap = HashMap<u64, (u64, Arc<[String]>), std::hash::BuildHasherDefault<Prehashed>>;

/// How many keys' names a store remembers.
const NAME_CACHE_KEYS: usize = 4_096;

impl Default for NameCache {
    fn default() -> NameCache {
        NameCache {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(NameMap::default()))
                .collect(),
            hashers: [RandomState::new(), RandomState::new()],
        }
    }
}

impl NameCache {
    /// `key`'s names: remembered, or made by `names` and remembered.
    fn get(&self, key: &str, names: impl FnOnce() -> Vec<String>) -> Arc<[String]> {
        let (first, check) = (self.hashers[0].hash_one(key), self.hashers[1].hash_one(key));
        let shard = &self.shards[usize::try_from((first >> 32) % SHARDS as u64).unwrap_or(0)];
        if let Some((c, found)) = shard
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&first)
        {
            if *c == check {
                return Arc::clone(found);
            }
        }
        let made: Arc<[String]> = names().into();
        let mut map = shard.lock().unwrap_or_else(PoisonError::into_inner);
        if map.len() >= NAME_CACHE_KEYS / SHARDS {
            map.clear();
        }
        map.insert(first, (check, Arc::clone(&made)));
        made
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    /// Far more keys than the cache holds, each asked for twice: every
    /// answer is the names made for that key (a full shard is emptied,
    /// never mixed up).
    #[test]
    fn the_name_cache_answers_each_key_its_own_names_past_its_bound() {
        let cache = NameCache::default();
        for round in 0..2 {
            for i in 0..NAME_CACHE_KEYS * 3 {
                let key = format!("key-{i}");
                let names = cache.get(&key, || vec![format!("names of {key}")]);
                assert_eq!(&*names, [format!("names of {key}")], "round {round}");
            }
        }
        let held: usize = cache
            .shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).len())
            .sum();
        assert!(held <= NAME_CACHE_KEYS, "{held}");
    }

    /// A key's names are made once, then remembered.
    #[test]
    fn the_name_cache_makes_a_keys_names_once() {
        let cache = NameCache::default();
        let mut made = 0;
        for _ in 0..3 {
            let names = cache.get("k", || {
                made += 1;
                vec!["a".to_owned(), "b".to_owned()]
            });
            assert_eq!(&*names, ["a", "b"]);
        }
        assert_eq!(made, 1);
    }

    /// The cached names are the layout's names: the same SHA-256 names a
    /// store made before the cache (and replicas of older builds make).
    #[tokio::test]
    async fn cached_names_are_the_documented_layout() {
        let store = RedisRateLimitStore::builder("redis://127.0.0.1:1")
            .quota(Quota::per_second(10).unwrap())
            .namespace("ns")
            .build()
            .unwrap();
        let inner = &store.inner;
        let cached = inner.names.get("secret", || inner.keys("secret"));
        let again = inner.names.get("secret", Vec::new);
        assert_eq!(&*cached, &*again);
        assert_eq!(
            &*cached,
            [
                "ns:rl1r:{7b61114da988455a03fd6988a68ac7c0}:pause",
                "ns:rl1r:{7b61114da988455a03fd6988a68ac7c0}:g100000000b10:s",
                "ns:rl1r:{7b61114da988455a03fd6988a68ac7c0}:g100000000b10:l",
            ]
        );
    }
}
