//! Named endpoints: a method and a path template, with their own headers,
//! query parameters and timeout, declared in code or loaded from JSON.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use serde::Deserialize;

use crate::error::{Error, ErrorKind};

/// A named endpoint: `get_user: GET /users/{user_id}`, with headers, query
/// parameters and a timeout of its own.
///
/// Settings come from three levels, the narrower replacing the wider for
/// the same name: the client's defaults
/// ([`default_header`](crate::ClientBuilder::default_header),
/// [`default_query`](crate::ClientBuilder::default_query),
/// [`timeout`](crate::ClientBuilder::timeout)), then the endpoint's, then
/// the request's own ([`RequestBuilder::header`](crate::RequestBuilder::header),
/// [`query`](crate::RequestBuilder::query),
/// [`timeout`](crate::RequestBuilder::timeout)).
///
/// ```
/// use std::time::Duration;
/// use tollgate::{Client, Endpoint};
/// use tollgate_testkit::FakeApi;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let api = FakeApi::start().await?;
/// let client = Client::builder(api.url())
///     .endpoint(Endpoint::new("get_user", http::Method::GET, "/users/{user_id}").timeout(Duration::from_secs(2)))
///     .endpoints_json(r#"{"list_posts": {"method": "GET", "path": "/posts", "query": {"userId": "1"}}}"#)
///     .build()?;
///
/// let user = client.call("get_user").path_param("user_id", 3).send().await?;
/// assert_eq!(user.data()?["id"], 3);
/// let posts = client.call("list_posts").send().await?;
/// assert_eq!(posts.data()?.as_array().map(Vec::len), Some(10));
/// let err = client.call("get_user").send().await.unwrap_err();
/// assert!(err.to_string().contains("missing path parameter `user_id`"));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Endpoint {
    pub(crate) name: String,
    pub(crate) method: Method,
    pub(crate) path: String,
    pub(crate) headers: HeaderMap,
    pub(crate) query: Vec<QueryPair>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) error: Option<String>,
}

/// A query parameter, form-encoded: its name, and `name=value`.
#[derive(Clone, Debug)]
pub(crate) struct QueryPair {
    pub(crate) name: String,
    pub(crate) pair: String,
}

impl QueryPair {
    pub(crate) fn new(name: &str, value: &str) -> Option<QueryPair> {
        let pair = serde_urlencoded::to_string([(name, value)]).ok()?;
        let name = pair.split('=').next().unwrap_or_default().to_owned();
        Some(QueryPair { name, pair })
    }
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Header names only: values may be credentials.
        let names: Vec<&str> = self.headers.keys().map(HeaderName::as_str).collect();
        f.debug_struct("Endpoint")
            .field("name", &self.name)
            .field("method", &self.method)
            .field("path", &self.path)
            .field("headers", &names)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    /// An endpoint called `name`: `method` on `path` (a template whose
    /// `{name}` placeholders are filled by
    /// [`path_param`](crate::RequestBuilder::path_param)).
    pub fn new(name: impl Into<String>, method: Method, path: impl Into<String>) -> Self {
        Endpoint {
            name: name.into(),
            method,
            path: path.into(),
            headers: HeaderMap::new(),
            query: Vec::new(),
            timeout: None,
            error: None,
        }
    }

    /// The endpoint's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its method.
    pub fn method(&self) -> &Method {
        &self.method
    }

    /// Its path template.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Sends this header with every call (over the client's default of the
    /// same name; a request's own replaces it). An invalid name or value is
    /// reported by `ClientBuilder::build`.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        match (HeaderName::try_from(name), HeaderValue::try_from(value)) {
            (Ok(name), Ok(value)) => {
                self.headers.insert(name, value);
            }
            _ => {
                self.error.get_or_insert_with(|| {
                    format!("endpoint `{}`: invalid header `{name}`", self.name)
                });
            }
        }
        self
    }

    /// Sends this query parameter with every call (over the client's default
    /// of the same name; a request's own replaces it).
    pub fn query(mut self, name: &str, value: &str) -> Self {
        match QueryPair::new(name, value) {
            Some(pair) => {
                self.query.retain(|q| q.name != pair.name);
                self.query.push(pair);
            }
            None => {
                self.error.get_or_insert_with(|| {
                    format!("endpoint `{}`: invalid query `{name}`", self.name)
                });
            }
        }
        self
    }

    /// The deadline of a call (over the client's; a request's own replaces
    /// it). `Duration::MAX` means no deadline; zero would fail every call
    /// and is reported by `ClientBuilder::build`.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        if timeout.is_zero() {
            self.error.get_or_insert_with(|| {
                format!(
                    "endpoint `{}`: a timeout of zero would fail every call",
                    self.name
                )
            });
        }
        self.timeout = Some(timeout);
        self
    }
}

/// An endpoint as JSON writes it: `"GET /users/{id}"`, or an object.
#[derive(Deserialize)]
#[serde(untagged)]
enum Spec {
    Short(String),
    Full {
        method: String,
        path: String,
        #[serde(default)]
        headers: BTreeMap<String, String>,
        #[serde(default)]
        query: BTreeMap<String, String>,
        #[serde(default)]
        timeout_ms: Option<u64>,
    },
}

/// Endpoints from a JSON object of name to endpoint, each either
/// `"METHOD /path"` or `{"method", "path", "headers", "query", "timeout_ms"}`.
pub(crate) fn from_json(json: &str) -> Result<Vec<Endpoint>, Error> {
    let specs: BTreeMap<String, Spec> = serde_json::from_str(json).map_err(|e| {
        Error::new(
            ErrorKind::Builder,
            format!("the endpoint spec is not valid: {e}"),
        )
    })?;
    from_specs(specs)
}

