//! NATS plumbing shared by the three publish-subscribe services.
//!
//! - [`connect`]: one way to connect, with the connection's life surfaced to
//!   operators: readiness follows connect/disconnect, and slow-consumer
//!   drops (the client discarding messages a subscriber did not take in time)
//!   become the `messages_dropped_total{reason="slow_consumer"}` counter and a
//!   warn log line. The client reconnects forever and may start before the
//!   server is up.
//! - [`sensor_stream_config`] / [`ensure_sensor_stream`]: the JetStream stream
//!   over `sensor.data` and `sensor.data.>` (docs/ARCHITECTURE.md), created or updated by
//!   whichever service starts first. Only options a 2.9 server knows are set.
//! - [`reading_subject`] builds `sensor.data.<sensor_id>`.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use async_nats::{
    ConnectOptions, Event,
    jetstream::{
        self,
        stream::{self, StorageType},
    },
};

use tokio_util::sync::CancellationToken;

use crate::{
    codec::{CONTENT_TYPE_HEADER, Codec, CodecError, ContentType},
    config::SecretUrl,
    ops::Readiness,
    proto::sensor::v1::SensorReading,
};

/// Name of the readiness check that follows the NATS connection.
pub const READINESS_CHECK: &str = "nats";

/// The `Content-Type` header name, built once: a `&str` key is validated and
/// copied into a new name on every lookup, which a subscriber reading
/// hundreds of thousands of messages a second feels.
pub const CONTENT_TYPE: async_nats::HeaderName =
    async_nats::HeaderName::from_static(CONTENT_TYPE_HEADER);

/// How long the stream remembers `Nats-Msg-Id`s to drop a retried publish.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// What the connection reports back to the service that owns it.
#[derive(Debug, Clone, Default)]
pub struct ConnectionWatch {
    /// Set to `true` on connect and `false` on disconnect under
    /// [`READINESS_CHECK`], when given.
    pub readiness: Option<Readiness>,
    /// Slow-consumer events of this connection: each is a message the client
    /// dropped because a subscription's buffer was full.
    pub slow_consumer_drops: Arc<AtomicU64>,
}

impl ConnectionWatch {
    /// A watch that also drives `readiness`.
    pub fn with_readiness(readiness: Readiness) -> Self {
        ConnectionWatch {
            readiness: Some(readiness),
            slow_consumer_drops: Arc::default(),
        }
    }

    /// Slow-consumer drops seen so far on this connection.
    pub fn slow_consumer_drops(&self) -> u64 {
        self.slow_consumer_drops.load(Ordering::Relaxed)
    }
}

/// How readings travel (docs/ARCHITECTURE.md, "Publish-subscribe").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryMode {
    /// Core NATS: at-most-once, lowest latency; nothing is stored.
    #[default]
    Core,
    /// JetStream: stored in the readings stream, acknowledged, at-least-once.
    Jetstream,
}

/// Connection settings common to the pub-sub services.
#[derive(Debug, Clone)]
pub struct NatsOptions {
    /// Server URL(s), comma-separated.
    pub url: SecretUrl,
    /// Connection name shown by the server (`nats server report connections`).
    pub name: String,
    /// Messages a subscription buffers before the client drops (slow consumer).
    pub subscription_capacity: usize,
}

/// Connects to NATS; returns at once even if the server is not up yet (the
/// client keeps trying, forever, as it does after a disconnect).
pub async fn connect(
    options: &NatsOptions,
    watch: ConnectionWatch,
) -> Result<async_nats::Client, async_nats::ConnectError> {
    let name = options.name.clone();
    ConnectOptions::new()
        .name(&options.name)
        .subscription_capacity(options.subscription_capacity)
        .retry_on_initial_connect()
        .max_reconnects(None)
        .event_callback(move |event| {
            let watch = watch.clone();
            let name = name.clone();
            async move { on_event(&name, &watch, event) }
        })
        .connect(options.url.expose())
        .await
}

fn on_event(name: &str, watch: &ConnectionWatch, event: Event) {
    match event {
        Event::Connected => {
            tracing::info!(connection = name, "nats connected");
            if let Some(readiness) = &watch.readiness {
                readiness.set(READINESS_CHECK, true);
            }
        }
        Event::Disconnected => {
            tracing::warn!(connection = name, "nats disconnected, reconnecting");
            if let Some(readiness) = &watch.readiness {
                readiness.set(READINESS_CHECK, false);
            }
        }
        Event::SlowConsumer(sid) => {
            watch.slow_consumer_drops.fetch_add(1, Ordering::Relaxed);
            metrics::counter!(crate::metrics::MESSAGES_DROPPED, "reason" => "slow_consumer")
                .increment(1);
            tracing::warn!(
                connection = name,
                sid,
                "slow consumer: nats client dropped a message"
            );
        }
        Event::Closed => tracing::info!(connection = name, "nats connection closed"),
        Event::Draining => tracing::info!(connection = name, "nats connection draining"),
        other => tracing::warn!(connection = name, event = %other, "nats event"),
    }
}

