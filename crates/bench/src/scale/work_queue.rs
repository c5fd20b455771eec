//! The work-queue curve: N task-worker processes on one queue of the run's
//! own, for waiting work (`sleep`) and CPU work (`hash`).
//!
//! Each worker runs one handler slot at prefetch 1 (`concurrency = 1`, the
//! default, fair dispatch), so N is the number of tasks in progress at
//! once and the curve reads "what does another process buy". More slots
//! per process would scale waiting work inside one process instead, which
//! is not what this curve asks.
//!
//! One measurement: the queue and its retry tiers declared as the workers
//! declare them; N workers started and consuming (the queue has N
//! consumers); `tasks_per_worker × N` tasks published (confirmed,
//! persistent, Protobuf); then the queue's ready count is polled (a passive
//! declare, one cheap request, so the observer takes no CPU from the
//! workers). From the end of the publishing (`q0` ready) to the moment
//! none is ready, the workers took `q0` tasks, one per task finished:
//! throughput = `q0 / elapsed`. The publishing itself is not timed (it
//! competes with the workers for the two cores). At the end the workers'
//! own `tasks_processed_total` must say every task was done, none retried
//! or dead-lettered.

use std::{
    net::SocketAddr,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use common::codec::{Codec, ContentType};
use futures::{StreamExt as _, stream::FuturesUnordered};
use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties,
    options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions},
    types::FieldTable,
};
use serde_json::{Map, Value};
use task_worker::Config as WorkerConfig;
use workqueue::{
    task::{KIND_HASH, KIND_SLEEP, Task},
    topology::data_sync_dead_letter_queue,
};

use super::{
    curve::Point,
    ops,
    processes::{Pool, RunDir},
};

/// Confirms in flight while filling the queue.
const FILL_WINDOW: usize = 256;
/// Less than this share of the tasks still ready once published is too
/// little to time.
const LEAST_LEFT: f64 = 0.3;
/// How often the queue's ready count is read.
const POLL: Duration = Duration::from_millis(20);

/// The kind of work the tasks do.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Work {
    /// `sleep {"ms": N}`: waiting, as for a slow dependency.
    Sleep { ms: u64 },
    /// `hash {"rounds": N}`: burning a core.
    Hash { rounds: u64 },
}

impl Work {
    /// The short name in queue names and messages.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Work::Sleep { .. } => "io",
            Work::Hash { .. } => "cpu",
        }
    }

    fn task(self) -> Task {
        let (kind, payload) = match self {
            Work::Sleep { ms } => (KIND_SLEEP, ("ms", ms)),
            Work::Hash { rounds } => (KIND_HASH, ("rounds", rounds)),
        };
        let mut map = Map::new();
        map.insert(payload.0.into(), Value::from(payload.1));
        Task::new(uuid::Uuid::new_v4().to_string(), kind, map)
    }
}

/// What one measurement needs.
#[derive(Debug)]
pub(crate) struct Setup<'a> {
    pub(crate) amqp_url: &'a str,
    pub(crate) run_id: &'a str,
    pub(crate) dir: &'a RunDir,
    pub(crate) tasks_per_worker: usize,
    pub(crate) timeout: Duration,
}

/// Measures `workers` task-worker processes doing `work`; `label` makes
/// the queue name unique within the run.
pub(crate) async fn measure(
    setup: &Setup<'_>,
    work: Work,
    workers: usize,
    label: &str,
) -> anyhow::Result<Point> {
    let config = WorkerConfig {
        queue: format!("bench.scale.{}.{}.{label}", setup.run_id, work.name()),
        ..WorkerConfig::default()
    };
    let config = WorkerConfig {
        data_sync_queue: format!("{}.data_sync", config.queue),
        ..config
    };
    let topology = config.topology();
    let mut queues = topology.queue_names();
    queues.push(config.data_sync_queue.clone());
    queues.push(data_sync_dead_letter_queue(&config.data_sync_queue));
    // Deleted when this returns, failed or not.
    let _queues = testkit::delete_queues_later(setup.amqp_url.to_string(), queues);

    let connection = Connection::connect(setup.amqp_url, ConnectionProperties::default())
        .await
        .context("cannot connect to RabbitMQ")?;
    let channel = connection.create_channel().await?;
    topology.declare(&channel).await?;

    let logs = setup
        .dir
        .path()
        .join(format!("workqueue-{}-{label}", work.name()));
    let mut pool = start_workers(setup.amqp_url, &config, workers, &logs)?;
    wait_for_consumers(&channel, &config.queue, workers, &mut pool).await?;

    let total = setup.tasks_per_worker * workers;
    fill(&channel, &config.queue, work, total).await?;
    let started = Instant::now();
    let (ready_at_start, _) = queue_state(&channel, &config.queue).await?;
    anyhow::ensure!(
        f64::from(ready_at_start) >= LEAST_LEFT * total as f64,
        "{workers} workers took {} of {total} tasks while they were published: too few \
         left to time, raise --tasks-per-worker",
        total - ready_at_start as usize
    );
    loop {
        let (ready, _) = queue_state(&channel, &config.queue).await?;
        if ready == 0 {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < setup.timeout,
            "{workers} workers: {ready} of {total} {} tasks still ready after {:?}",
            work.name(),
            setup.timeout
        );
        pool.check_running()?;
        tokio::time::sleep(POLL).await;
    }
    let elapsed = started.elapsed();
    let rate = f64::from(ready_at_start) / elapsed.as_secs_f64();
    check_all_done(&pool.ops_addrs(), total).await?;
    pool.stop().await;
    let _ = connection.close(200, "bench done".into()).await;
    Ok(Point {
        rate,
        note: format!(
            "{:.1} ms/task per worker; {ready_at_start} of {total} timed",
            1000.0 * workers as f64 / rate
        ),
    })
}

