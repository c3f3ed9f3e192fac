//! A 1 GiB download streamed through the default client keeps the process's
//! memory flat: `send_streaming` on FakeApi's `/huge` (a body made as it is
//! sent), read chunk by chunk and dropped, with the resident set
//! (`/proc/self/status`: `VmRSS`, and its peak `VmHWM`) read before and
//! after. The server runs in the same process: its memory counts too.
//!
//! `cargo bench --bench stream_rss [-- --mib N --rounds R]`
//!
//! Linux only.
#![allow(missing_docs, clippy::print_stdout, reason = "a benchmark binary")]

#[path = "support/args.rs"]
mod args;

use std::time::Duration;

use tokio::time::Instant;

use tollgate_testkit::FakeApi;

/// A field of `/proc/self/status` (`VmRSS`, `VmHWM`), in bytes.
fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .map_or(0, |kib: u64| kib * 1024)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1 << 20)
}

fn main() {
    let size = args::number("--mib", 1024) << 20;
    let rounds = args::number("--rounds", 3);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let api = FakeApi::start().await.expect("FakeApi");
        let client = tollgate::Client::builder(api.url())
            .timeout(Duration::from_secs(3600))
            .build()
            .expect("client");
        // Warm up: a connection, the runtime's threads, the allocator.
        let warm = client
            .get("/huge?size=1048576")
            .send_streaming()
            .await
            .expect("head");
        drop(warm.bytes().await.expect("body"));
        let rss_before = status_kib("VmRSS");
        let hwm_before = status_kib("VmHWM");
        println!(
            "before: VmRSS {:.1} MiB, VmHWM {:.1} MiB",
            mib(rss_before),
            mib(hwm_before)
        );
        for round in 1..=rounds {
            let started = Instant::now();
            let mut res = client
                .get("/huge")
                .query(&[("size", size)])
                .send_streaming()
                .await
                .expect("head");
            let mut read: u64 = 0;
            let mut chunks: u64 = 0;
            while let Some(chunk) = res.chunk().await.expect("chunk") {
                read += chunk.len() as u64;
                chunks += 1;
            }
            let took = started.elapsed();
            assert_eq!(read, size, "the whole body");
            println!(
                "round {round}: {:.0} MiB in {:.2} s = {:.0} MiB/s ({chunks} chunks), VmRSS {:.1} MiB, VmHWM {:.1} MiB",
                mib(read),
                took.as_secs_f64(),
                mib(read) / took.as_secs_f64(),
                mib(status_kib("VmRSS")),
                mib(status_kib("VmHWM")),
            );
        }
        let rss_after = status_kib("VmRSS");
        let hwm_after = status_kib("VmHWM");
        println!(
            "after: VmRSS {:.1} MiB (+{:.1}), VmHWM {:.1} MiB (+{:.1})",
            mib(rss_after),
            mib(rss_after.saturating_sub(rss_before)),
            mib(hwm_after),
            mib(hwm_after.saturating_sub(hwm_before)),
        );
    });
}
