//! JSON and Protobuf behind one abstraction.
//!
//! The `Content-Type` header of a message chooses the codec (docs/ARCHITECTURE.md):
//! `application/json` or `application/protobuf`; no header means JSON, which is
//! what external clients send. Internal publishers default to Protobuf.
//!
//! Decoding is defensive: a payload over the size limit, an unknown content
//! type, bytes that do not parse and JSON with unknown fields all come back as a
//! typed [`CodecError`] whose [`CodecError::reason`] is a short label for the
//! `messages_rejected_total{reason}` counter. Nothing here panics on input.
//! The size limit is each service's `max_message_bytes` setting (1 MiB by
//! default, checked by [`validate_max_message_bytes`]), enforced before a
//! byte is parsed.

use std::{fmt, str::FromStr};

use bytes::Bytes;
use serde::{Serialize, de::DeserializeOwned};

use crate::config::ConfigError;

/// Name of the header that carries the content type, on NATS and AMQP alike.
pub const CONTENT_TYPE_HEADER: &str = "Content-Type";

/// Largest payload accepted by default: 1 MiB, the default `max_payload` of a
/// NATS server. Readings and tasks are a few hundred bytes at most.
pub const DEFAULT_MAX_PAYLOAD: usize = 1024 * 1024;

/// The config key every service sets its message size limit with, on every
/// intake it has (NATS payloads, AMQP bodies, gRPC messages, HTTP bodies)
/// and every message it sends; default [`DEFAULT_MAX_PAYLOAD`].
pub const MAX_MESSAGE_BYTES_KEY: &str = "max_message_bytes";

/// The smallest `max_message_bytes` accepted: a reading or a task with
/// long ids and names still fits.
pub const MIN_MESSAGE_BYTES_LIMIT: usize = 1024;

/// The largest `max_message_bytes` accepted: 64 MiB, the most nats-server
/// allows for its own `max_payload`. Every message is held in memory whole,
/// so a larger limit is a mistake rather than a need.
pub const MAX_MESSAGE_BYTES_LIMIT: usize = 64 * 1024 * 1024;

/// Checks a service's `max_message_bytes` setting: from
/// [`MIN_MESSAGE_BYTES_LIMIT`] to [`MAX_MESSAGE_BYTES_LIMIT`].
pub fn validate_max_message_bytes(value: usize) -> Result<(), ConfigError> {
    if (MIN_MESSAGE_BYTES_LIMIT..=MAX_MESSAGE_BYTES_LIMIT).contains(&value) {
        return Ok(());
    }
    Err(ConfigError::invalid(
        MAX_MESSAGE_BYTES_KEY,
        value,
        format!("must be from {MIN_MESSAGE_BYTES_LIMIT} to {MAX_MESSAGE_BYTES_LIMIT} (bytes)"),
    ))
}

/// How a message body is encoded.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum ContentType {
    /// `application/json`: readable, what external clients send.
    Json,
    /// `application/protobuf`: compact and fast, the internal default.
    #[default]
    Protobuf,
}

impl ContentType {
    /// The MIME type written into the `Content-Type` header.
    pub fn mime(self) -> &'static str {
        match self {
            ContentType::Json => "application/json",
            ContentType::Protobuf => "application/protobuf",
        }
    }

    /// Chooses the codec from an optional `Content-Type` header value.
    ///
    /// No header means JSON. Parameters (`; charset=utf-8`) and case are
    /// ignored; `application/x-protobuf` is accepted as Protobuf.
    pub fn from_header(value: Option<&str>) -> Result<Self, CodecError> {
        let Some(value) = value else {
            return Ok(ContentType::Json);
        };
        let mime = value.split(';').next().unwrap_or_default().trim();
        if mime.eq_ignore_ascii_case("application/json") {
            Ok(ContentType::Json)
        } else if mime.eq_ignore_ascii_case("application/protobuf")
            || mime.eq_ignore_ascii_case("application/x-protobuf")
        {
            Ok(ContentType::Protobuf)
        } else {
            Err(CodecError::UnsupportedContentType(truncate(value, 64)))
        }
    }
}

impl fmt::Display for ContentType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ContentType::Json => "json",
            ContentType::Protobuf => "protobuf",
        })
    }
}

impl FromStr for ContentType {
    type Err = CodecError;

    /// Parses a config value: `json`, `protobuf` or a MIME type.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "json" => Ok(ContentType::Json),
            "protobuf" | "proto" => Ok(ContentType::Protobuf),
            other => ContentType::from_header(Some(other)),
        }
    }
}

