//! [`ClientCredentials`]: OAuth2's client-credentials grant (RFC 6749 §4.4).

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Response, Uri};
use http_body::Body;
use http_body_util::Full;
use serde::Deserialize;
use tower::{BoxError, Service, ServiceExt};

use crate::token::{Token, TokenFuture, TokenSource};
use tollgate_core::{read_body, Credential, InvalidCredential};

/// The largest token response read (64 KiB).
pub const MAX_TOKEN_RESPONSE: usize = 64 << 10;

/// A [`TokenSource`] that asks an OAuth2 token endpoint for an access token
/// with the client-credentials grant, over any HTTP service `S` (a
/// hyper-util client; the `tollgate` facade passes its own connection pool).
///
/// The client authenticates with HTTP Basic (`client_secret_basic`, the
/// default RFC 6749 §2.3.1 asks servers to support), or with the id and
/// secret in the form body ([`secret_in_body`](Self::secret_in_body)). The
/// answer's `access_token` becomes a bearer token that lives `expires_in`
/// seconds. A status other than 2xx, a body that is not the JSON expected, or
/// a `token_type` other than `Bearer` is an error; the error never includes
/// the body, which could hold a token.
///
/// ```
/// use bytes::Bytes;
/// use http::{Request, Response};
/// use http_body_util::Full;
/// use tower::service_fn;
/// use tollgate_auth::{AuthLayer, ClientCredentials};
///
/// let token_endpoint = service_fn(|_req: Request<Full<Bytes>>| async {
///     let body = r#"{"access_token":"t0k3n","token_type":"Bearer","expires_in":3600}"#;
///     Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(body))))
/// });
/// let source = ClientCredentials::new(token_endpoint, "https://auth.example.com/token".parse()?, "my-id", "my-secret")?
///     .scope("read:users");
/// let layer = AuthLayer::token_source(source).origin("https://api.example.com".parse()?);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct ClientCredentials<S> {
    service: S,
    token_url: Uri,
    client_id: String,
    client_secret: String,
    basic: Credential,
    scope: Option<String>,
    secret_in_body: bool,
}

impl<S> fmt::Debug for ClientCredentials<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCredentials")
            .field("token_url", &RedactedUrl(&self.token_url))
            .field("client_id", &self.client_id)
            .field("client_secret", &"[redacted]")
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

/// A URL shown without its user information or query, either of which can
/// carry a secret (`https://id:secret@...`, `?client_secret=...`).
struct RedactedUrl<'a>(&'a Uri);

impl fmt::Debug for RedactedUrl<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let uri = self.0;
        if let Some(scheme) = uri.scheme_str() {
            write!(f, "{scheme}://")?;
        }
        if let Some(authority) = uri.authority() {
            if authority.as_str().contains('@') {
                f.write_str("[redacted]@")?;
            }
            f.write_str(authority.host())?;
            if let Some(port) = authority.port_u16() {
                write!(f, ":{port}")?;
            }
        }
        f.write_str(uri.path())?;
        if uri.query().is_some() {
            f.write_str("?[redacted]")?;
        }
        Ok(())
    }
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    token_type: Option<String>,
    #[serde(default)]
    expires_in: Option<u64>,
}

/// The token endpoint's answer was not a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("oauth2 token endpoint: {0}")]
pub struct TokenEndpointError(String);

/// The form `application/x-www-form-urlencoded` encoding of one part of the
/// Basic credential (RFC 6749 §2.3.1 asks for it before base64).
fn form_encode(value: &str) -> String {
    serde_urlencoded::to_string([("", value)])
        .map(|s| s[1..].to_owned())
        .unwrap_or_default()
}

impl<S> ClientCredentials<S> {
    /// Tokens for `client_id` from `token_url`, asked through `service`.
    ///
    /// # Errors
    ///
    /// An id or secret with a control character, or an empty id.
    pub fn new(
        service: S,
        token_url: Uri,
        client_id: impl Into<String>,
        client_secret: impl Into<String>,
    ) -> Result<Self, InvalidCredential> {
        let (client_id, client_secret) = (client_id.into(), client_secret.into());
        // Form encoding would make any byte safe to send; a control
        // character is refused all the same, as in every other credential
        // (it is a mistake in the configuration, not a secret).
        if client_id
            .chars()
            .chain(client_secret.chars())
            .any(char::is_control)
        {
            return Err(InvalidCredential::new(
                "client id or secret",
                "contains a control character (CR, LF, NUL, ...)",
            ));
        }
        let basic = Credential::basic(form_encode(&client_id), form_encode(&client_secret))
            .map_err(|_| {
                InvalidCredential::new("client id or secret", "is empty or has a control character")
            })?;
        Ok(ClientCredentials {
            service,
            token_url,
            client_id,
            client_secret,
            basic,
            scope: None,
            secret_in_body: false,
        })
    }

    /// Asks for this scope (space-separated scopes, as OAuth2 writes them).
    pub fn scope(mut self, scope: impl Into<String>) -> Self {
        self.scope = Some(scope.into());
        self
    }

