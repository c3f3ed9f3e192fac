//! The base URL, path joining and path parameters.
//!
//! Joining is string work on a base that was validated once, so the hot path
//! neither re-parses the base nor allocates more than the final URI.

use std::borrow::Cow;
use std::fmt;

use http::Uri;
use percent_encoding::{utf8_percent_encode, AsciiSet, CONTROLS, NON_ALPHANUMERIC};

use crate::error::{Error, ErrorKind};

/// Bytes escaped in a literal path: what may not appear in a URI path.
const PATH: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'<')
    .add(b'>')
    .add(b'`')
    .add(b'^')
    .add(b'|')
    .add(b'\\');
/// Bytes escaped in a literal query.
const QUERY: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'<')
    .add(b'>')
    .add(b'`')
    .add(b'{')
    .add(b'}')
    .add(b'^')
    .add(b'|')
    .add(b'\\');
/// A path parameter keeps only unreserved characters: it is one segment, so
/// `/`, `?`, `#` and `%` are escaped and cannot change the request's target.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// A validated base URL: `origin` is `scheme://host[:port]`, `path` has no
/// trailing slash (empty for the root).
#[derive(Clone, Debug)]
pub(crate) struct BaseUrl {
    origin: String,
    path: String,
    /// The origin, parsed once: a joined URL parses only its path and query.
    scheme: http::uri::Scheme,
    authority: http::uri::Authority,
}

impl BaseUrl {
    pub(crate) fn parse(input: &str) -> Result<BaseUrl, Error> {
        BaseUrl::parse_named(input, "base URL")
    }

    /// As [`parse`](Self::parse), naming the URL `what` in errors.
    fn parse_named(input: &str, what: &str) -> Result<BaseUrl, Error> {
        let bad = |why: &str| Error::new(ErrorKind::Builder, format!("{what} {why}"));
        let url = url::Url::parse(input)
            .map_err(|e| Error::new(ErrorKind::Builder, format!("{what} does not parse: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(bad("must use http or https"));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(bad("has no host"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(bad(
                "must not carry credentials (they would be sent and logged with every URL); \
                 use an auth layer instead",
            ));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(bad(
                "must not have a query or fragment; add query parameters per request",
            ));
        }
        let origin = url.origin().ascii_serialization();
        let path = url.path().trim_end_matches('/').to_owned();
        let parsed: Uri = origin
            .parse()
            .map_err(|_| bad("has an origin that does not parse as a URI"))?;
        let (Some(scheme), Some(authority)) =
            (parsed.scheme().cloned(), parsed.authority().cloned())
        else {
            return Err(bad("has no scheme or host"));
        };
        Ok(BaseUrl {
            origin,
            path,
            scheme,
            authority,
        })
    }

    /// Whether the base URL is `https`.
    #[cfg_attr(feature = "rustls", allow(dead_code))]
    pub(crate) fn is_https(&self) -> bool {
        self.scheme == http::uri::Scheme::HTTPS
    }

    /// The whole base URL as given (normalised, no trailing slash).
    pub(crate) fn as_str(&self) -> String {
        format!("{}{}", self.origin, self.path)
    }

    /// Joins a path (with optional query) under the base path, adds `extra`
    /// (an already encoded query string), and parses the result.
    ///
    /// `/posts/1` under `https://h/api/v1` is `https://h/api/v1/posts/1`. An
    /// absolute URL is accepted only for the base's own origin; `//host/..`
    /// and `.`/`..` segments are refused, so a path cannot leave the base.
    #[cfg(test)]
    pub(crate) fn join(&self, path: &str, extra_query: Option<&str>) -> Result<Uri, Error> {
        Origins {
            base: Some(self.clone()),
            allowed: Vec::new(),
        }
        .join(path, extra_query)
    }

