//! Loopback load benchmark: the facade against a bare hyper-util client and
//! reqwest, doing the same GETs to the same minimal one-thread hyper server.
//!
//! ```text
//! cargo bench --bench loopback                  # defaults below
//! cargo bench --bench loopback -- --requests 100000 --rounds 5 --concurrency 1,64 \
//!     --clients bare,facade,facade-nt,facade-retry,reqwest
//! cargo bench --bench loopback -- --concurrency 64 \
//!     --clients bare,facade,facade-cache-hit,facade-distinct,facade-cache-miss
//! ```
//!
//! `facade-cache-hit` repeats one GET through a cache (all hits after the
//! warm-up); `facade-distinct` and `facade-cache-miss` GET a new URL each
//! time, without and with a cache (every call a miss that is stored).
//!
//! The parent process only orchestrates: it starts the server pinned to core
//! 1 (`taskset -c 1`) and each measurement as a fresh client process pinned
//! to core 0 (`taskset -c 0`), each on a current-thread runtime, and
//! interleaves the clients round by round so that drift affects all alike.
//! A client reports requests per second (wall clock) and its CPU time per
//! request, read from `/proc/thread-self/schedstat` (nanoseconds).
#![allow(
    missing_docs,
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a benchmark binary"
)]

use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tokio::time::Instant;

const BODY: &[u8] = br#"{"userId":1,"id":1,"title":"sunt aut facere","body":"quia et suscipit"}"#;
/// Client kinds measured by default; `--clients` picks others (`facade-nt`
/// is the facade without its default deadline, to price the timer;
/// `facade-retry` adds the default `RetryLayer`; `facade-noredir`,
/// `facade-nogzip` and `facade-lean` turn off the default redirect stage,
/// the default decompression, or both, to price them).
const CLIENTS: &str = "bare,facade,reqwest";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `cargo bench` passes `--bench`; ignore it.
    let args: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .filter(|a| *a != "--bench")
        .collect();
    match args.first().copied() {
        Some("--serve") => serve(),
        Some("--client") => client(&args[1..]),
        _ => orchestrate(&args),
    }
}

fn flag<'a>(args: &[&'a str], name: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| *a == name)
        .and_then(|i| args.get(i + 1).copied())
}

fn cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

// ---------------------------------------------------------------- server

