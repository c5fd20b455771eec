//! Readings into statistics: decode, then record under one lock per batch.
//!
//! Readings are handled one batch at a time, in order, straight from the
//! subscriptions' bounded buffers (`subscription_capacity`): updating the
//! statistics takes well under a microsecond per reading, and if the monitor
//! still falls behind, the NATS client drops messages, which is counted as
//! `messages_dropped_total{reason="slow_consumer"}` and shows up as
//! `seq_gaps`. A payload that does not decode, or is over
//! `max_message_bytes` (then it is not read at all), is counted in
//! `messages_rejected_total{reason}` and logged at warn.

use common::{
    codec::Codec,
    metrics::{MESSAGES_RECEIVED, MESSAGES_REJECTED},
    proto::sensor::v1::SensorReading,
    shutdown::Shutdown,
};
use futures::{FutureExt as _, StreamExt};

use crate::report::StatsHandle;

/// Readings recorded under one lock, at most.
const BATCH: usize = 256;

/// Decodes readings and records them.
pub(crate) struct ReadingRecorder {
    /// JSON or Protobuf, by `Content-Type`.
    codec: Codec,
    /// Where the readings are recorded.
    stats: StatsHandle,
    /// `messages_received_total{subject="<prefix>.>"}`, resolved once.
    received: metrics::Counter,
    /// Reused batch after batch: decoding into them keeps their strings'
    /// memory.
    decoded: Vec<SensorReading>,
}

impl ReadingRecorder {
    /// A recorder of readings read from `<subject_prefix>` and
    /// `<subject_prefix>.>`, none larger than `codec` allows.
    pub(crate) fn new(subject_prefix: &str, stats: StatsHandle, codec: Codec) -> Self {
        ReadingRecorder {
            codec,
            stats,
            // Labelled by the subscription, not each sensor's subject, so
            // the metric does not grow with the fleet.
            received: metrics::counter!(MESSAGES_RECEIVED, "subject" => format!("{subject_prefix}.>")),
            decoded: vec![SensorReading::default(); BATCH],
        }
    }

    /// Records readings from both subscriptions until `shutdown` fires or
    /// they end.
    pub(crate) async fn record_until_stopped(
        &mut self,
        readings: &mut async_nats::Subscriber,
        bare_readings: &mut async_nats::Subscriber,
        shutdown: &Shutdown,
    ) {
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            // Unbiased: a busy per-sensor subscription must not starve the other.
            let first = tokio::select! {
                message = readings.next() => message,
                message = bare_readings.next() => message,
                () = shutdown.cancelled() => return,
            };
            let Some(first) = first else { return };
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
            self.record_all(&batch);
            batch.clear();
        }
    }

    /// Records what is still buffered in the subscriptions once they are
    /// drained (unsubscribed): they end after the last buffered message.
    pub(crate) async fn record_buffered(
        mut self,
        readings: async_nats::Subscriber,
        bare_readings: async_nats::Subscriber,
    ) {
        let mut both = futures::stream::select(readings, bare_readings);
        while let Some(message) = both.next().await {
            self.record_all(std::slice::from_ref(&message));
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
                        metrics::counter!(MESSAGES_REJECTED, "reason" => error.reason())
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
            let second = self.stats.second();
            let mut stats = self.stats.lock();
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
