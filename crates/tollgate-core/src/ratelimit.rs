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
            .and_then(|v| crate::parse_retry_after(v, now))
        {
            return Some(d);
        }
    }
    // A field may come as several lines: together they are one list, and
    // the most restrictive policy of all of them wins.
    if let Some(d) = headers
        .get_all("ratelimit")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(ratelimit_field)
        .max()
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
        Some(Duration::from_secs(reset.saturating_sub(unix)).min(crate::MAX_RETRY_AFTER))
    } else {
        Some(Duration::from_secs(reset).min(crate::MAX_RETRY_AFTER))
    }
}

/// Whether the response can carry a signal at all: a cheap test that spares
/// most responses the wall-clock read and the header parsing.
pub fn may_signal(status: StatusCode, headers: &HeaderMap) -> bool {
    matches!(
        status,
        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
    ) || headers.contains_key("ratelimit")
        || headers.contains_key("x-ratelimit-remaining")
}

/// The pause a `RateLimit` field asks for: the longest reset among the
/// policies with nothing remaining (the most restrictive one wins), or
/// `None`.
///
/// Both drafts are read: the current one, a list of policies with
/// parameters (`"day";r=0;t=3600, "minute";r=50;t=30`), and the older
/// dictionary (`limit=100, remaining=0, reset=12`). A member whose numbers
/// do not parse is ignored; the others still count.
fn ratelimit_field(value: &str) -> Option<Duration> {
    // The older dictionary form: keys spread over the members.
    let mut old_remaining = None;
    let mut old_reset = None;
    let mut pause: Option<u64> = None;
    for member in split_outside_quotes(value, b',') {
        let mut remaining = None;
        let mut reset = None;
        for part in split_outside_quotes(member, b';') {
            let Some((name, v)) = part.trim().split_once('=') else {
                continue;
            };
            let v = v.trim().trim_matches('"');
            match name.trim() {
                "r" => remaining = v.parse::<u64>().ok(),
                "t" => reset = v.parse::<u64>().ok(),
                "remaining" => old_remaining = v.parse::<u64>().ok(),
                "reset" => old_reset = v.parse::<u64>().ok(),
                _ => {}
            }
        }
        if let (Some(0), Some(t)) = (remaining, reset) {
            pause = Some(pause.map_or(t, |p| p.max(t)));
        }
    }
    if let (Some(0), Some(t)) = (old_remaining, old_reset) {
        pause = Some(pause.map_or(t, |p| p.max(t)));
    }
    pause.map(|secs| Duration::from_secs(secs).min(crate::MAX_RETRY_AFTER))
}

/// Splits `value` at `sep`, except inside a quoted string (RFC 8941
/// §3.3.3: `"` opens and closes one, `\` escapes the next character), so
/// a policy named `"n;r=0;t=999"` is one name, not three parameters.
fn split_outside_quotes(value: &str, sep: u8) -> impl Iterator<Item = &str> {
    let bytes = value.as_bytes();
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, &b) in bytes.iter().enumerate() {
        if escaped {
            escaped = false;
        } else if quoted && b == b'\\' {
            escaped = true;
        } else if b == b'"' {
            quoted = !quoted;
        } else if b == sep && !quoted {
            parts.push(&value[start..i]);
            start = i + 1;
        }
    }
    parts.push(&value[start..]);
    parts.into_iter()
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
    fn the_most_restrictive_policy_wins() {
        let both = headers(&[("ratelimit", "\"day\";r=0;t=3600, \"minute\";r=50;t=30")]);
        assert_eq!(
            upstream_pause(StatusCode::OK, &both, NOW),
            Some(Duration::from_secs(3600))
        );
        let two_spent = headers(&[("ratelimit", "\"a\";r=0;t=5, \"b\";r=0;t=20, \"c\";r=9;t=99")]);
        assert_eq!(
            upstream_pause(StatusCode::OK, &two_spent, NOW),
            Some(Duration::from_secs(20))
        );
        let none_spent = headers(&[("ratelimit", "\"a\";r=1;t=5, \"b\";r=2;t=20")]);
        assert_eq!(upstream_pause(StatusCode::OK, &none_spent, NOW), None);
        // A malformed member is ignored, the others still count.
        let half = headers(&[("ratelimit", "\"a\";r=x;t=5, \"b\";r=0;t=7")]);
        assert_eq!(
            upstream_pause(StatusCode::OK, &half, NOW),
            Some(Duration::from_secs(7))
        );
        let huge = headers(&[("ratelimit", "\"a\";r=0;t=99999999999999")]);
        assert_eq!(
            upstream_pause(StatusCode::OK, &huge, NOW),
            Some(crate::MAX_RETRY_AFTER)
        );
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
