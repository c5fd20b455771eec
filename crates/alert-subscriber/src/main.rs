//! `alert-subscriber` binary: reads the config, sets up logging and
//! evaluates readings until SIGTERM; the config file's `[rules.*]` are
//! reloaded while it runs.

use alert_subscriber::{Config, ENV_KEYS, run};
use common::service;

/// Raises alerts from sensor readings: on NATS and as notify tasks on RabbitMQ.
#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut service = service::start::<Config>(clap::command!(), ENV_KEYS)?;
    // The rules are watched in the same file the config came from.
    service.config.config_file = service.source.file.clone();
    service.run(run).await
}
