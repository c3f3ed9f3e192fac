//! What a cached response is filed under: the normalized URI, the method,
//! an identity of the request's credentials, and the `Vary` headers.

use http::{HeaderMap, HeaderName, HeaderValue, Request, Uri};
use tollgate_core::{Credential, Partition};

/// The URI as a cache key: scheme and host lowercased, an empty path as
/// `/`, query parameters sorted by name (values of one name keep their
/// order, which may matter to the API).
///
/// ```
/// let uri = "HTTP://API.Example.com?b=2&a=1&b=1".parse().unwrap();
/// assert_eq!(tollgate_cache::normalize_uri(&uri), "http://api.example.com/?a=1&b=2&b=1");
/// ```
pub fn normalize_uri(uri: &Uri) -> String {
    let query = uri.query().filter(|q| !q.is_empty());
    let mut out = String::with_capacity(
        uri.authority().map_or(0, |a| a.as_str().len())
            + uri.path().len()
            + query.map_or(0, str::len)
            + 10,
    );
    if let Some(scheme) = uri.scheme_str() {
        out.push_str(scheme);
        out.push_str("://");
    }
    if let Some(authority) = uri.authority() {
        // Userinfo is kept as written (a password's case matters); the host
        // is lowercased and the scheme's default port dropped, so
        // `API.test:80` and `api.test` name one resource.
        let text = authority.as_str();
        let (userinfo, hostport) = match text.rfind('@') {
            Some(at) => (&text[..=at], &text[at + 1..]),
            None => ("", text),
        };
        out.push_str(userinfo);
        let default_port = match uri.scheme_str() {
            Some("http") => Some("80"),
            Some("https") => Some("443"),
            _ => None,
        };
        let hostport = match (hostport.rsplit_once(':'), default_port) {
            (Some((host, port)), Some(default)) if port == default && !port.contains(']') => host,
            _ => hostport,
        };
        let start = out.len();
        out.push_str(hostport);
        out[start..].make_ascii_lowercase();
    }
    let path = uri.path();
    out.push_str(if path.is_empty() { "/" } else { path });
    if let Some(query) = query {
        out.push('?');
        fn name(pair: &str) -> &str {
            pair.split('=').next().unwrap_or("")
        }
        let mut pairs: Vec<&str> = query.split('&').filter(|p| !p.is_empty()).collect();
        if !pairs.is_sorted_by(|a, b| name(a) <= name(b)) {
            // Stable: the values of one name keep their order.
            pairs.sort_by(|a, b| name(a).cmp(name(b)));
        }
        for (i, pair) in pairs.iter().enumerate() {
            if i > 0 {
                out.push('&');
            }
            out.push_str(pair);
        }
    }
    out
}

/// Parts of a header name that mark it as carrying a credential.
const SECRET_WORDS: [&str; 10] = [
    "auth",
    "cookie",
    "credential",
    "key",
    "password",
    "secret",
    "session",
    "signature",
    "token",
    "jwt",
];

/// Whether a request header identifies a credential: `Authorization`,
/// `Proxy-Authorization`, `Cookie`, any header whose name contains one of
/// [`SECRET_WORDS`] (`X-Api-Key`, `X-Auth-Token`, `X-Session-Id`,
/// `X-Amz-Security-Token`, ...), or one of `extra`.
pub(crate) fn is_credential(name: &HeaderName, extra: &[HeaderName]) -> bool {
    let text = name.as_str(); // always lowercase
    SECRET_WORDS.iter().any(|word| text.contains(word)) || extra.contains(name)
}

/// Who a request speaks for: 0 for a request with no credential, else a
/// 128-bit keyed hash of its credential headers (names and values, in name
/// order, so the order they were set in does not matter), its `Credential`
/// and its [`Partition`]. Two requests share cached responses only if these
/// match. `any_header`: whether the request has any credential header.
pub(crate) fn identity<B>(request: &Request<B>, extra: &[HeaderName], any_header: bool) -> u128 {
    let headers = request.headers();
    let extensions = request.extensions();
    let credential = extensions.get::<Credential>();
    let partition = extensions.get::<Partition>();
    if !any_header && credential.is_none() && partition.is_none() {
        return 0;
    }
    let mut sent: Vec<(&HeaderName, &HeaderValue)> = if any_header {
        headers
            .iter()
            .filter(|(name, _)| is_credential(name, extra))
            .collect()
    } else {
        Vec::new()
    };
    // Stable: the values of one name keep their order.
    sent.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
    Partition::of(&(sent, credential, partition)).as_u128() | 1
}

