//! The running service: [`Application::build`] binds the ops port (port 0
//! works), connects to NATS and subscribes; [`Application::run_until_stopped`]
//! evaluates readings until the shutdown signal, then drains.
//!
//! Shutdown, in order: intake stops taking readings (buffered ones are still
//! evaluated, JetStream acks still sent, within `shutdown_grace`); then the
//! hand-off to RabbitMQ gets `shutdown_grace` to empty its buffer, after which
//! what is left is abandoned and counted in
//! `alerts_abandoned_total{reason="shutdown"}`; then the task publisher
//! closes its connection and NATS is drained.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use common::{
    codec::Codec,
    config::{ConfigSource, Validate},
    nats::{ConnectionWatch, NatsOptions},
    ops::{OpsServer, Readiness},
    shutdown::{Drained, Shutdown},
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use workqueue::publisher::TaskPublisher;

use crate::{
    config::{Config, ENV_KEYS},
    group::GroupView,
    handoff::{AlertHandoff, HandoffCounts},
    intake::Intake,
    metrics::ALERTS_ABANDONED,
    processor::{AlertCounts, AlertOutput, ReadingProcessor},
    rules::Rules,
};

/// Name of the readiness check that follows the RabbitMQ connection.
pub const RABBITMQ_CHECK: &str = "rabbitmq";

/// A connected alert-subscriber with its ops server running.
#[derive(Debug)]
pub struct Application {
    /// The validated settings.
    config: Config,
    /// The NATS connection: readings in, alerts out.
    client: async_nats::Client,
    /// Where readings come from (subscribed in core mode).
    intake: Intake,
    /// The rules in force, updated when the config file changes.
    rules: watch::Receiver<Rules>,
    /// Stops the rules watcher.
    rules_stop: CancellationToken,
    /// What this instance did, for tests and the shutdown summary.
    counts: Arc<AlertCounts>,
    /// What the hand-off to RabbitMQ did.
    handoff_counts: Arc<HandoffCounts>,
    /// `/healthz`, `/readyz`, `/metrics`.
    ops: OpsServer,
    /// The `nats` and `rabbitmq` checks of `/readyz`.
    readiness: Readiness,
}

impl Application {
    /// Starts the ops server, connects to NATS (in the background if it is
    /// not up yet), subscribes (core mode) and starts watching the rules.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        config.validate()?;
        common::metrics::describe(crate::metrics::ALL);
        let readiness = Readiness::new(&[common::nats::READINESS_CHECK, RABBITMQ_CHECK]);
        let (group_view, routes) = partitions_route();
        let ops = OpsServer::start(config.ops_addr, readiness.clone(), &config, routes).await?;
        config
            .publisher()
            .refuse_mismatched_queue("alert-subscriber")
            .await?;
        let client = common::nats::connect_with(
            &NatsOptions {
                url: config.nats_url.clone(),
                name: "alert-subscriber".into(),
                subscription_capacity: config.subscription_capacity,
            },
            &config.nats_auth,
            &config.nats_tls,
            ConnectionWatch::with_readiness(readiness.clone()),
        )
        .await
        .with_context(|| format!("cannot connect to nats at {}", config.nats_url))?;
        let intake = Intake::subscribe(&client, &config, group_view).await?;
        let rules_stop = CancellationToken::new();
        let rules = watch_rules(&config, rules_stop.clone())?;
        Ok(Application {
            config,
            client,
            intake,
            rules,
            rules_stop,
            counts: Arc::default(),
            handoff_counts: Arc::default(),
            ops,
            readiness,
        })
    }

    /// The ops address actually bound.
    pub fn ops_addr(&self) -> SocketAddr {
        self.ops.local_addr()
    }

    /// What this instance did so far.
    pub fn counts(&self) -> Arc<AlertCounts> {
        self.counts.clone()
    }

    /// What the hand-off to RabbitMQ did so far.
    pub fn handoff_counts(&self) -> Arc<HandoffCounts> {
        self.handoff_counts.clone()
    }

    /// The rules in force; changes when the config file is edited.
    pub fn rules(&self) -> watch::Receiver<Rules> {
        self.rules.clone()
    }

    /// Waits until core subscriptions are registered with the server, so a
    /// reading published from now on is seen.
    pub async fn wait_until_subscribed(&self) {
        common::nats::wait_connected(&self.client, &CancellationToken::new()).await;
        if let Err(error) = self.client.flush().await {
            tracing::warn!(%error, "flush failed");
        }
    }

    /// Processes readings until `shutdown` fires, then drains.
    pub async fn run_until_stopped(self, shutdown: Shutdown) -> anyhow::Result<HandoffSummary> {
        let Application {
            config,
            client,
            intake,
            rules,
            rules_stop,
            counts,
            handoff_counts,
            ops,
            readiness,
        } = self;
        // Its own signal: the task publisher must keep its connection (and
        // reconnect) while queued alerts drain after the service's signal.
        let publisher_stop = Shutdown::new();
        let publisher = TaskPublisher::start(config.publisher(), publisher_stop.clone());
        tokio::spawn(follow_connection(
            publisher.connected(),
            readiness.clone(),
            publisher_stop.token(),
        ));
        // The hand-off's delivery task, in a scope of its own: it keeps
        // running after the signal until its buffer is empty (see
        // `AlertHandoff::start`), and is drained after intake.
        let handoff_work = shutdown.scope();
        let handoff = AlertHandoff::start(
            publisher.clone(),
            config.handoff_buffer,
            handoff_counts.clone(),
            &handoff_work,
        );
        let processor = ReadingProcessor::new(
            rules,
            client.clone(),
            handoff,
            AlertOutput {
                subject_prefix: config.alert_subject_prefix.clone(),
                content_type: config.alert_content_type,
                default_owner: config.default_owner.clone(),
            },
            counts.clone(),
            format!("{}.>", config.subject_prefix),
            Codec::new(config.max_message_bytes),
        );
        tracing::info!(mode = ?config.mode, subject_prefix = config.subject_prefix, queue_group = config.queue_group, "evaluating readings");

        let intake_result = intake.run(processor, &config, &shutdown).await;

        // The processor (and its hand-off handle) is gone: the delivery task
        // ends once the buffer is empty, or the grace period ends it.
        readiness.shutting_down();
        if let Drained::TimedOut(_) = handoff_work.drain(config.shutdown_grace).await {
            let left = handoff_counts
                .pending
                .load(std::sync::atomic::Ordering::Relaxed);
            tracing::error!(left, "grace period over, alerts not handed on to rabbitmq");
            metrics::counter!(ALERTS_ABANDONED, "reason" => "shutdown").increment(left);
        }
        publisher_stop.trigger();
        // A clean AMQP goodbye rather than a dropped socket.
        if tokio::time::timeout(Duration::from_secs(5), publisher.close())
            .await
            .is_err()
        {
            tracing::warn!("rabbitmq connection did not close in time");
        }
        rules_stop.cancel();
        let summary = HandoffSummary::read(&counts, &handoff_counts);
        tracing::info!(?summary, "alert-subscriber stopped");
        if let Err(error) = client.drain().await {
            tracing::debug!(%error, "nats drain");
        }
        ops.stop().await;
        intake_result.map(|()| summary)
    }
}

