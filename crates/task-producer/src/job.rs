//! The producer's job ([`JobConfig`]): publish N tasks, or a rate for a
//! duration.
//!
//! Publishes overlap: up to `max_unconfirmed` are in flight while the broker
//! confirms earlier ones, which is where the throughput of confirmed
//! publishing comes from. Every task ends either confirmed or counted as
//! failed (after the publisher's own resends); nothing is dropped silently.
//! On a terminal a progress bar follows long runs; the [`Summary`] comes last.

use std::{
    fmt,
    io::IsTerminal,
    time::{Duration, Instant},
};

use common::shutdown::Shutdown;
use futures::{StreamExt, stream::FuturesUnordered};
use indicatif::{ProgressBar, ProgressStyle};
use tokio::time::MissedTickBehavior;
use workqueue::{publisher::TaskPublisher, task::Task};

use crate::config::JobConfig;

/// Runs at least this many tasks get a progress bar (when stderr is a terminal).
const PROGRESS_THRESHOLD: u64 = 1_000;

/// How a job went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Summary {
    /// Tasks handed to the publisher.
    pub published: u64,
    /// Tasks the broker confirmed.
    pub confirmed: u64,
    /// Resends (after a nack, a lost confirm or a reconnect).
    pub retried: u64,
    /// Tasks not confirmed in the end.
    pub failed: u64,
    /// Wall time of the job.
    pub elapsed: Duration,
}

impl Summary {
    /// Confirmed tasks per second.
    pub fn rate(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.confirmed as f64 / secs
        } else {
            0.0
        }
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "published={} confirmed={} retried={} failed={} elapsed={:.3}s rate={:.0}/s",
            self.published,
            self.confirmed,
            self.retried,
            self.failed,
            self.elapsed.as_secs_f64(),
            self.rate()
        )
    }
}

/// Publishes the job's tasks and waits for every confirm (or failure).
pub async fn publish(
    publisher: &TaskPublisher,
    job: &JobConfig,
    shutdown: &Shutdown,
) -> anyhow::Result<Summary> {
    let payload = job
        .payload_object()
        .map_err(|reason| anyhow::anyhow!("job.payload {reason}"))?;
    let started = Instant::now();
    let deadline = (!job.duration.is_zero()).then(|| started + job.duration);
    let planned = job.planned();
    let progress = progress_bar(planned, deadline.is_some());
    let mut ticker = (job.rate > 0.0).then(|| {
        let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / job.rate));
        // Catch up after a stall so the average rate holds.
        ticker.set_missed_tick_behavior(MissedTickBehavior::Burst);
        ticker
    });
    // At most this many publishes wait at once: beyond the publisher's window
    // they would only queue in memory while the broker is away.
    let max_in_flight = publisher.max_unconfirmed();

    let mut in_flight = FuturesUnordered::new();
    let mut summary = Summary::default();
    let mut stopping = false;
    loop {
        let more = !stopping
            && match deadline {
                Some(deadline) => Instant::now() < deadline,
                None => summary.published < job.count,
            };
        if !more && in_flight.is_empty() {
            break;
        }
        // Some branch is always enabled: with nothing in flight, `more` holds
        // (else the loop ended) and so does `can_send`.
        let can_send = more && in_flight.len() < max_in_flight;
        tokio::select! {
            biased;
            () = shutdown.cancelled(), if !stopping => {
                tracing::info!(in_flight = in_flight.len(), "shutdown: no new tasks, waiting for confirms");
                stopping = true;
            }
            Some(confirmed) = in_flight.next(), if !in_flight.is_empty() => {
                if confirmed {
                    summary.confirmed += 1;
                } else {
                    summary.failed += 1;
                }
                progress.inc(1);
            }
            () = next_tick(ticker.as_mut()), if can_send => {
                let task = Task::new(uuid::Uuid::new_v4().to_string(), job.kind.clone(), payload.clone());
                let publisher = publisher.clone();
                in_flight.push(async move { publisher.publish(&task).await.is_ok() });
                summary.published += 1;
            }
        }
    }
    summary.retried = publisher.stats().resent();
    summary.elapsed = started.elapsed();
    progress.finish_and_clear();
    Ok(summary)
}

async fn next_tick(ticker: Option<&mut tokio::time::Interval>) {
    if let Some(ticker) = ticker {
        ticker.tick().await;
    }
}

/// A bar on a terminal for long runs; hidden otherwise (logs and CI stay clean).
fn progress_bar(planned: u64, timed: bool) -> ProgressBar {
    if !std::io::stderr().is_terminal() || (planned < PROGRESS_THRESHOLD && !timed) {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(planned);
    let style =
        ProgressStyle::with_template("{bar:40} {pos}/{len} confirmed ({per_sec}, eta {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar
}
