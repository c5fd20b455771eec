//! One reading in, at most one alert out: decode, evaluate against the
//! current rules, publish the alert on `sensor.alert.<sensor_id>` and queue
//! its `notify` task for the work queue.
//!
//! Readings are processed in arrival order, one at a time, because a
//! sensor's hysteresis depends on the order of its values; only the slow
//! part, handing alerts on to RabbitMQ, runs concurrently (in
//! [`crate::handoff`]).

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use async_nats::HeaderMap;
use common::{
    codec::{CONTENT_TYPE_HEADER, Codec, ContentType},
    metrics::{MESSAGES_PUBLISHED, MESSAGES_RECEIVED, MESSAGES_REJECTED},
    propagation,
    proto::sensor::v1::{SensorReading, Severity},
};
use tokio::sync::watch;
use tracing::Instrument as _;

use crate::{
    alert::{alert_for, notify_task, severity_name},
    handoff::{AlertHandoff, Delivered},
    metrics::{ALERTS_RAISED, ALERTS_UNOWNED, READINGS_DUPLICATE},
    rules::{AlertEngine, Rules, Verdict},
};

/// What one instance did; shared with tests and the shutdown summary.
#[derive(Debug, Default)]
pub struct AlertCounts {
    /// Messages received.
    pub received: AtomicU64,
    /// Readings evaluated against a rule (duplicates and kinds without a
    /// rule excluded).
    pub evaluated: AtomicU64,
    /// Messages that did not decode.
    pub rejected: AtomicU64,
    /// Redelivered readings recognised by seq and skipped.
    pub duplicates: AtomicU64,
    /// Alerts raised.
    pub alerts: AtomicU64,
    /// Alerts without an owner: published on NATS, no notify task.
    pub unowned: AtomicU64,
}

/// How a reading was dealt with.
#[derive(Debug)]
pub enum Outcome {
    /// The payload did not decode; it never will.
    Rejected,
    /// Nothing more to wait for.
    Done,
    /// An alert was raised; its task is on its way to the work queue.
    Alerted(Option<Delivered>),
}

/// Where alerts go and how they are encoded.
#[derive(Debug, Clone)]
pub struct AlertOutput {
    /// Alerts are published on `<prefix>.<sensor_id>`.
    pub subject_prefix: String,
    /// Encoding of published alerts.
    pub content_type: ContentType,
    /// Owner used when a reading names none.
    pub default_owner: Option<String>,
}

/// Evaluates readings and raises alerts.
#[derive(Debug)]
pub struct ReadingProcessor {
    codec: Codec,
    engine: AlertEngine,
    rules: watch::Receiver<Rules>,
    client: async_nats::Client,
    handoff: AlertHandoff,
    output: AlertOutput,
    counts: Arc<AlertCounts>,
    received_metric: metrics::Counter,
}

impl ReadingProcessor {
    /// A processor using the rules currently in `rules`; `codec` carries
    /// the message size limit for readings in and alerts out.
    pub fn new(
        rules: watch::Receiver<Rules>,
        client: async_nats::Client,
        handoff: AlertHandoff,
        output: AlertOutput,
        counts: Arc<AlertCounts>,
        received_subject: String,
        codec: Codec,
    ) -> Self {
        ReadingProcessor {
            codec,
            engine: AlertEngine::default(),
            rules,
            client,
            handoff,
            output,
            counts,
            received_metric: metrics::counter!(MESSAGES_RECEIVED, "subject" => received_subject),
        }
    }

    /// A processor like this one whose sensors continue from `engine` (a
    /// lane's checkpoint); it shares the rules, connection, hand-off and
    /// counts.
    pub fn with_engine(&self, engine: AlertEngine) -> Self {
        ReadingProcessor {
            codec: self.codec,
            engine,
            rules: self.rules.clone(),
            client: self.client.clone(),
            handoff: self.handoff.clone(),
            output: self.output.clone(),
            counts: self.counts.clone(),
            received_metric: self.received_metric.clone(),
        }
    }

    /// The sensors' states so far.
    pub fn engine(&self) -> &AlertEngine {
        &self.engine
    }