fn serve() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        println!("{}", listener.local_addr().expect("addr"));
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(|_req: Request<hyper::body::Incoming>| async {
                        let mut res = Response::new(Full::new(Bytes::from_static(BODY)));
                        res.headers_mut().insert(
                            "content-type",
                            http::HeaderValue::from_static("application/json"),
                        );
                        Ok::<_, Infallible>(res)
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}

// ---------------------------------------------------------------- clients

fn client(args: &[&str]) {
    let kind = flag(args, "--kind").expect("--kind").to_owned();
    let addr: SocketAddr = flag(args, "--addr").expect("--addr").parse().expect("addr");
    let requests: u64 = flag(args, "--requests")
        .expect("--requests")
        .parse()
        .expect("n");
    let concurrency: u64 = flag(args, "--concurrency")
        .expect("--concurrency")
        .parse()
        .expect("c");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let url = format!("http://{addr}/posts/1");
        let call: Arc<dyn Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = bool>>>> =
            match kind.as_str() {
                "bare" => {
                    let c = hyper_util::client::legacy::Client::builder(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .build_http::<Full<Bytes>>();
                    Arc::new(move || {
                        let (c, url) = (c.clone(), url.clone());
                        Box::pin(async move {
                            let req = Request::get(url.as_str())
                                .header("accept", "application/json")
                                .body(Full::new(Bytes::new()))
                                .expect("request");
                            match c.request(req).await {
                                Ok(res) => res.into_body().collect().await.is_ok(),
                                Err(_) => false,
                            }
                        })
                    })
                }
                "facade" => {
                    let c = tollgate::Client::builder(format!("http://{addr}"))
                        .build()
                        .expect("client");
                    Arc::new(move || {
                        let c = c.clone();
                        Box::pin(async move { c.get("/posts/1").send().await.is_ok() })
                    })
                }
                "facade-noredir" | "facade-nogzip" | "facade-lean" => {
                    // Prices the default redirect and decompression stages:
                    // each off alone, then both.
                    let mut builder = tollgate::Client::builder(format!("http://{addr}"));
                    if kind != "facade-nogzip" {
                        builder = builder.redirect(tollgate::RedirectPolicy::none());
                    }
                    if kind != "facade-noredir" {
                        builder = builder.gzip(false);
                    }
                    let c = builder.build().expect("client");
                    Arc::new(move || {
                        let c = c.clone();
                        Box::pin(async move { c.get("/posts/1").send().await.is_ok() })
                    })
                }
                "facade-retry" => {
                    let c = tollgate::Client::builder(format!("http://{addr}"))
                        .retry(tollgate_retry::RetryLayer::new())
                        .build()
                        .expect("client");
                    Arc::new(move || {
                        let c = c.clone();
                        Box::pin(async move { c.get("/posts/1").send().await.is_ok() })
                    })
                }
                "facade-nt" => {
                    let c = tollgate::Client::builder(format!("http://{addr}"))
                        .no_timeout()
                        .build()
                        .expect("client");
                    Arc::new(move || {
                        let c = c.clone();
                        Box::pin(async move { c.get("/posts/1").send().await.is_ok() })
                    })
                }
                "facade-cache-hit" => {
                    // After the warm-up every call is a hit.
                    let c = tollgate::Client::builder(format!("http://{addr}"))
                        .cache(tollgate_cache::CacheLayer::new(
                            std::time::Duration::from_secs(3600),
                        ))
                        .build()
                        .expect("client");
                    Arc::new(move || {
                        let c = c.clone();
                        Box::pin(async move { c.get("/posts/1").send().await.is_ok() })
                    })
                }
                "facade-distinct" | "facade-cache-miss" => {
                    // Every call a new URL: with the cache on, every call is
                    // a miss that is stored. Without it, the baseline.
                    let mut builder = tollgate::Client::builder(format!("http://{addr}"));
                    if kind == "facade-cache-miss" {
                        builder = builder.cache(tollgate_cache::CacheLayer::new(
                            std::time::Duration::from_secs(3600),
                        ));
                    }
                    let c = builder.build().expect("client");
                    let n = Arc::new(AtomicU64::new(0));
                    Arc::new(move || {
                        let (c, n) = (c.clone(), n.fetch_add(1, Ordering::Relaxed));
                        Box::pin(async move {
                            c.get("/posts/1").query(&[("n", n)]).send().await.is_ok()
                        })
                    })
                }
                "reqwest" => {
                    let c = reqwest::Client::new();
                    Arc::new(move || {
                        let (c, url) = (c.clone(), url.clone());
                        Box::pin(async move {
                            match c.get(url.as_str()).send().await {
                                Ok(res) => res.bytes().await.is_ok(),
                                Err(_) => false,
                            }
                        })
                    })
                }
                other => panic!("unknown client {other}"),
            };
        let run = |n: u64| {
            let call = call.clone();
            async move {
                let next = Arc::new(AtomicU64::new(0));
                let failed = Arc::new(AtomicU64::new(0));
                let local = tokio::task::LocalSet::new();
                for _ in 0..concurrency {
                    let (call, next, failed) = (call.clone(), next.clone(), failed.clone());
                    local.spawn_local(async move {
                        while next.fetch_add(1, Ordering::Relaxed) < n {
                            if !call().await {
                                failed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    });
                }
                local.await;
                failed.load(Ordering::Relaxed)
            }
        };
        // Warm up: connections, pools, allocator.
        run((requests / 10).max(concurrency * 10)).await;
        let cpu0 = cpu_ns();
        let t0 = Instant::now();
        let failed = run(requests).await;
        let wall = t0.elapsed();
        let cpu = cpu_ns().saturating_sub(cpu0);
        println!(
            "{} {} {:.3} {}",
            requests as f64 / wall.as_secs_f64(),
            cpu as f64 / requests as f64,
            wall.as_secs_f64(),
            failed
        );
    });
}

// ---------------------------------------------------------------- orchestration

struct Sample {
    rps: f64,
    cpu_ns: f64,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn orchestrate(args: &[&str]) {
    let requests: u64 = flag(args, "--requests").map_or(50_000, |v| v.parse().expect("--requests"));
    let rounds: usize = flag(args, "--rounds").map_or(5, |v| v.parse().expect("--rounds"));
    let concurrencies: Vec<u64> = flag(args, "--concurrency")
        .unwrap_or("1,64")
        .split(',')
        .map(|c| c.parse().expect("--concurrency"))
        .collect();
    let clients: Vec<&str> = flag(args, "--clients")
        .unwrap_or(CLIENTS)
        .split(',')
        .collect();
    let exe = std::env::current_exe().expect("own path");
    let taskset = Command::new("taskset").arg("-V").output().is_ok();
    if !taskset {
        eprintln!("note: taskset not found; server and clients are not pinned");
    }
    let pinned = |core: &str| {
        if taskset {
            let mut c = Command::new("taskset");
            c.args(["-c", core]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        }
    };
    let mut server = pinned("1")
        .arg("--serve")
        .stdout(Stdio::piped())
        .spawn()
        .expect("server starts");
    let mut line = String::new();
    BufReader::new(server.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("server address");
    let addr = line.trim().to_owned();
    println!(
        "server {addr} (core 1); clients on core 0; {requests} requests per run, {rounds} rounds"
    );

    for &c in &concurrencies {
        let mut samples: Vec<Vec<Sample>> = clients.iter().map(|_| Vec::new()).collect();
        for _ in 0..rounds {
            for (i, kind) in clients.iter().enumerate() {
                let out = pinned("0")
                    .args(["--client", "--kind", kind, "--addr", &addr])
                    .args([
                        "--requests",
                        &requests.to_string(),
                        "--concurrency",
                        &c.to_string(),
                    ])
                    .output()
                    .expect("client runs");
                let text = String::from_utf8_lossy(&out.stdout);
                let f: Vec<f64> = text
                    .split_whitespace()
                    .filter_map(|v| v.parse().ok())
                    .collect();
                if f.len() < 4 || f[3] > 0.0 {
                    eprintln!(
                        "{kind} c={c}: bad run: {text} {}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                    continue;
                }
                samples[i].push(Sample {
                    rps: f[0],
                    cpu_ns: f[1],
                });
            }
        }
        println!("\nconcurrency {c}");
        println!(
            "{:<8} {:>10} {:>22} {:>12} {:>12}",
            "client", "req/s med", "req/s min..max", "µs CPU/req", "ratio rps"
        );
        let mut bare_rps = 0.0;
        let mut bare_cpu = 0.0;
        for (i, kind) in clients.iter().enumerate() {
            let s = &samples[i];
            if s.is_empty() {
                continue;
            }
            let mut rps: Vec<f64> = s.iter().map(|x| x.rps).collect();
            let mut cpu: Vec<f64> = s.iter().map(|x| x.cpu_ns).collect();
            let (lo, hi) = rps
                .iter()
                .fold((f64::MAX, 0.0f64), |(lo, hi), &x| (lo.min(x), hi.max(x)));
            let m = median(&mut rps);
            let cpu_m = median(&mut cpu);
            if i == 0 {
                bare_rps = m;
                bare_cpu = cpu_m;
            }
            println!(
                "{kind:<8} {m:>10.0} {:>22} {:>12.2} {:>12.3}",
                format!("{lo:.0}..{hi:.0}"),
                cpu_m / 1e3,
                m / bare_rps
            );
        }
        if let Some(f) = samples.get(1).filter(|s| !s.is_empty()) {
            let mut cpu: Vec<f64> = f.iter().map(|x| x.cpu_ns).collect();
            println!(
                "facade adds {:.2} µs of client CPU per request over bare hyper-util",
                (median(&mut cpu) - bare_cpu) / 1e3
            );
        }
    }
    let _ = server.kill();
    let _ = server.wait();
}
