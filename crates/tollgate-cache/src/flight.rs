//! Single-flight: one upstream request per key at a time; the requests that
//! arrive meanwhile wait for its outcome.
//!
//! Also the bookkeeping that keeps coalescing honest:
//!
//! - every fetch holds a [`Ticket`] for its URI, so that a write to the URI
//!   (a successful unsafe request, [`invalidate`](Flights::invalidate),
//!   [`clear`](Flights::clear)) while it is under way is seen: its answer is
//!   not stored, and no request made after the write joins its flight;
//! - the keys whose last answer could not be shared are remembered for a
//!   while, so their requests go upstream at once rather than wait for a
//!   leader whose answer they cannot use.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use http::Method;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::entry::Stored;

/// How many keys whose answer could not be shared are remembered at most.
pub(crate) const MAX_UNSHARED: usize = 4_096;

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
    /// A response the cache could serve: a waiter takes it if it is still
    /// fresh and its `Vary` values match the waiter's request.
    Shared(Arc<Stored>),
    /// The upstream failed and this stale stored response was served: a
    /// waiter whose `Vary` values match takes it too.
    Stale(Arc<Stored>),
    /// The upstream request failed.
    Failed(tollgate_core::SharedError),
    /// A response the cache could not serve to anyone else (not storable,
    /// not fresh, `Vary: *`, too large): each waiter asks for itself.
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

/// Writes seen for a URI while fetches for it are under way.
struct UriState {
    /// Bumped by every write to the URI.
    writes: u64,
    /// Tickets held for the URI; the state goes when the last one does.
    fetches: usize,
}

#[derive(Default)]
struct State {
    flights: HashMap<FlightKey, Arc<Slot>>,
    uris: HashMap<Arc<str>, UriState>,
    /// Bumped by every `clear`.
    clears: u64,
    /// Keys whose last answer could not be shared, until when.
    unshared: HashMap<FlightKey, Instant>,
}

#[derive(Default)]
pub(crate) struct Flights {
    state: Mutex<State>,
}

pub(crate) enum Role<'a> {
    /// Fetches for itself and its waiters.
    Leader(Leader<'a>, Ticket<'a>),
    /// Waits for the leader's outcome.
    Waiter(Waiter),
    /// Fetches for itself only.
    Alone(Ticket<'a>),
}

/// A fetch under way for a URI, taken before its request is sent: whether
/// the URI was written since tells whether its answer may be stored.
pub(crate) struct Ticket<'a> {
    flights: &'a Flights,
    uri: Arc<str>,
    writes: u64,
    clears: u64,
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
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn ticket<'a>(&'a self, state: &mut State, uri: &Arc<str>) -> Ticket<'a> {
        let entry = state.uris.entry(uri.clone()).or_insert(UriState {
            writes: 0,
            fetches: 0,
        });
        entry.fetches += 1;
        Ticket {
            flights: self,
            uri: uri.clone(),
            writes: entry.writes,
            clears: state.clears,
        }
    }

    /// Leads the flight for `key`, or waits on the one under way. With
    /// `may_wait` false the request never waits: it fetches alone if a
    /// flight is under way.
    pub(crate) fn join(&self, key: FlightKey, may_wait: bool) -> Role<'_> {
        let mut state = self.lock();
        match state.flights.get(&key) {
            Some(slot) if may_wait => Role::Waiter(Waiter(slot.clone())),
            Some(_) => Role::Alone(self.ticket(&mut state, &key.uri)),
            None => {
                let slot = Arc::new(Slot::default());
                state.flights.insert(key.clone(), slot.clone());
                let ticket = self.ticket(&mut state, &key.uri);
                Role::Leader(
                    Leader {
                        flights: self,
                        key,
                        slot,
                        finished: false,
                    },
                    ticket,
                )
            }
        }
    }

    /// A ticket for a fetch of `uri` that leads no flight.
    pub(crate) fn alone(&self, uri: &Arc<str>) -> Ticket<'_> {
        let mut state = self.lock();
        self.ticket(&mut state, uri)
    }

    /// A write to `uri` (normalized): fetches under way for it store
    /// nothing, and their flights take no more waiters.
    pub(crate) fn invalidate(&self, uri: &str) {
        let mut state = self.lock();
        if let Some(entry) = state.uris.get_mut(uri) {
            entry.writes += 1;
        }
        state.flights.retain(|key, _| &*key.uri != uri);
        state.unshared.retain(|key, _| &*key.uri != uri);
    }

    /// A write to every URI.
    pub(crate) fn clear(&self) {
        let mut state = self.lock();
        state.clears += 1;
        state.flights.clear();
        state.unshared.clear();
    }

    /// Whether the last answer for `key` could not be shared, recently.
    pub(crate) fn is_unshared(&self, key: &FlightKey, now: Instant) -> bool {
        let mut state = self.lock();
        match state.unshared.get(key) {
            Some(until) if *until > now => true,
            Some(_) => {
                state.unshared.remove(key);
                false
            }
            None => false,
        }
    }

    /// Remembers (for `how_long`) or forgets that the answer for `key`
    /// could not be shared.
    pub(crate) fn set_unshared(&self, key: &FlightKey, unshared: bool, how_long: Duration) {
        let now = Instant::now();
        let mut state = self.lock();
        if !unshared || how_long.is_zero() {
            state.unshared.remove(key);
            return;
        }
        let until = crate::entry::later(now, how_long);
        if state.unshared.len() >= MAX_UNSHARED && !state.unshared.contains_key(key) {
            state.unshared.retain(|_, until| *until > now);
            if state.unshared.len() >= MAX_UNSHARED {
                // Full of live entries: the one ending soonest makes room.
                let soonest = state
                    .unshared
                    .iter()
                    .min_by_key(|(_, until)| **until)
                    .map(|(key, _)| key.clone());
                if let Some(soonest) = soonest {
                    state.unshared.remove(&soonest);
                }
            }
        }
        state.unshared.insert(key.clone(), until);
    }

    /// Flights under way (for tests).
    #[cfg(test)]
    pub(crate) fn len(&self) -> (usize, usize, usize) {
        let state = self.lock();
        (state.flights.len(), state.uris.len(), state.unshared.len())
    }
}

