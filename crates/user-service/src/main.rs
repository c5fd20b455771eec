//! `user-service` binary: parse the command line, set up telemetry, load
//! the config, run the library until SIGTERM or Ctrl-C.

use common::service;
use user_service::{Config, ENV_KEYS, run};

/// The user directory over gRPC and JSON/HTTP.
#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Cargo.toml's description speaks of user-cli too: `--help` has its own.
    let command = clap::command!().about("The user directory over gRPC and JSON/HTTP.");
    service::start::<Config>(command, &ENV_KEYS)?.run(run).await
}
