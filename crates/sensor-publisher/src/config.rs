//! The publisher's configuration: defaults < TOML file < environment.
//!
//! Keys are the field names of [`Config`] (the fleet under `[fleet]`);
//! durations are text with their unit (`publish_timeout = "2s"`), and a key
//! of the retired `*_ms` form is refused at load with the name of its
//! replacement. Standard variables: `NATS_URL`, `OPS_ADDR`; any key also as
//! `SWITCHYARD__<KEY>` (`SWITCHYARD__FLEET__SENSORS=20`).

use std::{net::SocketAddr, time::Duration};

use common::{
    codec::{ContentType, DEFAULT_MAX_PAYLOAD, validate_max_message_bytes},
    config::{ConfigError, SecretUrl, Validate, duration},
    nats::{DeliveryMode, NatsAuth},
    tls::TlsFiles,
};
use serde::{Deserialize, Serialize};

use crate::fleet::FleetConfig;

/// Standard environment variables and the keys they set.
pub const ENV_KEYS: &[(&str, &str)] = &[
    ("NATS_URL", "nats_url"),
    ("OPS_ADDR", "ops_addr"),
    ("NATS_CREDS_FILE", "nats_auth.creds_file"),
    ("NATS_NKEY_FILE", "nats_auth.nkey_file"),
    ("NATS_TLS_CA", "nats_tls.ca"),
    ("NATS_TLS_CERT", "nats_tls.cert"),
    ("NATS_TLS_KEY", "nats_tls.key"),
];

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
    #[serde(with = "duration")]
    pub publish_timeout: Duration,
    /// On shutdown, how long outstanding PubAcks are waited for.
    #[serde(with = "duration")]
    pub shutdown_grace: Duration,
    /// How the service authenticates to NATS besides `nats_url`'s own
    /// credentials: a `.creds` file (`NATS_CREDS_FILE`) or an NKey seed file
    /// (`NATS_NKEY_FILE`).
    pub nats_auth: NatsAuth,
    /// CA and client certificate for NATS (`NATS_TLS_CA`, `NATS_TLS_CERT`,
    /// `NATS_TLS_KEY`); any of them set means TLS is required.
    pub nats_tls: TlsFiles,
    /// Servers that keep a copy of the readings stream (JetStream mode):
    /// 1 on a single server, 3 on a three-node cluster, so the stream
    /// survives the loss of a node. At most 5, as nats-server allows.
    pub stream_replicas: usize,
    /// Largest reading in bytes: a bigger one is not sent but counted in
    /// `readings_unsent_total{reason="too_large"}`.
    pub max_message_bytes: usize,
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
            publish_timeout: Duration::from_secs(2),
            shutdown_grace: Duration::from_secs(10),
            nats_auth: NatsAuth::default(),
            nats_tls: TlsFiles::default(),
            stream_replicas: 1,
            max_message_bytes: DEFAULT_MAX_PAYLOAD,
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
        self.nats_auth.validate(&self.nats_url)?;
        self.nats_tls.validate("nats_tls")?;
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
        if let Some(value) = self.fleet.script.iter().find(|value| !value.is_finite()) {
            return Err(ConfigError::invalid(
                "fleet.script",
                value,
                "every value must be a finite number",
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
        if self.publish_timeout.is_zero() {
            return Err(ConfigError::invalid(
                "publish_timeout",
                0,
                "must be positive",
            ));
        }
        if !(1..=5).contains(&self.stream_replicas) {
            return Err(ConfigError::invalid(
                "stream_replicas",
                self.stream_replicas,
                "must be 1 to 5 (servers keeping a copy of the stream)",
            ));
        }
        validate_max_message_bytes(self.max_message_bytes)
    }
}

#[cfg(test)]
mod tests {
    use common::config::ConfigSource;

    use super::*;

    #[test]
    fn defaults_load_from_nothing_and_a_file_overrides_the_fleet() {
        let source = |file| ConfigSource::isolated(file, ENV_KEYS, &[]);
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
    fn durations_are_written_with_their_unit_and_old_keys_are_refused() {
        let source = |env: &[(&str, &str)]| ConfigSource::isolated(None, ENV_KEYS, env);
        let config: Config = source(&[
            ("SWITCHYARD__PUBLISH_TIMEOUT", "500ms"),
            ("SWITCHYARD__SHUTDOWN_GRACE", "1m"),
        ])
        .load()
        .unwrap();
        assert_eq!(config.publish_timeout, Duration::from_millis(500));
        assert_eq!(config.shutdown_grace, Duration::from_secs(60));

        let error = source(&[("SWITCHYARD__PUBLISH_TIMEOUT", "0")])
            .load::<Config>()
            .unwrap_err();
        assert!(error.to_string().contains("publish_timeout"), "{error}");
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
            Config {
                stream_replicas: 0,
                ..Config::default()
            },
        ];
        let keys = [
            "subject_prefix",
            "rate_per_sec",
            "fleet.kinds",
            "ack_window",
            "stream_replicas",
        ];
        for (config, key) in cases.into_iter().zip(keys) {
            let error = config.validate().unwrap_err().to_string();
            assert!(error.contains(key), "{error}");
        }
    }
}
