//! `bench workqueue`: the RabbitMQ work queue against raw lapin, same run,
//! same broker, same message bytes.
//!
//! - `workqueue.publish`: confirmed, persistent publishes per second.
//!   Ours: [`TaskPublisher::publish`] called `--window` at a time. Raw: one
//!   lapin channel in confirm mode with the same window of unconfirmed
//!   `basic_publish` futures.
//! - `workqueue.consume.prefetch1` / `.prefetch100`: consume + ack per second
//!   of a pre-filled queue of `sleep {"ms": 0}` tasks. Ours: the real
//!   [`Application`] with one handler slot (decode, idempotency check, handler,
//!   ack, metrics). Raw: a lapin consumer that acks each delivery. Timed from
//!   the first to the last delivery, so connection set-up is not counted.
//! - `workqueue.fairness`: the share of tasks a 5x slower worker gets among
//!   three at prefetch 1 (value) beside the ideal 1/11 (baseline); round-robin
//!   would give 1/3.
//!
//! Each figure is the median of `--rounds` rounds, raw and ours alternating.
//! Every queue is created fresh with a unique name and deleted afterwards.
//!
//! `--cluster` runs the same figures (named `workqueue.cluster.*`) on a
//! private 3-node RabbitMQ cluster with quorum queues (testkit's
//! [`RabbitCluster`], root needed as for the cluster tests): ours gets every
//! node's address, raw lapin the first node's, and both declare the same
//! quorum queues, so the ratio is again ours against raw on the same broker.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use bench::report::{Figure, number, table};
use common::{
    codec::{Codec, ContentType},
    config::SecretUrl,
    shutdown::Shutdown,
};
use futures::{StreamExt, future::BoxFuture, stream::FuturesUnordered};
use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties,
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
        ConfirmSelectOptions, QueueDeleteOptions,
    },
    types::FieldTable,
};
use serde_json::json;
use task_worker::{
    Application, Config as WorkerConfig,
    events::{TaskEvent, TaskOutcome},
    handler::{HandlerError, TaskHandler},
};
use testkit::RabbitCluster;
use tokio::sync::broadcast;
use workqueue::{
    publisher::{PublisherConfig, TaskPublisher},
    task::Task,
    topology::{QueueType, Topology},
};

/// Options of the workqueue scenario.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Args {
    /// The broker.
    #[arg(
        long,
        env = "AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    amqp_url: String,
    /// Messages per publish measurement.
    #[arg(long, default_value_t = 20_000)]
    publish_messages: usize,
    /// Messages per consume measurement.
    #[arg(long, default_value_t = 10_000)]
    consume_messages: usize,
    /// Unconfirmed publishes in flight, ours and raw.
    #[arg(long, default_value_t = 256)]
    window: usize,
    /// Rounds of each measurement (raw and ours alternating); medians are reported.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Tasks in the fairness run.
    #[arg(long, default_value_t = 110)]
    fairness_tasks: usize,
    /// `classic` or `quorum` queues (ours and raw alike).
    #[arg(long, default_value = "classic")]
    queue_type: QueueType,
    /// Start a private 3-node RabbitMQ cluster and measure on it with quorum
    /// queues instead of `--amqp-url`.
    #[arg(long)]
    cluster: bool,
}

