//! `task-producer`: puts tasks on the RabbitMQ work queue (the seed's chapter 4
//! producer), with publisher confirms and retries instead of fire-and-forget.
//!
//! - [`topology`]: the queues of the work queue (shared with `task-worker`).
//! - [`publisher`]: [`publisher::TaskPublisher`], the confirmed publisher other
//!   services embed (alert-subscriber publishes `notify` tasks with it).
//! - [`job`]: the CLI's job: publish N tasks, or a rate for a duration, with
//!   a progress bar and a [`job::Summary`].
//!
//! [`run`] is what the binary calls: it serves the ops endpoint, runs the job
//! from [`Config::job`] and returns its summary.

pub mod job;
pub mod publisher;
pub mod topology;

use std::{net::SocketAddr, time::Duration};

use common::{
    codec::ContentType,
    config::{ConfigError, SecretUrl, Validate, duration_ms},
    ops::{OpsServer, Readiness},
    shutdown::Shutdown,
};
use serde::{Deserialize, Serialize};

use crate::{
    job::{JobConfig, Summary},
    publisher::{PublisherConfig, TaskPublisher},
};

/// Standard environment variables and the keys they set.
pub const ENV_KEYS: &[(&str, &str)] = &[("AMQP_URL", "amqp_url"), ("OPS_ADDR", "ops_addr")];

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
    #[serde(rename = "publish_timeout_ms", with = "duration_ms")]
    pub publish_timeout: Duration,
    /// Ops HTTP (`/healthz`, `/readyz`, `/metrics`) (`OPS_ADDR`).
    pub ops_addr: SocketAddr,
    /// What to publish.
    pub job: JobConfig,
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
        }
    }
}

impl Validate for Config {
    fn validate(&self) -> Result<(), ConfigError> {
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
                "publish_timeout_ms",
                0,
                "must be above 0",
            ));
        }
        self.job.validate()
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
        }
    }
}

/// Serves the ops endpoint, publishes the job and returns its summary. A
/// shutdown stops creating tasks; those already sent are still confirmed.
pub async fn run(config: Config, shutdown: Shutdown) -> anyhow::Result<Summary> {
    let readiness = Readiness::new(&["rabbitmq"]);
    let ops_stop = shutdown.child();
    // A one-off job still runs when another producer holds the ops port:
    // the endpoint only serves metrics while the job runs.
    let ops = match OpsServer::start(
        config.ops_addr,
        readiness.clone(),
        axum::Router::new(),
        ops_stop.token(),
    )
    .await
    {
        Ok(ops) => Some(ops),
        Err(error) => {
            tracing::warn!(addr = %config.ops_addr, error = %error, "cannot bind the ops address, running without it");
            None
        }
    };

    let publisher = TaskPublisher::start(config.publisher(), shutdown.clone());
    let mut connected = publisher.connected();
    let follow = tokio::spawn({
        let readiness = readiness.clone();
        async move {
            loop {
                readiness.set("rabbitmq", *connected.borrow_and_update());
                if connected.changed().await.is_err() {
                    readiness.set("rabbitmq", false);
                    return;
                }
            }
        }
    });

    let summary = job::publish(&publisher, &config.job, &shutdown).await;
    // A clean close: the broker sees a goodbye, not a dropped socket.
    publisher.close().await;
    follow.abort();
    ops_stop.trigger();
    if let Some(Err(error)) = match ops {
        Some(ops) => Some(ops.stopped().await),
        None => None,
    } {
        tracing::warn!(error = %error, "ops server stopped with an error");
    }
    summary
}
