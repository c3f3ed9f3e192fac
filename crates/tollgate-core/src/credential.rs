//! [`Credential`]: what the layer attaches, checked when it is made.

use std::fmt;

use base64::Engine as _;
use http::header::AUTHORIZATION;
use http::uri::PathAndQuery;
use http::{HeaderName, HeaderValue, Request, Uri};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

/// Characters left as they are in a query credential: RFC 3986's unreserved
/// set. Everything else is percent-encoded.
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// One credential: a header (bearer, basic, an API key under any name) or a
/// query parameter (an API key in the URL).
///
/// Every constructor checks its input: CR, LF, NUL and other bytes a header
/// cannot carry are an [`InvalidCredential`] naming the field, never showing
/// the value. Header values are marked sensitive, so HTTP/2's HPACK never
/// indexes them, and `Debug` prints a redaction.
///
/// A `Credential` in a request's extensions replaces the layer's own for that
/// request: a gateway puts the credential of the user it serves there.
///
/// ```
/// use tollgate_core::Credential;
///
/// let bearer = Credential::bearer("s3cret")?;
/// assert_eq!(format!("{bearer:?}"), r#"Credential { header: "authorization", value: "[redacted]" }"#);
/// assert!(Credential::bearer("s3cret\r\nx-admin: 1").is_err());
/// assert!(Credential::basic("user:name", "pw").is_err());
/// let key = Credential::api_key_query("api_key", "k&y")?;
/// assert_eq!(format!("{key:?}"), r#"Credential { query: "api_key", value: "[redacted]" }"#);
/// # Ok::<(), tollgate_core::InvalidCredential>(())
/// ```
// `Hash` lets a cache partition its entries by credential without keeping
// the secret in its keys; hashing reveals nothing `Debug` would not.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Credential {
    kind: Kind,
}

#[derive(Clone, PartialEq, Eq, Hash)]
enum Kind {
    Header {
        name: HeaderName,
        value: HeaderValue,
    },
    Query {
        /// The parameter's name, percent-encoded.
        name: String,
        /// `name=value`, percent-encoded, ready to append.
        pair: String,
    },
}

/// A credential that cannot be sent as given.
///
/// It names the field and the rule broken, never the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid credential: the {field} {reason}")]
pub struct InvalidCredential {
    field: &'static str,
    reason: &'static str,
}

impl InvalidCredential {
    /// The error for `field` (what it is, never its value) and the rule
    /// it broke, for credential sources that check their own input.
    pub fn new(field: &'static str, reason: &'static str) -> Self {
        InvalidCredential { field, reason }
    }

    /// Which field was refused (`"bearer token"`, `"header name"`, ...).
    pub fn field(&self) -> &'static str {
        self.field
    }
}

/// Refuses control characters (CR, LF and NUL among them) and empty values.
fn check_text(field: &'static str, value: &str) -> Result<(), InvalidCredential> {
    if value.is_empty() {
        return Err(InvalidCredential::new(field, "is empty"));
    }
    if value.chars().any(char::is_control) {
        return Err(InvalidCredential::new(
            field,
            "contains a control character (CR, LF, NUL, ...)",
        ));
    }
    Ok(())
}

fn sensitive(field: &'static str, value: &str) -> Result<HeaderValue, InvalidCredential> {
    check_text(field, value)?;
    let mut value = HeaderValue::from_str(value)
        .map_err(|_| InvalidCredential::new(field, "contains a byte not allowed in a header"))?;
    value.set_sensitive(true);
    Ok(value)
}

impl Credential {
    /// `Authorization: Bearer <token>` (RFC 6750).
    ///
    /// # Errors
    ///
    /// An empty token, or one with a control character, a space or a byte a
    /// header cannot carry.
    pub fn bearer(token: impl AsRef<str>) -> Result<Credential, InvalidCredential> {
        let token = token.as_ref();
        check_text("bearer token", token)?;
        if token.contains(' ') {
            return Err(InvalidCredential::new("bearer token", "contains a space"));
        }
        let value = sensitive("bearer token", &format!("Bearer {token}"))?;
        Ok(Credential::from_header(AUTHORIZATION, value))
    }

