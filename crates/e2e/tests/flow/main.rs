//! The flow of docs/ARCHITECTURE.md end to end, with the real binaries on the local brokers:
//! a reading over threshold → alert → notify task → worker → GetUser →
//! notification recorded, under ONE trace id across NATS, RabbitMQ and gRPC,
//! as exported over OTLP.

mod helpers;

use std::time::Duration;

use common::proto::user::v1::CreateUserRequest;
use helpers::{Run, crosses, eventually, metrics_text, services_in};
use user_client::{ClientConfig, UserClient};

const SERVICES: [&str; 4] = [
    "sensor-publisher",
    "alert-subscriber",
    "task-worker",
    "user-service",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_runs_from_a_reading_to_the_notification() {
    // Arrange: the services downstream of the publisher, and the owner.
    let run = Run::new().await;
    let owner = format!("u-e2e-{}", run.id);
    let mut user_service = run.user_service();
    // A busy machine may take seconds to start it: wait for it rather than
    // spend the client's retries on a port nobody listens on yet.
    eventually("user-service serving", Duration::from_secs(60), || async {
        user_service
            .log()
            .contains("database ready, serving")
            .then_some(())
    })
    .await;
    let client = UserClient::connect_lazy(ClientConfig {
        url: run.user_service_url(),
        timeout: Duration::from_secs(20),
        ..ClientConfig::default()
    })
    .unwrap();
    client
        .create_user(CreateUserRequest {
            user_id: owner.clone(),
            name: "Ada Owner".into(),
            age: 36,
            email: "ada@example.com".into(),
        })
        .await
        .expect("user-service answers and creates the owner");
    let mut worker = run.task_worker();
    let mut alerts = run.alert_subscriber();
    // Let the subscriber join its queue group before the first reading.
    eventually(
        "alert-subscriber subscribed",
        Duration::from_secs(30),
        || async { alerts.log().contains("evaluating readings").then_some(()) },
    )
    .await;

    // Act: one sensor publishes readings, every one over the threshold (the
    // first one the subscriber sees raises the alert; hysteresis holds it).
    let mut publisher = run.sensor_publisher(&owner, 20);

    // Assert: the worker recorded a notification...
    eventually(
        "a notification recorded by the worker",
        Duration::from_secs(60),
        || async {
            let text = metrics_text(run.worker_ops_port).await?;
            text.lines()
                .any(|line| line.starts_with("notifications_sent_total") && !line.ends_with(" 0"))
                .then_some(())
        },
    )
    .await;
    // ...and flushed its spans when stopped, like every other service.
    for service in [&mut publisher, &mut alerts, &mut worker, &mut user_service] {
        service.stop(Duration::from_secs(20));
    }
    let spans = run
        .collector
        .wait_for(Duration::from_secs(30), |spans| {
            spans
                .iter()
                .any(|span| services_in(spans, &span.trace_id).len() == SERVICES.len())
        })
        .await
        .unwrap_or_else(|spans| {
            panic!(
                "no trace spans all four services; got {} spans: {spans:#?}\nworker log:\n{}",
                spans.len(),
                worker.log()
            )
        });
    let trace_id = spans
        .iter()
        .map(|span| span.trace_id.clone())
        .find(|trace_id| services_in(&spans, trace_id).len() == SERVICES.len())
        .unwrap();

    let trace: Vec<_> = spans.iter().filter(|s| s.trace_id == trace_id).collect();
    let roots: Vec<_> = trace
        .iter()
        .filter(|s| s.parent_span_id.is_empty())
        .collect();
    assert_eq!(roots.len(), 1, "one root span in the trace: {trace:#?}");
    assert_eq!(
        roots[0].service, "sensor-publisher",
        "the trace starts at the reading"
    );
    for (parent, child) in [
        ("sensor-publisher", "alert-subscriber"),
        ("alert-subscriber", "task-worker"),
        ("task-worker", "user-service"),
    ] {
        assert!(
            crosses(&spans, &trace_id, parent, child),
            "no span of {child} has a parent in {parent}: {trace:#?}"
        );
    }
}
