//! Puts readings on NATS, in core or JetStream mode.
//!
//! Every reading goes to `<subject_prefix>.<sensor_id>` with a `Content-Type`
//! header and a `traceparent` (the current span's, or a fresh one when no
//! trace is being exported, so logs of every hop still share a trace id).
//!
//! - Core mode is at-most-once: a reading is handed to the client, and while
//!   the connection is down readings are not queued up but counted as unsent
//!   (`readings_unsent_total{reason}`); the client reconnects on its own.
//! - JetStream mode is at-least-once into the stream: each publish carries
//!   `Nats-Msg-Id` = `<publisher id>-<sensor id>-<seq>` so a retry is
//!   de-duplicated by the server; up to `ack_window` PubAcks are awaited
//!   concurrently (the context's own bounded in-flight window); a reading is
//!   counted as published only once its PubAck arrived, and a timed-out or
//!   failed publish is sent again with the same id, with backoff (a resend
//!   of one message, not a reconnect: the NATS client reconnects on its own).
//!   The PubAcks are settled by the publishing task itself (the `pubacks` module):
//!   when the window is full, and in [`ReadingPublisher::settle_while`]
//!   while it waits for the next reading.
//!
//! On shutdown, [`ReadingPublisher::finish`] waits for the PubAcks still
//! awaited (and the client's buffer) within a grace period; what is still
//! unconfirmed then is abandoned and counted as unsent.

mod pubacks;

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use async_nats::{
    HeaderMap, HeaderName, HeaderValue, Subject,
    connection::State,
    header::NATS_MESSAGE_ID,
    jetstream::{self, message::PublishMessage},
};
use bytes::{Bytes, BytesMut};
use common::{
    codec::{Codec, CodecError, ContentType},
    metrics::MESSAGES_PUBLISHED,
    nats::CONTENT_TYPE,
    propagation::{TRACEPARENT, inject_nats_if_traced},
    proto::sensor::v1::SensorReading,
};
use metrics::Counter;
use rand::Rng;

use self::pubacks::PubAcks;
use crate::metrics::READINGS_UNSENT;

/// Built once, like [`CONTENT_TYPE`]: parsing a `&str` name per message is not free.
const TRACE_PARENT: HeaderName = HeaderName::from_static(TRACEPARENT);

/// Size of the blocks readings are encoded into (Protobuf).
const ENCODE_CHUNK: usize = 64 * 1024;

/// What happened to the readings so far; shared with the ops side and tests.
#[derive(Debug, Default)]
pub struct PublishCounts {
    /// Readings handed to NATS (core) or acknowledged by the stream (JetStream).
    pub published: AtomicU64,
    /// Readings given up on: not connected, publish failed, retries exhausted.
    pub unsent: AtomicU64,
    /// JetStream publishes that were sent again after a timeout or error.
    pub retried: AtomicU64,
    /// Retried publishes the stream recognised as duplicates and dropped.
    pub duplicates: AtomicU64,
}

/// A point-in-time copy of [`PublishCounts`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PublishSummary {
    /// See [`PublishCounts::published`].
    pub published: u64,
    /// See [`PublishCounts::unsent`].
    pub unsent: u64,
    /// See [`PublishCounts::retried`].
    pub retried: u64,
    /// See [`PublishCounts::duplicates`].
    pub duplicates: u64,
}

impl PublishCounts {
    /// Reads every counter.
    pub fn summary(&self) -> PublishSummary {
        PublishSummary {
            published: self.published.load(Ordering::Relaxed),
            unsent: self.unsent.load(Ordering::Relaxed),
            retried: self.retried.load(Ordering::Relaxed),
            duplicates: self.duplicates.load(Ordering::Relaxed),
        }
    }
}

