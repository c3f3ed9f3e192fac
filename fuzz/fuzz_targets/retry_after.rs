//! `Retry-After` (RFC 9110 §10.2.3) as `tollgate_retry` reads it.
//!
//! Invariants: never panics; the delay is at most `MAX_RETRY_AFTER`; the
//! same input at the same time reads the same; only digits (after trimming)
//! always read as a delay, and a date in the past as zero.
#![no_main]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::HeaderValue;
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use tollgate_retry::{parse_retry_after, MAX_RETRY_AFTER};

#[derive(Arbitrary, Debug)]
struct Input {
    /// Seconds since the epoch for "now" (any u32: 1970 to 2106).
    now: u32,
    value: Vec<u8>,
}

fuzz_target!(|input: Input| {
    let Ok(value) = HeaderValue::from_bytes(&input.value) else {
        return;
    };
    let now = UNIX_EPOCH + Duration::from_secs(u64::from(input.now));
    let got = parse_retry_after(&value, now);
    if let Some(d) = got {
        assert!(d <= MAX_RETRY_AFTER, "{d:?} over the cap for {value:?}");
    }
    assert_eq!(got, parse_retry_after(&value, now), "not deterministic");
    if let Ok(text) = value.to_str() {
        let t = text.trim();
        if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
            assert!(got.is_some(), "digits {t:?} not read as a delay");
        }
    }
    // Far in the future every date is in the past: zero, never negative.
    let later = SystemTime::UNIX_EPOCH + Duration::from_secs(1 << 40);
    if let Some(d) = parse_retry_after(&value, later) {
        let digits = value
            .to_str()
            .map(|t| t.trim().bytes().all(|b| b.is_ascii_digit()))
            .unwrap_or(false);
        assert!(
            digits || d.is_zero(),
            "a date after 2^40 s: {value:?} gave {d:?}"
        );
    }
});
