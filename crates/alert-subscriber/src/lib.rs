//! `alert-subscriber`: evaluates sensor readings against per-kind rules and
//! raises alerts — on NATS (`sensor.alert.<sensor_id>`) and as `notify`
//! tasks on the RabbitMQ work queue.
//!
//! - [`rules`]: thresholds with hysteresis, hot-reloaded from the config file.
//! - [`alert`]: the alert and its `notify` task.
//! - [`processor`]: one reading at a time, in order: decode, evaluate, raise.
//! - [`handoff`]: the bounded buffer in front of RabbitMQ, retried until confirmed.
//! - [`intake`]: where readings come from — a core NATS queue group
//!   (`alerts`: instances share the load, each reading evaluated once) or a
//!   durable JetStream pull consumer acked only after the alert is handed on.
//!
//! [`Application::build`] binds the ops port (port 0 works), connects and
//! subscribes; [`Application::run_until_stopped`] processes readings until
//! the shutdown signal, then drains: no new readings, the buffered ones are
//! still evaluated, and queued alerts get `drain_grace_ms` to be confirmed.

pub mod alert;
pub mod handoff;
pub mod intake;
pub mod processor;
pub mod rules;

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context as _;
use common::{
    codec::ContentType,
    config::{ConfigError, ConfigSource, SecretUrl, Validate, duration_ms},
    nats::{ConnectionWatch, DeliveryMode, NatsOptions},
    ops::{OpsServer, Readiness},
    shutdown::Shutdown,
};
use serde::{Deserialize, Serialize};
use task_producer::publisher::{PublisherConfig, TaskPublisher};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use handoff::HandoffCounts;
pub use processor::AlertCounts;
pub use rules::{Direction, Rule, Rules};

use crate::{
    handoff::AlertHandoff,
    intake::Intake,
    processor::{AlertOutput, ReadingProcessor},
};

/// Standard environment variables and the keys they set.
pub const ENV_KEYS: &[(&str, &str)] = &[
    ("NATS_URL", "nats_url"),
    ("AMQP_URL", "amqp_url"),
    ("OPS_ADDR", "ops_addr"),
];

/// Name of the readiness check that follows the RabbitMQ connection.
pub const RABBITMQ_CHECK: &str = "rabbitmq";

/// Configuration of the alert-subscriber (TOML keys are the field names).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// NATS server URL(s) (`NATS_URL`).
    pub nats_url: SecretUrl,
    /// RabbitMQ URL (`AMQP_URL`).
    pub amqp_url: SecretUrl,
    /// Ops HTTP address: `/healthz`, `/readyz`, `/metrics` (`OPS_ADDR`).
    pub ops_addr: SocketAddr,
    /// `core` (queue group) or `jetstream` (durable consumer).
    pub mode: DeliveryMode,
    /// Readings are read from `<subject_prefix>` and `<subject_prefix>.>`.
    pub subject_prefix: String,
    /// Alerts are published on `<alert_subject_prefix>.<sensor_id>`.
    pub alert_subject_prefix: String,
    /// Core mode: the queue group the instances share.
    pub queue_group: String,
    /// JetStream mode: the readings stream.
    pub stream: String,
    /// JetStream mode: the durable consumer the instances share.
    pub durable_name: String,
    /// JetStream mode: how long an unacked reading waits before redelivery.
    #[serde(with = "duration_ms")]
    pub ack_wait_ms: Duration,
    /// The RabbitMQ work queue for `notify` tasks.
    pub task_queue: String,
    /// Encoding of alerts on NATS.
    pub alert_content_type: ContentType,
    /// Encoding of `notify` tasks.
    pub task_content_type: ContentType,
    /// JetStream mode: readings whose alert is still being handed on, at most.
    pub max_in_flight: usize,
    /// Alerts waiting for RabbitMQ, at most, before intake slows down.
    pub handoff_buffer: usize,
    /// Core mode: messages buffered per subscription before the client drops.
    pub subscription_capacity: usize,
    /// How long one task publish may wait for a confirm before it is retried.
    #[serde(with = "duration_ms")]
    pub publish_timeout_ms: Duration,
    /// On shutdown, how long queued alerts get to be confirmed.
    #[serde(with = "duration_ms")]
    pub drain_grace_ms: Duration,
    /// Owner named in the notify task when a reading carries none.
    pub default_owner: Option<String>,
    /// Alert rules by kind (hot-reloaded from `config_file`).
    pub rules: Rules,
    /// The config file whose `[rules.*]` are watched; set by `main` from
    /// `--config` / `CONFIG_FILE`, not a key in the file.
    #[serde(skip)]
    pub config_file: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            nats_url: SecretUrl::new("nats://127.0.0.1:4222"),
            amqp_url: SecretUrl::new("amqp://guest:guest@127.0.0.1:5672/%2f"),
            ops_addr: SocketAddr::from(([0, 0, 0, 0], 9102)),
            mode: DeliveryMode::Core,
            subject_prefix: "sensor.data".into(),
            alert_subject_prefix: "sensor.alert".into(),
            queue_group: "alerts".into(),
            stream: "SENSORS".into(),
            durable_name: "alert-subscriber".into(),
            ack_wait_ms: Duration::from_secs(30),
            task_queue: "task_queue".into(),
            alert_content_type: ContentType::Protobuf,
            task_content_type: ContentType::Protobuf,
            max_in_flight: 256,
            handoff_buffer: 10_000,
            subscription_capacity: 65_536,
            publish_timeout_ms: Duration::from_secs(5),
            drain_grace_ms: Duration::from_secs(20),
            default_owner: None,
            rules: rules::default_rules(),
            config_file: None,
        }
    }
}

