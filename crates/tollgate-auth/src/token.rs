//! Refreshing credentials: [`TokenSource`], [`Token`], and the cache all
//! clones of a layer share.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{PoisonError, RwLock};
use std::time::Duration;

use tokio::time::Instant;
use tower::BoxError;

use crate::credential::{Credential, InvalidCredential};
use crate::error::{AuthError, SharedError};

/// The future a [`TokenSource`] returns.
pub type TokenFuture<'a> = Pin<Box<dyn Future<Output = Result<Token, BoxError>> + Send + 'a>>;

/// Where refreshing credentials come from: an OAuth2 token endpoint
/// ([`ClientCredentials`](crate::ClientCredentials)), a cloud metadata
/// service, a vault.
///
/// The layer calls [`token`](TokenSource::token) when it has no token, when
/// the one it has is within the refresh skew of its expiry, and once after a
/// 401. Calls never overlap: one refresh serves every request waiting for it.
/// For a closure, use [`token_fn`].
pub trait TokenSource: Send + Sync + 'static {
    /// Fetches a new token.
    fn token(&self) -> TokenFuture<'_>;
}

/// A [`TokenSource`] from an async closure.
///
/// ```
/// use std::time::Duration;
/// use tollgate_auth::{token_fn, AuthLayer, Token};
///
/// let source = token_fn(|| async {
///     // Fetch from wherever tokens come from.
///     Ok(Token::bearer("t0k3n")?.expires_in(Duration::from_secs(3600)))
/// });
/// let layer = AuthLayer::token_source(source);
/// ```
pub fn token_fn<F, Fut>(f: F) -> FnTokenSource<F>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Token, BoxError>> + Send + 'static,
{
    FnTokenSource(f)
}

/// The [`TokenSource`] made by [`token_fn`].
#[derive(Clone)]
pub struct FnTokenSource<F>(F);

impl<F> fmt::Debug for FnTokenSource<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FnTokenSource")
    }
}

impl<F, Fut> TokenSource for FnTokenSource<F>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Token, BoxError>> + Send + 'static,
{
    fn token(&self) -> TokenFuture<'_> {
        Box::pin((self.0)())
    }
}

/// A credential from a [`TokenSource`] and how long it lives.
#[derive(Clone)]
pub struct Token {
    pub(crate) credential: Credential,
    pub(crate) expires_in: Option<Duration>,
}

impl Token {
    /// A bearer token (`Authorization: Bearer ...`) that does not expire
    /// until a 401 says so; set its lifetime with
    /// [`expires_in`](Token::expires_in).
    ///
    /// # Errors
    ///
    /// As [`Credential::bearer`].
    pub fn bearer(access_token: impl AsRef<str>) -> Result<Token, InvalidCredential> {
        Ok(Token::new(Credential::bearer(access_token)?))
    }

    /// Any credential as a token.
    pub fn new(credential: Credential) -> Token {
        Token {
            credential,
            expires_in: None,
        }
    }

    /// The token's lifetime from when it was received.
    pub fn expires_in(mut self, lifetime: Duration) -> Token {
        self.expires_in = Some(lifetime);
        self
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("credential", &self.credential)
            .field("expires_in", &self.expires_in)
            .finish()
    }
}

/// The token in use, and which refresh produced it.
#[derive(Clone)]
pub(crate) struct Current {
    pub(crate) credential: Credential,
    expires_at: Option<Instant>,
    pub(crate) generation: u64,
}

impl Current {
    fn expires_within(&self, now: Instant, margin: Duration) -> bool {
        self.expires_at
            .is_some_and(|at| at.saturating_duration_since(now) <= margin)
    }
}

/// The state every clone of a layer shares: the current token, and a lock
/// that lets one refresh run at a time.
pub(crate) struct Tokens {
    source: Box<dyn TokenSource>,
    current: RwLock<Option<Current>>,
    /// Refreshes finished, failed ones included.
    attempts: AtomicU64,
    /// Held while a refresh runs; holds the last refresh's error, which the
    /// requests that waited for it share.
    refresh: tokio::sync::Mutex<Option<AuthError>>,
}

impl Tokens {
    pub(crate) fn new(source: Box<dyn TokenSource>) -> Self {
        Tokens {
            source,
            current: RwLock::new(None),
            attempts: AtomicU64::new(0),
            refresh: tokio::sync::Mutex::new(None),
        }
    }

    fn current(&self) -> Option<Current> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The current token, if it is further than `skew` from its expiry.
    pub(crate) fn fresh(&self, skew: Duration) -> Option<Current> {
        let guard = self.current.read().unwrap_or_else(PoisonError::into_inner);
        let current = guard.as_ref()?;
        if current.expires_at.is_some() && current.expires_within(Instant::now(), skew) {
            return None;
        }
        Some(current.clone())
    }