/// Why a reading could not be encoded or handed on.
#[derive(Debug, thiserror::Error)]
pub enum ReadingError {
    /// The reading does not encode (a JSON float problem) or is over
    /// `max_message_bytes`.
    #[error("cannot encode reading: {0}")]
    Encode(#[from] CodecError),
}

/// Settings of a [`ReadingPublisher`].
#[derive(Debug, Clone)]
pub struct PublisherSettings {
    /// Identifies this publisher run in `Nats-Msg-Id`.
    pub publisher_id: String,
    /// Subject prefix, `sensor.data` by default.
    pub subject_prefix: String,
    /// Encoding of the readings.
    pub content_type: ContentType,
    /// How long one core publish or one PubAck may take.
    pub publish_timeout: Duration,
    /// PubAcks awaited at once (JetStream).
    pub ack_window: usize,
    /// Sends of one reading before it is given up (JetStream).
    pub max_publish_attempts: u32,
    /// Largest reading sent, in bytes; a bigger one is counted as unsent.
    pub max_message_bytes: usize,
}

/// Publishes readings in the configured mode.
#[derive(Debug)]
pub struct ReadingPublisher {
    settings: PublisherSettings,
    client: async_nats::Client,
    /// JetStream mode: the context and the readings awaiting their PubAck.
    jetstream: Option<PubAcks>,
    codec: Codec,
    counts: Arc<PublishCounts>,
    published_metric: Counter,
    /// Subject of each sensor, by fleet index (cheap to clone).
    subjects: Vec<Option<Subject>>,
    /// The `Content-Type` value of every reading.
    content_type: HeaderValue,
    /// Encoding buffer, split off per reading.
    buffer: BytesMut,
}

impl ReadingPublisher {
    /// A core-NATS publisher.
    pub fn core(
        client: async_nats::Client,
        settings: PublisherSettings,
        counts: Arc<PublishCounts>,
    ) -> Self {
        Self::new(client, settings, counts)
    }

    /// A JetStream publisher; the stream must exist.
    pub fn jetstream(
        client: async_nats::Client,
        settings: PublisherSettings,
        counts: Arc<PublishCounts>,
    ) -> Self {
        let context = jetstream::ContextBuilder::new()
            .timeout(settings.publish_timeout)
            .max_ack_inflight(settings.ack_window)
            // Wait for a free slot instead of failing: the window is the backpressure.
            .backpressure_on_inflight(true)
            .build(client.clone());
        let mut publisher = Self::new(client, settings, counts);
        publisher.jetstream = Some(PubAcks::new(
            context,
            publisher.settings.ack_window,
            publisher.counts.clone(),
            publisher.published_metric.clone(),
            publisher.content_type.clone(),
            publisher.settings.max_publish_attempts,
        ));
        publisher
    }

    fn new(
        client: async_nats::Client,
        settings: PublisherSettings,
        counts: Arc<PublishCounts>,
    ) -> Self {
        let published_metric = metrics::counter!(
            MESSAGES_PUBLISHED,
            "subject" => format!("{}.>", settings.subject_prefix)
        );
        let content_type = settings.content_type.mime();
        let codec = Codec::new(settings.max_message_bytes);
        ReadingPublisher {
            settings,
            client,
            jetstream: None,
            codec,
            counts,
            published_metric,
            subjects: Vec::new(),
            content_type: HeaderValue::from(content_type),
            buffer: BytesMut::new(),
        }
    }

    /// Publishes one reading of the sensor at fleet index `sensor`. In
    /// JetStream mode this returns once the reading is sent; its PubAck is
    /// settled later: by this when the window is full (in sending order),
    /// by [`ReadingPublisher::settle_while`] or by
    /// [`ReadingPublisher::finish`].
    pub async fn publish(
        &mut self,
        sensor: usize,
        reading: &SensorReading,
    ) -> Result<(), ReadingError> {
        let payload = self
            .encode(reading)
            .inspect_err(|ReadingError::Encode(error)| {
                let reason = match error {
                    CodecError::TooLarge { .. } => "too_large",
                    _ => "encode",
                };
                unsent(&self.counts, reason);
            })?;
        let subject = self.subject(sensor, &reading.sensor_id);
        let mut headers = reading_headers(self.content_type.clone());
        let Some(pubacks) = &mut self.jetstream else {
            self.publish_core(subject, headers, payload).await;
            return Ok(());
        };
        let message_id = HeaderValue::from(format!(
            "{}-{}-{}",
            self.settings.publisher_id, reading.sensor_id, reading.seq
        ));
        // Kept for a resend: the header values, not a copy of the whole map.
        let outgoing = OutgoingReading {
            subject,
            traceparent: headers.get(TRACEPARENT).cloned(),
            message_id: message_id.clone(),
            payload: payload.clone(),
        };
        headers.insert(NATS_MESSAGE_ID, message_id);
        let message = PublishMessage::build().payload(payload).headers(headers);
        pubacks.send(outgoing, message).await;
        Ok(())
    }