fn start_workers(
    amqp_url: &str,
    config: &WorkerConfig,
    workers: usize,
    logs: &Path,
) -> anyhow::Result<Pool> {
    Pool::spawn(
        "task-worker",
        workers,
        &[],
        &[
            ("AMQP_URL", amqp_url.to_string()),
            ("SWITCHYARD__QUEUE", config.queue.clone()),
            (
                "SWITCHYARD__DATA_SYNC_QUEUE",
                config.data_sync_queue.clone(),
            ),
            ("SWITCHYARD__CONCURRENCY", "1".into()),
            ("SWITCHYARD__PREFETCH", "1".into()),
            ("RUST_LOG", "info".into()),
        ],
        logs,
    )
}

/// Waits until the queue has `workers` consumers: every worker is taking
/// tasks before the first one is published.
async fn wait_for_consumers(
    channel: &Channel,
    queue: &str,
    workers: usize,
    pool: &mut Pool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, consumers) = queue_state(channel, queue).await?;
        if consumers as usize >= workers {
            return Ok(());
        }
        pool.check_running()?;
        anyhow::ensure!(
            Instant::now() < deadline,
            "{consumers} of {workers} workers consuming after 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Ready messages and consumers of `queue` (a passive declare).
async fn queue_state(channel: &Channel, queue: &str) -> anyhow::Result<(u32, u32)> {
    let state = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .with_context(|| format!("cannot read the state of {queue}"))?;
    Ok((state.message_count(), state.consumer_count()))
}

/// Publishes `count` tasks of `work`, confirmed and persistent, as a
/// producer would (distinct ids: the workers' idempotency skips none).
async fn fill(channel: &Channel, queue: &str, work: Work, count: usize) -> anyhow::Result<()> {
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let codec = Codec::default();
    let properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type(ContentType::Protobuf.mime().into());
    let mut in_flight = FuturesUnordered::new();
    for _ in 0..count {
        if in_flight.len() >= FILL_WINDOW
            && let Some(confirmation) = in_flight.next().await
        {
            let confirmation: lapin::Result<lapin::Confirmation> = confirmation;
            anyhow::ensure!(confirmation?.is_ack(), "a task was nacked");
        }
        let body = codec.encode(&work.task(), ContentType::Protobuf)?;
        in_flight.push(
            channel
                .basic_publish(
                    "".into(),
                    queue.into(),
                    BasicPublishOptions::default(),
                    &body,
                    properties.clone(),
                )
                .await?,
        );
    }
    while let Some(confirmation) = in_flight.next().await {
        anyhow::ensure!(confirmation?.is_ack(), "a task was nacked");
    }
    Ok(())
}

/// Waits until the workers' own counters say `total` tasks were done, and
/// fails if any was retried or dead-lettered.
async fn check_all_done(workers: &[SocketAddr], total: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // Both counts from the same scrape: a task finishing between two
        // would look like a failure.
        let (mut done, mut all) = (0.0, 0.0);
        for worker in workers {
            let text = ops::metrics(*worker).await?;
            done += ops::sum(&text, "tasks_processed_total", Some("outcome=\"ok\""));
            all += ops::sum(&text, "tasks_processed_total", None);
        }
        anyhow::ensure!(
            all == done,
            "{} tasks were retried or dead-lettered: see the workers' logs",
            all - done
        );
        if done as usize >= total {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the workers counted {done} of {total} tasks done"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
