//! The state all clones of a cache share: moka, the flights, the counters.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use http::{HeaderMap, HeaderName, Method, StatusCode};
use moka::notification::RemovalCause;
use tokio::time::Instant;

use crate::entry::{Stored, UriEntry, Variant};
use crate::flight::{Flights, Ticket};
use crate::policy::Freshness;
use crate::tier::Tier;

/// How the cache behaves; set with [`CacheBuilder`](crate::CacheBuilder).
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) freshness: Freshness,
    pub(crate) methods: Vec<Method>,
    pub(crate) statuses: Vec<StatusCode>,
    pub(crate) max_entry_bytes: usize,
    pub(crate) stale_if_error: Duration,
    pub(crate) keep_for_revalidation: Duration,
    pub(crate) credential_headers: Vec<HeaderName>,
    pub(crate) max_variants: usize,
    /// How long a key whose answer could not be shared lets its requests
    /// go upstream without waiting on a flight.
    pub(crate) unshared_for: Duration,
}

#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) hits: AtomicU64,
    pub(crate) misses: AtomicU64,
    pub(crate) coalesced: AtomicU64,
    pub(crate) revalidated: AtomicU64,
    pub(crate) stale: AtomicU64,
    pub(crate) bypassed: AtomicU64,
    pub(crate) evictions: AtomicU64,
    pub(crate) tier_hits: AtomicU64,
    pub(crate) tier_misses: AtomicU64,
    pub(crate) tier_errors: AtomicU64,
    pub(crate) tier_skipped: AtomicU64,
    pub(crate) tier_writes: AtomicU64,
}

impl Counters {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

pub(crate) struct Store {
    pub(crate) config: Config,
    entries: moka::sync::Cache<Arc<str>, Arc<UriEntry>>,
    pub(crate) flights: Flights,
    pub(crate) counters: Arc<Counters>,
    /// The second tier, if any.
    pub(crate) tier: Option<Arc<Tier>>,
    /// Held by every change to `entries`: an insert checks its ticket and
    /// replaces the URI's variants with no write slipping in between.
    writes: Mutex<()>,
}

impl Store {
    pub(crate) fn new(config: Config, max_bytes: u64, tier: Option<Tier>) -> Store {
        let counters = Arc::new(Counters::default());
        let evictions = counters.clone();
        let entries = moka::sync::Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|_key: &Arc<str>, entry: &Arc<UriEntry>| entry.weight)
            // No time-based expiry in moka: its per-entry timer wheel cost
            // more than a miss's every other step. Entries carry their own
            // deadlines on tokio's clock, and the byte capacity bounds what
            // stale ones can hold; `insert` drops dead variants.
            .eviction_listener(move |_key, _value, cause| {
                if cause == RemovalCause::Size {
                    Counters::bump(&evictions.evictions);
                }
            })
            .build();
        Store {
            config,
            entries,
            flights: Flights::default(),
            counters,
            tier: tier.map(Arc::new),
            writes: Mutex::new(()),
        }
    }

    /// The stored response for this request, fresh or not.
    pub(crate) fn lookup(
        &self,
        uri: &str,
        method: &Method,
        identity: u128,
        request: &HeaderMap,
    ) -> Option<Arc<Stored>> {
        let entry = self.entries.get(uri)?;
        entry.find(method, identity, request).cloned()
    }

    /// Stores `stored` for this request, replacing the variant it matches,
    /// unless the URI was written since `ticket` was taken (the answer may
    /// predate the write). Whether it was stored.
    pub(crate) fn insert(
        &self,
        ticket: &Ticket<'_>,
        uri: Arc<str>,
        method: Method,
        identity: u128,
        request: &HeaderMap,
        stored: Arc<Stored>,
    ) -> bool {
        let _writing = self.writes.lock().unwrap_or_else(PoisonError::into_inner);
        if !ticket.is_current() {
            return false;
        }
        let now = Instant::now();
        let mut variants: Vec<Variant> = match self.entries.get(&*uri) {
            Some(entry) => entry
                .variants
                .iter()
                .filter(|v| {
                    !(v.method == method
                        && v.identity == identity
                        && v.stored.vary.matches(request))
                        && v.stored.stale_until > now
                })
                .cloned()
                .collect(),
            None => Vec::new(),
        };
        if variants.len() >= self.config.max_variants {
            // The oldest goes.
            variants.remove(0);
        }
        variants.push(Variant {
            method,
            identity,
            stored,
        });
        let entry = UriEntry::new(variants, uri.len());
        self.entries.insert(uri, Arc::new(entry));
        true
    }

    /// Drops everything stored for `uri` (normalized), and keeps what the
    /// fetches under way for it bring back from being stored or shared with
    /// later requests.
    pub(crate) fn invalidate(&self, uri: &str) {
        let _writing = self.writes.lock().unwrap_or_else(PoisonError::into_inner);
        self.flights.invalidate(uri);
        self.entries.invalidate(uri);
    }

    /// Drops everything, as a write to every URI.
    pub(crate) fn clear(&self) {
        let _writing = self.writes.lock().unwrap_or_else(PoisonError::into_inner);
        self.flights.clear();
        self.entries.invalidate_all();
    }

    pub(crate) fn weighted_size(&self) -> u64 {
        self.entries.run_pending_tasks();
        self.entries.weighted_size()
    }

    pub(crate) fn entry_count(&self) -> u64 {
        self.entries.run_pending_tasks();
        self.entries.entry_count()
    }
}