    /// Runs `wait` (the wait for the next reading) while the PubAcks that
    /// come in meanwhile are settled (JetStream; core mode just waits).
    pub async fn settle_while<F: Future>(&mut self, wait: F) -> F::Output {
        match &mut self.jetstream {
            Some(pubacks) => pubacks.settle_while(wait).await,
            None => wait.await,
        }
    }

    /// Encodes a reading. Protobuf goes into a shared buffer that is split
    /// off per reading: one allocation per [`ENCODE_CHUNK`] bytes instead of
    /// one per reading.
    fn encode(&mut self, reading: &SensorReading) -> Result<Bytes, ReadingError> {
        if self.settings.content_type == ContentType::Json {
            return Ok(self.codec.encode(reading, ContentType::Json)?);
        }
        let len = prost::Message::encoded_len(reading);
        if len > self.codec.max_payload() {
            return Err(CodecError::TooLarge {
                size: len,
                limit: self.codec.max_payload(),
            }
            .into());
        }
        if self.buffer.capacity() < len {
            self.buffer.reserve(len.max(ENCODE_CHUNK));
        }
        prost::Message::encode(reading, &mut self.buffer)
            .map_err(|error| CodecError::Invalid(error.to_string()))?;
        Ok(self.buffer.split().freeze())
    }

    fn subject(&mut self, sensor: usize, sensor_id: &str) -> Subject {
        if self.subjects.len() <= sensor {
            self.subjects.resize(sensor + 1, None);
        }
        let prefix = &self.settings.subject_prefix;
        self.subjects[sensor]
            .get_or_insert_with(|| Subject::from(common::nats::reading_subject(prefix, sensor_id)))
            .clone()
    }

    async fn publish_core(&mut self, subject: Subject, headers: HeaderMap, payload: Bytes) {
        // Not queued while disconnected: core NATS is at-most-once, and a
        // backlog of stale readings helps nobody after a reconnect.
        if self.client.connection_state() != State::Connected {
            unsent(&self.counts, "disconnected");
            return;
        }
        let publish = self.client.publish_with_headers(subject, headers, payload);
        let mut publish = std::pin::pin!(publish);
        // Usually the client takes the message at once; a timer is only set
        // up when it does not (its buffer is full, the connection stalled).
        let outcome = match futures::poll!(publish.as_mut()) {
            std::task::Poll::Ready(result) => Ok(result),
            std::task::Poll::Pending => {
                tokio::time::timeout(self.settings.publish_timeout, publish).await
            }
        };
        match outcome {
            Ok(Ok(())) => {
                self.counts.published.fetch_add(1, Ordering::Relaxed);
                self.published_metric.increment(1);
            }
            Ok(Err(error)) => {
                tracing::warn!(%error, "publish failed");
                unsent(&self.counts, "publish_error");
            }
            Err(_) => {
                tracing::warn!("publish timed out, connection stalled");
                unsent(&self.counts, "timeout");
            }
        }
    }

