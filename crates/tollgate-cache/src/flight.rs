//! Single-flight: one upstream request per key at a time; the requests that
//! arrive meanwhile wait for its outcome.

use std::collections::HashMap;
use std::error::Error as StdError;
use std::sync::{Arc, Mutex, PoisonError};

use http::Method;
use tokio::sync::watch;

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
    Pending,
    /// A response the waiters can serve (if their `Vary` values match).
    Shared(Arc<Stored>),
    /// The upstream request failed.
    Failed(Arc<dyn StdError + Send + Sync>),
    /// A response that could not be shared (too large, or streamed): each
    /// waiter asks for itself.
    NotShared,
}

#[derive(Default)]
pub(crate) struct Flights {
    map: Mutex<HashMap<FlightKey, watch::Receiver<Outcome>>>,
}

pub(crate) enum Role<'a> {
    Leader(Leader<'a>),
    Waiter(watch::Receiver<Outcome>),
}

/// The request that fetches for everyone. Dropped without [`finish`]ing
/// (cancelled), it lets the waiters go: one of them leads next.
///
/// [`finish`]: Leader::finish
pub(crate) struct Leader<'a> {
    flights: &'a Flights,
    key: FlightKey,
    tx: watch::Sender<Outcome>,
}

impl Flights {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<FlightKey, watch::Receiver<Outcome>>> {
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Leads the flight for `key`, or waits on the one under way.
    pub(crate) fn join(&self, key: FlightKey) -> Role<'_> {
        let mut map = self.lock();
        if let Some(rx) = map.get(&key) {
            if rx.has_changed().is_ok() {
                return Role::Waiter(rx.clone());
            }
        }
        let (tx, rx) = watch::channel(Outcome::Pending);
        map.insert(key.clone(), rx);
        Role::Leader(Leader {
            flights: self,
            key,
            tx,
        })
    }
}

impl Leader<'_> {
    /// Whether any request is waiting on this one.
    pub(crate) fn has_waiters(&self) -> bool {
        // The map holds one receiver; any more are waiters.
        self.tx.receiver_count() > 1
    }

    /// Tells the waiters, and ends the flight: later requests look in the
    /// cache again.
    pub(crate) fn finish(self, outcome: Outcome) {
        self.tx.send_replace(outcome);
    }
}

impl Drop for Leader<'_> {
    fn drop(&mut self) {
        let mut map = self.flights.lock();
        if map
            .get(&self.key)
            .is_some_and(|rx| rx.same_channel(&self.tx.subscribe()))
        {
            map.remove(&self.key);
        }
    }
}

/// Waits for the flight's outcome; `None` if its leader was dropped without
/// one.
pub(crate) async fn wait(mut rx: watch::Receiver<Outcome>) -> Option<Outcome> {
    let outcome = rx
        .wait_for(|o| !matches!(o, Outcome::Pending))
        .await
        .ok()?
        .clone();
    Some(outcome)
}
