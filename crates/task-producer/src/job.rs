//! The producer's job: publish N tasks, or a rate for a duration.
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

use common::{
    config::{ConfigError, Validate, duration_ms},
    shutdown::Shutdown,
    task::Task,
};
use futures::{StreamExt, stream::FuturesUnordered};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::time::MissedTickBehavior;

use crate::publisher::TaskPublisher;

/// Runs at least this many tasks get a progress bar (when stderr is a terminal).
const PROGRESS_THRESHOLD: u64 = 1_000;

/// What the producer publishes (`[job]` in the config file, or CLI flags).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JobConfig {
    /// How many tasks to publish (ignored when `duration_ms` is set).
    pub count: u64,
    /// Tasks per second; 0 publishes as fast as confirms allow.
    pub rate: f64,
    /// Publish at `rate` for this long; 0 means "publish `count` tasks".
    #[serde(rename = "duration_ms", with = "duration_ms")]
    pub duration: Duration,
    /// The task kind (`sleep`, `notify`, or any kind a worker handles).
    pub kind: String,
    /// The task payload, a JSON object.
    pub payload: String,
}

impl Default for JobConfig {
    fn default() -> Self {
        JobConfig {
            count: 10,
            rate: 0.0,
            duration: Duration::ZERO,
            kind: common::task::KIND_SLEEP.to_string(),
            payload: r#"{"ms": 100}"#.to_string(),
        }
    }
}

impl Validate for JobConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if !self.rate.is_finite() || self.rate < 0.0 {
            return Err(ConfigError::invalid(
                "job.rate",
                self.rate,
                "must be 0 (unpaced) or a positive number of tasks per second",
            ));
        }
        if !self.duration.is_zero() && self.rate == 0.0 {
            return Err(ConfigError::invalid(
                "job.duration_ms",
                self.duration.as_millis(),
                "a duration needs a rate (job.rate)",
            ));
        }
        if self.kind.trim().is_empty() {
            return Err(ConfigError::invalid(
                "job.kind",
                &self.kind,
                "must not be empty",
            ));
        }
        self.payload_object()
            .map(|_| ())
            .map_err(|reason| ConfigError::invalid("job.payload", &self.payload, reason))
    }
}

impl JobConfig {
    /// The payload parsed as a JSON object.
    pub fn payload_object(&self) -> Result<Map<String, Value>, String> {
        match serde_json::from_str::<Value>(&self.payload) {
            Ok(Value::Object(map)) => Ok(map),
            Ok(_) => Err("must be a json object".into()),
            Err(error) => Err(format!("not valid json: {error}")),
        }
    }

    /// The number of tasks the job will publish, when known in advance.
    pub fn planned(&self) -> u64 {
        if self.duration.is_zero() {
            self.count
        } else {
            (self.rate * self.duration.as_secs_f64()).round() as u64
        }
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_payload_must_be_a_json_object() {
        let mut job = JobConfig::default();
        assert!(job.validate().is_ok());
        job.payload = "[1]".into();
        let err = job.validate().unwrap_err().to_string();
        assert!(err.contains("json object"), "{err}");
        job.payload = "{".into();
        assert!(
            job.validate()
                .unwrap_err()
                .to_string()
                .contains("not valid json")
        );
    }

    #[test]
    fn a_duration_needs_a_rate() {
        let job = JobConfig {
            duration: Duration::from_secs(5),
            ..JobConfig::default()
        };
        assert!(job.validate().unwrap_err().to_string().contains("job.rate"));
        let job = JobConfig { rate: 200.0, ..job };
        assert!(job.validate().is_ok());
        assert_eq!(job.planned(), 1000);
    }
}
