//! Adversarial property tests of the algorithms alone: the window's
//! estimate against taking permits in turn after pauses, and GCRA's bound
//! with pauses and large numbers.

use std::time::Duration;

use proptest::prelude::*;
use tollgate_limit::gcra::{Decision, Gcra};
use tollgate_limit::window::{SlidingWindow, WindowLog};
use tollgate_limit::Quota;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// After any mix of grants and pauses, the estimate for a caller with
    /// `ahead` callers before it is exactly when it would get its permit if
    /// each took one in turn: never sooner (it would be queued, then refused
    /// after waiting) and never later (it would be refused for nothing).
    #[test]
    fn window_estimates_match_taking_in_turn_after_pauses(
        count in 1u32..6,
        ops in proptest::collection::vec((0u64..80_000_000, proptest::option::weighted(0.3, 0u64..400_000_000)), 0..30),
        ahead in 0u64..30,
    ) {
        let period = 100_000_000;
        let w = SlidingWindow::new(&Quota::window(count, Duration::from_nanos(period)).expect("valid"));
        let mut log = WindowLog::default();
        let mut now = 0;
        for (gap, pause) in ops {
            now += gap;
            if let Some(p) = pause {
                w.pause(&mut log, now, now + p);
            }
            let _ = w.check(&mut log, now);
        }
        let predicted = w.estimate(&log, now, ahead);
        let mut probe = log.clone();
        let mut t = now;
        for _ in 0..=ahead {
            loop {
                match w.check(&mut probe, t) {
                    Ok(()) => break,
                    Err(until) => {
                        prop_assert!(until > t);
                        t = until;
                    }
                }
            }
        }
        prop_assert_eq!(predicted, t);
    }

    /// GCRA's estimate, with pauses, is never sooner than taking permits in
    /// turn (a caller queued on it is never refused after waiting).
    #[test]
    fn gcra_estimates_are_never_too_soon_after_pauses(
        burst in 1u32..6,
        ops in proptest::collection::vec((0u64..80_000_000, proptest::option::weighted(0.3, 0u64..400_000_000)), 0..30),
        ahead in 0u64..30,
    ) {
        let g = Gcra::new(&Quota::per(3, Duration::from_millis(100)).expect("valid").with_burst(burst).expect("valid"));
        let (mut tat, mut now) = (0, 0);
        for (gap, pause) in ops {
            now += gap;
            if let Some(p) = pause {
                tat = g.pause(tat, now, now + p);
            }
            if let Decision::Allow { tat: next } = g.check(tat, now) {
                tat = next;
            }
        }
        let predicted = g.estimate(tat, now, ahead);
        let (mut probe, mut t) = (tat, now);
        for _ in 0..=ahead {
            loop {
                match g.check(probe, t) {
                    Decision::Allow { tat: next } => { probe = next; break; }
                    Decision::Wait { until } => t = until,
                }
            }
        }
        prop_assert!(predicted >= t, "estimate {} sooner than the real {}", predicted, t);
    }

    /// GCRA's estimate, with pauses, is exactly when the caller would be
    /// served. It ignores the burst left (`first + ahead · T`): burst 3, a
    /// fresh state, one caller ahead: estimated at T, served at 0.
    #[test]
        fn gcra_estimates_match_taking_in_turn_after_pauses(
        burst in 1u32..6,
        ops in proptest::collection::vec((0u64..80_000_000, proptest::option::weighted(0.3, 0u64..400_000_000)), 0..30),
        ahead in 0u64..30,
    ) {
        let g = Gcra::new(&Quota::per(3, Duration::from_millis(100)).expect("valid").with_burst(burst).expect("valid"));
        let (mut tat, mut now) = (0, 0);
        for (gap, pause) in ops {
            now += gap;
            if let Some(p) = pause {
                tat = g.pause(tat, now, now + p);
            }
            if let Decision::Allow { tat: next } = g.check(tat, now) {
                tat = next;
            }
        }
        let predicted = g.estimate(tat, now, ahead);
        let (mut probe, mut t) = (tat, now);
        for _ in 0..=ahead {
            loop {
                match g.check(probe, t) {
                    Decision::Allow { tat: next } => { probe = next; break; }
                    Decision::Wait { until } => t = until,
                }
            }
        }
        prop_assert_eq!(predicted, t);
    }

    /// Any quota `Quota::per` accepts: GCRA never grants more than
    /// `burst + t / T` (checked on 3 · burst arrivals at one instant).
    #[test]
        fn gcra_bursts_are_bounded_for_any_valid_quota(
        count in 1u32..=u32::MAX,
        period_secs in 1u64..=u64::MAX / 2,
        burst in 1u32..200,
    ) {
        let Ok(quota) = Quota::per(count, Duration::from_secs(period_secs)) else { return Ok(()); };
        // A burst too long to refill is a typed error when built.
        let Ok(quota) = quota.with_burst(burst) else { return Ok(()); };
        let g = Gcra::new(&quota);
        let mut tat = 0;
        let mut granted = 0u32;
        for _ in 0..3 * burst {
            if let Decision::Allow { tat: next } = g.check(tat, 1) {
                tat = next;
                granted += 1;
            }
        }
        prop_assert!(granted <= burst, "{} granted at one instant, burst {} ({})", granted, burst, quota);
    }
}
