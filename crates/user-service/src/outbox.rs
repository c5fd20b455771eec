//! The outbox relay: moves committed `data_sync` events from the database to
//! RabbitMQ.
//!
//! Every create, update and delete writes its event to the `outbox` table in
//! the same transaction as the change (see [`crate::store`]). This task reads
//! the oldest rows, publishes each as a persistent JSON message to the
//! `data_sync` queue on a channel in confirm mode, and deletes a row only
//! after the broker confirmed its message. While RabbitMQ is down the rows
//! wait and the relay reconnects with backoff (`common::reconnect`).
//!
//! Guarantee: **at-least-once after commit**. An event exists exactly when
//! its change committed and is never dropped; it may be delivered twice (the
//! process dies between the broker's confirm and the row's deletion, or a
//! relay's lease lapses mid-batch while another replica takes over), so
//! consumers deduplicate on `event_id` (also the AMQP `message_id`). Events
//! of one user leave in commit order.
//!
//! One relay per database: on PostgreSQL, where replicas share the outbox,
//! only the replica holding the [`RelayLease`] relays and the others stand
//! by, trying again every `poll_interval`; when the holder dies its lease
//! frees itself and one of them takes over. So replicas do not publish the
//! same rows twice. The holder also listens for committed changes
//! ([`UserStore::listen_for_changes`], the channel the read cache's change
//! feed follows too), so a change committed through any replica wakes it at
//! once; polling is the fallback when that connection is down.

use std::{sync::Arc, time::Duration};

use common::{
    config::SecretUrl,
    metrics::MESSAGES_PUBLISHED,
    reconnect::{Session, keep_connected},
};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection,
    options::{BasicPublishOptions, ConfirmSelectOptions},
    types::{AMQPValue, FieldTable, LongString},
};
use sqlx::postgres::PgListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use workqueue::topology::{QueueType, declare_data_sync_as};

use crate::{
    error::UserError,
    metrics::OUTBOX_RELAY_LEADER,
    store::{PendingEvent, RelayLease, UserStore},
};

/// How long one batch may wait for the broker's confirms before the link
/// counts as broken.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);

/// Why relaying stopped for now (the relay reconnects and tries again).
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The connection or channel failed.
    #[error("rabbitmq error: {0}")]
    Amqp(#[from] lapin::Error),
    /// The broker refused to take an event.
    #[error("rabbitmq nacked event {0}")]
    Nacked(String),
    /// The broker had no queue to route the event to (it was deleted);
    /// reconnecting declares it again.
    #[error("rabbitmq returned event {0}: no queue to route it to")]
    Unroutable(String),
    /// No confirm came in time.
    #[error("no confirm from rabbitmq within {0:?}")]
    ConfirmTimeout(Duration),
    /// The relay lease's database session ended; another replica may be
    /// relaying now.
    #[error("the outbox relay lease was lost (its database session ended)")]
    LeaseLost,
}

/// Settings of the relay.
#[derive(Debug, Clone)]
pub struct RelaySettings {
    /// The broker.
    pub amqp_url: SecretUrl,
    /// TLS files for an `amqps://` broker (CA, client certificate).
    pub amqp_tls: common::tls::TlsFiles,
    /// The queue (`data_sync` unless configured otherwise).
    pub queue: String,
    /// Classic or quorum, as the task-workers declare it.
    pub queue_type: QueueType,
    /// Look for leftover events this often when no commit wakes the relay.
    pub poll_interval: Duration,
    /// Events per database read.
    pub batch_size: u32,
}

/// The relay task's state.
#[derive(Debug)]
pub struct OutboxRelay {
    store: UserStore,
    settings: RelaySettings,
    wakeup: Arc<Notify>,
}

impl OutboxRelay {
    /// A relay for `store`'s outbox, woken early by `wakeup`.
    pub fn new(store: UserStore, settings: RelaySettings, wakeup: Arc<Notify>) -> Self {
        OutboxRelay {
            store,
            settings,
            wakeup,
        }
    }

    /// Relays until `stop` fires; then publishes what is still pending if the
    /// broker is reachable, and returns. Whatever is left stays in the
    /// outbox for the next start.
    ///
    /// Reconnects to RabbitMQ with [`keep_connected`]; each session first
    /// takes the [`RelayLease`] and drops it when it ends, so the lease is
    /// free for another replica while this one waits to reconnect.
    pub async fn run(self, stop: CancellationToken) {
        let queue = self.settings.queue.as_str();
        keep_connected("outbox relay", &self.settings.amqp_url, &stop, || {
            self.session(&stop)
        })
        .await;
        tracing::info!(queue, "outbox relay stopped");
    }

