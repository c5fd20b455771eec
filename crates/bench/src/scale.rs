//! `bench scale`: how throughput grows with the number of instances, each
//! curve beside its ideal line (N × the one-instance figure).
//!
//! - `scale.workqueue.io`, `scale.workqueue.cpu`: 1, 2, 4, 8 task-worker
//!   processes (one handler slot each) working through a queue of `sleep`
//!   tasks (waiting, 5 ms) and one of `hash` tasks (burning a core)
//!   ([`work_queue`]).
//! - `scale.fanout`: one sensor-publisher at a fixed rate, 1, 2, 4, 8
//!   monitor-subscriber processes each receiving every reading
//!   ([`fanout`]).
//! - `scale.alert_subscriber`: 1, 2, 4 alert-subscriber instances of the
//!   partitioned consumer group working through a backlog in `SENSORS`
//!   ([`alerts`]).
//!
//! Every service is the real binary built beside the benchmark (release,
//! with scripts/bench.sh), configured through its environment and measured
//! through its own metrics or the broker, never from inside. Each curve is
//! printed as a table; the `RESULT` line of a curve is the throughput at
//! its largest size against the ideal line there, and the ratio is the
//! efficiency. On a machine with C cores, CPU-bound work cannot scale past
//! C processes: the curves show where each pattern flattens.
//!
//! Queues, subjects and streams are the run's own (the stream on a private
//! nats-server) and are deleted at the end, failed or not; the processes
//! are stopped on every path, Ctrl-C included. `--rounds` repeats every
//! curve: the tables show each size's median round, and the `SPREAD` line
//! the efficiency of each round.

mod alerts;
mod curve;
mod fanout;
mod ops;
mod processes;
mod work_queue;

use std::time::Duration;

use common::config::duration;

use self::{
    curve::Curve,
    processes::{RunDir, check_binaries},
    work_queue::Work,
};

/// The curves `--only` can select.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Part {
    /// Both work-queue curves.
    Workqueue,
    /// The pub-sub fan-out.
    Fanout,
    /// The alert-subscriber consumer group.
    Alerts,
}

/// Options of the scale scenario.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// RabbitMQ (work queue; alert-subscriber's task queue).
    #[arg(
        long,
        env = "AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    amqp_url: String,
    /// NATS for the fan-out (the consumer group gets private servers).
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
    /// Only these curves (repeat or comma-separate); all by default.
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Part>,
    /// Rounds of every curve; each size's median round is reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// task-worker process counts.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8")]
    workers: Vec<usize>,
    /// Tasks per worker in each work-queue measurement.
    #[arg(long, default_value_t = 300)]
    tasks_per_worker: usize,
    /// Milliseconds each `sleep` task waits (the I/O-bound curve).
    #[arg(long, default_value_t = 5)]
    sleep_ms: u64,
    /// SHA-256 rounds of each `hash` task (the CPU-bound curve).
    #[arg(long, default_value_t = 50_000)]
    hash_rounds: u64,
    /// monitor-subscriber process counts.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8")]
    subscribers: Vec<usize>,
    /// Readings per second sensor-publisher offers in the fan-out.
    #[arg(long, default_value_t = 50_000.0)]
    fanout_rate: f64,
    /// Time the fan-out runs before it is measured.
    #[arg(long, default_value = "1s", value_parser = duration::parse)]
    fanout_warmup: Duration,
    /// Time the fan-out is measured over.
    #[arg(long, default_value = "3s", value_parser = duration::parse)]
    fanout_window: Duration,
    /// alert-subscriber instance counts.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
    instances: Vec<usize>,
    /// Readings in the consumer group's backlog.
    #[arg(long, default_value_t = 1_000_000)]
    readings: u64,
    /// Simulated sensors (fan-out and backlog): many, so the 16 partitions
    /// get close to equal shares.
    #[arg(long, default_value_t = 1024)]
    sensors: usize,
    /// Longest a single measurement may take.
    #[arg(long, default_value = "120s", value_parser = duration::parse)]
    timeout: Duration,
    /// Keep the services' logs (they are kept anyway when the run fails).
    #[arg(long)]
    keep_logs: bool,
}

impl Args {
    fn runs(&self, part: Part) -> bool {
        self.only.is_empty() || self.only.contains(&part)
    }
}

/// The curves of one run.
#[derive(Debug)]
struct Curves {
    io: Curve,
    cpu: Curve,
    fanout: Curve,
    alerts: Curve,
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(args.rounds > 0, "--rounds must be at least 1");
    for (flag, sizes) in [
        ("--workers", &args.workers),
        ("--subscribers", &args.subscribers),
        ("--instances", &args.instances),
    ] {
        anyhow::ensure!(
            !sizes.is_empty() && !sizes.contains(&0),
            "{flag} needs sizes of at least 1"
        );
    }
    let mut binaries = Vec::new();
    if args.runs(Part::Workqueue) {
        binaries.push("task-worker");
    }
    if args.runs(Part::Fanout) || args.runs(Part::Alerts) {
        binaries.push("sensor-publisher");
    }
    if args.runs(Part::Fanout) {
        binaries.push("monitor-subscriber");
    }
    if args.runs(Part::Alerts) {
        binaries.push("alert-subscriber");
    }
    check_binaries(&binaries)?;

