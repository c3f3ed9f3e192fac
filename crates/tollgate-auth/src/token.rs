//! Refreshing credentials: [`TokenSource`], [`Token`], and the cache all
//! clones of a layer share.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use tokio::time::Instant;
use tower::BoxError;
use tracing::Instrument;

use crate::error::{AuthError, SharedError};
use tollgate_core::{Credential, InvalidCredential};

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

/// A token is not refreshed sooner than this after it was received (unless
/// a 401 refused it), whatever its lifetime: see [`Current::refresh_due`].
const MIN_TOKEN_REUSE: Duration = Duration::from_secs(1);
/// The first wait after a failed refresh; it doubles with each failure in a
/// row, up to [`MAX_REFRESH_BACKOFF`].
const FIRST_REFRESH_BACKOFF: Duration = Duration::from_secs(1);
/// The longest wait between two refreshes that fail.
const MAX_REFRESH_BACKOFF: Duration = Duration::from_secs(30);

/// The wait after `failures` failed refreshes in a row (at least 1).
fn backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    FIRST_REFRESH_BACKOFF
        .saturating_mul(1 << doublings)
        .min(MAX_REFRESH_BACKOFF)
}

/// The token in use, and which refresh produced it.
#[derive(Clone)]
pub(crate) struct Current {
    pub(crate) credential: Credential,
    /// When the refresh that got it began: its lifetime counts from here.
    started: Instant,
    /// When it arrived: its reuse counts from here.
    received: Instant,
    lifetime: Option<Duration>,
    pub(crate) generation: u64,
}

impl Current {
    /// Whether the token is due for a refresh at `now`: when less than
    /// `skew` of its lifetime is left, but never before half its lifetime
    /// (nor [`MIN_TOKEN_REUSE`]) has passed since it arrived. So a token
    /// living no longer than the skew is refreshed at half-life, not on
    /// every request. A time past the clock's range is never.
    fn refresh_due(&self, now: Instant, skew: Duration) -> bool {
        let Some(lifetime) = self.lifetime else {
            return false;
        };
        let early = self.started.checked_add(lifetime.saturating_sub(skew));
        let floor = self
            .received
            .checked_add((lifetime / 2).max(MIN_TOKEN_REUSE));
        match (early, floor) {
            (Some(early), Some(floor)) => now >= early.max(floor),
            _ => false,
        }
    }

    /// Whether the token's lifetime is over at `now`.
    fn expired(&self, now: Instant) -> bool {
        self.lifetime
            .and_then(|l| self.started.checked_add(l))
            .is_some_and(|at| now >= at)
    }
}

/// What the refresh lock guards: the last failure and the back-off after
/// it.
#[derive(Default)]
struct Failures {
    /// The last refresh's error, if it failed.
    last: Option<AuthError>,
    /// Failed refreshes in a row.
    count: u32,
    /// No refresh starts before this, after a failure.
    retry_at: Option<Instant>,
}

/// The state every clone of a layer shares: the current token, and a lock
/// that lets one refresh run at a time.
pub(crate) struct Tokens {
    source: Box<dyn TokenSource>,
    current: RwLock<Option<Current>>,
    /// Refreshes finished, failed ones included.
    attempts: AtomicU64,
    /// Held while a refresh runs; holds the last refresh's failure, which
    /// the requests that waited for it share, and the back-off after it.
    refresh: Arc<tokio::sync::Mutex<Failures>>,
}

impl Tokens {
    pub(crate) fn new(source: Box<dyn TokenSource>) -> Self {
        Tokens {
            source,
            current: RwLock::new(None),
            attempts: AtomicU64::new(0),
            refresh: Arc::new(tokio::sync::Mutex::new(Failures::default())),
        }
    }

    fn current(&self) -> Option<Current> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The current token, if it is not due for a refresh.
    pub(crate) fn fresh(&self, skew: Duration) -> Option<Current> {
        let guard = self.current.read().unwrap_or_else(PoisonError::into_inner);
        let current = guard.as_ref()?;
        if current.refresh_due(Instant::now(), skew) {
            return None;
        }
        Some(current.clone())
    }

