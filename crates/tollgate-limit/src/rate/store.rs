//! Where the rate limiter's state lives: [`RateLimitStore`], and the
//! in-process [`MemoryStore`].
//!
//! A store answers one question, atomically: may one permit be taken for
//! this key now, and if not, from when? Waiting callers are queued by the
//! layer, first come first served, and each asks the store again when its
//! turn and its time have come. A permit is therefore only ever taken by a
//! caller that uses it at once: nothing is reserved ahead, so nothing has to
//! be given back when a waiter leaves, and a pause learned from the upstream
//! holds back every waiter, not only those that arrive after it.

#[cfg(tollgate_loom)]
use loom::sync::atomic::AtomicU64;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::fmt;
use std::future::Future;
use std::hash::BuildHasher;
use std::pin::Pin;
#[cfg(not(tollgate_loom))]
use std::sync::atomic::AtomicU64;
use std::sync::atomic::{AtomicU64 as StdAtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use crate::gcra::{Decision, Gcra};
use crate::quota::{Quota, QuotaKind};
use crate::window::{SlidingWindow, WindowLog};

/// A point in time for a store: nanoseconds since the UNIX epoch.
///
/// Absolute, so that separate processes sharing one store can compare their
/// times. The layer derives it from tokio's clock (one reading of the system
/// clock when the limiter is built, then tokio's monotonic time: paused time
/// in tests moves it too). A `u64` of nanoseconds lasts until the year 2554.
pub type UnixNanos = u64;

/// The rate limiter's state, behind a small interface so that a shared
/// backend (a network round trip away) can replace the in-process one
/// without touching the layer.
///
/// Every operation answers with a [`StoreFuture`]: a store that can answer
/// at once (the in-process [`MemoryStore`]) returns a ready one, which the
/// layer takes on its synchronous path with no allocation and no await; a
/// remote store returns a boxed future, which the waiting caller polls. The
/// layer keeps callers in FIFO lanes in process either way, and only the
/// head of a lane asks the store.
///
/// Times are [`UnixNanos`] on the caller's clock. A store that keeps its own
/// clock (a server's time) uses it for its decisions and answers in the
/// caller's clock (`now` plus the delay it computed), so the caller's waits
/// never depend on two clocks agreeing. The empty key is the limiter of
/// requests without a key.
///
/// Every implementation must pass the shared conformance suite,
/// `tollgate_limit::conformance` (feature `conformance`).
pub trait RateLimitStore: Send + Sync + 'static {
    /// Takes one permit for `key` at `now` if one conforms.
    ///
    /// The future's output: `Ok(Ok(()))`, a permit taken; `Ok(Err(at))`, no
    /// permit conforms before `at` (later than `now`) and nothing was taken;
    /// `Err(_)`, the store could not decide (the caller is refused with the
    /// error; nothing may have been taken then either, or the error says
    /// so).
    fn check(&self, key: &str, now: UnixNanos) -> StoreFuture<Result<(), UnixNanos>>;

    /// When the permit of a caller with `ahead` callers before it would
    /// conform, if each of them takes one in turn and nothing else changes,
    /// as far as the store can tell without a round trip (`None`: it cannot
    /// tell). Used to refuse at once a caller that would wait too long; it
    /// takes nothing.
    fn estimate(&self, key: &str, now: UnixNanos, ahead: u64) -> Option<UnixNanos>;

    /// Grants nothing for `key` before `until` (the upstream said so), and
    /// after it resumes at the quota's rate without a burst. Never shortens a
    /// pause already in force.
    fn pause(&self, key: &str, now: UnixNanos, until: UnixNanos) -> StoreFuture<()>;
}

/// A store could not decide (a remote store unreachable or too slow).
#[derive(Debug)]
pub struct StoreError {
    source: Box<dyn std::error::Error + Send + Sync>,
}

impl StoreError {
    /// Wraps the store's own error (it must not hold secrets: it reaches the
    /// caller and the logs).
    pub fn new(source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> StoreError {
        StoreError {
            source: source.into(),
        }
    }
}

/// A store that answered later did not answer within the layer's
/// [`store_timeout`](crate::RateLimitLayer::store_timeout): the source of
/// the [`StoreError`] then.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreTimedOut(pub std::time::Duration);

impl fmt::Display for StoreTimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "no answer within {:?}", self.0)
    }
}

