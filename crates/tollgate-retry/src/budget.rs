//! The retry budget: retries as a fraction of recent requests, plus a floor.
//!
//! Why a budget: with three attempts per request, a backend that fails
//! everything sees three times its normal load exactly when it can least take
//! it, and every client's retries compound. A budget lets retries smooth over
//! a few failures but caps their share of the traffic, so a failing upstream
//! sees at most about `(1 + ratio)` times the original requests (SRE book,
//! ch. 21; Finagle's retry budgets; tower's `TpsBudget`).
//!
//! The window is a ring of ten slots covering `ttl`; a retry is allowed when
//! `retries + 1 ≤ floor_per_sec · ttl + ratio · requests` over the window.
//! Ratios are kept in thousandths, so 0.3 means 0.3 (not 1/3, as truncating
//! `1/ratio` would give).
//!
//! Deposits are on every request's path, so they are one atomic increment:
//! they are moved into the time window every [`FOLD_EVERY`] deposits and
//! before every withdrawal. At most `FOLD_EVERY - 1` requests are thus dated
//! late, which can only let a handful more retries through (at 20%, six),
//! never fewer.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

const SLOTS: usize = 10;

/// Deposits are moved into the window in groups of this many.
pub const FOLD_EVERY: u64 = 32;

/// A retry budget shared by every clone of the service it belongs to.
///
/// ```
/// use std::time::Duration;
/// use tollgate_retry::RetryBudget;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), tollgate_retry::InvalidBudget> {
/// // 20% of requests, plus 1 retry per second, over 10 s.
/// let budget = RetryBudget::new(Duration::from_secs(10), 1, 0.2)?;
/// for _ in 0..100 {
///     budget.deposit();
/// }
/// let allowed = (0..1000).filter(|_| budget.try_withdraw()).count();
/// assert_eq!(allowed, 10 + 20);
/// # Ok(()) }
/// ```
pub struct RetryBudget {
    pending: AtomicU64,
    window: Mutex<Window>,
    slot: Duration,
    ratio_milli: u64,
    reserve_milli: u64,
}

struct Window {
    /// (requests, retries) per slot.
    slots: [(u64, u64); SLOTS],
    current: usize,
    current_start: Instant,
}

/// A budget setting out of range.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidBudget(&'static str);

impl fmt::Display for InvalidBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid retry budget: {}", self.0)
    }
}

impl std::error::Error for InvalidBudget {}

impl fmt::Debug for RetryBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryBudget")
            .field("ttl", &(self.slot * SLOTS as u32))
            .field("ratio", &(self.ratio_milli as f64 / 1000.0))
            .field("floor", &(self.reserve_milli / 1000))
            .finish()
    }
}

impl RetryBudget {
    /// A budget over a window of `ttl` (1 to 60 s) allowing `floor_per_sec`
    /// retries per second whatever the traffic, plus `ratio` retries per
    /// request (0 to 1000; 0.2 is 20%).
    ///
    /// # Errors
    ///
    /// For a `ttl` or `ratio` out of range.
    pub fn new(
        ttl: Duration,
        floor_per_sec: u32,
        ratio: f64,
    ) -> Result<RetryBudget, InvalidBudget> {
        if ttl < Duration::from_secs(1) || ttl > Duration::from_secs(60) {
            return Err(InvalidBudget("ttl must be between 1 and 60 seconds"));
        }
        if !(0.0..=1000.0).contains(&ratio) {
            return Err(InvalidBudget("ratio must be between 0 and 1000"));
        }
        // In range by the checks above: at most 1,000,000.
        let ratio_milli = (ratio * 1000.0).round() as u64;
        let reserve_milli = u64::from(floor_per_sec) * ttl.as_secs() * 1000;
        Ok(RetryBudget {
            pending: AtomicU64::new(0),
            window: Mutex::new(Window {
                slots: [(0, 0); SLOTS],
                current: 0,
                current_start: Instant::now(),
            }),
            slot: ttl / SLOTS as u32,
            ratio_milli,
            reserve_milli,
        })
    }

    fn with_window<T>(&self, f: impl FnOnce(&mut Window) -> T) -> T {
        let mut w = self.window.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        let pending = self.pending.swap(0, Ordering::Relaxed);
        let passed =
            now.saturating_duration_since(w.current_start).as_nanos() / self.slot.as_nanos().max(1);
        if passed > 0 {
            let steps = usize::try_from(passed).unwrap_or(usize::MAX);
            for _ in 0..steps.min(SLOTS) {
                w.current = (w.current + 1) % SLOTS;
                let current = w.current;
                w.slots[current] = (0, 0);
            }
            let advance = u32::try_from(passed).unwrap_or(u32::MAX);
            w.current_start += self.slot.saturating_mul(advance);
        }
        let current = w.current;
        w.slots[current].0 += pending;
        f(&mut w)
    }

    /// Records one request (an original call, not a retry).
    pub fn deposit(&self) {
        if (self.pending.fetch_add(1, Ordering::Relaxed) + 1).is_multiple_of(FOLD_EVERY) {
            self.with_window(|_| ());
        }
    }

    /// Takes one retry from the budget; false when it is spent.
    pub fn try_withdraw(&self) -> bool {
        let (ratio, reserve) = (self.ratio_milli, self.reserve_milli);
        self.with_window(|w| {
            let (requests, retries) = w
                .slots
                .iter()
                .fold((0u64, 0u64), |(a, b), (r, t)| (a + r, b + t));
            let allowed = reserve.saturating_add(requests.saturating_mul(ratio));
            if (retries + 1).saturating_mul(1000) <= allowed {
                w.slots[w.current].1 += 1;
                true
            } else {
                false
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_range_settings_are_errors() {
        assert!(RetryBudget::new(Duration::from_millis(500), 1, 0.2).is_err());
        assert!(RetryBudget::new(Duration::from_secs(61), 1, 0.2).is_err());
        assert!(RetryBudget::new(Duration::from_secs(10), 1, -0.1).is_err());
        assert!(RetryBudget::new(Duration::from_secs(10), 1, f64::NAN).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn unfolded_deposits_count_at_the_next_withdrawal() {
        let b = RetryBudget::new(Duration::from_secs(10), 0, 1.0).expect("valid");
        for _ in 0..5 {
            b.deposit();
        }
        assert_eq!((0..10).filter(|_| b.try_withdraw()).count(), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn fractional_ratios_are_not_truncated() {
        let b = RetryBudget::new(Duration::from_secs(10), 0, 0.3).expect("valid");
        for _ in 0..1000 {
            b.deposit();
        }
        assert_eq!((0..1000).filter(|_| b.try_withdraw()).count(), 300);
    }

    #[tokio::test(start_paused = true)]
    async fn the_floor_refills_as_the_window_moves() {
        let b = RetryBudget::new(Duration::from_secs(10), 2, 0.0).expect("valid");
        assert_eq!((0..100).filter(|_| b.try_withdraw()).count(), 20);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(!b.try_withdraw(), "retries of the last 10 s still count");
        tokio::time::advance(Duration::from_secs(6)).await;
        assert_eq!((0..100).filter(|_| b.try_withdraw()).count(), 20);
    }

    #[tokio::test(start_paused = true)]
    async fn old_requests_stop_funding_retries() {
        let b = RetryBudget::new(Duration::from_secs(1), 0, 1.0).expect("valid");
        for _ in 0..FOLD_EVERY * 3 {
            b.deposit();
        }
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(!b.try_withdraw());
    }
}
