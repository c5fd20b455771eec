//! `sensor-publisher`: simulates a fleet of sensors and publishes their
//! readings on NATS (the publishing side of the seed's chapter 2).
//!
//! - [`fleet`]: the sensors and their random walk with spikes.
//! - [`pacer`]: a rate per second, or as fast as possible.
//! - [`publish`]: core NATS (at-most-once) or JetStream (acknowledged, de-duplicated).
//!
//! [`Application::build`] connects and binds the ops port (port 0 works);
//! [`Application::run_until_stopped`] publishes `count` readings (or until
//! the shutdown signal when `count` is 0), waits for outstanding PubAcks and
//! returns what was published.

pub mod fleet;
pub mod pacer;
pub mod publish;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use common::{
    codec::ContentType,
    config::{ConfigError, SecretUrl, Validate, duration_ms},
    nats::{ConnectionWatch, DeliveryMode, NatsOptions},
    ops::{OpsServer, Readiness},
    retry::RetryPolicy,
    shutdown::Shutdown,
};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

pub use fleet::FleetConfig;
pub use publish::{PublishCounts, PublishSummary};

use crate::{
    fleet::Fleet,
    pacer::Pacer,
    publish::{PublisherSettings, ReadingPublisher},
};

/// Standard environment variables and the keys they set.
pub const ENV_KEYS: &[(&str, &str)] = &[("NATS_URL", "nats_url"), ("OPS_ADDR", "ops_addr")];

/// Configuration of the sensor-publisher (TOML keys are the field names).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// NATS server URL(s) (`NATS_URL`).
    pub nats_url: SecretUrl,
    /// Ops HTTP address: `/healthz`, `/readyz`, `/metrics` (`OPS_ADDR`).
    pub ops_addr: SocketAddr,
    /// Name of this publisher; a random suffix per run is added for
    /// `Nats-Msg-Id`, so a restarted publisher is not taken for a duplicate.
    pub publisher_id: String,
    /// `core` (at-most-once) or `jetstream` (stored, acknowledged).
    pub mode: DeliveryMode,
    /// `protobuf` (default) or `json`.
    pub content_type: ContentType,
    /// Readings go to `<subject_prefix>.<sensor_id>`.
    pub subject_prefix: String,
    /// JetStream stream over `<subject_prefix>` and `<subject_prefix>.>`.
    pub stream: String,
    /// The simulated sensors.
    pub fleet: FleetConfig,
    /// Readings per second over the whole fleet; 0 = as fast as possible.
    pub rate_per_sec: f64,
    /// Readings to publish before stopping; 0 = until stopped.
    pub count: u64,
    /// PubAcks awaited at once in JetStream mode.
    pub ack_window: usize,
    /// Sends of one reading (JetStream) before it is counted as unsent.
    pub max_publish_attempts: u32,
    /// How long one publish (core) or one PubAck (JetStream) may take.
    #[serde(with = "duration_ms")]
    pub publish_timeout_ms: Duration,
    /// On shutdown, how long outstanding PubAcks are waited for.
    #[serde(with = "duration_ms")]
    pub drain_grace_ms: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            nats_url: SecretUrl::new("nats://127.0.0.1:4222"),
            ops_addr: SocketAddr::from(([0, 0, 0, 0], 9101)),
            publisher_id: "sensor-publisher".into(),
            mode: DeliveryMode::Core,
            content_type: ContentType::Protobuf,
            subject_prefix: "sensor.data".into(),
            stream: "SENSORS".into(),
            fleet: FleetConfig::default(),
            rate_per_sec: 10.0,
            count: 0,
            ack_window: 256,
            max_publish_attempts: 20,
            publish_timeout_ms: Duration::from_secs(2),
            drain_grace_ms: Duration::from_secs(10),
        }
    }
}

/// `true` when `token` is usable inside a NATS subject: not empty, no
/// separators or wildcards.
pub fn is_subject_token(token: &str) -> bool {
    !token.is_empty()
        && !token
            .chars()
            .any(|c| c == '.' || c == '*' || c == '>' || c.is_whitespace())
}

/// `true` when `subject` is a literal subject: dot-separated valid tokens.
pub fn is_literal_subject(subject: &str) -> bool {
    subject.split('.').all(is_subject_token)
}