/// Waits until `client` is connected; `false` if `stop` fired first.
///
/// [`connect`] returns before the first connection, so a service that must
/// not start work while disconnected waits here.
pub async fn wait_connected(client: &async_nats::Client, stop: &CancellationToken) -> bool {
    loop {
        if client.connection_state() == async_nats::connection::State::Connected {
            return true;
        }
        tokio::select! {
            () = stop.cancelled() => return false,
            () = tokio::time::sleep(Duration::from_millis(10)) => {}
        }
    }
}

/// Decodes a reading from a NATS message, the codec chosen by its
/// `Content-Type` header (none means JSON), and checks what a decoder cannot:
/// a sensor id that fits in a subject and a finite value. The error's
/// [`CodecError::reason`] labels `messages_rejected_total`.
pub fn decode_reading(
    codec: &Codec,
    payload: &[u8],
    headers: Option<&async_nats::HeaderMap>,
) -> Result<SensorReading, CodecError> {
    let mut reading = SensorReading::default();
    decode_reading_into(codec, payload, headers, &mut reading)?;
    Ok(reading)
}

/// [`decode_reading`] into an existing reading, reusing its strings' memory
/// (Protobuf): a subscriber that decodes hundreds of thousands of readings a
/// second saves most of its allocations. On error `reading` holds garbage.
pub fn decode_reading_into(
    codec: &Codec,
    payload: &[u8],
    headers: Option<&async_nats::HeaderMap>,
    reading: &mut SensorReading,
) -> Result<(), CodecError> {
    let content_type = headers
        .and_then(|headers| headers.get(CONTENT_TYPE))
        .map(|value| value.as_str());
    match ContentType::from_header(content_type)? {
        ContentType::Protobuf => {
            if payload.len() > codec.max_payload() {
                return Err(CodecError::TooLarge {
                    size: payload.len(),
                    limit: codec.max_payload(),
                });
            }
            // Every field back to its default, keeping the strings' capacity;
            // proto3 leaves default values out, so nothing may linger.
            reading.sensor_id.clear();
            reading.kind.clear();
            reading.unit.clear();
            reading.value = 0.0;
            reading.timestamp = 0;
            reading.seq = 0;
            reading.site = None;
            reading.owner_id = None;
            prost::Message::merge(reading, payload)?;
        }
        ContentType::Json => *reading = codec.decode(payload, ContentType::Json)?,
    }
    check_reading(reading)
}

fn check_reading(reading: &SensorReading) -> Result<(), CodecError> {
    if reading.sensor_id.is_empty()
        || reading
            .sensor_id
            .chars()
            .any(|c| c == '.' || c == '*' || c == '>' || c.is_whitespace())
    {
        return Err(CodecError::Invalid(format!(
            "sensor_id {:?} is not a subject token",
            reading.sensor_id.chars().take(64).collect::<String>()
        )));
    }
    if !reading.value.is_finite() {
        return Err(CodecError::Invalid(format!(
            "value {} is not a finite number",
            reading.value
        )));
    }
    Ok(())
}

/// `<prefix>.<sensor_id>`, e.g. `sensor.data.temp-001`.
pub fn reading_subject(prefix: &str, sensor_id: &str) -> String {
    format!("{prefix}.{sensor_id}")
}

/// The readings stream: `prefix` and `prefix.>`, on disk, with a duplicate
/// window for `Nats-Msg-Id` de-duplication.
pub fn sensor_stream_config(name: &str, subject_prefix: &str) -> stream::Config {
    stream::Config {
        name: name.to_string(),
        subjects: vec![subject_prefix.to_string(), format!("{subject_prefix}.>")],
        storage: StorageType::File,
        duplicate_window: DUPLICATE_WINDOW,
        // Readings are telemetry: a day is plenty to replay after an outage.
        max_age: Duration::from_secs(24 * 3600),
        description: Some("sensor readings (switchyard)".to_string()),
        ..Default::default()
    }
}