    /// Joins a relative path (no fragment) under the base path.
    fn join_relative(&self, path: &str, extra_query: Option<&str>) -> Result<Uri, Error> {
        if path.starts_with("//") {
            return Err(Error::new(
                ErrorKind::InvalidUrl,
                "a path starting with `//` names another host; refused",
            ));
        }
        let mut url = String::with_capacity(
            self.path.len() + path.len() + extra_query.map_or(0, str::len) + 2,
        );
        url.push_str(&self.path);
        if !path.starts_with('/') && !path.starts_with('?') && !path.is_empty() {
            url.push('/');
        }
        self.finish(url, path, extra_query)
    }

    /// Appends `rest` (a path and query, escaped here) and `extra_query` to
    /// `url`, checks for dot segments and puts this origin in front.
    fn finish(&self, mut url: String, rest: &str, extra_query: Option<&str>) -> Result<Uri, Error> {
        let invalid = |why: String| Error::new(ErrorKind::InvalidUrl, why);
        let (p, q) = match find_byte(rest, b'?') {
            Some(i) => (&rest[..i], Some(&rest[i + 1..])),
            None => (rest, None),
        };
        if has_dot_segment(p) {
            return Err(invalid(format!(
                "`{}` contains a `.` or `..` segment; refused so a path cannot leave the base URL",
                redact(p)
            )));
        }
        push_escaped(&mut url, p, PATH, b"\"<>`^|\\");
        if url.is_empty() {
            url.push('/');
        }
        let mut sep = '?';
        if let Some(q) = q.filter(|q| !q.is_empty()) {
            url.push(sep);
            push_escaped(&mut url, q, QUERY, b"\"<>`^|\\{}");
            sep = '&';
        }
        if let Some(extra) = extra_query.filter(|q| !q.is_empty()) {
            url.push(sep);
            url.push_str(extra);
        }
        let path_and_query = http::uri::PathAndQuery::try_from(url)
            .map_err(|e| invalid(format!("the joined URL does not parse: {e}")))?;
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(self.authority.clone());
        parts.path_and_query = Some(path_and_query);
        Uri::from_parts(parts).map_err(|e| invalid(format!("the joined URL does not parse: {e}")))
    }
}

/// Where a client's requests may go: under its base URL (relative paths and
/// absolute URLs to its origin), and to the other origins allowed by
/// [`ClientBuilder::allow_origin`](crate::ClientBuilder::allow_origin) (absolute URLs).
///
/// A client without a base URL and without allowed origins takes an
/// absolute URL to any `http` or `https` origin; with allowed origins, only
/// to those. An absolute URL to another origin is an
/// [`ErrorKind::InvalidUrl`] error before anything is sent (the SSRF guard:
/// a path from user input cannot point the client elsewhere).
#[derive(Clone, Debug)]
pub(crate) struct Origins {
    pub(crate) base: Option<BaseUrl>,
    /// The other allowed origins, each a `BaseUrl` with an empty path.
    pub(crate) allowed: Vec<BaseUrl>,
}

impl Origins {
    /// The origins of a builder: a base URL (if any) and other origins
    /// (each an absolute `http`/`https` URL whose path is ignored).
    pub(crate) fn new(base: Option<&str>, allowed: &[String]) -> Result<Origins, Error> {
        let base = base.map(BaseUrl::parse).transpose()?;
        let mut list: Vec<BaseUrl> = Vec::with_capacity(allowed.len());
        for origin in allowed {
            let parsed = BaseUrl::parse_named(origin, "an allowed origin")?;
            let only = BaseUrl {
                path: String::new(),
                ..parsed
            };
            if !list.iter().any(|o| o.origin == only.origin) {
                list.push(only);
            }
        }
        Ok(Origins {
            base,
            allowed: list,
        })
    }

    /// The base URL as text (empty for a client without one).
    pub(crate) fn as_str(&self) -> String {
        self.base.as_ref().map(BaseUrl::as_str).unwrap_or_default()
    }

    /// The origins allowed besides the base URL's, as `scheme://host[:port]`.
    pub(crate) fn other_origins(&self) -> impl Iterator<Item = &str> {
        self.allowed.iter().map(|o| o.origin.as_str())
    }

