//! Whether and how long to keep a response: fixed TTL, or HTTP's rules
//! through `http-cache-semantics`.

use std::time::{Duration, SystemTime};

use http::header::{CACHE_CONTROL, EXPIRES};
use http::{HeaderMap, Method, Request, StatusCode, Uri};
use http_cache_semantics::{CacheOptions, CachePolicy};

/// How long a stored response stays fresh.
///
/// Either way, what may be stored at all is decided by the same safety
/// rules, which a TTL never overrides:
///
/// - only final statuses, never `206` or `304` as a full response;
/// - never `no-store`, on the request or the response;
/// - never a response with `Set-Cookie`: replayed, it would hand one
///   client's cookie to another (or a stale one back to its owner);
/// - `private` (with or without field names) only for a request
///   partitioned to one credential (see [`CacheLayer`](crate::CacheLayer):
///   the cache is shared by every client and task using the layer, so a
///   request with no credential is answered as by a shared cache);
/// - `no-cache` (with or without field names) is revalidated before every
///   reuse, so it is kept only with a validator, and never served stale;
///   nor is `must-revalidate` (or, for a shared entry, `proxy-revalidate`
///   or `s-maxage`) once stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// The configured TTL, whatever the server says about freshness
    /// (`max-age`, `Expires`). What most simple API clients do.
    Fixed(Duration),
    /// HTTP's rules (RFC 9111, through `http-cache-semantics`), as a shared
    /// cache for requests without a credential (`s-maxage` counts) and as a
    /// private cache for a request partitioned to one: `max-age`, then
    /// `Expires` − `Date`, then a heuristic from `Last-Modified`;
    /// `no-cache` means revalidate on every reuse. A response that says
    /// nothing about freshness is kept for `default_ttl` if one is set,
    /// else not at all (unless it can be revalidated).
    Http {
        /// For responses without any freshness information.
        default_ttl: Option<Duration>,
    },
}

/// The longest freshness honoured: 2^31 seconds (RFC 9111 §1.2.2).
pub const MAX_FRESHNESS: Duration = Duration::from_secs(1 << 31);

/// What to do with a response that may be stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Decision {
    pub(crate) ttl: Duration,
    pub(crate) must_revalidate: bool,
    /// Once stale, never served without revalidation, even when the
    /// upstream fails: `no-cache`, `must-revalidate`, and for a shared entry
    /// `proxy-revalidate` or `s-maxage` (RFC 9111 §5.2.2.2, §5.2.2.8,
    /// §5.2.2.10).
    pub(crate) no_stale: bool,
}

/// The directives of the `Cache-Control` headers, names lowercased.
pub(crate) fn directives(
    headers: &HeaderMap,
) -> impl Iterator<Item = (String, Option<String>)> + '_ {
    // Lossy, not strict: a value with one non-ASCII byte (a quoted
    // extension) must not hide the `private` or `no-store` beside it.
    headers.get_all(CACHE_CONTROL).iter().flat_map(|v| {
        String::from_utf8_lossy(v.as_bytes())
            .split(',')
            .filter_map(directive)
            .collect::<Vec<_>>()
    })
}

/// One directive, its name lowercased and its value unquoted.
fn directive(text: &str) -> Option<(String, Option<String>)> {
    let d = text.trim();
    if d.is_empty() {
        return None;
    }
    Some(match d.split_once('=') {
        Some((name, value)) => (
            name.trim().to_ascii_lowercase(),
            Some(value.trim().trim_matches('"').to_owned()),
        ),
        None => (d.to_ascii_lowercase(), None),
    })
}

pub(crate) fn has_directive(headers: &HeaderMap, name: &str) -> bool {
    headers.contains_key(CACHE_CONTROL) && directives(headers).any(|(n, _)| n == name)
}