/// Creates the readings stream, or updates it to [`sensor_stream_config`].
pub async fn ensure_sensor_stream(
    js: &jetstream::Context,
    name: &str,
    subject_prefix: &str,
) -> Result<stream::Info, jetstream::context::CreateStreamError> {
    js.create_or_update_stream(sensor_stream_config(name, subject_prefix))
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local() -> NatsOptions {
        NatsOptions {
            url: SecretUrl::new(
                std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into()),
            ),
            name: "common-nats-test".into(),
            subscription_capacity: 1024,
        }
    }

    #[test]
    fn readings_decode_by_content_type_and_bad_ones_say_why() {
        let codec = Codec::default();
        let json = br#"{"sensor_id":"t-1","kind":"temperature","value":25.3,"timestamp":1}"#;
        assert_eq!(decode_reading(&codec, json, None).unwrap().sensor_id, "t-1");
        let reading = SensorReading {
            sensor_id: "t-2".into(),
            value: 1.0,
            ..Default::default()
        };
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(CONTENT_TYPE_HEADER, "application/protobuf");
        let bytes = codec
            .encode(&reading, crate::codec::ContentType::Protobuf)
            .unwrap();
        assert_eq!(
            decode_reading(&codec, &bytes, Some(&headers)).unwrap(),
            reading
        );

        let reason = |payload: &[u8]| decode_reading(&codec, payload, None).unwrap_err().reason();
        assert_eq!(reason(b"temperature=25.3"), "invalid_json");
        assert_eq!(
            reason(br#"{"sensor_id":"a.b","kind":"k","value":1,"timestamp":1}"#),
            "invalid_message"
        );
        assert_eq!(
            reason(br#"{"sensor_id":"","kind":"k","value":1,"timestamp":1}"#),
            "invalid_message"
        );
    }

    #[test]
    fn decoding_into_a_used_reading_leaves_nothing_of_the_old_one() {
        let codec = Codec::default();
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(CONTENT_TYPE_HEADER, "application/protobuf");
        let full = SensorReading {
            sensor_id: "t-1".into(),
            kind: "temperature".into(),
            value: 31.5,
            unit: "celsius".into(),
            timestamp: 7,
            seq: 9,
            site: Some("plant-a".into()),
            owner_id: Some("u-1".into()),
        };
        // Zero value, no unit, no site, no owner: all left out on the wire.
        let sparse = SensorReading {
            sensor_id: "t-2".into(),
            kind: "humidity".into(),
            ..Default::default()
        };
        let mut reading = SensorReading::default();
        for expected in [&full, &sparse, &full] {
            let bytes = codec.encode(expected, ContentType::Protobuf).unwrap();
            decode_reading_into(&codec, &bytes, Some(&headers), &mut reading).unwrap();
            assert_eq!(&reading, expected);
        }
        let json = codec.encode(&sparse, ContentType::Json).unwrap();
        decode_reading_into(&codec, &json, None, &mut reading).unwrap();
        assert_eq!(reading, sparse);
        let too_big = vec![0u8; 64];
        let error = decode_reading_into(&Codec::new(16), &too_big, Some(&headers), &mut reading)
            .unwrap_err();
        assert_eq!(error.reason(), "too_large");
    }

    #[test]
    fn delivery_mode_reads_from_config_in_lowercase() {
        #[derive(serde::Deserialize)]
        struct Holder {
            mode: DeliveryMode,
        }
        let holder: Holder = serde_json::from_str(r#"{"mode":"jetstream"}"#).unwrap();
        assert_eq!(holder.mode, DeliveryMode::Jetstream);
        assert!(serde_json::from_str::<Holder>(r#"{"mode":"kafka"}"#).is_err());
    }

    #[test]
    fn the_stream_covers_the_bare_subject_and_every_sensor() {
        let config = sensor_stream_config("SENSORS", "sensor.data");
        assert_eq!(config.subjects, vec!["sensor.data", "sensor.data.>"]);
        assert_eq!(config.duplicate_window, DUPLICATE_WINDOW);
        assert_eq!(reading_subject("sensor.data", "t-1"), "sensor.data.t-1");
    }

    #[tokio::test]
    async fn connect_reports_readiness_and_the_stream_is_created_then_updated() {
        let readiness = Readiness::new(&[READINESS_CHECK]);
        let client = connect(&local(), ConnectionWatch::with_readiness(readiness.clone()))
            .await
            .unwrap();
        let never = CancellationToken::new();
        let connected =
            tokio::time::timeout(Duration::from_secs(10), wait_connected(&client, &never));
        assert!(connected.await.unwrap());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !readiness.is_ready() {
            assert!(tokio::time::Instant::now() < deadline, "never connected");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        let suffix = uuid::Uuid::new_v4().simple().to_string();
        let name = format!("TEST_{suffix}");
        let prefix = format!("test.{suffix}.sensor.data");
        let js = jetstream::new(client);
        let created = ensure_sensor_stream(&js, &name, &prefix).await.unwrap();
        assert_eq!(created.config.subjects.len(), 2);
        // A second service starting with the same config updates in place.
        let again = ensure_sensor_stream(&js, &name, &prefix).await.unwrap();
        assert_eq!(again.config.name, name);

        js.publish(reading_subject(&prefix, "s1"), "x".into())
            .await
            .unwrap()
            .await
            .unwrap();
        let mut stream = js.get_stream(&name).await.unwrap();
        assert_eq!(stream.info().await.unwrap().state.messages, 1);
        js.delete_stream(&name).await.unwrap();
    }
}
