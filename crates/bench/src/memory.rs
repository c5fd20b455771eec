//! `bench memory`: the resident memory (RSS) of every service binary, idle
//! and under a load representative of the other scenarios, against the
//! goal of less than 30 MiB per idle service.
//!
//! The services run as the real processes (`e2e::steady`: the binaries
//! next to this one, so release ones under scripts/bench.sh) on queues,
//! subjects and a SQLite database of the run's own on the shared brokers.
//!
//! - Idle: user-service, task-worker, alert-subscriber and
//!   monitor-subscriber started and ready, sensor-publisher trickling
//!   `--idle-readings-per-sec`; RSS read after `--settle`.
//! - Under load, for `--load-secs`: readings at `--readings-per-sec` (one
//!   alert, hence one notify task and one `GetUser`, per
//!   `--readings-per-alert` readings of a sensor), task-producer publishing
//!   `sleep {"ms": 0}` at `--tasks-per-sec`, and `GetUser` at
//!   `--get-user-per-sec` from this process. RSS sampled every 250 ms: the
//!   highest sample (peak) and the last one (end). sensor-publisher is
//!   restarted at the high rate (its idle figure is the trickling one's);
//!   task-producer is a job, not a service: it has no idle figure.
//!
//! The counters of the flow (readings received, tasks processed, gRPC calls
//! answered) are printed with the table, so a figure is known to be taken
//! under the load it claims.
//!
//! `RESULT scenario=memory.<service>.idle value=<MiB> unit=MiB baseline=30`
//! (the goal; ratio < 1 meets it) and `memory.<service>.load`: the peak
//! under load against the idle figure.

use std::{collections::BTreeMap, time::Duration};

use bench::report::{Figure, number, table};
use e2e::steady::{Load, System, Tuning};

/// The goal for an idle service, MiB.
const IDLE_GOAL_MIB: f64 = 30.0;
const MIB: f64 = 1024.0 * 1024.0;

/// Options of the memory scenario.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// NATS server.
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
    /// RabbitMQ.
    #[arg(
        long,
        env = "AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    amqp_url: String,
    /// Seconds every service sits ready before its idle RSS is read.
    #[arg(long, default_value_t = 5)]
    settle: u64,
    /// Readings per second while idle.
    #[arg(long, default_value_t = 1.0)]
    idle_readings_per_sec: f64,
    /// Seconds under load.
    #[arg(long, default_value_t = 20)]
    load_secs: u64,
    /// Readings per second under load (pubsub measures up to ~350k/s unpaced).
    #[arg(long, default_value_t = 10_000.0)]
    readings_per_sec: f64,
    /// Sensors the readings are spread over.
    #[arg(long, default_value_t = 100)]
    sensors: usize,
    /// Readings of one sensor per alert (per notify task).
    #[arg(long, default_value_t = 100)]
    readings_per_alert: usize,
    /// `sleep {"ms": 0}` tasks per second under load (what one worker at
    /// prefetch 1 keeps up with beside the rest of this load on two cores).
    #[arg(long, default_value_t = 400.0)]
    tasks_per_sec: f64,
    /// `GetUser` calls per second from the bench under load.
    #[arg(long, default_value_t = 2_000.0)]
    get_user_per_sec: f64,
}

/// RSS of one service, MiB.
#[derive(Debug, Default, Clone, Copy)]
struct Memory {
    idle: Option<f64>,
    end: Option<f64>,
    peak: Option<f64>,
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    let mut system = System::start(&args.nats_url, &args.amqp_url, Tuning::default()).await?;
    let outcome = measure(&args, &mut system).await;
    system.stop().await;
    outcome
}

