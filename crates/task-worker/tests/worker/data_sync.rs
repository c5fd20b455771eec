//! `data_sync`: user events keep the contact directory current, applied
//! idempotently, and a bad event is parked in the queue's DLQ.

use lapin::{
    BasicProperties,
    options::{BasicPublishOptions, ConfirmSelectOptions},
};
use workqueue::topology::{data_sync_dead_letter_queue, headers};

use crate::helpers::{TestQueues, TestWorker, WAIT, header_text};

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