pub(crate) async fn run(mut args: Args) -> anyhow::Result<()> {
    // Kept until the end of the run: dropping it kills the nodes.
    let mut _cluster = None;
    let mut name = "workqueue".to_string();
    if args.cluster {
        eprintln!("starting a private 3-node RabbitMQ cluster");
        let cluster = RabbitCluster::start(3).await;
        args.amqp_url = cluster.urls();
        args.queue_type = QueueType::Quorum;
        name = "workqueue.cluster".into();
        _cluster = Some(cluster);
    }
    let body = Codec::default().encode(&sleep_task(), ContentType::Protobuf)?;
    let mut figures = Vec::new();

    // Raw and ours alternate round by round, the one going first swapping
    // each round, so that background load on the machine (and a queue's
    // warm-up) hits both alike; the median round of each is reported.
    let (mut raw, mut ours) = (Vec::new(), Vec::new());
    for round in 0..args.rounds {
        if round % 2 == 1 {
            ours.push(spawned(our_publish(args.clone())).await?);
        }
        raw.push(spawned(raw_publish(args.clone(), body.to_vec())).await?);
        if round % 2 == 0 {
            ours.push(spawned(our_publish(args.clone())).await?);
        }
    }
    figures.push(Figure::from_rounds(
        format!("{name}.publish"),
        "msg/s",
        &ours,
        &raw,
    ));

    for prefetch in [1u16, 100] {
        let (mut raw, mut ours) = (Vec::new(), Vec::new());
        for round in 0..args.rounds {
            if round % 2 == 1 {
                ours.push(our_consume(&args, prefetch).await?);
            }
            raw.push(spawned(raw_consume(args.clone(), prefetch)).await?);
            if round % 2 == 0 {
                ours.push(our_consume(&args, prefetch).await?);
            }
        }
        figures.push(Figure::from_rounds(
            format!("{name}.consume.prefetch{prefetch}"),
            "msg/s",
            &ours,
            &raw,
        ));
    }

    let (share, counts) = fairness(&args).await?;
    let mut rows = vec![vec![
        "figure".to_string(),
        "switchyard".into(),
        "raw lapin".into(),
        "ratio".into(),
        "spread".into(),
    ]];
    for figure in &figures {
        let spread = figure
            .spread()
            .map(|(min, max)| format!("{min:.3}–{max:.3}"))
            .unwrap_or_default();
        rows.push(vec![
            figure.scenario.clone(),
            format!("{} {}", number(figure.value), figure.unit),
            format!("{} {}", number(figure.baseline), figure.unit),
            format!("{:.3}", figure.ratio()),
            spread,
        ]);
    }
    println!("{}", table(&rows));
    println!(
        "fairness: 3 workers at prefetch 1, one 5x slower: tasks done {counts:?} (fast, fast, slow); \
         slow share {share:.3}, ideal 1/11 = 0.091, round-robin 1/3"
    );
    figures.push(Figure::new(
        format!("{name}.fairness"),
        share,
        "share",
        1.0 / 11.0,
    ));
    for figure in &figures {
        println!("{}", figure.report_lines());
    }
    Ok(())
}

/// Runs a measurement on a runtime worker thread, like the worker's own
/// consumers: the main thread of `#[tokio::main]` would add cross-thread
/// wake-ups to one side only.
async fn spawned(
    measurement: impl Future<Output = anyhow::Result<f64>> + Send + 'static,
) -> anyhow::Result<f64> {
    tokio::spawn(measurement).await?
}

fn sleep_task() -> Task {
    let payload = json!({"ms": 0}).as_object().cloned().unwrap_or_default();
    Task::new(uuid::Uuid::new_v4().to_string(), "sleep", payload)
}

/// A fresh topology of the run's queue type, named after `what`.
fn topology(args: &Args, what: &str) -> Topology {
    let name = format!("bench.workqueue.{what}.{}", uuid::Uuid::new_v4().simple());
    Topology::new(name).with_queue_type(args.queue_type)
}

/// Raw lapin on the first address of `url` (one node, or a list).
async fn connect(url: &str) -> anyhow::Result<Connection> {
    let first = url.split(',').next().unwrap_or(url);
    Connection::connect(first, ConnectionProperties::default())
        .await
        .with_context(|| format!("cannot connect to {}", SecretUrl::new(url)))
}

/// Deletes the named queues.
async fn delete_all(url: &str, names: &[String]) -> anyhow::Result<()> {
    let connection = connect(url).await?;
    let channel = connection.create_channel().await?;
    for name in names {
        channel
            .queue_delete(name.as_str().into(), QueueDeleteOptions::default())
            .await?;
    }
    connection.close(200, "bench done".into()).await?;
    Ok(())
}

