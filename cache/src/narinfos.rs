//! Recently served narinfos, kept in memory for a few seconds.
//!
//! A narinfo GET is the request Nix sends most, and looking it up in the index costs a database
//! round trip that, for SQLite, crosses to sqlx's worker thread and back: it limited the server
//! to a fifth of what nginx serves from files (docs/benchmarks.md). This cache holds what a
//! narinfo GET answered — the cache's record, the path's id and the narinfo text — so that
//! repeated reads of the same paths skip the index.
//!
//! What it must never do is serve something the index no longer serves, or hide something it
//! now serves:
//!
//! - Only paths found are kept; a 404 is always looked up again, so an upload is served at once.
//! - This process's garbage collection clears the cache right after it commits its deletions and
//!   before it deletes any object, and a publication forgets its path when it commits (a path
//!   deleted by collection may come back with another NAR).
//! - A lookup that raced with either takes a [`Ticket`] before reading the index and may only
//!   insert while no invalidation happened since: otherwise it could put back what was just
//!   invalidated.
//! - Other processes (a `kiln cache gc`, another web replica) cannot reach this memory: every
//!   entry expires one TTL ([`DEFAULT_TTL`]) after the index read it came from began, and a
//!   collection that deleted paths waits one TTL after its commit before it deletes any object
//!   (`gc::collect`). So whatever process serves a narinfo from memory, its NAR is still stored.
//! - Tokens are never cached: private caches check the request's token on every read, hit or
//!   miss.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kiln_db::PathId;

use crate::caches::CacheRecord;

/// How long an entry is served after it was read from the index.
pub const DEFAULT_TTL: Duration = Duration::from_secs(5);

/// Most bytes of narinfo text held (entries also hold a key and shared records, a few dozen
/// bytes each). Half of it is the generation being filled, half the previous one.
pub const DEFAULT_MAX_BYTES: usize = 32 << 20;

/// A narinfo as a GET serves it.
#[derive(Debug, Clone)]
pub struct ServedNarinfo {
    /// The cache it belongs to, as read with it (for authorization).
    pub cache: Arc<CacheRecord>,
    /// The path's row, for access-time tracking.
    pub path: PathId,
    /// The narinfo text, signed.
    pub text: Bytes,
}

#[derive(Debug)]
struct Entry {
    served: ServedNarinfo,
    expires: Instant,
}

/// Taken before an index read: the invalidation count and the time at that moment; see
/// [`NarinfoCache::insert`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    epoch: u64,
    taken: Instant,
}

#[derive(Debug, Default)]
struct State {
    /// Invalidations so far.
    epoch: u64,
    /// Entries inserted since the last rotation, by `<cache>/<hash part>`.
    current: HashMap<String, Entry>,
    /// Bytes of narinfo text in `current`.
    current_bytes: usize,
    /// The generation before; dropped whole at the next rotation. Two generations bound the
    /// memory without tracking recency per read.
    previous: HashMap<String, Entry>,
}

/// Positive narinfo lookups, bounded in size and age. Shared by all requests of one process.
#[derive(Debug)]
pub struct NarinfoCache {
    state: Mutex<State>,
    /// How long an entry lives.
    ttl: Duration,
    /// Bytes of narinfo text one generation holds before it is rotated out.
    generation_bytes: usize,
}

impl Default for NarinfoCache {
    fn default() -> NarinfoCache {
        NarinfoCache::new(DEFAULT_TTL, DEFAULT_MAX_BYTES)
    }
}

fn key(cache: &str, hash_part: &str) -> String {
    let mut key = String::with_capacity(cache.len() + 1 + hash_part.len());
    key.push_str(cache);
    key.push('/');
    key.push_str(hash_part);
    key
}

