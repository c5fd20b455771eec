//! The `data_sync` consumer: user events into the contact directory.
//!
//! A durable queue of persistent JSON events, from user-service or a plain
//! client (docs/ARCHITECTURE.md has the format). Each event is applied
//! idempotently (see [`crate::contacts`]) and acked. An event that does not
//! decode, or is over `max_message_bytes` (then it is not parsed at all), is
//! counted (`messages_rejected_total{reason}`), logged, and parked in
//! `<queue>.dlq` for inspection, never lost or retried in a loop.

use common::{
    codec::Codec,
    metrics::{MESSAGES_RECEIVED, MESSAGES_REJECTED},
};
use futures::StreamExt;
use lapin::{
    Channel,
    message::Delivery,
    options::{BasicAckOptions, BasicConsumeOptions},
    types::{FieldTable, ShortString},
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};
use workqueue::topology::data_sync_dead_letter_queue;

use crate::{
    consumer::{End, cancel_and_requeue},
    contacts::{Applied, ContactDirectory, UserEvent},
    routing::{self, DeadLetter, RouteError},
};

/// Consumes user events from `queue` until `stop` fires or the channel
/// fails; `codec` holds the size limit of an event.
pub(crate) async fn run(
    channel: Channel,
    publish: Channel,
    queue: String,
    consumer_tag: String,
    contacts: ContactDirectory,
    codec: Codec,
    stop: CancellationToken,
) -> End {
    let mut consumer = match channel
        .basic_consume(
            ShortString::from(queue.as_str()),
            ShortString::from(consumer_tag.as_str()),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
    {
        Ok(consumer) => consumer,
        Err(error) => return End::Lost(error.to_string()),
    };
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => {
                cancel_and_requeue(&channel, &mut consumer, &consumer_tag).await;
                return End::Stopped;
            }
            next = consumer.next() => match next {
                Some(Ok(delivery)) => {
                    if let Err(error) = apply(&publish, &queue, &contacts, &codec, delivery).await {
                        return End::Lost(error.to_string());
                    }
                }
                Some(Err(error)) => return End::Lost(error.to_string()),
                None => return End::Lost("data_sync consumer cancelled by the broker".into()),
            },
        }
    }
}

async fn apply(
    publish: &Channel,
    queue: &str,
    contacts: &ContactDirectory,
    codec: &Codec,
    delivery: Delivery,
) -> Result<(), RouteError> {
    metrics::counter!(MESSAGES_RECEIVED, "queue" => queue.to_string()).increment(1);
    let applied = codec.check_size(delivery.data.len()).and_then(|()| {
        let event = UserEvent::decode(&delivery.data)?;
        let applied = contacts.apply(&event)?;
        Ok((event, applied))
    });
    match applied {
        Ok((event, applied)) => {
            match applied {
                Applied::Changed => {
                    debug!(event = %event.event, user_id = ?event.user_id().ok(), "contact directory updated")
                }
                Applied::Duplicate | Applied::Stale => {
                    debug!(event = %event.event, outcome = ?applied, "user event skipped")
                }
            }
            delivery.acker.ack(BasicAckOptions::default()).await?;
        }
        Err(error) => {
            let reason = error.reason();
            metrics::counter!(MESSAGES_REJECTED, "reason" => reason).increment(1);
            warn!(queue, reason, error = %error, "undecodable user event, parking it in the dlq");
            routing::to_dead_letter_queue(
                publish,
                &data_sync_dead_letter_queue(queue),
                &delivery.data,
                &delivery.properties,
                DeadLetter {
                    reason,
                    error: &error.to_string(),
                    attempts: 1,
                    original_queue: queue,
                },
            )
            .await?;
            delivery.acker.ack(BasicAckOptions::default()).await?;
        }
    }
    Ok(())
}
