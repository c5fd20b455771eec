//! From a reading that crossed a threshold to the [`Alert`] published on
//! NATS and the `notify` [`Task`] enqueued on RabbitMQ (contracts.md).
//!
//! The alert id is derived from the reading (`<sensor_id>-<timestamp>-<seq>`),
//! not random: a reading evaluated twice (JetStream redelivery after a crash)
//! raises an alert with the same id, and the task carries it as its id, so
//! the idempotent worker notifies once.

use common::proto::sensor::v1::{Alert, SensorReading, Severity};
use serde_json::{Map, Value, json};
use workqueue::task::{KIND_NOTIFY, Task};

/// The alert raised by `reading`.
pub fn alert_for(reading: &SensorReading, severity: Severity, threshold: f64) -> Alert {
    Alert {
        alert_id: format!(
            "{}-{}-{}",
            reading.sensor_id, reading.timestamp, reading.seq
        ),
        sensor_id: reading.sensor_id.clone(),
        kind: reading.kind.clone(),
        value: reading.value,
        threshold,
        severity: severity as i32,
        timestamp: reading.timestamp,
        owner_id: reading.owner_id.clone(),
    }
}

/// `"warning"` or `"critical"`, for logs, labels and the task payload.
pub fn severity_name(severity: Severity) -> &'static str {
    match severity {
        Severity::Critical => "critical",
        Severity::Warning => "warning",
        Severity::Unspecified => "unspecified",
    }
}

/// The `notify` task for an alert, or `None` when nobody owns the sensor.
pub fn notify_task(alert: &Alert) -> Option<Task> {
    let owner_id = alert.owner_id.as_ref().filter(|owner| !owner.is_empty())?;
    let severity = Severity::try_from(alert.severity).unwrap_or(Severity::Unspecified);
    let payload: Map<String, Value> = match json!({
        "owner_id": owner_id,
        "alert_id": alert.alert_id,
        "sensor_id": alert.sensor_id,
        "kind": alert.kind,
        "severity": severity_name(severity),
        "value": alert.value,
        "threshold": alert.threshold,
        "timestamp": alert.timestamp,
    }) {
        Value::Object(map) => map,
        _ => Map::new(),
    };
    Some(Task::new(alert.alert_id.clone(), KIND_NOTIFY, payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(owner: Option<&str>) -> SensorReading {
        SensorReading {
            sensor_id: "temp-001".into(),
            kind: "temperature".into(),
            value: 41.5,
            unit: "celsius".into(),
            timestamp: 1_700_000_000_000,
            seq: 9,
            site: None,
            owner_id: owner.map(String::from),
        }
    }

    #[test]
    fn the_alert_id_is_stable_for_the_same_reading() {
        let a = alert_for(&reading(Some("u-1")), Severity::Critical, 40.0);
        let b = alert_for(&reading(Some("u-1")), Severity::Critical, 40.0);
        assert_eq!(a.alert_id, "temp-001-1700000000000-9");
        assert_eq!(a, b);
    }

    #[test]
    fn the_notify_task_follows_the_contract() {
        let alert = alert_for(&reading(Some("u-1001")), Severity::Critical, 40.0);
        let task = notify_task(&alert).unwrap();
        assert_eq!(task.id, alert.alert_id);
        assert_eq!(task.kind, "notify");
        assert_eq!(task.payload["owner_id"], "u-1001");
        assert_eq!(task.payload["severity"], "critical");
        assert_eq!(task.payload["threshold"], 40.0);
        assert_eq!(task.payload["value"], 41.5);
        assert_eq!(task.payload["sensor_id"], "temp-001");
        assert_eq!(task.payload["kind"], "temperature");
        assert_eq!(task.payload["timestamp"], 1_700_000_000_000i64);
        assert_eq!(task.payload["alert_id"], alert.alert_id.as_str());
    }

    #[test]
    fn no_owner_no_task() {
        let alert = alert_for(&reading(None), Severity::Warning, 30.0);
        assert!(notify_task(&alert).is_none());
    }
}
