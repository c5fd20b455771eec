//! Expected against observed.
//!
//! The expectation is what one evaluator reading the stored readings in
//! stream order alerts: alert-subscriber's own rule engine with the default
//! rules, fed from the readings stream after the run (so readings the
//! publisher never got stored do not count). Then, by alert id:
//! - **lost**: an expected alert never published, or published and never
//!   notified by a worker;
//! - **duplicated**: an alert published for a reading at which the sensor
//!   was already at that level — a second alert for a crossing already
//!   alerted (what per-instance state gives when a sensor's readings are
//!   split over instances);
//! - **unexpected**: any other alert nobody should have raised;
//! - repeats: the same alert id published (or notified) again — a
//!   redelivery, harmless because workers de-duplicate by id.

use std::{
    collections::{BTreeMap, HashMap},
    time::Duration,
};

use alert_subscriber::{
    alert::alert_for,
    rules::{AlertEngine, Level, Verdict, default_rules},
};
use async_nats::jetstream::{self, consumer::pull};
use common::{
    codec::Codec,
    proto::sensor::v1::{SensorReading, Severity},
};
use futures::StreamExt;

use crate::{Options, observe::Observed};

/// What one in-order evaluator would have done.
#[derive(Debug, Default)]
pub struct Expected {
    /// Readings in the stream.
    pub readings: u64,
    /// Alert id -> severity.
    pub alerts: BTreeMap<String, Severity>,
    /// (sensor, seq) -> the sensor's level before that reading.
    levels: HashMap<(String, u64), Level>,
}

/// Reads the readings stream `SENSORS` of the server at `nats_url` from the
/// start and evaluates it in order.
pub async fn expected(nats_url: &str) -> anyhow::Result<Expected> {
    let client = crate::brokers::connect_nats(nats_url).await?;
    let js = jetstream::new(client);
    let mut stream = js.get_stream("SENSORS").await?;
    let stored = stream.info().await?.state.messages;
    let mut expected = Expected::default();
    if stored == 0 {
        return Ok(expected);
    }
    let consumer = stream
        .create_consumer(pull::OrderedConfig::default())
        .await?;
    let mut messages = consumer.messages().await?;
    let codec = Codec::default();
    let rules = default_rules();
    let mut engine = AlertEngine::default();
    while expected.readings < stored {
        let message = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .map_err(|_| anyhow::anyhow!("the stream stopped delivering at {}", expected.readings))?
            .ok_or_else(|| anyhow::anyhow!("the stream ended"))??;
        expected.readings += 1;
        let Ok(reading) =
            common::nats::decode_reading(&codec, &message.payload, message.headers.as_ref())
        else {
            continue;
        };
        expected.evaluate(&mut engine, &rules, reading);
    }
    Ok(expected)
}

impl Expected {
    fn evaluate(
        &mut self,
        engine: &mut AlertEngine,
        rules: &alert_subscriber::Rules,
        reading: SensorReading,
    ) {
        let before = engine
            .states()
            .get(&reading.sensor_id)
            .map_or(Level::Normal, |state| state.level);
        self.levels
            .insert((reading.sensor_id.clone(), reading.seq), before);
        let verdict = engine.evaluate(
            rules,
            &reading.sensor_id,
            &reading.kind,
            reading.value,
            reading.seq,
        );
        if let Verdict::Raise {
            severity,
            threshold,
        } = verdict
        {
            let alert = alert_for(&reading, severity, threshold);
            self.alerts.insert(alert.alert_id, severity);
        }
    }

    /// `true` when an alert of `severity` for reading `seq` of `sensor` came
    /// while the sensor already stood at that level.
    fn already_at(&self, sensor: &str, seq: u64, severity: i32) -> bool {
        let level = match Severity::try_from(severity) {
            Ok(Severity::Critical) => Level::Critical,
            _ => Level::Warning,
        };
        self.levels
            .get(&(sensor.to_string(), seq))
            .is_some_and(|before| *before >= level)
    }
}

/// The reading's seq, the last part of an alert id
/// (`<sensor_id>-<timestamp>-<seq>`).
fn seq_of(alert_id: &str) -> Option<u64> {
    alert_id.rsplit('-').next()?.parse().ok()
}

/// The reconciliation of one run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The schedule's name.
    pub schedule: String,
    /// `jetstream` or `core`.
    pub mode: String,
    /// Readings stored.
    pub readings: u64,
    /// Alerts one in-order evaluator raises.
    pub expected: u64,
    /// Distinct alert ids published.
    pub alerts_seen: u64,
    /// Distinct alert ids notified.
    pub notified: u64,
    /// Expected alerts never published.
    pub lost_alerts: u64,
    /// Expected alerts published but never notified.
    pub lost_notifications: u64,
    /// Second alerts for a crossing already alerted.
    pub duplicated: u64,
    /// Other alerts nobody should have raised.
    pub unexpected: u64,
    /// Publications of an alert id beyond its first.
    pub alert_repeats: u64,
    /// Notifications of an alert id beyond its first.
    pub notification_repeats: u64,
    /// Alert messages that did not decode.
    pub undecodable: u64,
}