impl NarinfoCache {
    /// A cache whose entries live `ttl` and which holds about `max_bytes` of narinfo text at
    /// most. A zero `ttl` disables it.
    pub fn new(ttl: Duration, max_bytes: usize) -> NarinfoCache {
        NarinfoCache {
            state: Mutex::default(),
            ttl,
            generation_bytes: max_bytes / 2,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("narinfo cache lock")
    }

    /// The narinfo of `hash_part` in the cache named `cache`, if it was read from the index less
    /// than the TTL ago and nothing invalidated it since.
    pub fn get(&self, cache: &str, hash_part: &str) -> Option<ServedNarinfo> {
        let key = key(cache, hash_part);
        let now = Instant::now();
        let state = self.state();
        let entry = state
            .current
            .get(&key)
            .or_else(|| state.previous.get(&key))?;
        (entry.expires > now).then(|| entry.served.clone())
    }

    /// How long entries live.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Taken before reading the index for a later [`NarinfoCache::insert`].
    pub fn ticket(&self) -> Ticket {
        let epoch = self.state().epoch;
        Ticket {
            epoch,
            taken: Instant::now(),
        }
    }

    /// Keeps `served` as the narinfo of `hash_part` in `cache` until one TTL after `ticket` was
    /// taken (the index read began after that, so no deletion committed before it), unless
    /// something was invalidated since: the index read may then predate the invalidation.
    pub fn insert(&self, ticket: Ticket, cache: &str, hash_part: &str, served: ServedNarinfo) {
        if self.ttl.is_zero() || served.text.len() > self.generation_bytes {
            return;
        }
        let expires = ticket.taken + self.ttl;
        let mut state = self.state();
        if state.epoch != ticket.epoch {
            return;
        }
        if state.current_bytes + served.text.len() > self.generation_bytes {
            state.previous = std::mem::take(&mut state.current);
            state.current_bytes = 0;
        }
        state.current_bytes += served.text.len();
        let key = key(cache, hash_part);
        if let Some(old) = state.current.insert(key, Entry { served, expires }) {
            state.current_bytes -= old.served.text.len();
        }
    }

    /// Forgets the narinfo of `hash_part` in `cache` (it was just published, possibly anew).
    pub fn forget(&self, cache: &str, hash_part: &str) {
        let key = key(cache, hash_part);
        let mut state = self.state();
        state.epoch += 1;
        if let Some(old) = state.current.remove(&key) {
            state.current_bytes -= old.served.text.len();
        }
        state.previous.remove(&key);
    }

    /// Forgets everything (garbage collection deleted paths).
    pub fn clear(&self) {
        let mut state = self.state();
        state.epoch += 1;
        state.current.clear();
        state.current_bytes = 0;
        state.previous.clear();
    }

    /// Entries held, expired or not.
    pub fn len(&self) -> usize {
        let state = self.state();
        state.current.len() + state.previous.len()
    }

    /// Whether no entry is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_db::{CacheId, Timestamp};
    use kiln_nix::signing::SecretKey;

    fn served(text: &str) -> ServedNarinfo {
        ServedNarinfo {
            cache: Arc::new(CacheRecord {
                id: CacheId(1),
                name: "main".to_owned(),
                public: true,
                priority: 30,
                signing_key: SecretKey::from_seed("test-1", &[7; 32]).unwrap(),
                created_at: Timestamp(0),
            }),
            path: PathId(7),
            text: Bytes::copy_from_slice(text.as_bytes()),
        }
    }

    #[test]
    fn a_lookup_inserted_is_served_until_it_expires() {
        let cache = NarinfoCache::new(Duration::from_millis(50), 1 << 20);
        cache.insert(cache.ticket(), "main", "abc", served("StorePath: x"));
        assert_eq!(cache.get("main", "abc").unwrap().text, "StorePath: x");
        assert!(
            cache.get("other", "abc").is_none(),
            "keys include the cache"
        );
        assert!(cache.get("main", "abd").is_none());
        std::thread::sleep(Duration::from_millis(60));
        assert!(
            cache.get("main", "abc").is_none(),
            "expired entries are not served"
        );
    }

    #[test]
    fn forgetting_and_clearing_stop_serving() {
        let cache = NarinfoCache::default();
        cache.insert(cache.ticket(), "main", "a", served("a"));
        cache.insert(cache.ticket(), "main", "b", served("b"));
        cache.forget("main", "a");
        assert!(cache.get("main", "a").is_none());
        assert!(cache.get("main", "b").is_some());
        cache.clear();
        assert!(cache.get("main", "b").is_none());
        assert!(cache.is_empty());
    }

    #[test]
    fn a_lookup_that_raced_an_invalidation_is_not_kept() {
        let cache = NarinfoCache::default();
        // The index was read (ticket), then garbage collection committed and cleared.
        let before_gc = cache.ticket();
        cache.clear();
        cache.insert(before_gc, "main", "a", served("deleted meanwhile"));
        assert!(cache.get("main", "a").is_none());
        // The same for a publication of another path.
        let before_publish = cache.ticket();
        cache.forget("main", "b");
        cache.insert(before_publish, "main", "a", served("maybe stale"));
        assert!(cache.get("main", "a").is_none());
        // A lookup after the invalidation is kept.
        cache.insert(cache.ticket(), "main", "a", served("fresh"));
        assert_eq!(cache.get("main", "a").unwrap().text, "fresh");
    }

    #[test]
    fn memory_stays_bounded_by_rotating_generations() {
        // Generations of 100 bytes of text: 10 entries of 10 bytes each.
        let cache = NarinfoCache::new(DEFAULT_TTL, 200);
        for i in 0..1000 {
            cache.insert(cache.ticket(), "main", &i.to_string(), served("0123456789"));
        }
        assert!(cache.len() <= 20, "{} entries held", cache.len());
        assert!(cache.get("main", "999").is_some(), "recent entries stay");
        assert!(cache.get("main", "0").is_none(), "old ones go");
        // Text larger than a generation is never held.
        cache.insert(cache.ticket(), "main", "big", served(&"x".repeat(101)));
        assert!(cache.get("main", "big").is_none());
    }

    #[test]
    fn a_zero_ttl_disables_the_cache() {
        let cache = NarinfoCache::new(Duration::ZERO, 1 << 20);
        cache.insert(cache.ticket(), "main", "a", served("a"));
        assert!(cache.get("main", "a").is_none());
    }
}
