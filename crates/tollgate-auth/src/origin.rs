//! [`Origin`]: where credentials may go.

use std::fmt;
use std::str::FromStr;

use http::Uri;

/// A scheme, host and port (RFC 6454): the only place a layer's credentials
/// are sent.
///
/// A request matches when its URI has the same scheme, the same host (ASCII
/// case-insensitive) and the same port, the scheme's default port standing in
/// for an absent one. `https://api.example.com` matches
/// `https://API.example.com:443/v1/users` but not `http://api.example.com`,
/// `https://api.example.com:8443` or `https://evil.example.com`.
///
/// ```
/// use tollgate_auth::Origin;
///
/// let origin: Origin = "https://api.example.com/v1".parse()?;
/// assert!(origin.matches(&"https://API.example.com:443/v1/users".parse()?));
/// assert!(!origin.matches(&"http://api.example.com/v1/users".parse()?));
/// assert!(!origin.matches(&"https://api.example.com.evil.net/".parse()?));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Origin {
    https: bool,
    host: String,
    port: u16,
    /// `host:port`, to compare with a request's authority as it is.
    host_port: String,
}

/// A URL that has no origin credentials could be scoped to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid origin: {0}")]
pub struct InvalidOrigin(&'static str);

impl Origin {
    /// The origin of an absolute `http` or `https` URL; its path, query and
    /// fragment are ignored.
    ///
    /// # Errors
    ///
    /// A URL that does not parse, is not `http` or `https`, has no host, or
    /// carries user information.
    pub fn parse(url: &str) -> Result<Origin, InvalidOrigin> {
        let uri: Uri = url.parse().map_err(|_| InvalidOrigin("not a valid URL"))?;
        let authority = uri.authority().ok_or(InvalidOrigin("no host"))?;
        if authority.as_str().contains('@') {
            return Err(InvalidOrigin("the URL carries user information"));
        }
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(InvalidOrigin("the scheme is not http or https")),
        };
        let host = authority.host();
        if host.is_empty() {
            return Err(InvalidOrigin("no host"));
        }
        let host = host.to_ascii_lowercase();
        let port = authority.port_u16().unwrap_or(default_port(https));
        Ok(Origin {
            https,
            host_port: format!("{host}:{port}"),
            host,
            port,
        })
    }

    /// Whether `uri` is on this origin. A URI without a scheme or host (a
    /// path alone) is not.
    pub fn matches(&self, uri: &Uri) -> bool {
        let scheme = if self.https { "https" } else { "http" };
        if uri.scheme_str() != Some(scheme) {
            return false;
        }
        let Some(authority) = uri.authority() else {
            return false;
        };
        // The authority as written: `host` (default port) or `host:port`.
        // One with user information (`user@host`, a classic way to make one
        // host look like another) equals neither, so it never matches.
        let written = authority.as_str();
        written.eq_ignore_ascii_case(&self.host_port)
            || (self.port == default_port(self.https) && written.eq_ignore_ascii_case(&self.host))
    }
}

fn default_port(https: bool) -> u16 {
    if https {
        443
    } else {
        80
    }
}

impl FromStr for Origin {
    type Err = InvalidOrigin;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Origin::parse(s)
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.https { "https" } else { "http" };
        write!(f, "{scheme}://{}:{}", self.host, self.port)
    }
}

impl fmt::Debug for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Origin({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uri(s: &str) -> Uri {
        s.parse().expect("uri")
    }

    #[test]
    fn same_origin_only() {
        let o = Origin::parse("http://127.0.0.1:8080/base").expect("origin");
        assert!(o.matches(&uri("http://127.0.0.1:8080/other?q=1")));
        assert!(!o.matches(&uri("http://127.0.0.1:8081/base")));
        assert!(!o.matches(&uri("https://127.0.0.1:8080/base")));
        assert!(!o.matches(&uri("http://localhost:8080/base")));
        assert!(!o.matches(&uri("/base")));
        assert!(!o.matches(&uri("http://x@127.0.0.1:8080/base")));
        assert!(!o.matches(&uri("http://127.0.0.1:8080@evil.example/base")));
        assert!(!o.matches(&uri("http://127.0.0.1/base")));
        let v6 = Origin::parse("http://[::1]:9000").expect("origin");
        assert!(v6.matches(&uri("http://[::1]:9000/x")));
        assert!(!v6.matches(&uri("http://[::2]:9000/x")));
        let default = Origin::parse("http://API.test").expect("origin");
        assert!(default.matches(&uri("http://api.test/x")));
        assert!(default.matches(&uri("http://api.test:80/x")));
        assert!(!default.matches(&uri("http://api.test:8080/x")));
        let o = Origin::parse("https://Example.COM").expect("origin");
        assert!(o.matches(&uri("https://example.com:443/")));
        assert!(!o.matches(&uri("https://example.com.attacker.net/")));
        assert_eq!(o.to_string(), "https://example.com:443");
    }

    #[test]
    fn bad_origins() {
        for bad in ["", "/path", "ftp://h", "https://user:pw@h", "not a url"] {
            assert!(Origin::parse(bad).is_err(), "{bad}");
        }
    }
}
