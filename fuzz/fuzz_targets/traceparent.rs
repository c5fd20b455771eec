//! W3C `traceparent` / `tracestate` headers through
//! `common::propagation::extract_*`, on all three transports a stranger's
//! message arrives by: NATS headers, AMQP headers (any bytes, a long string)
//! and gRPC metadata.
//!
//! Input: the text up to the first `\n` is `traceparent`, the rest
//! `tracestate`.
//!
//! A bad header must only ever give an empty context; a context the
//! extractor accepts must carry a valid, non-zero trace id, and the same
//! headers must mean the same trace on every transport (on gRPC, where only
//! visible-ASCII metadata reads as text, when the value is visible ASCII).
//!
//! Found on the way: opentelemetry_sdk's propagator does not check the field
//! lengths, so `00-1-2-01` is accepted as trace `000…01`, span `000…02`
//! (seed `lenient-short-ids`); harmless, since any id is the sender's choice.

#![no_main]

use async_nats::{HeaderMap, HeaderValue};
use common::propagation::{TRACEPARENT, extract_amqp, extract_grpc, extract_nats, trace_id};
use lapin::types::{AMQPValue, FieldTable, LongString};
use libfuzzer_sys::fuzz_target;
use opentelemetry::{Context, trace::TraceContextExt};
use tonic::metadata::{MetadataMap, MetadataValue};

const TRACESTATE: &str = "tracestate";

/// The trace id, or `None` for an empty context.
fn trace(cx: &Context) -> Option<String> {
    let span = cx.span();
    let context = span.span_context();
    if !context.is_valid() {
        return None;
    }
    let id = trace_id(cx);
    assert_eq!(id.len(), 32, "trace id {id:?} is not 32 hex digits");
    assert_ne!(id, "0".repeat(32), "a valid context with the zero trace id");
    Some(id)
}

fuzz_target!(|data: &[u8]| {
    let end = data.iter().position(|&b| b == b'\n').unwrap_or(data.len());
    let (parent, state) = (&data[..end], data.get(end + 1..).unwrap_or_default());

    // AMQP: header values are arbitrary bytes.
    let mut table = FieldTable::default();
    table.insert(
        TRACEPARENT.into(),
        AMQPValue::LongString(LongString::from(parent.to_vec())),
    );
    table.insert(
        TRACESTATE.into(),
        AMQPValue::LongString(LongString::from(state.to_vec())),
    );
    let amqp = trace(&extract_amqp(Some(&table)));

    let Ok(parent) = std::str::from_utf8(parent) else {
        assert_eq!(amqp, None, "non-UTF-8 traceparent accepted");
        return;
    };
    // A non-UTF-8 tracestate is dropped on AMQP only; nothing to compare.
    let Ok(state) = std::str::from_utf8(state) else {
        return;
    };

    // NATS: the client refuses CR and LF in values, so those never arrive.
    if let (Ok(p), Ok(s)) = (parent.parse::<HeaderValue>(), state.parse::<HeaderValue>()) {
        let mut headers = HeaderMap::new();
        headers.insert(TRACEPARENT, p);
        headers.insert(TRACESTATE, s);
        let nats = trace(&extract_nats(Some(&headers)));
        assert_eq!(nats, amqp, "NATS and AMQP disagree on {parent:?}");
    }

    // gRPC: metadata values are HTTP/2 header values (no control characters).
    if let (Ok(p), Ok(s)) = (
        MetadataValue::try_from(parent),
        MetadataValue::try_from(state),
    ) {
        let mut metadata = MetadataMap::new();
        metadata.insert(TRACEPARENT, p);
        metadata.insert(TRACESTATE, s);
        let grpc = trace(&extract_grpc(&metadata));
        // gRPC metadata reads as text only when it is visible ASCII (a
        // valid traceparent always is); other values are no context there.
        let visible = |text: &str| {
            text.bytes()
                .all(|b| b == b'\t' || (b' '..=b'~').contains(&b))
        };
        if visible(parent) {
            assert_eq!(grpc, amqp, "gRPC and AMQP disagree on {parent:?}");
        } else {
            assert_eq!(grpc, None, "gRPC read a non-ASCII traceparent");
        }
    }
});
