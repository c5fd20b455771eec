//! The work-queue `Task` envelope as the worker receives it from RabbitMQ:
//! `Codec::decode_with_header::<workqueue::task::Task>`, JSON or Protobuf
//! (whose `payload_json` is JSON again) by the `Content-Type` header.
//!
//! Input: byte 0 picks the header (0 none, 1 `application/json`, 2
//! `application/protobuf`, 3 the text up to the first `\n` of the rest);
//! the remaining bytes are the body.
//!
//! An accepted task must survive an encode/decode round trip in both
//! encodings: the producer and the retry tiers re-encode what they received.

#![no_main]

use common::codec::{Codec, ContentType};
use libfuzzer_sys::fuzz_target;
use workqueue::task::Task;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let (header, body): (Option<&str>, &[u8]) = match selector % 4 {
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
    let codec = Codec::default();
    let Ok(task) = codec.decode_with_header::<Task>(body, header) else {
        return;
    };
    for content_type in [ContentType::Json, ContentType::Protobuf] {
        let bytes = codec
            .encode(&task, content_type)
            .expect("an accepted task encodes");
        let back: Task = codec
            .decode(&bytes, content_type)
            .expect("an encoded task decodes");
        assert_eq!(back, task, "{content_type} round trip changed the task");
    }
});
