//! [`TlsFront`]: TLS in front of a plain loopback server, for HTTPS, proxy
//! and mutual-TLS tests (feature `tls`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// A TLS-terminating front on `127.0.0.1`: each connection's TLS is
/// accepted with a fresh self-signed certificate (for `127.0.0.1` and
/// `localhost`), then its plain bytes are copied to and from `upstream`
/// (a [`FakeApi`](crate::FakeApi), an [`HttpProxy`](crate::HttpProxy), ...),
/// so HTTP/1.1 and HTTP/2 both pass as the ALPN offered decides. It stops
/// when dropped.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> std::io::Result<()> {
/// use tollgate_testkit::{FakeApi, TlsFront};
///
/// let api = FakeApi::start().await?;
/// let front = TlsFront::builder(api.addr()).start().await?;
/// assert!(front.url().starts_with("https://127.0.0.1:"));
/// // Trust `front.root()` (DER) or `front.root_pem()` in the client.
/// assert!(front.root_pem().starts_with("-----BEGIN CERTIFICATE-----"));
/// # Ok(())
/// # }
/// ```
pub struct TlsFront {
    addr: SocketAddr,
    root: CertificateDer<'static>,
    root_pem: String,
    handshakes: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

/// Builds a [`TlsFront`]: the ALPN protocols offered (`h2` and
/// `http/1.1` by default) and the CA a client certificate must chain to
/// (none asked by default).
pub struct TlsFrontBuilder {
    upstream: SocketAddr,
    alpn: Vec<Vec<u8>>,
    client_ca: Option<CertificateDer<'static>>,
}

impl TlsFrontBuilder {
    /// The ALPN protocols the front offers, in order (empty: none, so the
    /// client speaks HTTP/1.1).
    pub fn alpn(mut self, protocols: &[&[u8]]) -> Self {
        self.alpn = protocols.iter().map(|p| p.to_vec()).collect();
        self
    }

    /// Requires a client certificate that chains to `ca` (mutual TLS): a
    /// handshake without one fails.
    pub fn client_ca(mut self, ca: CertificateDer<'static>) -> Self {
        self.client_ca = Some(ca);
        self
    }

    /// Binds a free loopback port and starts accepting.
    ///
    /// # Errors
    ///
    /// The port could not be bound, or the certificate or the TLS
    /// configuration could not be made (as `io::Error`s of kind `Other`).
    pub async fn start(self) -> std::io::Result<TlsFront> {
        let other = |e: &dyn std::fmt::Display| std::io::Error::other(e.to_string());
        let certified = rcgen::generate_simple_self_signed(vec![
            "127.0.0.1".to_owned(),
            "localhost".to_owned(),
        ])
        .map_err(|e| other(&e))?;
        let root = certified.cert.der().clone();
        let root_pem = certified.cert.pem();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            certified.signing_key.serialize_der(),
        ));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| other(&e))?;
        let builder = match self.client_ca {
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                roots.add(ca).map_err(|e| other(&e))?;
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .map_err(|e| other(&e))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(vec![root.clone()], key)
            .map_err(|e| other(&e))?;
        config.alpn_protocols = self.alpn;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let handshakes = Arc::new(AtomicU64::new(0));
        let counted = Arc::clone(&handshakes);
        let upstream = self.upstream;
        let task = tokio::spawn(async move {
            // The connections end with the accept loop (when the front drops).
            let mut connections = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((tcp, _)) = accepted else { continue };
                        let acceptor = acceptor.clone();
                        let counted = Arc::clone(&counted);
                        connections.spawn(async move {
                            let Ok(mut tls) = acceptor.accept(tcp).await else {
                                return;
                            };
                            counted.fetch_add(1, Ordering::Relaxed);
                            let Ok(mut up) = TcpStream::connect(upstream).await else {
                                return;
                            };
                            let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
                        });
                    }
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
        });
        Ok(TlsFront {
            addr,
            root,
            root_pem,
            handshakes,
            task,
        })
    }
}

impl TlsFront {
    /// A front for `upstream` (see [`TlsFrontBuilder`]).
    pub fn builder(upstream: SocketAddr) -> TlsFrontBuilder {
        TlsFrontBuilder {
            upstream,
            alpn: vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            client_ca: None,
        }
    }

    /// The address the front listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `https://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// The front's self-signed certificate (DER): trust it as a root.
    pub fn root(&self) -> &CertificateDer<'static> {
        &self.root
    }

    /// The same certificate as PEM.
    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    /// TLS handshakes completed so far.
    pub fn handshakes(&self) -> u64 {
        self.handshakes.load(Ordering::Relaxed)
    }
}

impl std::fmt::Debug for TlsFront {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsFront")
            .field("addr", &self.addr)
            .field("handshakes", &self.handshakes())
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for TlsFrontBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsFrontBuilder")
            .field("upstream", &self.upstream)
            .field("client_ca", &self.client_ca.is_some())
            .finish_non_exhaustive()
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        self.task.abort();
    }
}
