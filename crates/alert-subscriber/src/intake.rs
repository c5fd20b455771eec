//! Where readings come from, in the two delivery modes.
//!
//! - Core: a queue subscription (group `alerts`) on `<prefix>.>` and the bare
//!   `<prefix>`; the server gives each reading to one instance of the group.
//!   At-most-once: a reading buffered in a crashed instance is gone. Correct
//!   with one instance only: with several, a sensor's readings are spread
//!   over instances that each keep their own hysteresis state.
//! - JetStream: the partitioned consumer group. Instances join the group
//!   ([`crate::group`]), which gives each lane ([`crate::partition`]) to one
//!   of them; the owner reads the lane in order from its checkpoint
//!   ([`crate::lane`]). Scales out without changing the answer, and a crash
//!   loses nothing: the next owner continues from the last checkpoint.
//!
//! On shutdown both stop taking readings: core drains its subscriptions
//! (buffered readings are still evaluated); JetStream stops its lanes (each
//! writes its last checkpoint) and leaves the group, handing its lanes over
//! at once — both within `shutdown_grace`.

use std::sync::Arc;

use anyhow::Context as _;
use async_nats::jetstream;
use common::{
    reconnect::until_connected,
    shutdown::{Drained, Shutdown},
};
use futures::StreamExt;
use tokio::sync::watch;

use crate::{
    Config,
    group::{Group, GroupSettings, GroupView, SpawnLane},
    lane::LaneContext,
    processor::ReadingProcessor,
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
    /// A member of the partitioned consumer group, set up when the run starts.
    Jetstream {
        /// The connection to set it up on.
        client: async_nats::Client,
        /// The group as this member sees it, for `GET /partitions`.
        view: watch::Sender<GroupView>,
    },
}

impl Intake {
    /// Subscribes (core) or prepares (JetStream: the group will publish what
    /// it sees of itself on `view`).
    pub async fn subscribe(
        client: &async_nats::Client,
        config: &Config,
        view: watch::Sender<GroupView>,
    ) -> anyhow::Result<Self> {
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
                view,
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
            Intake::Jetstream { client, view } => {
                run_partitioned(client, processor, view, config, shutdown).await;
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

/// How long one request setting up the stream and the buckets may take.
const SETUP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// The group member: sets the stream and buckets up (retrying until NATS
/// answers), then takes part in the group until the signal.
async fn run_partitioned(
    client: async_nats::Client,
    processor: ReadingProcessor,
    view: watch::Sender<GroupView>,
    config: &Config,
    shutdown: &Shutdown,
) {
    // A lease renewal that has not answered in half the lease's life is
    // worth sending again, not waiting for: while a replicated stream
    // elects a new leader the server may not answer at all, and the
    // client's default 10 s outlasts the lease (measured on a 3-node
    // cluster: alerts flowed again ~40 s after a node loss, not ~15 s).
    let js = jetstream::ContextBuilder::new()
        .timeout((config.lease_ttl / 2).max(std::time::Duration::from_secs(1)))
        .build(client.clone());
    let settings = GroupSettings {
        group: config.group.clone(),
        member_id: config
            .member_id
            .clone()
            .unwrap_or_else(crate::group::default_member_id),
        partitions: config.partitions,
        lease_ttl: config.lease_ttl,
        heartbeat: config.heartbeat,
        replicas: config.stream_replicas,
    };
    // Setting up is given longer: creating a replicated stream or bucket
    // on a busy cluster takes seconds, and a creation abandoned half-way
    // by a short timeout only starts the next attempt further behind
    // (measured: two members starting together on a loaded 3-node cluster
    // kept timing out for 10 s and more).
    let setup = jetstream::ContextBuilder::new()
        .timeout(SETUP_TIMEOUT)
        .build(client.clone());
    let stop = shutdown.token();
    let joined = until_connected("alert group", &config.group, &stop, || async {
        common::nats::ensure_replicated_sensor_stream(
            &setup,
            &config.stream,
            &config.subject_prefix,
            config.stream_replicas,
        )
        .await?;
        let state_bucket = settings.state_bucket();
        common::nats::ensure_key_value(&setup, state_bucket.clone()).await?;
        common::nats::ensure_key_value(&setup, settings.leases_bucket()).await?;
        let state = js.get_key_value(state_bucket.bucket).await?;
        let group = Group::join(&js, settings.clone(), view.clone()).await?;
        Ok::<_, async_nats::Error>((state, group))
    })
    .await;
    let Some((state, group)) = joined else {
        return;
    };
    let context = Arc::new(LaneContext {
        js,
        state,
        stream: config.stream.clone(),
        subject_prefix: config.subject_prefix.clone(),
        partitions: config.partitions,
        checkpoint_interval: config.checkpoint_interval,
        handover_grace: config.handover_grace.min(config.shutdown_grace),
        max_in_flight: config.max_in_flight,
        processor,
    });
    let spawn: SpawnLane = Arc::new(move |lane, lease, stop| {
        Box::pin(crate::lane::run(context.clone(), lane, lease, stop))
    });
    group.run(spawn, stop, config.shutdown_grace).await;
}
