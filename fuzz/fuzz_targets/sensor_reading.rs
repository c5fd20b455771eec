//! A `SensorReading` from NATS: `common::nats::decode_reading`, the codec
//! chosen by the `Content-Type` header (none, JSON, Protobuf or whatever a
//! stranger wrote), exactly as monitor- and alert-subscriber decode it.
//!
//! Input: byte 0 picks the header (0 none, 1 `application/json`, 2
//! `application/protobuf`, 3 the text up to the first `\n` of the rest);
//! the remaining bytes are the payload.
//!
//! Beyond "never panics", two properties a stranger's bytes must not break:
//! decoding into a reused reading (the subscribers' allocation-free path)
//! gives what a fresh decode gives, so nothing of the previous message
//! lingers; and an accepted reading survives an encode/decode round trip in
//! both encodings.

#![no_main]

use async_nats::{HeaderMap, HeaderValue};
use common::{
    codec::{Codec, ContentType},
    nats::{CONTENT_TYPE, decode_reading, decode_reading_into},
    proto::sensor::v1::SensorReading,
};
use libfuzzer_sys::fuzz_target;

/// What a previous message might have left behind in a reused reading.
fn stale_reading() -> SensorReading {
    SensorReading {
        sensor_id: "stale-sensor".into(),
        kind: "stale-kind".into(),
        value: 99.5,
        unit: "stale-unit".into(),
        timestamp: 42,
        seq: 7,
        site: Some("stale-site".into()),
        owner_id: Some("stale-owner".into()),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let (header, payload): (Option<&str>, &[u8]) = match selector % 4 {
        0 => (None, rest),
        1 => (Some("application/json"), rest),
        2 => (Some("application/protobuf"), rest),
        _ => {
            let end = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
            let Ok(text) = std::str::from_utf8(&rest[..end]) else {
                return;
            };
            (Some(text), rest.get(end + 1..).unwrap_or_default())
        }
    };
    let headers = match header {
        None => None,
        Some(text) => {
            // A value the NATS client itself refuses (CR, LF) never arrives.
            let Ok(value) = text.parse::<HeaderValue>() else {
                return;
            };
            let mut headers = HeaderMap::new();
            headers.insert(CONTENT_TYPE, value);
            Some(headers)
        }
    };
    // A small limit too, so the size check is reached by short inputs.
    for codec in [Codec::default(), Codec::new(64)] {
        let fresh = decode_reading(&codec, payload, headers.as_ref());
        let mut reused = stale_reading();
        let again = decode_reading_into(&codec, payload, headers.as_ref(), &mut reused);
        assert_eq!(
            fresh.is_ok(),
            again.is_ok(),
            "reused decode disagrees: {fresh:?} vs {again:?}"
        );
        let Ok(reading) = fresh else {
            continue;
        };
        assert_eq!(reading, reused, "a reused reading kept stale fields");
        for content_type in [ContentType::Json, ContentType::Protobuf] {
            let bytes = Codec::default()
                .encode(&reading, content_type)
                .expect("an accepted reading encodes");
            let back: SensorReading = Codec::default()
                .decode(&bytes, content_type)
                .expect("an encoded reading decodes");
            assert_eq!(
                back, reading,
                "{content_type} round trip changed the reading"
            );
        }
    }
});
