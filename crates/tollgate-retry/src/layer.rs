//! [`RetryLayer`] and its settings.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{HeaderName, Method, StatusCode};
use tower::Layer;

use crate::backoff::Backoff;
use crate::budget::RetryBudget;
use crate::policy::{Classifier, Outcome};
use crate::service::Retry;

/// The header [`RetryLayer::with_idempotency_key`] sets.
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// Retries failed attempts: see the [crate docs](crate) for the rules.
///
/// Clones of the layer, and every service it makes, share one retry budget
/// and one random source.
#[derive(Clone)]
pub struct RetryLayer {
    pub(crate) config: Arc<Config>,
}

#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) classifier: Classifier,
    pub(crate) max_retries: u32,
    pub(crate) backoff: Backoff,
    pub(crate) max_retry_after: Duration,
    pub(crate) max_total: Option<Duration>,
    pub(crate) budget: Option<Arc<RetryBudget>>,
    pub(crate) idempotency_key: bool,
    pub(crate) max_replay_body: usize,
    pub(crate) rng: Arc<Mutex<fastrand::Rng>>,
}

impl fmt::Debug for RetryLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &*self.config;
        f.debug_struct("RetryLayer")
            .field("max_retries", &c.max_retries)
            .field("backoff", &c.backoff)
            .field("max_retry_after", &c.max_retry_after)
            .field("max_total", &c.max_total)
            .field("budget", &c.budget)
            .field("classifier", &c.classifier)
            .field("idempotency_key", &c.idempotency_key)
            .field("max_replay_body", &c.max_replay_body)
            .finish_non_exhaustive()
    }
}

impl Default for RetryLayer {
    fn default() -> Self {
        RetryLayer::new()
    }
}

/// The default budget: 20% of requests plus 10 retries per second, over 10 s.
fn default_budget() -> RetryBudget {
    match RetryBudget::new(Duration::from_secs(10), 10, 0.2) {
        Ok(b) => b,
        Err(_) => unreachable!("the default budget's settings are in range"),
    }
}

impl RetryLayer {
    /// Up to 3 retries of idempotent requests on connect errors, resets,
    /// timeouts and 408/429/500/502/503/504; backoff from 100 ms doubling to
    /// 10 s with full jitter; `Retry-After` honoured up to 60 s; a budget of
    /// 20% of requests plus 10 per second.
    pub fn new() -> Self {
        RetryLayer {
            config: Arc::new(Config {
                classifier: Classifier::default(),
                max_retries: 3,
                backoff: Backoff::default(),
                max_retry_after: Duration::from_secs(60),
                max_total: None,
                budget: Some(Arc::new(default_budget())),
                idempotency_key: false,
                max_replay_body: tollgate_core::DEFAULT_MAX_REPLAY_BODY,
                rng: Arc::new(Mutex::new(fastrand::Rng::new())),
            }),
        }
    }

    fn with(mut self, f: impl FnOnce(&mut Config)) -> Self {
        f(Arc::make_mut(&mut self.config));
        self
    }

    /// Retries at most `n` times (so at most `n + 1` attempts).
    pub fn max_retries(self, n: u32) -> Self {
        self.with(|c| c.max_retries = n)
    }

    /// The backoff schedule between attempts.
    pub fn backoff(self, backoff: Backoff) -> Self {
        self.with(|c| c.backoff = backoff)
    }

    /// The longest `Retry-After` waited for (default 60 s). A longer one is
    /// not waited for: the response is returned at once, its
    /// [`RetryRecord`](crate::RetryRecord) saying what the server asked.
    pub fn max_retry_after(self, cap: Duration) -> Self {
        self.with(|c| c.max_retry_after = cap)
    }

    /// No retry starts whose wait would end more than `total` after the call
    /// began (a [`Deadline`](crate::Deadline) in the request's extensions
    /// can make it earlier).
    pub fn max_total_time(self, total: Duration) -> Self {
        self.with(|c| c.max_total = Some(total))
    }

    /// Replaces the retry budget (shared by this layer's clones and
    /// services).
    pub fn budget(self, budget: RetryBudget) -> Self {
        self.with(|c| c.budget = Some(Arc::new(budget)))
    }

    /// No budget: every retryable attempt is retried up to the maximum.
    /// Failing upstreams then see up to `max_retries + 1` times the traffic.
    pub fn no_budget(self) -> Self {
        self.with(|c| c.budget = None)
    }

    /// The statuses retried (default 408, 429, 500, 502, 503, 504).
    pub fn statuses(self, statuses: impl IntoIterator<Item = StatusCode>) -> Self {
        let statuses = statuses.into_iter().collect();
        self.with(|c| c.classifier.statuses = statuses)
    }

    /// The methods retried (default the idempotent ones: GET, HEAD, OPTIONS,
    /// TRACE, PUT, DELETE). Connect errors are retried for every method,
    /// since nothing was sent.
    pub fn methods(self, methods: impl IntoIterator<Item = Method>) -> Self {
        let methods = methods.into_iter().collect();
        self.with(|c| c.classifier.methods = methods)
    }

    /// Whether transport errors (connect, reset, timeout) are retried
    /// (default true).
    pub fn retry_errors(self, retry: bool) -> Self {
        self.with(|c| c.classifier.errors = retry)
    }

    /// A custom decision, asked first for every outcome: `Some(true)` to
    /// retry, `Some(false)` not to, `None` for the built-in rules. Limits,
    /// budget and deadline still apply.
    pub fn predicate<F>(self, predicate: F) -> Self
    where
        F: Fn(&Method, Outcome<'_>) -> Option<bool> + Send + Sync + 'static,
    {
        self.with(|c| c.classifier.predicate = Some(Arc::new(predicate)))
    }

    /// Also retries POST and PATCH, and gives each call one
    /// `Idempotency-Key` header (kept if the caller set one) that every
    /// attempt carries, so a server that supports it applies the call once.
    pub fn with_idempotency_key(self) -> Self {
        self.with(|c| {
            c.idempotency_key = true;
            for m in [Method::POST, Method::PATCH] {
                if !c.classifier.methods.contains(&m) {
                    c.classifier.methods.push(m);
                }
            }
        })
    }

    /// The largest request body read into memory to be replayed (default
    /// 64 KiB, [`DEFAULT_MAX_REPLAY_BODY`](tollgate_core::DEFAULT_MAX_REPLAY_BODY)):
    /// a body whose exact size (`size_hint`) is within it is read before the
    /// first attempt and sent again on a retry; a larger one, or one of
    /// unknown size, streams and is sent once. Bodies already whole in memory
    /// (`Full<Bytes>`, `Bytes`, `String`) are replayed whatever their size:
    /// they cost no copy. 0 reads nothing (only empty and in-memory bodies
    /// are replayed).
    pub fn max_replay_body(self, bytes: usize) -> Self {
        self.with(|c| c.max_replay_body = bytes)
    }

    /// Seeds the jitter's random source, for reproducible delays in tests.
    pub fn seed(self, seed: u64) -> Self {
        self.with(|c| c.rng = Arc::new(Mutex::new(fastrand::Rng::with_seed(seed))))
    }
}

impl<S> Layer<S> for RetryLayer {
    type Service = Retry<S>;

    fn layer(&self, inner: S) -> Retry<S> {
        Retry::new(inner, self.clone())
    }
}
