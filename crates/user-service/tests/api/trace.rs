//! One W3C trace from a client call through the service to the data_sync
//! message it caused.

use std::time::Duration;

use common::proto::user::v1::CreateUserRequest;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use user_service::client::{ClientConfig, UserClient};

use crate::helpers::{Db, TestApp};

// A current-thread runtime: the subscriber set for this thread also sees
// the spans of the in-process service.
#[tokio::test]
async fn the_callers_trace_reaches_the_data_sync_message() {
    // Arrange: spans with real OpenTelemetry contexts.
    let provider = SdkTracerProvider::builder().build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("user-service-test")));
    let _guard = tracing::subscriber::set_default(subscriber);
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
