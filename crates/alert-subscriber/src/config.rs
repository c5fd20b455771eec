//! The alert-subscriber's settings: defaults, the keys of its TOML file and
//! environment, and the checks they must pass before the service starts.
//!
//! Durations are written as text (`lease_ttl = "5s"`); a key of the retired
//! unit-in-the-name convention (`lease_ttl_ms`) is refused at load time,
//! naming the key to write instead. The `[rules.*]` tables are also the
//! hot-reloaded part: [`crate::app`] watches the file they came from.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use common::{
    codec::{ContentType, DEFAULT_MAX_PAYLOAD, validate_max_message_bytes},
    config::{ConfigError, SecretUrl, Validate},
    nats::{DeliveryMode, NatsAuth},
    tls::TlsFiles,
};
use serde::{Deserialize, Serialize};
use workqueue::publisher::PublisherConfig;

use crate::rules::{self, Rules};

/// Standard environment variables and the keys they set.
pub const ENV_KEYS: &[(&str, &str)] = &[
    ("NATS_URL", "nats_url"),
    ("AMQP_URL", "amqp_url"),
    ("OPS_ADDR", "ops_addr"),
    ("NATS_CREDS_FILE", "nats_auth.creds_file"),
    ("NATS_NKEY_FILE", "nats_auth.nkey_file"),
    ("NATS_TLS_CA", "nats_tls.ca"),
    ("NATS_TLS_CERT", "nats_tls.cert"),
    ("NATS_TLS_KEY", "nats_tls.key"),
    ("AMQP_TLS_CA", "amqp_tls.ca"),
    ("AMQP_TLS_CERT", "amqp_tls.cert"),
    ("AMQP_TLS_KEY", "amqp_tls.key"),
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
    /// `core` (queue group, one instance) or `jetstream` (partitioned consumer group).
    pub mode: DeliveryMode,
    /// Readings are read from `<subject_prefix>` and `<subject_prefix>.>`.
    pub subject_prefix: String,
    /// Alerts are published on `<alert_subject_prefix>.<sensor_id>`.
    pub alert_subject_prefix: String,
    /// Core mode: the queue group the instances share.
    pub queue_group: String,
    /// JetStream mode: the readings stream.
    pub stream: String,
    /// JetStream mode: the consumer group's name; its key-value buckets are
    /// `<group>_leases` and `<group>_state`.
    pub group: String,
    /// JetStream mode: this instance's id in the group (default: host name
    /// and a random suffix).
    pub member_id: Option<String>,
    /// JetStream mode: partitions P; the NATS server's mapping must use the
    /// same number (deploy/nats/partitions.conf).
    pub partitions: u16,
    /// JetStream mode: how long a lane's lease outlives its last renewal.
    #[serde(with = "common::config::duration")]
    pub lease_ttl: Duration,
    /// JetStream mode: how often leases are renewed and lanes rebalanced.
    #[serde(with = "common::config::duration")]
    pub heartbeat: Duration,
    /// JetStream mode: how often a lane writes its checkpoint.
    #[serde(with = "common::config::duration")]
    pub checkpoint_interval: Duration,
    /// JetStream mode: how long a lane handed to another member waits for
    /// its outstanding alerts before its last checkpoint.
    #[serde(with = "common::config::duration")]
    pub handover_grace: Duration,
    /// The RabbitMQ work queue for `notify` tasks.
    pub task_queue: String,
    /// Encoding of alerts on NATS.
    pub alert_content_type: ContentType,
    /// Encoding of `notify` tasks.
    pub task_content_type: ContentType,
    /// JetStream mode: alerts a lane waits for, at most, before it reads on.
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
    /// How the service authenticates to NATS besides `nats_url`'s own
    /// credentials: a `.creds` file (`NATS_CREDS_FILE`) or an NKey seed file
    /// (`NATS_NKEY_FILE`).
    pub nats_auth: NatsAuth,
    /// CA and client certificate for NATS (`NATS_TLS_CA`, `NATS_TLS_CERT`,
    /// `NATS_TLS_KEY`); any of them set means TLS is required.
    pub nats_tls: TlsFiles,
    /// CA and client certificate of an `amqps://` `amqp_url` (`AMQP_TLS_CA`,
    /// `AMQP_TLS_CERT`, `AMQP_TLS_KEY`; docs/ARCHITECTURE.md).
    pub amqp_tls: TlsFiles,
    /// Servers that keep a copy of the readings stream and of the group's
    /// buckets (JetStream mode): 1 on a single server, 3 on a three-node
    /// cluster, so evaluation survives the loss of a node. At most 5.
    pub stream_replicas: usize,
    /// `classic` (default) or `quorum`: the type `task_queue` is declared
    /// with; must match the task-workers' (docs/ARCHITECTURE.md).
    pub queue_type: workqueue::topology::QueueType,
    /// Largest message in bytes: a bigger reading is rejected unread
    /// (`messages_rejected_total{reason="too_large"}`), a bigger alert or
    /// task is not sent.
    pub max_message_bytes: usize,
}