/// The request headers a response's `Vary` names, with the values this
/// request had; `None` when the response varies on everything (`Vary: *`).
pub(crate) fn vary_of(response: &HeaderMap, request: &HeaderMap) -> Option<Vary> {
    let mut names: Vec<HeaderName> = Vec::new();
    for value in response.get_all(http::header::VARY) {
        let Ok(text) = value.to_str() else {
            return None;
        };
        for name in text.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if name == "*" {
                return None;
            }
            let Ok(name) = HeaderName::try_from(name) else {
                return None;
            };
            if !names.contains(&name) {
                names.push(name);
            }
        }
    }
    let pairs = names
        .into_iter()
        .map(|name| {
            let values = request.get_all(&name).iter().cloned().collect();
            (name, values)
        })
        .collect();
    Some(Vary(pairs))
}

/// The `Vary` headers of a stored response and the values its request had.
#[derive(Debug, Clone, Default)]
pub(crate) struct Vary(pub(crate) Vec<(HeaderName, Vec<HeaderValue>)>);

impl Vary {
    /// Whether `request` has the same values for every header named.
    pub(crate) fn matches(&self, request: &HeaderMap) -> bool {
        self.0
            .iter()
            .all(|(name, values)| request.get_all(name).iter().eq(values.iter()))
    }

    pub(crate) fn weight(&self) -> usize {
        self.0
            .iter()
            .map(|(n, vs)| n.as_str().len() + vs.iter().map(|v| v.len() + 16).sum::<usize>() + 48)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn uri(s: &str) -> Uri {
        s.parse().expect("uri")
    }

    #[test]
    fn normalizes_case_path_and_query_order() {
        assert_eq!(
            normalize_uri(&uri("http://H/p?b=1&a=2")),
            "http://h/p?a=2&b=1"
        );
        assert_eq!(normalize_uri(&uri("http://h")), "http://h/");
        assert_eq!(normalize_uri(&uri("http://h/?")), "http://h/");
        assert_eq!(normalize_uri(&uri("/p?id=2&id=1&a")), "/p?a&id=2&id=1");
        assert_ne!(
            normalize_uri(&uri("http://h/P")),
            normalize_uri(&uri("http://h/p"))
        );
    }

    #[test]
    fn identity_separates_credentials() {
        let names: [HeaderName; 0] = [];
        let req = |auth: Option<&str>| {
            let mut r = Request::get("/x").body(()).expect("request");
            if let Some(a) = auth {
                r.headers_mut()
                    .insert(http::header::AUTHORIZATION, a.parse().expect("value"));
            }
            r
        };
        assert_eq!(identity(&req(None), &names, false), 0);
        let a = identity(&req(Some("Bearer a")), &names, true);
        let b = identity(&req(Some("Bearer b")), &names, true);
        assert_ne!(a, 0);
        assert_ne!(a, b);
        assert_eq!(a, identity(&req(Some("Bearer a")), &names, true));
        let mut with_ext = req(None);
        with_ext
            .extensions_mut()
            .insert(Credential::bearer("a").expect("valid"));
        assert_ne!(identity(&with_ext, &names, false), 0);
        let mut tenant = req(None);
        tenant.extensions_mut().insert(Partition::of("t1"));
        assert_ne!(
            identity(&tenant, &names, false),
            identity(&with_ext, &names, false)
        );
    }

    #[test]
    fn vary_star_never_matches_and_names_compare_values() {
        let mut res = HeaderMap::new();
        res.insert(http::header::VARY, "*".parse().expect("value"));
        assert!(vary_of(&res, &HeaderMap::new()).is_none());
        res.insert(
            http::header::VARY,
            "Accept-Language, accept".parse().expect("value"),
        );
        let mut req = HeaderMap::new();
        req.insert("accept-language", "fr".parse().expect("value"));
        let vary = vary_of(&res, &req).expect("vary");
        assert!(vary.matches(&req));
        let mut other = req.clone();
        other.insert("accept-language", "de".parse().expect("value"));
        assert!(!vary.matches(&other));
        other.remove("accept-language");
        assert!(!vary.matches(&other));
    }

    proptest! {
        #[test]
        fn query_order_does_not_change_the_key(mut pairs in proptest::collection::vec(("[a-e]{1,2}", "[0-9]{0,2}"), 0..6)) {
            // Distinct names: their order must not matter.
            pairs.sort_by(|a, b| a.0.cmp(&b.0));
            pairs.dedup_by(|a, b| a.0 == b.0);
            let forward: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let mut backward = forward.clone();
            backward.reverse();
            let a = normalize_uri(&uri(&format!("http://h/p?{}", forward.join("&"))));
            let b = normalize_uri(&uri(&format!("http://h/p?{}", backward.join("&"))));
            prop_assert_eq!(a, b);
        }
    }
}
