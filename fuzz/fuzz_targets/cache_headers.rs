//! `Cache-Control`, `Age`, `Expires` and friends through the public
//! `CacheLayer`: an upstream (a `service_fn`) answers with a fuzzed status,
//! headers and body; the same GET is sent twice, some (paused) time apart.
//!
//! Invariants: never panics, never hangs; `no-store`, a status the cache
//! does not keep, or `Vary: *` always reach the upstream again; a hit has
//! the stored body and an integer `Age`; with a fixed TTL and no time
//! passed, a storable response without `Vary` is a hit.
#![no_main]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use tollgate_cache::{CacheLayer, CacheStatus};
use tower::{service_fn, Layer, ServiceExt};

const NAMES: [&str; 10] = [
    "cache-control",
    "age",
    "expires",
    "date",
    "last-modified",
    "etag",
    "vary",
    "pragma",
    "content-length",
    "ratelimit",
];

#[derive(Arbitrary, Debug)]
struct Input {
    status: u16,
    headers: Vec<(u8, Vec<u8>)>,
    body: Vec<u8>,
    /// Seconds of (paused) time between the two requests.
    wait: u32,
    /// A fixed TTL in seconds, or HTTP's rules with this default TTL.
    fixed: bool,
    ttl: Option<u32>,
}

fn directive_named(values: &[&str], name: &str) -> bool {
    values.iter().flat_map(|v| v.split(',')).any(|d| {
        let d = d.trim();
        let n = d.split_once('=').map_or(d, |(n, _)| n);
        n.trim().eq_ignore_ascii_case(name)
    })
}

fuzz_target!(|input: Input| {
    let Ok(status) = StatusCode::from_u16(input.status) else {
        return;
    };
    let mut headers = http::HeaderMap::new();
    for (name, value) in &input.headers {
        let name = HeaderName::from_static(NAMES[usize::from(*name) % NAMES.len()]);
        if let Ok(value) = HeaderValue::from_bytes(value) {
            headers.append(name, value);
        }
    }
    let texts = |name: &str| -> Vec<String> {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::to_owned)
            .collect()
    };
    let cc = texts("cache-control");
    let cc: Vec<&str> = cc.iter().map(String::as_str).collect();
    let no_store = directive_named(&cc, "no-store");
    let vary: Vec<HeaderValue> = headers.get_all("vary").iter().cloned().collect();
    let vary_star = vary.iter().any(|v| {
        v.as_bytes()
            .split(|b| *b == b',')
            .any(|p| p.trim_ascii() == b"*")
    });
    let keepable = status.is_success() && status != StatusCode::PARTIAL_CONTENT;
    let lying_length = headers.contains_key("content-length");

    let layer = if input.fixed {
        CacheLayer::new(Duration::from_secs(u64::from(input.ttl.unwrap_or(60))))
    } else {
        CacheLayer::http(input.ttl.map(|s| Duration::from_secs(u64::from(s))))
    };
    let calls = Arc::new(AtomicU64::new(0));
    let upstream = {
        let (calls, headers, body) = (
            calls.clone(),
            headers.clone(),
            Bytes::from(input.body.clone()),
        );
        service_fn(move |_req: Request<()>| {
            calls.fetch_add(1, Ordering::Relaxed);
            let mut res = Response::new(Full::new(body.clone()));
            *res.status_mut() = status;
            *res.headers_mut() = headers.clone();
            async move { Ok::<_, std::convert::Infallible>(res) }
        })
    };
    let service = layer.layer(upstream);
    // A fresh paused runtime per input: the advance below can be 136 years.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let get = || Request::get("http://api.test/r").body(()).expect("request");
        let bounded = Duration::from_secs(3600);
        let Ok(Ok(first)) = tokio::time::timeout(bounded, service.clone().oneshot(get())).await
        else {
            return;
        };
        let Ok(Ok(first_body)) = tokio::time::timeout(bounded, first.into_body().collect()).await
        else {
            return;
        };
        let first_body = first_body.to_bytes();
        tokio::time::advance(Duration::from_secs(u64::from(input.wait))).await;
        let Ok(Ok(second)) = tokio::time::timeout(bounded, service.clone().oneshot(get())).await
        else {
            return;
        };
        let second_status = second.extensions().get::<CacheStatus>().copied();
        let age = second.headers().get("age").cloned();
        let Ok(Ok(second_body)) = tokio::time::timeout(bounded, second.into_body().collect()).await
        else {
            return;
        };
        let second_body = second_body.to_bytes();
        let upstream_calls = calls.load(Ordering::Relaxed);
        if no_store || !keepable || vary_star {
            assert_eq!(
                upstream_calls, 2,
                "kept what may not be kept ({second_status:?}): {headers:?}"
            );
        }
        if second_status == Some(CacheStatus::Hit) {
            assert_eq!(first_body, second_body, "a hit with another body");
            let age = age.expect("a hit without Age");
            let ok = age.to_str().is_ok_and(|a| a.parse::<u64>().is_ok());
            assert!(ok, "Age {age:?} on a hit");
        }
        if input.fixed
            && input.ttl != Some(0)
            && input.wait == 0
            && keepable
            && !no_store
            && vary.is_empty()
            && !lying_length
            && first_body.len() < 1 << 20
        {
            assert_eq!(
                second_status,
                Some(CacheStatus::Hit),
                "a fixed-TTL miss at once: {headers:?}"
            );
        }
    });
});
