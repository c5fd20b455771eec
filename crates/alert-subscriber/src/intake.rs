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
//!   nothing: unacked readings are delivered again after `ack_wait_ms`, and
//!   the repeated alert carries the same id.
//!
//! On shutdown both stop taking readings: core drains its subscriptions
//! (buffered readings are still evaluated), JetStream stops pulling and
//! waits for the pending acks.

use std::{sync::Arc, time::Duration};

use anyhow::Context as _;
use async_nats::jetstream::{
    self, AckKind,
    consumer::{AckPolicy, DeliverPolicy, pull},
};
use common::{retry::RetryPolicy, shutdown::Shutdown};
use futures::StreamExt;
use tokio::{sync::Semaphore, task::JoinSet};

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
    let drain = async {
        let mut both = futures::stream::select(&mut readings, &mut bare);
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
    };
    if tokio::time::timeout(config.drain_grace_ms, drain)
        .await
        .is_err()
    {
        tracing::warn!("grace period over, buffered readings not evaluated");
    }
}

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
                ack_wait: config.ack_wait_ms,
                max_ack_pending: (config.max_in_flight * 4) as i64,
                ..Default::default()
            },
        )
        .await?;
    Ok(consumer)
}

async fn run_jetstream(
    client: async_nats::Client,
    mut processor: ReadingProcessor,
    config: &Config,
    shutdown: &Shutdown,
) {
    let js = jetstream::new(client);
    let in_flight = Arc::new(Semaphore::new(config.max_in_flight));
    let mut acks: JoinSet<()> = JoinSet::new();
    let mut delays = RetryPolicy::reconnect().backoff();
    'pull: loop {
        let messages = match consumer(&js, config).await {
            Ok(consumer) => {
                consumer
                    .stream()
                    .max_messages_per_batch(config.max_in_flight)
                    .heartbeat(Duration::from_secs(5))
                    .expires(Duration::from_secs(30))
                    .messages()
                    .await
            }
            Err(error) => Err(async_nats::jetstream::consumer::StreamError::with_source(
                async_nats::jetstream::consumer::StreamErrorKind::Other,
                error,
            )),
        };
        let mut messages = match messages {
            Ok(messages) => {
                delays = RetryPolicy::reconnect().backoff();
                tracing::info!(
                    stream = config.stream,
                    consumer = config.durable_name,
                    "pulling readings"
                );
                messages
            }
            Err(error) => {
                let delay = delays.next().unwrap_or(Duration::from_secs(10));
                tracing::warn!(%error, delay_ms = delay.as_millis() as u64, "cannot pull from the readings stream, retrying");
                tokio::select! {
                    () = shutdown.cancelled() => break 'pull,
                    () = tokio::time::sleep(delay) => continue 'pull,
                }
            }
        };
        loop {
            let next = tokio::select! {
                biased;
                () = shutdown.cancelled() => break 'pull,
                next = messages.next() => next,
            };
            let message = match next {
                Some(Ok(message)) => message,
                Some(Err(error)) => {
                    tracing::warn!(%error, "pull consumer error");
                    if matches!(
                        error.kind(),
                        pull::MessagesErrorKind::ConsumerDeleted
                            | pull::MessagesErrorKind::RequestLimitExceeded
                    ) {
                        continue 'pull;
                    }
                    continue;
                }
                None => continue 'pull,
            };
            while acks.try_join_next().is_some() {}
            let permit = tokio::select! {
                biased;
                () = shutdown.cancelled() => break 'pull,
                permit = in_flight.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break 'pull,
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
                    let ack_wait = config.ack_wait_ms;
                    acks.spawn(async move {
                        let confirmed = delivered.confirmed();
                        tokio::pin!(confirmed);
                        // While RabbitMQ takes its time, tell the server the
                        // reading is still being worked on: a redelivery now
                        // would be acked as a duplicate before its alert is safe.
                        let mut progress = tokio::time::interval(ack_wait / 2);
                        progress.tick().await;
                        loop {
                            tokio::select! {
                                confirmed = &mut confirmed => {
                                    if confirmed {
                                        acknowledge(&message, AckKind::Ack).await;
                                    }
                                    // Not confirmed: left unacked, delivered again later.
                                    break;
                                }
                                _ = progress.tick() => acknowledge(&message, AckKind::Progress).await,
                            }
                        }
                        drop(permit);
                    });
                }
            }
        }
    }
    // Stop pulling; readings already pulled but not processed are redelivered.
    let pending = async { while acks.join_next().await.is_some() {} };
    if tokio::time::timeout(config.drain_grace_ms, pending)
        .await
        .is_err()
    {
        tracing::warn!(
            left = acks.len(),
            "grace period over, readings left unacked for redelivery"
        );
        acks.abort_all();
    }
}

async fn acknowledge(message: &jetstream::Message, kind: AckKind) {
    if let Err(error) = message.ack_with(kind).await {
        tracing::warn!(%error, subject = %message.subject, "ack failed, the reading will be delivered again");
    }
}
