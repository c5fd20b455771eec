//! Where a finished delivery goes: a retry tier or the dead-letter queue.
//!
//! Both are a confirmed re-publish of the original body and properties with
//! headers added, followed by an ack of the original. The order matters: if
//! the worker dies between the two, the task exists twice (once redelivered,
//! once in the tier), which idempotency absorbs; the other order could lose it.

use common::clock::now_millis;
use lapin::{
    BasicProperties, Channel, Confirmation,
    options::BasicPublishOptions,
    types::{AMQPValue, FieldTable, LongString, ShortString},
};
use workqueue::topology::headers;

/// The longest error text written into a DLQ header.
const MAX_ERROR_HEADER: usize = 1024;

/// Why a re-publish failed.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// The channel or connection failed.
    #[error("re-publish failed: {0}")]
    Amqp(#[from] lapin::Error),
    /// The broker refused the message.
    #[error("the broker nacked the re-published message")]
    Nacked,
}

/// Failed deliveries so far, from the `x-attempts` header (0 when absent or
/// not a number, as on a fresh task from a plain client). A count beyond any
/// real one (a stranger's header) stops one short of `u32::MAX`, so the next
/// attempt's number (`attempts + 1`) still fits.
pub fn attempts(properties: &BasicProperties) -> u32 {
    let Some(value) = properties
        .headers()
        .as_ref()
        .and_then(|headers| headers.inner().get(headers::ATTEMPTS))
    else {
        return 0;
    };
    let attempts: i128 = match value {
        AMQPValue::ShortShortInt(v) => (*v).into(),
        AMQPValue::ShortShortUInt(v) => (*v).into(),
        AMQPValue::ShortInt(v) => (*v).into(),
        AMQPValue::ShortUInt(v) => (*v).into(),
        AMQPValue::LongInt(v) => (*v).into(),
        AMQPValue::LongUInt(v) => (*v).into(),
        AMQPValue::LongLongInt(v) => (*v).into(),
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes())
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0),
        _ => 0,
    };
    u32::try_from(attempts.clamp(0, i128::from(u32::MAX - 1))).unwrap_or(u32::MAX - 1)
}

/// The content type of a delivery: the AMQP property, else a `Content-Type`
/// header, else none (which the codec reads as JSON).
pub fn content_type(properties: &BasicProperties) -> Option<&str> {
    if let Some(content_type) = properties.content_type() {
        return Some(content_type.as_str());
    }
    properties
        .headers()
        .as_ref()
        .and_then(|headers| {
            headers.inner().iter().find(|(name, _)| {
                name.as_str()
                    .eq_ignore_ascii_case(common::codec::CONTENT_TYPE_HEADER)
            })
        })
        .and_then(|(_, value)| match value {
            AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok(),
            AMQPValue::ShortString(s) => Some(s.as_str()),
            _ => None,
        })
}

/// Sends the message to a retry tier with `x-attempts = failures`.
pub async fn to_retry_tier(
    channel: &Channel,
    tier: &str,
    body: &[u8],
    properties: &BasicProperties,
    failures: u32,
) -> Result<(), RouteError> {
    let mut table = headers_of(properties);
    table.insert(
        headers::ATTEMPTS.into(),
        AMQPValue::LongInt(clamp(failures)),
    );
    publish(channel, tier, body, properties.clone().with_headers(table)).await
}

/// What a dead-lettered message says about itself.
#[derive(Debug, Clone, Copy)]
pub struct DeadLetter<'a> {
    /// Short label: `max_attempts`, `unknown_kind`, `not_found`, a codec reason...
    pub reason: &'a str,
    /// The last error.
    pub error: &'a str,
    /// Failed deliveries, this one included.
    pub attempts: u32,
    /// The queue the message was taken from.
    pub original_queue: &'a str,
}

/// Sends the message to `dlq` with headers naming the reason, the error,
/// the attempts and the time.
pub async fn to_dead_letter_queue(
    channel: &Channel,
    dlq: &str,
    body: &[u8],
    properties: &BasicProperties,
    letter: DeadLetter<'_>,
) -> Result<(), RouteError> {
    let mut table = headers_of(properties);
    let text = |value: &str| AMQPValue::LongString(LongString::from(value));
    table.insert(headers::REASON.into(), text(letter.reason));
    let error: String = letter.error.chars().take(MAX_ERROR_HEADER).collect();
    table.insert(headers::ERROR.into(), text(&error));
    table.insert(
        headers::ATTEMPTS.into(),
        AMQPValue::LongInt(clamp(letter.attempts)),
    );
    table.insert(
        headers::DEAD_LETTERED_AT.into(),
        AMQPValue::LongLongInt(now_millis()),
    );
    table.insert(headers::ORIGINAL_QUEUE.into(), text(letter.original_queue));
    // Persistent even if the original was not: the DLQ is for inspection later.
    let properties = properties.clone().with_headers(table).with_delivery_mode(2);
    publish(channel, dlq, body, properties).await
}

fn headers_of(properties: &BasicProperties) -> FieldTable {
    properties.headers().clone().unwrap_or_default()
}

fn clamp(value: u32) -> i32 {
    i32::try_from(value).unwrap_or(i32::MAX)
}

async fn publish(
    channel: &Channel,
    queue: &str,
    body: &[u8],
    properties: BasicProperties,
) -> Result<(), RouteError> {
    let confirmation = channel
        .basic_publish(
            ShortString::from(""),
            ShortString::from(queue),
            BasicPublishOptions::default(),
            body,
            properties,
        )
        .await?
        .await?;
    match confirmation {
        Confirmation::Ack(_) | Confirmation::NotRequested => Ok(()),
        Confirmation::Nack(_) => Err(RouteError::Nacked),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_header(name: &str, value: AMQPValue) -> BasicProperties {
        let mut table = FieldTable::default();
        table.insert(name.into(), value);
        BasicProperties::default().with_headers(table)
    }

    #[test]
    fn an_absurd_attempt_count_leaves_room_for_the_next_attempt() {
        for value in [
            AMQPValue::LongUInt(u32::MAX),
            AMQPValue::LongLongInt(i64::MAX),
            AMQPValue::LongString("99999999999".into()),
        ] {
            let read = attempts(&with_header(headers::ATTEMPTS, value));
            assert_eq!(read, u32::MAX - 1);
            assert!(read.checked_add(1).is_some());
        }
    }

    #[test]
    fn attempts_read_any_integer_type_and_default_to_zero() {
        assert_eq!(attempts(&BasicProperties::default()), 0);
        assert_eq!(
            attempts(&with_header(headers::ATTEMPTS, AMQPValue::LongInt(3))),
            3
        );
        assert_eq!(
            attempts(&with_header(headers::ATTEMPTS, AMQPValue::LongLongInt(7))),
            7
        );
        assert_eq!(
            attempts(&with_header(
                headers::ATTEMPTS,
                AMQPValue::LongString(LongString::from("2"))
            )),
            2
        );
        assert_eq!(
            attempts(&with_header(headers::ATTEMPTS, AMQPValue::LongInt(-4))),
            0
        );
        assert_eq!(
            attempts(&with_header(headers::ATTEMPTS, AMQPValue::Boolean(true))),
            0
        );
    }

    #[test]
    fn content_type_prefers_the_property_then_the_header() {
        assert_eq!(content_type(&BasicProperties::default()), None);
        let header = with_header(
            "content-type",
            AMQPValue::LongString(LongString::from("application/protobuf")),
        );
        assert_eq!(content_type(&header), Some("application/protobuf"));
        let both = header.with_content_type("application/json".into());
        assert_eq!(content_type(&both), Some("application/json"));
    }
}