    /// A token to use, refreshing if needed. `stale` is the generation a 401
    /// was answered to: that token is not used again.
    ///
    /// One refresh runs at a time. A request that waited while another
    /// refreshed takes that refresh's token, or its error, rather than
    /// fetching again. After a failed refresh, none starts until the
    /// back-off (1 s, doubling, at most 30 s) is over: meanwhile a token
    /// that has not expired (and was not refused) is still used, and
    /// without one the last error comes back at once.
    ///
    /// The fetch runs on a task of its own (inside a tokio runtime), so a
    /// request that gives up on it (dropped, timed out) does not cancel it:
    /// it ends within the timeout, and the requests waiting for it, or
    /// coming after, take its token.
    pub(crate) async fn refresh(
        self: &Arc<Self>,
        stale: Option<u64>,
        skew: Duration,
        timeout: Duration,
    ) -> Result<Current, AuthError> {
        let seen = self.attempts.load(Ordering::Acquire);
        let failures = Arc::clone(&self.refresh).lock_owned().await;
        let refreshed_meanwhile = self.attempts.load(Ordering::Acquire) != seen;
        let now = Instant::now();
        // The token in use, unless a 401 refused it.
        let current = self.current().filter(|c| Some(c.generation) != stale);
        if let Some(current) = &current {
            let not_due = !current.refresh_due(now, skew);
            if not_due || (refreshed_meanwhile && !current.expired(now)) {
                return Ok(current.clone());
            }
        }
        // Due, but still within its lifetime: usable if a refresh fails.
        let fallback = current.filter(|c| !c.expired(now));
        if let Some(last) = failures.last.as_ref() {
            let backing_off = failures.retry_at.is_some_and(|at| now < at);
            if refreshed_meanwhile || backing_off {
                return fallback.ok_or_else(|| last.clone());
            }
        }
        tracing::debug!(target: "tollgate_auth", after_unauthorized = stale.is_some(), "refreshing token");
        let fetch = Arc::clone(self).fetch(failures, fallback, timeout);
        // Outside a runtime (where tokio's timeout cannot run either), in
        // place.
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => runtime
                .spawn(fetch.instrument(tracing::Span::current()))
                .await
                .unwrap_or_else(|_| {
                    Err(AuthError::RefreshFailed(SharedError::new(
                        "the token source panicked or its runtime stopped".into(),
                    )))
                }),
            Err(_) => fetch.await,
        }
    }

    /// One fetch from the source, holding the refresh lock; records its
    /// token, or its failure and the back-off after it.
    async fn fetch(
        self: Arc<Self>,
        mut failures: tokio::sync::OwnedMutexGuard<Failures>,
        fallback: Option<Current>,
        timeout: Duration,
    ) -> Result<Current, AuthError> {
        let started = Instant::now();
        let result = tokio::time::timeout(timeout, self.source.token()).await;
        let generation = self.attempts.fetch_add(1, Ordering::AcqRel) + 1;
        let error = match result {
            Ok(Ok(token)) => {
                let current = Current {
                    credential: token.credential,
                    started,
                    received: Instant::now(),
                    lifetime: token.expires_in,
                    generation,
                };
                *self.current.write().unwrap_or_else(PoisonError::into_inner) =
                    Some(current.clone());
                *failures = Failures::default();
                return Ok(current);
            }
            Ok(Err(error)) => AuthError::RefreshFailed(SharedError::new(error)),
            Err(_) => AuthError::RefreshTimedOut(timeout),
        };
        failures.count = failures.count.saturating_add(1);
        let wait = backoff(failures.count);
        let failed_at = Instant::now();
        failures.retry_at = failed_at.checked_add(wait);
        tracing::warn!(
            target: "tollgate_auth",
            error = %error,
            backoff_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
            "token refresh failed"
        );
        failures.last = Some(error.clone());
        // A token that has not expired (and was not refused) stays in use.
        fallback.filter(|c| !c.expired(failed_at)).ok_or(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;

    const SKEW: Duration = Duration::from_secs(10);
    const TIMEOUT: Duration = Duration::from_secs(5);

    fn counting(lifetime: Duration) -> (Arc<AtomicUsize>, Arc<Tokens>) {
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        let source = token_fn(move || {
            let n = c.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                Ok(Token::bearer(format!("t{n}"))?.expires_in(lifetime))
            }
        });
        (calls, Arc::new(Tokens::new(Box::new(source))))
    }

    #[test]
    fn the_back_off_doubles_from_one_second_up_to_thirty() {
        let secs = |n| backoff(n).as_secs();
        assert_eq!(
            [0, 1, 2, 3, 4, 5, 6, 7, 64, u32::MAX].map(secs),
            [1, 1, 2, 4, 8, 16, 30, 30, 30, 30]
        );
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
        let tokens = Arc::new(Tokens::new(Box::new(source)));
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
        let t = tokens.clone();
        let leader =
            tokio::spawn(async move { t.refresh(None, SKEW, TIMEOUT).await.map(|c| c.generation) });
        tokio::task::yield_now().await;
        tokio::time::advance(Duration::from_millis(10)).await;
        leader.abort();
        // The fetch the leader began goes on without it; the next takes it.
        let next = tokens.refresh(None, SKEW, TIMEOUT).await.expect("token");
        assert_eq!(next.generation, 1);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
