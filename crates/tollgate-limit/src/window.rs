//! The strict window: at most `count` permits in any window of `period`.
//!
//! A sliding log of the last `count` grant times. A permit at `now` is
//! granted when fewer than `count` grants fall in `(now − period, now]`;
//! otherwise it conforms once the oldest of them leaves the window. Any two
//! grants `count` apart are thus at least `period` apart, so no window of
//! length `period` (anywhere, not only on boundaries) holds more than `count`
//! (proven below by a property test over arbitrary arrivals). The log costs
//! `count` timestamps of memory per limiter.
//!
//! Only permits actually taken are logged: a caller that waits asks again
//! when its time comes, so a caller that gives up leaves nothing behind, and
//! nothing it did can loosen the bound.

use std::collections::VecDeque;

use crate::quota::Quota;

/// The sliding window for one quota.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlidingWindow {
    count: usize,
    period: u64,
    /// `period / count`: the pace after a pause.
    step: u64,
}

/// One limiter's log of recent grants, and what a pause left behind.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WindowLog {
    grants: VecDeque<u64>,
    /// No permit before this (the upstream said so).
    paused_until: u64,
    /// Until this time, after a pause, permits are also paced one `step`
    /// apart...
    ramp_end: u64,
    /// ...the next one conforming from this time on.
    ramp_next: u64,
}

impl SlidingWindow {
    /// The window for a quota (its count and period). A period beyond
    /// 2^62 ns (146 years) is taken as that, so no sum of times saturates.
    pub fn new(quota: &Quota) -> SlidingWindow {
        let count = usize::try_from(quota.count()).unwrap_or(usize::MAX);
        let period = u64::try_from(quota.period().as_nanos())
            .unwrap_or(u64::MAX)
            .min(1 << 62);
        SlidingWindow {
            count,
            period,
            step: (period / u64::from(quota.count())).max(1),
        }
    }

    /// From when `log` no longer constrains anything (its latest grant has
    /// left the window and any pause is over): forgetting it then changes
    /// no decision.
    pub fn idle_at(&self, log: &WindowLog) -> u64 {
        log.grants
            .back()
            .map_or(0, |g| g.saturating_add(self.period))
            .max(log.paused_until)
            .max(log.ramp_end)
    }

    /// Decides one permit at `now` (nanoseconds, non-decreasing): `Ok` and
    /// recorded, or `Err(until)`, the earliest time a permit conforms.
    pub fn check(&self, log: &mut WindowLog, now: u64) -> Result<(), u64> {
        self.forget_before(log, now);
        let at = self.next_free(log, now);
        if at > now {
            return Err(at);
        }
        if now == u64::MAX && log.grants.len() >= self.count {
            // At the very end of the time base a full window's oldest grant
            // never leaves it (its end is past `u64`): refused, never
            // admitted by saturation.
            return Err(u64::MAX);
        }
        log.grants.push_back(now);
        if now < log.ramp_end {
            log.ramp_next = log.ramp_next.max(now).saturating_add(self.step);
        }
        Ok(())
    }

    /// Drops the grants that left the window by `now`.
    fn forget_before(&self, log: &mut WindowLog, now: u64) {
        while log
            .grants
            .front()
            .is_some_and(|&g| g.checked_add(self.period).is_some_and(|end| end <= now))
        {
            log.grants.pop_front();
        }
    }

    /// The earliest time from `now` on at which every constraint allows a
    /// permit: the window (once the `count`-th most recent grant has left
    /// it), the pause, and the pace after a pause. Each only ever moves
    /// later as time passes, so their latest is when all of them allow.
    fn next_free(&self, log: &WindowLog, now: u64) -> u64 {
        let window = if log.grants.len() < self.count {
            now
        } else {
            let index = log.grants.len() - self.count;
            log.grants
                .get(index)
                .map_or(now, |g| g.saturating_add(self.period))
        };
        let ramp = if now < log.ramp_end {
            log.ramp_next
        } else {
            now
        };
        window.max(log.paused_until).max(ramp).max(now)
    }

