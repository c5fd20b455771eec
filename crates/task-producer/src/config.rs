//! The producer's configuration: defaults < TOML file < environment < flags.
//!
//! Keys are the field names of [`Config`], the job under `[job]`
//! ([`JobConfig`]); durations are text with their unit
//! (`publish_timeout = "5s"`, `[job] duration = "60s"`), and a key of the
//! retired `*_ms` form is refused at load with the name of its replacement.
//! Standard variables: `AMQP_URL`, `OPS_ADDR`, `AMQP_TLS_CA`/`_CERT`/`_KEY`; any key also as
//! `SWITCHYARD__<KEY>` (`SWITCHYARD__JOB__COUNT=500`). The binary's flags
//! (`--count`, `--rate`, `--duration 60s`, …) go over all of these.

use std::{net::SocketAddr, time::Duration};

use common::{
    codec::{Codec, CodecError, ContentType, validate_max_message_bytes},
    config::{ConfigError, SecretUrl, Validate, duration},
    tls::TlsFiles,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;
use workqueue::{publisher::PublisherConfig, task::Task, topology::QueueType};

/// Standard environment variables and the keys they set.
pub const ENV_KEYS: &[(&str, &str)] = &[
    ("AMQP_URL", "amqp_url"),
    ("OPS_ADDR", "ops_addr"),
    ("AMQP_TLS_CA", "amqp_tls.ca"),
    ("AMQP_TLS_CERT", "amqp_tls.cert"),
    ("AMQP_TLS_KEY", "amqp_tls.key"),
];

/// Configuration of the producer (TOML keys in snake_case).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The broker (`AMQP_URL`).
    pub amqp_url: SecretUrl,
    /// Base name of the work queue.
    pub queue: String,
    /// Encoding of task bodies: `json` or `protobuf`.
    pub content_type: ContentType,
    /// Most published-but-unconfirmed messages at a time.
    pub max_unconfirmed: usize,
    /// How long one publish may take before it counts as failed.
    #[serde(with = "duration")]
    pub publish_timeout: Duration,
    /// Ops HTTP (`/healthz`, `/readyz`, `/metrics`) (`OPS_ADDR`).
    pub ops_addr: SocketAddr,
    /// What to publish.
    pub job: JobConfig,
    /// CA and client certificate of an `amqps://` `amqp_url` (`AMQP_TLS_CA`,
    /// `AMQP_TLS_CERT`, `AMQP_TLS_KEY`; docs/ARCHITECTURE.md).
    pub amqp_tls: TlsFiles,
    /// `classic` (default) or `quorum`: the type the work queue is declared
    /// with; must match the workers' (docs/ARCHITECTURE.md).
    pub queue_type: QueueType,
    /// Largest task body in bytes: a job whose tasks would be larger is
    /// refused at start, a larger task is never sent.
    pub max_message_bytes: usize,
}

impl Default for Config {
    fn default() -> Self {
        let publisher = PublisherConfig::default();
        Config {
            amqp_url: publisher.amqp_url,
            queue: publisher.queue,
            content_type: publisher.content_type,
            max_unconfirmed: publisher.max_unconfirmed,
            publish_timeout: publisher.publish_timeout,
            ops_addr: SocketAddr::from(([0, 0, 0, 0], 9105)),
            job: JobConfig::default(),
            amqp_tls: publisher.amqp_tls,
            queue_type: publisher.queue_type,
            max_message_bytes: publisher.max_message_bytes,
        }
    }
}

impl Validate for Config {
    fn validate(&self) -> Result<(), ConfigError> {
        workqueue::connection::check_scheme(&self.amqp_url, &self.amqp_tls)?;
        if self.queue.trim().is_empty() {
            return Err(ConfigError::invalid(
                "queue",
                &self.queue,
                "must not be empty",
            ));
        }
        if self.max_unconfirmed == 0 {
            return Err(ConfigError::invalid(
                "max_unconfirmed",
                self.max_unconfirmed,
                "must be at least 1",
            ));
        }
        if self.publish_timeout.is_zero() {
            return Err(ConfigError::invalid(
                "publish_timeout",
                0,
                "must be above 0",
            ));
        }
        validate_max_message_bytes(self.max_message_bytes)?;
        self.job.validate()?;
        self.check_task_size()
    }
}

impl Config {
    /// The publisher settings of this config.
    pub fn publisher(&self) -> PublisherConfig {
        PublisherConfig {
            amqp_url: self.amqp_url.clone(),
            queue: self.queue.clone(),
            content_type: self.content_type,
            max_unconfirmed: self.max_unconfirmed,
            publish_timeout: self.publish_timeout,
            amqp_tls: self.amqp_tls.clone(),
            queue_type: self.queue_type,
            max_message_bytes: self.max_message_bytes,
        }
    }

    /// Refuses a job whose tasks would be over `max_message_bytes` at start,
    /// rather than every one of them at its publish.
    fn check_task_size(&self) -> Result<(), ConfigError> {
        let Ok(payload) = self.job.payload_object() else {
            return Ok(()); // JobConfig::validate names that problem.
        };
        // An id as long as the real ones, which are UUIDs.
        let task = Task::new(Uuid::nil().to_string(), self.job.kind.clone(), payload);
        match Codec::new(self.max_message_bytes).encode(&task, self.content_type) {
            Err(CodecError::TooLarge { size, limit }) => Err(ConfigError::invalid(
                "job.payload",
                format!("{} bytes of JSON", self.job.payload.len()),
                format!(
                    "a task of {size} bytes ({}) exceeds max_message_bytes = {limit}",
                    self.content_type
                ),
            )),
            Err(error) => Err(ConfigError::invalid("job.payload", "", error.to_string())),
            Ok(_) => Ok(()),
        }
    }
}

