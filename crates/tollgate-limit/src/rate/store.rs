//! Where the rate limiter's state lives: [`RateLimitStore`], and the
//! in-process [`MemoryStore`].

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::gcra::Gcra;
use crate::quota::{Quota, QuotaKind};
use crate::window::{SlidingWindow, WindowLog};

/// A reserved permit: when it may be used, and how to give it back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reservation {
    /// When the permit may be used (nanoseconds on the limiter's clock).
    pub at: u64,
    /// The state this reservation replaced, for [`RateLimitStore::cancel`].
    pub(crate) undo: u64,
}

/// The rate limiter's state, behind a small interface so that a shared
/// backend (Redis) can replace the in-process one without touching the
/// layer. Times are nanoseconds since the limiter was built.
pub trait RateLimitStore: Send + Sync + 'static {
    /// Reserves the next permit for `key` at or after `now`, if it comes no
    /// later than `latest`; otherwise reserves nothing and says when the next
    /// permit would come.
    ///
    /// # Errors
    ///
    /// `Err(at)`: the next permit comes at `at`, after `latest`.
    fn reserve(&self, key: &str, now: u64, latest: u64) -> Result<Reservation, u64>;

    /// Gives back a reservation whose caller left before using it (the store
    /// may keep it used when later reservations depend on it).
    fn cancel(&self, key: &str, reservation: Reservation);

    /// Grants nothing for `key` before `until` (the upstream said so).
    fn pause(&self, key: &str, until: u64);
}

#[derive(Default)]
struct KeyState {
    tat: u64,
    log: WindowLog,
    paused_until: u64,
    last_used: u64,
}

#[derive(Clone, Copy, Debug)]
enum Algorithm {
    Gcra(Gcra),
    Window(SlidingWindow),
}

/// The in-process store: one state per key, the unkeyed one kept apart so it
/// costs no hashing, the key table bounded.
///
/// When the table is full, keys whose state no longer constrains anything
/// are dropped first (forgetting them changes no decision); only if every
/// key is still active is the least recently used dropped.
pub struct MemoryStore {
    algorithm: Algorithm,
    /// The unkeyed GCRA state, lock-free: one compare-and-swap per permit.
    single_tat: AtomicU64,
    single_pause: AtomicU64,
    /// The unkeyed window log (a window needs its log under a lock).
    single: Mutex<KeyState>,
    keyed: Mutex<HashMap<String, KeyState>>,
    max_keys: usize,
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("algorithm", &self.algorithm)
            .field("keys", &lock(&self.keyed).len())
            .field("max_keys", &self.max_keys)
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl MemoryStore {
    /// A store for `quota`, keeping at most `max_keys` keyed states.
    pub fn new(quota: &Quota, max_keys: usize) -> MemoryStore {
        let algorithm = match quota.kind() {
            QuotaKind::Smooth => Algorithm::Gcra(Gcra::new(quota)),
            QuotaKind::Window => Algorithm::Window(SlidingWindow::new(quota)),
        };
        MemoryStore {
            algorithm,
            single_tat: AtomicU64::new(0),
            single_pause: AtomicU64::new(0),
            single: Mutex::new(KeyState::default()),
            keyed: Mutex::new(HashMap::new()),
            max_keys: max_keys.max(1),
        }
    }

    /// Keyed states held right now.
    pub fn keys(&self) -> usize {
        lock(&self.keyed).len()
    }

    fn idle(&self, state: &KeyState, now: u64) -> bool {
        state.paused_until <= now
            && match self.algorithm {
                Algorithm::Gcra(_) => state.tat <= now,
                Algorithm::Window(w) => w.is_idle(&state.log, now),
            }
    }

    fn reserve_in(&self, state: &mut KeyState, now: u64, latest: u64) -> Result<Reservation, u64> {
        let from = now.max(state.paused_until);
        state.last_used = now;
        match self.algorithm {
            Algorithm::Gcra(g) => {
                let (at, tat) = g.reserve(state.tat, from);
                if at > latest {
                    return Err(at);
                }
                let undo = state.tat;
                state.tat = tat;
                Ok(Reservation { at, undo })
            }
            Algorithm::Window(w) => {
                let mut probe = state.log.clone();
                let at = w.reserve(&mut probe, from);
                if at > latest {
                    return Err(at);
                }
                state.log = probe;
                Ok(Reservation { at, undo: at })
            }
        }
    }

    fn cancel_in(&self, state: &mut KeyState, r: Reservation) {
        match self.algorithm {
            Algorithm::Gcra(g) => {
                // Only the latest reservation can be undone exactly.
                let (_, after) = g.reserve(r.undo, r.at);
                if state.tat == after {
                    state.tat = r.undo;
                }
            }
            Algorithm::Window(w) => {
                w.cancel(&mut state.log, r.at);
            }
        }
    }

    fn with_key<T>(&self, key: &str, now: u64, f: impl FnOnce(&mut KeyState) -> T) -> T {
        if key.is_empty() {
            return f(&mut lock(&self.single));
        }
        let mut table = lock(&self.keyed);
        if let Some(state) = table.get_mut(key) {
            return f(state);
        }
        if table.len() >= self.max_keys {
            table.retain(|_, s| !self.idle(s, now));
            if table.len() >= self.max_keys {
                if let Some(oldest) = table
                    .iter()
                    .min_by_key(|(_, s)| s.last_used)
                    .map(|(k, _)| k.clone())
                {
                    table.remove(&oldest);
                }
            }
        }
        f(table.entry(key.to_owned()).or_default())
    }
}

impl RateLimitStore for MemoryStore {
    fn reserve(&self, key: &str, now: u64, latest: u64) -> Result<Reservation, u64> {
        if let (true, Algorithm::Gcra(g)) = (key.is_empty(), self.algorithm) {
            // No two callers can take the same permit: the swap only succeeds
            // on the state the decision was made from.
            let mut tat = self.single_tat.load(Ordering::Acquire);
            loop {
                let from = now.max(self.single_pause.load(Ordering::Acquire));
                let (at, next) = g.reserve(tat, from);
                if at > latest {
                    return Err(at);
                }
                match self.single_tat.compare_exchange_weak(
                    tat,
                    next,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => return Ok(Reservation { at, undo: tat }),
                    Err(current) => tat = current,
                }
            }
        }
        self.with_key(key, now, |s| self.reserve_in(s, now, latest))
    }

