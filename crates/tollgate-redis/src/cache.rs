//! [`RedisCacheTier`]: Redis as the second tier of `tollgate_cache`'s
//! `CacheLayer`, shared by every replica that names the same Redis and
//! namespace.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use redis::aio::ConnectionManager;
use sha2::{Digest, Sha256};
use tollgate_cache::{CacheTier, TierFuture};

use crate::connect::{manager, redacted, InvalidRedisUrl};

/// The default for [`RedisCacheTierBuilder::namespace`]: `"tollgate"`.
pub const DEFAULT_CACHE_NAMESPACE: &str = "tollgate";

/// The default for [`RedisCacheTierBuilder::timeout`]: 50 ms.
pub const DEFAULT_CACHE_TIMEOUT: Duration = Duration::from_millis(50);

/// Redis as the shared second tier of a `tollgate_cache::CacheLayer`
/// (`CacheBuilder::tier`): a response one replica fetched, the others
/// serve from Redis instead of asking the upstream again.
///
/// - **Keys**: `<namespace>:c1:{<hex SHA-256 of the cache's key>}`. The
///   cache's key is already a hash of the method, the URI and the
///   request's credentials; hashing again keeps every key one fixed length,
///   and the braces make the whole hash the Redis Cluster hash tag, so each
///   entry lives on one slot. `c1` is this layout's version.
/// - **Commands**: `GET`, `SET key value PX ttl` (the TTL is the entry's
///   remaining freshness, at least 1 ms), `DEL`; one round trip each, on
///   the `redis` crate's multiplexed, reconnecting `ConnectionManager` (no
///   pool), connected lazily: building never waits for Redis, nor fails
///   because it is down.
/// - **Values** are the cache's own versioned encoding, stored as they
///   are: the cache checks each one it reads, so anything else found
///   there is a miss.
/// - **Time**: each command, and each connection attempt, is bounded by
///   [`timeout`](RedisCacheTierBuilder::timeout) (50 ms); the cache layer
///   bounds what a request waits for the tier by its own `tier_timeout`
///   (10 ms), and treats errors and slow answers as misses. A replica
///   whose Redis is down serves from memory and the upstream, and uses
///   Redis again once it is back.
/// - **TLS**: `rediss://` URLs go through rustls.
///
/// `Debug` and every error show the URL without its password.
///
/// ```no_run
/// use std::sync::Arc;
/// use std::time::Duration;
/// use tollgate_cache::{CacheLayer, Freshness};
/// use tollgate_redis::RedisCacheTier;
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let tier = RedisCacheTier::builder("redis://127.0.0.1:6379")
///     .namespace("my-gateway")
///     .build()?;
/// let cache = CacheLayer::builder(Freshness::Http { default_ttl: None })
///     .tier(Arc::new(tier))
///     .build();
/// # let _ = cache;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisCacheTier {
    manager: ConnectionManager,
    /// `<namespace>:c1:`.
    prefix: Arc<str>,
    url: Arc<str>,
    timeout: Duration,
}

/// Configures a [`RedisCacheTier`]; from [`RedisCacheTier::builder`].
#[derive(Clone)]
pub struct RedisCacheTierBuilder {
    url: String,
    namespace: String,
    timeout: Duration,
}

/// A [`RedisCacheTier`] that cannot be built. It never shows the URL's
/// password.
#[derive(Debug)]
#[non_exhaustive]
pub enum InvalidCacheTier {
    /// The URL is malformed, or of a scheme this build does not speak.
    Url(InvalidRedisUrl),
    /// The namespace is empty, or holds `{`, `}` (which would move the
    /// Redis Cluster hash tag) or whitespace.
    Namespace,
}

impl fmt::Display for InvalidCacheTier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InvalidCacheTier::Url(e) => write!(f, "cache tier: {e}"),
            InvalidCacheTier::Namespace => f.write_str(
                "cache tier: the namespace must be non-empty, without braces or whitespace",
            ),
        }
    }
}

impl std::error::Error for InvalidCacheTier {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            InvalidCacheTier::Url(e) => Some(e),
            InvalidCacheTier::Namespace => None,
        }
    }
}

impl RedisCacheTier {
    /// Starts configuring a tier on the Redis at `url` (`redis://`,
    /// `rediss://`, `redis+unix://`).
    pub fn builder(url: impl Into<String>) -> RedisCacheTierBuilder {
        RedisCacheTierBuilder {
            url: url.into(),
            namespace: DEFAULT_CACHE_NAMESPACE.to_owned(),
            timeout: DEFAULT_CACHE_TIMEOUT,
        }
    }

    /// A tier on the Redis at `url`, with the defaults.
    ///
    /// # Errors
    ///
    /// A URL that cannot be used.
    pub fn new(url: impl Into<String>) -> Result<RedisCacheTier, InvalidCacheTier> {
        Self::builder(url).build()
    }