impl Config {
    /// The settings of the task publisher that hands alerts to the work
    /// queue.
    pub fn publisher(&self) -> PublisherConfig {
        PublisherConfig {
            amqp_url: self.amqp_url.clone(),
            amqp_tls: self.amqp_tls.clone(),
            queue: self.task_queue.clone(),
            content_type: self.task_content_type,
            max_unconfirmed: 256,
            publish_timeout: self.publish_timeout,
            queue_type: self.queue_type,
            max_message_bytes: self.max_message_bytes,
        }
    }
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
            group: "alert_subscriber".into(),
            member_id: None,
            partitions: 16,
            lease_ttl: Duration::from_secs(5),
            heartbeat: Duration::from_secs(1),
            checkpoint_interval: Duration::from_secs(1),
            handover_grace: Duration::from_secs(2),
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
            nats_auth: NatsAuth::default(),
            nats_tls: TlsFiles::default(),
            amqp_tls: TlsFiles::default(),
            stream_replicas: 1,
            queue_type: workqueue::topology::QueueType::Classic,
            max_message_bytes: DEFAULT_MAX_PAYLOAD,
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
        self.nats_auth.validate(&self.nats_url)?;
        self.nats_tls.validate("nats_tls")?;
        workqueue::connection::check_scheme(&self.amqp_url, &self.amqp_tls)?;
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
            ("group", &self.group),
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
        if let Some(member_id) = &self.member_id
            && !is_token(member_id)
        {
            return Err(ConfigError::invalid(
                "member_id",
                member_id,
                "must be a name without dots, spaces or wildcards",
            ));
        }
        if !(1..=1024).contains(&self.partitions) {
            return Err(ConfigError::invalid(
                "partitions",
                self.partitions,
                "must be from 1 to 1024",
            ));
        }
        let format = common::config::duration::format;
        if self.heartbeat < Duration::from_millis(100) {
            return Err(ConfigError::invalid(
                "heartbeat",
                format(self.heartbeat),
                "must be at least 100ms",
            ));
        }
        // A lease must survive a couple of missed heartbeats. Checked: three
        // times a huge heartbeat overflowed and panicked the loader (found by
        // fuzz/fuzz_targets/config_file.rs); no lease is that long.
        if self
            .heartbeat
            .checked_mul(3)
            .is_none_or(|three| self.lease_ttl < three)
        {
            return Err(ConfigError::invalid(
                "lease_ttl",
                format(self.lease_ttl),
                "must be at least 3 heartbeats",
            ));
        }
        if self.checkpoint_interval < Duration::from_millis(10) {
            return Err(ConfigError::invalid(
                "checkpoint_interval",
                format(self.checkpoint_interval),
                "must be at least 10ms",
            ));
        }
        if !(1..=5).contains(&self.stream_replicas) {
            return Err(ConfigError::invalid(
                "stream_replicas",
                self.stream_replicas,
                "must be 1 to 5 (servers keeping a copy of the stream)",
            ));
        }
        validate_max_message_bytes(self.max_message_bytes)?;
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
    fn stream_replicas_come_from_the_environment_and_stay_in_1_to_5() {
        let config: Config = source(None, &[("SWITCHYARD__STREAM_REPLICAS", "3")])
            .load()
            .unwrap();
        assert_eq!(config.stream_replicas, 3);
        let error = source(None, &[("SWITCHYARD__STREAM_REPLICAS", "6")])
            .load::<Config>()
            .unwrap_err()
            .to_string();
        assert!(error.contains("stream_replicas"), "{error}");
    }

    #[test]
    fn max_message_bytes_comes_from_the_environment_within_its_bounds() {
        assert_eq!(Config::default().max_message_bytes, 1024 * 1024);
        let config: Config = source(None, &[("SWITCHYARD__MAX_MESSAGE_BYTES", "4096")])
            .load()
            .unwrap();
        assert_eq!(config.max_message_bytes, 4096);
        let error = source(None, &[("SWITCHYARD__MAX_MESSAGE_BYTES", "100")])
            .load::<Config>()
            .unwrap_err()
            .to_string();
        assert!(error.contains("max_message_bytes"), "{error}");
    }

    #[test]
    fn durations_are_text_with_a_unit() {
        let dir = TempDir::new("durations");
        let file = dir.file(
            "alert.toml",
            "lease_ttl = \"4s\"\npublish_timeout = \"500ms\"\nshutdown_grace = \"1m30s\"\n",
        );
        let config: Config = source(Some(file), &[]).load().unwrap();
        assert_eq!(config.lease_ttl, Duration::from_secs(4));
        assert_eq!(config.publish_timeout, Duration::from_millis(500));
        assert_eq!(config.shutdown_grace, Duration::from_secs(90));

        let error = source(None, &[("SWITCHYARD__LEASE_TTL", "30")])
            .load::<Config>()
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("no unit"),
            "a bare number is refused: {error}"
        );

        let error = source(None, &[("SWITCHYARD__LEASE_TTL", "500ms")])
            .load::<Config>()
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("lease_ttl") && error.contains("500ms"),
            "{error}"
        );
    }
}