impl Validate for Config {
    fn validate(&self) -> Result<(), ConfigError> {
        if !is_literal_subject(&self.subject_prefix) {
            return Err(ConfigError::invalid(
                "subject_prefix",
                &self.subject_prefix,
                "must be a literal subject (dot-separated tokens, no wildcards)",
            ));
        }
        if !is_subject_token(&self.stream) {
            return Err(ConfigError::invalid(
                "stream",
                &self.stream,
                "must be a name without dots, spaces or wildcards",
            ));
        }
        if !is_subject_token(&self.publisher_id) {
            return Err(ConfigError::invalid(
                "publisher_id",
                &self.publisher_id,
                "must be non-empty, without dots, spaces or wildcards",
            ));
        }
        if self.fleet.sensors == 0 {
            return Err(ConfigError::invalid(
                "fleet.sensors",
                self.fleet.sensors,
                "must be at least 1",
            ));
        }
        if self.fleet.kinds.is_empty() {
            return Err(ConfigError::invalid(
                "fleet.kinds",
                "[]",
                "must name a kind",
            ));
        }
        if let Some(kind) = self.fleet.kinds.iter().find(|k| !is_subject_token(k)) {
            return Err(ConfigError::invalid(
                "fleet.kinds",
                kind,
                "a kind becomes part of a subject: no dots, spaces or wildcards",
            ));
        }
        if !self.fleet.id_prefix.is_empty() && !is_subject_token(&self.fleet.id_prefix) {
            return Err(ConfigError::invalid(
                "fleet.id_prefix",
                &self.fleet.id_prefix,
                "becomes part of a subject: no dots, spaces or wildcards",
            ));
        }
        if !(0.0..=1.0).contains(&self.fleet.spike_probability) {
            return Err(ConfigError::invalid(
                "fleet.spike_probability",
                self.fleet.spike_probability,
                "must be between 0 and 1",
            ));
        }
        if !self.rate_per_sec.is_finite() || self.rate_per_sec < 0.0 {
            return Err(ConfigError::invalid(
                "rate_per_sec",
                self.rate_per_sec,
                "must be 0 (as fast as possible) or a positive number",
            ));
        }
        if self.ack_window == 0 {
            return Err(ConfigError::invalid("ack_window", 0, "must be at least 1"));
        }
        if self.max_publish_attempts == 0 {
            return Err(ConfigError::invalid(
                "max_publish_attempts",
                0,
                "must be at least 1",
            ));
        }
        if self.publish_timeout_ms.is_zero() {
            return Err(ConfigError::invalid(
                "publish_timeout_ms",
                0,
                "must be positive",
            ));
        }
        Ok(())
    }
}

/// A connected publisher with its ops server running.
#[derive(Debug)]
pub struct Application {
    config: Config,
    client: async_nats::Client,
    ops: OpsServer,
    ops_stop: CancellationToken,
    readiness: Readiness,
    counts: Arc<PublishCounts>,
    run_id: String,
}