    /// `Authorization: Basic <base64(user:password)>` (RFC 7617).
    ///
    /// # Errors
    ///
    /// An empty user, a user with a `:`, or either part with a control
    /// character.
    pub fn basic(
        user: impl AsRef<str>,
        password: impl AsRef<str>,
    ) -> Result<Credential, InvalidCredential> {
        let (user, password) = (user.as_ref(), password.as_ref());
        check_text("basic auth user", user)?;
        if user.contains(':') {
            return Err(InvalidCredential::new("basic auth user", "contains a ':'"));
        }
        if password.chars().any(char::is_control) {
            return Err(InvalidCredential::new(
                "basic auth password",
                "contains a control character (CR, LF, NUL, ...)",
            ));
        }
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        let value = sensitive("basic auth", &format!("Basic {encoded}"))?;
        Ok(Credential::from_header(AUTHORIZATION, value))
    }

    /// Any header, such as `x-api-key: <key>`.
    ///
    /// # Errors
    ///
    /// An invalid header name, or a value that is empty or has a byte a
    /// header cannot carry.
    pub fn api_key_header(
        name: impl AsRef<str>,
        value: impl AsRef<str>,
    ) -> Result<Credential, InvalidCredential> {
        let name = HeaderName::try_from(name.as_ref())
            .map_err(|_| InvalidCredential::new("header name", "is not a valid header name"))?;
        let value = sensitive("API key", value.as_ref())?;
        Ok(Credential::from_header(name, value))
    }

    /// A header already made; it is marked sensitive here.
    pub fn from_header(name: HeaderName, mut value: HeaderValue) -> Credential {
        value.set_sensitive(true);
        Credential {
            kind: Kind::Header { name, value },
        }
    }

    /// A query parameter, such as `?api_key=<key>`: both parts are
    /// percent-encoded. The facade redacts the parameter in its tracing.
    ///
    /// Prefer a header where the API allows it: URLs end up in server logs.
    ///
    /// # Errors
    ///
    /// An empty name or value, or one with a control character.
    pub fn api_key_query(
        name: impl AsRef<str>,
        value: impl AsRef<str>,
    ) -> Result<Credential, InvalidCredential> {
        let (name, value) = (name.as_ref(), value.as_ref());
        check_text("query parameter name", name)?;
        check_text("API key", value)?;
        let name = utf8_percent_encode(name, QUERY_VALUE).to_string();
        let pair = format!("{name}={}", utf8_percent_encode(value, QUERY_VALUE));
        Ok(Credential {
            kind: Kind::Query { name, pair },
        })
    }

    /// The header this credential sets, if it is a header.
    pub fn header_name(&self) -> Option<&HeaderName> {
        match &self.kind {
            Kind::Header { name, .. } => Some(name),
            Kind::Query { .. } => None,
        }
    }

    /// The query parameter this credential sets (percent-encoded), if it is
    /// one.
    pub fn query_name(&self) -> Option<&str> {
        match &self.kind {
            Kind::Header { .. } => None,
            Kind::Query { name, .. } => Some(name),
        }
    }

    /// Whether `request` already carries this credential's header or query
    /// parameter (with any value).
    pub fn is_present<B>(&self, request: &Request<B>) -> bool {
        match &self.kind {
            Kind::Header { name, .. } => request.headers().contains_key(name),
            Kind::Query { name, .. } => request.uri().query().is_some_and(|q| {
                q.split('&')
                    .any(|p| p.split('=').next() == Some(name.as_str()))
            }),
        }
    }

    /// Puts the credential on `request`, replacing a value already there
    /// only if `overwrite`. Returns whether it was put on.
    pub fn apply<B>(&self, request: &mut Request<B>, overwrite: bool) -> bool {
        match &self.kind {
            // One lookup of the header, not one to check and one to insert.
            Kind::Header { name, value } => match request.headers_mut().entry(name.clone()) {
                http::header::Entry::Occupied(_) if !overwrite => false,
                http::header::Entry::Occupied(mut occupied) => {
                    occupied.insert(value.clone());
                    true
                }
                http::header::Entry::Vacant(vacant) => {
                    vacant.insert(value.clone());
                    true
                }
            },
            Kind::Query { .. } if !overwrite && self.is_present(request) => false,
            Kind::Query { name, pair } => {
                let uri = with_query_pair(request.uri(), name, pair);
                match uri {
                    Some(uri) => {
                        *request.uri_mut() = uri;
                        true
                    }
                    None => false,
                }
            }
        }
    }
}

