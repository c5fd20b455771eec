//! `chaos [--schedule one|three|churn] [--sensors N] [--rate R] [--duration 30s] [--cluster]`:
//! runs the checker and prints its table and `RESULT` line; exits 1 when
//! anything was lost, duplicated or unexpected. Run from a release build
//! beside the other binaries: `cargo build --release --bins && target/release/chaos`.

use std::time::Duration;

use chaos::{Options, Schedule};
use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    about = "Alerts lost, duplicated or unexpected while alert-subscribers join, crash and leave"
)]
struct Cli {
    /// How alert-subscriber instances come and go.
    #[arg(long, value_enum, default_value = "churn")]
    schedule: Schedule,
    /// Sensors in the scripted fleet.
    #[arg(long, default_value_t = 40)]
    sensors: usize,
    /// Readings per second, all sensors together.
    #[arg(long, default_value_t = 200.0)]
    rate: f64,
    /// How long the fleet publishes (e.g. "30s").
    #[arg(long, default_value = "30s", value_parser = common::config::duration::parse)]
    duration: Duration,
    /// alert-subscriber's mode: `jetstream` (the partitioned group) or `core` (the queue group).
    #[arg(long, default_value = "jetstream")]
    mode: String,
    /// Another alert-subscriber build to run, e.g. an older release.
    #[arg(long)]
    alert_subscriber: Option<std::path::PathBuf>,
    /// Private 3-node NATS and RabbitMQ clusters, with the node leading the
    /// readings stream and the node leading the work queue killed mid-run.
    #[arg(long)]
    cluster: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let options = Options {
        schedule: cli.schedule,
        sensors: cli.sensors,
        rate_per_sec: cli.rate,
        duration: cli.duration,
        mode: cli.mode,
        alert_subscriber: cli.alert_subscriber,
        cluster: cli.cluster,
        ..Options::default()
    };
    let report = chaos::run(&options).await?;
    print!("{}", report.render());
    if report.failures() > 0 {
        std::process::exit(1);
    }
    Ok(())
}
