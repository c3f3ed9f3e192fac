//! Issue 14 asked whether the cache should keep response bodies encoded
//! (as the upstream sent them, gzip here) or decoded. The facade's cache sits
//! above decompression (stack positions 3 and 10b), so it keeps them
//! decoded; this bench measures what each hit would cost the other way.
//!
//! - `hit/{size}`: a cache hit through the facade today (decoded body kept):
//!   a client with a TTL cache over an in-process upstream that answers with
//!   a gzip body; the upstream is asked once, before the timing.
//! - `gunzip/{size}`: decoding that response's gzip body once, with flate2
//!   (the codec under async-compression's gzip decoder, which the facade
//!   uses): what a hit would cost on
//!   top if the cache kept the encoded body and decoded it on every hit.
//! - The sizes of each body, decoded and encoded, are printed once: what
//!   keeping it encoded would save in memory.
//!
//! `cargo bench --bench cache_encoding`
#![allow(missing_docs, reason = "a benchmark binary")]
#![allow(clippy::print_stdout, reason = "a benchmark prints the body sizes")]

use std::convert::Infallible;
use std::hint::black_box;
use std::io::{Read, Write};
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use http::{Request, Response};
use http_body_util::Full;
use tollgate::cache::{CacheLayer, CacheStatus};
use tollgate::{Client, RequestBody};
use tower::service_fn;

/// A JSON array of `n` posts shaped like the usual test API's.
fn json_body(n: usize) -> Vec<u8> {
    let posts: Vec<serde_json::Value> = (0..n)
        .map(|i| {
            serde_json::json!({
                "userId": i % 10 + 1,
                "id": i + 1,
                "title": format!("sunt aut facere repellat provident occaecati {i}"),
                "body": format!("quia et suscipit\nsuscipit recusandae consequuntur expedita et cum\nreprehenderit molestiae ut ut quas totam\nnostrum rerum est autem sunt rem eveniet architecto {i}"),
            })
        })
        .collect();
    serde_json::to_vec(&posts).expect("json")
}

fn gzip(body: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(body).expect("gzip");
    e.finish().expect("gzip")
}

fn gunzip(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() * 8);
    flate2::read::GzDecoder::new(body)
        .read_to_end(&mut out)
        .expect("gunzip");
    out
}

fn cache_encoding(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("cache_encoding");
    // 10, 120 and 1,500 posts: about 2.5 KB, 30 KB and 380 KB of JSON.
    for posts in [10, 120, 1_500] {
        let decoded = json_body(posts);
        let encoded = Bytes::from(gzip(&decoded));
        let size = format!("{}KB", decoded.len() / 1024);
        println!(
            "cache_encoding/{size}: {} posts, {} bytes decoded, {} bytes in gzip ({:.1}x)",
            posts,
            decoded.len(),
            encoded.len(),
            decoded.len() as f64 / encoded.len() as f64
        );
        let upstream = {
            let encoded = encoded.clone();
            service_fn(move |_req: Request<RequestBody>| {
                let encoded = encoded.clone();
                async move {
                    Ok::<_, Infallible>(
                        Response::builder()
                            .header("content-type", "application/json; charset=utf-8")
                            .header("content-encoding", "gzip")
                            .header("content-length", encoded.len())
                            .body(Full::new(encoded))
                            .expect("response"),
                    )
                }
            })
        };
        let client = Client::builder("http://api.bench")
            .transport(upstream)
            .max_response_body(16 << 20)
            .cache(CacheLayer::new(Duration::from_secs(3600)))
            .build()
            .expect("client");
        let first = rt
            .block_on(client.get("/posts").send())
            .expect("first call");
        assert_eq!(first.bytes().len(), decoded.len(), "decoded by the facade");
        let hit = rt.block_on(client.get("/posts").send()).expect("hit");
        assert_eq!(hit.summary().cache, Some(CacheStatus::Hit));
        group.bench_function(BenchmarkId::new("hit", &size), |b| {
            b.iter(|| {
                let res = rt.block_on(client.get("/posts").send()).expect("hit");
                black_box(res.bytes().len())
            });
        });
        group.bench_function(BenchmarkId::new("gunzip", &size), |b| {
            b.iter(|| black_box(gunzip(black_box(&encoded)).len()));
        });
    }
    group.finish();
}

criterion_group!(benches, cache_encoding);
criterion_main!(benches);