impl std::error::Error for StoreTimedOut {}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rate-limit store could not decide: {}", self.source)
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}

type BoxStoreFuture<T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'static>>;

/// What a [`RateLimitStore`] answers: ready at once, or later.
///
/// A ready answer costs no allocation; [`now_or_later`](Self::now_or_later)
/// hands it to a synchronous caller without polling.
#[must_use = "a store's answer does nothing unless it is read or polled"]
pub struct StoreFuture<T> {
    inner: Answer<T>,
}

enum Answer<T> {
    Ready(Option<Result<T, StoreError>>),
    Later(BoxStoreFuture<T>),
}

// Nothing in a `StoreFuture` is pinned structurally: the boxed future is
// pinned in its box, and a ready value is only moved out.
impl<T> Unpin for StoreFuture<T> {}

impl<T> fmt::Debug for StoreFuture<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.inner {
            Answer::Ready(_) => "StoreFuture(ready)",
            Answer::Later(_) => "StoreFuture(later)",
        })
    }
}

impl<T> StoreFuture<T> {
    /// An answer known now.
    pub fn ready(value: T) -> StoreFuture<T> {
        StoreFuture {
            inner: Answer::Ready(Some(Ok(value))),
        }
    }

    /// A failure known now.
    pub fn failed(error: StoreError) -> StoreFuture<T> {
        StoreFuture {
            inner: Answer::Ready(Some(Err(error))),
        }
    }

    /// An answer that needs to be waited for.
    pub fn later<F>(future: F) -> StoreFuture<T>
    where
        F: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        StoreFuture {
            inner: Answer::Later(Box::pin(future)),
        }
    }

    /// The answer if it is known now, else the future to wait on.
    ///
    /// # Errors
    ///
    /// `Err(self)` when the answer needs to be waited for.
    pub fn now_or_later(self) -> Result<Result<T, StoreError>, StoreFuture<T>> {
        match self.inner {
            Answer::Ready(Some(answer)) => Ok(answer),
            Answer::Ready(None) => Ok(Err(StoreError::new("store answer read twice"))),
            Answer::Later(_) => Err(self),
        }
    }
}

impl<T> Future for StoreFuture<T> {
    type Output = Result<T, StoreError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.get_mut().inner {
            Answer::Ready(answer) => Poll::Ready(
                answer
                    .take()
                    .unwrap_or_else(|| Err(StoreError::new("store answer read twice"))),
            ),
            Answer::Later(future) => future.as_mut().poll(cx),
        }
    }
}

#[derive(Clone, Debug, Default)]
struct State {
    tat: u64,
    log: WindowLog,
}

#[derive(Clone, Copy, Debug)]
enum Algorithm {
    Gcra(Gcra),
    Window(SlidingWindow),
}

impl Algorithm {
    fn check(&self, state: &mut State, now: u64) -> Result<(), u64> {
        match self {
            Algorithm::Gcra(g) => match g.check(state.tat, now) {
                Decision::Allow { tat } => {
                    state.tat = tat;
                    Ok(())
                }
                Decision::Wait { until } => Err(until),
            },
            Algorithm::Window(w) => w.check(&mut state.log, now),
        }
    }

    fn estimate(&self, state: &State, now: u64, ahead: u64) -> u64 {
        match self {
            Algorithm::Gcra(g) => g.estimate(state.tat, now, ahead),
            Algorithm::Window(w) => w.estimate(&state.log, now, ahead),
        }
    }

    fn pause(&self, state: &mut State, now: u64, until: u64) {
        match self {
            Algorithm::Gcra(g) => state.tat = g.pause(state.tat, now, until),
            Algorithm::Window(w) => w.pause(&mut state.log, now, until),
        }
    }

    /// From when the state no longer constrains anything (forgetting it
    /// then changes no decision). Never decreases for one state.
    fn idle_at(&self, state: &State) -> u64 {
        match self {
            Algorithm::Gcra(_) => state.tat,
            Algorithm::Window(w) => w.idle_at(&state.log),
        }
    }
}

/// One shard of the key table: the states, and a min-heap of the times
/// they become idle (an entry's recorded time may be stale, never too late:
/// it is checked against the state before anything is evicted).
#[derive(Default)]
struct Shard {
    states: HashMap<u64, State>,
    idle: BinaryHeap<Reverse<(u64, u64)>>,
}