/// `uri` with `pair` in its query, in place of any parameter called `name`.
fn with_query_pair(uri: &Uri, name: &str, pair: &str) -> Option<Uri> {
    let path = uri.path();
    let mut query = String::with_capacity(path.len() + pair.len() + 16);
    query.push_str(path);
    query.push('?');
    if let Some(q) = uri.query() {
        for p in q.split('&').filter(|p| !p.is_empty()) {
            if p.split('=').next() != Some(name) {
                query.push_str(p);
                query.push('&');
            }
        }
    }
    query.push_str(pair);
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(PathAndQuery::try_from(query).ok()?);
    Uri::from_parts(parts).ok()
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Credential");
        match &self.kind {
            Kind::Header { name, .. } => d.field("header", &name.as_str()),
            Kind::Query { name, .. } => d.field("query", name),
        };
        d.field("value", &"[redacted]").finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(uri: &str) -> Request<()> {
        Request::get(uri).body(()).expect("request")
    }

    #[test]
    fn bearer_is_sensitive_and_applied() {
        let c = Credential::bearer("abc.def").expect("valid");
        let mut req = get("http://h/x");
        assert!(c.apply(&mut req, false));
        let v = &req.headers()[AUTHORIZATION];
        assert_eq!(v, "Bearer abc.def");
        assert!(v.is_sensitive());
    }

    #[test]
    fn explicit_header_kept_unless_overwrite() {
        let c = Credential::bearer("mine").expect("valid");
        let mut req = get("http://h/x");
        req.headers_mut()
            .insert(AUTHORIZATION, HeaderValue::from_static("Bearer theirs"));
        assert!(!c.apply(&mut req, false));
        assert_eq!(req.headers()[AUTHORIZATION], "Bearer theirs");
        assert!(c.apply(&mut req, true));
        assert_eq!(req.headers()[AUTHORIZATION], "Bearer mine");
    }

    #[test]
    fn basic_encodes_user_and_password() {
        let c = Credential::basic("Aladdin", "open sesame").expect("valid");
        let mut req = get("http://h/");
        c.apply(&mut req, false);
        assert_eq!(
            req.headers()[AUTHORIZATION],
            "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="
        );
    }

    #[test]
    fn bad_input_is_an_error_that_hides_the_value() {
        for bad in ["", "a\r\nb", "a\nb", "a\0b", "a b", "tab\tx"] {
            let err = Credential::bearer(bad).expect_err(bad);
            assert_eq!(err.field(), "bearer token");
            if !bad.is_empty() {
                assert!(!err.to_string().contains(bad), "{err}");
            }
        }
        assert!(Credential::basic("", "pw").is_err());
        assert!(Credential::basic("u", "p\r\nx").is_err());
        assert!(Credential::api_key_header("bad name", "v").is_err());
        assert!(Credential::api_key_header("x-api-key", "v\r\nx: y").is_err());
        assert!(Credential::api_key_query("", "v").is_err());
        assert!(Credential::api_key_query("k", "v\n").is_err());
    }

    #[test]
    fn query_key_is_encoded_and_replaces_only_when_asked() {
        let c = Credential::api_key_query("api_key", "a&b=c d").expect("valid");
        let mut req = get("http://h/p?x=1");
        assert!(c.apply(&mut req, false));
        assert_eq!(req.uri(), "http://h/p?x=1&api_key=a%26b%3Dc%20d");
        let mut req = get("http://h/p?api_key=old&y=2");
        assert!(!c.apply(&mut req, false));
        assert!(c.apply(&mut req, true));
        assert_eq!(req.uri(), "http://h/p?y=2&api_key=a%26b%3Dc%20d");
        let mut req = get("/relative");
        assert!(c.apply(&mut req, false));
        assert_eq!(req.uri(), "/relative?api_key=a%26b%3Dc%20d");
    }
}
