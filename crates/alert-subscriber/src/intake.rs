//! Where readings come from, in the two delivery modes.
//!
//! - Core: a queue subscription (group `alerts`) on `<prefix>.>` and the bare
//!   `<prefix>`; the server gives each reading to one instance of the group.
//!   At-most-once: a reading buffered in a crashed instance is gone. Readings
//!   are evaluated one at a time from the subscription's bounded buffer;
//!   alerts go to the hand-off buffer, which slows intake down when full.
//! - JetStream: a durable pull consumer on the readings stream, shared by
//!   the instances. Each reading is acked only after it was evaluated and,
//!   if it raised an alert, after the alert was published and its task
//!   confirmed by RabbitMQ; at most `max_in_flight` readings wait for that at
//!   once; while an alert waits for RabbitMQ its reading's ack deadline is
//!   extended (`+WPI`), so it is not redelivered meanwhile. A crash loses
//!   nothing: unacked readings are delivered again after `ack_wait`, and
//!   the repeated alert carries the same id. The pull consumer is set up
//!   again through [`common::reconnect::keep_connected`] whenever its
//!   stream of messages ends (consumer deleted, stream gone, server restart).
//!
//! On shutdown both stop taking readings: core drains its subscriptions
//! (buffered readings are still evaluated), JetStream stops pulling and
//! waits for the pending acks — both within `shutdown_grace`, through a
//! [`Shutdown::scope`] that aborts what is left after it.

use std::{sync::Arc, time::Duration};

use anyhow::Context as _;
use async_nats::jetstream::{
    self, AckKind,
    consumer::{AckPolicy, DeliverPolicy, pull},
};
use common::{
    reconnect::{Session, keep_connected},
    shutdown::{Drained, Shutdown},
};
use futures::StreamExt;
use tokio::sync::{Mutex, Semaphore};

use crate::{
    Config,
    processor::{Outcome, ReadingProcessor},
};

/// The source of readings for one mode.
#[derive(Debug)]
pub enum Intake {
    /// Queue subscriptions on the wildcard and the bare subject.
    Core {
        /// `<prefix>.>`.
        readings: async_nats::Subscriber,
        /// `<prefix>`.
        bare: async_nats::Subscriber,
    },
    /// A durable pull consumer, set up when the run starts.
    Jetstream {
        /// The connection to set it up on.
        client: async_nats::Client,
    },
}

impl Intake {
    /// Subscribes (core) or prepares (JetStream).
    pub async fn subscribe(client: &async_nats::Client, config: &Config) -> anyhow::Result<Self> {
        match config.mode {
            common::nats::DeliveryMode::Core => {
                let readings = client
                    .queue_subscribe(
                        format!("{}.>", config.subject_prefix),
                        config.queue_group.clone(),
                    )
                    .await
                    .context("cannot subscribe to readings")?;
                let bare = client
                    .queue_subscribe(config.subject_prefix.clone(), config.queue_group.clone())
                    .await
                    .context("cannot subscribe to readings")?;
                Ok(Intake::Core { readings, bare })
            }
            common::nats::DeliveryMode::Jetstream => Ok(Intake::Jetstream {
                client: client.clone(),
            }),
        }
    }

    /// Feeds readings to `processor` until `shutdown`, then drains.
    pub async fn run(
        self,
        processor: ReadingProcessor,
        config: &Config,
        shutdown: &Shutdown,
    ) -> anyhow::Result<()> {
        match self {
            Intake::Core { readings, bare } => {
                run_core(readings, bare, processor, config, shutdown).await;
                Ok(())
            }
            Intake::Jetstream { client } => {
                run_jetstream(client, processor, config, shutdown).await;
                Ok(())
            }
        }
    }
}

async fn run_core(
    mut readings: async_nats::Subscriber,
    mut bare: async_nats::Subscriber,
    mut processor: ReadingProcessor,
    config: &Config,
    shutdown: &Shutdown,
) {
    {
        let mut both = futures::stream::select(&mut readings, &mut bare);
        loop {
            let message = tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                message = both.next() => message,
            };
            let Some(message) = message else { break };
            processor
                .process(
                    &message.subject,
                    &message.payload,
                    message.headers.as_ref(),
                    false,
                )
                .await;
        }
    }
    // Unsubscribe, then evaluate what is already buffered.
    for subscription in [&mut readings, &mut bare] {
        if let Err(error) = subscription.drain().await {
            tracing::warn!(%error, "cannot drain a subscription");
        }
    }
    let buffered = shutdown.scope();
    buffered.spawn(async move {
        let mut both = futures::stream::select(readings, bare);
        while let Some(message) = both.next().await {
            processor
                .process(
                    &message.subject,
                    &message.payload,
                    message.headers.as_ref(),
                    false,
                )
                .await;
        }
    });
    if let Drained::TimedOut(_) = buffered.drain(config.shutdown_grace).await {
        tracing::warn!("grace period over, buffered readings not evaluated");
    }
}

/// The durable consumer, created if missing (and the stream with it).
async fn consumer(
    js: &jetstream::Context,
    config: &Config,
) -> Result<jetstream::consumer::Consumer<pull::Config>, async_nats::Error> {
    common::nats::ensure_sensor_stream(js, &config.stream, &config.subject_prefix).await?;
    let stream = js.get_stream(&config.stream).await?;
    let consumer = stream
        .get_or_create_consumer(
            &config.durable_name,
            pull::Config {
                durable_name: Some(config.durable_name.clone()),
                description: Some("alert-subscriber: evaluates every reading".into()),
                deliver_policy: DeliverPolicy::All,
                ack_policy: AckPolicy::Explicit,
                ack_wait: config.ack_wait,
                max_ack_pending: (config.max_in_flight * 4) as i64,
                ..Default::default()
            },
        )
        .await?;
    Ok(consumer)
}

