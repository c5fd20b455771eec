//! `monitor-subscriber`: sees every reading (no queue group: each instance
//! gets everything) and keeps per-sensor statistics over a sliding window.
//!
//! - `GET /stats` on the ops port answers with the [`stats::StatsReport`] JSON;
//!   the same JSON answers NATS requests on `sensor.stats` (request-reply;
//!   instances answer as one queue group, since each has the full picture).
//! - Every `summary_interval_ms` one line sums the fleet up in the log.
//! - Readings arrive on `<subject_prefix>` and `<subject_prefix>.>` in JSON or
//!   Protobuf (by `Content-Type`); a payload that does not decode is counted
//!   in `messages_rejected_total{reason}` and logged at warn.
//! - Backpressure: readings are handled one at a time, in order, straight
//!   from the subscription's bounded buffer (`subscription_capacity`);
//!   updating the statistics takes well under a microsecond, and if the
//!   monitor still falls behind the client drops messages, which is counted
//!   as `messages_dropped_total{reason="slow_consumer"}` and shows up as
//!   `seq_gaps`.
//! - On shutdown the subscriptions are drained: what is buffered is still
//!   counted, then the service stops.

pub mod stats;

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use anyhow::Context as _;
use axum::{Json, Router, extract::State, routing::get};
use common::proto::sensor::v1::SensorReading;
use common::{
    codec::Codec,
    config::{ConfigError, SecretUrl, Validate, duration_ms},
    nats::{ConnectionWatch, NatsOptions},
    ops::{OpsServer, Readiness},
    shutdown::Shutdown,
};
use futures::{FutureExt as _, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::stats::{FleetStats, StatsReport};

/// Standard environment variables and the keys they set.
pub const ENV_KEYS: &[(&str, &str)] = &[("NATS_URL", "nats_url"), ("OPS_ADDR", "ops_addr")];

/// Queue group of the `sensor.stats` responders: one instance answers.
pub const STATS_QUEUE_GROUP: &str = "monitor-stats";

/// Configuration of the monitor-subscriber (TOML keys are the field names).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// NATS server URL(s) (`NATS_URL`).
    pub nats_url: SecretUrl,
    /// Ops HTTP address: `/healthz`, `/readyz`, `/metrics`, `/stats` (`OPS_ADDR`).
    pub ops_addr: SocketAddr,
    /// Readings are read from `<subject_prefix>` and `<subject_prefix>.>`.
    pub subject_prefix: String,
    /// Request-reply subject answered with the stats JSON.
    pub stats_subject: String,
    /// Length of the statistics window, seconds.
    pub window_secs: u64,
    /// How often the one-line summary is logged; 0 turns it off.
    #[serde(with = "duration_ms")]
    pub summary_interval_ms: Duration,
    /// Messages buffered per subscription before the client drops (slow consumer).
    pub subscription_capacity: usize,
    /// On shutdown, how long buffered readings may take to be counted.
    #[serde(with = "duration_ms")]
    pub drain_grace_ms: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            nats_url: SecretUrl::new("nats://127.0.0.1:4222"),
            ops_addr: SocketAddr::from(([0, 0, 0, 0], 9103)),
            subject_prefix: "sensor.data".into(),
            stats_subject: "sensor.stats".into(),
            window_secs: 60,
            summary_interval_ms: Duration::from_secs(5),
            subscription_capacity: 65_536,
            drain_grace_ms: Duration::from_secs(10),
        }
    }
}

fn is_literal_subject(subject: &str) -> bool {
    subject.split('.').all(|token| {
        !token.is_empty()
            && !token
                .chars()
                .any(|c| c == '*' || c == '>' || c.is_whitespace())
    })
}

impl Validate for Config {
    fn validate(&self) -> Result<(), ConfigError> {
        for (key, subject) in [
            ("subject_prefix", &self.subject_prefix),
            ("stats_subject", &self.stats_subject),
        ] {
            if !is_literal_subject(subject) {
                return Err(ConfigError::invalid(
                    key,
                    subject,
                    "must be a literal subject (dot-separated tokens, no wildcards)",
                ));
            }
        }
        if self.window_secs == 0 || self.window_secs > 24 * 3600 {
            return Err(ConfigError::invalid(
                "window_secs",
                self.window_secs,
                "must be between 1 and 86400",
            ));
        }
        if self.subscription_capacity == 0 {
            return Err(ConfigError::invalid(
                "subscription_capacity",
                0,
                "must be at least 1",
            ));
        }
        Ok(())
    }
}

/// The statistics and what the report needs besides them.
#[derive(Debug, Clone)]
struct SharedStats {
    stats: Arc<Mutex<FleetStats>>,
    start: Instant,
    watch: ConnectionWatch,
}

impl SharedStats {
    fn lock(&self) -> MutexGuard<'_, FleetStats> {
        // Recording never panics half-way, so a poisoned lock still holds
        // consistent numbers.
        self.stats
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn second(&self) -> u64 {
        self.start.elapsed().as_secs()
    }