/// Shards of the key table: a new key locks one shard, never the table.
const SHARDS: usize = 16;

/// The default bound of the key table's memory: 64 MiB.
pub const DEFAULT_MAX_MEMORY: usize = 64 << 20;

/// The in-process store.
///
/// - **Unkeyed**: one state; for a smooth quota one atomic number taken by
///   compare-and-swap, so no two callers can take the same permit.
/// - **Keyed**: each key's state in a table bounded both in keys and in
///   memory (a window quota's state holds `count` timestamps, so a big
///   window costs more per key). Keys are kept as 64-bit keyed hashes
///   (random per store): no key text, which may be a credential, is kept.
/// - **Eviction never resets a limit**: only a key whose state no longer
///   constrains anything (idle) is evicted, found through a heap of idle
///   times, in the shard of the new key or else in another shard: no scan of
///   the table, no global lock.
/// - **A full table of active keys**: a new key then shares one *overflow*
///   state with every other key that found no room, under the same quota.
///   New keys cannot push out an active key's limit, and cannot lock out
///   each other either: they are limited together until room appears. A key
///   that later gets its own state starts from the overflow's state, so
///   what it took there still counts.
pub struct MemoryStore {
    algorithm: Algorithm,
    /// The unkeyed smooth quota's TAT, lock-free.
    single_tat: AtomicU64,
    /// The unkeyed window log (a window needs its log under a lock).
    single: Mutex<State>,
    shards: Box<[Mutex<Shard>]>,
    overflow: Mutex<State>,
    hasher: std::collections::hash_map::RandomState,
    max_keys: usize,
    keys: AtomicUsize,
    overflowed: StdAtomicU64,
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("algorithm", &self.algorithm)
            .field("keys", &self.keys())
            .field("max_keys", &self.max_keys)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What one key's state costs in memory beyond its timestamps: the map's
/// entry, the heap's entry and their share of spare capacity.
const KEY_OVERHEAD: usize = 96;

impl MemoryStore {
    /// A store for `quota`, keeping at most `max_keys` keyed states within
    /// [`DEFAULT_MAX_MEMORY`].
    pub fn new(quota: &Quota, max_keys: usize) -> MemoryStore {
        MemoryStore::with_memory(quota, max_keys, DEFAULT_MAX_MEMORY)
    }

    /// A store for `quota`, keeping at most `max_keys` keyed states and at
    /// most about `max_bytes` of them (whichever bound is lower; at least
    /// one key).
    pub fn with_memory(quota: &Quota, max_keys: usize, max_bytes: usize) -> MemoryStore {
        let (algorithm, per_key) = match quota.kind() {
            QuotaKind::Smooth => (Algorithm::Gcra(Gcra::new(quota)), KEY_OVERHEAD),
            QuotaKind::Window => (
                Algorithm::Window(SlidingWindow::new(quota)),
                KEY_OVERHEAD.saturating_add(
                    usize::try_from(quota.count())
                        .unwrap_or(usize::MAX)
                        .saturating_mul(8),
                ),
            ),
        };
        let by_memory = max_bytes / per_key.max(1);
        MemoryStore {
            algorithm,
            single_tat: AtomicU64::new(0),
            single: Mutex::new(State::default()),
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            overflow: Mutex::new(State::default()),
            hasher: std::collections::hash_map::RandomState::new(),
            max_keys: max_keys.min(by_memory).max(1),
            keys: AtomicUsize::new(0),
            overflowed: StdAtomicU64::new(0),
        }
    }

    /// Keyed states held right now.
    pub fn keys(&self) -> usize {
        self.keys.load(Ordering::Relaxed)
    }

    /// The most keyed states this store holds (its key and memory bounds).
    pub fn max_keys(&self) -> usize {
        self.max_keys
    }

    /// Decisions made on the shared overflow state because the key table
    /// was full of active keys.
    pub fn overflowed(&self) -> u64 {
        self.overflowed.load(Ordering::Relaxed)
    }

    fn shard_of(&self, hash: u64) -> usize {
        // The high bits: the map inside a shard uses the low ones.
        usize::try_from(hash >> 60).unwrap_or(0) % SHARDS
    }

