//! `monitor-subscriber` binary: reads the config, sets up logging and keeps
//! fleet statistics until SIGTERM.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use common::{config::ConfigSource, shutdown::Shutdown};

/// Sees every sensor reading on NATS and serves per-sensor statistics.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// TOML config file (else `CONFIG_FILE`, else defaults and environment).
    #[arg(long)]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _telemetry = common::telemetry::init("monitor-subscriber")?;
    let config: monitor_subscriber::Config =
        ConfigSource::new(args.config, monitor_subscriber::ENV_KEYS)
            .load()
            .context("cannot load the configuration")?;
    tracing::info!(?config, "starting monitor-subscriber");
    monitor_subscriber::run(config, Shutdown::on_signals()).await
}
