//! Attack on "keys with a hash tag so Redis Cluster works": a real
//! two-node Redis Cluster on loopback (each node owning half the slots),
//! the store pointed at one node, callers whose keys hash to the other.
//!
//! The cluster's gossip runs on real time: the test waits (bounded) on
//! the wall clock for the nodes to agree, as Redis forces.

#![allow(clippy::unwrap_used, reason = "tests")]

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::time::Instant;
use tollgate_limit::Quota;
use tollgate_redis::{Degraded, RedisRateLimitStore};
use tollgate_testkit::{RedisServer, HOW_TO_GET_REDIS};

/// Cluster nodes killed (and their files removed) on drop.
struct Nodes {
    children: Vec<Child>,
    dir: std::path::PathBuf,
}

impl Drop for Nodes {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn conn(port: u16) -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
    let started = Instant::now();
    loop {
        match client.get_multiplexed_async_connection().await {
            Ok(c) => return c,
            Err(e) => {
                assert!(started.elapsed() < Duration::from_secs(10), "{e}");
                // The node is starting: real time.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// Two nodes with half the slots each, agreed (`cluster_state:ok`).
async fn cluster() -> (Nodes, [u16; 2]) {
    let binary = RedisServer::binary().expect(HOW_TO_GET_REDIS);
    let dir = std::env::temp_dir().join(format!(
        "tollgate-attack5-cluster-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let ports = [free_port(), free_port()];
    let mut nodes = Nodes {
        children: Vec::new(),
        dir: dir.clone(),
    };
    for port in ports {
        let child = Command::new(&binary)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"])
            .arg("--cluster-config-file")
            .arg(dir.join(format!("nodes-{port}.conf")))
            .arg("--dir")
            .arg(&dir)
            .args(["--save", "", "--appendonly", "no", "--loglevel", "warning"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        nodes.children.push(child);
    }
    let mut a = conn(ports[0]).await;
    let mut b = conn(ports[1]).await;
    let _: () = redis::cmd("CLUSTER")
        .arg("ADDSLOTSRANGE")
        .arg(0)
        .arg(8191)
        .query_async(&mut a)
        .await
        .unwrap();
    let _: () = redis::cmd("CLUSTER")
        .arg("ADDSLOTSRANGE")
        .arg(8192)
        .arg(16383)
        .query_async(&mut b)
        .await
        .unwrap();
    let _: () = redis::cmd("CLUSTER")
        .arg("MEET")
        .arg("127.0.0.1")
        .arg(ports[1])
        .query_async(&mut a)
        .await
        .unwrap();
    let started = Instant::now();
    loop {
        let mut ok = true;
        for c in [&mut a, &mut b] {
            let info: String = redis::cmd("CLUSTER")
                .arg("INFO")
                .query_async(c)
                .await
                .unwrap();
            ok &= info.contains("cluster_state:ok") && info.contains("cluster_known_nodes:2");
        }
        if ok {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "cluster never agreed"
        );
        // Gossip between the nodes: real time.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (nodes, ports)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_pointed_at_a_redis_cluster_decides_every_key() {
    let (_nodes, ports) = cluster().await;
    let store = RedisRateLimitStore::builder(format!("redis://127.0.0.1:{}", ports[0]))
        .cluster()
        .quota(Quota::per_second(1_000).unwrap())
        .degraded(Degraded::FailClosed)
        .timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let mut failures = Vec::new();
    for i in 0..16 {
        let key = format!("caller-{i}");
        // `decide` asks Redis whatever the mode: each key's own answer.
        if let Err(e) = store.decide(&key, 0).await {
            failures.push((key, e.to_string()));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of 16 keys undecidable in a two-node cluster: {failures:?}; stats {:?}",
        failures.len(),
        store.stats()
    );
}
