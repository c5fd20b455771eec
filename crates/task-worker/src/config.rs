//! The worker's settings: defaults, the standard variables, validation, and
//! the work-queue topology they describe.
//!
//! Keys are snake_case in TOML and `SWITCHYARD__KEY` in the environment;
//! durations are text with their unit (`shutdown_grace = "25s"`), and a key
//! of the old unit-in-the-name convention (`shutdown_grace_ms`) is refused at
//! load naming its replacement.

use std::{net::SocketAddr, time::Duration};

use common::{
    circuit_breaker::BreakerConfig,
    codec::{DEFAULT_MAX_PAYLOAD, validate_max_message_bytes},
    config::{ConfigError, SecretUrl, Validate, duration},
    tls::TlsFiles,
};
use serde::{Deserialize, Serialize};
use workqueue::topology::{
    DATA_SYNC_QUEUE, DEFAULT_MAX_ATTEMPTS, DEFAULT_RETRY_BASE_DELAY, DEFAULT_RETRY_MAX_DELAY,
    DEFAULT_TASK_QUEUE, QueueType, Topology, exponential_delays,
};

/// Standard environment variables and the keys they set.
pub const ENV_KEYS: &[(&str, &str)] = &[
    ("AMQP_URL", "amqp_url"),
    ("OPS_ADDR", "ops_addr"),
    ("USER_SERVICE_URL", "user_service_url"),
    ("REDIS_URL", "redis_url"),
    ("AMQP_TLS_CA", "amqp_tls.ca"),
    ("AMQP_TLS_CERT", "amqp_tls.cert"),
    ("AMQP_TLS_KEY", "amqp_tls.key"),
    ("USER_SERVICE_TLS_CA", "user_service_tls.ca"),
    ("USER_SERVICE_TLS_CERT", "user_service_tls.cert"),
    ("USER_SERVICE_TLS_KEY", "user_service_tls.key"),
];

/// Configuration of the worker (TOML keys in snake_case).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The broker (`AMQP_URL`).
    pub amqp_url: SecretUrl,
    /// Base name of the work queue; retry tiers and the DLQ derive from it.
    pub queue: String,
    /// The user-event queue feeding the contact directory.
    pub data_sync_queue: String,
    /// Unacked deliveries per handler slot (`basic_qos`); 1 is fair dispatch.
    pub prefetch: u16,
    /// Handler slots per process: tasks run at the same time.
    pub concurrency: usize,
    /// Deliveries of a task (the first included) before it is dead-lettered.
    pub max_attempts: u32,
    /// Delay before the first retry; each later retry doubles it.
    #[serde(with = "duration")]
    pub retry_base_delay: Duration,
    /// Cap of one retry delay.
    #[serde(with = "duration")]
    pub retry_max_delay: Duration,
    /// Finished task ids this process remembers for idempotency.
    pub finished_capacity: usize,
    /// Redis shared by the pool for finished task ids (`REDIS_URL`); unset:
    /// each worker remembers only its own ([`crate::shared_finished`]).
    pub redis_url: Option<SecretUrl>,
    /// Prefix of the Redis keys of finished task ids.
    pub finished_key_prefix: String,
    /// How long Redis remembers a finished task id.
    #[serde(with = "duration")]
    pub finished_ttl: Duration,
    /// Longest `sleep` task accepted.
    #[serde(with = "duration")]
    pub max_sleep: Duration,
    /// How long a shutdown waits for tasks in flight.
    #[serde(with = "duration")]
    pub shutdown_grace: Duration,
    /// Ops HTTP (`/healthz`, `/readyz`, `/metrics`, `/contacts`) (`OPS_ADDR`).
    pub ops_addr: SocketAddr,
    /// The user-service gRPC endpoint for `notify` (`USER_SERVICE_URL`).
    pub user_service_url: String,
    /// Deadline of one user lookup, its retries included.
    #[serde(with = "duration")]
    pub user_service_timeout: Duration,
    /// The user-service circuit breaker; while it is open the worker pauses.
    pub user_service_breaker: BreakerConfig,
    /// CA and client certificate of an `https://` `user_service_url`
    /// (`USER_SERVICE_TLS_CA`, `USER_SERVICE_TLS_CERT`,
    /// `USER_SERVICE_TLS_KEY`); without a CA the system's trust store is used.
    pub user_service_tls: TlsFiles,
    /// CA and client certificate of an `amqps://` `amqp_url` (`AMQP_TLS_CA`,
    /// `AMQP_TLS_CERT`, `AMQP_TLS_KEY`; docs/ARCHITECTURE.md).
    pub amqp_tls: TlsFiles,
    /// `classic` (default) or `quorum`: the type of `queue`, its retry
    /// tiers, its DLQ and `data_sync_queue` (docs/ARCHITECTURE.md).
    pub queue_type: QueueType,
    /// Largest task or `data_sync` event body in bytes; a bigger one is not
    /// parsed but dead-lettered with `x-reason = too_large`.
    pub max_message_bytes: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            amqp_url: SecretUrl::new("amqp://guest:guest@127.0.0.1:5672/%2f"),
            queue: DEFAULT_TASK_QUEUE.to_string(),
            data_sync_queue: DATA_SYNC_QUEUE.to_string(),
            prefetch: 1,
            concurrency: 1,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            retry_base_delay: DEFAULT_RETRY_BASE_DELAY,
            retry_max_delay: DEFAULT_RETRY_MAX_DELAY,
            finished_capacity: 100_000,
            redis_url: None,
            finished_key_prefix: "switchyard:task-finished:".to_string(),
            finished_ttl: Duration::from_secs(24 * 3600),
            max_sleep: Duration::from_secs(600),
            shutdown_grace: Duration::from_secs(25),
            ops_addr: SocketAddr::from(([0, 0, 0, 0], 9106)),
            user_service_url: "http://127.0.0.1:50051".to_string(),
            user_service_timeout: Duration::from_secs(2),
            user_service_breaker: BreakerConfig::default(),
            user_service_tls: TlsFiles::default(),
            amqp_tls: TlsFiles::default(),
            queue_type: QueueType::Classic,
            max_message_bytes: DEFAULT_MAX_PAYLOAD,
        }
    }
}

