//! Redis backends for Tollgate: one quota, one learned pause and one cache
//! tier shared by every replica of a client.
#![deny(missing_docs)]

mod connect;

pub use connect::InvalidRedisUrl;

// --- rate limit (the lead's) ---
mod rate;
pub use rate::{
    BuildError, Clock, Degraded, Mode, RedisDecision, RedisLimitStats, RedisRateLimitBuilder,
    RedisRateLimitStore, RedisUnavailable, DEFAULT_DENY_CACHE_KEYS, DEFAULT_TIMEOUT,
    FORMAT_VERSION, MAX_WINDOW_COUNT, PROBE_INTERVAL,
};

// --- cache tier (the cache helper's) ---
