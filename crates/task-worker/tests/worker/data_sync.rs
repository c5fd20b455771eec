//! `data_sync`: user events keep the contact directory current, applied
//! idempotently, and a bad event (undecodable, or over `max_message_bytes`)
//! is parked in the queue's DLQ.

use lapin::{
    BasicProperties,
    options::{BasicPublishOptions, ConfirmSelectOptions},
};
use workqueue::topology::{data_sync_dead_letter_queue, headers};

use crate::helpers::{TestQueues, TestWorker, WAIT, header_text, ops_get};

#[tokio::test]
async fn user_events_keep_the_directory_current_and_bad_ones_are_parked() {
    // Arrange
    let queues = TestQueues::new().await;
    let worker = task_worker::Application::build(queues.config())
        .await
        .unwrap();
    let contacts = worker.contacts();
    let worker = TestWorker::run(worker);
    let channel = queues.amqp.connection.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let events: [&[u8]; 5] = [
        br#"{"event":"user_created","data":{"id":"u-7","name":"Carol","email":"c@x"},"event_id":"e1","occurred_at":10}"#,
        br#"{"event":"user_updated","data":{"id":"u-7","name":"Caroline"},"event_id":"e2","occurred_at":20}"#,
        // The first event again (a redelivery): must not roll the name back.
        br#"{"event":"user_created","data":{"id":"u-7","name":"Carol","email":"c@x"},"event_id":"e1","occurred_at":10}"#,
        br#"{"event":"user_renamed","data":{"id":"u-7"}}"#,
        br#"{"event":"user_created","data":{"id":1001,"name":"Alice"}}"#,
    ];

    // Act
    for body in events {
        channel
            .basic_publish(
                "".into(),
                queues.data_sync.as_str().into(),
                BasicPublishOptions::default(),
                body,
                BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_content_type("application/json".into()),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }
    // The last event applied: every earlier one was too (one consumer, in order).
    let alice = testkit::eventually("user 1001 in the directory", WAIT, || {
        std::future::ready(contacts.get("1001"))
    })
    .await;

    // Assert
    let carol = contacts.get("u-7").expect("u-7 known");
    assert_eq!(carol.name.as_deref(), Some("Caroline"));
    assert_eq!(carol.email.as_deref(), Some("c@x"));
    assert_eq!(alice.name.as_deref(), Some("Alice"));
    let parked = data_sync_dead_letter_queue(&queues.data_sync);
    queues.wait_for_depth(&parked, 1).await;
    let letter = queues.amqp.get(&parked).await.unwrap();
    assert_eq!(
        header_text(&letter.delivery.properties, headers::REASON),
        "invalid_message"
    );
    worker.stop().await;
}

#[tokio::test]
async fn a_user_event_over_max_message_bytes_is_parked_unread_and_the_next_one_applied() {
    // Arrange: a valid event, padded over the worker's limit, then a small one.
    let queues = TestQueues::new().await;
    let config = task_worker::Config {
        max_message_bytes: 2048,
        ..queues.config()
    };
    let worker = task_worker::Application::build(config).await.unwrap();
    let contacts = worker.contacts();
    let worker = TestWorker::run(worker);
    let channel = queues.amqp.connection.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let big = serde_json::json!({
        "event": "user_created",
        "data": {"id": "u-big", "name": "x".repeat(4096)},
    })
    .to_string();
    let small = br#"{"event":"user_created","data":{"id":"u-small","name":"Small"}}"#;

    // Act
    for body in [big.as_bytes(), small] {
        channel
            .basic_publish(
                "".into(),
                queues.data_sync.as_str().into(),
                BasicPublishOptions::default(),
                body,
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }

    // Assert: in order, so once the small one is in, the big one was seen.
    testkit::eventually("u-small in the directory", WAIT, || {
        std::future::ready(contacts.get("u-small"))
    })
    .await;
    assert!(contacts.get("u-big").is_none(), "never applied");
    let parked = data_sync_dead_letter_queue(&queues.data_sync);
    queues.wait_for_depth(&parked, 1).await;
    let letter = queues.amqp.get(&parked).await.unwrap();
    let properties = &letter.delivery.properties;
    assert_eq!(header_text(properties, headers::REASON), "too_large");
    assert!(
        header_text(properties, headers::ERROR).contains("exceeds the limit of 2048 bytes"),
        "{properties:?}"
    );
    assert_eq!(letter.delivery.data, big.as_bytes(), "parked untouched");
    let metrics = ops_get(worker.ops_addr, "/metrics").await;
    assert!(
        metrics.contains(r#"messages_rejected_total{reason="too_large"}"#),
        "{metrics}"
    );
    worker.stop().await;
}
