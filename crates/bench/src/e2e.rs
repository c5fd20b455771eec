//! `bench e2e`: end-to-end alert latency with the services as real
//! processes — sensor-publisher → NATS → alert-subscriber → RabbitMQ →
//! task-worker → GetUser on user-service → "notification sent" — beside
//! the sum of the raw hops that path is made of, measured in the same run
//! on the same brokers.
//!
//! The latency of one alert is the time of the worker's "notification
//! sent" log line minus the timestamp of the reading that raised it (the
//! alert id carries it). Two phases, each its own sensor-publisher with a
//! scripted fleet whose alerts are evenly spaced and counted in advance
//! ([`phase`]): a low rate, where every alert meets an idle pipeline, and a
//! high rate that keeps the worker busy without overloading it. A short
//! warm-up first (connections, the owners' first lookups).
//!
//! The raw hops are measured back to back, and again before each phase
//! paced like its alerts (one message per alert interval, at most
//! `--raw-max-gap-ms` apart): a process that idles between messages pays
//! for waking up on every hop, raw clients too (3–7x their back-to-back
//! latency on the development machine), so the phase is compared with the
//! raw hops at its own pace.
//!
//! - [`system`]: the processes, a private NATS server, clean-up.
//! - [`phase`]: what each phase publishes.
//! - [`tap`]: when NATS delivered each alerting reading (µs).
//! - [`timeline`]: the services' log lines, by alert id.
//! - [`latency`]: a phase's latencies and their stages.
//! - [`raw`]: the raw hops.
//! - [`spans`]: `--spans`, the hand-on stage split by the services' spans.
//! - [`output`]: the tables and the `RESULT` lines.

mod latency;
mod output;
mod phase;
mod raw;
mod spans;
mod system;
mod tap;
mod timeline;

use std::time::Duration;

use bench::report::number;
use latency::{PhaseLatency, Spread};
use phase::Phase;
use raw::{Pace, RawHops};
use system::System;

/// Options of the e2e scenario.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Args {
    /// How readings travel: `core` (queue group) or `jetstream` (the
    /// partitioned group, as deployed); the figures of `jetstream` are
    /// named `e2e.jetstream.*`.
    #[arg(long, default_value = "core", value_parser = ["core", "jetstream"])]
    mode: String,
    /// Readings per second in the low phase.
    #[arg(long, default_value_t = 50.0)]
    low_rate: f64,
    /// Seconds of the low phase.
    #[arg(long, default_value_t = 40)]
    low_seconds: u64,
    /// Readings per second in the high phase.
    #[arg(long, default_value_t = 2000.0)]
    high_rate: f64,
    /// Seconds of the high phase.
    #[arg(long, default_value_t = 20)]
    high_seconds: u64,
    /// One reading in this many raises an alert.
    #[arg(long, default_value_t = 10)]
    alert_every: u64,
    /// Timed messages per raw hop, back to back.
    #[arg(long, default_value_t = 3000)]
    raw_samples: u32,
    /// Timed messages per raw hop at a phase's pace.
    #[arg(long, default_value_t = 300)]
    raw_paced_samples: u32,
    /// Longest pause between paced raw messages, ms: past it the processes
    /// are idle anyway (20 and 200 ms measured alike), and the run shorter.
    #[arg(long, default_value_t = 20)]
    raw_max_gap_ms: u64,
    /// RabbitMQ (the run's queues are its own and deleted afterwards).
    #[arg(
        long,
        env = "AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    amqp_url: String,
    /// Keep the services' logs (the directory is printed).
    #[arg(long)]
    keep_logs: bool,
    /// Diagnosis: the services export their trace spans to this process,
    /// and the hand-on stage is split by them (exporting costs CPU: the
    /// latencies of such a run are not the benchmark's figures).
    #[arg(long)]
    spans: bool,
}

