//! The fake API server.

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::{CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body::{Frame, SizeHint};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{json, Map, Value};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

use crate::data;
use crate::fault::{route_matches, BodyEnd, Fault, FaultKind};

/// Largest request body the fake API reads; larger ones get `413`.
pub const MAX_REQUEST_BODY: usize = 1 << 20;

/// A request as the fake API received it.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    /// The request method.
    pub method: Method,
    /// The request target (path and query).
    pub uri: Uri,
    /// The HTTP version it came in (`HTTP/2.0` over h2c or ALPN `h2`).
    pub version: http::Version,
    /// Every header the server received.
    pub headers: HeaderMap,
    /// The request body.
    pub body: Bytes,
}

impl RecordedRequest {
    /// The value of the header `name` as text, if it was sent (and is
    /// visible ASCII).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

#[derive(Default)]
struct RouteStats {
    count: u64,
    last: Option<RecordedRequest>,
}

/// The one client the fake token endpoint knows.
struct OAuthClient {
    id: String,
    secret: String,
    expires_in: u64,
    issued: u64,
}

#[derive(Default)]
struct State {
    total: AtomicU64,
    faults: Mutex<Vec<(String, Fault)>>,
    bearer: Mutex<Option<String>>,
    oauth: Mutex<Option<OAuthClient>>,
    cache_control: Mutex<Vec<(String, HeaderValue)>>,
    /// Routes answered with `ETag` and `Last-Modified`, and 304s.
    validators: Mutex<Vec<String>>,
    vary: Mutex<Vec<(String, HeaderValue)>>,
    version: AtomicU64,
    not_modified: AtomicU64,
    stats: Mutex<HashMap<String, RouteStats>>,
}

/// Locks a mutex, ignoring poisoning: the fake's state stays usable even if a
/// test panicked while holding it.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A real HTTP/1.1 and HTTP/2 (h2c) server on `127.0.0.1`, serving
/// JSONPlaceholder's resources with scriptable faults.
///
/// The server runs on the tokio runtime that started it and stops when the
/// `FakeApi` is dropped (open connections are closed too).
///
/// # Resources
///
/// | route | answer |
/// |-------|--------|
/// | `GET /posts`, `/posts?userId=N` | 100 posts (10 per user) |
/// | `GET /posts/{id}` | one post, `404` for unknown ids |
/// | `GET /posts/{id}/comments`, `/comments?postId=N` | the post's 5 comments |
/// | `GET /users`, `/users/{id}`, `/comments/{id}` | as JSONPlaceholder |
/// | `POST /{resource}` | `201` with the JSON sent plus `"id"` (101 for posts) |
/// | `PUT /{resource}/{id}` | `200` with the JSON sent and the id |
/// | `PATCH /{resource}/{id}` | `200` with the record merged with the JSON sent |
/// | `DELETE /{resource}/{id}` | `200` with `{}` |
/// | `GET /metadata?id=1&id=2..` | `{"items": [..]}`, one record per known id (1 to 1000), each once |
/// | any method `/anything/..` | echoes method, path, query pairs, headers and body as JSON |
/// | any method `/redirect/{n}` | `302` to `/redirect/{n-1}` (a relative `Location`); `/redirect/1` to `/anything/redirected` |
/// | any method `/redirect-to?url=U&status=S` | `S` (default `302`, any `3xx`) with `Location: U` as given, percent-decoded to raw bytes (so a test can send one that is not UTF-8) |
/// | `GET /encoded/{codec}` (`gzip`, `deflate`, `br`, `zstd`) | `{"codec": .., "posts": [..]}` in that coding when `Accept-Encoding` names it (else as it is), with `Content-Encoding` and `Content-Length` |
/// | `GET /bomb/{codec}?size=N` | `N` zero bytes (default 64 MiB) in that coding whatever was asked: a decompression bomb (a 64 MiB one is some 64 KiB in gzip) |
/// | `POST /oauth/token` | after [`issue_tokens`](FakeApi::issue_tokens): an OAuth2 client-credentials grant |
/// | `GET /huge?size=N&chunk=M` | `N` bytes (default 1 MiB) of `0123456789abcdef` repeated, with `Content-Length`, sent `M` bytes (default 64 KiB) at a time, made as they are sent (never held in memory) |
/// | `GET /endless?chunk=M` | chunks of `M` bytes (default 16 KiB), without end, until the client goes |
/// | `POST /multipart` | parses a `multipart/form-data` body as it arrives (multer, any size) and echoes `{"parts": [{"name", "file_name", "content_type", "size", "sha256"}]}` (`400` when it is not a valid form) |
///
/// Writes are not persisted, as on JSONPlaceholder. A body that is not JSON
/// gets `400`, an unknown route `404`. The last three routes are counted by
/// [`hits`](FakeApi::hits) but take no injected fault.
///
/// # Example
///
/// ```
/// use http::StatusCode;
/// use tollgate_testkit::{Fault, FakeApi};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> std::io::Result<()> {
/// let api = FakeApi::start().await?;
/// api.inject("/posts/1", Fault::status(StatusCode::SERVICE_UNAVAILABLE).times(2));
/// api.require_bearer("s3cret");
/// assert!(api.url().starts_with("http://127.0.0.1:"));
/// assert_eq!(api.hits("/posts/1"), 0);
/// # Ok(())
/// # }
/// ```
pub struct FakeApi {
    addr: SocketAddr,
    state: Arc<State>,
    server: JoinHandle<()>,
}

impl std::fmt::Debug for FakeApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeApi")
            .field("addr", &self.addr)
            .field("requests", &self.total_hits())
            .finish_non_exhaustive()
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl FakeApi {
    /// Binds `127.0.0.1` on a free port and starts serving on the current
    /// tokio runtime.
    ///
    /// # Errors
    ///
    /// If the listener cannot be bound.
    ///
    /// # Panics
    ///
    /// If called outside a tokio runtime.
    pub async fn start() -> io::Result<FakeApi> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State::default());
        let server = tokio::spawn(serve(listener, Arc::clone(&state)));
        Ok(FakeApi {
            addr,
            state,
            server,
        })
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL, `http://127.0.0.1:PORT` (no trailing slash).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Adds a fault for requests whose path matches `route`: an exact path
    /// (`/posts/1`), a prefix (`/posts/*`, matching `/posts` and below) or
    /// `*` for every path.
    pub fn inject(&self, route: &str, fault: Fault) {
        lock(&self.state.faults).push((route.to_owned(), fault));
    }

