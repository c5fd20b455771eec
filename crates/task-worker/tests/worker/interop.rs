//! Compatibility with plain clients: raw AMQP, a durable declare without
//! arguments, persistent JSON without a content type, on both queues.

use lapin::{
    BasicProperties,
    options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions},
    types::FieldTable,
};

use crate::helpers::{TestQueues, TestWorker, WAIT, done_ids, ops_get};

#[tokio::test]
async fn a_plain_client_interoperates() {
    // Arrange: a worker, then a plain client: raw lapin, durable declare,
    // persistent JSON without a content type.
    let queues = TestQueues::new().await;
    let mut worker = TestWorker::start(queues.config()).await;
    let plain = queues.amqp.connection.create_channel().await.unwrap();
    plain
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    for queue in [&queues.queue, &queues.data_sync] {
        plain
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions::durable(),
                FieldTable::default(),
            )
            .await
            .expect("no PRECONDITION_FAILED against our topology");
    }
    let persistent = BasicProperties::default().with_delivery_mode(2);

    // Act
    plain
        .basic_publish(
            "".into(),
            queues.queue.as_str().into(),
            BasicPublishOptions::default(),
            br#"{"id": "plain-task-1", "kind": "sleep", "payload": {"ms": 5}}"#,
            persistent.clone(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    plain
        .basic_publish(
            "".into(),
            queues.data_sync.as_str().into(),
            BasicPublishOptions::default(),
            br#"{"event": "user_created", "data": {"id": 1001, "name": "Alice"}}"#,
            persistent,
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let events = worker
        .collect_until(WAIT, |e| !done_ids(e).is_empty())
        .await;

    // Assert
    assert_eq!(done_ids(&events), ["plain-task-1"]);
    let contacts = testkit::eventually("Alice in /contacts", WAIT, || async {
        let contacts = ops_get(worker.ops_addr, "/contacts").await;
        contacts.contains("Alice").then_some(contacts)
    })
    .await;
    let contacts: serde_json::Value = serde_json::from_str(&contacts).unwrap();
    assert_eq!(contacts[0]["id"], "1001");
    assert_eq!(contacts[0]["name"], "Alice");
    worker.stop().await;
}
