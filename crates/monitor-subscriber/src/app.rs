//! The running service: [`Application::build`] binds the ops port (port 0
//! works, `/stats` beside the ops routes), connects to NATS and subscribes;
//! [`Application::run_until_stopped`] records readings until the shutdown
//! signal, then drains.
//!
//! Shutdown: readings stop being taken, the connection is drained (no new
//! messages, the subscriptions end), and what is already buffered is still
//! counted, as are stats requests already received — all within
//! `shutdown_grace`, after which what is left is aborted.

use std::net::SocketAddr;

use anyhow::Context as _;
use common::{
    codec::Codec,
    config::Validate,
    nats::{ConnectionWatch, NatsOptions},
    ops::{OpsServer, Readiness},
    shutdown::{Drained, Shutdown},
};
use tokio_util::sync::CancellationToken;

use crate::{
    config::Config,
    recorder::ReadingRecorder,
    report::{self, StatsHandle},
    responder::{STATS_QUEUE_GROUP, answer_stats_requests},
    summary::log_summaries,
};

/// A connected, subscribed monitor with its ops server running.
#[derive(Debug)]
pub struct Application {
    /// The validated settings.
    config: Config,
    /// The NATS connection.
    client: async_nats::Client,
    /// `<subject_prefix>.>`: every sensor's readings.
    readings: async_nats::Subscriber,
    /// `<subject_prefix>`: readings of clients that publish on the bare prefix.
    bare_readings: async_nats::Subscriber,
    /// `<stats_subject>`, in the responders' queue group.
    stats_requests: async_nats::Subscriber,
    /// The statistics, shared with `/stats` and the responder.
    stats: StatsHandle,
    /// `/healthz`, `/readyz`, `/metrics`, `/stats`.
    ops: OpsServer,
    /// The `nats` check of `/readyz`.
    readiness: Readiness,
}

impl Application {
    /// Starts the ops server, connects (in the background if NATS is not up
    /// yet) and subscribes.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        config.validate()?;
        common::metrics::describe(crate::metrics::ALL);
        let readiness = Readiness::new(&[common::nats::READINESS_CHECK]);
        let watch = ConnectionWatch::with_readiness(readiness.clone());
        let stats = StatsHandle::new(config.window, watch.clone());
        let ops = OpsServer::start(
            config.ops_addr,
            readiness.clone(),
            &config,
            report::routes(stats.clone()),
        )
        .await?;
        let client = common::nats::connect_with(
            &NatsOptions {
                url: config.nats_url.clone(),
                name: "monitor-subscriber".into(),
                subscription_capacity: config.subscription_capacity,
            },
            &config.nats_auth,
            &config.nats_tls,
            watch,
        )
        .await
        .with_context(|| format!("cannot connect to nats at {}", config.nats_url))?;
        let readings = client
            .subscribe(format!("{}.>", config.subject_prefix))
            .await
            .context("cannot subscribe to readings")?;
        let bare_readings = client
            .subscribe(config.subject_prefix.clone())
            .await
            .context("cannot subscribe to readings")?;
        let stats_requests = client
            .queue_subscribe(config.stats_subject.clone(), STATS_QUEUE_GROUP.into())
            .await
            .context("cannot subscribe to stats requests")?;
        Ok(Application {
            config,
            client,
            readings,
            bare_readings,
            stats_requests,
            stats,
            ops,
            readiness,
        })
    }

    /// The ops address actually bound.
    pub fn ops_addr(&self) -> SocketAddr {
        self.ops.local_addr()
    }

    /// A handle on the statistics, readable while the monitor runs.
    pub fn stats(&self) -> StatsHandle {
        self.stats.clone()
    }

    /// Waits until the subscriptions are registered with the server, so a
    /// reading published from now on is seen.
    pub async fn wait_until_subscribed(&self) {
        common::nats::wait_connected(&self.client, &CancellationToken::new()).await;
        if let Err(error) = self.client.flush().await {
            tracing::warn!(%error, "flush failed");
        }
    }

    /// Counts readings until `shutdown` fires, then drains what is buffered.
    pub async fn run_until_stopped(self, shutdown: Shutdown) -> anyhow::Result<()> {
        let Application {
            config,
            client,
            mut readings,
            mut bare_readings,
            stats_requests,
            stats,
            ops,
            readiness,
        } = self;
        tracing::info!(
            subject_prefix = config.subject_prefix,
            stats_subject = config.stats_subject,
            "monitoring readings"
        );
        // Everything besides the reading loop, drained together at the end.
        let work = shutdown.scope();
        let codec = Codec::new(config.max_message_bytes);
        work.spawn(answer_stats_requests(
            client.clone(),
            stats_requests,
            stats.clone(),
            codec,
        ));
        work.spawn(log_summaries(
            stats.clone(),
            config.summary_interval,
            work.token(),
        ));

        let mut recorder = ReadingRecorder::new(&config.subject_prefix, stats.clone(), codec);
        recorder
            .record_until_stopped(&mut readings, &mut bare_readings, &shutdown)
            .await;

        // Drain: no new readings, but those already buffered still count.
        readiness.shutting_down();
        if let Err(error) = client.drain().await {
            tracing::warn!(%error, "cannot drain the nats connection");
        }
        work.spawn(recorder.record_buffered(readings, bare_readings));
        if let Drained::TimedOut(left) = work.drain(config.shutdown_grace).await {
            tracing::warn!(
                left,
                "grace period over, buffered readings or stats requests not handled"
            );
        }
        let report = stats.report();
        tracing::info!(
            sensors = report.totals.sensors,
            readings = report.totals.readings,
            seq_gaps = report.totals.seq_gaps,
            rejected = report.totals.rejected,
            "monitor stopped"
        );
        ops.stop().await;
        Ok(())
    }
}

/// Builds and runs the monitor until the shutdown signal.
pub async fn run(config: Config, shutdown: Shutdown) -> anyhow::Result<()> {
    Application::build(config)
        .await?
        .run_until_stopped(shutdown)
        .await
}