    /// One relay session: the lease, a connection, batches until `stop` (a
    /// last pass included) or until the broker or the lease is lost.
    async fn session(&self, stop: &CancellationToken) -> Result<Session, RelayError> {
        let queue = self.settings.queue.as_str();
        let Some(mut lease) = self.wait_for_lease(stop).await else {
            return Ok(Session::Finished);
        };
        let _leading = Leading::start();
        let link = self.connect().await?;
        tracing::info!(queue, "outbox relay connected to rabbitmq");
        let mut changes = self.listen_for_changes().await;
        let outcome = self.relay(&link, &mut lease, &mut changes, stop).await;
        // Closing politely lets the broker flush; errors here only mean the
        // connection is gone already.
        workqueue::connection::close(&link.connection, "outbox relay stopping").await;
        Ok(match outcome {
            Ok(()) => Session::Finished,
            // Events wait in the outbox meanwhile.
            Err(error) => Session::Lost(error.to_string()),
        })
    }

    /// Waits until this replica may relay (at once on SQLite); `None` when
    /// stopped first: the replica holding the lease relays this one's events.
    async fn wait_for_lease(&self, stop: &CancellationToken) -> Option<RelayLease> {
        let mut standing_by = false;
        let mut failing = false;
        loop {
            match self.store.try_relay_lease().await {
                Ok(Some(lease)) => {
                    if standing_by || failing {
                        tracing::info!("outbox relay lease taken: relaying");
                    }
                    return Some(lease);
                }
                Ok(None) => {
                    if !standing_by {
                        tracing::info!("another replica relays the outbox; standing by");
                    }
                    standing_by = true;
                }
                // Said once per outage, not every poll.
                Err(error) => {
                    if !failing {
                        tracing::warn!(error = %error, "cannot take the outbox relay lease");
                    }
                    failing = true;
                }
            }
            tokio::select! {
                () = tokio::time::sleep(self.settings.poll_interval) => {}
                () = stop.cancelled() => return None,
            }
        }
    }

    /// Notifications of commits through other replicas (PostgreSQL); without
    /// them the relay still polls.
    async fn listen_for_changes(&self) -> Option<PgListener> {
        self.store
            .listen_for_changes()
            .await
            .inspect_err(|error| {
                tracing::warn!(error = %error, "cannot listen for changes; the outbox relay polls");
            })
            .ok()
            .flatten()
    }

    async fn connect(&self) -> Result<AmqpLink, lapin::Error> {
        let connection = workqueue::connection::connect(
            &self.settings.amqp_url,
            &self.settings.amqp_tls,
            "user-service",
        )
        .await?;
        let prepared = workqueue::connection::set_up("declaring the data_sync queue", async {
            let channel = connection.create_channel().await?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            declare_data_sync_as(&channel, &self.settings.queue, self.settings.queue_type).await?;
            Ok::<_, lapin::Error>(channel)
        })
        .await;
        match prepared {
            Ok(channel) => Ok(AmqpLink {
                connection,
                channel,
            }),
            Err(error) => {
                // A half-set-up connection would otherwise linger on the broker.
                workqueue::connection::close(&connection, "setup failed").await;
                Err(error)
            }
        }
    }

    /// Publishes batches until `stop` (then drains what is pending) or a
    /// broker error.
    async fn relay(
        &self,
        link: &AmqpLink,
        lease: &mut RelayLease,
        changes: &mut Option<PgListener>,
        stop: &CancellationToken,
    ) -> Result<(), RelayError> {
        let mut stopping = stop.is_cancelled();
        loop {
            if !lease.is_held().await {
                return Err(RelayError::LeaseLost);
            }
            let batch = match self.store.pending_events(self.settings.batch_size).await {
                Ok(batch) => batch,
                Err(error) => {
                    tracing::warn!(error = %error, "cannot read the outbox");
                    if stopping {
                        return Ok(());
                    }
                    self.idle(changes, stop).await;
                    stopping = stop.is_cancelled();
                    continue;
                }
            };
            self.publish_batch(link, &batch).await?;
            if batch.len() as u32 == self.settings.batch_size {
                continue;
            }
            if stopping {
                return Ok(());
            }
            self.idle(changes, stop).await;
            // After the stop signal, one more pass takes the events of the
            // calls that finished during shutdown.
            stopping = stop.is_cancelled();
        }
    }