    /// Evicts one idle state from `shard`, if its earliest idle time has
    /// passed. Bounded work: stale heap entries are refreshed a few at a
    /// time.
    fn evict_one(&self, shard: &mut Shard, now: u64) -> bool {
        for _ in 0..8 {
            let Some(&Reverse((recorded, hash))) = shard.idle.peek() else {
                return false;
            };
            let Some(state) = shard.states.get(&hash) else {
                shard.idle.pop();
                continue;
            };
            let real = self.algorithm.idle_at(state);
            if real > now {
                if real == recorded {
                    // The earliest idle time is still to come: every other
                    // state here is active too.
                    return false;
                }
                shard.idle.pop();
                shard.idle.push(Reverse((real, hash)));
                continue;
            }
            shard.idle.pop();
            shard.states.remove(&hash);
            self.keys.fetch_sub(1, Ordering::AcqRel);
            return true;
        }
        false
    }

    /// Runs `f` on the state of `key`: its own, a new one if there is room,
    /// or the shared overflow state.
    fn with_key<T>(&self, key: &str, now: u64, f: impl FnOnce(&mut State) -> T) -> T {
        let hash = self.hasher.hash_one(key);
        let home = self.shard_of(hash);
        {
            let mut shard = lock(&self.shards[home]);
            if let Some(state) = shard.states.get_mut(&hash) {
                return f(state);
            }
            if self.take_room() || (self.evict_one(&mut shard, now) && self.take_room()) {
                return self.insert(&mut shard, hash, now, f);
            }
        }
        // The home shard has nothing idle: look for room in the others, one
        // shard lock at a time.
        for i in 1..SHARDS {
            let mut other = lock(&self.shards[(home + i) % SHARDS]);
            if self.evict_one(&mut other, now) {
                break;
            }
        }
        let mut shard = lock(&self.shards[home]);
        if let Some(state) = shard.states.get_mut(&hash) {
            return f(state);
        }
        if self.take_room() {
            return self.insert(&mut shard, hash, now, f);
        }
        // The home shard stays locked while the overflow state decides: the
        // key cannot get an entry of its own (copied from the overflow
        // state) in between, and miss this decision.
        self.overflowed.fetch_add(1, Ordering::Relaxed);
        let out = f(&mut lock(&self.overflow));
        drop(shard);
        out
    }

    /// Counts one more key if the table has room.
    fn take_room(&self) -> bool {
        self.keys
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |k| {
                (k < self.max_keys).then_some(k + 1)
            })
            .is_ok()
    }

    fn insert<T>(
        &self,
        shard: &mut Shard,
        hash: u64,
        now: u64,
        f: impl FnOnce(&mut State) -> T,
    ) -> T {
        // A new key starts as constrained as the overflow state: what it
        // took there while the table was full still counts.
        let mut state = {
            let overflow = lock(&self.overflow);
            if self.algorithm.idle_at(&overflow) > now {
                overflow.clone()
            } else {
                State::default()
            }
        };
        let out = f(&mut state);
        let idle = self.algorithm.idle_at(&state);
        shard.states.insert(hash, state);
        shard.idle.push(Reverse((idle, hash)));
        out
    }
}

impl RateLimitStore for MemoryStore {
    fn check(&self, key: &str, now: UnixNanos) -> StoreFuture<Result<(), UnixNanos>> {
        StoreFuture::ready(self.check_sync(key, now))
    }

    fn estimate(&self, key: &str, now: UnixNanos, ahead: u64) -> Option<UnixNanos> {
        Some(self.estimate_sync(key, now, ahead))
    }

    fn pause(&self, key: &str, now: UnixNanos, until: UnixNanos) -> StoreFuture<()> {
        self.pause_sync(key, now, until);
        StoreFuture::ready(())
    }
}

/// The store's answers without a future: what the trait's ready answers
/// are made of, for callers that hold a `MemoryStore` itself.
impl MemoryStore {
    /// [`RateLimitStore::check`], answered at once.
    ///
    /// # Errors
    ///
    /// `Err(at)`: no permit conforms before `at`; nothing was taken.
    pub fn check_sync(&self, key: &str, now: UnixNanos) -> Result<(), UnixNanos> {
        if key.is_empty() {
            if let Algorithm::Gcra(g) = self.algorithm {
                // No two callers can take the same permit: the swap only
                // succeeds on the state the decision was made from.
                let mut tat = self.single_tat.load(Ordering::Acquire);
                loop {
                    match g.check(tat, now) {
                        Decision::Wait { until } => return Err(until),
                        Decision::Allow { tat: next } => {
                            match self.single_tat.compare_exchange_weak(
                                tat,
                                next,
                                Ordering::AcqRel,
                                Ordering::Acquire,
                            ) {
                                Ok(_) => return Ok(()),
                                Err(current) => tat = current,
                            }
                        }
                    }
                }
            }
            return self.algorithm.check(&mut lock(&self.single), now);
        }
        let algorithm = self.algorithm;
        self.with_key(key, now, |s| algorithm.check(s, now))
    }