    fn report(&self) -> StatsReport {
        let second = self.second();
        self.lock().report(second, self.watch.slow_consumer_drops())
    }
}

/// A connected, subscribed monitor with its ops server running.
#[derive(Debug)]
pub struct Application {
    config: Config,
    client: async_nats::Client,
    readings: async_nats::Subscriber,
    bare_readings: async_nats::Subscriber,
    stats_requests: async_nats::Subscriber,
    shared: SharedStats,
    ops: OpsServer,
    ops_stop: CancellationToken,
    readiness: Readiness,
}

impl Application {
    /// Starts the ops server, connects (in the background if NATS is not up
    /// yet) and subscribes.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        config.validate()?;
        let readiness = Readiness::new(&[common::nats::READINESS_CHECK]);
        let watch = ConnectionWatch::with_readiness(readiness.clone());
        let shared = SharedStats {
            stats: Arc::new(Mutex::new(FleetStats::new(config.window_secs))),
            start: Instant::now(),
            watch: watch.clone(),
        };
        let ops_stop = CancellationToken::new();
        let routes = Router::new()
            .route("/stats", get(stats_handler))
            .with_state(shared.clone());
        let ops = OpsServer::start(config.ops_addr, readiness.clone(), routes, ops_stop.clone())
            .await
            .with_context(|| format!("cannot bind the ops address {}", config.ops_addr))?;
        let client = common::nats::connect(
            &NatsOptions {
                url: config.nats_url.clone(),
                name: "monitor-subscriber".into(),
                subscription_capacity: config.subscription_capacity,
            },
            watch,
        )
        .await
        .with_context(|| format!("cannot connect to nats at {}", config.nats_url))?;
        let readings = client
            .subscribe(format!("{}.>", config.subject_prefix))
            .await
            .context("cannot subscribe to readings")?;
        let bare_readings = client
            .subscribe(config.subject_prefix.clone())
            .await
            .context("cannot subscribe to readings")?;
        let stats_requests = client
            .queue_subscribe(config.stats_subject.clone(), STATS_QUEUE_GROUP.into())
            .await
            .context("cannot subscribe to stats requests")?;
        Ok(Application {
            config,
            client,
            readings,
            bare_readings,
            stats_requests,
            shared,
            ops,
            ops_stop,
            readiness,
        })
    }

    /// The ops address actually bound.
    pub fn ops_addr(&self) -> SocketAddr {
        self.ops.local_addr()
    }

    /// A handle on the statistics, readable while the monitor runs.
    pub fn stats(&self) -> StatsHandle {
        StatsHandle {
            shared: self.shared.clone(),
        }
    }

    /// Waits until the subscriptions are registered with the server, so a
    /// reading published from now on is seen.
    pub async fn wait_until_subscribed(&self) {
        common::nats::wait_connected(&self.client, &CancellationToken::new()).await;
        if let Err(error) = self.client.flush().await {
            tracing::warn!(%error, "flush failed");
        }
    }

    /// Counts readings until `shutdown` fires, then drains what is buffered.
    pub async fn run_until_stopped(self, shutdown: Shutdown) -> anyhow::Result<()> {
        let Application {
            config,
            client,
            mut readings,
            mut bare_readings,
            stats_requests,
            shared,
            ops,
            ops_stop,
            readiness,
        } = self;
        tracing::info!(
            subject_prefix = config.subject_prefix,
            stats_subject = config.stats_subject,
            "monitoring readings"
        );
        let responder = tokio::spawn(answer_stats_requests(
            client.clone(),
            stats_requests,
            shared.clone(),
        ));
        let summary = tokio::spawn(log_summaries(
            shared.clone(),
            config.summary_interval_ms,
            shutdown.token(),
        ));

        let mut recorder = ReadingRecorder::new(&config.subject_prefix, shared.clone());
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            // Unbiased: a busy per-sensor subscription must not starve the other.
            let first = tokio::select! {
                message = readings.next() => message,
                message = bare_readings.next() => message,
                () = shutdown.cancelled() => break,
            };
            let Some(first) = first else { break };
            batch.push(first);
            // Whatever else is already buffered goes in the same batch: one
            // lock and one clock read for many readings. Only the per-sensor
            // subscription is drained so; readings on the bare prefix are rare.
            while batch.len() < BATCH {
                match readings.next().now_or_never() {
                    Some(Some(message)) => batch.push(message),
                    _ => break,
                }
            }
            recorder.record_all(&batch);
            batch.clear();
        }

        // Drain: no new readings, but those already buffered still count.
        readiness.shutting_down();
        if let Err(error) = client.drain().await {
            tracing::warn!(%error, "cannot drain the nats connection");
        }
        let drain = async {
            let mut both = futures::stream::select(&mut readings, &mut bare_readings);
            while let Some(message) = both.next().await {
                recorder.record_all(std::slice::from_ref(&message));
            }
        };
        if tokio::time::timeout(config.drain_grace_ms, drain)
            .await
            .is_err()
        {
            tracing::warn!("grace period over, buffered readings not counted");
        }
        responder.abort();
        summary.abort();
        let report = shared.report();
        tracing::info!(
            sensors = report.totals.sensors,
            readings = report.totals.readings,
            seq_gaps = report.totals.seq_gaps,
            rejected = report.totals.rejected,
            "monitor stopped"
        );
        ops_stop.cancel();
        ops.stopped().await.ok();
        Ok(())
    }
}

