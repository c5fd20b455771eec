//! `user-service` binary: parse the command line, load the config, set up
//! telemetry and signals, run the library.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use common::{config::ConfigSource, shutdown::Shutdown};

/// The user directory over gRPC and JSON/HTTP.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// TOML config file (also `CONFIG_FILE`); the environment overrides it.
    #[arg(long)]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let _telemetry = common::telemetry::init("user-service").context("cannot set up telemetry")?;
    let config: user_service::Config =
        ConfigSource::new(cli.config, &user_service::config::ENV_KEYS)
            .load()
            .context("cannot load the configuration")?;
    user_service::run(config, Shutdown::on_signals()).await
}
