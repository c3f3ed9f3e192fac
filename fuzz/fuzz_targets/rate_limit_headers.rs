//! What an upstream says about its limits, as `tollgate_limit` reads it:
//! `Retry-After` on 429/503, the IETF `RateLimit` field and
//! `X-RateLimit-Remaining`/`-Reset`, with arbitrary values and statuses.
//!
//! Invariants: never panics; `Retry-After` on a 429/503 wins when it parses
//! (and is then at most `MAX_RETRY_AFTER`); a response with none of the
//! signals (any other status, no `RateLimit`, no `X-RateLimit-Remaining`)
//! asks for no pause; the result can be capped and added to a clock
//! without overflow, as the layer does.
#![no_main]

use std::time::{Duration, UNIX_EPOCH};

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use tollgate_limit::rate::upstream_pause;
use tollgate_retry::{parse_retry_after, MAX_RETRY_AFTER};

const NAMES: [&str; 6] = [
    "retry-after",
    "ratelimit",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
    "ratelimit-policy",
    "x-ratelimit-limit",
];

#[derive(Arbitrary, Debug)]
struct Input {
    status: u16,
    now: u64,
    headers: Vec<(u8, Vec<u8>)>,
}

fuzz_target!(|input: Input| {
    let Ok(status) = StatusCode::from_u16(input.status) else {
        return;
    };
    let mut headers = HeaderMap::new();
    for (name, value) in &input.headers {
        let name = HeaderName::from_static(NAMES[usize::from(*name) % NAMES.len()]);
        if let Ok(value) = HeaderValue::from_bytes(value) {
            headers.append(name, value);
        }
    }
    let now = UNIX_EPOCH + Duration::from_secs(input.now % (1 << 40));
    let pause = upstream_pause(status, &headers, now);

    let throttled = matches!(
        status,
        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
    );
    if throttled {
        if let Some(d) = headers
            .get(http::header::RETRY_AFTER)
            .and_then(|v| parse_retry_after(v, now))
        {
            assert_eq!(pause, Some(d), "Retry-After did not take precedence");
            assert!(d <= MAX_RETRY_AFTER);
        }
    } else if !headers.contains_key("ratelimit") && !headers.contains_key("x-ratelimit-remaining") {
        assert_eq!(pause, None, "a pause from no signal: {headers:?}");
    }
    // The layer caps the pause and adds it to tokio's clock.
    if let Some(d) = pause {
        let capped = d.min(Duration::from_secs(60));
        assert!(tokio::time::Instant::now().checked_add(capped).is_some());
    }
});
