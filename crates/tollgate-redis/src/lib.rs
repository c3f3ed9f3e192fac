//! Redis backends for Tollgate: one quota, one learned pause and one cache
//! tier shared by every replica of a client.
#![deny(missing_docs)]

mod connect;

pub use connect::InvalidRedisUrl;

// --- rate limit (the lead's) ---

// --- cache tier (the cache helper's) ---
mod cache;
pub use cache::{
    InvalidCacheTier, RedisCacheTier, RedisCacheTierBuilder, DEFAULT_CACHE_NAMESPACE,
    DEFAULT_CACHE_TIMEOUT,
};
