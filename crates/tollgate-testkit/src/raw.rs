//! [`RawServer`]: an HTTP/1.1 server that writes exactly the bytes a test
//! gives it, for answers no well-behaved server sends (two
//! `Content-Encoding` lines, a transfer coding hyper leaves alone, a body cut
//! or trickled at a chosen byte, a wrong `Content-Length`).
//!
//! ```
//! use tollgate_testkit::{response, Piece, RawServer};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let raw = RawServer::start(|seen| {
//!     let body = format!("you asked for {}", seen.path());
//!     vec![Piece::Bytes(response("200 OK", &[("x-odd", "yes")], body.as_bytes()))]
//! })
//! .await;
//! // ... point a client at `raw.url()`; then assert on `raw.hits()` and
//! // `raw.seen()`.
//! assert_eq!(raw.hits(), 0);
//! # }
//! ```

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// One step of a [`RawServer`]'s answer, written or done in order.
#[derive(Clone, Debug)]
pub enum Piece {
    /// Bytes written and flushed.
    Bytes(Vec<u8>),
    /// Bytes shared between answers (no copy per answer), written.
    Shared(Bytes),
    /// A pause (on tokio's clock).
    Sleep(Duration),
    /// The connection closed (after a shutdown of the write side).
    Close,
}

/// A request head a [`RawServer`] received.
#[derive(Clone, Debug)]
pub struct Seen {
    /// The request line and the header lines, as sent, with the blank line.
    pub head: String,
}

impl Seen {
    /// The request target's path, without its query.
    pub fn path(&self) -> &str {
        let target = self.head.split(' ').nth(1).unwrap_or_default();
        target.split('?').next().unwrap_or_default()
    }

    /// The first value of a header, by name without case, trimmed.
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    }
}

type Handler = dyn Fn(&Seen) -> Vec<Piece> + Send + Sync;

/// An HTTP/1.1 server on `127.0.0.1` that answers each request head with
/// the [`Piece`]s its handler returns, byte for byte, keeping the
/// connection for the next request unless told to close. Request bodies are
/// not read: it is for clients that send none.
#[derive(Debug)]
pub struct RawServer {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl RawServer {
    /// Binds a free loopback port and serves on tasks of the current
    /// runtime.
    ///
    /// # Panics
    ///
    /// When no loopback port can be bound (a test fixture's set-up).
    pub async fn start(handler: impl Fn(&Seen) -> Vec<Piece> + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let hits = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Handler> = Arc::new(handler);
        let (h, s) = (hits.clone(), seen.clone());
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                tokio::spawn(serve(sock, handler.clone(), h.clone(), s.clone()));
            }
        });
        RawServer { addr, hits, seen }
    }

    /// The server's base URL, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Request heads received so far.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// Every request head received so far, in order.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

async fn serve(
    mut sock: tokio::net::TcpStream,
    handler: Arc<Handler>,
    hits: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<Seen>>>,
) {
    let mut buf = Vec::new();
    loop {
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            match sock.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end);
        let req = Seen { head };
        hits.fetch_add(1, Ordering::SeqCst);
        seen.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(req.clone());
        for piece in handler(&req) {
            match piece {
                Piece::Bytes(b) => {
                    if sock.write_all(&b).await.is_err() {
                        return;
                    }
                    let _ = sock.flush().await;
                }
                Piece::Shared(b) => {
                    if sock.write_all(&b).await.is_err() {
                        return;
                    }
                }
                Piece::Sleep(d) => tokio::time::sleep(d).await,
                Piece::Close => {
                    let _ = sock.shutdown().await;
                    return;
                }
            }
        }
    }
}

/// A response's bytes: the status line, the headers as given, a
/// `Content-Length` of the body unless the headers name one (or a
/// `Transfer-Encoding`) or the status is `204` or `304`, and the body.
pub fn response(status: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status}\r\n").into_bytes();
    for (n, v) in headers {
        out.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
    }
    let framed = headers.iter().any(|(n, _)| {
        n.eq_ignore_ascii_case("content-length") || n.eq_ignore_ascii_case("transfer-encoding")
    });
    let bodyless = status.starts_with("204") || status.starts_with("304");
    if !framed && !bodyless {
        out.extend_from_slice(format!("content-length: {}\r\n", body.len()).as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}
