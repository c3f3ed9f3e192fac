//! First come, first served: the callers waiting for a permit, one FIFO
//! lane per key, kept only while someone waits in it.
//!
//! Only the caller at the head of a lane asks the store for a permit; the
//! others sleep until they become the head. A caller that leaves (served, or
//! dropped) wakes the next one. Newcomers join the back of a non-empty lane
//! instead of asking the store, so nobody overtakes a waiter.

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::task::Waker;

const SHARDS: usize = 16;

#[derive(Debug)]
pub(crate) struct Slot {
    id: u64,
    waker: Option<Waker>,
}

pub(crate) type Lanes = HashMap<u64, VecDeque<Slot>>;

/// The lanes of one limiter.
pub(crate) struct Queues {
    shards: Box<[Mutex<Lanes>]>,
    hasher: std::collections::hash_map::RandomState,
    next_id: AtomicU64,
    /// Callers in the unkeyed lane: when 0, a caller without a key may ask
    /// the store without taking a lock.
    unkeyed: AtomicUsize,
    /// Callers in every lane (what `max_queue` bounds).
    pub(crate) waiting: AtomicUsize,
}

impl std::fmt::Debug for Queues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queues").finish_non_exhaustive()
    }
}

impl Queues {
    pub(crate) fn new() -> Self {
        Queues {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: std::collections::hash_map::RandomState::new(),
            next_id: AtomicU64::new(0),
            unkeyed: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
        }
    }

    /// The lane of `key` (0 for the unkeyed one): a keyed hash, random per
    /// limiter, also what the logs show of a key.
    pub(crate) fn hash(&self, key: &str) -> u64 {
        if key.is_empty() {
            0
        } else {
            self.hasher.hash_one(key) | 1
        }
    }

    /// Whether nobody waits for the unkeyed limiter (a hint: the caller
    /// that relies on it takes no lock).
    pub(crate) fn unkeyed_is_empty(&self) -> bool {
        self.unkeyed.load(Ordering::Acquire) == 0
    }

    pub(crate) fn lock(&self, hash: u64) -> MutexGuard<'_, Lanes> {
        let shard = usize::try_from(hash >> 59).unwrap_or(0) % SHARDS;
        self.shards[shard]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Callers in `hash`'s lane.
    pub(crate) fn len(lanes: &Lanes, hash: u64) -> usize {
        lanes.get(&hash).map_or(0, VecDeque::len)
    }

    /// Joins the back of `hash`'s lane; returns the caller's id.
    pub(crate) fn join(&self, lanes: &mut Lanes, hash: u64) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        lanes
            .entry(hash)
            .or_default()
            .push_back(Slot { id, waker: None });
        if hash == 0 {
            self.unkeyed.fetch_add(1, Ordering::AcqRel);
        }
        id
    }

    /// How many callers are ahead of `id` in its lane (0: it is the head);
    /// if any, keeps `waker` to be woken when it becomes the head.
    pub(crate) fn position(lanes: &mut Lanes, hash: u64, id: u64, waker: &Waker) -> usize {
        let Some(lane) = lanes.get_mut(&hash) else {
            return 0;
        };
        if lane.front().is_some_and(|s| s.id == id) {
            return 0;
        }
        let Some(at) = lane.iter().position(|s| s.id == id) else {
            return 0;
        };
        let slot = &mut lane[at];
        match &slot.waker {
            Some(w) if w.will_wake(waker) => {}
            _ => slot.waker = Some(waker.clone()),
        }
        at
    }

    /// Leaves `hash`'s lane (served or gone), waking the next head.
    /// Returns whether `id` was in it.
    pub(crate) fn leave(&self, lanes: &mut Lanes, hash: u64, id: u64) -> bool {
        let Some(lane) = lanes.get_mut(&hash) else {
            return false;
        };
        let Some(at) = lane.iter().position(|s| s.id == id) else {
            return false;
        };
        lane.remove(at);
        if at == 0 {
            if let Some(next) = lane.front_mut().and_then(|s| s.waker.take()) {
                next.wake();
            }
        }
        if lane.is_empty() {
            lanes.remove(&hash);
        }
        if hash == 0 {
            self.unkeyed.fetch_sub(1, Ordering::AcqRel);
        }
        true
    }
}