    /// Handles one message. With `confirm`, an alert's [`Delivered`] is
    /// returned so the caller can wait until the task is confirmed, and the
    /// NATS alert is flushed to the server first.
    pub async fn process(
        &mut self,
        subject: &str,
        payload: &[u8],
        headers: Option<&HeaderMap>,
        confirm: bool,
    ) -> Outcome {
        self.received_metric.increment(1);
        self.counts.received.fetch_add(1, Ordering::Relaxed);
        let reading = match common::nats::decode_reading(&self.codec, payload, headers) {
            Ok(reading) => reading,
            Err(error) => {
                self.counts.rejected.fetch_add(1, Ordering::Relaxed);
                metrics::counter!(MESSAGES_REJECTED, "reason" => error.reason()).increment(1);
                tracing::warn!(subject, reason = error.reason(), %error, "reading rejected");
                return Outcome::Rejected;
            }
        };
        let verdict = {
            let rules = self.rules.borrow();
            self.engine.evaluate(
                &rules,
                &reading.sensor_id,
                &reading.kind,
                reading.value,
                reading.seq,
            )
        };
        match verdict {
            Verdict::NoRule => Outcome::Done,
            Verdict::Duplicate => {
                self.counts.duplicates.fetch_add(1, Ordering::Relaxed);
                metrics::counter!(READINGS_DUPLICATE).increment(1);
                tracing::debug!(
                    sensor_id = reading.sensor_id,
                    seq = reading.seq,
                    "duplicate reading skipped"
                );
                Outcome::Done
            }
            Verdict::Quiet { from, to } => {
                self.counts.evaluated.fetch_add(1, Ordering::Relaxed);
                if to < from {
                    tracing::info!(sensor_id = reading.sensor_id, from = ?from, to = ?to, value = reading.value, "alert level cleared");
                }
                Outcome::Done
            }
            Verdict::Raise {
                severity,
                threshold,
            } => {
                self.counts.evaluated.fetch_add(1, Ordering::Relaxed);
                // The alert continues the reading's trace.
                let span = tracing::info_span!("raise alert", sensor_id = %reading.sensor_id, seq = reading.seq);
                propagation::set_parent(&span, propagation::extract_nats(headers));
                let delivered = self
                    .raise(reading, severity, threshold, confirm)
                    .instrument(span)
                    .await;
                Outcome::Alerted(delivered)
            }
        }
    }

    async fn raise(
        &self,
        mut reading: SensorReading,
        severity: Severity,
        threshold: f64,
        confirm: bool,
    ) -> Option<Delivered> {
        if reading.owner_id.as_deref().is_none_or(str::is_empty) {
            reading.owner_id = self.output.default_owner.clone();
        }
        let alert = alert_for(&reading, severity, threshold);
        self.counts.alerts.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(ALERTS_RAISED, "severity" => severity_name(severity)).increment(1);
        tracing::info!(
            alert_id = alert.alert_id,
            sensor_id = alert.sensor_id,
            kind = alert.kind,
            severity = severity_name(severity),
            value = alert.value,
            threshold,
            "alert raised"
        );
        self.publish_alert(&alert, confirm).await;
        match notify_task(&alert) {
            Some(task) => self.handoff.submit(task, confirm).await,
            None => {
                self.counts.unowned.fetch_add(1, Ordering::Relaxed);
                metrics::counter!(ALERTS_UNOWNED).increment(1);
                tracing::warn!(
                    alert_id = alert.alert_id,
                    "alert without an owner, no notify task"
                );
                None
            }
        }
    }

    async fn publish_alert(&self, alert: &common::proto::sensor::v1::Alert, confirm: bool) {
        let subject = common::nats::reading_subject(&self.output.subject_prefix, &alert.sensor_id);
        let payload = match self.codec.encode(alert, self.output.content_type) {
            Ok(payload) => payload,
            Err(error) => {
                tracing::error!(%error, alert_id = alert.alert_id, "cannot encode alert");
                return;
            }
        };
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE_HEADER, self.output.content_type.mime());
        propagation::inject_nats(&mut headers);
        let published = self
            .client
            .publish_with_headers(subject.clone(), headers, payload)
            .await;
        let published = match published {
            Ok(()) if confirm => self.client.flush().await.map_err(|e| e.to_string()),
            Ok(()) => Ok(()),
            Err(error) => Err(error.to_string()),
        };
        match published {
            Ok(()) => {
                metrics::counter!(MESSAGES_PUBLISHED, "subject" => format!("{}.>", self.output.subject_prefix))
                    .increment(1);
            }
            Err(error) => {
                tracing::warn!(%error, subject, alert_id = alert.alert_id, "alert not published on nats");
            }
        }
    }
}