    /// Waits for a reason to look at the outbox again: a commit here, a
    /// commit through another replica, the poll interval, or the stop.
    async fn idle(&self, changes: &mut Option<PgListener>, stop: &CancellationToken) {
        let notified = async {
            match changes.as_mut() {
                Some(listener) => match listener.try_recv().await {
                    // One look at the outbox serves every change so far.
                    Ok(Some(_)) => while listener.next_buffered().is_some() {},
                    // Lost: poll from now on (the next lease gets a new one).
                    Ok(None) | Err(_) => {
                        tracing::warn!("change notifications lost; the outbox relay polls");
                        *changes = None;
                    }
                },
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = self.wakeup.notified() => {}
            () = notified => {}
            () = tokio::time::sleep(self.settings.poll_interval) => {}
            () = stop.cancelled() => {}
        }
    }

    /// Publishes every event of `batch` (pipelined), waits for the confirms
    /// in order, and deletes the confirmed rows.
    async fn publish_batch(
        &self,
        link: &AmqpLink,
        batch: &[PendingEvent],
    ) -> Result<(), RelayError> {
        if batch.is_empty() {
            return Ok(());
        }
        let queue = self.settings.queue.as_str();
        let mut confirms = Vec::with_capacity(batch.len());
        for event in batch {
            let confirm = link
                .channel
                .basic_publish(
                    "".into(),
                    queue.into(),
                    // Mandatory: if the queue was deleted under us, the broker
                    // returns the message instead of dropping it.
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    event.payload.as_bytes(),
                    properties(event),
                )
                .await?;
            confirms.push((event, confirm));
        }
        for (event, confirm) in confirms {
            let confirmation = tokio::time::timeout(CONFIRM_TIMEOUT, confirm)
                .await
                .map_err(|_| RelayError::ConfirmTimeout(CONFIRM_TIMEOUT))??;
            match confirmation {
                Confirmation::Ack(None) => {}
                Confirmation::Ack(Some(_returned)) => {
                    return Err(RelayError::Unroutable(event.event_id.clone()));
                }
                Confirmation::Nack(_) | Confirmation::NotRequested => {
                    return Err(RelayError::Nacked(event.event_id.clone()));
                }
            }
            metrics::counter!(MESSAGES_PUBLISHED, "queue" => queue.to_string()).increment(1);
            tracing::debug!(event_id = %event.event_id, event = %event.event, queue, "event published");
            if let Err(error) = self.remove(event).await {
                // The row stays and is sent again later: a duplicate, never a loss.
                tracing::warn!(error = %error, event_id = %event.event_id, "cannot delete a published event from the outbox");
            }
        }
        Ok(())
    }

    async fn remove(&self, event: &PendingEvent) -> Result<(), UserError> {
        self.store.remove_event(event.id).await
    }
}

/// `outbox_relay_leader` is 1 while a session holds the lease, 0 again when
/// it ends (however it ends).
#[derive(Debug)]
struct Leading(metrics::Gauge);

impl Leading {
    fn start() -> Self {
        let gauge = metrics::gauge!(OUTBOX_RELAY_LEADER);
        gauge.set(1.0);
        Leading(gauge)
    }
}

impl Drop for Leading {
    fn drop(&mut self) {
        self.0.set(0.0);
    }
}

/// A connection and its confirm-mode channel.
#[derive(Debug)]
struct AmqpLink {
    connection: Connection,
    channel: Channel,
}

/// Persistent JSON, `message_id` = `event_id`, the event kind as `type`,
/// and the originating request's `traceparent` in the headers.
fn properties(event: &PendingEvent) -> BasicProperties {
    let mut headers = FieldTable::default();
    if let Some(traceparent) = &event.traceparent {
        headers.insert(
            common::propagation::TRACEPARENT.into(),
            AMQPValue::LongString(LongString::from(traceparent.clone())),
        );
    }
    BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_message_id(event.event_id.as_str().into())
        .with_type(event.event.as_str().into())
        .with_headers(headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_persistent_json_with_the_event_id_and_the_trace() {
        let event = PendingEvent {
            id: 1,
            event_id: "5f0c".into(),
            event: "user_created".into(),
            payload: "{}".into(),
            traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
        };
        let properties = properties(&event);
        assert_eq!(properties.delivery_mode(), &Some(2));
        assert_eq!(
            properties.content_type().as_ref().map(|c| c.as_str()),
            Some("application/json")
        );
        assert_eq!(
            properties.message_id().as_ref().map(|id| id.as_str()),
            Some("5f0c")
        );
        let headers = properties.headers().as_ref().unwrap();
        let traceparent = common::propagation::extract_amqp(Some(headers));
        assert_eq!(
            common::propagation::trace_id(&traceparent),
            "0af7651916cd43dd8448eb211c80319c"
        );
    }
}