fn is_token(token: &str) -> bool {
    !token.is_empty()
        && !token
            .chars()
            .any(|c| c == '.' || c == '*' || c == '>' || c.is_whitespace())
}

impl Validate for Config {
    fn validate(&self) -> Result<(), ConfigError> {
        for (key, subject) in [
            ("subject_prefix", &self.subject_prefix),
            ("alert_subject_prefix", &self.alert_subject_prefix),
        ] {
            if !subject.split('.').all(is_token) {
                return Err(ConfigError::invalid(
                    key,
                    subject,
                    "must be a literal subject (dot-separated tokens, no wildcards)",
                ));
            }
        }
        for (key, name) in [
            ("queue_group", &self.queue_group),
            ("stream", &self.stream),
            ("durable_name", &self.durable_name),
        ] {
            if !is_token(name) {
                return Err(ConfigError::invalid(
                    key,
                    name,
                    "must be a name without dots, spaces or wildcards",
                ));
            }
        }
        if self.task_queue.is_empty() {
            return Err(ConfigError::invalid("task_queue", "", "must not be empty"));
        }
        for (key, value) in [
            ("max_in_flight", self.max_in_flight),
            ("handoff_buffer", self.handoff_buffer),
            ("subscription_capacity", self.subscription_capacity),
        ] {
            if value == 0 {
                return Err(ConfigError::invalid(key, value, "must be at least 1"));
            }
        }
        if self.ack_wait_ms < Duration::from_secs(1) {
            return Err(ConfigError::invalid(
                "ack_wait_ms",
                self.ack_wait_ms.as_millis(),
                "must be at least 1000",
            ));
        }
        rules::validate_rules(&self.rules)
    }
}

/// A connected alert-subscriber with its ops server running.
#[derive(Debug)]
pub struct Application {
    config: Config,
    client: async_nats::Client,
    intake: Intake,
    rules: watch::Receiver<Rules>,
    rules_stop: CancellationToken,
    counts: Arc<AlertCounts>,
    handoff_counts: Arc<HandoffCounts>,
    ops: OpsServer,
    ops_stop: CancellationToken,
    readiness: Readiness,
}

