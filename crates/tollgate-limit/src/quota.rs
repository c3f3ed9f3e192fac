//! Quotas: how many permits, over what time, with what guarantee.
//!
//! Two kinds, because they promise different things:
//!
//! - **Smooth** (GCRA): permits at a steady rate with a burst allowance. In
//!   any interval of length `t`, at most `burst + rate · t` permits. A quota
//!   of "100 per minute, burst 100" can therefore grant nearly 200 within one
//!   minute (the burst, then the refill): fine for pacing, wrong for an API
//!   that counts calls per minute.
//! - **Window**: at most `n` permits in *any* window of length `period`
//!   (a sliding log). This is what "100 calls per minute" enforced by a
//!   provider means, and what a token bucket with burst `n` does not promise.
//!
//! Both are validated when built and know nothing about tower or clocks: the
//! algorithms ([`Gcra`](crate::gcra::Gcra), [`SlidingWindow`](crate::window::SlidingWindow))
//! take the time as a number of nanoseconds.

use std::fmt;
use std::num::NonZeroU32;
use std::time::Duration;

/// A rate-limit quota.
///
/// ```
/// use std::time::Duration;
/// use tollgate_limit::Quota;
///
/// let pace = Quota::per_second(20)?.with_burst(5)?;         // smooth, 20/s, bursts of 5
/// let api = Quota::window(100, Duration::from_secs(60))?;    // at most 100 in any minute
/// assert_eq!(pace.to_string(), "20 per 1s (smooth, burst 5)");
/// assert_eq!(api.to_string(), "100 per 60s (window)");
/// # Ok::<(), tollgate_limit::InvalidQuota>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quota {
    pub(crate) kind: QuotaKind,
    pub(crate) count: NonZeroU32,
    pub(crate) period: Duration,
    pub(crate) burst: NonZeroU32,
}

/// Which guarantee a [`Quota`] gives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuotaKind {
    /// GCRA: at most `burst + rate · t` in any interval of length `t`.
    Smooth,
    /// At most `count` in any window of length `period`.
    Window,
}

/// A quota that cannot be kept: zero permits, a zero period, a burst of
/// zero, or an interval between permits below a nanosecond.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidQuota(&'static str);

impl fmt::Display for InvalidQuota {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid quota: {}", self.0)
    }
}

impl std::error::Error for InvalidQuota {}

fn nonzero(n: u32, what: &'static str) -> Result<NonZeroU32, InvalidQuota> {
    NonZeroU32::new(n).ok_or(InvalidQuota(what))
}

impl Quota {
    /// `count` permits per `period`, smooth, with a burst of `count`.
    ///
    /// # Errors
    ///
    /// For a zero `count` or `period`, one permit per less than a
    /// nanosecond, or a burst (here `count`) that would take more than
    /// [`Quota::MAX_REFILL`] to refill.
    pub fn per(count: u32, period: Duration) -> Result<Quota, InvalidQuota> {
        let count = nonzero(count, "the count must be above zero")?;
        if period.is_zero() {
            return Err(InvalidQuota("the period must be above zero"));
        }
        if period.as_nanos() < u128::from(count.get()) {
            return Err(InvalidQuota("more than one permit per nanosecond"));
        }
        Quota {
            kind: QuotaKind::Smooth,
            count,
            period,
            burst: count,
        }
        .checked()
    }

    /// The longest a smooth quota's burst may take to refill: 2^63 ns, about
    /// 292 years, so that no sum of times ever saturates (a saturated state
    /// would admit everything).
    pub const MAX_REFILL: Duration = Duration::from_nanos(1 << 63);

    /// A smooth quota whose burst refills within [`Quota::MAX_REFILL`].
    fn checked(self) -> Result<Quota, InvalidQuota> {
        if self.kind == QuotaKind::Smooth {
            let refill = u128::from(self.emission_interval_nanos()) * u128::from(self.burst.get());
            if refill > 1 << 63 {
                return Err(InvalidQuota(
                    "the burst would take more than 292 years to refill",
                ));
            }
        }
        Ok(self)
    }

