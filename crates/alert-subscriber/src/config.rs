//! The alert-subscriber's settings: defaults, the keys of its TOML file and
//! environment, and the checks they must pass before the service starts.
//!
//! Durations are written as text (`ack_wait = "30s"`); a key of the retired
//! unit-in-the-name convention (`ack_wait_ms`) is refused at load time,
//! naming the key to write instead. The `[rules.*]` tables are also the
//! hot-reloaded part: [`crate::app`] watches the file they came from.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use common::{
    codec::ContentType,
    config::{ConfigError, SecretUrl, Validate},
    nats::DeliveryMode,
};
use serde::{Deserialize, Serialize};

use crate::rules::{self, Rules};

/// Standard environment variables and the keys they set.
pub const ENV_KEYS: &[(&str, &str)] = &[
    ("NATS_URL", "nats_url"),
    ("AMQP_URL", "amqp_url"),
    ("OPS_ADDR", "ops_addr"),
];

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
    #[serde(with = "common::config::duration")]
    pub ack_wait: Duration,
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
    #[serde(with = "common::config::duration")]
    pub publish_timeout: Duration,
    /// On shutdown, how long buffered readings get to be evaluated, and then
    /// how long queued alerts get to be confirmed.
    #[serde(with = "common::config::duration")]
    pub shutdown_grace: Duration,
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
            ack_wait: Duration::from_secs(30),
            task_queue: "task_queue".into(),
            alert_content_type: ContentType::Protobuf,
            task_content_type: ContentType::Protobuf,
            max_in_flight: 256,
            handoff_buffer: 10_000,
            subscription_capacity: 65_536,
            publish_timeout: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(20),
            default_owner: None,
            rules: rules::default_rules(),
            config_file: None,
        }
    }
}

/// `true` for one NATS subject token: not empty, no dots, wildcards or spaces.
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
        if self.ack_wait < Duration::from_secs(1) {
            return Err(ConfigError::invalid(
                "ack_wait",
                common::config::duration::format(self.ack_wait),
                "must be at least 1s",
            ));
        }
        rules::validate_rules(&self.rules)
    }
}

#[cfg(test)]
mod tests {
    use common::config::ConfigSource;

    use super::*;
    use crate::rules::Direction;

    /// A source reading only `file` and the variables in `env`.
    fn source(file: Option<PathBuf>, env: &[(&str, &str)]) -> ConfigSource {
        ConfigSource::isolated(file, ENV_KEYS, env)
    }

    /// A directory of its own under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("alert-config-{name}-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }

        fn file(&self, name: &str, toml: &str) -> PathBuf {
            let file = self.0.join(name);
            std::fs::write(&file, toml).unwrap();
            file
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn defaults_load_from_nothing_and_validate() {
        let config: Config = source(None, &[]).load().unwrap();
        assert_eq!(config, Config::default());
        assert_eq!(config.rules["temperature"].warning, 30.0);
        assert_eq!(config.rules["temperature"].critical, 40.0);
    }

    #[test]
    fn rules_come_from_the_file_in_the_contract_format() {
        let dir = TempDir::new("rules");
        let file = dir.file(
            "alert.toml",
            "default_owner = \"u-9\"\n[rules.temperature]\nwarning = 28.0\ncritical = 35.0\ndirection = \"above\"\nhysteresis = 0.5\n[rules.pressure]\nwarning = 980.0\ncritical = 960.0\ndirection = \"below\"\n",
        );
        let config: Config = source(Some(file), &[]).load().unwrap();
        assert_eq!(config.rules["temperature"].critical, 35.0);
        assert_eq!(config.rules["pressure"].direction, Direction::Below);
        assert_eq!(config.rules["humidity"].warning, 80.0, "defaults stay");
        assert_eq!(config.default_owner.as_deref(), Some("u-9"));
    }

    #[test]
    fn a_bad_rule_names_its_key() {
        let mut config = Config::default();
        config.rules.get_mut("temperature").unwrap().critical = 10.0;
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("rules.temperature.critical"), "{error}");
    }

    #[test]
    fn durations_are_text_with_a_unit() {
        let dir = TempDir::new("durations");
        let file = dir.file(
            "alert.toml",
            "ack_wait = \"2s\"\npublish_timeout = \"500ms\"\nshutdown_grace = \"1m30s\"\n",
        );
        let config: Config = source(Some(file), &[]).load().unwrap();
        assert_eq!(config.ack_wait, Duration::from_secs(2));
        assert_eq!(config.publish_timeout, Duration::from_millis(500));
        assert_eq!(config.shutdown_grace, Duration::from_secs(90));

        let error = source(None, &[("SWITCHYARD__ACK_WAIT", "30")])
            .load::<Config>()
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("no unit"),
            "a bare number is refused: {error}"
        );

        let error = source(None, &[("SWITCHYARD__ACK_WAIT", "500ms")])
            .load::<Config>()
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("ack_wait") && error.contains("500ms"),
            "{error}"
        );
    }
}