    /// Sends the id and secret in the form body (`client_secret_post`)
    /// rather than in a Basic `Authorization` header.
    pub fn secret_in_body(mut self) -> Self {
        self.secret_in_body = true;
        self
    }

    fn request(&self) -> Result<Request<Full<Bytes>>, BoxError> {
        let mut form: Vec<(&str, &str)> = vec![("grant_type", "client_credentials")];
        if let Some(scope) = &self.scope {
            form.push(("scope", scope));
        }
        if self.secret_in_body {
            form.push(("client_id", &self.client_id));
            form.push(("client_secret", &self.client_secret));
        }
        let body = serde_urlencoded::to_string(&form)?;
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(self.token_url.clone())
            .header(
                CONTENT_TYPE,
                HeaderValue::from_static("application/x-www-form-urlencoded"),
            )
            .header(ACCEPT, HeaderValue::from_static("application/json"))
            .body(Full::new(Bytes::from(body)))?;
        if !self.secret_in_body {
            self.basic.apply(&mut request, true);
        }
        Ok(request)
    }
}

async fn read_token<B>(response: Response<B>) -> Result<Token, BoxError>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    let status = response.status();
    if !status.is_success() {
        return Err(Box::new(TokenEndpointError(format!("status {status}"))));
    }
    // Over the limit, the answer is not a token; a read that failed keeps its
    // own error (a reset, a timeout), so it is read as the transport failure
    // it is.
    let body = read_body(response.into_body(), MAX_TOKEN_RESPONSE)
        .await
        .map_err(|e| -> BoxError {
            if e.is_too_large() {
                Box::new(TokenEndpointError("the answer is over 64 KiB".into()))
            } else {
                Box::new(e)
            }
        })?;
    let parsed: TokenResponse = serde_json::from_slice(&body)
        .map_err(|_| TokenEndpointError("the answer is not a token response".into()))?;
    if let Some(kind) = &parsed.token_type {
        if !kind.eq_ignore_ascii_case("bearer") {
            return Err(Box::new(TokenEndpointError(
                "the token type is not Bearer".into(),
            )));
        }
    }
    let token = Token::bearer(&parsed.access_token)?;
    Ok(match parsed.expires_in {
        Some(secs) => token.expires_in(Duration::from_secs(secs.min(u64::from(u32::MAX)))),
        None => token,
    })
}

impl<S, B> TokenSource for ClientCredentials<S>
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    fn token(&self) -> TokenFuture<'_> {
        Box::pin(async move {
            let request = self.request()?;
            let response = self
                .service
                .clone()
                .oneshot(request)
                .await
                .map_err(Into::into)?;
            read_token(response).await
        })
    }
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use http_body::{Frame, SizeHint};

    use super::*;

    /// A token answer that sends `prefix`, then fails with `error` (or
    /// declares `declared` bytes).
    struct Answer {
        prefix: Option<Bytes>,
        error: Option<std::io::ErrorKind>,
        declared: Option<u64>,
    }

    impl Body for Answer {
        type Data = Bytes;
        type Error = std::io::Error;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
            if let Some(prefix) = self.prefix.take() {
                return Poll::Ready(Some(Ok(Frame::data(prefix))));
            }
            Poll::Ready(self.error.take().map(|kind| Err(kind.into())))
        }
        fn size_hint(&self) -> SizeHint {
            self.declared.map(SizeHint::with_exact).unwrap_or_default()
        }
    }

    #[tokio::test]
    async fn a_token_answer_cut_short_keeps_the_transport_error() {
        let answer = Answer {
            prefix: Some(Bytes::from_static(b"{\"access_token\":")),
            error: Some(std::io::ErrorKind::ConnectionReset),
            declared: None,
        };
        let err = read_token(Response::new(answer)).await.expect_err("cut");
        let read = err
            .downcast_ref::<tollgate_core::ReadBodyError>()
            .expect("a read error");
        let io = std::error::Error::source(read).and_then(|e| e.downcast_ref::<std::io::Error>());
        assert_eq!(
            io.map(std::io::Error::kind),
            Some(std::io::ErrorKind::ConnectionReset)
        );
        assert_eq!(
            tollgate_core::TransportFailure::classify(&*err),
            Some(tollgate_core::TransportFailure::ResetMidBody)
        );
    }

    #[tokio::test]
    async fn a_token_answer_over_the_limit_is_refused_before_reading() {
        let answer = Answer {
            prefix: None,
            error: None,
            declared: Some(MAX_TOKEN_RESPONSE as u64 + 1),
        };
        let err = read_token(Response::new(answer))
            .await
            .expect_err("too large");
        assert_eq!(
            err.downcast_ref::<TokenEndpointError>(),
            Some(&TokenEndpointError("the answer is over 64 KiB".into()))
        );
        let fits = Answer {
            prefix: Some(Bytes::from_static(b"{\"access_token\":\"t0k3n\"}")),
            error: None,
            declared: None,
        };
        assert!(read_token(Response::new(fits)).await.is_ok());
    }
}