async fn measure(args: &Args, system: &mut System) -> anyhow::Result<()> {
    let load = Load {
        readings_per_sec: args.readings_per_sec,
        sensors: args.sensors,
        readings_per_alert: args.readings_per_alert,
        tasks_per_sec: args.tasks_per_sec,
        get_user_per_sec: args.get_user_per_sec,
    };
    let idle_load = Load {
        readings_per_sec: args.idle_readings_per_sec,
        ..load
    };
    let mut memory: BTreeMap<&'static str, Memory> = BTreeMap::new();

    system.start_readings(&idle_load).await?;
    tokio::time::sleep(Duration::from_secs(args.settle)).await;
    for (name, rss) in system.rss() {
        memory.entry(name).or_default().idle = rss.map(mib);
    }

    let before = flow(system).await;
    let load_for = Duration::from_secs(args.load_secs);
    // task-producer outlives the sampling, so its last sample is a live one.
    system
        .start_load(&load, load_for + Duration::from_secs(5))
        .await?;
    let started = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut last = Vec::new();
    while started.elapsed() < load_for {
        tick.tick().await;
        last = system.rss();
        for (name, rss) in &last {
            let entry = memory.entry(name).or_default();
            if let Some(rss) = rss.map(mib) {
                entry.peak = Some(entry.peak.map_or(rss, |peak: f64| peak.max(rss)));
            }
        }
    }
    for (name, rss) in last {
        memory.entry(name).or_default().end = rss.map(mib);
    }
    let after = flow(system).await;
    let (answered, failed) = system.stop_load().await;

    let secs = args.load_secs as f64;
    println!(
        "load for {secs} s: {:.0} readings/s received by monitor-subscriber (asked {}), \
         {:.0} alerts/s, {:.0} tasks/s processed (asked {} + the alerts'), \
         {:.0} gRPC calls/s answered by user-service; the bench's GetUser: {answered} answered, {failed} failed",
        (after[0] - before[0]) / secs,
        number(args.readings_per_sec),
        (after[1] - before[1]) / secs,
        (after[2] - before[2]) / secs,
        number(args.tasks_per_sec),
        (after[3] - before[3]) / secs,
    );
    print_report(&memory);
    Ok(())
}

/// monitor-subscriber's readings, alert-subscriber's alerts, task-worker's
/// tasks and user-service's gRPC calls, so far.
async fn flow(system: &System) -> [f64; 4] {
    let mut counters = [0.0; 4];
    for (at, (service, metric)) in [
        ("monitor-subscriber", "messages_received_total"),
        ("alert-subscriber", "alerts_raised_total"),
        ("task-worker", "tasks_processed_total"),
        ("user-service", "grpc_server_requests_total"),
    ]
    .into_iter()
    .enumerate()
    {
        counters[at] = system.counter(service, metric).await.unwrap_or(0.0);
    }
    counters
}

fn print_report(memory: &BTreeMap<&'static str, Memory>) {
    let shown = |value: Option<f64>| value.map_or("—".to_string(), |mib| format!("{mib:.1}"));
    let mut rows = vec![vec![
        "service".to_string(),
        "idle MiB".to_string(),
        "under load: end MiB".to_string(),
        "peak MiB".to_string(),
        format!("goal < {IDLE_GOAL_MIB:.0} MiB idle"),
    ]];
    for (name, m) in memory {
        let goal = match m.idle {
            Some(idle) if idle < IDLE_GOAL_MIB => "met",
            Some(_) => "NOT met",
            None => "— (a job)",
        };
        rows.push(vec![
            name.to_string(),
            shown(m.idle),
            shown(m.end),
            shown(m.peak),
            goal.to_string(),
        ]);
    }
    println!("\n{}", table(&rows));
    for (name, m) in memory {
        if let Some(idle) = m.idle {
            let figure = Figure::new(
                format!("memory.{name}.idle"),
                round(idle),
                "MiB",
                IDLE_GOAL_MIB,
            );
            println!("{}", figure.result_line());
        }
    }
    for (name, m) in memory {
        if let (Some(peak), Some(idle)) = (m.peak, m.idle) {
            let figure = Figure::new(
                format!("memory.{name}.load"),
                round(peak),
                "MiB",
                round(idle),
            );
            println!("{}", figure.result_line());
        }
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / MIB
}

/// To a tenth of a MiB, as the table shows it.
fn round(mib: f64) -> f64 {
    (mib * 10.0).round() / 10.0
}
