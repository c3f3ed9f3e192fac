//! GCRA, the generic cell rate algorithm: pure arithmetic on nanoseconds.
//!
//! The state is one number, the theoretical arrival time (TAT) of the next
//! permit at the steady rate. A permit at time `now` conforms when
//! `max(tat, now) − now ≤ τ`, with `τ = T · (burst − 1)` and `T` the interval
//! between permits; granting it moves the TAT to `max(tat, now) + T`.
//!
//! Guarantee (proven below by a property test over arbitrary arrivals): in
//! any interval from one grant `gᵢ` to a later one `gⱼ`, the grants number at
//! most `burst + (gⱼ − gᵢ) / T`.

use crate::quota::Quota;

/// The GCRA for one quota.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gcra {
    interval: u64,
    tolerance: u64,
}

/// The answer to one request for a permit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Granted; store this as the new state.
    Allow {
        /// The new theoretical arrival time.
        tat: u64,
    },
    /// Refused; a permit conforms from this time on (nanoseconds, same
    /// clock as `now`).
    Wait {
        /// The earliest time a permit can be granted.
        until: u64,
    },
}

impl Gcra {
    /// The algorithm for a quota (its rate and burst).
    pub fn new(quota: &Quota) -> Gcra {
        // A quota's interval is at most 2^62 ns and its burst refills within
        // 2^63 ns (checked when it is built), so with times below 2^62 (the
        // year 2116 on the UNIX time base the layer uses) no sum here
        // saturates. Beyond, a TAT that would overflow refuses (`check`):
        // a saturated TAT would otherwise admit everything.
        let interval = quota.emission_interval_nanos();
        let tolerance = interval
            .saturating_mul(u64::from(quota.burst()) - 1)
            .min(1 << 63);
        Gcra {
            interval,
            tolerance,
        }
    }

    /// The interval between permits at the steady rate, in nanoseconds.
    pub fn interval(&self) -> u64 {
        self.interval
    }

    /// How far ahead of now the TAT may run while a permit still conforms
    /// (the burst less one, in intervals), in nanoseconds. With
    /// [`interval`](Self::interval) it is all a shared store needs to make
    /// the same decisions elsewhere.
    pub fn tolerance(&self) -> u64 {
        self.tolerance
    }

    /// Decides one permit at `now`, given the stored TAT (0 for a fresh
    /// limiter). Never panics. A permit whose new TAT would pass the end of
    /// `u64` is refused (`until` then `u64::MAX`): saturating it would
    /// admit every later caller.
    pub fn check(&self, tat: u64, now: u64) -> Decision {
        let start = tat.max(now);
        if start - now <= self.tolerance {
            match start.checked_add(self.interval) {
                Some(tat) => Decision::Allow { tat },
                None => Decision::Wait { until: u64::MAX },
            }
        } else {
            Decision::Wait {
                until: start - self.tolerance,
            }
        }
    }
}

impl Gcra {
    /// The state after the upstream asked for no permit before `until`: the
    /// first permit conforms at `until`, and the next ones follow at the
    /// steady rate, with no burst (a burst released at the end of a pause is
    /// exactly what trips an upstream that just said "slow down").
    pub fn pause(&self, tat: u64, now: u64, until: u64) -> u64 {
        if until <= now {
            // A pause that is already over changes nothing (a window quota's
            // does not either).
            return tat;
        }
        tat.max(until.saturating_add(self.tolerance))
    }