    /// Waits for every outstanding PubAck (JetStream: resends included)
    /// and for the client's flush, at most `grace`; what is still
    /// unconfirmed then is abandoned and counted as unsent
    /// (`reason="shutdown"`).
    pub async fn finish(&mut self, grace: Duration) {
        let flush = async {
            if let Err(error) = self.client.flush().await {
                tracing::warn!(%error, "flush failed");
            }
        };
        let settled = async {
            if let Some(pubacks) = &mut self.jetstream {
                pubacks.settle_all().await;
            }
        };
        let drained = tokio::time::timeout(grace, futures::future::join(flush, settled)).await;
        let left = match (drained, &mut self.jetstream) {
            (Err(_elapsed), Some(pubacks)) => pubacks.abandon() as u64,
            _ => 0,
        };
        if left > 0 {
            tracing::warn!(
                left,
                grace_ms = grace.as_millis() as u64,
                "grace period over, abandoning unconfirmed readings"
            );
            self.counts.unsent.fetch_add(left, Ordering::Relaxed);
            metrics::counter!(READINGS_UNSENT, "reason" => "shutdown").increment(left);
        }
    }
}

fn unsent(counts: &PublishCounts, reason: &'static str) {
    counts.unsent.fetch_add(1, Ordering::Relaxed);
    metrics::counter!(READINGS_UNSENT, "reason" => reason).increment(1);
}

/// Content-Type and traceparent for one reading.
fn reading_headers(content_type: HeaderValue) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, content_type);
    if !inject_nats_if_traced(&mut headers) {
        headers.insert(TRACE_PARENT, HeaderValue::from(fresh_traceparent()));
    }
    headers
}

/// A new W3C traceparent (version 00, sampled) for a reading published
/// outside any exported trace: downstream services continue it, so one id
/// still runs from the reading to its notification.
fn fresh_traceparent() -> String {
    let mut rng = rand::rng();
    let trace_id: u128 = rng.random::<u128>().max(1);
    let span_id: u64 = rng.random::<u64>().max(1);
    // Hex by hand: `format!` with `{:032x}` costs more than the rest of
    // building a reading's headers.
    let mut out = String::with_capacity(55);
    out.push_str("00-");
    push_hex(&mut out, &trace_id.to_be_bytes());
    out.push('-');
    push_hex(&mut out, &span_id.to_be_bytes());
    out.push_str("-01");
    out
}

fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for byte in bytes {
        out.push(DIGITS[usize::from(byte >> 4)] as char);
        out.push(DIGITS[usize::from(byte & 0x0f)] as char);
    }
}

/// One encoded reading, kept until its PubAck so it can be sent again.
#[derive(Debug)]
struct OutgoingReading {
    subject: Subject,
    traceparent: Option<HeaderValue>,
    message_id: HeaderValue,
    payload: Bytes,
}

impl OutgoingReading {
    /// The same message again: same headers, same `Nats-Msg-Id`.
    fn build(&self, content_type: &HeaderValue) -> PublishMessage {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, content_type.clone());
        if let Some(traceparent) = &self.traceparent {
            headers.insert(TRACE_PARENT, traceparent.clone());
        }
        headers.insert(NATS_MESSAGE_ID, self.message_id.clone());
        PublishMessage::build()
            .payload(self.payload.clone())
            .headers(headers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fresh_traceparent_is_well_formed_and_unique() {
        let a = fresh_traceparent();
        let parts: Vec<_> = a.split('-').collect();
        assert_eq!(parts.len(), 4);
        assert_eq!(
            (parts[0], parts[1].len(), parts[2].len(), parts[3]),
            ("00", 32, 16, "01")
        );
        assert_ne!(a, fresh_traceparent());
        assert!(
            parts[1]
                .chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        let mut hex = String::new();
        push_hex(&mut hex, &[0x00, 0x0f, 0xa5, 0xff]);
        assert_eq!(hex, "000fa5ff");
    }

    #[test]
    fn readings_carry_content_type_and_traceparent() {
        let headers = reading_headers(HeaderValue::from(ContentType::Protobuf.mime()));
        assert_eq!(
            headers
                .get(common::codec::CONTENT_TYPE_HEADER)
                .map(|v| v.as_str()),
            Some("application/protobuf")
        );
        let context = common::propagation::extract_nats(Some(&headers));
        assert_ne!(
            common::propagation::trace_id(&context),
            "00000000000000000000000000000000"
        );
    }
}
