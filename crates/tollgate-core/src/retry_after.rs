//! Parsing `Retry-After` (RFC 9110 §10.2.3).

use std::time::{Duration, SystemTime};

use http::HeaderValue;

/// The longest delay a `Retry-After` value is taken to mean: 2³¹ − 1
/// seconds, as RFC 9111 §1.2.2 clamps delta-seconds. Larger values are read
/// as this, never overflow.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(i32::MAX as u64);

/// Reads a `Retry-After` value as a delay from `now`.
///
/// Both forms are understood: delay-seconds (`120`) and an HTTP-date
/// (`Wed, 21 Oct 2015 07:28:00 GMT`). A date in the past means no delay.
/// Anything else (negative numbers, fractions, garbage, non-ASCII) is
/// `None`, and callers fall back to their own backoff. Never panics; values
/// are clamped to [`MAX_RETRY_AFTER`].
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use http::HeaderValue;
/// use tollgate_core::parse_retry_after;
///
/// let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_400);
/// assert_eq!(parse_retry_after(&HeaderValue::from_static("120"), now), Some(Duration::from_secs(120)));
/// let date = HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT");
/// assert_eq!(parse_retry_after(&date, now), Some(Duration::from_secs(80)));
/// assert_eq!(parse_retry_after(&HeaderValue::from_static("soon"), now), None);
/// ```
pub fn parse_retry_after(value: &HeaderValue, now: SystemTime) -> Option<Duration> {
    let text = value.to_str().ok()?.trim();
    if text.is_empty() {
        return None;
    }
    if text.bytes().all(|b| b.is_ascii_digit()) {
        // Only digits: a number too large for u64 is still "very long".
        let secs = text.parse::<u64>().unwrap_or(u64::MAX);
        return Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER));
    }
    let at = httpdate::parse_http_date(text).ok()?;
    Some(
        at.duration_since(now)
            .unwrap_or(Duration::ZERO)
            .min(MAX_RETRY_AFTER),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn parse(s: &str) -> Option<Duration> {
        parse_retry_after(
            &HeaderValue::from_str(s).expect("valid header"),
            at(1_445_412_400),
        )
    }

    #[test]
    fn delay_seconds() {
        assert_eq!(parse("0"), Some(Duration::ZERO));
        assert_eq!(parse(" 7 "), Some(Duration::from_secs(7)));
        assert_eq!(parse("9999999999"), Some(MAX_RETRY_AFTER));
        assert_eq!(parse("99999999999999999999999999"), Some(MAX_RETRY_AFTER));
    }

    #[test]
    fn http_dates_future_past_and_obsolete_forms() {
        assert_eq!(
            parse("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::from_secs(80))
        );
        assert_eq!(parse("Wed, 21 Oct 2015 07:00:00 GMT"), Some(Duration::ZERO));
        // RFC 850 and asctime forms are HTTP-dates too.
        assert_eq!(
            parse("Wednesday, 21-Oct-15 07:28:00 GMT"),
            Some(Duration::from_secs(80))
        );
        assert_eq!(
            parse("Wed Oct 21 07:28:00 2015"),
            Some(Duration::from_secs(80))
        );
    }

    #[test]
    fn invalid_values_are_none() {
        for bad in [
            "",
            "-1",
            "1.5",
            "+3",
            "soon",
            "0x10",
            "Wed, 32 Oct 2015 07:28:00 GMT",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
        let opaque = HeaderValue::from_bytes(b"\xff\xfe").expect("opaque bytes are a valid value");
        assert_eq!(parse_retry_after(&opaque, at(0)), None);
    }

    proptest! {
        #[test]
        fn never_panics_and_stays_capped(bytes in proptest::collection::vec(any::<u8>(), 0..64), now in 0u64..=u64::from(u32::MAX)) {
            if let Ok(value) = HeaderValue::from_bytes(&bytes) {
                if let Some(d) = parse_retry_after(&value, at(now)) {
                    prop_assert!(d <= MAX_RETRY_AFTER);
                }
            }
        }

        #[test]
        fn any_digit_string_is_its_value_or_the_cap(n in any::<u64>()) {
            let d = parse(&n.to_string()).expect("digits parse");
            prop_assert_eq!(d, Duration::from_secs(n).min(MAX_RETRY_AFTER));
        }
    }
}
