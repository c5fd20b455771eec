//! What the system did: every alert published on `sensor.alert.>` (each
//! publication, so a repeat of one id is counted) and every notification
//! the workers recorded (their `notification sent` log lines, by alert id).

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use common::{
    codec::{CONTENT_TYPE_HEADER, Codec},
    proto::sensor::v1::Alert,
};
use futures::StreamExt;

/// One alert id as seen on NATS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenAlert {
    /// The sensor it is about.
    pub sensor_id: String,
    /// Its severity (`Severity` as a number).
    pub severity: i32,
    /// How many times it was published.
    pub times: u64,
}

/// Everything observed in one run.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// Alerts by id.
    pub alerts: BTreeMap<String, SeenAlert>,
    /// Notifications by alert id: how many times each was recorded.
    pub notifications: BTreeMap<String, u64>,
    /// Alert messages that did not decode.
    pub undecodable: u64,
}

/// Collects the alerts published under `sensor.alert.>`.
#[derive(Debug)]
pub struct AlertWatch {
    seen: Arc<Mutex<(BTreeMap<String, SeenAlert>, u64)>>,
    task: tokio::task::JoinHandle<()>,
}

impl AlertWatch {
    /// Subscribes (and flushes, so nothing published afterwards is missed).
    pub async fn start(client: &async_nats::Client) -> anyhow::Result<Self> {
        let mut alerts = client.subscribe("sensor.alert.>").await?;
        client.flush().await?;
        let seen = Arc::new(Mutex::new((BTreeMap::new(), 0)));
        let sink = seen.clone();
        let task = tokio::spawn(async move {
            let codec = Codec::default();
            while let Some(message) = alerts.next().await {
                let content_type = message
                    .headers
                    .as_ref()
                    .and_then(|headers| headers.get(CONTENT_TYPE_HEADER))
                    .map(|value| value.as_str().to_string());
                let decoded: Result<Alert, _> =
                    codec.decode_with_header(&message.payload, content_type.as_deref());
                let mut seen = sink.lock().unwrap_or_else(|e| e.into_inner());
                match decoded {
                    Ok(alert) => {
                        seen.0
                            .entry(alert.alert_id)
                            .or_insert(SeenAlert {
                                sensor_id: alert.sensor_id,
                                severity: alert.severity,
                                times: 0,
                            })
                            .times += 1;
                    }
                    Err(_) => seen.1 += 1,
                }
            }
        });
        Ok(AlertWatch { seen, task })
    }

    /// The alerts so far and the undecodable count.
    pub fn snapshot(&self) -> (BTreeMap<String, SeenAlert>, u64) {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Drop for AlertWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Notifications recorded in JSON log text: alert id -> times.
pub fn notifications<'a>(logs: impl IntoIterator<Item = &'a str>) -> BTreeMap<String, u64> {
    let mut sent = BTreeMap::new();
    for line in logs.into_iter().flat_map(str::lines) {
        let Ok(event) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if event["message"] != "notification sent" {
            continue;
        }
        if let Some(alert_id) = event["alert_id"].as_str() {
            *sent.entry(alert_id.to_string()).or_insert(0) += 1;
        }
    }
    sent
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_are_read_from_the_workers_json_lines() {
        let log = concat!(
            r#"{"timestamp":"t","level":"INFO","message":"notification sent","alert_id":"a-1","target":"task_worker::notify"}"#,
            "\n",
            r#"{"timestamp":"t","level":"INFO","message":"task done","task_id":"a-1"}"#,
            "\nnot json\n",
            r#"{"level":"INFO","message":"notification sent","alert_id":"a-1"}"#,
            "\n",
        );
        let other = r#"{"message":"notification sent","alert_id":"a-2"}"#;
        let sent = notifications([log, other]);
        assert_eq!(sent.get("a-1"), Some(&2));
        assert_eq!(sent.get("a-2"), Some(&1));
        assert_eq!(sent.len(), 2);
    }
}
