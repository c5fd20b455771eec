//! `task-worker` binary: parses `--config`, sets up logging, runs the worker
//! until SIGTERM or Ctrl-C.

use common::service;
use task_worker::{Config, ENV_KEYS, run};

/// Consumes tasks from the RabbitMQ work queue.
#[tokio::main]
async fn main() -> anyhow::Result<()> {
    service::start::<Config>(clap::command!(), ENV_KEYS)?
        .run(run)
        .await
}