impl Validate for Config {
    fn validate(&self) -> Result<(), ConfigError> {
        workqueue::connection::check_scheme(&self.amqp_url, &self.amqp_tls)?;
        for (key, value) in [
            ("queue", &self.queue),
            ("data_sync_queue", &self.data_sync_queue),
        ] {
            if value.trim().is_empty() {
                return Err(ConfigError::invalid(key, value, "must not be empty"));
            }
        }
        if self.prefetch == 0 {
            return Err(ConfigError::invalid(
                "prefetch",
                0,
                "must be at least 1 (0 would mean unlimited)",
            ));
        }
        if self.concurrency == 0 {
            return Err(ConfigError::invalid("concurrency", 0, "must be at least 1"));
        }
        if self.max_attempts == 0 {
            return Err(ConfigError::invalid(
                "max_attempts",
                0,
                "must be at least 1",
            ));
        }
        if self.retry_base_delay.is_zero() || self.retry_max_delay < self.retry_base_delay {
            return Err(ConfigError::invalid(
                "retry_max_delay",
                duration::format(self.retry_max_delay),
                "retry delays must be above 0 with retry_max_delay >= retry_base_delay",
            ));
        }
        if self.user_service_timeout.is_zero() {
            return Err(ConfigError::invalid(
                "user_service_timeout",
                duration::format(self.user_service_timeout),
                "must be above 0",
            ));
        }
        if self.user_service_breaker.failure_threshold == 0 {
            return Err(ConfigError::invalid(
                "user_service_breaker.failure_threshold",
                0,
                "must be at least 1",
            ));
        }
        // Redis expiries are whole seconds: less would round to "never set".
        if self.redis_url.is_some() && self.finished_ttl < Duration::from_secs(1) {
            return Err(ConfigError::invalid(
                "finished_ttl",
                duration::format(self.finished_ttl),
                "must be at least 1s (Redis expiries are in seconds)",
            ));
        }
        if self.finished_capacity == 0 {
            return Err(ConfigError::invalid(
                "finished_capacity",
                0,
                "must be at least 1",
            ));
        }
        validate_max_message_bytes(self.max_message_bytes)
    }
}

