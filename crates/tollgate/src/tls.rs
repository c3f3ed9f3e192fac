//! TLS settings of the built-in transport (feature `rustls`): the roots
//! trusted (Mozilla's from webpki-roots by default, the platform's with the
//! `native-roots` feature, and the caller's own), a client certificate
//! ([`Identity`], for mutual TLS), or a caller's whole
//! `rustls::ClientConfig`.

use std::fmt;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::{Error, ErrorKind};

/// A client certificate chain and its private key, for servers that ask
/// for one (mutual TLS): [`ClientBuilder::identity`](crate::ClientBuilder::identity).
///
/// Its `Debug` shows how many certificates it has, never the key.
///
/// ```
/// let err = tollgate::Identity::from_pem(b"not a pem").unwrap_err();
/// assert_eq!(err.kind(), tollgate::ErrorKind::Builder);
/// ```
pub struct Identity {
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Identity {
            certs: self.certs.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("certificates", &self.certs.len())
            .field("key", &"<redacted>")
            .finish()
    }
}

impl Identity {
    /// Reads a PEM buffer holding the certificate chain (the client's own
    /// certificate first) and one private key (PKCS#8, PKCS#1 or SEC1), in
    /// any order, as reqwest's `Identity::from_pem` does.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Builder`] when the buffer has no certificate, no private
    /// key, or a PEM section that does not decode. The message never
    /// shows the key. Whether the key belongs to the certificate is checked
    /// by [`ClientBuilder::build`](crate::ClientBuilder::build).
    pub fn from_pem(pem: &[u8]) -> Result<Identity, Error> {
        let bad = |what: &str| Error::new(ErrorKind::Builder, format!("client identity: {what}"));
        let certs = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| bad("a certificate in the PEM does not decode"))?;
        if certs.is_empty() {
            return Err(bad("no certificate in the PEM"));
        }
        let key = PrivateKeyDer::from_pem_slice(pem)
            .map_err(|_| bad("no private key that decodes in the PEM"))?;
        Ok(Identity { certs, key })
    }
}

/// The TLS options set on the builder.
#[derive(Clone)]
pub(crate) struct TlsOptions {
    pub(crate) webpki_roots: bool,
    pub(crate) native_roots: bool,
    pub(crate) identity: Option<Identity>,
    pub(crate) custom: Option<Arc<rustls::ClientConfig>>,
    /// Whether any option besides `custom` was set, which a caller's own
    /// config would silently override.
    pub(crate) touched: bool,
}

impl Default for TlsOptions {
    fn default() -> Self {
        TlsOptions {
            webpki_roots: true,
            native_roots: false,
            identity: None,
            custom: None,
            touched: false,
        }
    }
}

impl fmt::Debug for TlsOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsOptions")
            .field("webpki_roots", &self.webpki_roots)
            .field("native_roots", &self.native_roots)
            .field("identity", &self.identity)
            .field("custom_config", &self.custom.is_some())
            .finish()
    }
}

/// The ALPN protocols offered when the caller's config names none.
fn default_alpn() -> Vec<Vec<u8>> {
    if cfg!(feature = "http2") {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    }
}

/// The TLS set-up towards origins (ALPN set) and towards an `https://`
/// proxy (no ALPN: the proxy is spoken to in HTTP/1.1, and no client
/// certificate: the origin's identity is not the proxy's business, unless
/// the caller's own config says otherwise).
pub(crate) fn client_configs(
    extra_roots: &[Vec<u8>],
    opts: &TlsOptions,
) -> Result<(rustls::ClientConfig, rustls::ClientConfig), Error> {
    if let Some(custom) = &opts.custom {
        if opts.touched || !extra_roots.is_empty() {
            return Err(Error::new(
                ErrorKind::Builder,
                "use_rustls_config replaces every other TLS setting: it cannot be combined with \
                 add_root_certificate_der, identity or tls_built_in_*",
            ));
        }
        let mut origin = (**custom).clone();
        if origin.alpn_protocols.is_empty() {
            origin.alpn_protocols = default_alpn();
        } else if !cfg!(feature = "http2") {
            // HTTP/2 is not compiled in: a negotiated h2 could not be spoken.
            origin.alpn_protocols.retain(|p| p != b"h2");
        }
        let mut proxy = (**custom).clone();
        proxy.alpn_protocols.clear();
        return Ok((origin, proxy));
    }
    let mut roots = rustls::RootCertStore::empty();
    if opts.webpki_roots {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    #[cfg(feature = "native-roots")]
    if opts.native_roots {
        // Certificates the platform store has but rustls cannot parse are
        // skipped, as reqwest and hyper-rustls do; a store with none at all
        // is reported below if nothing else is trusted.
        let native = rustls_native_certs::load_native_certs();
        roots.add_parsable_certificates(native.certs);
    }
    for der in extra_roots {
        roots.add(CertificateDer::from(der.clone())).map_err(|e| {
            Error::new(ErrorKind::Builder, "invalid root certificate").with_source(e)
        })?;
    }
    if roots.is_empty() {
        return Err(Error::new(
            ErrorKind::Builder,
            "no root certificate to trust: Mozilla's roots are off and neither the platform's \
             store nor add_root_certificate_der gave any",
        ));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::new(ErrorKind::Builder, "TLS set-up failed").with_source(e))?
        .with_root_certificates(roots);
    let proxy = builder.clone().with_no_client_auth();
    let mut origin = match &opts.identity {
        Some(identity) => builder
            .with_client_auth_cert(identity.certs.clone(), identity.key.clone_key())
            .map_err(|e| {
                Error::new(
                    ErrorKind::Builder,
                    format!("client identity: the key does not fit the certificate ({e})"),
                )
            })?,
        None => builder.with_no_client_auth(),
    };
    origin.alpn_protocols = default_alpn();
    Ok((origin, proxy))
}
