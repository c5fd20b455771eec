//! A plain subscriber beside the alert-subscriber, on the same readings:
//! it notes when NATS delivered each alerting reading, to the µs.
//!
//! The reading's own timestamp has millisecond resolution (truncated), so
//! "reading timestamp → notification" reads 0–1 ms long; "delivery →
//! notification" is exact and shows where the time goes. The tap keeps only
//! the alerting readings (a few thousand per run) and decodes on its own
//! connection, off the pipeline's path.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use common::codec::Codec;
use futures::StreamExt;

use super::phase::ALERTING;

/// Alert id → when NATS delivered its reading to the tap (µs since the
/// epoch).
pub(crate) type Delivered = HashMap<String, i64>;

/// The running tap; stops when dropped.
#[derive(Debug)]
pub(crate) struct Tap {
    seen: Arc<Mutex<Delivered>>,
    task: tokio::task::JoinHandle<()>,
}

impl Tap {
    /// Subscribes to every reading under `subject_prefix` (core NATS sees
    /// them in both delivery modes: JetStream stores what is published).
    pub(crate) async fn start(nats_url: &str, subject_prefix: &str) -> anyhow::Result<Self> {
        let client = async_nats::connect(nats_url).await?;
        let mut readings = client.subscribe(format!("{subject_prefix}.>")).await?;
        client.flush().await?;
        let seen = Arc::new(Mutex::new(Delivered::new()));
        let sink = seen.clone();
        let task = tokio::spawn(async move {
            let _client = client;
            let codec = Codec::default();
            while let Some(message) = readings.next().await {
                let at = now_micros();
                let Ok(reading) = common::nats::decode_reading(
                    &codec,
                    &message.payload,
                    message.headers.as_ref(),
                ) else {
                    continue;
                };
                if reading.value != ALERTING {
                    continue;
                }
                // The id alert-subscriber gives the alert this reading raises.
                let alert_id = format!(
                    "{}-{}-{}",
                    reading.sensor_id, reading.timestamp, reading.seq
                );
                sink.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(alert_id)
                    .or_insert(at);
            }
        });
        Ok(Tap { seen, task })
    }

    /// What was delivered so far.
    pub(crate) fn delivered(&self) -> Delivered {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Now, in µs since the Unix epoch (the clock the services' log lines use).
pub(crate) fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or_default()
}
