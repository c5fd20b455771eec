//! `task-producer` binary: publishes tasks to the work queue and prints a summary.
//!
//! ```text
//! task-producer --count 1000 --kind sleep --payload '{"ms": 50}'
//! task-producer --rate 200 --duration 60 --format json
//! ```
//! Flags override the config file (`--config` or `CONFIG_FILE`) and the
//! environment (`AMQP_URL`, `SWITCHYARD__JOB__COUNT`, ...). The exit status is
//! non-zero when any task was not confirmed.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context as _;
use clap::Parser;
use common::{
    codec::ContentType,
    config::{ConfigSource, Validate},
    shutdown::Shutdown,
    telemetry,
};
use task_producer::{Config, ENV_KEYS};

/// Publish tasks to the RabbitMQ work queue with publisher confirms.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// TOML config file (also `CONFIG_FILE`).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Number of tasks to publish.
    #[arg(long)]
    count: Option<u64>,
    /// Tasks per second (0: as fast as confirms allow).
    #[arg(long)]
    rate: Option<f64>,
    /// Publish at --rate for this many seconds instead of --count tasks.
    #[arg(long)]
    duration: Option<f64>,
    /// Task kind (sleep, notify, ...).
    #[arg(long)]
    kind: Option<String>,
    /// Task payload, a JSON object.
    #[arg(long)]
    payload: Option<String>,
    /// Body encoding: json or protobuf.
    #[arg(long)]
    format: Option<ContentType>,
    /// Base name of the work queue.
    #[arg(long)]
    queue: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let args = Args::parse();
    let mut config: Config = ConfigSource::new(args.config.clone(), ENV_KEYS)
        .load()
        .context("cannot load the configuration")?;
    apply(&mut config, args)?;
    let _telemetry = telemetry::init("task-producer").context("cannot set up telemetry")?;
    let shutdown = Shutdown::on_signals();
    let summary = task_producer::run(config, shutdown).await?;
    println!("{summary}");
    Ok(if summary.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Lays the command-line flags over the loaded config and validates again.
fn apply(config: &mut Config, args: Args) -> anyhow::Result<()> {
    let job = &mut config.job;
    if let Some(count) = args.count {
        job.count = count;
    }
    if let Some(rate) = args.rate {
        job.rate = rate;
    }
    if let Some(seconds) = args.duration {
        job.duration = Duration::try_from_secs_f64(seconds)
            .with_context(|| format!("--duration {seconds} is not a number of seconds"))?;
    }
    if let Some(kind) = args.kind {
        job.kind = kind;
    }
    if let Some(payload) = args.payload {
        job.payload = payload;
    }
    if let Some(format) = args.format {
        config.content_type = format;
    }
    if let Some(queue) = args.queue {
        config.queue = queue;
    }
    config.validate().context("invalid flags")?;
    Ok(())
}