/// The consumer's messages, pulled in batches of `max_in_flight`.
async fn pull_readings(
    js: &jetstream::Context,
    config: &Config,
) -> Result<pull::Stream, async_nats::Error> {
    let messages = consumer(js, config)
        .await?
        .stream()
        .max_messages_per_batch(config.max_in_flight)
        .heartbeat(Duration::from_secs(5))
        .expires(Duration::from_secs(30))
        .messages()
        .await?;
    Ok(messages)
}

async fn run_jetstream(
    client: async_nats::Client,
    processor: ReadingProcessor,
    config: &Config,
    shutdown: &Shutdown,
) {
    let js = jetstream::new(client);
    let in_flight = Arc::new(Semaphore::new(config.max_in_flight));
    // Readings waiting for their alert's task to be confirmed before they
    // are acked. They outlive a pull session: the acks go over the same
    // client connection, whichever consumer stream delivered the reading.
    let acks = shutdown.scope();
    // One session at a time uses the processor; the lock only lends it from
    // one session to the next.
    let processor = Mutex::new(processor);
    let target = format!("{}/{}", config.stream, config.durable_name);
    // The session closure runs again after a lost session: it lends these out.
    let (js, in_flight, acks, processor) = (&js, &in_flight, &acks, &processor);
    keep_connected(
        "readings consumer",
        &target,
        &shutdown.token(),
        move || async move {
            let mut processor = processor.lock().await;
            pull_session(js, config, &mut processor, in_flight, acks, shutdown).await
        },
    )
    .await;
    // Stop pulling; readings already pulled but not processed are redelivered.
    if let Drained::TimedOut(left) = acks.drain(config.shutdown_grace).await {
        tracing::warn!(
            left,
            "grace period over, readings left unacked for redelivery"
        );
    }
}

/// One pull session: sets the consumer up, then evaluates readings until
/// the signal fires ([`Session::Finished`]) or the consumer's stream ends
/// ([`Session::Lost`]); `Err` when the consumer cannot be set up.
async fn pull_session(
    js: &jetstream::Context,
    config: &Config,
    processor: &mut ReadingProcessor,
    in_flight: &Arc<Semaphore>,
    acks: &Shutdown,
    shutdown: &Shutdown,
) -> Result<Session, async_nats::Error> {
    let mut messages = pull_readings(js, config).await?;
    tracing::info!(
        stream = config.stream,
        consumer = config.durable_name,
        "pulling readings"
    );
    loop {
        let next = tokio::select! {
            biased;
            () = shutdown.cancelled() => return Ok(Session::Finished),
            next = messages.next() => next,
        };
        let message = match next {
            Some(Ok(message)) => message,
            Some(Err(error)) => {
                if matches!(
                    error.kind(),
                    pull::MessagesErrorKind::ConsumerDeleted
                        | pull::MessagesErrorKind::RequestLimitExceeded
                ) {
                    return Ok(Session::Lost(error.to_string()));
                }
                tracing::warn!(%error, "pull consumer error");
                continue;
            }
            None => return Ok(Session::Lost("the pull stream ended".into())),
        };
        let permit = tokio::select! {
            biased;
            () = shutdown.cancelled() => return Ok(Session::Finished),
            permit = in_flight.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return Ok(Session::Finished),
            },
        };
        let outcome = processor
            .process(
                &message.subject,
                &message.payload,
                message.headers.as_ref(),
                true,
            )
            .await;
        match outcome {
            // A payload that does not decode never will: do not redeliver it.
            Outcome::Rejected => acknowledge(&message, AckKind::Term).await,
            Outcome::Done | Outcome::Alerted(None) => acknowledge(&message, AckKind::Ack).await,
            Outcome::Alerted(Some(delivered)) => {
                acks.spawn(ack_once_confirmed(
                    message,
                    delivered,
                    config.ack_wait,
                    permit,
                ));
            }
        }
    }
}

/// Acks `message` once its alert's task is confirmed; until then tells the
/// server every half `ack_wait` that it is still being worked on, so it is
/// not redelivered meanwhile (a redelivery would be acked as a duplicate
/// before its alert is safe). Not confirmed: left unacked, delivered again.
async fn ack_once_confirmed(
    message: jetstream::Message,
    delivered: crate::handoff::Delivered,
    ack_wait: Duration,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    let confirmed = delivered.confirmed();
    tokio::pin!(confirmed);
    let mut progress = tokio::time::interval(ack_wait / 2);
    progress.tick().await;
    loop {
        tokio::select! {
            confirmed = &mut confirmed => {
                if confirmed {
                    acknowledge(&message, AckKind::Ack).await;
                }
                break;
            }
            _ = progress.tick() => acknowledge(&message, AckKind::Progress).await,
        }
    }
    drop(permit);
}

async fn acknowledge(message: &jetstream::Message, kind: AckKind) {
    if let Err(error) = message.ack_with(kind).await {
        tracing::warn!(%error, subject = %message.subject, "ack failed, the reading will be delivered again");
    }
}
