//! `task-producer` binary: publishes tasks to the work queue and prints a summary.
//!
//! ```text
//! task-producer --count 1000 --kind sleep --payload '{"ms": 50}'
//! task-producer --rate 200 --duration 60s --format json
//! ```
//! Flags override the config file (`--config` or `CONFIG_FILE`) and the
//! environment (`AMQP_URL`, `SWITCHYARD__JOB__COUNT`, ...). The exit status is
//! non-zero when any task was not confirmed.

use std::{process::ExitCode, time::Duration};

use anyhow::Context as _;
use clap::Parser;
use common::{
    codec::ContentType,
    config::{Validate, duration},
    service::{self, ConfigArgs},
};
use task_producer::{Config, ENV_KEYS};

/// Publish tasks to the RabbitMQ work queue with publisher confirms.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    #[command(flatten)]
    config: ConfigArgs,
    /// Number of tasks to publish.
    #[arg(long)]
    count: Option<u64>,
    /// Tasks per second (0: as fast as confirms allow).
    #[arg(long)]
    rate: Option<f64>,
    /// Publish at --rate for this long instead of --count tasks, with its
    /// unit: `90s`, `5m`, `1m30s`.
    #[arg(long, value_parser = duration::parse)]
    duration: Option<Duration>,
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
    let mut service = service::start_with::<Config>("task-producer", &args.config, ENV_KEYS)?;
    apply(&mut service.config, args)?;
    let summary = service.run(task_producer::run).await?;
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
    if let Some(duration) = args.duration {
        job.duration = duration;
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
