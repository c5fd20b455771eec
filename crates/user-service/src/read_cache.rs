//! A bounded, short-lived cache of users for `GetUser`, the hot read.
//!
//! Why: a lookup through sqlx costs more than the rest of the call put
//! together (for SQLite a hand-off to the connection's thread and back), and
//! the workers look the same users up again and again.
//!
//! Coherence, in order of strength:
//! - Writes through this process invalidate the user right after their
//!   commit.
//! - Writes through other replicas (PostgreSQL) arrive as `NOTIFY`s on
//!   [`crate::change_feed`] and invalidate the user a few milliseconds after
//!   their commit. While that feed is down the cache is [suspended]: every
//!   read goes to the database until the feed is back and the cache has been
//!   emptied, since changes in between were missed.
//! - Whatever else writes the database (a migration, a person with psql) is
//!   seen at the latest `ttl` later: entries expire.
//!
//! A read that raced a write must not put the old row back after the write's
//! invalidation. Every invalidation bumps an epoch under the lock; a reader
//! takes a [`Ticket`] before it queries and its row is stored only if no
//! invalidation happened since. Only found users are cached; a miss or an
//! error goes to the database every time.
//!
//! [suspended]: ReadCache::suspend

use std::{
    collections::HashMap,
    sync::{Mutex, MutexGuard},
    time::{Duration, Instant},
};

use metrics::Counter;

use crate::{domain::User, metrics::USER_CACHE_LOOKUPS};

/// Size and lifetime of the cache; a zero of either turns it off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheSettings {
    /// Most users held; when full an arbitrary entry makes room.
    pub capacity: usize,
    /// Longest an entry is served without being read again.
    pub ttl: Duration,
}

/// Proof of the epoch a database read started in; see [`ReadCache::store`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket(u64);

#[derive(Debug)]
struct Entry {
    user: User,
    expires: Instant,
}

#[derive(Debug, Default)]
struct State {
    entries: HashMap<String, Entry>,
    /// Bumped by every invalidation.
    epoch: u64,
    /// Off while changes from other writers could be missed.
    suspended: bool,
}

/// See the module docs. Shared by every call (behind an `Arc`).
#[derive(Debug)]
pub struct ReadCache {
    settings: CacheSettings,
    state: Mutex<State>,
    hits: Counter,
    misses: Counter,
}

impl ReadCache {
    /// An empty cache.
    pub fn new(settings: CacheSettings) -> Self {
        ReadCache {
            settings,
            state: Mutex::default(),
            hits: metrics::counter!(USER_CACHE_LOOKUPS, "result" => "hit"),
            misses: metrics::counter!(USER_CACHE_LOOKUPS, "result" => "miss"),
        }
    }

    /// Whether the cache holds anything at all (capacity and TTL above 0).
    pub fn is_enabled(&self) -> bool {
        self.settings.capacity > 0 && !self.settings.ttl.is_zero()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while the lock is held; a poisoned map is still whole.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The cached user, if present and fresh; otherwise a ticket to read the
    /// database with and hand to [`ReadCache::store`].
    pub fn lookup(&self, id: &str) -> Result<User, Ticket> {
        if !self.is_enabled() {
            return Err(Ticket(0));
        }
        let mut state = self.lock();
        if !state.suspended
            && let Some(entry) = state.entries.get(id)
        {
            if entry.expires > Instant::now() {
                let user = entry.user.clone();
                drop(state);
                self.hits.increment(1);
                return Ok(user);
            }
            state.entries.remove(id);
        }
        let ticket = Ticket(state.epoch);
        drop(state);
        self.misses.increment(1);
        Err(ticket)
    }

    /// Keeps `user`, read from the database under `ticket`, unless something
    /// was invalidated since the ticket was taken (the row may be older than
    /// that invalidation).
    pub fn store(&self, ticket: Ticket, user: &User) {
        if !self.is_enabled() {
            return;
        }
        let mut state = self.lock();
        if state.suspended || state.epoch != ticket.0 {
            return;
        }
        if state.entries.len() >= self.settings.capacity
            && !state.entries.contains_key(&user.id)
            && let Some(victim) = state.entries.keys().next().cloned()
        {
            state.entries.remove(&victim);
        }
        state.entries.insert(
            user.id.clone(),
            Entry {
                user: user.clone(),
                expires: Instant::now() + self.settings.ttl,
            },
        );
    }

    /// Forgets user `id`: it changed, or may have.
    pub fn invalidate(&self, id: &str) {
        if !self.is_enabled() {
            return;
        }
        let mut state = self.lock();
        state.epoch += 1;
        state.entries.remove(id);
    }

    /// Stops serving and storing: changes by other writers can no longer be
    /// seen (their feed is down).
    pub fn suspend(&self) {
        let mut state = self.lock();
        state.epoch += 1;
        state.suspended = true;
        state.entries.clear();
    }

    /// Serves again, from empty: the feed is back, and whatever changed
    /// while it was down is read afresh.
    pub fn resume(&self) {
        let mut state = self.lock();
        state.epoch += 1;
        state.suspended = false;
        state.entries.clear();
    }

    /// Whether the cache is off until the change feed listens again.
    pub fn is_suspended(&self) -> bool {
        self.lock().suspended
    }

    /// Users held now.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Whether no user is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: &str, name: &str) -> User {
        User {
            id: id.into(),
            name: name.into(),
            age: 30,
            email: String::new(),
            created_at: 1,
            updated_at: 1,
        }
    }