    /// `count` permits per second, smooth.
    ///
    /// # Errors
    ///
    /// For a zero `count`.
    pub fn per_second(count: u32) -> Result<Quota, InvalidQuota> {
        Quota::per(count, Duration::from_secs(1))
    }

    /// `count` permits per minute, smooth.
    ///
    /// # Errors
    ///
    /// For a zero `count`.
    pub fn per_minute(count: u32) -> Result<Quota, InvalidQuota> {
        Quota::per(count, Duration::from_secs(60))
    }

    /// At most `count` permits in any window of length `period`.
    ///
    /// # Errors
    ///
    /// For a zero `count` or `period`.
    pub fn window(count: u32, period: Duration) -> Result<Quota, InvalidQuota> {
        let count = nonzero(count, "the count must be above zero")?;
        if period.is_zero() {
            return Err(InvalidQuota("the period must be above zero"));
        }
        if period.as_nanos() < u128::from(count.get()) {
            return Err(InvalidQuota("more than one permit per nanosecond"));
        }
        // A window longer than 2^62 ns (146 years) is taken as that.
        Ok(Quota {
            kind: QuotaKind::Window,
            count,
            period,
            burst: count,
        })
    }

    /// How many permits a smooth quota grants at once after a quiet period
    /// (default: its count). A window quota's burst is its count.
    ///
    /// # Errors
    ///
    /// For a zero burst, a burst on a window quota other than its count, or
    /// a burst that would take more than [`Quota::MAX_REFILL`] to refill.
    pub fn with_burst(mut self, burst: u32) -> Result<Quota, InvalidQuota> {
        let burst = nonzero(burst, "the burst must be above zero")?;
        if self.kind == QuotaKind::Window && burst != self.count {
            return Err(InvalidQuota("a window quota's burst is its count"));
        }
        self.burst = burst;
        self.checked()
    }

    /// Which guarantee this quota gives.
    pub fn kind(&self) -> QuotaKind {
        self.kind
    }

    /// Permits per period.
    pub fn count(&self) -> u32 {
        self.count.get()
    }

    /// The period.
    pub fn period(&self) -> Duration {
        self.period
    }

    /// The burst.
    pub fn burst(&self) -> u32 {
        self.burst.get()
    }

    /// The time between permits at the steady rate, in nanoseconds: at
    /// least 1 by construction, and at most 2^62 (146 years; one permit per
    /// longer than that is taken as one per 146 years).
    pub(crate) fn emission_interval_nanos(&self) -> u64 {
        let nanos = self.period.as_nanos() / u128::from(self.count.get());
        u64::try_from(nanos).unwrap_or(u64::MAX).clamp(1, 1 << 62)
    }
}

impl fmt::Display for Quota {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            QuotaKind::Smooth => write!(
                f,
                "{} per {:?} (smooth, burst {})",
                self.count, self.period, self.burst
            ),
            QuotaKind::Window => write!(f, "{} per {:?} (window)", self.count, self.period),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_quotas_are_errors() {
        assert!(Quota::per_second(0).is_err());
        assert!(Quota::per(1, Duration::ZERO).is_err());
        assert!(Quota::per(10, Duration::from_nanos(5)).is_err());
        assert!(Quota::per_second(5).expect("valid").with_burst(0).is_err());
        assert!(Quota::window(5, Duration::from_secs(1))
            .expect("valid")
            .with_burst(7)
            .is_err());
    }

    #[test]
    fn interval_is_period_over_count() {
        assert_eq!(
            Quota::per_second(4)
                .expect("valid")
                .emission_interval_nanos(),
            250_000_000
        );
        assert_eq!(
            Quota::per_minute(60)
                .expect("valid")
                .emission_interval_nanos(),
            1_000_000_000
        );
    }
}
