//! [`HttpProxy`] and [`Socks5Proxy`]: forward proxies on loopback, for
//! testing a client's proxy support. Each counts its connections and
//! records what it was asked (CONNECT targets, absolute-form requests,
//! SOCKS5 targets) and the credentials it saw, so a test can assert what
//! reached the proxy and, with a [`FakeApi`](crate::FakeApi) behind it, what
//! reached the origin.
//!
//! They only ever bind `127.0.0.1` and only ever connect to loopback
//! addresses: a target that resolves elsewhere is refused (`502` from the
//! HTTP proxy, "connection not allowed" from the SOCKS5 one).

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use base64::Engine;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// The largest request head the HTTP proxy reads.
const MAX_HEAD: usize = 16 * 1024;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Connects to `target` (`host:port`) if it resolves to a loopback address.
async fn connect_loopback(target: &str) -> io::Result<TcpStream> {
    let addr = tokio::net::lookup_host(target)
        .await?
        .find(|a| a.ip().is_loopback())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::PermissionDenied,
                "the testkit's proxies only connect to loopback",
            )
        })?;
    TcpStream::connect(addr).await
}

/// Accepts connections until dropped, each handled by `handle`.
fn serve<S, F, Fut>(listener: TcpListener, state: Arc<S>, handle: F) -> JoinHandle<()>
where
    S: Send + Sync + 'static,
    F: Fn(TcpStream, Arc<S>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        // The connections end with the accept loop (when the proxy drops).
        let mut connections = JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    if let Ok((tcp, _)) = accepted {
                        connections.spawn(handle(tcp, Arc::clone(&state)));
                    }
                }
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
    })
}

/// An HTTP forward proxy on loopback: `CONNECT host:port` opens a tunnel,
/// and a request in absolute form (`GET http://host:port/path`) is
/// forwarded in origin form, without `Proxy-Authorization`, one request per
/// connection.
///
/// ```
/// use tollgate_testkit::HttpProxy;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> std::io::Result<()> {
/// let proxy = HttpProxy::start().await?;
/// proxy.require_basic_auth("me", "pw");
/// assert!(proxy.url().starts_with("http://127.0.0.1:"));
/// assert_eq!(proxy.connections(), 0);
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct HttpProxy {
    addr: SocketAddr,
    state: Arc<HttpState>,
    task: JoinHandle<()>,
}

#[derive(Debug, Default)]
struct HttpState {
    connections: AtomicU64,
    /// The `Proxy-Authorization` value required, if any.
    required: Mutex<Option<String>>,
    refuse: Mutex<Option<u16>>,
    connects: Mutex<Vec<String>>,
    forwarded: Mutex<Vec<String>>,
    authorizations: Mutex<Vec<Option<String>>>,
    heads: Mutex<Vec<String>>,
}

impl Drop for HttpProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl HttpProxy {
    /// Starts the proxy on a free port of `127.0.0.1`, with no credentials
    /// required.
    ///
    /// # Errors
    ///
    /// The error of binding the port.
    pub async fn start() -> io::Result<HttpProxy> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(HttpState::default());
        let task = serve(listener, Arc::clone(&state), handle_http);
        Ok(HttpProxy { addr, state, task })
    }

    /// Requires `Proxy-Authorization: Basic base64(user:password)`; any
    /// other request gets `407 Proxy Authentication Required`.
    pub fn require_basic_auth(&self, user: &str, password: &str) {
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        *lock(&self.state.required) = Some(format!("Basic {encoded}"));
    }

    /// Answers every request (authorised or not) with this status and
    /// closes, as a proxy whose policy refuses.
    pub fn refuse_with(&self, status: u16) {
        *lock(&self.state.refuse) = Some(status);
    }

    /// The proxy's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// The targets of the `CONNECT` requests received (`host:port`).
    pub fn connect_targets(&self) -> Vec<String> {
        lock(&self.state.connects).clone()
    }

    /// The absolute-form targets of the requests forwarded
    /// (`http://host:port/path`).
    pub fn forwarded(&self) -> Vec<String> {
        lock(&self.state.forwarded).clone()
    }

    /// The `Proxy-Authorization` of each request the proxy read (CONNECT or
    /// forwarded), `None` where there was none.
    pub fn proxy_authorizations(&self) -> Vec<Option<String>> {
        lock(&self.state.authorizations).clone()
    }

    /// Every request head the proxy read, as text: what a proxy can see of
    /// the traffic (a tunnel's content is not in it).
    pub fn heads(&self) -> Vec<String> {
        lock(&self.state.heads).clone()
    }
}