    /// Removes every fault.
    pub fn clear_faults(&self) {
        lock(&self.state.faults).clear();
    }

    /// From now on, every request must carry `Authorization: Bearer <token>`;
    /// others get `401` with `WWW-Authenticate: Bearer`.
    pub fn require_bearer(&self, token: &str) {
        *lock(&self.state.bearer) = Some(token.to_owned());
    }

    /// Stops requiring a bearer token.
    pub fn allow_anonymous(&self) {
        *lock(&self.state.bearer) = None;
    }

    /// Serves an OAuth2 token endpoint at `POST /oauth/token` for one client
    /// (client-credentials grant; the id and secret in a Basic header or in
    /// the form body). Each grant issues `token-1`, `token-2`, ... with
    /// `expires_in` seconds, and from then on only the newest token is
    /// accepted on the other routes, as with
    /// [`require_bearer`](Self::require_bearer). Count grants with
    /// `hits("/oauth/token")`.
    pub fn issue_tokens(&self, client_id: &str, client_secret: &str, expires_in: u64) {
        *lock(&self.state.oauth) = Some(OAuthClient {
            id: client_id.to_owned(),
            secret: client_secret.to_owned(),
            expires_in,
            issued: 0,
        });
        *lock(&self.state.bearer) = Some(String::new());
    }

    /// Refuses every token issued so far, as a server does after revoking
    /// them: requests get `401` until a new token is issued.
    pub fn revoke_tokens(&self) {
        *lock(&self.state.bearer) = Some(String::new());
    }

    /// Sends `Cache-Control: <value>` on responses to paths matching `route`.
    ///
    /// # Panics
    ///
    /// If `value` is not a valid header value (a programming error in a test).
    pub fn cache_control(&self, route: &str, value: &str) {
        let value = HeaderValue::try_from(value).expect("cache_control: invalid header value");
        lock(&self.state.cache_control).push((route.to_owned(), value));
    }

    /// Sends `ETag` and `Last-Modified` with `200` responses to `GET` and
    /// `HEAD` on paths matching `route`, and answers a matching
    /// `If-None-Match` (or, without one, an `If-Modified-Since` not before
    /// the `Last-Modified`) with `304 Not Modified` and no body. The `ETag`
    /// changes with the body and with [`touch`](Self::touch).
    pub fn validators(&self, route: &str) {
        lock(&self.state.validators).push(route.to_owned());
    }

    /// Marks every resource as changed: new `ETag`s and `Last-Modified`,
    /// so revalidations get a full `200`.
    pub fn touch(&self) {
        self.state.version.fetch_add(1, Ordering::Relaxed);
    }

    /// `304 Not Modified` answers sent so far.
    pub fn not_modified_count(&self) -> u64 {
        self.state.not_modified.load(Ordering::Relaxed)
    }

