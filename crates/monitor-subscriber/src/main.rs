//! `monitor-subscriber` binary: reads the config, sets up logging and keeps
//! fleet statistics until SIGTERM.

use common::service;
use monitor_subscriber::{Config, ENV_KEYS, run};

/// Sees every sensor reading on NATS and serves per-sensor statistics.
#[tokio::main]
async fn main() -> anyhow::Result<()> {
    service::start::<Config>(clap::command!(), ENV_KEYS)?
        .run(run)
        .await
}