    /// When the permit of a caller with `ahead` callers before it would
    /// conform, if each of them takes one in turn and nothing else changes.
    pub fn estimate(&self, tat: u64, now: u64, ahead: u64) -> u64 {
        // Taking permits in turn from `now`, the k-th conforms at
        // `max(now, max(tat, now) + k·T − τ)`: what is left of the burst is
        // used first.
        tat.max(now)
            .saturating_add(ahead.saturating_mul(self.interval))
            .saturating_sub(self.tolerance)
            .max(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Duration;

    const MS: u64 = 1_000_000;

    fn run(gcra: &Gcra, arrivals: &[u64]) -> Vec<u64> {
        let mut tat = 0;
        let mut grants = Vec::new();
        for &now in arrivals {
            if let Decision::Allow { tat: next } = gcra.check(tat, now) {
                tat = next;
                grants.push(now);
            }
        }
        grants
    }

    #[test]
    fn a_burst_then_the_steady_rate() {
        let gcra = Gcra::new(
            &Quota::per_second(10)
                .expect("valid")
                .with_burst(3)
                .expect("valid"),
        );
        // Five at once: the burst of three passes.
        assert_eq!(run(&gcra, &[0, 0, 0, 0, 0]).len(), 3);
        // Then one every 100 ms.
        let mut tat = 0;
        for _ in 0..3 {
            let Decision::Allow { tat: t } = gcra.check(tat, 0) else {
                panic!("burst")
            };
            tat = t;
        }
        assert_eq!(gcra.check(tat, 0), Decision::Wait { until: 100 * MS });
        assert!(matches!(gcra.check(tat, 100 * MS), Decision::Allow { .. }));
    }

    #[test]
    fn arrivals_at_the_rate_all_pass() {
        let gcra = Gcra::new(
            &Quota::per_second(1000)
                .expect("valid")
                .with_burst(1)
                .expect("valid"),
        );
        let arrivals: Vec<u64> = (0..10_000).map(|i| i * MS).collect();
        assert_eq!(run(&gcra, &arrivals).len(), 10_000);
    }

    #[test]
    fn extreme_times_do_not_panic() {
        let gcra = Gcra::new(&Quota::per(1, Duration::from_secs(u64::MAX / 4)).expect("valid"));
        assert!(matches!(
            gcra.check(u64::MAX, u64::MAX),
            Decision::Allow { .. } | Decision::Wait { .. }
        ));
        // A permit whose TAT would pass the end of u64 is refused: a
        // saturated TAT would admit every later caller.
        assert_eq!(gcra.check(0, u64::MAX), Decision::Wait { until: u64::MAX });
        let small = Gcra::new(&Quota::per_second(1).expect("valid"));
        let Decision::Allow { tat } = small.check(0, u64::MAX - 2_000_000_000) else {
            panic!("two seconds before the end, a permit conforms");
        };
        assert!(matches!(
            small.check(tat, u64::MAX - 1),
            Decision::Wait { .. }
        ));
    }

    #[test]
    fn a_pause_resumes_at_the_rate_without_a_burst() {
        let gcra = Gcra::new(&Quota::per_second(10).expect("valid"));
        // Burst 10, idle: a pause until 1 s lets one permit through at 1 s,
        // then one every 100 ms, never the burst of 10.
        let tat = gcra.pause(0, 0, 1000 * MS);
        assert_eq!(
            gcra.check(tat, 999 * MS),
            Decision::Wait { until: 1000 * MS }
        );
        let Decision::Allow { tat } = gcra.check(tat, 1000 * MS) else {
            panic!("the pause ends at 1 s")
        };
        assert_eq!(
            gcra.check(tat, 1000 * MS),
            Decision::Wait { until: 1100 * MS }
        );
        assert_eq!(gcra.estimate(tat, 1000 * MS, 2), 1300 * MS);
    }

    proptest! {
        #[test]
        fn pauses_never_loosen_the_bound(
            burst in 1u32..10,
            ops in proptest::collection::vec((0u64..150 * MS, proptest::option::weighted(0.1, 0u64..2_000 * MS)), 1..200),
        ) {
            let gcra = Gcra::new(&Quota::per_second(10).expect("valid").with_burst(burst).expect("valid"));
            let (mut tat, mut now) = (0, 0);
            let mut grants = Vec::new();
            let mut paused_until = 0;
            for (gap, pause) in ops {
                now += gap;
                if let Some(p) = pause {
                    paused_until = paused_until.max(now + p);
                    tat = gcra.pause(tat, now, now + p);
                }
                if let Decision::Allow { tat: next } = gcra.check(tat, now) {
                    prop_assert!(now >= paused_until, "granted during a pause");
                    tat = next;
                    grants.push(now);
                }
            }
            let t = gcra.interval() as f64;
            for i in 0..grants.len() {
                for j in i..grants.len() {
                    let n = (j - i + 1) as f64;
                    prop_assert!(n <= f64::from(burst) + (grants[j] - grants[i]) as f64 / t + 1e-9);
                }
            }
        }

        #[test]
        fn never_more_than_burst_plus_rate_times_t(
            count in 1u32..50,
            period_ms in 1u64..2_000,
            burst in 1u32..20,
            gaps in proptest::collection::vec(0u64..200 * MS, 1..300),
        ) {
            let quota = Quota::per(count, Duration::from_millis(period_ms)).expect("valid").with_burst(burst).expect("valid");
            let gcra = Gcra::new(&quota);
            let mut now = 0;
            let arrivals: Vec<u64> = gaps.iter().map(|g| { now += g; now }).collect();
            let grants = run(&gcra, &arrivals);
            let t = gcra.interval() as f64;
            for i in 0..grants.len() {
                for j in i..grants.len() {
                    let span = (grants[j] - grants[i]) as f64;
                    let n = (j - i + 1) as f64;
                    prop_assert!(n <= f64::from(burst) + span / t + 1e-9,
                        "{} grants in {} ns (burst {}, T {} ns)", n, span, burst, t);
                }
            }
        }
    }
}
