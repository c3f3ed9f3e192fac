//! [`StubTransport`]: canned answers by method and path template, in
//! process, with no sockets.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Full};
use serde_json::Value;
use tower::{BoxError, Service};

use crate::fake_api::RecordedRequest;

/// The path parameters a template captured: `{id}` in `/users/{id}`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Params(HashMap<String, String>);

impl Params {
    /// The value captured for `{name}`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }
}

type ReplyFn = dyn Fn(&RecordedRequest, &Params) -> Reply + Send + Sync;

/// What a [`StubTransport`] route answers.
#[derive(Clone)]
pub struct Reply {
    kind: ReplyKind,
    headers: Vec<(HeaderName, HeaderValue)>,
    delay: Duration,
}

#[derive(Clone)]
enum ReplyKind {
    Body(StatusCode, Bytes, Option<&'static str>),
    Error(io::ErrorKind, String),
    Fn(Arc<ReplyFn>),
}

impl fmt::Debug for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            ReplyKind::Body(status, body, _) => format!("{status} with {} bytes", body.len()),
            ReplyKind::Error(kind, _) => format!("error {kind:?}"),
            ReplyKind::Fn(_) => "computed".to_owned(),
        };
        f.debug_struct("Reply")
            .field("kind", &kind)
            .finish_non_exhaustive()
    }
}

impl Reply {
    fn new(kind: ReplyKind) -> Self {
        Reply {
            kind,
            headers: Vec::new(),
            delay: Duration::ZERO,
        }
    }

    /// `200` with this JSON body.
    #[allow(
        clippy::needless_pass_by_value,
        reason = "reads naturally with json!(..)"
    )]
    pub fn json(value: Value) -> Self {
        Reply::json_status(StatusCode::OK, value)
    }

    /// This status with this JSON body.
    #[allow(
        clippy::needless_pass_by_value,
        reason = "reads naturally with json!(..)"
    )]
    pub fn json_status(status: StatusCode, value: Value) -> Self {
        let body = serde_json::to_vec(&value).unwrap_or_default();
        Reply::new(ReplyKind::Body(
            status,
            Bytes::from(body),
            Some("application/json"),
        ))
    }

    /// `200` with these bytes as the body, and no `Content-Type`.
    pub fn bytes(body: impl Into<Bytes>) -> Self {
        Reply::new(ReplyKind::Body(StatusCode::OK, body.into(), None))
    }

    /// This status with an empty body.
    pub fn status(status: StatusCode) -> Self {
        Reply::new(ReplyKind::Body(status, Bytes::new(), None))
    }

    /// No response: the call fails with an `io::Error` of this kind (as a
    /// refused or reset connection would).
    pub fn error(kind: io::ErrorKind) -> Self {
        Reply::new(ReplyKind::Error(kind, format!("stub: {kind:?}")))
    }

    /// An answer computed from the request and the path parameters.
    pub fn from_fn<F>(f: F) -> Self
    where
        F: Fn(&RecordedRequest, &Params) -> Reply + Send + Sync + 'static,
    {
        Reply::new(ReplyKind::Fn(Arc::new(f)))
    }

    /// Adds a response header.
    ///
    /// # Panics
    ///
    /// If the name or value is invalid (a programming error in a test).
    pub fn header(mut self, name: &str, value: &str) -> Self {
        let name = HeaderName::try_from(name).expect("Reply::header: invalid name");
        let value = HeaderValue::try_from(value).expect("Reply::header: invalid value");
        self.headers.push((name, value));
        self
    }

    /// Answers after this long (on tokio's clock, so paused time skips it).
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

struct Route {
    method: Method,
    template: String,
    segments: Vec<String>,
    reply: Reply,
    hits: u64,
}

impl Route {
    /// The parameters, if `path` matches this route's template.
    fn matches(&self, method: &Method, path: &str) -> Option<Params> {
        if *method != self.method {
            return None;
        }
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        if parts.len() != self.segments.len() {
            return None;
        }
        let mut params = HashMap::new();
        for (segment, part) in self.segments.iter().zip(parts) {
            match segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                Some(name) if !part.is_empty() => {
                    params.insert(name.to_owned(), part.to_owned());
                }
                Some(_) => return None,
                None if segment == part => {}
                None => return None,
            }
        }
        Some(Params(params))
    }
}

#[derive(Default)]
struct State {
    routes: Vec<Route>,
    received: Vec<RecordedRequest>,
}