/// Reads a request head: the head's text and the bytes read past it.
async fn read_head(tcp: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            return Some((String::from_utf8_lossy(&buf).into_owned(), rest));
        }
        if buf.len() > MAX_HEAD {
            return None;
        }
        let n = tcp.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn answer(tcp: &mut TcpStream, status: u16, reason: &str, extra: &str) {
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\n{extra}content-length: 0\r\nconnection: close\r\n\r\n"
    );
    let _ = tcp.write_all(head.as_bytes()).await;
    let _ = tcp.shutdown().await;
}

async fn handle_http(mut client: TcpStream, state: Arc<HttpState>) {
    state.connections.fetch_add(1, Ordering::SeqCst);
    let Some((head, rest)) = read_head(&mut client).await else {
        return;
    };
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default().to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let auth = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("proxy-authorization"))
        .map(|(_, v)| v.clone());
    lock(&state.heads).push(head.clone());
    lock(&state.authorizations).push(auth.clone());
    let mut parts = request_line.split(' ');
    let (method, target) = (
        parts.next().unwrap_or_default().to_owned(),
        parts.next().unwrap_or_default().to_owned(),
    );
    let required = lock(&state.required).clone();
    if required.is_some() && auth != required {
        let challenge = "proxy-authenticate: Basic realm=\"testkit\"\r\n";
        return answer(&mut client, 407, "Proxy Authentication Required", challenge).await;
    }
    let refuse = *lock(&state.refuse);
    if let Some(status) = refuse {
        return answer(&mut client, status, "Refused", "").await;
    }
    if method.eq_ignore_ascii_case("CONNECT") {
        lock(&state.connects).push(target.clone());
        let Ok(mut upstream) = connect_loopback(&target).await else {
            return answer(&mut client, 502, "Bad Gateway", "").await;
        };
        if client
            .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
            .await
            .is_err()
            || upstream.write_all(&rest).await.is_err()
        {
            return;
        }
        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
        return;
    }
    let Some(after) = target.strip_prefix("http://") else {
        return answer(&mut client, 400, "Bad Request", "").await;
    };
    lock(&state.forwarded).push(target.clone());
    let (authority, path) = match after.find('/') {
        Some(i) => (&after[..i], &after[i..]),
        None => (after, "/"),
    };
    let Ok(mut upstream) = connect_loopback(authority).await else {
        return answer(&mut client, 502, "Bad Gateway", "").await;
    };
    let mut out = format!("{method} {path} HTTP/1.1\r\n");
    for (name, value) in &headers {
        let hop = ["proxy-authorization", "proxy-connection", "connection"];
        if !hop.iter().any(|h| name.eq_ignore_ascii_case(h)) {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    out.push_str("connection: close\r\n\r\n");
    if upstream.write_all(out.as_bytes()).await.is_err() || upstream.write_all(&rest).await.is_err()
    {
        return;
    }
    // One request per connection: the body goes up while the answer comes
    // down, and the connection closes when the origin closes its side.
    let (mut client_read, mut client_write) = client.into_split();
    let (mut up_read, mut up_write) = upstream.into_split();
    let body = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut client_read, &mut up_write).await;
    });
    let _ = tokio::io::copy(&mut up_read, &mut client_write).await;
    body.abort();
    let _ = client_write.shutdown().await;
}

/// A SOCKS5 proxy on loopback (RFC 1928, the `CONNECT` command), with the
/// username/password method (RFC 1929) when asked for.
///
/// ```
/// use tollgate_testkit::Socks5Proxy;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> std::io::Result<()> {
/// let proxy = Socks5Proxy::start().await?;
/// assert!(proxy.url().starts_with("socks5://127.0.0.1:"));
/// assert!(proxy.targets().is_empty());
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Socks5Proxy {
    addr: SocketAddr,
    state: Arc<SocksState>,
    task: JoinHandle<()>,
}

#[derive(Debug, Default)]
struct SocksState {
    connections: AtomicU64,
    required: Mutex<Option<(String, String)>>,
    targets: Mutex<Vec<String>>,
    credentials: Mutex<Vec<(String, String)>>,
}