fn persistent() -> BasicProperties {
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/protobuf".into())
}

/// Publishes `count` copies of `body` with `window` confirms in flight.
async fn raw_publish_n(
    channel: &Channel,
    queue: &str,
    body: &[u8],
    count: usize,
    window: usize,
) -> anyhow::Result<()> {
    let mut in_flight = FuturesUnordered::new();
    for _ in 0..count {
        if in_flight.len() >= window
            && let Some(confirmation) = in_flight.next().await
        {
            let confirmation: lapin::Result<lapin::Confirmation> = confirmation;
            anyhow::ensure!(confirmation?.is_ack(), "raw publish nacked");
        }
        let confirm = channel
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                body,
                persistent(),
            )
            .await?;
        in_flight.push(confirm);
    }
    while let Some(confirmation) = in_flight.next().await {
        anyhow::ensure!(confirmation?.is_ack(), "raw publish nacked");
    }
    Ok(())
}

async fn raw_publish(args: Args, body: Vec<u8>) -> anyhow::Result<f64> {
    let topology = topology(&args, "raw-publish").with_retry_delays([]);
    let connection = connect(&args.amqp_url).await?;
    let channel = connection.create_channel().await?;
    topology.declare_work_queue(&channel).await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let started = Instant::now();
    raw_publish_n(
        &channel,
        topology.task_queue(),
        &body,
        args.publish_messages,
        args.window,
    )
    .await?;
    let rate = args.publish_messages as f64 / started.elapsed().as_secs_f64();
    connection.close(200, "bench done".into()).await?;
    delete_all(&args.amqp_url, &topology.queue_names()).await?;
    Ok(rate)
}

async fn our_publish(args: Args) -> anyhow::Result<f64> {
    let topology = topology(&args, "publish").with_retry_delays([]);
    let shutdown = Shutdown::new();
    let publisher = TaskPublisher::start(
        PublisherConfig {
            amqp_url: SecretUrl::new(args.amqp_url.clone()),
            queue: topology.task_queue().to_string(),
            queue_type: args.queue_type,
            content_type: ContentType::Protobuf,
            max_unconfirmed: args.window,
            publish_timeout: Duration::from_secs(30),
            ..PublisherConfig::default()
        },
        shutdown.clone(),
    );
    let mut connected = publisher.connected();
    tokio::time::timeout(Duration::from_secs(30), connected.wait_for(|up| *up))
        .await
        .context("the publisher did not connect")??;
    let tasks: Vec<Task> = (0..args.publish_messages).map(|_| sleep_task()).collect();
    let started = Instant::now();
    let failed = futures::stream::iter(tasks)
        .map(|task| {
            let publisher = publisher.clone();
            async move { publisher.publish(&task).await }
        })
        .buffer_unordered(args.window)
        .filter(|result| std::future::ready(result.is_err()))
        .count()
        .await;
    let rate = args.publish_messages as f64 / started.elapsed().as_secs_f64();
    anyhow::ensure!(failed == 0, "{failed} publishes failed");
    shutdown.trigger();
    drop(publisher);
    delete_all(&args.amqp_url, &topology.queue_names()).await?;
    Ok(rate)
}

/// Fills a fresh queue with `count` task bodies (raw, fast).
async fn fill(url: &str, topology: &Topology, count: usize, window: usize) -> anyhow::Result<()> {
    let connection = connect(url).await?;
    let channel = connection.create_channel().await?;
    topology.declare(&channel).await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let codec = Codec::default();
    let mut in_flight = FuturesUnordered::new();
    for _ in 0..count {
        if in_flight.len() >= window
            && let Some(confirmation) = in_flight.next().await
        {
            let confirmation: lapin::Result<lapin::Confirmation> = confirmation;
            anyhow::ensure!(confirmation?.is_ack(), "fill nacked");
        }
        // Distinct ids: the worker's idempotency store must not skip them.
        let body = codec.encode(&sleep_task(), ContentType::Protobuf)?;
        in_flight.push(
            channel
                .basic_publish(
                    "".into(),
                    topology.task_queue().into(),
                    BasicPublishOptions::default(),
                    &body,
                    persistent(),
                )
                .await?,
        );
    }
    while let Some(confirmation) = in_flight.next().await {
        anyhow::ensure!(confirmation?.is_ack(), "fill nacked");
    }
    connection.close(200, "filled".into()).await?;
    Ok(())
}