    /// [`RateLimitStore::estimate`], always known in process.
    pub fn estimate_sync(&self, key: &str, now: UnixNanos, ahead: u64) -> UnixNanos {
        if key.is_empty() {
            if let Algorithm::Gcra(g) = self.algorithm {
                return g.estimate(self.single_tat.load(Ordering::Acquire), now, ahead);
            }
            return self.algorithm.estimate(&lock(&self.single), now, ahead);
        }
        let algorithm = self.algorithm;
        self.with_key(key, now, |s| algorithm.estimate(s, now, ahead))
    }

    /// [`RateLimitStore::pause`], done at once.
    pub fn pause_sync(&self, key: &str, now: UnixNanos, until: UnixNanos) {
        if key.is_empty() {
            if let Algorithm::Gcra(g) = self.algorithm {
                let _ = self
                    .single_tat
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |tat| {
                        Some(g.pause(tat, now, until))
                    });
                return;
            }
            self.algorithm.pause(&mut lock(&self.single), now, until);
            return;
        }
        let algorithm = self.algorithm;
        self.with_key(key, now, |s| algorithm.pause(s, now, until));
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
        assert!(s.check_sync("a", 0).is_ok());
        assert_eq!(s.check_sync("a", 0), Err(1000 * MS));
        assert!(
            s.check_sync("b", 0).is_ok(),
            "exhausting a leaves b untouched"
        );
    }

    #[test]
    fn the_key_table_is_bounded() {
        let s = store(1, 1, 100);
        for i in 0..200_000u64 {
            let _ = s.check_sync(&i.to_string(), i * 10 * MS);
            assert!(s.keys() <= 100);
        }
    }

    #[test]
    fn a_full_table_of_active_keys_never_resets_one_of_them() {
        // Two keys fit. a and b are exhausted for a minute; c, d, e... find
        // no room and share the overflow state; a stays exhausted.
        let s = MemoryStore::new(
            &Quota::window(1, Duration::from_secs(60)).expect("valid"),
            2,
        );
        assert!(s.check_sync("a", 0).is_ok());
        assert!(s.check_sync("b", 0).is_ok());
        for (i, k) in ["c", "d", "e", "f", "g"].iter().enumerate() {
            let r = s.check_sync(k, 1 + i as u64);
            assert_eq!(r.is_ok(), i == 0, "{k}: the overflow state is shared");
            assert!(s.check_sync("a", 10).is_err(), "a was never reset");
            assert!(s.check_sync("b", 10).is_err(), "b was never reset");
        }
        assert_eq!(s.keys(), 2);
        assert!(s.overflowed() >= 5);
        // A minute on, a is idle and its room goes to a new key, which
        // starts from the overflow state.
        assert!(s.check_sync("h", 60_000 * MS + 5).is_ok());
    }

    #[test]
    fn memory_bounds_the_table_too() {
        // A window of 10,000 costs 80 kB a key: 1 MiB holds 13 of them.
        let s = MemoryStore::with_memory(
            &Quota::window(10_000, Duration::from_secs(1)).expect("valid"),
            1_000_000,
            1 << 20,
        );
        assert_eq!(s.max_keys(), (1 << 20) / (96 + 80_000));
    }

    #[test]
    fn a_pause_holds_every_permit_back() {
        let s = MemoryStore::new(
            &Quota::window(100, Duration::from_secs(1)).expect("valid"),
            10,
        );
        s.pause_sync("", 0, 5000 * MS);
        assert_eq!(s.check_sync("", 0), Err(5000 * MS));
        assert_eq!(s.estimate_sync("", 0, 0), 5000 * MS);
        assert!(s.check_sync("", 5000 * MS).is_ok());
        assert_eq!(
            s.check_sync("", 5000 * MS),
            Err(5010 * MS),
            "no burst after a pause"
        );
    }
}