/// Totals of one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HandoffSummary {
    /// Messages received.
    pub received: u64,
    /// Messages rejected.
    pub rejected: u64,
    /// Alerts raised.
    pub alerts: u64,
    /// Notify tasks confirmed by RabbitMQ.
    pub confirmed: u64,
    /// Alerts still waiting for RabbitMQ when the service stopped.
    pub pending: u64,
}

impl HandoffSummary {
    fn read(counts: &AlertCounts, handoff: &HandoffCounts) -> Self {
        use std::sync::atomic::Ordering::Relaxed;
        HandoffSummary {
            received: counts.received.load(Relaxed),
            rejected: counts.rejected.load(Relaxed),
            alerts: counts.alerts.load(Relaxed),
            confirmed: handoff.confirmed.load(Relaxed),
            pending: handoff.pending.load(Relaxed),
        }
    }
}

/// `GET /partitions`: the consumer group as this member sees it (members,
/// the assignment, the lanes held); in core mode, no group (`null`).
fn partitions_route() -> (watch::Sender<GroupView>, axum::Router) {
    let (view, seen) = watch::channel(GroupView::default());
    let route = axum::routing::get(move || {
        let seen = seen.clone();
        async move {
            let view = seen.borrow().clone();
            axum::Json((!view.group.is_empty()).then_some(view))
        }
    });
    (view, axum::Router::new().route("/partitions", route))
}

/// Mirrors the task publisher's connection in the `rabbitmq` readiness
/// check until `stop` fires (or the publisher is gone).
async fn follow_connection(
    mut connected: watch::Receiver<bool>,
    readiness: Readiness,
    stop: CancellationToken,
) {
    loop {
        let up = *connected.borrow_and_update();
        readiness.set(RABBITMQ_CHECK, up);
        tokio::select! {
            () = stop.cancelled() => return,
            changed = connected.changed() => if changed.is_err() { return },
        }
    }
}

/// The rules channel: fixed without a config file, else following it. A
/// reload that fails to parse or validate is logged and ignored.
fn watch_rules(config: &Config, stop: CancellationToken) -> anyhow::Result<watch::Receiver<Rules>> {
    let Some(file) = config.config_file.clone() else {
        return Ok(watch::channel(config.rules.clone()).1);
    };
    let source = ConfigSource::new(Some(file.clone()), ENV_KEYS);
    let receiver = common::config::watch_file(
        &file,
        config.rules.clone(),
        move || source.load::<Config>().map(|config| config.rules),
        stop,
    )
    .with_context(|| format!("cannot watch {} for rule changes", file.display()))?;
    Ok(receiver)
}

/// Builds and runs the alert-subscriber until the shutdown signal.
pub async fn run(config: Config, shutdown: Shutdown) -> anyhow::Result<()> {
    Application::build(config)
        .await?
        .run_until_stopped(shutdown)
        .await
        .map(|_| ())
}