    /// Sends `Vary: <value>` on responses to paths matching `route`.
    ///
    /// # Panics
    ///
    /// If `value` is not a valid header value (a programming error in a test).
    pub fn vary(&self, route: &str, value: &str) {
        let value = HeaderValue::try_from(value).expect("vary: invalid header value");
        lock(&self.state.vary).push((route.to_owned(), value));
    }

    /// Requests received for paths matching `route` (same patterns as
    /// [`inject`](Self::inject)), faults and refusals included.
    pub fn hits(&self, route: &str) -> u64 {
        lock(&self.state.stats)
            .iter()
            .filter(|(path, _)| route_matches(route, path))
            .map(|(_, s)| s.count)
            .sum()
    }

    /// Requests received in all.
    pub fn total_hits(&self) -> u64 {
        self.state.total.load(Ordering::Relaxed)
    }

    /// The last request received for exactly this path.
    pub fn last_request(&self, path: &str) -> Option<RecordedRequest> {
        lock(&self.state.stats)
            .get(path)
            .and_then(|s| s.last.clone())
    }

    /// Forgets the counters and recorded requests (faults and settings stay).
    pub fn reset_counts(&self) {
        lock(&self.state.stats).clear();
        self.state.total.store(0, Ordering::Relaxed);
    }
}

async fn serve(listener: TcpListener, state: Arc<State>) {
    // Connections live in this set: aborting the accept task drops the set,
    // which aborts every connection task, so a dropped FakeApi leaves nothing.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                let state = Arc::clone(&state);
                connections.spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        handle(Arc::clone(&state), req)
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// The error that makes hyper close a connection without answering.
#[derive(Debug)]
struct DropConnection;

impl std::fmt::Display for DropConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("fault: connection dropped")
    }
}

impl std::error::Error for DropConnection {}

type Reply = Response<Full<Bytes>>;

/// The body the server sends: a whole one, or one a fault spoils.
enum Served {
    Whole(Full<Bytes>),
    /// `head` (the first half) is sent, then the body stalls or is cut.
    Partial {
        head: Option<Bytes>,
        end: BodyEnd,
        len: u64,
        /// Whether the server had a chance to flush what was sent.
        yielded: bool,
    },
    /// `rest` is sent 8 bytes at a time, each after `pause`.
    Trickle {
        rest: Bytes,
        every: Duration,
        pause: Option<Pin<Box<tokio::time::Sleep>>>,
    },
    /// `/huge` and `/endless`: made as sent.
    Lazy(Lazy),
}

/// The error that makes hyper close the connection in the middle of a body.
#[derive(Debug)]
struct BodyCut;

impl std::fmt::Display for BodyCut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("fault: body cut")
    }
}

impl std::error::Error for BodyCut {}

