//! `alert-subscriber` binary: reads the config, sets up logging and
//! evaluates readings until SIGTERM; the config file's `[rules.*]` are
//! reloaded while it runs.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use common::{config::ConfigSource, shutdown::Shutdown};

/// Raises alerts from sensor readings: on NATS and as notify tasks on RabbitMQ.
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
    let _telemetry = common::telemetry::init("alert-subscriber")?;
    let source = ConfigSource::new(args.config, alert_subscriber::ENV_KEYS);
    let mut config: alert_subscriber::Config =
        source.load().context("cannot load the configuration")?;
    // The rules are watched in the same file the config came from.
    config.config_file = source.file.clone();
    tracing::info!(?config, "starting alert-subscriber");
    alert_subscriber::run(config, Shutdown::on_signals()).await
}