/// What the producer publishes (`[job]` in the config file, or CLI flags).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JobConfig {
    /// How many tasks to publish (ignored when `duration` is set).
    pub count: u64,
    /// Tasks per second; 0 publishes as fast as confirms allow.
    pub rate: f64,
    /// Publish at `rate` for this long; 0 means "publish `count` tasks".
    #[serde(with = "duration")]
    pub duration: Duration,
    /// The task kind (`sleep`, `notify`, or any kind a worker handles).
    pub kind: String,
    /// The task payload, a JSON object.
    pub payload: String,
}

impl Default for JobConfig {
    fn default() -> Self {
        JobConfig {
            count: 10,
            rate: 0.0,
            duration: Duration::ZERO,
            kind: workqueue::task::KIND_SLEEP.to_string(),
            payload: r#"{"ms": 100}"#.to_string(),
        }
    }
}

impl Validate for JobConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if !self.rate.is_finite() || self.rate < 0.0 {
            return Err(ConfigError::invalid(
                "job.rate",
                self.rate,
                "must be 0 (unpaced) or a positive number of tasks per second",
            ));
        }
        if !self.duration.is_zero() && self.rate == 0.0 {
            return Err(ConfigError::invalid(
                "job.duration",
                duration::format(self.duration),
                "a duration needs a rate (job.rate)",
            ));
        }
        if self.kind.trim().is_empty() {
            return Err(ConfigError::invalid(
                "job.kind",
                &self.kind,
                "must not be empty",
            ));
        }
        self.payload_object()
            .map(|_| ())
            .map_err(|reason| ConfigError::invalid("job.payload", &self.payload, reason))
    }
}

impl JobConfig {
    /// The payload parsed as a JSON object.
    pub fn payload_object(&self) -> Result<Map<String, Value>, String> {
        match serde_json::from_str::<Value>(&self.payload) {
            Ok(Value::Object(map)) => Ok(map),
            Ok(_) => Err("must be a json object".into()),
            Err(error) => Err(format!("not valid json: {error}")),
        }
    }

    /// The number of tasks the job will publish, when known in advance.
    pub fn planned(&self) -> u64 {
        if self.duration.is_zero() {
            self.count
        } else {
            (self.rate * self.duration.as_secs_f64()).round() as u64
        }
    }
}

#[cfg(test)]
mod tests {
    use common::config::ConfigSource;

    use super::*;

    fn load(file: Option<&str>, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let file = file.map(tempfile_with);
        let loaded = ConfigSource::isolated(file.clone(), ENV_KEYS, env).load();
        if let Some(file) = file {
            std::fs::remove_file(file).ok();
        }
        loaded
    }

    /// A TOML file of its own under the temp directory.
    fn tempfile_with(text: &str) -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!(
            "task-producer-{}.toml",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn defaults_are_valid_and_durations_carry_their_unit() {
        assert_eq!(load(None, &[]).unwrap(), Config::default());
        let config = load(
            Some("publish_timeout = \"750ms\"\n[job]\nrate = 20.0\nduration = \"1m30s\"\n"),
            &[],
        )
        .unwrap();
        assert_eq!(config.publish_timeout, Duration::from_millis(750));
        assert_eq!(config.job.duration, Duration::from_secs(90));
        assert_eq!(config.job.planned(), 1800);
        let config = load(None, &[("SWITCHYARD__PUBLISH_TIMEOUT", "2s")]).unwrap();
        assert_eq!(config.publish_timeout, Duration::from_secs(2));
    }

    #[test]
    fn a_zero_publish_timeout_is_refused_naming_its_key() {
        let error = load(None, &[("SWITCHYARD__PUBLISH_TIMEOUT", "0")]).unwrap_err();
        assert!(error.to_string().contains("publish_timeout"), "{error}");
    }

    #[test]
    fn the_payload_must_be_a_json_object() {
        let mut job = JobConfig::default();
        assert!(job.validate().is_ok());
        job.payload = "[1]".into();
        let err = job.validate().unwrap_err().to_string();
        assert!(err.contains("json object"), "{err}");
        job.payload = "{".into();
        assert!(
            job.validate()
                .unwrap_err()
                .to_string()
                .contains("not valid json")
        );
    }

    #[test]
    fn a_job_whose_tasks_exceed_max_message_bytes_is_refused_at_start() {
        let blob = |len: usize| format!("{{\"blob\": \"{}\"}}", "x".repeat(len));
        let limit = ("SWITCHYARD__MAX_MESSAGE_BYTES", "4096");
        let fits = blob(3000);
        let config = load(None, &[limit, ("SWITCHYARD__JOB__PAYLOAD", &fits)]).unwrap();
        assert_eq!(config.max_message_bytes, 4096);
        let too_big = blob(5000);
        let error = load(None, &[limit, ("SWITCHYARD__JOB__PAYLOAD", &too_big)])
            .unwrap_err()
            .to_string();
        assert!(error.contains("job.payload"), "{error}");
        assert!(
            error.contains("exceeds max_message_bytes = 4096"),
            "{error}"
        );
        assert!(
            !error.contains("xxxx"),
            "the payload is not printed: {error}"
        );
    }

    #[test]
    fn a_duration_needs_a_rate() {
        let job = JobConfig {
            duration: Duration::from_secs(5),
            ..JobConfig::default()
        };
        let error = job.validate().unwrap_err().to_string();
        assert!(error.contains("job.rate"), "{error}");
        assert!(error.contains("job.duration = \"5s\""), "{error}");
        let job = JobConfig { rate: 200.0, ..job };
        assert!(job.validate().is_ok());
        assert_eq!(job.planned(), 1000);
    }
}