    let run_id = testkit::unique();
    let mut dir = RunDir::new(&run_id, args.keep_logs)?;
    let mut curves = Curves {
        io: Curve::new("scale.workqueue.io", "tasks/s", &args.workers),
        cpu: Curve::new("scale.workqueue.cpu", "tasks/s", &args.workers),
        fanout: Curve::new("scale.fanout", "readings/s", &args.subscribers),
        alerts: Curve::new("scale.alert_subscriber", "readings/s", &args.instances),
    };
    // Ctrl-C drops the measurement in progress, and with it its processes
    // and queues, instead of leaving them behind.
    let measured = tokio::select! {
        measured = measure(&args, &run_id, &dir, &mut curves) => measured,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    if measured.is_err() {
        dir.keep();
    }
    measured?;
    report(&args, &curves);
    Ok(())
}

async fn measure(
    args: &Args,
    run_id: &str,
    dir: &RunDir,
    curves: &mut Curves,
) -> anyhow::Result<()> {
    // Written once, read by a consumer group of its own in every measurement.
    let mut backlog = None;
    for round in 1..=args.rounds {
        if args.runs(Part::Workqueue) {
            let setup = work_queue::Setup {
                amqp_url: &args.amqp_url,
                run_id,
                dir,
                tasks_per_worker: args.tasks_per_worker,
                timeout: args.timeout,
            };
            for (work, curve) in [
                (Work::Sleep { ms: args.sleep_ms }, &mut curves.io),
                (
                    Work::Hash {
                        rounds: args.hash_rounds,
                    },
                    &mut curves.cpu,
                ),
            ] {
                for workers in curve.sizes() {
                    let label = format!("r{round}n{workers}");
                    let point = work_queue::measure(&setup, work, workers, &label).await?;
                    println!(
                        "round {round}: task-worker x{workers}, {}: {:.0} tasks/s ({})",
                        work.name(),
                        point.rate,
                        point.note
                    );
                    curve.add(workers, point);
                }
            }
        }
        if args.runs(Part::Fanout) {
            let setup = fanout::Setup {
                nats_url: &args.nats_url,
                run_id,
                dir,
                rate: args.fanout_rate,
                sensors: args.sensors,
                warmup: args.fanout_warmup,
                window: args.fanout_window,
            };
            for subscribers in curves.fanout.sizes() {
                let label = format!("r{round}n{subscribers}");
                let point = fanout::measure(&setup, subscribers, &label).await?;
                println!(
                    "round {round}: monitor-subscriber x{subscribers}: {:.0} readings/s delivered ({})",
                    point.rate, point.note
                );
                curves.fanout.add(subscribers, point);
            }
        }
        if args.runs(Part::Alerts) {
            let setup = alerts::Setup {
                amqp_url: &args.amqp_url,
                run_id,
                dir,
                readings: args.readings,
                sensors: args.sensors,
                timeout: args.timeout,
            };
            let written = match backlog.take() {
                Some(written) => written,
                None => alerts::Backlog::write(&setup).await?,
            };
            for instances in curves.alerts.sizes() {
                let label = format!("r{round}n{instances}");
                let point = alerts::measure(&setup, &written, instances, &label).await?;
                println!(
                    "round {round}: alert-subscriber x{instances}: {:.0} readings/s evaluated ({})",
                    point.rate, point.note
                );
                curves.alerts.add(instances, point);
            }
            backlog = Some(written);
        }
    }
    Ok(())
}

/// The tables, then the `SPREAD`/`RESULT` lines last.
fn report(args: &Args, curves: &Curves) {
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    println!(
        "\n{cores} cores; each table: the median of {} round(s)",
        args.rounds
    );
    let mut figures = Vec::new();
    if args.runs(Part::Workqueue) {
        println!(
            "\nwork queue, sleep {} ms (I/O-bound), 1 handler slot per process, prefetch 1:\n{}",
            args.sleep_ms,
            curves.io.table("workers", "notes")
        );
        println!(
            "work queue, hash {} rounds (CPU-bound), 1 handler slot per process, prefetch 1:\n{}",
            args.hash_rounds,
            curves.cpu.table("workers", "notes")
        );
        figures.push(curves.io.figure());
        figures.push(curves.cpu.figure());
    }
    if args.runs(Part::Fanout) {
        println!(
            "pub-sub fan-out, sensor-publisher offering {} readings/s, delivered summed over subscribers:\n{}",
            args.fanout_rate,
            curves.fanout.table("subscribers", "notes")
        );
        figures.push(curves.fanout.figure());
    }
    if args.runs(Part::Alerts) {
        println!(
            "alert-subscriber consumer group (16 partitions), a backlog of {} readings:\n{}",
            args.readings,
            curves.alerts.table("instances", "notes")
        );
        figures.push(curves.alerts.figure());
    }
    for figure in &figures {
        println!("{}", figure.report_lines());
    }
}