    fn cache(capacity: usize, ttl: Duration) -> ReadCache {
        ReadCache::new(CacheSettings { capacity, ttl })
    }

    fn read(cache: &ReadCache, id: &str) -> Option<String> {
        cache.lookup(id).ok().map(|user| user.name)
    }

    #[test]
    fn a_stored_user_is_served_until_invalidated() {
        let cache = cache(10, Duration::from_secs(60));
        let ticket = cache.lookup("u-1").unwrap_err();
        cache.store(ticket, &user("u-1", "Alice"));
        assert_eq!(read(&cache, "u-1").as_deref(), Some("Alice"));

        cache.invalidate("u-1");
        assert_eq!(read(&cache, "u-1"), None);
    }

    #[test]
    fn a_read_that_raced_a_write_is_not_stored() {
        let cache = cache(10, Duration::from_secs(60));
        // The read starts, the write commits and invalidates, then the read's
        // (old) row arrives.
        let ticket = cache.lookup("u-1").unwrap_err();
        cache.invalidate("u-1");
        cache.store(ticket, &user("u-1", "Old Alice"));
        assert_eq!(read(&cache, "u-1"), None);

        // A read that starts after the write is stored.
        let ticket = cache.lookup("u-1").unwrap_err();
        cache.store(ticket, &user("u-1", "New Alice"));
        assert_eq!(read(&cache, "u-1").as_deref(), Some("New Alice"));
    }

    #[test]
    fn entries_expire() {
        let cache = cache(10, Duration::from_millis(20));
        let ticket = cache.lookup("u-1").unwrap_err();
        cache.store(ticket, &user("u-1", "Alice"));
        assert!(read(&cache, "u-1").is_some());
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(read(&cache, "u-1"), None);
        assert!(cache.is_empty(), "an expired entry is dropped when found");
    }

    #[test]
    fn capacity_is_a_bound() {
        let cache = cache(3, Duration::from_secs(60));
        for i in 0..10 {
            let id = format!("u-{i}");
            let ticket = cache.lookup(&id).unwrap_err();
            cache.store(ticket, &user(&id, "x"));
        }
        assert_eq!(cache.len(), 3);
        assert!(read(&cache, "u-9").is_some(), "the newest entry is kept");
    }

    #[test]
    fn a_suspended_cache_serves_and_stores_nothing_until_resumed() {
        let cache = cache(10, Duration::from_secs(60));
        let ticket = cache.lookup("u-1").unwrap_err();
        cache.store(ticket, &user("u-1", "Alice"));

        cache.suspend();
        assert_eq!(read(&cache, "u-1"), None);
        let ticket = cache.lookup("u-2").unwrap_err();
        cache.store(ticket, &user("u-2", "Bob"));
        assert_eq!(read(&cache, "u-2"), None);

        // A read that started while suspended is not stored after resume:
        // it may predate a change the feed missed.
        let stale = cache.lookup("u-3").unwrap_err();
        cache.resume();
        cache.store(stale, &user("u-3", "Carol"));
        assert!(cache.is_empty());
        let ticket = cache.lookup("u-3").unwrap_err();
        cache.store(ticket, &user("u-3", "Carol"));
        assert_eq!(read(&cache, "u-3").as_deref(), Some("Carol"));
    }

    #[test]
    fn a_zero_capacity_or_ttl_turns_it_off() {
        for cache in [cache(0, Duration::from_secs(60)), cache(10, Duration::ZERO)] {
            let ticket = cache.lookup("u-1").unwrap_err();
            cache.store(ticket, &user("u-1", "Alice"));
            assert_eq!(read(&cache, "u-1"), None);
        }
    }
}
