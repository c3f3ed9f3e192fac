//! One way to reach Redis for every backend of this crate: the `redis`
//! crate's multiplexed, reconnecting [`ConnectionManager`], no pool.

use std::fmt;
use std::time::Duration;

use std::sync::Arc;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, ErrorKind, RedisResult, Script, ServerErrorKind, Value};

/// A Redis URL that cannot be used: malformed, or a scheme this build does
/// not speak. It never repeats the URL (it may hold a password).
#[derive(Debug)]
pub struct InvalidRedisUrl {
    reason: String,
}

impl fmt::Display for InvalidRedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid Redis URL: {}", self.reason)
    }
}

impl std::error::Error for InvalidRedisUrl {}

/// The URL with any password replaced, for logs and `Debug`: the user
/// information goes, and so does the query (`redis+unix://` URLs carry
/// their password there, `?pass=`) and the fragment.
pub(crate) fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "<not a URL>".to_owned();
    };
    // Everything up to the last `@` may be a password, even one holding
    // `?`, `#` or `/` unencoded.
    let (user, rest) = match rest.rsplit_once('@') {
        Some((_userinfo, host)) => ("***@", host),
        None => ("", rest),
    };
    let (rest, hidden) = match rest.find(['?', '#']) {
        Some(at) => (&rest[..at], "?***"),
        None => (rest, ""),
    };
    format!("{scheme}://{user}{rest}{hidden}")
}

/// A lazily connecting manager for `url` (`redis://`, `rediss://` over
/// rustls with the webpki roots, `redis+unix://`): it connects on first
/// use and again after a failure, each attempt bounded by `timeout`, each
/// answer too. Never blocks and never fails because Redis is down: only a
/// URL that cannot be used is an error.
pub(crate) fn manager(url: &str, timeout: Duration) -> Result<ConnectionManager, InvalidRedisUrl> {
    manager_with(url, timeout, &Tls::default())
}

/// How to trust a `rediss://` server besides the webpki roots.
#[derive(Clone, Default)]
pub(crate) struct Tls {
    /// A PEM root certificate (a private CA) to trust instead of the webpki roots.
    pub(crate) root_cert: Option<Vec<u8>>,
}

/// [`manager`], with the TLS settings given.
pub(crate) fn manager_with(
    url: &str,
    timeout: Duration,
    tls: &Tls,
) -> Result<ConnectionManager, InvalidRedisUrl> {
    if url.starts_with("rediss://") {
        // rustls needs one process-wide crypto provider; the workspace's is
        // ring. Installing fails harmlessly when the process chose one.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    // redis-rs's messages name the part that is wrong, not the URL.
    let client = match &tls.root_cert {
        Some(root) => redis::Client::build_with_tls(
            url,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(root.clone()),
            },
        ),
        None => redis::Client::open(url),
    }
    .map_err(|e| InvalidRedisUrl {
        reason: e.to_string(),
    })?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
        // Reconnect attempts are the manager's; callers never wait on them
        // longer than their own timeout.
        .set_number_of_retries(1)
        .set_min_delay(Duration::from_millis(10))
        .set_max_delay(Duration::from_millis(200));
    ConnectionManager::new_lazy_with_config(client, config).map_err(|e| InvalidRedisUrl {
        reason: e.to_string(),
    })
}

/// A connection to one Redis, or to a Redis Cluster (slots followed,
/// `MOVED` and `ASK` handled by redis-rs's cluster client).
#[derive(Clone)]
pub(crate) enum Conn {
    /// One server (or a proxy in front of many).
    Single(ConnectionManager),
    /// A cluster, found from its seed nodes on first use.
    Cluster(Arc<ClusterSlot>),
}

/// The cluster client and its connection, made on first use (and again
/// after a failure to make it).
pub(crate) struct ClusterSlot {
    client: ClusterClient,
    conn: tokio::sync::OnceCell<ClusterConnection>,
}

impl Conn {
    /// Runs `evalsha`, an `EVALSHA` of `script` built by the caller (its
    /// keys and arguments written straight into one buffer); on `NOSCRIPT`
    /// (a Redis restarted, or `SCRIPT FLUSH`) loads the script and sends
    /// it again (as redis-rs's `ScriptInvocation` does).
    pub(crate) async fn eval(&self, script: &Script, evalsha: &Cmd) -> RedisResult<Value> {
        match self {
            Conn::Single(manager) => {
                let mut conn = manager.clone();
                eval_on(&mut conn, script, evalsha).await
            }
            Conn::Cluster(slot) => {
                let mut conn = slot.connection().await?;
                eval_on(&mut conn, script, evalsha).await
            }
        }
    }
}

async fn eval_on(
    conn: &mut impl redis::aio::ConnectionLike,
    script: &Script,
    evalsha: &Cmd,
) -> RedisResult<Value> {
    match evalsha.query_async(conn).await {
        Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
            script.load_async(conn).await?;
            evalsha.query_async(conn).await
        }
        answer => answer,
    }
}

impl ClusterSlot {
    /// The cluster connection, made on first use.
    async fn connection(&self) -> RedisResult<ClusterConnection> {
        let conn = self
            .conn
            .get_or_try_init(|| self.client.get_async_connection())
            .await?;
        Ok(conn.clone())
    }
}

/// A cluster connection from seed `nodes` (`redis://` or `rediss://`),
/// each connection attempt and answer bounded by `timeout`.
pub(crate) fn cluster(
    nodes: &[String],
    timeout: Duration,
    tls: &Tls,
) -> Result<Conn, InvalidRedisUrl> {
    if nodes.iter().any(|n| n.starts_with("rediss://")) {
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    let mut builder = ClusterClient::builder(nodes.iter().map(String::as_str))
        .connection_timeout(timeout)
        .response_timeout(timeout)
        .retries(1);
    if let Some(root) = &tls.root_cert {
        builder = builder.certs(redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(root.clone()),
        });
    }
    let client = builder.build().map_err(|e| InvalidRedisUrl {
        reason: e.to_string(),
    })?;
    Ok(Conn::Cluster(Arc::new(ClusterSlot {
        client,
        conn: tokio::sync::OnceCell::new(),
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_never_reaches_a_log_line() {
        assert_eq!(
            redacted("redis://user:hunter2@127.0.0.1:6379/0"),
            "redis://***@127.0.0.1:6379/0"
        );
        assert_eq!(redacted("rediss://h:6380"), "rediss://h:6380");
        assert_eq!(redacted("hunter2"), "<not a URL>");
        assert_eq!(
            redacted("redis+unix:///run/redis.sock?db=1&pass=hunter2"),
            "redis+unix:///run/redis.sock?***"
        );
        assert_eq!(redacted("redis://u:pa?s/s#w@h:1/0"), "redis://***@h:1/0");
        assert_eq!(redacted("redis://h:1/0?pass=x"), "redis://h:1/0?***");
    }

    #[tokio::test]
    async fn a_malformed_url_is_a_typed_error_without_the_url() {
        let err =
            manager("redis://:hunter2@[::1", Duration::from_millis(50)).expect_err("malformed");
        assert!(!err.to_string().contains("hunter2"), "{err}");
        assert!(manager("http://127.0.0.1:1", Duration::from_millis(50)).is_err());
    }

    #[tokio::test]
    async fn redis_being_down_is_not_an_error_at_build() {
        assert!(manager("redis://127.0.0.1:1", Duration::from_millis(50)).is_ok());
    }
}