    /// A path template as the absolute path it addresses (the base path in
    /// front), for the span's `url.template`; `None` for an absolute URL.
    pub(crate) fn template(&self, path: &str) -> Option<String> {
        if absolute_url(path).is_some() {
            return None;
        }
        let base = self.base.as_ref().map_or("", |b| b.path.as_str());
        let sep = if path.starts_with('/') { "" } else { "/" };
        Some(format!("{base}{sep}{path}"))
    }

    /// Whether any origin named is `https`.
    #[cfg_attr(feature = "rustls", allow(dead_code))]
    pub(crate) fn is_https(&self) -> bool {
        self.base.iter().chain(&self.allowed).any(BaseUrl::is_https)
    }

    /// Joins `path` as [`RequestBuilder`](crate::RequestBuilder) documents:
    /// a relative path under the base URL, an absolute URL to an allowed
    /// origin as it is.
    pub(crate) fn join(&self, path: &str, extra_query: Option<&str>) -> Result<Uri, Error> {
        // Fragments are never sent.
        let path = find_byte(path, b'#').map_or(path, |i| &path[..i]);
        let Some(abs) = absolute_url(path) else {
            return match &self.base {
                Some(base) => base.join_relative(path, extra_query),
                None => Err(Error::new(
                    ErrorKind::InvalidUrl,
                    format!(
                        "`{}` is not an absolute URL, and the client has no base URL to join it to",
                        redact(path)
                    ),
                )),
            };
        };
        let invalid = |why: String| Error::new(ErrorKind::InvalidUrl, why);
        let parsed = url::Url::parse(abs)
            .map_err(|e| invalid(format!("`{}` does not parse: {e}", redact(abs))))?;
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(invalid(
                "an absolute URL must not carry credentials (they would be sent and logged); \
                 use an auth layer or `RequestBuilder::basic_auth`"
                    .to_owned(),
            ));
        }
        let origin = parsed.origin().ascii_serialization();
        let any = self.base.is_none() && self.allowed.is_empty();
        let found = self
            .base
            .iter()
            .chain(&self.allowed)
            .find(|o| o.origin == origin);
        let fresh;
        let target = match found {
            Some(target) => target,
            None if any => {
                if !matches!(parsed.scheme(), "http" | "https")
                    || parsed.host_str().is_none_or(str::is_empty)
                {
                    return Err(invalid(format!(
                        "`{}` is not an http or https URL with a host",
                        redact(abs)
                    )));
                }
                fresh = BaseUrl::parse_named(&origin, "the URL").map_err(|_| {
                    invalid(format!(
                        "`{}` has an origin that does not parse",
                        redact(abs)
                    ))
                })?;
                &fresh
            }
            None => {
                return Err(invalid(format!(
                    "`{}` is an absolute URL to an origin the client does not allow ({}); \
                     refused (allow it with `ClientBuilder::allow_origin`)",
                    redact(abs),
                    self.base
                        .iter()
                        .chain(&self.allowed)
                        .map(|o| o.origin.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        };
        // The part after the origin, as the caller wrote it.
        let after_scheme = &abs[abs.find("//").map_or(0, |i| i + 2)..];
        let rest = after_scheme
            .find(['/', '?'])
            .map_or("", |i| &after_scheme[i..]);
        let url = String::with_capacity(rest.len() + extra_query.map_or(0, str::len) + 2);
        target.finish(url, rest, extra_query)
    }
}

/// The index of the first `byte` in `s`. Byte scanning: the paths here are
/// short, and `str`'s pattern searchers cost more to set up than to run.
fn find_byte(s: &str, byte: u8) -> Option<usize> {
    s.bytes().position(|b| b == byte)
}

/// Appends `part`, percent-encoding what `set` names. `extra` lists the
/// printable ASCII bytes in `set`; when `part` has none of them, nor a
/// control, space or non-ASCII byte, it is copied as it is.
fn push_escaped(url: &mut String, part: &str, set: &'static AsciiSet, extra: &[u8]) {
    if part
        .bytes()
        .all(|b| (0x21..0x7f).contains(&b) && !extra.contains(&b))
    {
        url.push_str(part);
    } else {
        url.extend(utf8_percent_encode(part, set));
    }
}

/// `Some(path)` when `path` is an absolute URL (`scheme://...`). Scans only
/// up to the first `/`, `?` or `:`.
fn absolute_url(path: &str) -> Option<&str> {
    let colon = path
        .find(['/', '?', ':'])
        .filter(|&i| path.as_bytes()[i] == b':')?;
    let scheme = &path.as_bytes()[..colon];
    let is_scheme = scheme.first().is_some_and(u8::is_ascii_alphabetic)
        && scheme
            .iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'-' | b'.'));
    (is_scheme && path[colon..].starts_with("://")).then_some(path)
}

/// Is any segment `.` or `..`, also when written as `%2e`?
fn has_dot_segment(path: &str) -> bool {
    // Most paths have neither byte; they need no splitting.
    path.bytes().any(|b| b == b'.' || b == b'%') && path.split('/').any(is_dot_segment)
}

/// Is this one segment `.` or `..`, each dot possibly written `%2e`/`%2E`?
pub(crate) fn is_dot_segment(segment: &str) -> bool {
    let mut rest = segment.as_bytes();
    let mut dots = 0;
    while let Some(&first) = rest.first() {
        if first == b'.' {
            rest = &rest[1..];
        } else if let [b'%', b'2', e, tail @ ..] = rest {
            if !e.eq_ignore_ascii_case(&b'e') {
                return false;
            }
            rest = tail;
        } else {
            return false;
        }
        dots += 1;
        if dots > 2 {
            return false;
        }
    }
    dots > 0
}

/// A path or URL shown in an error: without its query string.
/// A URL or path as errors and `Debug` show it: without its query, and
/// with everything after the scheme hidden when user information may be in
/// it (an `@` anywhere after `//`: a password with an unencoded `#`, `?` or
/// `/` would otherwise show through a narrower cut).
pub(crate) fn redact(s: &str) -> std::borrow::Cow<'_, str> {
    let authority = s
        .find("://")
        .map(|i| i + 3)
        .or_else(|| s.starts_with("//").then_some(2));
    if let Some(start) = authority {
        if s[start..].contains('@') {
            return format!("{}(user information hidden)", &s[..start]).into();
        }
    }
    s.split_once('?').map_or(s, |(p, _)| p).into()
}

/// Fills `{name}` placeholders in a path template with percent-encoded
/// values, each as exactly one segment.
///
/// # Errors
///
/// [`ErrorKind::InvalidRequest`] naming the parameter when a placeholder has
/// no value, a value is given for no placeholder, a value is empty, `.` or
/// `..` (also as `%2e`), or a brace is unbalanced.
pub(crate) fn fill_template(template: &str, params: &[(String, String)]) -> Result<String, Error> {
    let err = |why: String| Error::new(ErrorKind::InvalidRequest, why);
    let mut out = String::with_capacity(template.len() + 16);
    let mut used = vec![false; params.len()];
    let mut rest = template;
    while let Some(open) = rest.find(['{', '}']) {
        if rest.as_bytes()[open] == b'}' {
            return Err(err(format!(
                "unbalanced `}}` in path template `{}`",
                redact(template)
            )));
        }
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let close = after.find('}').ok_or_else(|| {
            err(format!(
                "unclosed `{{` in path template `{}`",
                redact(template)
            ))
        })?;
        let name = &after[..close];
        let index = params
            .iter()
            .position(|(n, _)| n == name)
            .ok_or_else(|| err(format!("missing path parameter `{name}`")))?;
        let value = &params[index].1;
        if value.is_empty() || is_dot_segment(value) {
            return Err(err(format!(
                "path parameter `{name}` is empty, `.` or `..`; refused so it cannot change the path"
            )));
        }
        used[index] = true;
        out.extend(utf8_percent_encode(value, SEGMENT));
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    if let Some(i) = used.iter().position(|u| !u) {
        return Err(err(format!(
            "path parameter `{}` has no `{{{}}}` in the path template",
            params[i].0, params[i].0
        )));
    }
    Ok(out)
}

/// Shows a URI without its query string (used by errors and `Debug`).
pub(crate) fn display_without_query(uri: &Uri) -> impl fmt::Display + '_ {
    struct NoQuery<'a>(&'a Uri);
    impl fmt::Display for NoQuery<'_> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            if let Some(scheme) = self.0.scheme_str() {
                write!(f, "{scheme}://")?;
            }
            if let Some(authority) = self.0.authority() {
                write!(f, "{authority}")?;
            }
            f.write_str(self.0.path())
        }
    }
    NoQuery(uri)
}