/// What one phase measured.
#[derive(Debug)]
struct PhaseRun {
    phase: Phase,
    /// The pause between the paced raw hops' messages.
    gap: Duration,
    /// The raw hops at the phase's pace, just before it.
    raw: RawHops,
    latency: PhaseLatency,
    /// With `--spans`: the hand-on stages.
    stages: Vec<(&'static str, Spread)>,
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.low_rate > 0.0 && args.high_rate > 0.0,
        "rates must be positive"
    );
    anyhow::ensure!(args.alert_every >= 2, "--alert-every must be at least 2");
    let collector = if args.spans {
        Some(spans::SpanCollector::start().await?)
    } else {
        None
    };
    let mut system = System::start(
        &args.mode,
        &args.amqp_url,
        args.keep_logs,
        collector.as_ref().map(spans::SpanCollector::endpoint),
    )
    .await?;
    match measure(&args, &system, collector.as_ref()).await {
        Ok((back_to_back, phases)) => {
            system.stop();
            output::print(&args.mode, &back_to_back, &phases);
            Ok(())
        }
        Err(error) => {
            system.keep_logs();
            eprintln!(
                "e2e failed; the services' logs: {}",
                system.logs_dir().display()
            );
            system.stop();
            Err(error)
        }
    }
}

/// Warm-up, raw hops back to back, then each phase after its paced raw
/// hops (the services idle meanwhile).
async fn measure(
    args: &Args,
    system: &System,
    collector: Option<&spans::SpanCollector>,
) -> anyhow::Result<(RawHops, Vec<PhaseRun>)> {
    let tap = tap::Tap::start(&system.nats_url(), "sensor.data").await?;
    let warmup = Phase::new("warmup", 20.0, Duration::from_secs(3), args.alert_every);
    let logs = system.run_phase(&warmup).await?;
    let notified = timeline::count(&logs.worker, "notification sent", &warmup.id_prefix());
    anyhow::ensure!(
        notified > 0,
        "no notification in the warm-up: the pipeline does not flow"
    );
    eprintln!(
        "e2e: warm-up notified {notified} of {} alerts",
        warmup.expected_alerts()
    );
    let nats_url = system.nats_url();
    let raw = |pace| RawHops::measure(&nats_url, &args.amqp_url, pace);
    let back_to_back = raw(Pace {
        samples: args.raw_samples,
        gap: Duration::ZERO,
    })
    .await?;

    let mut runs = Vec::new();
    for phase in [
        Phase::new(
            "low",
            args.low_rate,
            Duration::from_secs(args.low_seconds),
            args.alert_every,
        ),
        Phase::new(
            "high",
            args.high_rate,
            Duration::from_secs(args.high_seconds),
            args.alert_every,
        ),
    ] {
        let gap = Duration::from_secs_f64(1.0 / phase.alert_rate())
            .min(Duration::from_millis(args.raw_max_gap_ms));
        let paced = raw(Pace {
            samples: args.raw_paced_samples,
            gap,
        })
        .await?;
        eprintln!(
            "e2e: {} phase, {} readings/s, {} alerts/s, {:.0} s",
            phase.name,
            number(phase.rate_per_sec),
            number(phase.alert_rate()),
            phase.duration().as_secs_f64()
        );
        let logs = system.run_phase(&phase).await?;
        if logs.published != Some(phase.readings) {
            eprintln!(
                "e2e: the {} publisher reports {:?} of {} readings published",
                phase.name, logs.published, phase.readings
            );
        }
        let notified = timeline::logged(&logs.worker, "notification sent");
        let latency = latency::analyse(
            &phase,
            &notified,
            &timeline::logged(&logs.alert_subscriber, "alert raised"),
            &tap.delivered(),
        );
        anyhow::ensure!(
            latency.notified > 0,
            "the {} phase notified nothing",
            phase.name
        );
        let mut stages = Vec::new();
        if let Some(collector) = collector {
            // The last batches of spans leave every 200 ms.
            tokio::time::sleep(Duration::from_secs(1)).await;
            stages = spans::stages(
                &collector.spans(),
                &phase.id_prefix(),
                &timeline::first_times(&notified),
            )
            .iter()
            .map(|(name, histogram)| (*name, Spread::of(histogram)))
            .collect();
        }
        runs.push(PhaseRun {
            phase,
            gap,
            raw: paced,
            latency,
            stages,
        });
    }
    Ok((back_to_back, runs))
}
