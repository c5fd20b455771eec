//! `task-worker`: the seed's worker pool on RabbitMQ (chapter 4), made
//! production-shaped.
//!
//! - Fair dispatch: `concurrency` handler slots per process, each a consumer
//!   with `basic_qos(prefetch)` (default 1, the seed's), manual ack only after
//!   the handler finished (`consumer`).
//! - Failures: a transient one goes to a retry tier and comes back after an
//!   exponentially growing delay, with `x-attempts` counting; after
//!   `max_attempts` deliveries, or at once for a permanent failure, an unknown
//!   kind or an undecodable body, the task goes to `<queue>.dlq` with headers
//!   naming the reason, the error, the attempts and the time (`processing`,
//!   [`routing`], topology in [`task_producer::topology`]).
//! - Idempotent: a redelivered task that was already done is acked and
//!   skipped ([`finished`]; across the pool with `REDIS_URL`,
//!   [`shared_finished`]).
//! - Resilient: reconnects after a broker restart and declares the topology
//!   again (`session`); on SIGTERM stops consuming, finishes and acks what
//!   is in flight, closes, within `shutdown_grace_ms`.
//! - `notify` asks user-service for the owner (request-reply inside a worker,
//!   [`notify`]); while the user-service circuit breaker is open the worker
//!   stops consuming and resumes when it half-opens.
//! - Also consumes `data_sync` into a contact directory ([`data_sync`],
//!   [`contacts`]), served on the ops port as `GET /contacts`.
//!
//! [`Worker::build`] → [`Worker::ops_addr`] → [`Worker::run_until_stopped`]
//! lets tests bind port 0; [`run`] is what the binary calls.

pub mod contacts;
pub mod data_sync;
pub mod events;
pub mod finished;
pub mod handler;
pub mod notify;
pub mod routing;
pub mod shared_finished;

mod consumer;
mod processing;
mod session;
mod worker;

use std::{net::SocketAddr, time::Duration};

use common::{
    circuit_breaker::BreakerConfig,
    config::{ConfigError, SecretUrl, Validate, duration_ms},
    shutdown::Shutdown,
};
use serde::{Deserialize, Serialize};
use task_producer::topology::{
    DATA_SYNC_QUEUE, DEFAULT_MAX_ATTEMPTS, DEFAULT_RETRY_BASE_DELAY, DEFAULT_RETRY_MAX_DELAY,
    DEFAULT_TASK_QUEUE, Topology, exponential_delays,
};

pub use crate::worker::Worker;

/// Standard environment variables and the keys they set.
pub const ENV_KEYS: &[(&str, &str)] = &[
    ("AMQP_URL", "amqp_url"),
    ("OPS_ADDR", "ops_addr"),
    ("USER_SERVICE_URL", "user_service_url"),
    ("REDIS_URL", "redis_url"),
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
    #[serde(rename = "retry_base_delay_ms", with = "duration_ms")]
    pub retry_base_delay: Duration,
    /// Cap of one retry delay.
    #[serde(rename = "retry_max_delay_ms", with = "duration_ms")]
    pub retry_max_delay: Duration,
    /// Finished task ids this process remembers for idempotency.
    pub finished_capacity: usize,
    /// Redis shared by the pool for finished task ids (`REDIS_URL`); unset:
    /// each worker remembers only its own ([`shared_finished`]).
    pub redis_url: Option<SecretUrl>,
    /// Prefix of the Redis keys of finished task ids.
    pub finished_key_prefix: String,
    /// How long Redis remembers a finished task id.
    #[serde(rename = "finished_ttl_ms", with = "duration_ms")]
    pub finished_ttl: Duration,
    /// Longest `sleep` task accepted.
    #[serde(rename = "max_sleep_ms", with = "duration_ms")]
    pub max_sleep: Duration,
    /// How long a shutdown waits for tasks in flight.
    #[serde(rename = "shutdown_grace_ms", with = "duration_ms")]
    pub shutdown_grace: Duration,
    /// Ops HTTP (`/healthz`, `/readyz`, `/metrics`, `/contacts`) (`OPS_ADDR`).
    pub ops_addr: SocketAddr,
    /// The user-service gRPC endpoint for `notify` (`USER_SERVICE_URL`).
    pub user_service_url: String,
    /// Deadline of one user lookup, its retries included.
    #[serde(rename = "user_service_timeout_ms", with = "duration_ms")]
    pub user_service_timeout: Duration,
    /// The user-service circuit breaker; while it is open the worker pauses.
    pub user_service_breaker: BreakerConfig,
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
        }
    }
}

impl Validate for Config {
    fn validate(&self) -> Result<(), ConfigError> {
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
                "retry_max_delay_ms",
                self.retry_max_delay.as_millis(),
                "retry delays must be above 0 with retry_max_delay_ms >= retry_base_delay_ms",
            ));
        }
        if self.user_service_timeout.is_zero() {
            return Err(ConfigError::invalid(
                "user_service_timeout_ms",
                0,
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
        if self.redis_url.is_some() && self.finished_ttl < Duration::from_secs(1) {
            return Err(ConfigError::invalid(
                "finished_ttl_ms",
                self.finished_ttl.as_millis(),
                "must be at least 1000 (Redis expiries are in seconds)",
            ));
        }
        if self.finished_capacity == 0 {
            return Err(ConfigError::invalid(
                "finished_capacity",
                0,
                "must be at least 1",
            ));
        }
        Ok(())
    }
}

impl Config {
    /// The work-queue topology: the base name and one retry tier per retry.
    pub fn topology(&self) -> Topology {
        Topology::new(self.queue.clone()).with_retry_delays(exponential_delays(
            self.retry_base_delay,
            self.retry_max_delay,
            self.max_attempts,
        ))
    }
}

/// Builds the worker and runs it until `shutdown` fires.
pub async fn run(config: Config, shutdown: Shutdown) -> anyhow::Result<()> {
    Worker::build(config)
        .await?
        .run_until_stopped(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(
            config
                .validate()
                .unwrap_err()
                .to_string()
                .contains("retry_max_delay_ms")
        );
    }

    #[test]
    fn redis_url_comes_from_the_environment_and_never_prints_its_password() {
        let source = common::config::ConfigSource {
            file: None,
            env_keys: ENV_KEYS.to_vec(),
            env: Some(
                [(
                    "REDIS_URL".to_string(),
                    "redis://:s3cret@redis:6379".to_string(),
                )]
                .into(),
            ),
        };
        let config: Config = source.load().unwrap();
        let url = config.redis_url.as_ref().expect("REDIS_URL sets redis_url");
        assert_eq!(url.expose(), "redis://:s3cret@redis:6379");
        assert!(!format!("{config:?}").contains("s3cret"));
        assert!(Config::default().redis_url.is_none(), "optional by default");
    }
}