/// A transport for tests that answers from canned replies, by method and
/// path template, with no sockets: put it under the `tollgate` facade with
/// `ClientBuilder::transport`, or under any tower stack of
/// `http::Request`s.
///
/// Routes match the request's method and path (`GET /users/{id}`: `{id}`
/// matches one non-empty segment); the most recently added matching route
/// answers. A request no route matches gets `404` with a JSON error. Every
/// request is recorded, body included. Clones share routes and records.
///
/// ```
/// use http::{Method, StatusCode};
/// use serde_json::json;
/// use tollgate_testkit::{Reply, StubTransport};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let stub = StubTransport::new();
/// stub.on(Method::GET, "/users/{id}", Reply::from_fn(|_req, params| {
///     Reply::json(json!({"id": params.get("id"), "name": "Ada"}))
/// }));
/// stub.on(Method::DELETE, "/users/{id}", Reply::status(StatusCode::FORBIDDEN));
///
/// // Templates match the whole path, base URL path included.
/// let client = tollgate::Client::builder("http://stub.test").transport(stub.clone()).build()?;
/// let user = client.get("/users/{id}").path_param("id", 7).send().await?;
/// assert_eq!(user.data()?["id"], "7");
/// assert_eq!(client.delete("/users/7").send().await?.status(), 403);
/// assert_eq!(stub.received().len(), 2);
/// assert_eq!(stub.hits(&Method::GET, "/users/{id}"), 1);
/// # Ok(()) }
/// ```
#[derive(Clone, Default)]
pub struct StubTransport {
    state: Arc<Mutex<State>>,
}

impl fmt::Debug for StubTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.lock();
        let routes: Vec<String> = state
            .routes
            .iter()
            .map(|r| format!("{} {}", r.method, r.template))
            .collect();
        f.debug_struct("StubTransport")
            .field("routes", &routes)
            .field("received", &state.received.len())
            .finish()
    }
}

impl StubTransport {
    /// A stub with no routes.
    pub fn new() -> Self {
        StubTransport::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Answers `method template` (such as `GET /users/{id}`) with `reply`,
    /// ahead of the routes added before.
    pub fn on(&self, method: Method, template: &str, reply: Reply) -> &Self {
        let segments = template
            .trim_matches('/')
            .split('/')
            .map(str::to_owned)
            .collect();
        self.lock().routes.push(Route {
            method,
            template: template.to_owned(),
            segments,
            reply,
            hits: 0,
        });
        self
    }

    /// Every request received so far, in order.
    pub fn received(&self) -> Vec<RecordedRequest> {
        self.lock().received.clone()
    }

    /// Requests answered by the route `method template`.
    pub fn hits(&self, method: &Method, template: &str) -> u64 {
        self.lock()
            .routes
            .iter()
            .filter(|r| r.method == *method && r.template == template)
            .map(|r| r.hits)
            .sum()
    }

    fn answer(&self, recorded: RecordedRequest) -> Reply {
        let mut state = self.lock();
        let path = recorded.uri.path().to_owned();
        let found = state
            .routes
            .iter_mut()
            .rev()
            .find_map(|route| route.matches(&recorded.method, &path).map(|p| (route, p)));
        let reply = match found {
            Some((route, params)) => {
                route.hits += 1;
                match &route.reply.kind {
                    ReplyKind::Fn(f) => f(&recorded, &params),
                    _ => route.reply.clone(),
                }
            }
            None => Reply::json_status(
                StatusCode::NOT_FOUND,
                serde_json::json!({"error": format!("no stub for {} {path}", recorded.method)}),
            ),
        };
        state.received.push(recorded);
        reply
    }
}

impl<B> Service<Request<B>> for StubTransport
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Response = Response<Full<Bytes>>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Full<Bytes>>, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let stub = self.clone();
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let body = body.collect().await.map_err(Into::into)?.to_bytes();
            let recorded = RecordedRequest {
                method: parts.method,
                uri: parts.uri,
                version: parts.version,
                headers: parts.headers,
                body,
            };
            let reply = stub.answer(recorded);
            if !reply.delay.is_zero() {
                tokio::time::sleep(reply.delay).await;
            }
            let mut response = match reply.kind {
                ReplyKind::Body(status, body, content_type) => {
                    let mut r = Response::new(Full::new(body));
                    *r.status_mut() = status;
                    if let Some(ct) = content_type {
                        r.headers_mut()
                            .insert(CONTENT_TYPE, HeaderValue::from_static(ct));
                    }
                    r
                }
                ReplyKind::Error(kind, message) => {
                    return Err(Box::new(io::Error::new(kind, message)) as BoxError)
                }
                ReplyKind::Fn(_) => Response::new(Full::new(Bytes::new())),
            };
            for (name, value) in reply.headers {
                response.headers_mut().append(name, value);
            }
            Ok(response)
        })
    }
}