impl Ticket<'_> {
    /// Whether nothing wrote to the URI since the ticket was taken. Called
    /// under the store's write lock, so no write slips in before the insert
    /// it allows.
    pub(crate) fn is_current(&self) -> bool {
        let state = self.flights.lock();
        state.clears == self.clears
            && state
                .uris
                .get(&self.uri)
                .is_some_and(|u| u.writes == self.writes)
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        let mut state = self.flights.lock();
        if let Some(entry) = state.uris.get_mut(&self.uri) {
            entry.fetches -= 1;
            if entry.fetches == 0 {
                state.uris.remove(&self.uri);
            }
        }
    }
}

impl Leader<'_> {
    /// Whether any request is waiting on this one.
    pub(crate) fn has_waiters(&self) -> bool {
        // The map and the leader hold one reference each (the leader's
        // alone once a write detached the flight); any more are waiters.
        Arc::strong_count(&self.slot) > 2 || (Arc::strong_count(&self.slot) > 1 && !self.in_map())
    }

    fn in_map(&self) -> bool {
        self.flights
            .lock()
            .flights
            .get(&self.key)
            .is_some_and(|s| Arc::ptr_eq(s, &self.slot))
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
            let mut state = self.flights.lock();
            if state
                .flights
                .get(&self.key)
                .is_some_and(|s| Arc::ptr_eq(s, &self.slot))
            {
                state.flights.remove(&self.key);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn key(uri: &str) -> FlightKey {
        FlightKey {
            uri: Arc::from(uri),
            method: Method::GET,
            identity: 0,
        }
    }

    #[test]
    fn tickets_and_flights_leave_nothing_behind() {
        let flights = Flights::default();
        let Role::Leader(leader, ticket) = flights.join(key("/a"), true) else {
            panic!("the first leads");
        };
        let Role::Waiter(waiter) = flights.join(key("/a"), true) else {
            panic!("the second waits");
        };
        let Role::Alone(alone) = flights.join(key("/a"), false) else {
            panic!("one that may not wait fetches alone");
        };
        assert_eq!(flights.len(), (1, 1, 0));
        assert!(leader.has_waiters());
        drop(waiter);
        assert!(!leader.has_waiters());
        drop((leader, ticket, alone));
        assert_eq!(flights.len(), (0, 0, 0));
    }

    #[test]
    fn a_write_detaches_the_flight_and_stales_its_tickets() {
        let flights = Flights::default();
        let Role::Leader(leader, ticket) = flights.join(key("/a"), true) else {
            panic!("leads");
        };
        let Role::Waiter(_early) = flights.join(key("/a"), true) else {
            panic!("waits");
        };
        let other = flights.alone(&Arc::from("/b"));
        assert!(ticket.is_current());
        flights.invalidate("/a");
        assert!(!ticket.is_current());
        assert!(other.is_current(), "another URI is untouched");
        assert!(leader.has_waiters(), "the early waiter still waits on it");
        // A request after the write leads a flight of its own.
        let Role::Leader(second, fresh) = flights.join(key("/a"), true) else {
            panic!("a request after the write leads");
        };
        assert!(fresh.is_current());
        drop(leader); // ends its own flight, not the new one
        assert!(matches!(flights.join(key("/a"), true), Role::Waiter(_)));
        flights.clear();
        assert!(!fresh.is_current() && !other.is_current());
        drop((second, fresh, other, ticket));
        assert_eq!(flights.len(), (0, 0, 0));
    }

    #[test]
    fn the_unshared_memory_is_bounded_and_expires() {
        let flights = Flights::default();
        let now = Instant::now();
        for i in 0..MAX_UNSHARED + 100 {
            flights.set_unshared(&key(&format!("/{i}")), true, Duration::from_secs(10));
        }
        assert_eq!(flights.len().2, MAX_UNSHARED);
        let last = key(&format!("/{}", MAX_UNSHARED + 99));
        assert!(flights.is_unshared(&last, now));
        assert!(!flights.is_unshared(&last, now + Duration::from_secs(11)));
        flights.set_unshared(&key("/max"), true, Duration::MAX);
        assert!(flights.is_unshared(&key("/max"), now));
        flights.set_unshared(&key("/max"), false, Duration::MAX);
        assert!(!flights.is_unshared(&key("/max"), now));
        flights.set_unshared(&key("/zero"), true, Duration::ZERO);
        assert!(!flights.is_unshared(&key("/zero"), now));
    }
}