async fn raw_consume(args: Args, prefetch: u16) -> anyhow::Result<f64> {
    let topology = topology(&args, "raw-consume").with_retry_delays([]);
    fill(
        &args.amqp_url,
        &topology,
        args.consume_messages,
        args.window,
    )
    .await?;
    let connection = connect(&args.amqp_url).await?;
    let channel = connection.create_channel().await?;
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await?;
    let mut consumer = channel
        .basic_consume(
            topology.task_queue().into(),
            "bench-raw".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut first = None;
    let mut received = 0usize;
    // One deadline for the whole run: a timer per message would be a cost
    // the worker's loop does not pay.
    tokio::time::timeout(Duration::from_secs(120), async {
        while received < args.consume_messages {
            let delivery = consumer.next().await.context("raw consumer ended")??;
            first.get_or_insert_with(Instant::now);
            delivery.acker.ack(BasicAckOptions::default()).await?;
            received += 1;
        }
        Ok::<_, anyhow::Error>(())
    })
    .await
    .context("raw consumer stalled")??;
    let elapsed = first.map(|f| f.elapsed()).unwrap_or_default();
    connection.close(200, "bench done".into()).await?;
    delete_all(&args.amqp_url, &topology.queue_names()).await?;
    Ok((received - 1) as f64 / elapsed.as_secs_f64())
}

fn worker_config(args: &Args, topology: &Topology, prefetch: u16) -> WorkerConfig {
    WorkerConfig {
        amqp_url: SecretUrl::new(args.amqp_url.clone()),
        queue: topology.task_queue().to_string(),
        data_sync_queue: format!("{}.data_sync", topology.task_queue()),
        queue_type: args.queue_type,
        prefetch,
        concurrency: 1,
        ops_addr: "127.0.0.1:0".parse().expect("a socket address"),
        ..WorkerConfig::default()
    }
}

fn worker_queues(config: &WorkerConfig) -> Vec<String> {
    let mut names = config.topology().queue_names();
    names.push(config.data_sync_queue.clone());
    names.push(workqueue::topology::data_sync_dead_letter_queue(
        &config.data_sync_queue,
    ));
    names
}

/// Counts `Done` events until `count`; returns the time from the first to the
/// last. After the first event it drains in batches every few milliseconds:
/// waking up for every event would take CPU from the worker being measured
/// (raw lapin pays no such observer). The batching can only make our figure
/// look slower, by at most one batch interval.
async fn time_done(
    events: &mut broadcast::Receiver<TaskEvent>,
    count: usize,
) -> anyhow::Result<Duration> {
    let mut first = None;
    let mut done = 0usize;
    let deadline = Instant::now() + Duration::from_secs(120);
    while done < count {
        anyhow::ensure!(
            Instant::now() < deadline,
            "worker stalled after {done} tasks"
        );
        let event = if first.is_none() {
            match tokio::time::timeout(Duration::from_secs(30), events.recv()).await {
                Ok(event) => event,
                Err(_) => anyhow::bail!("worker never started"),
            }
        } else {
            match events.try_recv() {
                Err(broadcast::error::TryRecvError::Empty) => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
                Ok(event) => Ok(event),
                Err(broadcast::error::TryRecvError::Lagged(missed)) => {
                    Err(broadcast::error::RecvError::Lagged(missed))
                }
                Err(broadcast::error::TryRecvError::Closed) => {
                    Err(broadcast::error::RecvError::Closed)
                }
            }
        };
        match event {
            Ok(event) => {
                if event.outcome == TaskOutcome::Done {
                    first.get_or_insert_with(Instant::now);
                    done += 1;
                }
            }
            // Only Done events flow in this run; lagged ones were Done too.
            Err(broadcast::error::RecvError::Lagged(missed)) => done += missed as usize,
            Err(broadcast::error::RecvError::Closed) => anyhow::bail!("worker stopped"),
        }
    }
    Ok(first.map(|f| f.elapsed()).unwrap_or_default())
}

async fn our_consume(args: &Args, prefetch: u16) -> anyhow::Result<f64> {
    let topology = topology(args, "consume");
    let config = worker_config(args, &topology, prefetch);
    let topology = config.topology();
    fill(
        &args.amqp_url,
        &topology,
        args.consume_messages,
        args.window,
    )
    .await?;
    let worker = Application::build(config.clone()).await?;
    let mut events = worker.subscribe();
    let shutdown = Shutdown::new();
    let running = tokio::spawn(worker.run_until_stopped(shutdown.clone()));
    let elapsed = time_done(&mut events, args.consume_messages).await?;
    shutdown.trigger();
    running.await??;
    delete_all(&args.amqp_url, &worker_queues(&config)).await?;
    Ok((args.consume_messages - 1) as f64 / elapsed.as_secs_f64())
}

/// `sleep`, five times slower: the slow machine among three.
#[derive(Debug)]
struct SlowSleep;

impl TaskHandler for SlowSleep {
    fn handle<'a>(&'a self, task: &'a Task) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            let ms = task.payload.get("ms").and_then(|v| v.as_u64()).unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(ms * 5)).await;
            Ok(())
        })
    }
}

