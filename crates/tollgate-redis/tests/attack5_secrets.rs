//! Attacks on "passwords never leak": every URL form redis-rs accepts a
//! password in, through `Debug`, errors and the degradation log line.
//!
//! One test binary of its own: it installs the process-wide log capture.

#![allow(clippy::unwrap_used, reason = "tests")]

use std::sync::OnceLock;

use tollgate_limit::{Quota, RateLimitStore};
use tollgate_redis::{Degraded, Mode, RedisRateLimitStore};
use tollgate_testkit::{CapturedLogs, RedisServer, HOW_TO_GET_REDIS};

fn logs() -> &'static CapturedLogs {
    static LOGS: OnceLock<CapturedLogs> = OnceLock::new();
    LOGS.get_or_init(CapturedLogs::install_global)
}

fn assert_clean(what: &str, text: &str) {
    assert!(
        !text.contains("hunter2"),
        "{what} leaks the password: {text}"
    );
}

/// redis-rs takes a Unix socket's password from the query (`?pass=`);
/// the store's redaction only looks for `user:pass@`.
#[tokio::test]
async fn a_unix_socket_password_in_the_query_never_reaches_debug_or_logs() {
    let logs = logs();
    let url = "redis+unix:///nonexistent/tollgate-attack5.sock?db=0&user=u&pass=hunter2";
    let builder = RedisRateLimitStore::builder(url).quota(Quota::per_second(10).unwrap());
    assert_clean("builder Debug", &format!("{builder:?}"));
    let store = builder.degraded(Degraded::FailClosed).build().unwrap();
    assert_clean("store Debug", &format!("{store:?}"));
    let err = store
        .check("k", 0)
        .await
        .expect_err("no socket: fails closed");
    assert_clean("error", &format!("{err} {err:?}"));
    assert_eq!(store.mode(), Mode::Degraded);
    assert_clean("logs", &logs.contents());
}

/// A wrong password against a real Redis with `requirepass`: the error,
/// `Debug` and the log line name neither password.
#[tokio::test]
async fn a_wrong_password_never_reaches_errors_debug_or_logs() {
    let logs = logs();
    let redis = RedisServer::start().expect(HOW_TO_GET_REDIS);
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("requirepass")
        .arg("s3cret-right")
        .query_async(&mut conn)
        .await
        .unwrap();
    let wrong = redis.url().replace("redis://", "redis://default:hunter2@");
    let store = RedisRateLimitStore::builder(wrong)
        .quota(Quota::per_second(10).unwrap())
        .build()
        .unwrap();
    assert_clean("store Debug", &format!("{store:?}"));
    let err = store.decide("k", 0).await.expect_err("wrong password");
    assert_clean("decide error", &format!("{err} {err:?}"));
    let err = store.check("k", 0).await.expect_err("fails closed");
    assert_clean("check error", &format!("{err} {err:?}"));
    let right = redis
        .url()
        .replace("redis://", "redis://default:s3cret-right@");
    let good = RedisRateLimitStore::builder(right)
        .quota(Quota::per_second(10).unwrap())
        .build()
        .unwrap();
    assert_eq!(good.check("k", 0).await.unwrap(), Ok(()));
    let text = logs.contents();
    assert_clean("logs", &text);
    assert!(!text.contains("s3cret-right"), "{text}");
    assert!(!format!("{good:?}").contains("s3cret-right"));
}
