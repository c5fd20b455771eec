//! `task-worker` binary: parses `--config`, sets up logging, runs the worker
//! until SIGTERM or Ctrl-C.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use common::{config::ConfigSource, shutdown::Shutdown, telemetry};
use task_worker::{Config, ENV_KEYS};

/// Consume tasks from the RabbitMQ work queue.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// TOML config file (also `CONFIG_FILE`).
    #[arg(long)]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config: Config = ConfigSource::new(args.config, ENV_KEYS)
        .load()
        .context("cannot load the configuration")?;
    let _telemetry = telemetry::init("task-worker").context("cannot set up telemetry")?;
    tracing::info!(?config, "starting task-worker");
    task_worker::run(config, Shutdown::on_signals()).await
}