impl http_body::Body for Served {
    type Data = Bytes;
    type Error = BodyCut;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyCut>>> {
        match self.get_mut() {
            Served::Whole(full) => Pin::new(full)
                .poll_frame(cx)
                .map(|f| f.map(|f| f.map_err(|never| match never {}))),
            Served::Partial {
                head, end, yielded, ..
            } => match head.take() {
                Some(bytes) if !bytes.is_empty() => Poll::Ready(Some(Ok(Frame::data(bytes)))),
                _ => match end {
                    // Never ready: the connection stays open, silent.
                    BodyEnd::Stall => Poll::Pending,
                    // Once pending first, so that hyper flushes the head and
                    // the half body before it closes the connection.
                    BodyEnd::Cut if !*yielded => {
                        *yielded = true;
                        cx.waker().wake_by_ref();
                        Poll::Pending
                    }
                    BodyEnd::Cut => Poll::Ready(Some(Err(BodyCut))),
                },
            },
            Served::Trickle { rest, every, pause } => {
                if rest.is_empty() {
                    return Poll::Ready(None);
                }
                let sleep = pause.get_or_insert_with(|| Box::pin(tokio::time::sleep(*every)));
                if sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                *pause = None;
                let piece = rest.split_to(rest.len().min(8));
                Poll::Ready(Some(Ok(Frame::data(piece))))
            }
            Served::Lazy(lazy) => Poll::Ready(lazy.next().map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Served::Whole(full) => full.is_end_stream(),
            Served::Partial { .. } => false,
            Served::Trickle { rest, .. } => rest.is_empty(),
            Served::Lazy(lazy) => lazy.left == Some(0),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Served::Whole(full) => full.size_hint(),
            Served::Partial { len, .. } => SizeHint::with_exact(*len),
            Served::Trickle { rest, .. } => SizeHint::with_exact(rest.len() as u64),
            Served::Lazy(lazy) => lazy.left.map_or_else(SizeHint::new, SizeHint::with_exact),
        }
    }
}

/// Sends a reply's body as the fault says.
async fn spoil(reply: Reply, kind: &FaultKind) -> Response<Served> {
    let (mut parts, body) = reply.into_parts();
    let bytes = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let len = bytes.len() as u64;
    parts.headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
    let served = match kind {
        FaultKind::PartialBody(end) => Served::Partial {
            head: Some(bytes.slice(..bytes.len() / 2)),
            end: *end,
            len,
            yielded: false,
        },
        FaultKind::Trickle(every) => Served::Trickle {
            rest: bytes,
            every: *every,
            pause: None,
        },
        _ => Served::Whole(Full::new(bytes)),
    };
    Response::from_parts(parts, served)
}

async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<Served>, DropConnection> {
    let req = match streamed_route(&state, req).await {
        Ok(response) => return Ok(response),
        Err(req) => req,
    };
    let (kind, reply) = answer(state, req).await?;
    Ok(match kind {
        Some(kind @ (FaultKind::PartialBody(_) | FaultKind::Trickle(_))) => {
            spoil(reply, &kind).await
        }
        _ => reply.map(Served::Whole),
    })
}

/// The reply, and the fault that spoils its body, if any.
async fn answer(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<(Option<FaultKind>, Reply), DropConnection> {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_owned();
    let body = match tollgate_core::read_body(body, MAX_REQUEST_BODY).await {
        Ok(b) => b,
        Err(e) if e.is_too_large() => {
            return Ok((
                None,
                json_reply(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    &json!({"error": "request body too large"}),
                ),
            ))
        }
        // The client's upload failed: there is no request to answer.
        Err(_) => return Err(DropConnection),
    };

    state.total.fetch_add(1, Ordering::Relaxed);
    let recorded = RecordedRequest {
        method: parts.method.clone(),
        uri: parts.uri.clone(),
        version: parts.version,
        headers: parts.headers.clone(),
        body: body.clone(),
    };
    {
        let mut stats = lock(&state.stats);
        let entry = stats.entry(path.clone()).or_default();
        entry.count += 1;
        entry.last = Some(recorded);
    }

    let fault = {
        let mut faults = lock(&state.faults);
        faults
            .iter_mut()
            .find(|(route, fault)| route_matches(route, &path) && fault.remaining != Some(0))
            .and_then(|(_, fault)| fault.take().then(|| fault.clone()))
    };

    if let Some(fault) = &fault {
        if !fault.delay.is_zero() {
            tokio::time::sleep(fault.delay).await;
        }
        let mut reply = match &fault.kind {
            FaultKind::Drop => return Err(DropConnection),
            FaultKind::Status(status) => json_reply(
                *status,
                &json!({"error": status.canonical_reason().unwrap_or("injected fault")}),
            ),
            FaultKind::MalformedJson => {
                let mut r =
                    Response::new(Full::new(Bytes::from_static(b"{\"id\": 1, \"title\": ")));
                r.headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                r
            }
            FaultKind::Latency | FaultKind::PartialBody(_) | FaultKind::Trickle(_) => {
                route(&state, &parts.method, &parts.uri, &parts.headers, &body)
            }
        };
        for (name, value) in &fault.headers {
            reply.headers_mut().append(name.clone(), value.clone());
        }
        return Ok((Some(fault.kind.clone()), finish(&state, &path, reply)));
    }

    let reply = route(&state, &parts.method, &parts.uri, &parts.headers, &body);
    let reply = conditional(&state, &parts.method, &path, &parts.headers, reply).await;
    Ok((None, finish(&state, &path, reply)))
}

/// `Last-Modified` of version 0; each [`FakeApi::touch`] adds a day.
const EPOCH_SECS: u64 = 1_700_000_000;

/// Validators on a 200, and a 304 when the client's copy is current.
async fn conditional(
    state: &State,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    reply: Reply,
) -> Reply {
    let wanted = lock(&state.validators)
        .iter()
        .any(|route| route_matches(route, path));
    if !wanted
        || reply.status() != StatusCode::OK
        || !(method == Method::GET || method == Method::HEAD)
    {
        return reply;
    }
    let version = state.version.load(Ordering::Relaxed);
    let (head, body) = reply.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let digest = body_digest(&body);
    let reply = Response::from_parts(head, Full::new(body));
    let etag = format!("\"v{version}-{digest:016x}\"");
    let modified =
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(EPOCH_SECS + version * 86_400);
    let matches_etag = headers
        .get(http::header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let unmodified_since = headers
        .get(http::header::IF_MODIFIED_SINCE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok())
        .is_some_and(|since| since >= modified);
    let fresh = matches_etag.unwrap_or(unmodified_since);
    let mut reply = if fresh {
        state.not_modified.fetch_add(1, Ordering::Relaxed);
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r
    } else {
        reply
    };
    if let Ok(v) = HeaderValue::try_from(etag) {
        reply.headers_mut().insert(http::header::ETAG, v);
    }
    if let Ok(v) = HeaderValue::try_from(httpdate::fmt_http_date(modified)) {
        reply.headers_mut().insert(http::header::LAST_MODIFIED, v);
    }
    reply
}

/// FNV-1a over the body: a stable tag for its content.
fn body_digest(bytes: &Bytes) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn finish(state: &State, path: &str, mut reply: Reply) -> Reply {
    let cc = lock(&state.cache_control);
    if let Some((_, value)) = cc
        .iter()
        .rev()
        .find(|(route, _)| route_matches(route, path))
    {
        reply.headers_mut().insert(CACHE_CONTROL, value.clone());
    }
    drop(cc);
    if let Some((_, value)) = lock(&state.vary)
        .iter()
        .rev()
        .find(|(route, _)| route_matches(route, path))
    {
        reply
            .headers_mut()
            .insert(http::header::VARY, value.clone());
    }
    reply
}

fn json_reply(status: StatusCode, value: &Value) -> Reply {
    let body = serde_json::to_vec(value).unwrap_or_default();
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    r
}

fn not_found() -> Reply {
    json_reply(StatusCode::NOT_FOUND, &json!({}))
}

fn query_pairs(uri: &Uri) -> Vec<(String, String)> {
    uri.query()
        .and_then(|q| serde_urlencoded::from_str(q).ok())
        .unwrap_or_default()
}

fn query_u64(uri: &Uri, name: &str) -> Option<Option<u64>> {
    match query_pairs(uri).into_iter().find(|(k, _)| k == name) {
        None => Some(None),
        Some((_, v)) => v.parse().ok().map(Some),
    }
}

fn route(state: &State, method: &Method, uri: &Uri, headers: &HeaderMap, body: &Bytes) -> Reply {
    if uri.path() == "/oauth/token" && *method == Method::POST {
        return grant(state, headers, body);
    }
    // Redirects answer before the bearer check, as a CDN or a load balancer
    // in front of an API would: the hop they point to is what is checked.
    if let Some(reply) = redirect(uri) {
        return reply;
    }
    if let Some(reply) = encoded(uri, headers) {
        return reply;
    }
    if let Some(expected) = lock(&state.bearer).as_deref() {
        let ok = !expected.is_empty()
            && headers
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .is_some_and(|t| t == expected);
        if !ok {
            let mut r = json_reply(StatusCode::UNAUTHORIZED, &json!({"error": "unauthorized"}));
            r.headers_mut()
                .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return r;
        }
    }

    let segments: Vec<&str> = uri.path().trim_matches('/').split('/').collect();
    if segments.first() == Some(&"anything") {
        return echo(method, uri, headers, body);
    }
    let is_read = *method == Method::GET || *method == Method::HEAD;
    match (segments.as_slice(), is_read) {
        (["metadata"], true) => metadata(uri),
        (["posts"], true) => match query_u64(uri, "userId") {
            Some(user) => json_reply(StatusCode::OK, &data::posts(user)),
            None => json_reply(StatusCode::OK, &json!([])),
        },
        (["comments"], true) => match query_u64(uri, "postId") {
            Some(post) => json_reply(StatusCode::OK, &data::comments(post)),
            None => json_reply(StatusCode::OK, &json!([])),
        },
        (["users"], true) => json_reply(StatusCode::OK, &data::users()),
        (["posts", id, "comments"], true) => match id.parse::<u64>() {
            Ok(id) if data::post(id).is_some() => {
                json_reply(StatusCode::OK, &data::comments(Some(id)))
            }
            _ => not_found(),
        },
        ([collection], false) if *method == Method::POST => create(collection, body),
        ([collection, id], _) => item(method, collection, id, body),
        _ => not_found(),
    }
}

/// `POST /oauth/token`: the client-credentials grant of [`FakeApi::issue_tokens`].
fn grant(state: &State, headers: &HeaderMap, body: &Bytes) -> Reply {
    use base64::Engine as _;
    let mut oauth = lock(&state.oauth);
    let Some(client) = oauth.as_mut() else {
        return not_found();
    };
    let form: Vec<(String, String)> = serde_urlencoded::from_bytes(body).unwrap_or_default();
    let field = |name: &str| form.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    if field("grant_type").as_deref() != Some("client_credentials") {
        return json_reply(
            StatusCode::BAD_REQUEST,
            &json!({"error": "unsupported_grant_type"}),
        );
    }
    let from_basic = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .and_then(|raw| String::from_utf8(raw).ok())
        .and_then(|pair| {
            let (id, secret) = pair.split_once(':')?;
            let decode = |s: &str| -> Option<String> {
                let pairs: Vec<(String, String)> =
                    serde_urlencoded::from_str(&format!("v={s}")).ok()?;
                pairs.into_iter().next().map(|(_, v)| v)
            };
            Some((decode(id)?, decode(secret)?))
        });
    let presented = from_basic.or_else(|| Some((field("client_id")?, field("client_secret")?)));
    if presented != Some((client.id.clone(), client.secret.clone())) {
        return json_reply(
            StatusCode::UNAUTHORIZED,
            &json!({"error": "invalid_client"}),
        );
    }
    client.issued += 1;
    let token = format!("token-{}", client.issued);
    *lock(&state.bearer) = Some(token.clone());
    let mut reply = json_reply(
        StatusCode::OK,
        &json!({"access_token": token, "token_type": "Bearer", "expires_in": client.expires_in}),
    );
    reply
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    reply
}

fn lookup(collection: &str, id: &str) -> Option<Value> {
    let id: u64 = id.parse().ok()?;
    match collection {
        "posts" => data::post(id),
        "users" => data::user(id),
        "comments" => data::comment(id),
        _ => None,
    }
}

/// The body as a JSON object, or the reason it is not one.
fn parse_object(body: &Bytes) -> Result<Map<String, Value>, String> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err("expected a JSON object".to_owned()),
        Err(e) => Err(format!("invalid JSON: {e}")),
    }
}

fn bad_request(reason: &str) -> Reply {
    json_reply(StatusCode::BAD_REQUEST, &json!({ "error": reason }))
}

fn create(collection: &str, body: &Bytes) -> Reply {
    let new_id = match collection {
        "posts" => data::NEW_POST_ID,
        "users" => data::USERS + 1,
        "comments" => data::POSTS * data::COMMENTS_PER_POST + 1,
        _ => return not_found(),
    };
    match parse_object(body) {
        Ok(mut map) => {
            map.insert("id".into(), json!(new_id));
            json_reply(StatusCode::CREATED, &Value::Object(map))
        }
        Err(reason) => bad_request(&reason),
    }
}

fn item(method: &Method, collection: &str, id: &str, body: &Bytes) -> Reply {
    let Some(record) = lookup(collection, id) else {
        return not_found();
    };
    match *method {
        Method::GET | Method::HEAD => json_reply(StatusCode::OK, &record),
        Method::DELETE => json_reply(StatusCode::OK, &json!({})),
        Method::PUT => match parse_object(body) {
            Ok(mut map) => {
                map.insert("id".into(), record["id"].clone());
                json_reply(StatusCode::OK, &Value::Object(map))
            }
            Err(reason) => bad_request(&reason),
        },
        Method::PATCH => match (parse_object(body), record) {
            (Ok(changes), Value::Object(mut merged)) => {
                for (k, v) in changes {
                    if k != "id" {
                        merged.insert(k, v);
                    }
                }
                json_reply(StatusCode::OK, &Value::Object(merged))
            }
            (Err(reason), _) => bad_request(&reason),
            (Ok(_), _) => not_found(),
        },
        _ => json_reply(
            StatusCode::METHOD_NOT_ALLOWED,
            &json!({"error": "method not allowed"}),
        ),
    }
}

fn metadata(uri: &Uri) -> Reply {
    let mut seen = Vec::new();
    let mut items = Vec::new();
    for (key, value) in query_pairs(uri) {
        if key != "id" {
            continue;
        }
        let Ok(id) = value.parse::<u64>() else {
            continue;
        };
        if seen.contains(&id) {
            continue;
        }
        seen.push(id);
        items.extend(data::metadata(id));
    }
    json_reply(StatusCode::OK, &json!({ "items": items }))
}

fn echo(method: &Method, uri: &Uri, headers: &HeaderMap, body: &Bytes) -> Reply {
    let mut hs = Map::new();
    for (name, value) in headers {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        match hs.get_mut(name.as_str()) {
            Some(Value::Array(values)) => values.push(Value::String(value)),
            _ => {
                hs.insert(name.as_str().to_owned(), json!([value]));
            }
        }
    }
    let query: Vec<Value> = query_pairs(uri)
        .into_iter()
        .map(|(k, v)| json!([k, v]))
        .collect();
    json_reply(
        StatusCode::OK,
        &json!({
            "method": method.as_str(),
            "path": uri.path(),
            "query": query,
            "headers": hs,
            "body": String::from_utf8_lossy(body),
        }),
    )
}

/// The redirect routes (see the table on [`FakeApi`]), or `None` for any
/// other path.
fn redirect(uri: &Uri) -> Option<Reply> {
    let path = uri.path();
    if let Some(n) = path.strip_prefix("/redirect/") {
        let Ok(n) = n.parse::<u64>() else {
            return Some(not_found());
        };
        let location = match n {
            0 => return Some(not_found()),
            1 => "/anything/redirected".to_owned(),
            n => format!("/redirect/{}", n - 1),
        };
        return Some(redirect_reply(StatusCode::FOUND, location.as_bytes()));
    }
    if path != "/redirect-to" {
        return None;
    }
    let mut url = None;
    let mut status = StatusCode::FOUND;
    for pair in uri.query().unwrap_or_default().split('&') {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        match name {
            "url" => url = Some(percent_decode(value)),
            "status" => match value
                .parse::<u16>()
                .ok()
                .and_then(|s| StatusCode::from_u16(s).ok())
            {
                Some(s) if s.is_redirection() => status = s,
                _ => return Some(bad_request("status must be a 3xx code")),
            },
            _ => {}
        }
    }
    match url {
        Some(url) => Some(redirect_reply(status, &url)),
        None => Some(bad_request("url is missing")),
    }
}

fn redirect_reply(status: StatusCode, location: &[u8]) -> Reply {
    let mut reply = json_reply(status, &json!({"redirect": true}));
    match HeaderValue::from_bytes(location) {
        Ok(value) => {
            reply.headers_mut().insert(http::header::LOCATION, value);
            reply
        }
        Err(_) => bad_request("the Location cannot be a header value"),
    }
}

/// `%XX` to the byte it names, `+` to a space; anything else as it is.
fn percent_decode(s: &str) -> Vec<u8> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: Option<&u8>| b.and_then(|b| char::from(*b).to_digit(16));
        match (bytes[i], hex(bytes.get(i + 1)), hex(bytes.get(i + 2))) {
            (b'%', Some(hi), Some(lo)) => {
                out.push(u8::try_from(hi * 16 + lo).unwrap_or(b'?'));
                i += 3;
            }
            (b'+', _, _) => {
                out.push(b' ');
                i += 1;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

/// The compressed routes (see the table on [`FakeApi`]), or `None` for any
/// other path.
fn encoded(uri: &Uri, headers: &HeaderMap) -> Option<Reply> {
    let path = uri.path();
    if let Some(codec) = path.strip_prefix("/encoded/") {
        let body = serde_json::to_vec(&json!({"codec": codec, "posts": data::posts(Some(1))}))
            .unwrap_or_default();
        let asked = headers
            .get_all(http::header::ACCEPT_ENCODING)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.split(';').next().unwrap_or_default().trim() == codec);
        if !asked {
            return Some(json_reply(
                StatusCode::OK,
                &serde_json::from_slice(&body).unwrap_or_default(),
            ));
        }
        return Some(match encode(codec, &body) {
            Some(bytes) => encoded_reply(codec, "application/json; charset=utf-8", bytes),
            None => not_found(),
        });
    }
    let codec = path.strip_prefix("/bomb/")?;
    let size = match query_u64(uri, "size") {
        Some(Some(n)) => usize::try_from(n).unwrap_or(usize::MAX),
        Some(None) => 64 << 20,
        None => return Some(bad_request("size must be a number")),
    };
    Some(match encode_zeros(codec, size) {
        Some(bytes) => encoded_reply(codec, "application/octet-stream", bytes),
        None => not_found(),
    })
}

fn encoded_reply(codec: &str, content_type: &'static str, bytes: Vec<u8>) -> Reply {
    let mut reply = Response::new(Full::new(Bytes::from(bytes)));
    let headers = reply.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(value) = HeaderValue::from_str(codec) {
        headers.insert(http::header::CONTENT_ENCODING, value);
    }
    reply
}

/// `body` in `codec`; `None` for a codec this server does not know.
fn encode(codec: &str, body: &[u8]) -> Option<Vec<u8>> {
    use std::io::Write;
    let out = match codec {
        "gzip" => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(body).ok()?;
            e.finish().ok()?
        }
        "deflate" => {
            let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(body).ok()?;
            e.finish().ok()?
        }
        "br" => {
            let mut out = Vec::new();
            {
                let mut e = brotli::CompressorWriter::new(&mut out, 4096, 5, 22);
                e.write_all(body).ok()?;
                e.flush().ok()?;
            }
            out
        }
        "zstd" => zstd::encode_all(body, 3).ok()?,
        _ => return None,
    };
    Some(out)
}

/// `size` zero bytes in `codec`, encoded a megabyte at a time.
fn encode_zeros(codec: &str, size: usize) -> Option<Vec<u8>> {
    use std::io::Write;
    let chunk = vec![0u8; 1 << 20];
    let feed = |w: &mut dyn Write| -> Option<()> {
        let mut left = size;
        while left > 0 {
            let n = left.min(chunk.len());
            w.write_all(&chunk[..n]).ok()?;
            left -= n;
        }
        Some(())
    };
    let out = match codec {
        "gzip" => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
            feed(&mut e)?;
            e.finish().ok()?
        }
        "deflate" => {
            let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
            feed(&mut e)?;
            e.finish().ok()?
        }
        "br" => {
            let mut out = Vec::new();
            {
                let mut e = brotli::CompressorWriter::new(&mut out, 1 << 16, 1, 22);
                feed(&mut e)?;
                e.flush().ok()?;
            }
            out
        }
        "zstd" => {
            let mut e = zstd::stream::write::Encoder::new(Vec::new(), 1).ok()?;
            feed(&mut e)?;
            e.finish().ok()?
        }
        _ => return None,
    };
    Some(out)
}