    fn cancel(&self, key: &str, reservation: Reservation) {
        if let (true, Algorithm::Gcra(g)) = (key.is_empty(), self.algorithm) {
            // Undone only if no one reserved after it.
            let (_, after) = g.reserve(reservation.undo, reservation.at);
            let _ = self.single_tat.compare_exchange(
                after,
                reservation.undo,
                Ordering::AcqRel,
                Ordering::Acquire,
            );
            return;
        }
        let now = reservation.at;
        self.with_key(key, now, |s| self.cancel_in(s, reservation));
    }

    fn pause(&self, key: &str, until: u64) {
        if key.is_empty() {
            self.single_pause.fetch_max(until, Ordering::AcqRel);
        }
        self.with_key(key, until, |s| s.paused_until = s.paused_until.max(until));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const MS: u64 = 1_000_000;

    fn store(per_sec: u32, burst: u32, max_keys: usize) -> MemoryStore {
        MemoryStore::new(
            &Quota::per_second(per_sec)
                .expect("valid")
                .with_burst(burst)
                .expect("valid"),
            max_keys,
        )
    }

    #[test]
    fn keys_are_isolated() {
        let s = store(1, 1, 10);
        assert!(s.reserve("a", 0, 0).is_ok());
        assert_eq!(s.reserve("a", 0, 0), Err(1000 * MS));
        assert!(
            s.reserve("b", 0, 0).is_ok(),
            "exhausting a leaves b untouched"
        );
    }

    #[test]
    fn the_key_table_is_bounded() {
        let s = store(1, 1, 100);
        for i in 0..1_000_000u64 {
            let _ = s.reserve(&i.to_string(), i * 10 * MS, u64::MAX);
            assert!(s.keys() <= 100);
        }
    }

    #[test]
    fn a_cancelled_last_reservation_is_given_back() {
        let s = store(10, 1, 10);
        let first = s.reserve("", 0, u64::MAX).expect("now");
        let second = s.reserve("", 0, u64::MAX).expect("later");
        assert_eq!((first.at, second.at), (0, 100 * MS));
        s.cancel("", second);
        assert_eq!(s.reserve("", 0, u64::MAX).expect("again").at, 100 * MS);
    }

    #[test]
    fn a_pause_holds_every_permit_back() {
        let s = MemoryStore::new(
            &Quota::window(100, Duration::from_secs(1)).expect("valid"),
            10,
        );
        s.pause("", 5000 * MS);
        assert_eq!(s.reserve("", 0, 0), Err(5000 * MS));
        assert_eq!(
            s.reserve("", 0, u64::MAX).expect("after the pause").at,
            5000 * MS
        );
    }
}
