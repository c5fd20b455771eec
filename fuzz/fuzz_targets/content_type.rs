//! Content-type parsing: `ContentType::from_header` (the `Content-Type`
//! header of every NATS and AMQP message) and `ContentType::from_str` (config
//! values such as `task_content_type`).
//!
//! Input: the whole input as text. Whatever parses must print back to a
//! MIME type and a name that parse to the same codec, and a rejection must
//! say so in a bounded message (the header is echoed into logs and the DLQ).

#![no_main]

use common::codec::ContentType;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match ContentType::from_header(Some(text)) {
        Ok(content_type) => {
            assert_eq!(
                ContentType::from_header(Some(content_type.mime())).ok(),
                Some(content_type)
            );
            assert_eq!(
                content_type.to_string().parse::<ContentType>().ok(),
                Some(content_type)
            );
            // A header that parses is a config value that parses.
            assert_eq!(text.parse::<ContentType>().ok(), Some(content_type));
        }
        Err(error) => {
            assert_eq!(error.reason(), "unsupported_content_type");
            // At most 64 characters of the value, each escaped to at most 10 bytes.
            assert!(
                error.to_string().len() < 64 * 10 + 64,
                "unbounded error text"
            );
        }
    }
    match text.parse::<ContentType>() {
        Ok(content_type) => {
            assert_eq!(
                content_type.to_string().parse::<ContentType>().ok(),
                Some(content_type)
            );
        }
        Err(error) => assert_eq!(error.reason(), "unsupported_content_type"),
    }
});
