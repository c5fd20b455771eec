//! `sensor-publisher` binary: parse the command line, set up telemetry, load
//! the config, and run the publisher until it has published `count`
//! readings or receives SIGTERM or Ctrl-C.

use common::service;
use sensor_publisher::{Config, ENV_KEYS, run};

/// Simulates a fleet of sensors and publishes their readings on NATS.
#[tokio::main]
async fn main() -> anyhow::Result<()> {
    service::start::<Config>(clap::command!(), ENV_KEYS)?
        .run(run)
        .await
}
