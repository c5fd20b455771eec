//! Failures: a transient one is retried through the delay tiers, a poison
//! task reaches the DLQ after `max_attempts` with the delays respected,
//! unknown kinds and bodies that do not decode go to the DLQ at once, and a
//! panicking handler costs only its own task.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use common::codec::ContentType;
use lapin::{
    BasicProperties,
    options::{BasicPublishOptions, ConfirmSelectOptions},
    types::AMQPValue,
};
use serde_json::json;
use task_worker::events::TaskOutcome;
use workqueue::{task::Task, topology::headers};

use crate::helpers::{
    self, Flaky, TestQueues, TestWorker, WAIT, done_ids, header, header_text, publish_all,
    sleep_task, task,
};

#[tokio::test]
async fn a_transient_failure_is_retried_then_succeeds() {
    // Arrange
    let queues = TestQueues::new().await;
    let mut worker =
        TestWorker::start_with(queues.config(), vec![("flaky", Arc::new(Flaky::new(2)))]).await;
    let flaky = task("flaky", json!({}));

    // Act
    publish_all(&queues, std::slice::from_ref(&flaky), ContentType::Json).await;
    let events = worker
        .collect_until(WAIT, |e| !done_ids(e).is_empty())
        .await;

    // Assert
    let outcomes: Vec<(u32, &TaskOutcome)> =
        events.iter().map(|e| (e.attempt, &e.outcome)).collect();
    assert_eq!(outcomes.len(), 3, "{outcomes:?}");
    assert!(
        matches!(outcomes[0], (1, TaskOutcome::Retried { .. })),
        "{outcomes:?}"
    );
    assert!(
        matches!(outcomes[1], (2, TaskOutcome::Retried { .. })),
        "{outcomes:?}"
    );
    assert_eq!(outcomes[2], (3, &TaskOutcome::Done));
    assert_eq!(queues.amqp.depth(&queues.dlq()).await, 0);
    worker.stop().await;
}

#[tokio::test]
async fn a_poison_task_is_dead_lettered_after_max_attempts_with_the_delays_respected() {
    // Arrange: 3 attempts, retries after 300 ms then 600 ms.
    let queues = TestQueues::on(&helpers::amqp_url(), 3, Duration::from_millis(300)).await;
    let mut worker = TestWorker::start_with(
        queues.config(),
        vec![("flaky", Arc::new(Flaky::new(u32::MAX)))],
    )
    .await;
    let poison = task("flaky", json!({"n": 1}));

    // Act
    publish_all(&queues, std::slice::from_ref(&poison), ContentType::Json).await;
    let events = worker.collect_until(WAIT, |e| e.len() == 3).await;

    // Assert
    let times: Vec<_> = events.iter().map(|e| e.received_at).collect();
    let outcomes: Vec<TaskOutcome> = events.into_iter().map(|e| e.outcome).collect();
    assert_eq!(outcomes.len(), 3, "{outcomes:?}");
    assert!(
        matches!(outcomes[0], TaskOutcome::Retried { delay } if delay == Duration::from_millis(300))
    );
    assert!(
        matches!(outcomes[1], TaskOutcome::Retried { delay } if delay == Duration::from_millis(600))
    );
    assert_eq!(
        outcomes[2],
        TaskOutcome::DeadLettered {
            reason: "max_attempts".into()
        }
    );
    assert!(
        times[1] - times[0] >= Duration::from_millis(300),
        "first retry too early"
    );
    assert!(
        times[2] - times[1] >= Duration::from_millis(600),
        "second retry too early"
    );
    queues.wait_for_depth(&queues.dlq(), 1).await;
    let letter = queues.amqp.get(&queues.dlq()).await.unwrap();
    let properties = &letter.delivery.properties;
    assert_eq!(header_text(properties, headers::REASON), "max_attempts");
    assert!(header_text(properties, headers::ERROR).contains("planned failure 3"));
    assert_eq!(
        header(properties, headers::ATTEMPTS),
        Some(&AMQPValue::LongInt(3))
    );
    assert!(matches!(
        header(properties, headers::DEAD_LETTERED_AT),
        Some(AMQPValue::LongLongInt(ms)) if *ms > 0
    ));
    let body: Task = serde_json::from_slice(&letter.delivery.data).unwrap();
    assert_eq!(body.id, poison.id, "the original body, untouched");
    worker.stop().await;
}

