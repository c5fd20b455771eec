//! One W3C trace from a client call through the service to the data_sync
//! message it caused.

use std::time::Duration;

use common::proto::user::v1::CreateUserRequest;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use user_client::{ClientConfig, UserClient};

use crate::helpers::{Db, TestApp};

/// Gives every span of this test binary a real OpenTelemetry context.
///
/// Installed process-wide, not with `set_default`: a thread-scoped
/// subscriber races with the other tests' threads over tracing's per-callsite
/// interest cache, and the service's spans then sometimes go unrecorded.
fn trace_every_span() {
    static INSTALLED: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    INSTALLED.get_or_init(|| {
        let provider = SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("user-service-test")));
        tracing::subscriber::set_global_default(subscriber)
            .expect("no other global subscriber in this test binary (unset TEST_LOG)");
    });
}

#[tokio::test]
async fn the_callers_trace_reaches_the_data_sync_message() {
    // Arrange: spans with real OpenTelemetry contexts.
    trace_every_span();
    let app = TestApp::spawn(Db::Sqlite).await;
    let client = UserClient::connect_lazy(ClientConfig {
        url: app.grpc_url(),
        ..ClientConfig::default()
    })
    .unwrap();
    let caller = tracing::info_span!("caller");
    let trace_id = common::propagation::trace_id(&caller.context());
    assert_ne!(trace_id, "00000000000000000000000000000000");

    // Act
    client
        .create_user(CreateUserRequest {
            user_id: "u-1001".into(),
            name: "Alice".into(),
            age: 30,
            email: String::new(),
        })
        .instrument(caller)
        .await
        .unwrap();

    // Assert: the event carries the caller's trace id.
    let message = app
        .queue
        .next_message(Duration::from_secs(20))
        .await
        .expect("the event within 20 s");
    let headers = message.delivery.properties.headers().as_ref();
    let carried = common::propagation::extract_amqp(headers);
    assert_eq!(common::propagation::trace_id(&carried), trace_id);
    app.stop().await;
}