/// Why a payload could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The payload is larger than the configured maximum.
    #[error("payload of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Size of the payload.
        size: usize,
        /// The configured limit.
        limit: usize,
    },
    /// The `Content-Type` header names neither JSON nor Protobuf.
    #[error("unsupported content type {0:?}")]
    UnsupportedContentType(String),
    /// The bytes are not valid JSON for the message (including unknown fields).
    #[error("invalid json: {0}")]
    Json(#[from] serde_json::Error),
    /// The bytes are not a valid Protobuf encoding of the message.
    #[error("invalid protobuf: {0}")]
    Protobuf(#[from] prost::DecodeError),
    /// The message decoded but its content is not acceptable.
    #[error("invalid message: {0}")]
    Invalid(String),
}

impl CodecError {
    /// Short, stable label for the `messages_rejected_total{reason}` counter.
    pub fn reason(&self) -> &'static str {
        match self {
            CodecError::TooLarge { .. } => "too_large",
            CodecError::UnsupportedContentType(_) => "unsupported_content_type",
            CodecError::Json(_) => "invalid_json",
            CodecError::Protobuf(_) => "invalid_protobuf",
            CodecError::Invalid(_) => "invalid_message",
        }
    }
}

/// A message that travels in both encodings.
///
/// Implemented for every prost message that also derives serde; types whose
/// JSON shape differs from their Protobuf shape (the work queue's `Task`)
/// implement it by hand.
pub trait WireMessage: Sized {
    /// Encodes as Protobuf.
    fn to_protobuf(&self) -> Vec<u8>;
    /// Decodes from Protobuf.
    fn from_protobuf(bytes: &[u8]) -> Result<Self, CodecError>;
    /// Encodes as JSON.
    fn to_json(&self) -> Result<Vec<u8>, CodecError>;
    /// Decodes from JSON.
    fn from_json(bytes: &[u8]) -> Result<Self, CodecError>;
}

impl<M> WireMessage for M
where
    M: prost::Message + Default + Serialize + DeserializeOwned,
{
    fn to_protobuf(&self) -> Vec<u8> {
        self.encode_to_vec()
    }

    fn from_protobuf(bytes: &[u8]) -> Result<Self, CodecError> {
        Ok(M::decode(bytes)?)
    }

    fn to_json(&self) -> Result<Vec<u8>, CodecError> {
        Ok(serde_json::to_vec(self)?)
    }

    fn from_json(bytes: &[u8]) -> Result<Self, CodecError> {
        Ok(serde_json::from_slice(bytes)?)
    }
}

/// Encodes and decodes [`WireMessage`]s under a payload size limit.
#[derive(Debug, Clone, Copy)]
pub struct Codec {
    max_payload: usize,
}

impl Default for Codec {
    fn default() -> Self {
        Codec::new(DEFAULT_MAX_PAYLOAD)
    }
}

impl Codec {
    /// A codec that refuses payloads over `max_payload` bytes in both directions.
    pub fn new(max_payload: usize) -> Self {
        Codec { max_payload }
    }

    /// The payload size limit in bytes.
    pub fn max_payload(&self) -> usize {
        self.max_payload
    }

    /// Encodes `message` with `content_type`.
    pub fn encode<M: WireMessage>(
        &self,
        message: &M,
        content_type: ContentType,
    ) -> Result<Bytes, CodecError> {
        let bytes = match content_type {
            ContentType::Json => message.to_json()?,
            ContentType::Protobuf => message.to_protobuf(),
        };
        self.check_size(bytes.len())?;
        Ok(Bytes::from(bytes))
    }

    /// Decodes `payload` with `content_type`.
    pub fn decode<M: WireMessage>(
        &self,
        payload: &[u8],
        content_type: ContentType,
    ) -> Result<M, CodecError> {
        self.check_size(payload.len())?;
        match content_type {
            ContentType::Json => M::from_json(payload),
            ContentType::Protobuf => M::from_protobuf(payload),
        }
    }

    /// Decodes `payload`, choosing the codec from a `Content-Type` header value.
    pub fn decode_with_header<M: WireMessage>(
        &self,
        payload: &[u8],
        content_type: Option<&str>,
    ) -> Result<M, CodecError> {
        // The size first: an oversize body is refused as too large whatever
        // its header says.
        self.check_size(payload.len())?;
        self.decode(payload, ContentType::from_header(content_type)?)
    }

    /// `Err(TooLarge)` when `size` bytes exceed the limit: for a consumer
    /// that refuses a body before handing it to a decoder of its own.
    pub fn check_size(&self, size: usize) -> Result<(), CodecError> {
        if size > self.max_payload {
            return Err(CodecError::TooLarge {
                size,
                limit: self.max_payload,
            });
        }
        Ok(())
    }
}

