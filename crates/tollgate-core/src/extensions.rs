//! The extension types that layers hand each other through a request's or
//! a response's extensions. Each says who writes it and who reads it.

use std::hash::{BuildHasher, Hash};
use std::sync::OnceLock;

use tokio::time::Instant;

/// A deadline for the whole call, in the request's extensions.
///
/// Written by an outer layer (the `tollgate` facade puts its total timeout
/// here); read by the retry layer (no retry starts whose wait would pass
/// it) and the rate limiter (a permit beyond it is refused at once rather
/// than waited for).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Deadline(pub Instant);

impl Deadline {
    /// The deadline `timeout` from now, or `None` when that is too far for
    /// the clock (`Duration::MAX`, written for "no limit"): no deadline
    /// rather than a panic.
    pub fn after(timeout: std::time::Duration) -> Option<Deadline> {
        Instant::now().checked_add(timeout).map(Deadline)
    }
}

/// On a response: the instant a layer below (the rate limiter) has already
/// scheduled the server's `Retry-After` to end.
///
/// Written by the rate limiter when it learns a pause no longer than its
/// cap; read by the retry layer, which then waits until exactly this instant
/// instead of reading the header again, so one signal is never waited for
/// twice. A pause cut short by the limiter's cap sets none: retry then sees
/// the server's own delay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NotBefore(pub Instant);

/// Keeps the responses of one tenant or user apart from everyone else's:
/// put it in a request's extensions and only requests with the same
/// partition share cached responses.
///
/// The cache already partitions by the request's credential headers and by a
/// [`Credential`](crate::Credential) in its extensions; a `Partition` is for
/// whatever else tells users apart (a tenant id, a session). The `tollgate`
/// facade gives each client with its own credentials its own partition.
///
/// ```
/// use tollgate_core::Partition;
///
/// let tenant = Partition::of(&"tenant-42");
/// assert_eq!(tenant, Partition::of(&"tenant-42"));
/// assert_ne!(tenant, Partition::of(&"tenant-43"));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Partition(u128);

impl Partition {
    /// The partition of `value`, by a 128-bit keyed hash (the key is random
    /// per process): the value itself is not kept.
    pub fn of<T: Hash + ?Sized>(value: &T) -> Partition {
        let (a, b) = hashers();
        Partition(u128::from(a.hash_one(value)) << 64 | u128::from(b.hash_one(value)))
    }

    /// The partition as a number (a keyed hash: it reveals nothing of the
    /// value it was made from).
    pub fn as_u128(&self) -> u128 {
        self.0
    }
}

fn hashers() -> &'static (
    std::collections::hash_map::RandomState,
    std::collections::hash_map::RandomState,
) {
    static HASHERS: OnceLock<(
        std::collections::hash_map::RandomState,
        std::collections::hash_map::RandomState,
    )> = OnceLock::new();
    HASHERS.get_or_init(Default::default)
}