/// Endpoints from a TOML table of name to endpoint, as [`from_json`].
#[cfg(feature = "toml")]
pub(crate) fn from_toml(text: &str) -> Result<Vec<Endpoint>, Error> {
    let specs: BTreeMap<String, Spec> = toml::from_str(text).map_err(|e| {
        Error::new(
            ErrorKind::Builder,
            format!("the endpoint spec is not valid: {e}"),
        )
    })?;
    from_specs(specs)
}

fn from_specs(specs: BTreeMap<String, Spec>) -> Result<Vec<Endpoint>, Error> {
    let method = |name: &str, m: &str| {
        Method::from_bytes(m.trim().to_ascii_uppercase().as_bytes()).map_err(|_| {
            Error::new(
                ErrorKind::Builder,
                format!("endpoint `{name}`: invalid method `{m}`"),
            )
        })
    };
    let mut out = Vec::with_capacity(specs.len());
    for (name, spec) in specs {
        let endpoint = match spec {
            Spec::Short(line) => {
                let (m, path) = line.trim().split_once(' ').ok_or_else(|| {
                    Error::new(
                        ErrorKind::Builder,
                        format!("endpoint `{name}`: expected \"METHOD /path\""),
                    )
                })?;
                Endpoint::new(name.clone(), method(&name, m)?, path.trim())
            }
            Spec::Full {
                method: m,
                path,
                headers,
                query,
                timeout_ms,
            } => {
                let mut e = Endpoint::new(name.clone(), method(&name, &m)?, path);
                for (k, v) in &headers {
                    e = e.header(k, v);
                }
                for (k, v) in &query {
                    e = e.query(k, v);
                }
                if let Some(ms) = timeout_ms {
                    e = e.timeout(Duration::from_millis(ms));
                }
                e
            }
        };
        out.push(endpoint);
    }
    Ok(out)
}

/// The query of a call from its three levels: the client's defaults, the
/// endpoint's, and the request's own (already encoded), a narrower level's
/// parameter replacing every wider one of the same name.
pub(crate) fn merge_query<'a>(
    client: &[QueryPair],
    endpoint: &[QueryPair],
    request: Option<&'a str>,
) -> Option<std::borrow::Cow<'a, str>> {
    if client.is_empty() && endpoint.is_empty() {
        return request.map(std::borrow::Cow::Borrowed);
    }
    let name = |pair: &str| pair.split('=').next().unwrap_or_default().to_owned();
    let request_pairs: Vec<&str> = request
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .collect();
    let request_names: Vec<String> = request_pairs.iter().map(|p| name(p)).collect();
    let mut out: Vec<&str> = Vec::new();
    for q in client {
        if !endpoint.iter().any(|e| e.name == q.name) && !request_names.contains(&q.name) {
            out.push(&q.pair);
        }
    }
    for q in endpoint {
        if !request_names.contains(&q.name) {
            out.push(&q.pair);
        }
    }
    out.extend(request_pairs);
    (!out.is_empty()).then(|| std::borrow::Cow::Owned(out.join("&")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<QueryPair> {
        list.iter()
            .map(|(k, v)| QueryPair::new(k, v).expect("encodable"))
            .collect()
    }

    #[test]
    fn narrower_levels_replace_wider_ones_by_name() {
        let client = pairs(&[("lang", "en"), ("page", "1"), ("key", "a b")]);
        let endpoint = pairs(&[("page", "2"), ("sort", "new")]);
        assert_eq!(
            merge_query(&client, &endpoint, Some("sort=old&x=1")).as_deref(),
            Some("lang=en&key=a+b&page=2&sort=old&x=1")
        );
        assert_eq!(merge_query(&[], &[], Some("a=1")).as_deref(), Some("a=1"));
        assert_eq!(merge_query(&[], &[], None), None);
    }

    #[cfg(feature = "toml")]
    #[test]
    fn toml_specs_read_like_json_ones() {
        let endpoints = from_toml(
            r#"
get_user = "GET /users/{id}"

[search]
method = "GET"
path = "/search"
timeout_ms = 2000
query = { limit = "20" }
headers = { x-api-version = "2" }
"#,
        )
        .expect("valid");
        let search = endpoints
            .iter()
            .find(|e| e.name == "search")
            .expect("search");
        assert_eq!(search.timeout, Some(Duration::from_secs(2)));
        assert_eq!(search.headers["x-api-version"], "2");
        assert_eq!(search.query[0].pair, "limit=20");
        assert!(endpoints
            .iter()
            .any(|e| e.name == "get_user" && e.path == "/users/{id}"));
        assert_eq!(
            from_toml("x = 1").expect_err("not an endpoint").kind(),
            ErrorKind::Builder
        );
    }

    #[test]
    fn json_specs_short_and_full() {
        let endpoints = from_json(
            r#"{"get_user": "GET /users/{id}",
                "search": {"method": "post", "path": "/search", "headers": {"x-v": "2"}, "query": {"q": "a"}, "timeout_ms": 1500}}"#,
        )
        .expect("valid");
        assert_eq!(endpoints.len(), 2);
        let search = endpoints
            .iter()
            .find(|e| e.name == "search")
            .expect("search");
        assert_eq!(search.method, Method::POST);
        assert_eq!(search.headers["x-v"], "2");
        assert_eq!(search.timeout, Some(Duration::from_millis(1500)));
        for bad in [r#"{"x": "GET"}"#, r#"{"x": "G@T /p"}"#, "[1]", "{"] {
            let err = from_json(bad).expect_err(bad);
            assert_eq!(err.kind(), ErrorKind::Builder);
        }
    }
}
