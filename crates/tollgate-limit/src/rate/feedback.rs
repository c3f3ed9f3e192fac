//! What the upstream says about its limits: `Retry-After` on 429/503, the
//! IETF `RateLimit` field, and `X-RateLimit-Remaining`/`-Reset`.
//! Malformed values are ignored; nothing here panics.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, StatusCode};

/// How long the upstream asks everyone to hold off, if it does.
///
/// `Retry-After` on a 429 or 503 takes precedence; otherwise a `RateLimit`
/// field (both `r=0;t=30` and the older `remaining=0, reset=30` forms) or
/// `X-RateLimit-Remaining: 0` with `X-RateLimit-Reset` (delta-seconds, or
/// Unix seconds when it is larger than 10⁹) pauses until the reset.
pub fn upstream_pause(
    status: StatusCode,
    headers: &HeaderMap,
    now: SystemTime,
) -> Option<Duration> {
    if matches!(
        status,
        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
    ) {
        if let Some(d) = headers
            .get(http::header::RETRY_AFTER)
            .and_then(|v| tollgate_retry::parse_retry_after(v, now))
        {
            return Some(d);
        }
    }
    if let Some(d) = headers
        .get("ratelimit")
        .and_then(|v| v.to_str().ok())
        .and_then(ratelimit_field)
    {
        return Some(d);
    }
    let remaining = headers.get("x-ratelimit-remaining")?.to_str().ok()?.trim();
    if remaining.parse::<u64>().ok()? != 0 {
        return None;
    }
    let reset: u64 = headers
        .get("x-ratelimit-reset")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    if reset > 1_000_000_000 {
        let unix = now.duration_since(UNIX_EPOCH).ok()?.as_secs();
        Some(Duration::from_secs(reset.saturating_sub(unix)))
    } else {
        Some(Duration::from_secs(reset))
    }
}

/// Whether the response can carry a signal at all: a cheap test that spares
/// most responses the wall-clock read and the header parsing.
pub(crate) fn might_signal(status: StatusCode, headers: &HeaderMap) -> bool {
    matches!(
        status,
        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
    ) || headers.contains_key("ratelimit")
        || headers.contains_key("x-ratelimit-remaining")
}

/// `remaining` is 0 and `reset` is given: the reset delay.
fn ratelimit_field(value: &str) -> Option<Duration> {
    let mut remaining = None;
    let mut reset = None;
    for part in value.split([';', ',']) {
        let Some((name, v)) = part.trim().split_once('=') else {
            continue;
        };
        let v = v.trim().trim_matches('"');
        match name.trim() {
            "r" | "remaining" => remaining = v.parse::<u64>().ok(),
            "t" | "reset" => reset = v.parse::<u64>().ok(),
            _ => {}
        }
    }
    if remaining? == 0 {
        Some(Duration::from_secs(reset?))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                v.parse().expect("value"),
            );
        }
        h
    }

    const NOW: SystemTime = UNIX_EPOCH;

    #[test]
    fn retry_after_on_429_and_503_only() {
        let h = headers(&[("retry-after", "7")]);
        assert_eq!(
            upstream_pause(StatusCode::TOO_MANY_REQUESTS, &h, NOW),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            upstream_pause(StatusCode::SERVICE_UNAVAILABLE, &h, NOW),
            Some(Duration::from_secs(7))
        );
        assert_eq!(upstream_pause(StatusCode::OK, &h, NOW), None);
    }

    #[test]
    fn ratelimit_fields_in_both_drafts() {
        let new = headers(&[("ratelimit", "\"default\";r=0;t=30")]);
        assert_eq!(
            upstream_pause(StatusCode::OK, &new, NOW),
            Some(Duration::from_secs(30))
        );
        let old = headers(&[("ratelimit", "limit=100, remaining=0, reset=12")]);
        assert_eq!(
            upstream_pause(StatusCode::OK, &old, NOW),
            Some(Duration::from_secs(12))
        );
        let left = headers(&[("ratelimit", "limit=100, remaining=3, reset=12")]);
        assert_eq!(upstream_pause(StatusCode::OK, &left, NOW), None);
        let broken = headers(&[("ratelimit", "remaining=zero, reset=soon")]);
        assert_eq!(upstream_pause(StatusCode::OK, &broken, NOW), None);
    }

    #[test]
    fn x_ratelimit_delta_and_epoch() {
        let delta = headers(&[("x-ratelimit-remaining", "0"), ("x-ratelimit-reset", "5")]);
        assert_eq!(
            upstream_pause(StatusCode::OK, &delta, NOW),
            Some(Duration::from_secs(5))
        );
        let now = UNIX_EPOCH + Duration::from_secs(2_000_000_000);
        let epoch = headers(&[
            ("x-ratelimit-remaining", "0"),
            ("x-ratelimit-reset", "2000000009"),
        ]);
        assert_eq!(
            upstream_pause(StatusCode::OK, &epoch, now),
            Some(Duration::from_secs(9))
        );
        let some_left = headers(&[("x-ratelimit-remaining", "2"), ("x-ratelimit-reset", "5")]);
        assert_eq!(upstream_pause(StatusCode::OK, &some_left, NOW), None);
    }

    proptest! {
        #[test]
        fn hostile_values_never_panic(a in "\\PC{0,40}", b in "\\PC{0,40}", status in 100u16..600) {
            let mut h = HeaderMap::new();
            for name in ["retry-after", "ratelimit", "x-ratelimit-remaining", "x-ratelimit-reset"] {
                if let Ok(v) = http::HeaderValue::from_str(&a) { h.append(name, v); }
                if let Ok(v) = http::HeaderValue::from_str(&b) { h.append(name, v); }
            }
            let status = StatusCode::from_u16(status).expect("valid range");
            let _ = upstream_pause(status, &h, NOW);
        }
    }
}