    /// The upstream asked for no permit before `until`: none is granted
    /// before it, and for one period after it permits are also paced one
    /// `period / count` apart, not all `count` at once (a full window
    /// released at the end of a pause is what trips an upstream that just
    /// said "slow down"). Constant memory whatever the count; the pause only
    /// ever adds constraints, so the bound holds as before.
    pub fn pause(&self, log: &mut WindowLog, now: u64, until: u64) {
        if until <= now {
            return;
        }
        log.paused_until = log.paused_until.max(until);
        log.ramp_next = log.ramp_next.max(until);
        log.ramp_end = log.ramp_end.max(until.saturating_add(self.period));
    }

    /// When the permit of a caller with `ahead` callers before it would
    /// conform, if each of them takes one in turn and nothing else changes:
    /// a simulation on a copy of the log, at most `MAX_SIMULATED` grants,
    /// then extrapolated at the quota's long-run rate.
    pub fn estimate(&self, log: &WindowLog, now: u64, ahead: u64) -> u64 {
        const MAX_SIMULATED: u64 = 1 << 14;
        let mut probe = log.clone();
        let mut t = now;
        let simulated = ahead.min(MAX_SIMULATED);
        let mut taken = 0;
        loop {
            match self.check(&mut probe, t) {
                Ok(()) if taken == simulated => break,
                Ok(()) => taken += 1,
                // No time after the end of `u64`.
                Err(at) if at <= t => return u64::MAX,
                Err(at) => t = at,
            }
        }
        t.saturating_add((ahead - simulated).saturating_mul(self.step))
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
        fn pauses_keep_the_bound_and_release_no_full_window(
            count in 1u32..10,
            ops in proptest::collection::vec((0u64..60_000_000, proptest::option::weighted(0.1, 0u64..300_000_000)), 1..200),
        ) {
            let period = 100_000_000;
            let w = SlidingWindow::new(&Quota::window(count, Duration::from_nanos(period)).expect("valid"));
            let mut log = WindowLog::default();
            let mut now = 0;
            let mut grants = Vec::new();
            let mut pauses = Vec::new();
            for (gap, pause) in ops {
                now += gap;
                if let Some(p) = pause {
                    w.pause(&mut log, now, now + p);
                    pauses.push(now + p);
                }
                let before = w.estimate(&log, now, 0);
                match w.check(&mut log, now) {
                    Ok(()) => {
                        prop_assert_eq!(before, now, "the estimate said a permit conforms now");
                        prop_assert!(pauses.iter().all(|&u| now >= u), "granted during a pause");
                        grants.push(now);
                    }
                    Err(until) => {
                        prop_assert!(until > now);
                        prop_assert_eq!(before, until);
                    }
                }
            }
            for (i, &start) in grants.iter().enumerate() {
                let inside = grants[i..].iter().take_while(|&&s| s < start + period).count();
                prop_assert!(inside <= count as usize);
            }
            // After each pause, the first window holds at most one permit per
            // period / count, not a full window at once.
            let step = period / u64::from(count);
            for &u in &pauses {
                let after: Vec<u64> = grants.iter().copied().filter(|&g| g >= u && g < u + period).collect();
                for (k, &g) in after.iter().enumerate() {
                    prop_assert!(g >= u + step * k as u64, "grant {} at {} after a pause ending {}", k, g, u);
                }
            }
        }

        #[test]
        fn estimates_match_taking_permits_in_turn(
            count in 1u32..6,
            gaps in proptest::collection::vec(0u64..60_000_000, 0..20),
            ahead in 0u64..40,
        ) {
            let period = 100_000_000;
            let w = SlidingWindow::new(&Quota::window(count, Duration::from_nanos(period)).expect("valid"));
            let mut log = WindowLog::default();
            let mut now = 0;
            for g in gaps {
                now += g;
                let _ = w.check(&mut log, now);
            }
            let predicted = w.estimate(&log, now, ahead);
            // Take `ahead` permits, each as soon as it conforms, then the next.
            let mut probe = log.clone();
            let mut t = now;
            for _ in 0..=ahead {
                loop {
                    match w.check(&mut probe, t) {
                        Ok(()) => break,
                        Err(until) => t = until,
                    }
                }
            }
            prop_assert_eq!(predicted, t);
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
