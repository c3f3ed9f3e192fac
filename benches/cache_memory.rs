//! Memory of a full cache: 1,000,000 distinct URLs through a `CacheLayer`
//! with a 64 MiB capacity, then the memory the process holds for it: the
//! growth of its resident set (`/proc/self/statm`), which counts the
//! allocator's own overhead and fragmentation too (the workspace forbids the
//! `unsafe` a counting allocator would need).
//!
//! `cargo bench --bench cache_memory [-- --keys N --capacity-mib M --body-bytes B]`
//!
//! The capacity counts bodies, headers and a per-entry overhead
//! (`ENTRY_OVERHEAD` in `entry.rs`); this checks that the heap really held
//! stays within 10% of it once the cache is full and evicting.
//! Linux only.
#![allow(missing_docs, clippy::print_stdout, reason = "a benchmark binary")]

#[path = "support/args.rs"]
mod args;

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use tollgate_cache::{CacheLayer, Freshness};
use tower::{service_fn, Layer, ServiceExt};

/// The process's resident memory, from `/proc/self/statm`, in bytes.
fn resident() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn main() {
    let keys = args::number("--keys", 1_000_000);
    let capacity = args::number("--capacity-mib", 64) << 20;
    let body_bytes = args::number("--body-bytes", 300) as usize;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let body = Bytes::from(vec![b'x'; body_bytes]);
    let upstream = service_fn(move |_req: Request<()>| {
        let body = body.clone();
        async move {
            let response = Response::builder()
                .header("content-type", "application/json; charset=utf-8")
                .header("date", "Sun, 22 Nov 2026 20:00:00 GMT")
                .header("etag", "\"v0-0123456789abcdef\"")
                // A copy per response, as a body read from a socket would be.
                .body(Full::new(Bytes::copy_from_slice(&body)))
                .expect("response");
            Ok::<_, Infallible>(response)
        }
    });
    let before = resident();
    let layer = CacheLayer::builder(Freshness::Fixed(Duration::from_secs(3600)))
        .max_bytes(capacity)
        .build();
    let service = layer.layer(upstream);
    rt.block_on(async {
        for i in 0..keys {
            let uri = format!("http://api.example.com/v1/items/{i}?fields=id,name");
            let request = Request::get(uri)
                .header("accept", "application/json")
                .body(())
                .expect("request");
            drop(service.clone().oneshot(request).await.expect("response"));
        }
    });
    let stats = layer.stats();
    let held = resident().saturating_sub(before);
    let mib = |b: u64| b as f64 / f64::from(1 << 20);
    println!(
        "{keys} distinct keys, capacity {:.1} MiB, bodies of {body_bytes} bytes",
        mib(capacity)
    );
    println!(
        "entries kept {}, evicted {}, counted {:.1} MiB",
        stats.entries,
        stats.evictions,
        mib(stats.bytes)
    );
    println!(
        "resident memory grown by {:.1} MiB = {:.3} x capacity",
        mib(held),
        held as f64 / capacity as f64
    );
    drop(service);
    drop(layer);
}