#[tokio::test]
async fn unknown_kinds_undecodable_and_oversize_bodies_go_to_the_dlq_at_once() {
    // Arrange
    let queues = TestQueues::new().await;
    let mut worker = TestWorker::start(queues.config()).await;
    let unknown = task("teleport", json!({"to": "mars"}));
    let channel = queues.amqp.connection.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();

    // Act
    publish_all(
        &queues,
        std::slice::from_ref(&unknown),
        ContentType::Protobuf,
    )
    .await;
    channel
        .basic_publish(
            "".into(),
            queues.queue.as_str().into(),
            BasicPublishOptions::default(),
            b"temperature=25.3",
            BasicProperties::default().with_message_id("garbage-1".into()),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    channel
        .basic_publish(
            "".into(),
            queues.queue.as_str().into(),
            BasicPublishOptions::default(),
            &vec![b'{'; 2 * 1024 * 1024],
            BasicProperties::default().with_message_id("oversize-1".into()),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let events = worker.collect_until(WAIT, |e| e.len() == 3).await;

    // Assert
    let reasons: HashMap<String, (u32, TaskOutcome)> = events
        .into_iter()
        .map(|e| (e.task_id, (e.attempt, e.outcome)))
        .collect();
    assert_eq!(
        reasons[&unknown.id],
        (
            1,
            TaskOutcome::DeadLettered {
                reason: "unknown_kind".into()
            }
        )
    );
    assert_eq!(
        reasons["garbage-1"],
        (
            1,
            TaskOutcome::DeadLettered {
                reason: "invalid_json".into()
            }
        )
    );
    assert_eq!(
        reasons["oversize-1"],
        (
            1,
            TaskOutcome::DeadLettered {
                reason: "too_large".into()
            }
        )
    );
    queues.wait_for_depth(&queues.dlq(), 3).await;
    let mut dlq_reasons = HashSet::new();
    while let Some(letter) = queues.amqp.get(&queues.dlq()).await {
        dlq_reasons.insert(header_text(&letter.delivery.properties, headers::REASON));
    }
    assert_eq!(
        dlq_reasons,
        HashSet::from([
            "unknown_kind".into(),
            "invalid_json".into(),
            "too_large".into()
        ])
    );
    worker.stop().await;
}

#[tokio::test]
async fn a_task_over_max_message_bytes_is_dead_lettered_unread_and_the_next_one_runs() {
    // Arrange: a sleep task that would run, padded over the worker's limit.
    let queues = TestQueues::new().await;
    let config = task_worker::Config {
        max_message_bytes: 2048,
        ..queues.config()
    };
    let mut worker = TestWorker::start(config).await;
    let big = task("sleep", json!({"ms": 1, "note": "x".repeat(4096)}));
    let after = sleep_task(1);

    // Act
    publish_all(&queues, &[big.clone(), after.clone()], ContentType::Json).await;
    let events = worker.collect_until(WAIT, |e| e.len() == 2).await;

    // Assert: dead-lettered at once as too_large (so never redelivered), and
    // the next task done.
    let outcomes: HashMap<String, (u32, TaskOutcome)> = events
        .into_iter()
        .map(|e| (e.task_id, (e.attempt, e.outcome)))
        .collect();
    assert_eq!(
        outcomes[&big.id],
        (
            1,
            TaskOutcome::DeadLettered {
                reason: "too_large".into()
            }
        )
    );
    assert_eq!(outcomes[&after.id], (1, TaskOutcome::Done));
    queues.wait_for_depth(&queues.dlq(), 1).await;
    let letter = queues.amqp.get(&queues.dlq()).await.unwrap();
    let properties = &letter.delivery.properties;
    assert_eq!(header_text(properties, headers::REASON), "too_large");
    assert!(
        header_text(properties, headers::ERROR).contains("exceeds the limit of 2048 bytes"),
        "{properties:?}"
    );
    let body: Task = serde_json::from_slice(&letter.delivery.data).unwrap();
    assert_eq!(body, big, "the original body, untouched");
    assert_eq!(
        queues.amqp.depth(&queues.queue).await,
        0,
        "nothing redelivered"
    );
    let metrics = helpers::ops_get(worker.ops_addr, "/metrics").await;
    assert!(
        metrics.contains(r#"messages_rejected_total{reason="too_large"}"#),
        "{metrics}"
    );
    worker.stop().await;
}

#[tokio::test]
async fn a_panicking_handler_dead_letters_its_task_and_the_worker_goes_on() {
    // Arrange
    let queues = TestQueues::new().await;
    let mut worker =
        TestWorker::start_with(queues.config(), vec![("buggy", Arc::new(helpers::Panics))]).await;
    let buggy = task("buggy", json!({}));
    let after = sleep_task(1);

    // Act
    publish_all(&queues, &[buggy.clone(), after.clone()], ContentType::Json).await;
    let events = worker.collect_until(WAIT, |e| e.len() == 2).await;

    // Assert
    let outcomes: HashMap<String, TaskOutcome> =
        events.into_iter().map(|e| (e.task_id, e.outcome)).collect();
    assert_eq!(
        outcomes[&buggy.id],
        TaskOutcome::DeadLettered {
            reason: "handler_panicked".into()
        }
    );
    assert_eq!(
        outcomes[&after.id],
        TaskOutcome::Done,
        "the consumer survived"
    );
    worker.stop().await;
}