impl Application {
    /// Starts the ops server, connects to NATS (in the background if it is
    /// not up yet), subscribes (core mode) and starts watching the rules.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        config.validate()?;
        let readiness = Readiness::new(&[common::nats::READINESS_CHECK, RABBITMQ_CHECK]);
        let ops_stop = CancellationToken::new();
        let ops = OpsServer::start(
            config.ops_addr,
            readiness.clone(),
            axum::Router::new(),
            ops_stop.clone(),
        )
        .await
        .with_context(|| format!("cannot bind the ops address {}", config.ops_addr))?;
        let client = common::nats::connect(
            &NatsOptions {
                url: config.nats_url.clone(),
                name: "alert-subscriber".into(),
                subscription_capacity: config.subscription_capacity,
            },
            ConnectionWatch::with_readiness(readiness.clone()),
        )
        .await
        .with_context(|| format!("cannot connect to nats at {}", config.nats_url))?;
        let intake = Intake::subscribe(&client, &config).await?;
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
            ops_stop,
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
            ops_stop,
            readiness,
        } = self;
        // Its own signal: the task publisher must keep its connection while
        // queued alerts drain after the service's shutdown fired.
        let publisher_stop = Shutdown::new();
        let publisher = TaskPublisher::start(
            PublisherConfig {
                amqp_url: config.amqp_url.clone(),
                queue: config.task_queue.clone(),
                content_type: config.task_content_type,
                max_unconfirmed: 256,
                publish_timeout: config.publish_timeout_ms,
            },
            publisher_stop.clone(),
        );
        let rabbit_ready =
            tokio::spawn(follow_connection(publisher.connected(), readiness.clone()));
        let closer = publisher.clone();
        let (handoff, handoff_worker) =
            AlertHandoff::start(publisher, config.handoff_buffer, handoff_counts.clone());
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
        );
        tracing::info!(mode = ?config.mode, subject_prefix = config.subject_prefix, queue_group = config.queue_group, "evaluating readings");

        let intake_result = intake.run(processor, &config, &shutdown).await;

        // The processor (and its hand-off handle) is gone: the worker ends
        // once the buffer is empty, or the grace period ends it.
        readiness.shutting_down();
        let grace = config.drain_grace_ms;
        let mut handoff_worker = handoff_worker;
        if tokio::time::timeout(grace, &mut handoff_worker)
            .await
            .is_err()
        {
            handoff_worker.abort();
            let left = handoff_counts
                .pending
                .load(std::sync::atomic::Ordering::Relaxed);
            tracing::error!(left, "grace period over, alerts not handed on to rabbitmq");
            metrics::counter!("alerts_abandoned_total", "reason" => "shutdown").increment(left);
        }
        publisher_stop.trigger();
        // A clean AMQP goodbye rather than a dropped socket.
        if tokio::time::timeout(Duration::from_secs(5), closer.close())
            .await
            .is_err()
        {
            tracing::warn!("rabbitmq connection did not close in time");
        }
        rabbit_ready.abort();
        rules_stop.cancel();
        let summary = HandoffSummary::read(&counts, &handoff_counts);
        tracing::info!(?summary, "alert-subscriber stopped");
        if let Err(error) = client.drain().await {
            tracing::debug!(%error, "nats drain");
        }
        ops_stop.cancel();
        ops.stopped().await.ok();
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

async fn follow_connection(mut connected: watch::Receiver<bool>, readiness: Readiness) {
    loop {
        let up = *connected.borrow_and_update();
        readiness.set(RABBITMQ_CHECK, up);
        if connected.changed().await.is_err() {
            return;
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

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn defaults_load_from_nothing_and_validate() {
        let source = ConfigSource {
            file: None,
            env_keys: ENV_KEYS.to_vec(),
            env: Some(HashMap::new()),
        };
        let config: Config = source.load().unwrap();
        assert_eq!(config, Config::default());
        assert_eq!(config.rules["temperature"].warning, 30.0);
        assert_eq!(config.rules["temperature"].critical, 40.0);
    }

    #[test]
    fn rules_come_from_the_file_in_the_contract_format() {
        let dir = std::env::temp_dir().join(format!("alert-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("alert.toml");
        std::fs::write(
            &file,
            "default_owner = \"u-9\"\n[rules.temperature]\nwarning = 28.0\ncritical = 35.0\ndirection = \"above\"\nhysteresis = 0.5\n[rules.pressure]\nwarning = 980.0\ncritical = 960.0\ndirection = \"below\"\n",
        )
        .unwrap();
        let source = ConfigSource {
            file: Some(file),
            env_keys: ENV_KEYS.to_vec(),
            env: Some(HashMap::new()),
        };
        let config: Config = source.load().unwrap();
        assert_eq!(config.rules["temperature"].critical, 35.0);
        assert_eq!(config.rules["pressure"].direction, Direction::Below);
        assert_eq!(config.rules["humidity"].warning, 80.0, "defaults stay");
        assert_eq!(config.default_owner.as_deref(), Some("u-9"));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_bad_rule_names_its_key() {
        let mut config = Config::default();
        config.rules.get_mut("temperature").unwrap().critical = 10.0;
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("rules.temperature.critical"), "{error}");
    }
}