impl Application {
    /// Starts the ops server and connects to NATS (in the background: the
    /// server need not be up yet).
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        config.validate()?;
        let readiness = Readiness::new(&[common::nats::READINESS_CHECK]);
        let ops_stop = CancellationToken::new();
        let ops = OpsServer::start(
            config.ops_addr,
            readiness.clone(),
            axum::Router::new(),
            ops_stop.clone(),
        )
        .await
        .with_context(|| format!("cannot bind the ops address {}", config.ops_addr))?;
        let run_id = format!("{}.{:08x}", config.publisher_id, rand::random::<u32>());
        let client = common::nats::connect(
            &NatsOptions {
                url: config.nats_url.clone(),
                name: run_id.clone(),
                subscription_capacity: 1024,
            },
            ConnectionWatch::with_readiness(readiness.clone()),
        )
        .await
        .with_context(|| format!("cannot connect to nats at {}", config.nats_url))?;
        Ok(Application {
            config,
            client,
            ops,
            ops_stop,
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
    /// waits (at most `drain_grace_ms`) for outstanding PubAcks.
    pub async fn run_until_stopped(self, shutdown: Shutdown) -> anyhow::Result<PublishSummary> {
        let Application {
            config,
            client,
            ops,
            ops_stop,
            readiness,
            counts,
            run_id,
        } = self;
        let settings = PublisherSettings {
            publisher_id: run_id,
            subject_prefix: config.subject_prefix.clone(),
            content_type: config.content_type,
            publish_timeout: config.publish_timeout_ms,
            ack_window: config.ack_window,
            max_publish_attempts: config.max_publish_attempts,
        };
        if !common::nats::wait_connected(&client, &shutdown.token()).await {
            ops_stop.cancel();
            ops.stopped().await.ok();
            return Ok(counts.summary());
        }
        let mut publisher = match config.mode {
            DeliveryMode::Core => ReadingPublisher::core(client.clone(), settings, counts.clone()),
            DeliveryMode::Jetstream => {
                let stream = ensure_stream(&client, &config, &shutdown).await;
                if stream.is_none() {
                    // Stopped before the stream could be set up.
                    ops_stop.cancel();
                    ops.stopped().await.ok();
                    return Ok(counts.summary());
                }
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
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = pacer.wait() => {}
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
        publisher.finish(config.drain_grace_ms).await;
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
        ops_stop.cancel();
        ops.stopped().await.ok();
        Ok(summary)
    }
}

/// Creates or updates the readings stream, retrying until it works or the
/// service is stopped (the server may still be starting).
async fn ensure_stream(
    client: &async_nats::Client,
    config: &Config,
    shutdown: &Shutdown,
) -> Option<async_nats::jetstream::stream::Info> {
    let js = async_nats::jetstream::new(client.clone());
    let mut delays = RetryPolicy::reconnect().backoff();
    loop {
        match common::nats::ensure_sensor_stream(&js, &config.stream, &config.subject_prefix).await
        {
            Ok(info) => {
                tracing::info!(stream = config.stream, "readings stream ready");
                return Some(info);
            }
            Err(error) => {
                let delay = delays.next().unwrap_or(Duration::from_secs(10));
                tracing::warn!(%error, stream = config.stream, delay_ms = delay.as_millis() as u64, "cannot set up the stream, retrying");
                tokio::select! {
                    () = shutdown.cancelled() => return None,
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

/// Builds and runs the publisher until it is done or stopped.
pub async fn run(config: Config, shutdown: Shutdown) -> anyhow::Result<()> {
    Application::build(config)
        .await?
        .run_until_stopped(shutdown)
        .await
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_load_from_nothing_and_a_file_overrides_the_fleet() {
        let source = |file| common::config::ConfigSource {
            file,
            env_keys: ENV_KEYS.to_vec(),
            env: Some(Default::default()),
        };
        let config: Config = source(None).load().unwrap();
        assert_eq!(config, Config::default());
        let file = std::env::temp_dir().join(format!("publisher-{}.toml", std::process::id()));
        std::fs::write(
            &file,
            "mode = \"jetstream\"\ncontent_type = \"json\"\n[fleet]\nsensors = 3\nowners = [\"u-7\"]\nsite = \"plant-a\"\nseed = 5\n",
        )
        .unwrap();
        let config: Config = source(Some(file.clone())).load().unwrap();
        std::fs::remove_file(file).unwrap();
        assert_eq!(config.mode, DeliveryMode::Jetstream);
        assert_eq!(config.content_type, ContentType::Json);
        assert_eq!(config.fleet.sensors, 3);
        assert_eq!(config.fleet.site.as_deref(), Some("plant-a"));
        assert_eq!(config.fleet.seed, Some(5));
    }

    #[test]
    fn defaults_are_valid_and_bad_values_name_their_key() {
        Config::default().validate().unwrap();
        let cases = [
            Config {
                subject_prefix: "sensor.*".into(),
                ..Config::default()
            },
            Config {
                rate_per_sec: -1.0,
                ..Config::default()
            },
            Config {
                fleet: FleetConfig {
                    kinds: vec!["air temp".into()],
                    ..FleetConfig::default()
                },
                ..Config::default()
            },
            Config {
                ack_window: 0,
                ..Config::default()
            },
        ];
        let keys = [
            "subject_prefix",
            "rate_per_sec",
            "fleet.kinds",
            "ack_window",
        ];
        for (config, key) in cases.into_iter().zip(keys) {
            let error = config.validate().unwrap_err().to_string();
            assert!(error.contains(key), "{error}");
        }
    }
}
