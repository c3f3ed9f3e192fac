//! The strict window: at most `count` permits in any window of `period`.
//!
//! A sliding log of the last `count` grant times. A permit at `now` is
//! granted when fewer than `count` grants fall in `(now − period, now]`;
//! otherwise it conforms once the oldest of them leaves the window. Any two
//! grants `count` apart are thus at least `period` apart, so no window of
//! length `period` (anywhere, not only on boundaries) holds more than `count`
//! (proven below by a property test over arbitrary arrivals). The log costs
//! `count` timestamps of memory per limiter.

use std::collections::VecDeque;

use crate::quota::Quota;

/// The sliding window for one quota.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlidingWindow {
    count: usize,
    period: u64,
}

/// One limiter's log of recent grants.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WindowLog {
    grants: VecDeque<u64>,
}

impl SlidingWindow {
    /// The window for a quota (its count and period).
    pub fn new(quota: &Quota) -> SlidingWindow {
        SlidingWindow {
            count: usize::try_from(quota.count()).unwrap_or(usize::MAX),
            period: u64::try_from(quota.period().as_nanos()).unwrap_or(u64::MAX),
        }
    }

    /// Decides one permit at `now` (nanoseconds, non-decreasing): `Ok` and
    /// recorded, or `Err(until)`, the earliest time a permit conforms.
    pub fn check(&self, log: &mut WindowLog, now: u64) -> Result<(), u64> {
        while log
            .grants
            .front()
            .is_some_and(|&g| g.saturating_add(self.period) <= now)
        {
            log.grants.pop_front();
        }
        if log.grants.len() < self.count {
            log.grants.push_back(now);
            Ok(())
        } else {
            // Full: the oldest grant in the window must leave it first.
            let oldest = log.grants.front().copied().unwrap_or(now);
            Err(oldest.saturating_add(self.period))
        }
    }
}

impl SlidingWindow {
    /// Reserves the first slot at or after `from` that keeps the bound, and
    /// records it. Slots are reserved in arrival order, so callers are
    /// served first come, first served.
    pub fn reserve(&self, log: &mut WindowLog, from: u64) -> u64 {
        while log
            .grants
            .front()
            .is_some_and(|&g| g.saturating_add(self.period) <= from)
        {
            log.grants.pop_front();
        }
        let at = if log.grants.len() < self.count {
            from
        } else {
            // The count-th most recent slot must be a period old first.
            let index = log.grants.len() - self.count;
            from.max(log.grants[index].saturating_add(self.period))
        };
        log.grants.push_back(at);
        while log.grants.len() > self.count {
            log.grants.pop_front();
        }
        at
    }

    /// Gives back the slot reserved at `at`, if no later one was reserved
    /// since (otherwise it stays used: the bound never loosens).
    pub fn cancel(&self, log: &mut WindowLog, at: u64) -> bool {
        if log.grants.back() == Some(&at) {
            log.grants.pop_back();
            true
        } else {
            false
        }
    }

    /// Whether the log no longer constrains anything at `now`.
    pub fn is_idle(&self, log: &WindowLog, now: u64) -> bool {
        log.grants
            .back()
            .is_none_or(|&g| g.saturating_add(self.period) <= now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Duration;

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn the_boundary_burst_a_token_bucket_allows_is_refused() {
        // 100 per minute. A token bucket with burst 100 grants 100 at 0:59
        // and 100 more at 1:00; the window grants the second 100 only at 1:59.
        let w = SlidingWindow::new(&Quota::window(100, Duration::from_secs(60)).expect("valid"));
        let mut log = WindowLog::default();
        for _ in 0..100 {
            assert!(w.check(&mut log, 59 * SEC).is_ok());
        }
        assert_eq!(w.check(&mut log, 60 * SEC), Err(119 * SEC));
        assert!(w.check(&mut log, 119 * SEC).is_ok());
    }

    proptest! {
        #[test]
        fn reserved_slots_keep_the_bound(
            count in 1u32..10,
            gaps in proptest::collection::vec(0u64..60_000_000, 1..200),
        ) {
            let w = SlidingWindow::new(&Quota::window(count, Duration::from_millis(100)).expect("valid"));
            let mut log = WindowLog::default();
            let mut now = 0;
            let mut slots = Vec::new();
            for g in gaps {
                now += g;
                let at = w.reserve(&mut log, now);
                prop_assert!(at >= now);
                slots.push(at);
            }
            prop_assert!(slots.windows(2).all(|p| p[0] <= p[1]), "slots in arrival order");
            for (i, &start) in slots.iter().enumerate() {
                let inside = slots[i..].iter().take_while(|&&s| s < start + 100_000_000).count();
                prop_assert!(inside <= count as usize);
            }
        }

        #[test]
        fn never_more_than_count_in_any_window(
            count in 1u32..20,
            period_ms in 1u64..1_000,
            gaps in proptest::collection::vec(0u64..100_000_000, 1..300),
        ) {
            let w = SlidingWindow::new(&Quota::window(count, Duration::from_millis(period_ms)).expect("valid"));
            let period = period_ms * 1_000_000;
            let mut log = WindowLog::default();
            let mut now = 0;
            let mut grants = Vec::new();
            for g in gaps {
                now += g;
                if w.check(&mut log, now).is_ok() {
                    grants.push(now);
                }
            }
            // Any window [a, a + period) with the most grants starts at a grant.
            for (i, &start) in grants.iter().enumerate() {
                let inside = grants[i..].iter().take_while(|&&g| g < start + period).count();
                prop_assert!(inside <= count as usize, "{} grants in a window of {} ms", inside, period_ms);
            }
        }

        #[test]
        fn a_refusal_names_a_time_that_conforms(
            count in 1u32..10,
            gaps in proptest::collection::vec(0u64..50_000_000, 1..100),
        ) {
            let w = SlidingWindow::new(&Quota::window(count, Duration::from_millis(100)).expect("valid"));
            let mut log = WindowLog::default();
            let mut now = 0;
            for g in gaps {
                now += g;
                if let Err(until) = w.check(&mut log, now) {
                    prop_assert!(until > now);
                    let mut probe = log.clone();
                    prop_assert!(w.check(&mut probe, until).is_ok());
                }
            }
        }
    }
}
