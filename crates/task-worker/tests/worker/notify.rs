//! `notify`: the owner looked up in the real user-service (request-reply
//! inside a worker), an unknown owner dead-lettered at once, and the
//! user-service circuit breaker pausing and resuming consumption.

use std::{collections::HashMap, time::Duration};

use common::{
    circuit_breaker::{BreakerConfig, BreakerState},
    codec::ContentType,
};
use serde_json::json;
use task_worker::events::TaskOutcome;
use workqueue::{task::Task, topology::headers};

use crate::helpers::{
    TestQueues, TestWorker, UserServiceApp, WAIT, done_ids, header_text, ops_get, publish_all, task,
};

#[tokio::test]
async fn notify_looks_the_owner_up_and_dead_letters_an_unknown_one() {
    // Arrange: the real user-service with one user; its data_sync events
    // feed the worker's contact directory.
    let queues = TestQueues::new().await;
    let users = UserServiceApp::start("127.0.0.1:0".parse().unwrap(), &queues).await;
    users
        .create_user("u-notify-1", "Alice", "alice@example.com")
        .await;
    let mut worker = TestWorker::start(task_worker::Config {
        user_service_url: users.url(),
        ..queues.config()
    })
    .await;
    let known = task(
        "notify",
        json!({"owner_id": "u-notify-1", "alert_id": "a-1", "sensor_id": "temp-001",
               "kind": "temperature", "severity": "critical", "value": 41.5, "threshold": 40.0}),
    );
    let unknown = task(
        "notify",
        json!({"owner_id": "u-nobody", "severity": "warning"}),
    );

    // Act
    publish_all(
        &queues,
        &[known.clone(), unknown.clone()],
        ContentType::Protobuf,
    )
    .await;
    let events = worker.collect_until(WAIT, |e| e.len() == 2).await;

    // Assert
    let outcomes: HashMap<String, TaskOutcome> =
        events.into_iter().map(|e| (e.task_id, e.outcome)).collect();
    assert_eq!(outcomes[&known.id], TaskOutcome::Done);
    assert_eq!(
        outcomes[&unknown.id],
        TaskOutcome::DeadLettered {
            reason: "not_found".into()
        },
        "a missing owner is permanent, not a retry loop"
    );
    let letter = queues.amqp.get(&queues.dlq()).await.expect("dead letter");
    assert_eq!(
        header_text(&letter.delivery.properties, headers::REASON),
        "not_found"
    );
    let metrics = ops_get(worker.ops_addr, "/metrics").await;
    assert!(
        metrics.contains(r#"notifications_sent_total{severity="critical"}"#),
        "{metrics}"
    );
    let contacts = testkit::eventually("alice in /contacts", WAIT, || async {
        let contacts = ops_get(worker.ops_addr, "/contacts").await;
        contacts.contains("alice@example.com").then_some(contacts)
    })
    .await;
    assert!(
        contacts.contains("u-notify-1"),
        "user_created reached the directory: {contacts}"
    );
    worker.stop().await;
    users.stop().await;
}

#[tokio::test]
async fn an_open_breaker_pauses_consumption_and_half_open_resumes_it() {
    // Arrange: the worker points at a user-service address where nothing
    // listens yet; its breaker opens after two failed lookups.
    let queues = TestQueues::new().await;
    let user_service_addr = testkit::free_addr();
    let config = task_worker::Config {
        user_service_url: format!("http://{user_service_addr}"),
        user_service_timeout: Duration::from_millis(500),
        user_service_breaker: BreakerConfig {
            failure_threshold: 2,
            window: Duration::from_secs(30),
            open_duration: Duration::from_secs(2),
            half_open_probes: 1,
            half_open_successes: 1,
        },
        max_attempts: 50,
        ..queues.config()
    };
    let worker = task_worker::Application::build(config).await.unwrap();
    let breaker = worker.breaker().expect("notify has a breaker");
    let mut worker = TestWorker::run(worker);
    let tasks: Vec<Task> = (0..3)
        .map(|i| task("notify", json!({"owner_id": "u-breaker-1", "alert_id": format!("a-{i}"), "severity": "warning"})))
        .collect();

    // Act 1: user-service is down.
    publish_all(&queues, &tasks, ContentType::Json).await;
    let opened = tokio::time::timeout(WAIT, async {
        let mut state = breaker.subscribe();
        state.wait_for(|s| *s == BreakerState::Open).await.is_ok()
    })
    .await;

    // Assert 1: open breaker, no consumer on the work queue (consumption
    // paused while the breaker is open).
    assert_eq!(opened, Ok(true), "the breaker opened");
    queues.wait_for_consumers(&queues.queue, 0).await;

    // Act 2: user-service comes up at that address, with the owner already
    // there (a half-open probe may call it the moment it listens).
    let users = UserServiceApp::start_with_user(
        user_service_addr,
        &queues,
        ("u-breaker-1", "Bob", "bob@example.com"),
    )
    .await;
    let events = worker
        .collect_until(Duration::from_secs(60), |e| done_ids(e).len() == 3)
        .await;

    // Assert 2: resumed at half-open, the probe closed the breaker, all done,
    // and nothing burned its attempts into the DLQ.
    assert_eq!(done_ids(&events).len(), 3, "{events:?}");
    assert_eq!(breaker.state(), BreakerState::Closed);
    queues.wait_for_consumers(&queues.queue, 1).await;
    assert!(
        events
            .iter()
            .all(|e| !matches!(e.outcome, TaskOutcome::DeadLettered { .. })),
        "{events:?}"
    );
    assert_eq!(queues.amqp.depth(&queues.dlq()).await, 0);
    worker.stop().await;
    users.stop().await;
}
