//! The limit layers' errors.

use std::fmt;
use std::time::Duration;

/// The pool's queue is full
/// ([`ConcurrencyLimitLayer::max_queue`](crate::ConcurrencyLimitLayer::max_queue)
/// callers already wait for a slot): the call was refused at once.
///
/// A type of its own, not the rate limiter's [`QueueFull`], so that a
/// caller can tell which queue refused it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolQueueFull {
    /// The queue limit (`max_queue`) that was reached.
    pub max_queue: usize,
}

impl fmt::Display for PoolQueueFull {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "too many requests waiting for the pool (limit {})",
            self.max_queue
        )
    }
}

impl std::error::Error for PoolQueueFull {}

/// The old name of [`PoolQueueFull`].
#[deprecated(note = "renamed PoolQueueFull (the pool says max_queue, as the rate limiter does)")]
pub type TooManyPending = PoolQueueFull;

/// A call waited in the pool's queue longer than
/// [`ConcurrencyLimitLayer::queue_timeout`](crate::ConcurrencyLimitLayer::queue_timeout)
/// allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolQueueTimeout {
    /// How long it waited.
    pub waited: Duration,
}

impl fmt::Display for PoolQueueTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "waited {:?} in the pool's queue without a slot",
            self.waited
        )
    }
}

impl std::error::Error for PoolQueueTimeout {}

/// The old name of [`PoolQueueTimeout`].
#[deprecated(note = "renamed PoolQueueTimeout (the pool says queue_timeout)")]
pub type PendingTimeout = PoolQueueTimeout;

/// Over the limit in reject mode: the request was refused at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimited {
    /// When a request would be admitted again.
    pub retry_after: Duration,
}

impl fmt::Display for RateLimited {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rate limited; retry after {:?}", self.retry_after)
    }
}

impl std::error::Error for RateLimited {}

impl RateLimited {
    /// The headers of a `429 Too Many Requests` answer for a server that
    /// refused with this: `Retry-After` (whole seconds, rounded up), and the
    /// IETF `RateLimit-Policy` and `RateLimit` fields for `quota`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tollgate_limit::{Quota, RateLimited};
    ///
    /// let quota = Quota::window(100, Duration::from_secs(60))?;
    /// let h = RateLimited { retry_after: Duration::from_millis(2500) }.headers(&quota);
    /// assert_eq!(h["retry-after"], "3");
    /// assert_eq!(h["ratelimit-policy"], "\"default\";q=100;w=60");
    /// assert_eq!(h["ratelimit"], "\"default\";r=0;t=3");
    /// # Ok::<(), tollgate_limit::InvalidQuota>(())
    /// ```
    pub fn headers(&self, quota: &crate::Quota) -> http::HeaderMap {
        let wait = self
            .retry_after
            .as_secs()
            .saturating_add(u64::from(self.retry_after.subsec_nanos() > 0));
        let window = quota.period().as_secs().max(1);
        let mut h = http::HeaderMap::new();
        let pairs = [
            (http::header::RETRY_AFTER, wait.to_string()),
            (
                http::HeaderName::from_static("ratelimit-policy"),
                format!("\"default\";q={};w={window}", quota.count()),
            ),
            (
                http::HeaderName::from_static("ratelimit"),
                format!("\"default\";r=0;t={wait}"),
            ),
        ];
        for (name, value) in pairs {
            if let Ok(value) = http::HeaderValue::try_from(value) {
                h.insert(name, value);
            }
        }
        h
    }
}

/// The next permit is further away than the allowed wait: refused at once,
/// without waiting first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WaitTooLong {
    /// The wait the next permit needs.
    pub needed: Duration,
    /// The allowed wait.
    pub max: Duration,
}

impl fmt::Display for WaitTooLong {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the next rate-limit permit is {:?} away, over the {:?} allowed",
            self.needed, self.max
        )
    }
}

impl std::error::Error for WaitTooLong {}

/// Too many callers already wait for a permit: refused at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueFull {
    /// The queue limit that was reached.
    pub max_queue: usize,
}

impl fmt::Display for QueueFull {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "too many callers waiting for a rate-limit permit (limit {})",
            self.max_queue
        )
    }
}

impl std::error::Error for QueueFull {}