impl Drop for Socks5Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Socks5Proxy {
    /// Starts the proxy on a free port of `127.0.0.1`, with no credentials
    /// required.
    ///
    /// # Errors
    ///
    /// The error of binding the port.
    pub async fn start() -> io::Result<Socks5Proxy> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(SocksState::default());
        let task = serve(listener, Arc::clone(&state), handle_socks);
        Ok(Socks5Proxy { addr, state, task })
    }

    /// Requires the username/password method with these credentials.
    pub fn require_auth(&self, user: &str, password: &str) {
        *lock(&self.state.required) = Some((user.to_owned(), password.to_owned()));
    }

    /// The proxy's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `socks5://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("socks5://{}", self.addr)
    }

    /// The connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// The targets asked for, `host:port` as the client sent them: a name
    /// when the client left resolving it to the proxy (`socks5h`), an
    /// address otherwise.
    pub fn targets(&self) -> Vec<String> {
        lock(&self.state.targets).clone()
    }

    /// The username/password pairs the proxy received.
    pub fn credentials(&self) -> Vec<(String, String)> {
        lock(&self.state.credentials).clone()
    }
}

async fn read_bytes<R: AsyncRead + Unpin>(r: &mut R, n: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0; n];
    r.read_exact(&mut buf).await?;
    Ok(buf)
}

async fn reply<W: AsyncWrite + Unpin>(w: &mut W, code: u8, port: u16) -> io::Result<()> {
    let [hi, lo] = port.to_be_bytes();
    w.write_all(&[5, code, 0, 1, 127, 0, 0, 1, hi, lo]).await
}

async fn handle_socks(mut client: TcpStream, state: Arc<SocksState>) {
    state.connections.fetch_add(1, Ordering::SeqCst);
    let _ = socks_session(&mut client, &state).await;
}

async fn socks_session(client: &mut TcpStream, state: &SocksState) -> io::Result<()> {
    let greeting = read_bytes(client, 2).await?;
    if greeting[0] != 5 {
        return Ok(());
    }
    let methods = read_bytes(client, usize::from(greeting[1])).await?;
    let required = lock(&state.required).clone();
    match &required {
        Some((user, password)) => {
            if !methods.contains(&2) {
                return client.write_all(&[5, 0xFF]).await;
            }
            client.write_all(&[5, 2]).await?;
            let head = read_bytes(client, 2).await?;
            let got_user = read_bytes(client, usize::from(head[1])).await?;
            let len = read_bytes(client, 1).await?;
            let got_password = read_bytes(client, usize::from(len[0])).await?;
            let got = (
                String::from_utf8_lossy(&got_user).into_owned(),
                String::from_utf8_lossy(&got_password).into_owned(),
            );
            lock(&state.credentials).push(got.clone());
            if got.0 != *user || got.1 != *password {
                return client.write_all(&[1, 1]).await;
            }
            client.write_all(&[1, 0]).await?;
        }
        None => {
            if !methods.contains(&0) {
                return client.write_all(&[5, 0xFF]).await;
            }
            client.write_all(&[5, 0]).await?;
        }
    }
    let request = read_bytes(client, 4).await?;
    let host = match request[3] {
        1 => {
            let ip = read_bytes(client, 4).await?;
            format!("{}.{}.{}.{}", ip[0], ip[1], ip[2], ip[3])
        }
        3 => {
            let len = read_bytes(client, 1).await?;
            String::from_utf8_lossy(&read_bytes(client, usize::from(len[0])).await?).into_owned()
        }
        4 => {
            let ip = read_bytes(client, 16).await?;
            let octets: [u8; 16] = ip.try_into().unwrap_or([0; 16]);
            format!("[{}]", std::net::Ipv6Addr::from(octets))
        }
        _ => return reply(client, 8, 0).await,
    };
    let port = read_bytes(client, 2).await?;
    let port = u16::from_be_bytes([port[0], port[1]]);
    let target = format!("{host}:{port}");
    lock(&state.targets).push(target.clone());
    if request[1] != 1 {
        return reply(client, 7, 0).await;
    }
    let mut upstream = match connect_loopback(&target).await {
        Ok(upstream) => upstream,
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => return reply(client, 2, 0).await,
        Err(_) => return reply(client, 5, 0).await,
    };
    let local = upstream.local_addr().map_or(0, |a| a.port());
    reply(client, 0, local).await?;
    tokio::io::copy_bidirectional(client, &mut upstream).await?;
    Ok(())
}
