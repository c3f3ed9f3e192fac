//! Helpers the Redis tests share: a redis-server of the test's own, a raw
//! connection to it, and a listener that accepts and never answers.

#![allow(dead_code, reason = "each test binary uses some of these")]
#![allow(clippy::unwrap_used, reason = "tests")]

use tollgate_testkit::{RedisServer, HOW_TO_GET_REDIS};

/// A redis-server of the test's own (the test fails, saying how to get
/// one, when none is installed: it never skips).
pub(crate) fn redis() -> RedisServer {
    RedisServer::start().expect(HOW_TO_GET_REDIS)
}

/// A plain connection to `url`, to read and write Redis behind the store's back.
pub(crate) async fn raw(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// A TCP listener that accepts and never answers: Redis hung.
pub(crate) async fn blackhole() -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("redis://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    (url, task)
}
