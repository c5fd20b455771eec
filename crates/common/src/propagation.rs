//! W3C Trace Context (`traceparent`, `tracestate`) across the three transports.
//!
//! One trace runs from a sensor reading to the notification it caused, so
//! the context must ride along in NATS message headers, AMQP message headers
//! and gRPC metadata. Each transport gets a small carrier type implementing
//! OpenTelemetry's [`Injector`] / [`Extractor`]; the `inject_*` functions
//! write the current `tracing` span's context and the `extract_*` functions
//! return a [`Context`] to hand to [`set_parent`].
//!
//! The W3C propagator is used directly rather than through the global one, so
//! the headers are written even in a process that never configured OpenTelemetry
//! (an external client still gets a valid `traceparent` to continue from).

use lapin::types::{AMQPValue, FieldTable, LongString};
use opentelemetry::{
    Context,
    propagation::{Extractor, Injector, TextMapPropagator},
    trace::TraceContextExt,
};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tonic::metadata::{KeyRef, MetadataKey, MetadataMap, MetadataValue};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The `traceparent` header name.
pub const TRACEPARENT: &str = "traceparent";

/// The OpenTelemetry context of the current `tracing` span.
pub fn current_context() -> Context {
    tracing::Span::current().context()
}

/// The trace id of a context as 32 hex digits (`000…0` when there is none).
pub fn trace_id(cx: &Context) -> String {
    cx.span().span_context().trace_id().to_string()
}

/// Makes `cx` the parent of `span`, so the span joins the remote trace.
pub fn set_parent(span: &tracing::Span, cx: Context) {
    if let Err(error) = span.set_parent(cx) {
        tracing::debug!(?error, "cannot set the parent of a span");
    }
}

/// Writes `cx` into any carrier.
pub fn inject(cx: &Context, carrier: &mut dyn Injector) {
    TraceContextPropagator::new().inject_context(cx, carrier);
}

/// Reads a context from any carrier; an empty context when there is none or
/// it is malformed (a bad header never fails a message).
pub fn extract(carrier: &dyn Extractor) -> Context {
    TraceContextPropagator::new().extract(carrier)
}

/// NATS message headers as a carrier.
#[derive(Debug)]
pub struct NatsHeaders<'a>(pub &'a mut async_nats::HeaderMap);

impl Injector for NatsHeaders<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key, value.as_str());
    }
}

/// Read-only NATS message headers as a carrier.
#[derive(Debug)]
pub struct NatsHeadersRef<'a>(pub &'a async_nats::HeaderMap);

impl Extractor for NatsHeadersRef<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|value| value.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(name, _)| name.as_ref()).collect()
    }
}

/// Writes the current span's context into NATS headers.
pub fn inject_nats(headers: &mut async_nats::HeaderMap) {
    inject(&current_context(), &mut NatsHeaders(headers));
}

/// Like [`inject_nats`], but only when the current span is part of a trace;
/// returns whether it wrote. Cheaper than running the propagator for nothing
/// and then looking the header up, on a path taken once per message.
pub fn inject_nats_if_traced(headers: &mut async_nats::HeaderMap) -> bool {
    let cx = current_context();
    if !cx.span().span_context().is_valid() {
        return false;
    }
    inject(&cx, &mut NatsHeaders(headers));
    true
}

/// Reads a context from NATS headers (messages without headers have none).
pub fn extract_nats(headers: Option<&async_nats::HeaderMap>) -> Context {
    match headers {
        Some(headers) => extract(&NatsHeadersRef(headers)),
        None => Context::new(),
    }
}

/// AMQP message headers (a [`FieldTable`]) as a carrier.
#[derive(Debug)]
pub struct AmqpHeaders<'a>(pub &'a mut FieldTable);

impl Injector for AmqpHeaders<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0
            .insert(key.into(), AMQPValue::LongString(LongString::from(value)));
    }
}

/// Read-only AMQP message headers as a carrier.
#[derive(Debug)]
pub struct AmqpHeadersRef<'a>(pub &'a FieldTable);

impl Extractor for AmqpHeadersRef<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .inner()
            .iter()
            .find(|(name, _)| name.as_str().eq_ignore_ascii_case(key))
            .and_then(|(_, value)| match value {
                AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok(),
                AMQPValue::ShortString(s) => Some(s.as_str()),
                _ => None,
            })
    }

    fn keys(&self) -> Vec<&str> {
        self.0.inner().keys().map(|name| name.as_str()).collect()
    }
}

/// Writes the current span's context into AMQP headers.
pub fn inject_amqp(headers: &mut FieldTable) {
    inject(&current_context(), &mut AmqpHeaders(headers));
}

/// Reads a context from AMQP headers.
pub fn extract_amqp(headers: Option<&FieldTable>) -> Context {
    match headers {
        Some(headers) => extract(&AmqpHeadersRef(headers)),
        None => Context::new(),
    }
}

