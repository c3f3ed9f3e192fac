//! Capped exponential backoff with jitter.
//!
//! The delay before retry `n` (0 for the first retry) is drawn from
//! `[0, min(cap, base · factorⁿ)]` with full jitter (the default), from
//! `[ceiling/2, ceiling]` with equal jitter, or is exactly the ceiling with
//! none. Full jitter spreads retrying clients out best (AWS Architecture Blog,
//! "Exponential Backoff and Jitter").

use std::fmt;
use std::time::Duration;

/// How a delay is randomised below its ceiling.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Jitter {
    /// Uniform in `[0, ceiling]`.
    #[default]
    Full,
    /// Uniform in `[ceiling / 2, ceiling]`.
    Equal,
    /// Exactly the ceiling (deterministic; for tests and special cases).
    None,
}

/// A backoff schedule: base, growth factor, cap and jitter.
///
/// Validated when built:
///
/// ```
/// use std::time::Duration;
/// use tollgate_retry::{Backoff, Jitter};
///
/// let b = Backoff::exponential(Duration::from_millis(100))?
///     .factor(2.0)?
///     .cap(Duration::from_secs(5))?
///     .jitter(Jitter::None);
/// let mut rng = fastrand::Rng::with_seed(7);
/// assert_eq!(b.delay(0, &mut rng), Duration::from_millis(100));
/// assert_eq!(b.delay(3, &mut rng), Duration::from_millis(800));
/// assert_eq!(b.delay(30, &mut rng), Duration::from_secs(5));
/// # Ok::<(), tollgate_retry::InvalidBackoff>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Backoff {
    base: Duration,
    factor: f64,
    cap: Duration,
    jitter: Jitter,
}

/// A backoff setting that makes no sense (zero base, factor below 1, cap
/// below base).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidBackoff(&'static str);

impl fmt::Display for InvalidBackoff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid backoff: {}", self.0)
    }
}

impl std::error::Error for InvalidBackoff {}

impl Default for Backoff {
    /// 100 ms doubling up to 10 s, full jitter.
    fn default() -> Self {
        Backoff {
            base: Duration::from_millis(100),
            factor: 2.0,
            cap: Duration::from_secs(10),
            jitter: Jitter::Full,
        }
    }
}

impl Backoff {
    /// Starts at `base`, doubling, capped at 10 s (or `base` if larger),
    /// full jitter.
    ///
    /// # Errors
    ///
    /// If `base` is zero.
    pub fn exponential(base: Duration) -> Result<Backoff, InvalidBackoff> {
        if base.is_zero() {
            return Err(InvalidBackoff("base must be above zero"));
        }
        Ok(Backoff {
            base,
            cap: Duration::from_secs(10).max(base),
            ..Backoff::default()
        })
    }

    /// Each retry's ceiling is this many times the previous one.
    ///
    /// # Errors
    ///
    /// If `factor` is below 1 or not finite.
    pub fn factor(mut self, factor: f64) -> Result<Backoff, InvalidBackoff> {
        if !factor.is_finite() || factor < 1.0 {
            return Err(InvalidBackoff("factor must be finite and at least 1"));
        }
        self.factor = factor;
        Ok(self)
    }

    /// No delay is longer than `cap`.
    ///
    /// # Errors
    ///
    /// If `cap` is below the base.
    pub fn cap(mut self, cap: Duration) -> Result<Backoff, InvalidBackoff> {
        if cap < self.base {
            return Err(InvalidBackoff("cap must be at least the base"));
        }
        self.cap = cap;
        Ok(self)
    }

    /// How delays are randomised.
    pub fn jitter(mut self, jitter: Jitter) -> Backoff {
        self.jitter = jitter;
        self
    }

    /// The ceiling of retry `n`'s delay: `min(cap, base · factorⁿ)`.
    pub fn ceiling(&self, retry: u32) -> Duration {
        let exp = i32::try_from(retry).unwrap_or(i32::MAX);
        let secs = self.base.as_secs_f64() * self.factor.powi(exp);
        Duration::try_from_secs_f64(secs).map_or(self.cap, |d| d.min(self.cap))
    }

    /// The delay before retry `n` (0 for the first retry), drawn from `rng`.
    pub fn delay(&self, retry: u32, rng: &mut fastrand::Rng) -> Duration {
        let ceiling = self.ceiling(retry);
        match self.jitter {
            Jitter::None => ceiling,
            Jitter::Full => ceiling.mul_f64(rng.f64()),
            Jitter::Equal => ceiling / 2 + (ceiling / 2).mul_f64(rng.f64()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn invalid_settings_are_errors() {
        assert!(Backoff::exponential(Duration::ZERO).is_err());
        let b = Backoff::exponential(Duration::from_secs(1)).expect("valid");
        assert!(b.clone().factor(0.5).is_err());
        assert!(b.clone().factor(f64::NAN).is_err());
        assert!(b.cap(Duration::from_millis(1)).is_err());
    }

    #[test]
    fn seeded_jitter_is_reproducible() {
        let b = Backoff::default();
        let draw = |seed| {
            let mut rng = fastrand::Rng::with_seed(seed);
            (0..5).map(|n| b.delay(n, &mut rng)).collect::<Vec<_>>()
        };
        assert_eq!(draw(42), draw(42));
        assert_ne!(draw(42), draw(43));
    }

    proptest! {
        #[test]
        fn every_delay_is_within_its_ceiling(retry in 0u32..200, seed in any::<u64>(), equal in any::<bool>()) {
            let b = Backoff::default().jitter(if equal { Jitter::Equal } else { Jitter::Full });
            let mut rng = fastrand::Rng::with_seed(seed);
            let d = b.delay(retry, &mut rng);
            let ceiling = b.ceiling(retry);
            prop_assert!(d <= ceiling && ceiling <= Duration::from_secs(10));
            if equal {
                prop_assert!(d >= ceiling / 2);
            }
        }

        #[test]
        fn ceilings_never_shrink(retry in 0u32..1000) {
            let b = Backoff::default();
            prop_assert!(b.ceiling(retry) <= b.ceiling(retry + 1));
        }
    }
}