async fn fairness(args: &Args) -> anyhow::Result<(f64, [usize; 3])> {
    let topology = topology(args, "fairness");
    let config = worker_config(args, &topology, 1);
    let shutdown = Shutdown::new();
    let mut receivers = Vec::new();
    let mut running = Vec::new();
    for slow in [false, false, true] {
        let mut worker = Application::build(config.clone()).await?;
        if slow {
            worker = worker.with_handler("sleep", Arc::new(SlowSleep));
        }
        receivers.push(worker.subscribe());
        running.push(tokio::spawn(worker.run_until_stopped(shutdown.clone())));
    }
    // Every consumer registered before the first task.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let publisher = TaskPublisher::start(
        PublisherConfig {
            amqp_url: SecretUrl::new(args.amqp_url.clone()),
            queue: config.queue.clone(),
            queue_type: args.queue_type,
            ..PublisherConfig::default()
        },
        shutdown.clone(),
    );
    let payload = json!({"ms": 40}).as_object().cloned().unwrap_or_default();
    let tasks: Vec<Task> = (0..args.fairness_tasks)
        .map(|_| Task::new(uuid::Uuid::new_v4().to_string(), "sleep", payload.clone()))
        .collect();
    for result in futures::future::join_all(tasks.iter().map(|t| publisher.publish(t))).await {
        result?;
    }
    let mut counts = [0usize; 3];
    let deadline = Instant::now() + Duration::from_secs(120);
    while counts.iter().sum::<usize>() < args.fairness_tasks && Instant::now() < deadline {
        for (count, events) in counts.iter_mut().zip(receivers.iter_mut()) {
            while let Ok(event) = events.try_recv() {
                if event.outcome == TaskOutcome::Done {
                    *count += 1;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    shutdown.trigger();
    for worker in running {
        worker.await??;
    }
    drop(publisher);
    delete_all(&args.amqp_url, &worker_queues(&config)).await?;
    let total: usize = counts.iter().sum();
    anyhow::ensure!(
        total == args.fairness_tasks,
        "only {total} fairness tasks done"
    );
    Ok((counts[2] as f64 / total as f64, counts))
}