    /// A token to use, refreshing if needed. `stale` is the generation a 401
    /// was answered to: that token is not used again.
    ///
    /// One refresh runs at a time. A request that waited while another
    /// refreshed takes that refresh's token, or its error, rather than
    /// fetching again. A dropped refresh releases the lock and the next
    /// waiter fetches.
    pub(crate) async fn refresh(
        &self,
        stale: Option<u64>,
        skew: Duration,
        timeout: Duration,
    ) -> Result<Current, AuthError> {
        let seen = self.attempts.load(Ordering::Acquire);
        let mut last_error = self.refresh.lock().await;
        let refreshed_meanwhile = self.attempts.load(Ordering::Acquire) != seen;
        if let Some(current) = self.current() {
            let usable = Some(current.generation) != stale
                && !current.expires_within(Instant::now(), Duration::ZERO);
            let fresh = !current.expires_within(Instant::now(), skew);
            if usable && (fresh || refreshed_meanwhile) {
                return Ok(current);
            }
        }
        if refreshed_meanwhile {
            if let Some(error) = last_error.as_ref() {
                return Err(error.clone());
            }
        }
        tracing::debug!(target: "tollgate_auth", after_unauthorized = stale.is_some(), "refreshing token");
        let started = Instant::now();
        let result = tokio::time::timeout(timeout, self.source.token()).await;
        let generation = self.attempts.fetch_add(1, Ordering::AcqRel) + 1;
        let outcome = match result {
            Ok(Ok(token)) => {
                let current = Current {
                    credential: token.credential,
                    expires_at: token.expires_in.map(|d| started + d),
                    generation,
                };
                *self.current.write().unwrap_or_else(PoisonError::into_inner) =
                    Some(current.clone());
                Ok(current)
            }
            Ok(Err(error)) => Err(AuthError::RefreshFailed(SharedError::new(error))),
            Err(_) => Err(AuthError::RefreshTimedOut(timeout)),
        };
        match &outcome {
            Ok(_) => *last_error = None,
            Err(error) => {
                tracing::warn!(target: "tollgate_auth", error = %error, "token refresh failed");
                *last_error = Some(error.clone());
            }
        }
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;

    const SKEW: Duration = Duration::from_secs(10);
    const TIMEOUT: Duration = Duration::from_secs(5);

    fn counting(lifetime: Duration) -> (Arc<AtomicUsize>, Tokens) {
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        let source = token_fn(move || {
            let n = c.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                Ok(Token::bearer(format!("t{n}"))?.expires_in(lifetime))
            }
        });
        (calls, Tokens::new(Box::new(source)))
    }

    #[tokio::test(start_paused = true)]
    async fn refreshes_within_the_skew_not_before() {
        let (calls, tokens) = counting(Duration::from_secs(60));
        assert!(tokens.fresh(SKEW).is_none());
        let first = tokens.refresh(None, SKEW, TIMEOUT).await.expect("token");
        assert_eq!(first.generation, 1);
        tokio::time::advance(Duration::from_secs(49)).await;
        assert!(tokens.fresh(SKEW).is_some(), "11 s left, skew 10 s");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(tokens.fresh(SKEW).is_none(), "10 s left: refresh now");
        let second = tokens.refresh(None, SKEW, TIMEOUT).await.expect("token");
        assert_eq!(second.generation, 2);
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stale_generation_forces_one_refresh() {
        let (calls, tokens) = counting(Duration::from_secs(3600));
        let first = tokens.refresh(None, SKEW, TIMEOUT).await.expect("token");
        let (a, b) = tokio::join!(
            tokens.refresh(Some(first.generation), SKEW, TIMEOUT),
            tokens.refresh(Some(first.generation), SKEW, TIMEOUT)
        );
        assert_eq!(a.expect("a").generation, 2);
        assert_eq!(b.expect("b").generation, 2);
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_hung_source_times_out() {
        let source = token_fn(std::future::pending::<Result<Token, BoxError>>);
        let tokens = Tokens::new(Box::new(source));
        let err = tokens
            .refresh(None, SKEW, Duration::from_secs(3))
            .await
            .err()
            .expect("timeout");
        assert!(matches!(err, AuthError::RefreshTimedOut(d) if d == Duration::from_secs(3)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_refresh_does_not_strand_the_next() {
        let (calls, tokens) = counting(Duration::from_secs(3600));
        let tokens = Arc::new(tokens);
        let t = tokens.clone();
        let leader =
            tokio::spawn(async move { t.refresh(None, SKEW, TIMEOUT).await.map(|c| c.generation) });
        tokio::task::yield_now().await;
        tokio::time::advance(Duration::from_millis(10)).await;
        leader.abort();
        let next = tokens.refresh(None, SKEW, TIMEOUT).await.expect("token");
        assert_eq!(next.generation, 1);
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }
}