impl Report {
    /// Reconciles `observed` against `expected`.
    pub fn new(options: &Options, expected: &Expected, observed: &Observed) -> Self {
        let mut report = Report {
            schedule: if options.cluster {
                format!("{}+node-loss", options.schedule.name())
            } else {
                options.schedule.name().into()
            },
            mode: options.mode.clone(),
            readings: expected.readings,
            expected: expected.alerts.len() as u64,
            alerts_seen: observed.alerts.len() as u64,
            notified: observed.notifications.len() as u64,
            lost_alerts: 0,
            lost_notifications: 0,
            duplicated: 0,
            unexpected: 0,
            alert_repeats: observed.alerts.values().map(|a| a.times - 1).sum(),
            notification_repeats: observed.notifications.values().map(|n| n - 1).sum(),
            undecodable: observed.undecodable,
        };
        for id in expected.alerts.keys() {
            if !observed.alerts.contains_key(id) {
                report.lost_alerts += 1;
            } else if !observed.notifications.contains_key(id) {
                report.lost_notifications += 1;
            }
        }
        for (id, seen) in &observed.alerts {
            if expected.alerts.contains_key(id) {
                continue;
            }
            let repeat_of_a_crossing = seq_of(id)
                .is_some_and(|seq| expected.already_at(&seen.sensor_id, seq, seen.severity));
            if repeat_of_a_crossing {
                report.duplicated += 1;
            } else {
                report.unexpected += 1;
            }
        }
        report
    }

    /// Lost, duplicated and unexpected together: 0 when the answer held.
    pub fn failures(&self) -> u64 {
        self.lost_alerts + self.lost_notifications + self.duplicated + self.unexpected
    }

    /// The table and the `RESULT` line.
    pub fn render(&self) -> String {
        let rows = [
            ("readings stored", self.readings),
            ("alerts expected (one in-order evaluator)", self.expected),
            ("alert ids published", self.alerts_seen),
            ("alert ids notified", self.notified),
            ("lost: expected, never published", self.lost_alerts),
            ("lost: published, never notified", self.lost_notifications),
            ("duplicated: second alert of a crossing", self.duplicated),
            ("unexpected: alert for no crossing", self.unexpected),
            ("repeats: same id published again", self.alert_repeats),
            ("repeats: same id notified again", self.notification_repeats),
            ("undecodable alert messages", self.undecodable),
        ];
        let mut text = format!(
            "chaos: schedule={} mode={}\n| | count |\n|---|---:|\n",
            self.schedule, self.mode
        );
        for (what, count) in rows {
            text.push_str(&format!("| {what} | {count} |\n"));
        }
        let value = self.failures();
        let ratio = if value == 0 {
            "0".into()
        } else {
            "inf".to_string()
        };
        text.push_str(&format!(
            "RESULT scenario=chaos.alerts value={value} unit=count baseline=0 ratio={ratio}\n"
        ));
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::SeenAlert;

    fn reading(sensor: &str, seq: u64, value: f64) -> SensorReading {
        SensorReading {
            sensor_id: sensor.into(),
            kind: "temperature".into(),
            value,
            timestamp: 1000 + seq as i64,
            seq,
            ..Default::default()
        }
    }

    #[test]
    fn lost_duplicated_and_unexpected_are_told_apart() {
        // The reference: s-1 warns at seq 2 (31.0), hovers at 3, clears at 4,
        // warns again at 5.
        let mut expected = Expected::default();
        let mut engine = AlertEngine::default();
        let rules = default_rules();
        for (seq, value) in [(1, 25.0), (2, 31.0), (3, 30.5), (4, 28.0), (5, 31.0)] {
            expected.evaluate(&mut engine, &rules, reading("s-1", seq, value));
        }
        assert_eq!(expected.alerts.len(), 2);
        let seen = |times| SeenAlert {
            sensor_id: "s-1".into(),
            severity: Severity::Warning as i32,
            times,
        };
        let mut observed = Observed::default();
        // seq 2 published twice and notified; seq 5 lost; seq 3 a second
        // alert of the crossing of seq 2; seq 1 an alert for nothing.
        observed.alerts.insert("s-1-1002-2".into(), seen(2));
        observed.alerts.insert("s-1-1003-3".into(), seen(1));
        observed.alerts.insert("s-1-1001-1".into(), seen(1));
        observed.notifications.insert("s-1-1002-2".into(), 1);
        let report = Report::new(&Options::default(), &expected, &observed);
        assert_eq!(report.lost_alerts, 1, "{report:?}");
        assert_eq!(report.duplicated, 1, "{report:?}");
        assert_eq!(report.unexpected, 1, "{report:?}");
        assert_eq!(report.alert_repeats, 1, "{report:?}");
        assert_eq!(report.failures(), 3);
        assert!(
            report.render().ends_with(
                "RESULT scenario=chaos.alerts value=3 unit=count baseline=0 ratio=inf\n"
            )
        );
    }
}
