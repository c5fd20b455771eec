//! Changes committed by other replicas, heard as PostgreSQL notifications,
//! so each replica's [`ReadCache`] forgets a user soon after anyone changed
//! it.
//!
//! Every create, update and delete runs `pg_notify('user_changed', <id>)`
//! inside its transaction ([`crate::store`]); PostgreSQL delivers it to every
//! listener when, and only if, the transaction commits. (The outbox relay
//! listens too: a change through any replica wakes it.) Notifications are
//! not stored: one sent while a listener's connection was down is gone. So
//! the cache is suspended from the moment the connection is lost until a new
//! one is listening again, and then starts from empty.
//!
//! A connection that dies without a word (a network partition, no FIN) is
//! not noticed here; entries then still expire after the cache's TTL.
//!
//! SQLite has no such feed and needs none: the file belongs to one process,
//! whose own writes invalidate directly.

use std::sync::Arc;

use common::reconnect::{Session, keep_connected};
use sqlx::postgres::PgListener;
use tokio_util::sync::CancellationToken;

use crate::{
    metrics::USER_CACHE_FEED_ERRORS,
    read_cache::ReadCache,
    store::{CHANGE_CHANNEL, UserStore},
};

/// Listens for changes and invalidates the cache; see the module docs.
#[derive(Debug)]
pub struct ChangeFeed {
    store: UserStore,
    cache: Arc<ReadCache>,
}

impl ChangeFeed {
    /// A feed of `store`'s changes (PostgreSQL), invalidating `cache`.
    pub fn new(store: UserStore, cache: Arc<ReadCache>) -> Self {
        ChangeFeed { store, cache }
    }

    /// Listens until `stop`, reconnecting with backoff
    /// ([`keep_connected`]); the cache is suspended whenever the feed is not
    /// listening.
    pub async fn run(self, stop: CancellationToken) {
        keep_connected("change feed", self.store.url(), &stop, || {
            self.session(&stop)
        })
        .await;
    }

    /// One connection: listen, then invalidate on every notification until
    /// the connection is lost or `stop` fires.
    async fn session(&self, stop: &CancellationToken) -> Result<Session, sqlx::Error> {
        self.cache.suspend();
        let listening = tokio::select! {
            listening = self.store.listen_for_changes() => listening,
            () = stop.cancelled() => return Ok(Session::Finished),
        };
        let listener = match listening {
            // SQLite: nothing to hear, and nobody else writes.
            Ok(None) => {
                self.cache.resume();
                return Ok(Session::Finished);
            }
            Ok(Some(listener)) => listener,
            Err(error) => {
                // Stays suspended until a later attempt listens again.
                metrics::counter!(USER_CACHE_FEED_ERRORS).increment(1);
                return Err(error);
            }
        };
        // Anything cached before now may predate a change that was never
        // heard: start from empty.
        self.cache.resume();
        tracing::info!(channel = CHANGE_CHANNEL, "read cache following changes");
        Ok(self.follow(listener, stop).await)
    }

    /// Invalidates on every notification until the connection is lost or
    /// `stop` fires.
    async fn follow(&self, mut listener: PgListener, stop: &CancellationToken) -> Session {
        loop {
            let next = tokio::select! {
                next = listener.try_recv() => next,
                () = stop.cancelled() => return Session::Finished,
            };
            let reason = match next {
                Ok(Some(notification)) => {
                    self.cache.invalidate(notification.payload());
                    continue;
                }
                // The connection dropped: whatever was sent meanwhile is lost.
                Ok(None) => "connection lost".to_string(),
                Err(error) => error.to_string(),
            };
            // Until the next session listens, every read goes to the database.
            self.cache.suspend();
            metrics::counter!(USER_CACHE_FEED_ERRORS).increment(1);
            return Session::Lost(format!("{reason}; read cache suspended"));
        }
    }
}
