//! Wiring and lifecycle: connect, publish, drain, stop.
//!
//! [`Application::build`] describes the metrics, starts the ops endpoint
//! (port 0 works: tests ask for [`Application::ops_addr`]) and connects to
//! NATS in the background (the server need not be up yet).
//! [`Application::run_until_stopped`] then:
//!
//! 1. waits for the connection and, in JetStream mode, creates or updates
//!    the readings stream (retried with backoff through [`until_connected`]
//!    until it works or the shutdown signal fires);
//! 2. publishes readings from the [`Fleet`] at the [`Pacer`]'s rate until
//!    `count` went out or the signal fires, settling PubAcks (JetStream)
//!    while it waits for the next reading;
//! 3. reports not ready, gives outstanding PubAcks `shutdown_grace` (what is
//!    still unconfirmed then is abandoned and counted as unsent), drains the
//!    NATS client, stops the ops endpoint and returns what was published.

use std::{net::SocketAddr, sync::Arc};

use anyhow::Context as _;
use common::{
    config::Validate as _,
    nats::{ConnectionWatch, DeliveryMode, NatsOptions},
    ops::{OpsServer, Readiness},
    reconnect::until_connected,
    shutdown::Shutdown,
};
use tracing::Instrument as _;

use crate::{
    config::Config,
    fleet::Fleet,
    pacer::Pacer,
    publish::{PublishCounts, PublishSummary, PublisherSettings, ReadingPublisher},
};

/// A connected publisher with its ops server running.
#[derive(Debug)]
pub struct Application {
    /// The settings it was built with.
    config: Config,
    /// The NATS connection (reconnects on its own).
    client: async_nats::Client,
    /// `/healthz`, `/readyz`, `/metrics`.
    ops: OpsServer,
    /// What `/readyz` reports.
    readiness: Readiness,
    /// Live counters, shared with tests.
    counts: Arc<PublishCounts>,
    /// `publisher_id` plus a random suffix: this run's `Nats-Msg-Id` prefix.
    run_id: String,
}

impl Application {
    /// Describes the metrics, starts the ops server and connects to NATS (in
    /// the background: the server need not be up yet).
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        config.validate()?;
        common::metrics::describe(crate::metrics::ALL);
        let readiness = Readiness::new(&[common::nats::READINESS_CHECK]);
        let ops = OpsServer::start(
            config.ops_addr,
            readiness.clone(),
            &config,
            axum::Router::new(),
        )
        .await?;
        let run_id = format!("{}.{:08x}", config.publisher_id, rand::random::<u32>());
        let client = common::nats::connect_with(
            &NatsOptions {
                url: config.nats_url.clone(),
                name: run_id.clone(),
                subscription_capacity: 1024,
            },
            &config.nats_auth,
            &config.nats_tls,
            ConnectionWatch::with_readiness(readiness.clone()),
        )
        .await
        .with_context(|| format!("cannot connect to nats at {}", config.nats_url))?;
        Ok(Application {
            config,
            client,
            ops,
            readiness,
            counts: Arc::default(),
            run_id,
        })
    }

    /// The ops address actually bound.
    pub fn ops_addr(&self) -> SocketAddr {
        self.ops.local_addr()
    }

    /// Live counters of this publisher.
    pub fn counts(&self) -> Arc<PublishCounts> {
        self.counts.clone()
    }

    /// Publishes until `count` readings went out or `shutdown` fires, then
    /// waits (at most `shutdown_grace`) for outstanding PubAcks.
    pub async fn run_until_stopped(self, shutdown: Shutdown) -> anyhow::Result<PublishSummary> {
        let Application {
            config,
            client,
            ops,
            readiness,
            counts,
            run_id,
        } = self;
        let settings = PublisherSettings {
            publisher_id: run_id,
            subject_prefix: config.subject_prefix.clone(),
            content_type: config.content_type,
            publish_timeout: config.publish_timeout,
            ack_window: config.ack_window,
            max_publish_attempts: config.max_publish_attempts,
            max_message_bytes: config.max_message_bytes,
        };
        let ready = common::nats::wait_connected(&client, &shutdown.token()).await
            && match config.mode {
                DeliveryMode::Core => true,
                DeliveryMode::Jetstream => ensure_stream(&client, &config, &shutdown).await,
            };
        if !ready {
            // Stopped before anything could be published.
            ops.stop().await;
            return Ok(counts.summary());
        }
        let mut publisher = match config.mode {
            DeliveryMode::Core => ReadingPublisher::core(client.clone(), settings, counts.clone()),
            DeliveryMode::Jetstream => {
                ReadingPublisher::jetstream(client.clone(), settings, counts.clone())
            }
        };
        tracing::info!(
            mode = ?config.mode,
            sensors = config.fleet.sensors,
            rate_per_sec = config.rate_per_sec,
            count = config.count,
            content_type = %config.content_type,
            "publishing readings"
        );

        let mut fleet = Fleet::new(&config.fleet);
        let mut pacer = Pacer::new(config.rate_per_sec);
        let mut produced: u64 = 0;
        while config.count == 0 || produced < config.count {
            if shutdown.is_triggered() {
                break;
            }
            if pacer.next_due().is_some() {
                // PubAcks that come in between readings are settled meanwhile.
                let stopped = publisher
                    .settle_while(async {
                        tokio::select! {
                            () = shutdown.cancelled() => true,
                            () = pacer.wait() => false,
                        }
                    })
                    .await;
                if stopped {
                    break;
                }
            } else {
                pacer.wait().await;
            }
            let (sensor, reading) = fleet.next_reading();
            produced += 1;
            let span = tracing::info_span!("publish reading", sensor_id = %reading.sensor_id, seq = reading.seq);
            if let Err(error) = publisher.publish(sensor, reading).instrument(span).await {
                tracing::warn!(%error, sensor_id = reading.sensor_id, "reading skipped");
            }
        }

        readiness.shutting_down();
        publisher.finish(config.shutdown_grace).await;
        let summary = counts.summary();
        tracing::info!(
            published = summary.published,
            unsent = summary.unsent,
            retried = summary.retried,
            duplicates = summary.duplicates,
            "publisher stopped"
        );
        if let Err(error) = client.drain().await {
            tracing::debug!(%error, "nats drain");
        }
        ops.stop().await;
        Ok(summary)
    }
}

/// Creates or updates the readings stream, retrying until it works or the
/// service is stopped (the server may still be starting); `false` when
/// stopped first.
async fn ensure_stream(client: &async_nats::Client, config: &Config, shutdown: &Shutdown) -> bool {
    let js = async_nats::jetstream::new(client.clone());
    let stream = until_connected("readings stream", &config.stream, &shutdown.token(), || {
        common::nats::ensure_replicated_sensor_stream(
            &js,
            &config.stream,
            &config.subject_prefix,
            config.stream_replicas,
        )
    })
    .await;
    if stream.is_some() {
        tracing::info!(stream = config.stream, "readings stream ready");
    }
    stream.is_some()
}

/// Builds and runs the publisher until it is done or stopped.
pub async fn run(config: Config, shutdown: Shutdown) -> anyhow::Result<()> {
    Application::build(config)
        .await?
        .run_until_stopped(shutdown)
        .await
        .map(|_| ())
}