    /// The Redis key the cache's key `key` is stored under.
    pub fn redis_key(&self, key: &str) -> String {
        let digest = Sha256::digest(key.as_bytes());
        let mut out = String::with_capacity(self.prefix.len() + 2 + 64);
        out.push_str(&self.prefix);
        out.push('{');
        for b in digest {
            out.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
            out.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
        }
        out.push('}');
        out
    }
}

impl RedisCacheTierBuilder {
    /// What every key starts with (default `"tollgate"`): replicas share
    /// entries only within one namespace. Non-empty, without braces or
    /// whitespace.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// The bound on each connection attempt and each command (default
    /// 50 ms). What a request waits for the tier is bounded by the cache
    /// layer's `tier_timeout`, usually shorter.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Builds the tier. Never connects: the first command does.
    ///
    /// # Errors
    ///
    /// A URL that cannot be used, or a namespace that is empty or holds
    /// braces or whitespace.
    pub fn build(self) -> Result<RedisCacheTier, InvalidCacheTier> {
        if self.namespace.is_empty()
            || self
                .namespace
                .chars()
                .any(|c| c == '{' || c == '}' || c.is_whitespace())
        {
            return Err(InvalidCacheTier::Namespace);
        }
        let manager = manager(&self.url, self.timeout).map_err(InvalidCacheTier::Url)?;
        Ok(RedisCacheTier {
            manager,
            prefix: Arc::from(format!("{}:c1:", self.namespace)),
            url: Arc::from(redacted(&self.url)),
            timeout: self.timeout,
        })
    }
}

impl fmt::Debug for RedisCacheTier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisCacheTier")
            .field("url", &self.url)
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for RedisCacheTierBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisCacheTierBuilder")
            .field("url", &redacted(&self.url))
            .field("namespace", &self.namespace)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl CacheTier for RedisCacheTier {
    fn get(&self, key: &str) -> TierFuture<Option<Bytes>> {
        let mut connection = self.manager.clone();
        let key = self.redis_key(key);
        Box::pin(async move {
            let value: Result<Option<Vec<u8>>, redis::RedisError> = redis::cmd("GET")
                .arg(&key)
                .query_async(&mut connection)
                .await;
            match value {
                Ok(value) => Ok(value.map(Bytes::from)),
                // A value of another type under this one key (written by
                // something else): a miss for it, not a failing tier.
                Err(e) if e.to_string().contains("WRONGTYPE") => Ok(None),
                Err(e) => Err(e.into()),
            }
        })
    }

    fn put(&self, key: &str, value: Bytes, ttl: Duration) -> TierFuture<()> {
        let mut connection = self.manager.clone();
        let key = self.redis_key(key);
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        Box::pin(async move {
            let () = redis::cmd("SET")
                .arg(&key)
                .arg(value.as_ref())
                .arg("PX")
                .arg(ttl_ms)
                .query_async(&mut connection)
                .await?;
            Ok(())
        })
    }

    fn delete(&self, key: &str) -> TierFuture<()> {
        let mut connection = self.manager.clone();
        let key = self.redis_key(key);
        Box::pin(async move {
            let _: i64 = redis::cmd("DEL")
                .arg(&key)
                .query_async(&mut connection)
                .await?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn debug_and_errors_never_show_the_password() {
        let builder = RedisCacheTier::builder("redis://user:hunter2@127.0.0.1:1/0");
        assert!(!format!("{builder:?}").contains("hunter2"));
        let tier = builder.build().expect("valid");
        let shown = format!("{tier:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("***@127.0.0.1:1"), "{shown}");
        let err = RedisCacheTier::new("redis://:hunter2@[::1").expect_err("malformed");
        assert!(!err.to_string().contains("hunter2"), "{err}");
        assert!(!format!("{err:?}").contains("hunter2"), "{err:?}");
    }

    #[tokio::test]
    async fn keys_are_namespaced_hashed_and_hash_tagged() {
        let tier = RedisCacheTier::builder("redis://127.0.0.1:1")
            .namespace("gw")
            .build()
            .expect("valid");
        let key = tier.redis_key("GET http://api/me Bearer s3cret");
        assert!(key.starts_with("gw:c1:{") && key.ends_with('}'), "{key}");
        assert_eq!(key.len(), "gw:c1:{}".len() + 64);
        assert!(!key.contains("s3cret"));
        assert_eq!(key, tier.redis_key("GET http://api/me Bearer s3cret"));
        assert_ne!(key, tier.redis_key("GET http://api/me Bearer other"));
        let default = RedisCacheTier::new("redis://127.0.0.1:1").expect("valid");
        assert!(default.redis_key("k").starts_with("tollgate:c1:{"));
    }

    #[tokio::test]
    async fn a_namespace_that_would_move_the_hash_tag_is_refused() {
        for bad in ["", "a{b", "a}b", "a b"] {
            let built = RedisCacheTier::builder("redis://127.0.0.1:1")
                .namespace(bad)
                .build();
            assert!(matches!(built, Err(InvalidCacheTier::Namespace)), "{bad:?}");
        }
    }
}
