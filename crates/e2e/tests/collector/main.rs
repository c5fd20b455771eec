//! The in-test OTLP collector receives what a real OTLP exporter sends: the
//! service name, and parent links that chain spans into one trace.

use std::time::Duration;

use e2e::collector::OtlpCollector;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::{Resource, trace::SdkTracerProvider};
use tracing_subscriber::layer::SubscriberExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exported_spans_arrive_with_service_name_and_parent_links() {
    // Arrange
    let collector = OtlpCollector::start().await.unwrap();
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(collector.endpoint())
        .build()
        .unwrap();
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            Resource::builder()
                .with_service_name("collector-test")
                .build(),
        )
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("collector-test")));

    // Act
    tracing::subscriber::with_default(subscriber, || {
        let parent = tracing::info_span!("parent");
        parent.in_scope(|| tracing::info_span!("child").in_scope(|| {}));
    });
    tokio::task::spawn_blocking(move || provider.shutdown())
        .await
        .unwrap()
        .unwrap();

    // Assert
    let spans = collector
        .wait_for(Duration::from_secs(10), |spans| spans.len() >= 2)
        .await
        .unwrap_or_else(|spans| panic!("expected 2 spans, got {spans:?}"));
    let parent = spans.iter().find(|s| s.name == "parent").unwrap();
    let child = spans.iter().find(|s| s.name == "child").unwrap();
    assert_eq!(parent.service, "collector-test");
    assert_eq!(child.trace_id, parent.trace_id);
    assert_eq!(child.parent_span_id, parent.span_id);
    assert!(parent.parent_span_id.is_empty());
    assert_eq!(parent.trace_id.len(), 32);
}
