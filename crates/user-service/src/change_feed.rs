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

use common::{config::SecretUrl, retry::RetryPolicy};
use sqlx::postgres::PgListener;
use tokio_util::sync::CancellationToken;

use crate::{read_cache::ReadCache, store::UserStore};

/// The notification channel; the payload is the user id.
pub const CHANNEL: &str = "user_changed";

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

    /// Listens until `stop`, reconnecting with backoff; the cache is
    /// suspended whenever the feed is not listening.
    pub async fn run(self, stop: CancellationToken) {
        let mut backoff = RetryPolicy::reconnect().backoff();
        loop {
            self.cache.suspend();
            let listening = tokio::select! {
                listening = self.store.listen_for_changes() => listening,
                () = stop.cancelled() => return,
            };
            match listening {
                // SQLite: nothing to hear, and nobody else writes.
                Ok(None) => {
                    self.cache.resume();
                    return;
                }
                Ok(Some(listener)) => {
                    // Anything cached before now may predate a change that
                    // was never heard: start from empty.
                    self.cache.resume();
                    tracing::info!(channel = CHANNEL, "read cache following changes");
                    backoff = RetryPolicy::reconnect().backoff();
                    if let Followed::Stopped = self.follow(listener, &stop).await {
                        return;
                    }
                }
                Err(error) => {
                    metrics::counter!("user_cache_feed_errors_total").increment(1);
                    tracing::warn!(%error, "cannot listen for user changes; read cache suspended");
                }
            }
            let delay = backoff.next().unwrap_or_default();
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = stop.cancelled() => return,
            }
        }
    }

    /// Invalidates on every notification until the connection is lost or
    /// `stop` fires.
    async fn follow(&self, mut listener: PgListener, stop: &CancellationToken) -> Followed {
        loop {
            let next = tokio::select! {
                next = listener.try_recv() => next,
                () = stop.cancelled() => return Followed::Stopped,
            };
            let error = match next {
                Ok(Some(notification)) => {
                    self.cache.invalidate(notification.payload());
                    continue;
                }
                // The connection dropped: whatever was sent meanwhile is lost.
                Ok(None) => "connection lost".to_string(),
                Err(error) => error.to_string(),
            };
            metrics::counter!("user_cache_feed_errors_total").increment(1);
            tracing::warn!(error, "user change feed interrupted; read cache suspended");
            return Followed::Lost;
        }
    }
}

/// A connection of its own to the PostgreSQL at `url`, listening on
/// [`CHANNEL`]. A lost connection shows as `Ok(None)` from `try_recv` at
/// once: it does not reconnect inside `try_recv` (which would wait out its
/// pool's 30 s acquire timeout while the database is down); the caller
/// decides.
pub async fn listen(url: &SecretUrl) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect(url.expose()).await?;
    listener.eager_reconnect(false);
    listener.listen(CHANNEL).await?;
    Ok(listener)
}

/// How following the feed ended.
enum Followed {
    Lost,
    Stopped,
}
