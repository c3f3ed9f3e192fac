//! Single-flight: one upstream request per key at a time; the requests that
//! arrive meanwhile wait for its outcome.

use std::collections::HashMap;
use std::error::Error as StdError;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use http::Method;
use tokio::sync::Notify;

use crate::entry::Stored;

/// Requests that may share one upstream response.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct FlightKey {
    pub(crate) uri: Arc<str>,
    pub(crate) method: Method,
    pub(crate) identity: u128,
}

/// How a flight ended, as its waiters see it.
#[derive(Clone)]
pub(crate) enum Outcome {
    /// A response the waiters can serve (if their `Vary` values match).
    Shared(Arc<Stored>),
    /// The upstream request failed.
    Failed(Arc<dyn StdError + Send + Sync>),
    /// A response that could not be shared (too large, or streamed): each
    /// waiter asks for itself.
    NotShared,
    /// The leader was dropped (cancelled) before it had an answer.
    Abandoned,
}

/// One flight: its outcome once known, and the waiters to wake then. A
/// flight nobody waits on costs one allocation and no wake-up.
#[derive(Default)]
struct Slot {
    outcome: Mutex<Option<Outcome>>,
    done: Notify,
}

impl Slot {
    fn outcome(&self) -> MutexGuard<'_, Option<Outcome>> {
        self.outcome.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[derive(Default)]
pub(crate) struct Flights {
    map: Mutex<HashMap<FlightKey, Arc<Slot>>>,
}

pub(crate) enum Role<'a> {
    Leader(Leader<'a>),
    Waiter(Waiter),
}

/// The request that fetches for everyone. Dropped without [`finish`]ing
/// (cancelled), it lets the waiters go: one of them leads next.
///
/// [`finish`]: Leader::finish
pub(crate) struct Leader<'a> {
    flights: &'a Flights,
    key: FlightKey,
    slot: Arc<Slot>,
    finished: bool,
}

/// A request waiting on another's flight.
pub(crate) struct Waiter(Arc<Slot>);

impl Flights {
    fn lock(&self) -> MutexGuard<'_, HashMap<FlightKey, Arc<Slot>>> {
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Leads the flight for `key`, or waits on the one under way.
    pub(crate) fn join(&self, key: FlightKey) -> Role<'_> {
        let mut map = self.lock();
        if let Some(slot) = map.get(&key) {
            return Role::Waiter(Waiter(slot.clone()));
        }
        let slot = Arc::new(Slot::default());
        map.insert(key.clone(), slot.clone());
        Role::Leader(Leader {
            flights: self,
            key,
            slot,
            finished: false,
        })
    }
}

impl Leader<'_> {
    /// Whether any request is waiting on this one.
    pub(crate) fn has_waiters(&self) -> bool {
        // The map and the leader hold one reference each; any more are
        // waiters.
        Arc::strong_count(&self.slot) > 2
    }

    /// Tells the waiters, and ends the flight: later requests look in the
    /// cache again.
    pub(crate) fn finish(mut self, outcome: Outcome) {
        self.end(outcome);
    }

    fn end(&mut self, outcome: Outcome) {
        if self.finished {
            return;
        }
        self.finished = true;
        {
            let mut map = self.flights.lock();
            if map
                .get(&self.key)
                .is_some_and(|s| Arc::ptr_eq(s, &self.slot))
            {
                map.remove(&self.key);
            }
        }
        if Arc::strong_count(&self.slot) > 1 {
            *self.slot.outcome() = Some(outcome);
            self.slot.done.notify_waiters();
        }
    }
}

impl Drop for Leader<'_> {
    fn drop(&mut self) {
        self.end(Outcome::Abandoned);
    }
}

impl Waiter {
    /// Waits for the flight's outcome.
    pub(crate) async fn outcome(self) -> Outcome {
        let slot = self.0;
        loop {
            let notified = slot.done.notified();
            tokio::pin!(notified);
            // Registered before checking, so a finish in between wakes us.
            notified.as_mut().enable();
            if let Some(outcome) = slot.outcome().clone() {
                return outcome;
            }
            notified.await;
        }
    }
}