/// `max-age` as a duration, clamped to [`MAX_FRESHNESS`]: a value too large
/// for any integer type is 2^31 s, not an error (RFC 9111 §1.2.2).
fn max_age(headers: &HeaderMap) -> Option<Duration> {
    let (_, value) = directives(headers).find(|(n, _)| n == "max-age")?;
    let value = value?;
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs = value.parse::<u64>().unwrap_or(u64::MAX);
    Some(Duration::from_secs(secs).min(MAX_FRESHNESS))
}

/// Whether `response` to `request` may be stored, and for how long.
/// `shared`: the entry would serve every request without a credential (the
/// request is not partitioned to one).
#[allow(
    clippy::too_many_arguments,
    reason = "one call site, all inputs of one decision"
)]
pub(crate) fn decide(
    freshness: Freshness,
    override_ttl: Option<Duration>,
    shared: bool,
    method: &Method,
    uri: &Uri,
    request: &HeaderMap,
    status: StatusCode,
    response: &HeaderMap,
) -> Option<Decision> {
    if status.is_informational()
        || status == StatusCode::PARTIAL_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return None;
    }
    if has_directive(response, "no-store") || has_directive(request, "no-store") {
        return None;
    }
    if response.contains_key(http::header::SET_COOKIE) {
        return None;
    }
    if shared && has_directive(response, "private") {
        return None;
    }
    let must_revalidate = has_directive(response, "no-cache");
    // `no-cache` wants a *successful* validation before reuse: a failed
    // one is no licence to serve it stale.
    let no_stale = must_revalidate
        || has_directive(response, "must-revalidate")
        || (shared
            && (has_directive(response, "proxy-revalidate")
                || has_directive(response, "s-maxage")));
    let fixed = match (override_ttl, freshness) {
        (Some(ttl), _) | (None, Freshness::Fixed(ttl)) => Some(ttl),
        (None, Freshness::Http { .. }) => None,
    };
    if let Some(ttl) = fixed {
        return Some(Decision {
            ttl: ttl.min(MAX_FRESHNESS),
            must_revalidate,
            no_stale,
        });
    }
    let Freshness::Http { default_ttl } = freshness else {
        return None;
    };

    let mut req = Request::new(());
    *req.method_mut() = method.clone();
    *req.uri_mut() = uri.clone();
    *req.headers_mut() = request.clone();
    let mut res = http::Response::new(());
    *res.status_mut() = status;
    *res.headers_mut() = response.clone();
    let options = CacheOptions {
        shared,
        ..CacheOptions::default()
    };
    let now = SystemTime::now();
    let policy = CachePolicy::new_options(&req, &res, now, options);
    let explicit = max_age(response);
    let said_something = explicit.is_some()
        || must_revalidate
        || response.contains_key(EXPIRES)
        || response.contains_key(http::header::LAST_MODIFIED);
    if !policy.is_storable() && (default_ttl.is_none() || said_something) {
        return None;
    }
    let mut ttl = policy.time_to_live(now);
    if ttl.is_zero() {
        if let Some(max) = explicit.filter(|m| *m >= MAX_FRESHNESS) {
            // http-cache-semantics reads an overlong max-age as 0.
            ttl = max;
        }
    }
    if !said_something {
        if let Some(default) = default_ttl {
            ttl = default;
        }
    }
    Some(Decision {
        ttl: ttl.min(MAX_FRESHNESS),
        must_revalidate,
        no_stale,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const HTTP: Freshness = Freshness::Http { default_ttl: None };

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::try_from(*k).expect("name"),
                v.parse().expect("value"),
            );
        }
        h
    }

    fn http_decision(response: &[(&str, &str)]) -> Option<Decision> {
        decide(
            HTTP,
            None,
            true,
            &Method::GET,
            &"http://h/x".parse().expect("uri"),
            &HeaderMap::new(),
            StatusCode::OK,
            &headers(response),
        )
    }

    #[test]
    fn max_age_sets_the_ttl() {
        let d = http_decision(&[("cache-control", "max-age=60")]).expect("storable");
        assert_eq!(d.ttl, Duration::from_secs(60));
        assert!(!d.must_revalidate);
        let d = http_decision(&[("cache-control", "max-age=60"), ("age", "20")]).expect("storable");
        assert_eq!(d.ttl, Duration::from_secs(40));
    }

    #[test]
    fn no_store_is_never_stored_and_no_cache_revalidates() {
        assert_eq!(
            http_decision(&[("cache-control", "no-store, max-age=60")]),
            None
        );
        let fixed = decide(
            Freshness::Fixed(Duration::from_secs(5)),
            None,
            true,
            &Method::GET,
            &"http://h/x".parse().expect("uri"),
            &HeaderMap::new(),
            StatusCode::OK,
            &headers(&[("cache-control", "no-store")]),
        );
        assert_eq!(fixed, None, "fixed TTL honours no-store too");
        let d =
            http_decision(&[("cache-control", "no-cache"), ("etag", "\"v1\"")]).expect("storable");
        assert!(d.must_revalidate);
    }

    #[test]
    fn expires_is_read_and_zero_is_expired() {
        let now = SystemTime::now();
        let date = httpdate::fmt_http_date(now);
        let later = httpdate::fmt_http_date(now + Duration::from_secs(120));
        let d = http_decision(&[("date", &date), ("expires", &later)]).expect("storable");
        assert!(
            d.ttl > Duration::from_secs(115) && d.ttl <= Duration::from_secs(120),
            "{d:?}"
        );
        let d = http_decision(&[("date", &date), ("expires", "0")]);
        assert!(d.is_none_or(|d| d.ttl.is_zero()), "{d:?}");
    }

    #[test]
    fn huge_max_age_clamps_to_2_pow_31() {
        let d = http_decision(&[("cache-control", "max-age=99999999999999999999999")])
            .expect("storable");
        assert_eq!(d.ttl, MAX_FRESHNESS);
    }

    #[test]
    fn silence_uses_the_default_ttl_when_set() {
        assert_eq!(http_decision(&[]).map(|d| d.ttl), Some(Duration::ZERO));
        let d = decide(
            Freshness::Http {
                default_ttl: Some(Duration::from_secs(30)),
            },
            None,
            true,
            &Method::GET,
            &"http://h/x".parse().expect("uri"),
            &HeaderMap::new(),
            StatusCode::OK,
            &HeaderMap::new(),
        );
        assert_eq!(d.map(|d| d.ttl), Some(Duration::from_secs(30)));
    }

    #[test]
    fn partial_not_modified_and_informational_are_never_stored() {
        for status in [
            StatusCode::PARTIAL_CONTENT,
            StatusCode::NOT_MODIFIED,
            StatusCode::CONTINUE,
        ] {
            let d = decide(
                Freshness::Fixed(Duration::from_secs(5)),
                None,
                true,
                &Method::GET,
                &"http://h/x".parse().expect("uri"),
                &HeaderMap::new(),
                status,
                &HeaderMap::new(),
            );
            assert_eq!(d, None);
        }
    }

    proptest! {
        #[test]
        fn hostile_cache_headers_never_panic(cc in "\\PC{0,60}", expires in "\\PC{0,40}", age in "\\PC{0,20}", shared in any::<bool>()) {
            let mut h = HeaderMap::new();
            for (name, value) in [("cache-control", &cc), ("expires", &expires), ("age", &age)] {
                if let Ok(v) = http::HeaderValue::from_str(value) {
                    h.insert(http::HeaderName::from_static(name), v);
                }
            }
            if let Some(d) = decide(HTTP, None, shared, &Method::GET, &"http://h/x".parse().expect("uri"), &HeaderMap::new(), StatusCode::OK, &h) {
                prop_assert!(d.ttl <= MAX_FRESHNESS);
            }
        }
    }
}
