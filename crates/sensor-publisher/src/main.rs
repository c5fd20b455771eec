//! `sensor-publisher` binary: reads the config, sets up logging and runs the
//! publisher until it has published `count` readings or receives SIGTERM.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use common::{config::ConfigSource, shutdown::Shutdown};

/// Simulates a fleet of sensors and publishes their readings on NATS.
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
    let _telemetry = common::telemetry::init("sensor-publisher")?;
    let config: sensor_publisher::Config =
        ConfigSource::new(args.config, sensor_publisher::ENV_KEYS)
            .load()
            .context("cannot load the configuration")?;
    tracing::info!(?config, "starting sensor-publisher");
    sensor_publisher::run(config, Shutdown::on_signals()).await
}