impl Config {
    /// The work-queue topology: the base name and one retry tier per retry.
    pub fn topology(&self) -> Topology {
        Topology::new(self.queue.clone())
            .with_retry_delays(exponential_delays(
                self.retry_base_delay,
                self.retry_max_delay,
                self.max_attempts,
            ))
            .with_queue_type(self.queue_type)
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use common::config::ConfigSource;

    use super::*;

    /// A source reading only `env` (and `file`, if any), never the process's.
    fn source(file: Option<PathBuf>, env: &[(&str, &str)]) -> ConfigSource {
        ConfigSource::isolated(file, ENV_KEYS, env)
    }

    #[test]
    fn the_default_topology_has_one_tier_per_retry() {
        let topology = Config::default().topology();
        assert_eq!(topology.task_queue(), "task_queue");
        assert_eq!(
            topology.retry_delays(),
            [1, 2, 4, 8].map(Duration::from_secs),
            "max_attempts 5: four retries"
        );
        assert!(Config::default().validate().is_ok());
    }

    #[test]
    fn bad_values_name_their_key() {
        let config = Config {
            prefetch: 0,
            ..Config::default()
        };
        assert!(
            config
                .validate()
                .unwrap_err()
                .to_string()
                .contains("prefetch")
        );
        let config = Config {
            retry_max_delay: Duration::from_millis(1),
            ..Config::default()
        };
        let message = config.validate().unwrap_err().to_string();
        assert!(message.contains("retry_max_delay"), "{message}");
        assert!(!message.contains("_ms"), "names the new keys: {message}");
        assert!(message.contains("1ms"), "the value as text: {message}");
        let config = Config {
            redis_url: Some(SecretUrl::new("redis://127.0.0.1:6379")),
            finished_ttl: Duration::from_millis(500),
            ..Config::default()
        };
        let message = config.validate().unwrap_err().to_string();
        assert!(message.contains("finished_ttl = \"500ms\""), "{message}");
        let config = Config {
            max_message_bytes: 0,
            ..Config::default()
        };
        let message = config.validate().unwrap_err().to_string();
        assert!(message.contains("max_message_bytes = \"0\""), "{message}");
    }

    #[test]
    fn durations_are_read_as_text_from_the_file_and_the_environment() {
        let dir = std::env::temp_dir().join(format!("task-worker-config-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("task-worker.toml");
        std::fs::write(
            &file,
            "retry_base_delay = \"500ms\"\nretry_max_delay = \"1m\"\nfinished_ttl = \"1h\"\n\
             max_sleep = \"90s\"\nuser_service_timeout = \"1500ms\"\n\n\
             [user_service_breaker]\nwindow = \"30s\"\nopen_duration = \"1m30s\"\n",
        )
        .unwrap();
        let config: Config = source(Some(file), &[("SWITCHYARD__SHUTDOWN_GRACE", "45s")])
            .load()
            .unwrap();
        std::fs::remove_dir_all(&dir).unwrap();

        assert_eq!(config.retry_base_delay, Duration::from_millis(500));
        assert_eq!(config.retry_max_delay, Duration::from_secs(60));
        assert_eq!(config.finished_ttl, Duration::from_secs(3600));
        assert_eq!(config.max_sleep, Duration::from_secs(90));
        assert_eq!(config.user_service_timeout, Duration::from_millis(1500));
        assert_eq!(config.shutdown_grace, Duration::from_secs(45));
        assert_eq!(config.user_service_breaker.window, Duration::from_secs(30));
        assert_eq!(
            config.user_service_breaker.open_duration,
            Duration::from_secs(90)
        );
    }

    #[test]
    fn user_service_tls_files_come_from_their_variables() {
        let config: Config = source(
            None,
            &[
                ("USER_SERVICE_URL", "https://user-service:50051"),
                ("USER_SERVICE_TLS_CA", "/tls/ca.crt"),
                ("USER_SERVICE_TLS_CERT", "/tls/tls.crt"),
                ("USER_SERVICE_TLS_KEY", "/tls/tls.key"),
            ],
        )
        .load()
        .unwrap();
        assert_eq!(
            config.user_service_tls.ca,
            Some(PathBuf::from("/tls/ca.crt"))
        );
        assert_eq!(
            config.user_service_tls.cert,
            Some(PathBuf::from("/tls/tls.crt"))
        );
        assert_eq!(
            config.user_service_tls.key,
            Some(PathBuf::from("/tls/tls.key"))
        );
    }

    #[test]
    fn redis_url_comes_from_the_environment_and_never_prints_its_password() {
        let config: Config = source(None, &[("REDIS_URL", "redis://:s3cret@redis:6379")])
            .load()
            .unwrap();
        let url = config.redis_url.as_ref().expect("REDIS_URL sets redis_url");
        assert_eq!(url.expose(), "redis://:s3cret@redis:6379");
        assert!(!format!("{config:?}").contains("s3cret"));
        assert!(Config::default().redis_url.is_none(), "optional by default");
    }

    #[test]
    fn queue_type_is_classic_unless_set_to_quorum() {
        assert_eq!(
            Config::default().topology().queue_type(),
            QueueType::Classic
        );
        let config: Config = source(None, &[("SWITCHYARD__QUEUE_TYPE", "quorum")])
            .load()
            .unwrap();
        assert_eq!(config.topology().queue_type(), QueueType::Quorum);
        let error = source(None, &[("SWITCHYARD__QUEUE_TYPE", "mirrored")])
            .load::<Config>()
            .unwrap_err()
            .to_string();
        assert!(error.contains("queue_type"), "{error}");
    }
}