/// The routes that stream, either way (`/huge`, `/endless`, `/multipart`),
/// counted here; any other request is handed back.
async fn streamed_route(
    state: &State,
    req: Request<Incoming>,
) -> Result<Response<Served>, Request<Incoming>> {
    let path = req.uri().path();
    let route = match (req.method(), path) {
        (&Method::GET, "/huge" | "/endless") | (&Method::POST, "/multipart") => path.to_owned(),
        _ => return Err(req),
    };
    state.total.fetch_add(1, Ordering::Relaxed);
    {
        let mut stats = lock(&state.stats);
        let entry = stats.entry(route.clone()).or_default();
        entry.count += 1;
        entry.last = Some(RecordedRequest {
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
            headers: req.headers().clone(),
            body: Bytes::new(),
        });
    }
    let chunk = |default: usize| match query_u64(req.uri(), "chunk") {
        Some(Some(n)) if n > 0 => usize::try_from(n).unwrap_or(default).min(1 << 24),
        _ => default,
    };
    let octets = |lazy: Lazy| {
        let mut response = Response::new(Served::Lazy(lazy));
        response.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        response
    };
    Ok(match route.as_str() {
        "/huge" => {
            let size = match query_u64(req.uri(), "size") {
                Some(Some(n)) => n,
                Some(None) => 1 << 20,
                None => return Ok(bad_request("size must be a number").map(Served::Whole)),
            };
            octets(Lazy::new(chunk(64 << 10), Some(size)))
        }
        "/endless" => octets(Lazy::new(chunk(16 << 10), None)),
        _ => multipart_echo(req).await.map(Served::Whole),
    })
}