/// Reads the statistics of a running monitor.
#[derive(Debug, Clone)]
pub struct StatsHandle {
    shared: SharedStats,
}

impl StatsHandle {
    /// The current report (what `/stats` answers).
    pub fn report(&self) -> StatsReport {
        self.shared.report()
    }

    /// Readings recorded so far (cheaper than a full report).
    pub fn readings(&self) -> u64 {
        self.shared.lock().readings()
    }
}

/// Readings recorded under one lock, at most.
const BATCH: usize = 256;

/// Decodes readings and records them.
struct ReadingRecorder {
    codec: Codec,
    shared: SharedStats,
    received: metrics::Counter,
    decoded: Vec<SensorReading>,
}

impl ReadingRecorder {
    fn new(subject_prefix: &str, shared: SharedStats) -> Self {
        ReadingRecorder {
            codec: Codec::default(),
            shared,
            // Labelled by the subscription, not each sensor's subject, so
            // the metric does not grow with the fleet.
            received: metrics::counter!("messages_received_total", "subject" => format!("{subject_prefix}.>")),
            // Reused batch after batch: decoding into them keeps their
            // strings' memory.
            decoded: vec![SensorReading::default(); BATCH],
        }
    }

    /// Decodes a batch outside the lock, then records it under one lock.
    fn record_all(&mut self, messages: &[async_nats::Message]) {
        self.received.increment(messages.len() as u64);
        let mut decoded = 0;
        let mut rejected = 0;
        for chunk in messages.chunks(BATCH) {
            for message in chunk {
                match common::nats::decode_reading_into(
                    &self.codec,
                    &message.payload,
                    message.headers.as_ref(),
                    &mut self.decoded[decoded],
                ) {
                    Ok(()) => decoded += 1,
                    Err(error) => {
                        rejected += 1;
                        metrics::counter!("messages_rejected_total", "reason" => error.reason())
                            .increment(1);
                        tracing::warn!(
                            subject = %message.subject,
                            reason = error.reason(),
                            %error,
                            "reading rejected"
                        );
                    }
                }
            }
            let second = self.shared.second();
            let mut stats = self.shared.lock();
            for reading in &self.decoded[..decoded] {
                stats.record(reading, second);
            }
            for _ in 0..rejected {
                stats.reject();
            }
            decoded = 0;
            rejected = 0;
        }
    }
}

async fn stats_handler(State(shared): State<SharedStats>) -> Json<StatsReport> {
    Json(shared.report())
}

/// Answers each request on the stats subject with the report JSON.
async fn answer_stats_requests(
    client: async_nats::Client,
    mut requests: async_nats::Subscriber,
    shared: SharedStats,
) {
    while let Some(request) = requests.next().await {
        let Some(reply) = request.reply else {
            tracing::warn!(subject = %request.subject, "stats request without a reply subject");
            continue;
        };
        let body = match serde_json::to_vec(&shared.report()) {
            Ok(body) => body,
            Err(error) => {
                tracing::error!(%error, "cannot encode the stats report");
                continue;
            }
        };
        if let Err(error) = client.publish(reply, body.into()).await {
            tracing::warn!(%error, "cannot answer a stats request");
        }
    }
}

/// Logs one line per interval: what `docker compose logs -f` shows a user.
async fn log_summaries(shared: SharedStats, interval: Duration, stop: CancellationToken) {
    if interval.is_zero() {
        return;
    }
    let mut ticker = tokio::time::interval(interval);
    ticker.tick().await;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let report = shared.report();
        tracing::info!(
            sensors = report.totals.sensors,
            readings = report.totals.readings,
            rate_per_sec = format!("{:.1}", report.totals.rate_per_sec),
            seq_gaps = report.totals.seq_gaps,
            rejected = report.totals.rejected,
            slow_consumer_drops = report.totals.slow_consumer_drops,
            "fleet summary"
        );
    }
}

/// Builds and runs the monitor until the shutdown signal.
pub async fn run(config: Config, shutdown: Shutdown) -> anyhow::Result<()> {
    Application::build(config)
        .await?
        .run_until_stopped(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_name_their_key() {
        Config::default().validate().unwrap();
        let error = Config {
            stats_subject: "sensor.*".into(),
            ..Config::default()
        }
        .validate()
        .unwrap_err();
        assert!(error.to_string().contains("stats_subject"), "{error}");
        let error = Config {
            window_secs: 0,
            ..Config::default()
        }
        .validate()
        .unwrap_err();
        assert!(error.to_string().contains("window_secs"), "{error}");
    }
}