/// Shows a URI with the values of sensitive query parameters replaced by
/// `REDACTED` (for the `url.full` span field).
pub(crate) struct RedactedUri<'a> {
    pub(crate) uri: &'a Uri,
    pub(crate) sensitive: &'a [String],
}

impl fmt::Display for RedactedUri<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        display_without_query(self.uri).fmt(f)?;
        let Some(query) = self.uri.query() else {
            return Ok(());
        };
        for (i, pair) in query.split('&').enumerate() {
            f.write_str(if i == 0 { "?" } else { "&" })?;
            let (name, value) = pair
                .split_once('=')
                .map_or((pair, None), |(n, v)| (n, Some(v)));
            f.write_str(name)?;
            if let Some(value) = value {
                let decoded: Cow<'_, str> =
                    percent_encoding::percent_decode_str(name).decode_utf8_lossy();
                let secret = self
                    .sensitive
                    .iter()
                    .any(|s| s.eq_ignore_ascii_case(&decoded));
                write!(f, "={}", if secret { "REDACTED" } else { value })?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base(s: &str) -> BaseUrl {
        BaseUrl::parse(s).expect("valid base")
    }

    fn join(b: &str, p: &str) -> Result<String, ErrorKind> {
        base(b)
            .join(p, None)
            .map(|u| u.to_string())
            .map_err(|e| e.kind())
    }

    fn origins_join(base: Option<&str>, allowed: &[&str], p: &str) -> Result<String, ErrorKind> {
        let allowed: Vec<String> = allowed.iter().map(|s| (*s).to_owned()).collect();
        Origins::new(base, &allowed)
            .expect("valid origins")
            .join(p, None)
            .map(|u| u.to_string())
            .map_err(|e| e.kind())
    }

    #[test]
    fn allowed_origins_match_as_the_url_standard_serialises_them() {
        let allowed = ["https://files.example.com/ignored/path"];
        let join = |p| origins_join(Some("https://api.example.com/v1"), &allowed, p);
        // Case and the default port do not make another origin.
        assert_eq!(
            join("HTTPS://FILES.EXAMPLE.COM:443/a?b=1").as_deref(),
            Ok("https://files.example.com/a?b=1")
        );
        // An absolute URL is not joined under the base path.
        assert_eq!(
            join("https://api.example.com/x").as_deref(),
            Ok("https://api.example.com/x")
        );
        for refused in [
            "https://files.example.com.evil.net/",
            "http://files.example.com/",
            "https://files.example.com:8443/",
            "https://evil.net/?@files.example.com",
            "https://evil.net\\@files.example.com/",
        ] {
            assert_eq!(join(refused), Err(ErrorKind::InvalidUrl), "{refused}");
        }
        // A backslash is a path separator to the URL standard: the host is
        // the allowed one, and the request goes there, nowhere else.
        let odd = join("https://files.example.com\\@evil.net/").expect("its host is allowed");
        assert!(odd.starts_with("https://files.example.com/"), "{odd}");
        assert_eq!(
            join("https://u:p@files.example.com/"),
            Err(ErrorKind::InvalidUrl)
        );
    }

    #[test]
    fn without_a_base_only_absolute_urls_join() {
        assert_eq!(
            origins_join(None, &[], "http://127.0.0.1:8080/a b").as_deref(),
            Ok("http://127.0.0.1:8080/a%20b")
        );
        assert_eq!(origins_join(None, &[], "/a"), Err(ErrorKind::InvalidUrl));
        assert_eq!(origins_join(None, &[], "//h/a"), Err(ErrorKind::InvalidUrl));
        assert_eq!(
            origins_join(None, &[], "file:///etc/passwd"),
            Err(ErrorKind::InvalidUrl)
        );
        assert_eq!(
            origins_join(None, &[], "http://h/a/../b"),
            Err(ErrorKind::InvalidUrl)
        );
        assert_eq!(
            origins_join(None, &[], "http://[::1]:81/x").as_deref(),
            Ok("http://[::1]:81/x")
        );
    }

    #[test]
    fn paths_join_under_the_base_path() {
        assert_eq!(
            join("https://h/api/v1", "/posts/1"),
            Ok("https://h/api/v1/posts/1".into())
        );
        assert_eq!(
            join("https://h/api/v1/", "posts/1"),
            Ok("https://h/api/v1/posts/1".into())
        );
        assert_eq!(join("https://h", "/posts"), Ok("https://h/posts".into()));
        assert_eq!(join("https://h", ""), Ok("https://h/".into()));
        assert_eq!(join("https://h/api", ""), Ok("https://h/api".into()));
        assert_eq!(
            join("http://h:8080/a", "?x=1"),
            Ok("http://h:8080/a?x=1".into())
        );
        assert_eq!(join("https://h/a", "/b#frag"), Ok("https://h/a/b".into()));
    }

    #[test]
    fn the_copy_fast_path_agrees_with_the_encoder() {
        for part in [
            "/a/b",
            "/a b",
            "/x\"y",
            "/é",
            "/{x}",
            "/a|b",
            "/ok~._-!$&'()*+,;=:@",
        ] {
            let mut fast = String::new();
            push_escaped(&mut fast, part, PATH, b"\"<>`^|\\");
            assert_eq!(fast, utf8_percent_encode(part, PATH).to_string(), "{part}");
            let mut fast = String::new();
            push_escaped(&mut fast, part, QUERY, b"\"<>`^|\\{}");
            assert_eq!(fast, utf8_percent_encode(part, QUERY).to_string(), "{part}");
        }
    }

    #[test]
    fn unsafe_characters_are_escaped_not_rejected() {
        assert_eq!(
            join("https://h", "/search?q=a b"),
            Ok("https://h/search?q=a%20b".into())
        );
        assert_eq!(
            join("https://h", "/caf\u{e9}"),
            Ok("https://h/caf%C3%A9".into())
        );
    }

    #[test]
    fn other_origins_and_dot_segments_are_refused() {
        assert_eq!(
            join("https://h/api", "https://evil.test/x"),
            Err(ErrorKind::InvalidUrl)
        );
        assert_eq!(
            join("https://h/api", "//evil.test/x"),
            Err(ErrorKind::InvalidUrl)
        );
        assert_eq!(
            join("https://h/api", "http://h/x"),
            Err(ErrorKind::InvalidUrl)
        );
        assert_eq!(
            join("https://h/api", "/../admin"),
            Err(ErrorKind::InvalidUrl)
        );
        assert_eq!(
            join("https://h/api", "/a/%2E%2e/b"),
            Err(ErrorKind::InvalidUrl)
        );
        assert_eq!(join("https://h/api", "/./x"), Err(ErrorKind::InvalidUrl));
        // Same origin is fine, and keeps the caller's path verbatim.
        assert_eq!(
            join("https://h/api", "https://h/other?a=1"),
            Ok("https://h/other?a=1".into())
        );
        // A dotted file name is not a dot segment.
        assert_eq!(
            join("https://h", "/a/..b/.c"),
            Ok("https://h/a/..b/.c".into())
        );
    }

    #[test]
    fn bad_bases_are_builder_errors() {
        for b in [
            "ftp://h",
            "not a url",
            "https://user:pw@h",
            "https://h/?k=v",
            "/relative",
            "mailto:x@y",
        ] {
            let e = BaseUrl::parse(b).expect_err(b);
            assert_eq!(e.kind(), ErrorKind::Builder, "{b}");
            assert!(!e.to_string().contains("pw"));
        }
    }

    #[test]
    fn extra_query_is_appended_after_the_paths_own() {
        let u = base("https://h")
            .join("/p?a=1", Some("b=2&c=3"))
            .expect("join");
        assert_eq!(u.to_string(), "https://h/p?a=1&b=2&c=3");
        let u = base("https://h").join("/p", Some("b=2")).expect("join");
        assert_eq!(u.to_string(), "https://h/p?b=2");
    }

    fn params(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
            .collect()
    }

    #[test]
    fn path_parameters_are_one_encoded_segment() {
        let p = fill_template(
            "/users/{id}/posts/{post}",
            &params(&[("id", "a/b?c#d"), ("post", "7")]),
        );
        assert_eq!(p.expect("filled"), "/users/a%2Fb%3Fc%23d/posts/7");
        let p = fill_template("/f/{name}", &params(&[("name", "50% off..x")]));
        assert_eq!(p.expect("filled"), "/f/50%25%20off..x");
    }

    #[test]
    fn path_parameter_errors_name_the_parameter() {
        let e = fill_template("/users/{id}", &[]).expect_err("missing");
        assert!(e.to_string().contains("`id`"));
        for bad in ["..", ".", "", "%2e%2E"] {
            let e = fill_template("/u/{id}", &params(&[("id", bad)])).expect_err(bad);
            assert_eq!(e.kind(), ErrorKind::InvalidRequest);
        }
        assert!(fill_template("/u/{id}", &params(&[("id", "1"), ("x", "2")])).is_err());
        assert!(fill_template("/u/{id", &params(&[("id", "1")])).is_err());
        assert!(fill_template("/u/id}", &[]).is_err());
    }

    #[test]
    fn dot_segments_are_recognised_in_every_spelling() {
        for dot in [".", "..", "%2e", "%2E", "%2e%2E", ".%2e", "%2e."] {
            assert!(is_dot_segment(dot), "{dot}");
        }
        for not in ["", "...", "a", ".a", "..b", "%2", "%2f", "%2e%2e%2e", "%"] {
            assert!(!is_dot_segment(not), "{not}");
        }
        assert!(has_dot_segment("/a/%2E/b"));
        assert!(!has_dot_segment("/a/b.json"));
    }

    #[test]
    fn only_scheme_colon_slash_slash_is_absolute() {
        assert!(absolute_url("https://h/x").is_some());
        assert!(absolute_url("HTTP://h").is_some());
        assert!(absolute_url("/x?next=https://h").is_none());
        assert!(absolute_url("a:b").is_none());
        assert!(absolute_url("1http://h").is_none());
        assert!(absolute_url("//h/x").is_none());
    }

    #[test]
    fn redacted_uri_hides_sensitive_values_only() {
        let uri: Uri = "https://h/p?api_key=SECRET&page=2&Token=x"
            .parse()
            .expect("uri");
        let sensitive = vec!["api_key".to_owned(), "token".to_owned()];
        let shown = RedactedUri {
            uri: &uri,
            sensitive: &sensitive,
        }
        .to_string();
        assert_eq!(shown, "https://h/p?api_key=REDACTED&page=2&Token=REDACTED");
    }

    proptest::proptest! {
        #[test]
        fn any_parameter_value_stays_inside_its_segment(value in "\\PC{0,40}") {
            let filled = fill_template("/users/{id}/x", &[("id".to_owned(), value)]);
            if let Ok(path) = filled {
                let uri = base("https://h/api").join(&path, None).expect("encoded path always joins");
                let segs: Vec<&str> = uri.path().split('/').collect();
                proptest::prop_assert_eq!(segs.len(), 5, "{}", uri);
                proptest::prop_assert_eq!(segs[1], "api");
                proptest::prop_assert_eq!(segs[4], "x");
                proptest::prop_assert_eq!(uri.query(), None);
            }
        }

        #[test]
        fn joining_never_panics_and_never_leaves_the_origin(path in "\\PC{0,60}") {
            if let Ok(uri) = base("https://h.test/api").join(&path, None) {
                proptest::prop_assert_eq!(uri.host(), Some("h.test"));
                proptest::prop_assert_eq!(uri.scheme_str(), Some("https"));
            }
        }
    }
}