/// A body made as it is sent: `chunk` bytes at a time, `left` in all
/// (`None`: without end).
struct Lazy {
    chunk: Bytes,
    left: Option<u64>,
}

impl Lazy {
    fn new(chunk: usize, left: Option<u64>) -> Self {
        let pattern = b"0123456789abcdef";
        let chunk: Vec<u8> = pattern.iter().copied().cycle().take(chunk).collect();
        Lazy {
            chunk: Bytes::from(chunk),
            left,
        }
    }

    fn next(&mut self) -> Option<Bytes> {
        match &mut self.left {
            None => Some(self.chunk.clone()),
            Some(0) => None,
            Some(left) => {
                let n =
                    usize::try_from(*left).map_or(self.chunk.len(), |l| l.min(self.chunk.len()));
                *left -= n as u64;
                Some(self.chunk.slice(..n))
            }
        }
    }
}

/// `POST /multipart`: each part's name, file name, content type, size and
/// SHA-256, read as the body arrives.
async fn multipart_echo(req: Request<Incoming>) -> Reply {
    use sha2::Digest;

    let boundary = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| multer::parse_boundary(v).ok());
    let Some(boundary) = boundary else {
        return bad_request("not a multipart/form-data body");
    };
    let stream = http_body_util::BodyDataStream::new(req.into_body());
    let mut multipart = multer::Multipart::new(stream, boundary);
    let mut parts = Vec::new();
    loop {
        let mut field = match multipart.next_field().await {
            Ok(Some(field)) => field,
            Ok(None) => break,
            Err(e) => return bad_request(&e.to_string()),
        };
        let name = field.name().map(str::to_owned);
        let file_name = field.file_name().map(str::to_owned);
        let content_type = field.content_type().map(ToString::to_string);
        let mut hash = sha2::Sha256::new();
        let mut size: u64 = 0;
        loop {
            match field.chunk().await {
                Ok(Some(chunk)) => {
                    size += chunk.len() as u64;
                    hash.update(&chunk);
                }
                Ok(None) => break,
                Err(e) => return bad_request(&e.to_string()),
            }
        }
        let digest: String = hash.finalize().iter().map(|b| format!("{b:02x}")).collect();
        parts.push(json!({
            "name": name,
            "file_name": file_name,
            "content_type": content_type,
            "size": size,
            "sha256": digest,
        }));
    }
    json_reply(StatusCode::OK, &json!({ "parts": parts }))
}