/// Serde for `Alert.severity`: the enum's lowercase name in JSON
/// (`"warning"`, `"critical"`) instead of prost's raw `i32`.
pub mod severity_name {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    use crate::proto::sensor::v1::Severity;

    /// Writes the severity as `"warning"` or `"critical"` (`"unspecified"` otherwise).
    pub fn serialize<S: Serializer>(value: &i32, serializer: S) -> Result<S::Ok, S::Error> {
        let name = match Severity::try_from(*value) {
            Ok(Severity::Warning) => "warning",
            Ok(Severity::Critical) => "critical",
            _ => "unspecified",
        };
        serializer.serialize_str(name)
    }

    /// Reads `"warning"` or `"critical"`; anything else is an error naming the value.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<i32, D::Error> {
        let name = String::deserialize(deserializer)?;
        match name.as_str() {
            "warning" => Ok(Severity::Warning as i32),
            "critical" => Ok(Severity::Critical as i32),
            other => Err(D::Error::custom(format!(
                "unknown severity {other:?}, expected \"warning\" or \"critical\""
            ))),
        }
    }
}

fn truncate(value: &str, max: usize) -> String {
    value.chars().take(max).collect()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::proto::{
        sensor::v1::{Alert, SensorReading, Severity},
        user::v1::User,
    };

    fn reading() -> SensorReading {
        SensorReading {
            sensor_id: "temp-001".into(),
            kind: "temperature".into(),
            value: 25.3,
            unit: "celsius".into(),
            timestamp: 1_700_000_000_000,
            seq: 42,
            site: Some("plant-a".into()),
            owner_id: Some("u-1".into()),
        }
    }

    #[test]
    fn content_type_follows_the_header_rules() {
        assert_eq!(ContentType::from_header(None).unwrap(), ContentType::Json);
        assert_eq!(
            ContentType::from_header(Some("application/json; charset=utf-8")).unwrap(),
            ContentType::Json
        );
        assert_eq!(
            ContentType::from_header(Some("Application/Protobuf")).unwrap(),
            ContentType::Protobuf
        );
        assert_eq!(
            ContentType::from_header(Some("application/x-protobuf")).unwrap(),
            ContentType::Protobuf
        );
        let err = ContentType::from_header(Some("text/plain")).unwrap_err();
        assert_eq!(err.reason(), "unsupported_content_type");
        assert_eq!("json".parse::<ContentType>().unwrap(), ContentType::Json);
        assert_eq!(
            "protobuf".parse::<ContentType>().unwrap(),
            ContentType::Protobuf
        );
    }

    #[test]
    fn json_uses_snake_case_field_names_and_optional_site() {
        let json = r#"{"sensor_id":"s1","kind":"temperature","value":31.5,"unit":"celsius","timestamp":1,"seq":7}"#;
        let decoded: SensorReading = Codec::default()
            .decode_with_header(json.as_bytes(), None)
            .unwrap();
        assert_eq!(decoded.sensor_id, "s1");
        assert_eq!(decoded.seq, 7);
        assert_eq!(decoded.site, None);
    }

    #[test]
    fn a_plain_text_payload_is_rejected_not_a_panic() {
        let err = Codec::default()
            .decode_with_header::<SensorReading>(b"temperature=25.3", None)
            .unwrap_err();
        assert_eq!(err.reason(), "invalid_json");
    }

    #[test]
    fn unknown_json_fields_are_rejected() {
        let json = r#"{"sensor_id":"s1","kind":"t","value":1.0,"timestamp":1,"colour":"red"}"#;
        let err = Codec::default()
            .decode::<SensorReading>(json.as_bytes(), ContentType::Json)
            .unwrap_err();
        assert_eq!(err.reason(), "invalid_json");
        assert!(err.to_string().contains("colour"), "{err}");
    }

    #[test]
    fn oversize_payloads_are_refused_both_ways() {
        let codec = Codec::new(16);
        let err = codec.encode(&reading(), ContentType::Protobuf).unwrap_err();
        assert!(matches!(err, CodecError::TooLarge { limit: 16, .. }));
        let err = codec
            .decode::<SensorReading>(&[0u8; 17], ContentType::Protobuf)
            .unwrap_err();
        assert_eq!(err.reason(), "too_large");
    }

    #[test]
    fn an_oversize_payload_is_too_large_whatever_its_content_type_says() {
        let err = Codec::new(16)
            .decode_with_header::<SensorReading>(&[b'x'; 17], Some("text/plain"))
            .unwrap_err();
        assert_eq!(err.reason(), "too_large");
        assert_eq!(
            err.to_string(),
            "payload of 17 bytes exceeds the limit of 16 bytes"
        );
    }

    #[test]
    fn max_message_bytes_is_checked_within_its_bounds() {
        for good in [1024, DEFAULT_MAX_PAYLOAD, 64 * 1024 * 1024] {
            assert!(validate_max_message_bytes(good).is_ok(), "{good}");
        }
        for bad in [0, 1023, 64 * 1024 * 1024 + 1] {
            let error = validate_max_message_bytes(bad).unwrap_err().to_string();
            assert!(error.contains("max_message_bytes"), "{error}");
        }
    }

    #[test]
    fn alert_severity_is_a_name_in_json() {
        let alert = Alert {
            alert_id: "a1".into(),
            sensor_id: "s1".into(),
            kind: "temperature".into(),
            value: 41.0,
            threshold: 40.0,
            severity: Severity::Critical as i32,
            timestamp: 5,
            owner_id: None,
        };
        let json = Codec::default().encode(&alert, ContentType::Json).unwrap();
        assert!(
            std::str::from_utf8(&json)
                .unwrap()
                .contains(r#""severity":"critical""#)
        );
        let back: Alert = Codec::default().decode(&json, ContentType::Json).unwrap();
        assert_eq!(back, alert);
        let bad = br#"{"alert_id":"a","sensor_id":"s","kind":"k","value":1,"threshold":1,"severity":"mild","timestamp":1}"#;
        let err = Codec::default()
            .decode::<Alert>(bad, ContentType::Json)
            .unwrap_err();
        assert!(err.to_string().contains("mild"), "{err}");
    }

    #[test]
    fn protobuf_is_smaller_than_json_for_a_reading() {
        let codec = Codec::default();
        let proto = codec.encode(&reading(), ContentType::Protobuf).unwrap();
        let json = codec.encode(&reading(), ContentType::Json).unwrap();
        assert!(
            proto.len() < json.len(),
            "protobuf {} json {}",
            proto.len(),
            json.len()
        );
    }

    prop_compose! {
        fn any_reading()(
            sensor_id in "[a-z0-9-]{1,24}",
            kind in "[a-z]{1,12}",
            value in -1.0e6f64..1.0e6,
            unit in "[a-z%]{0,8}",
            timestamp in any::<i64>(),
            seq in any::<u64>(),
            site in proptest::option::of("[a-z0-9 -]{0,16}"),
            owner_id in proptest::option::of("[a-z0-9-]{1,16}"),
        ) -> SensorReading {
            SensorReading { sensor_id, kind, value, unit, timestamp, seq, site, owner_id }
        }
    }

    prop_compose! {
        fn any_alert()(
            alert_id in "[a-f0-9-]{1,36}",
            sensor_id in "[a-z0-9-]{1,24}",
            kind in "[a-z]{1,12}",
            value in -1.0e6f64..1.0e6,
            threshold in -1.0e6f64..1.0e6,
            severity in prop_oneof![Just(Severity::Warning as i32), Just(Severity::Critical as i32)],
            timestamp in any::<i64>(),
            owner_id in proptest::option::of("[a-z0-9-]{1,16}"),
        ) -> Alert {
            Alert { alert_id, sensor_id, kind, value, threshold, severity, timestamp, owner_id }
        }
    }

    prop_compose! {
        fn any_user()(user_id in any::<i32>(), username in ".{0,32}", active in any::<bool>()) -> User {
            User { user_id, username, active }
        }
    }

    fn round_trips<M: WireMessage + PartialEq + fmt::Debug>(
        message: M,
    ) -> Result<(), TestCaseError> {
        let codec = Codec::default();
        for content_type in [ContentType::Json, ContentType::Protobuf] {
            let bytes = codec.encode(&message, content_type).unwrap();
            let back: M = codec.decode(&bytes, content_type).unwrap();
            prop_assert_eq!(&back, &message);
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn readings_round_trip(message in any_reading()) {
            round_trips(message)?;
        }

        #[test]
        fn alerts_round_trip(message in any_alert()) {
            round_trips(message)?;
        }

        #[test]
        fn users_round_trip(message in any_user()) {
            round_trips(message)?;
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let codec = Codec::default();
            for content_type in [ContentType::Json, ContentType::Protobuf] {
                let _ = codec.decode::<SensorReading>(&bytes, content_type);
                let _ = codec.decode::<Alert>(&bytes, content_type);
                let _ = codec.decode::<User>(&bytes, content_type);
            }
        }
    }
}