/// gRPC metadata as a carrier.
#[derive(Debug)]
pub struct GrpcMetadata<'a>(pub &'a mut MetadataMap);

impl Injector for GrpcMetadata<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (
            MetadataKey::from_bytes(key.as_bytes()),
            MetadataValue::try_from(value.as_str()),
        ) {
            self.0.insert(key, value);
        }
    }
}

/// Read-only gRPC metadata as a carrier.
#[derive(Debug)]
pub struct GrpcMetadataRef<'a>(pub &'a MetadataMap);

impl Extractor for GrpcMetadataRef<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|key| match key {
                KeyRef::Ascii(key) => Some(key.as_str()),
                KeyRef::Binary(_) => None,
            })
            .collect()
    }
}

/// Writes the current span's context into gRPC metadata.
pub fn inject_grpc(metadata: &mut MetadataMap) {
    inject(&current_context(), &mut GrpcMetadata(metadata));
}

/// Reads a context from gRPC metadata.
pub fn extract_grpc(metadata: &MetadataMap) -> Context {
    extract(&GrpcMetadataRef(metadata))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures::StreamExt;
    use lapin::{BasicProperties, Connection, ConnectionProperties, options::*};
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use tracing::Instrument;
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    /// A subscriber that gives every span a real OpenTelemetry span context.
    fn traced() -> tracing::subscriber::DefaultGuard {
        let provider = SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("propagation-test")));
        tracing::subscriber::set_default(subscriber)
    }

    fn nats_url() -> String {
        std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
    }

    fn amqp_url() -> String {
        std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
    }

    #[test]
    fn a_missing_or_malformed_traceparent_gives_an_empty_context() {
        let mut headers = async_nats::HeaderMap::new();
        assert!(
            !extract_nats(Some(&headers))
                .span()
                .span_context()
                .is_valid()
        );
        headers.insert(TRACEPARENT, "not-a-traceparent");
        assert!(
            !extract_nats(Some(&headers))
                .span()
                .span_context()
                .is_valid()
        );
        assert!(!extract_nats(None).span().span_context().is_valid());
    }

    #[test]
    fn grpc_metadata_carries_the_trace() {
        let _guard = traced();
        let span = tracing::info_span!("client call");
        let _entered = span.enter();
        let mut metadata = MetadataMap::new();
        inject_grpc(&mut metadata);
        assert!(metadata.get(TRACEPARENT).is_some());
        assert_eq!(
            trace_id(&extract_grpc(&metadata)),
            trace_id(&current_context())
        );
    }

    #[tokio::test]
    async fn one_trace_id_survives_a_real_nats_and_a_real_rabbitmq_message() {
        let _guard = traced();
        let origin = tracing::info_span!("reading published");
        let origin_trace = trace_id(&origin.context());
        assert_ne!(origin_trace, "00000000000000000000000000000000");

        // Hop 1: NATS.
        let nats = async_nats::connect(nats_url())
            .await
            .expect("local nats-server");
        let subject = format!("test.propagation.{}", uuid::Uuid::new_v4().simple());
        let mut subscription = nats.subscribe(subject.clone()).await.unwrap();
        async {
            let mut headers = async_nats::HeaderMap::new();
            inject_nats(&mut headers);
            nats.publish_with_headers(subject, headers, "reading".into())
                .await
                .unwrap();
            nats.flush().await.unwrap();
        }
        .instrument(origin.clone())
        .await;
        let message = tokio::time::timeout(Duration::from_secs(5), subscription.next())
            .await
            .expect("message within 5s")
            .unwrap();
        let consumer = tracing::info_span!("reading consumed");
        set_parent(&consumer, extract_nats(message.headers.as_ref()));
        assert_eq!(
            trace_id(&consumer.context()),
            origin_trace,
            "trace id after NATS"
        );

        // Hop 2: RabbitMQ, continuing from the NATS consumer's span.
        let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
            .await
            .expect("local rabbitmq");
        let channel = connection.create_channel().await.unwrap();
        let queue = format!("test.propagation.{}", uuid::Uuid::new_v4().simple());
        channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    auto_delete: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        let mut headers = FieldTable::default();
        consumer.in_scope(|| inject_amqp(&mut headers));
        channel
            .basic_publish(
                "".into(),
                queue.as_str().into(),
                BasicPublishOptions::default(),
                b"task",
                BasicProperties::default().with_headers(headers),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        let mut delivered = None;
        for _ in 0..50 {
            if let Some(message) = channel
                .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
                .await
                .unwrap()
            {
                delivered = Some(message);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let delivered = delivered.expect("message on the queue");
        let worker = tracing::info_span!("task handled");
        set_parent(
            &worker,
            extract_amqp(delivered.delivery.properties.headers().as_ref()),
        );
        assert_eq!(
            trace_id(&worker.context()),
            origin_trace,
            "trace id after RabbitMQ"
        );

        channel
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await
            .unwrap();
        connection.close(200, "done".into()).await.unwrap();
    }
}
