//! data_sync events: written with each change, relayed to RabbitMQ.

use std::time::Duration;

use common::proto::user::v1::{DeleteUserRequest, UpdateUserRequest};
use serde_json::Value;

use crate::{
    helpers::{Db, TcpProxy, TestApp, TestDatabase, TestQueue, free_port, test_config},
    on_both_databases,
};

on_both_databases!(every_change_reaches_data_sync_in_order);

async fn every_change_reaches_data_sync_in_order(db: Db) {
    // Arrange
    let app = TestApp::spawn(db).await;

    // Act
    app.create_user("u-1001", "Alice", 30).await;
    let mut client = app.grpc().await;
    client
        .update_user(UpdateUserRequest {
            user_id: "u-1001".into(),
            name: "Alice B.".into(),
            age: 31,
            email: "alice@example.com".into(),
        })
        .await
        .unwrap();
    client
        .delete_user(DeleteUserRequest {
            user_id: "u-1001".into(),
        })
        .await
        .unwrap();

    // Assert: three persistent JSON messages, in commit order.
    let mut bodies = Vec::new();
    for _ in 0..3 {
        let message = app
            .queue
            .expect_message(Duration::from_secs(20), "an event within 20 s")
            .await;
        let properties = &message.delivery.properties;
        assert_eq!(properties.delivery_mode(), &Some(2), "persistent");
        assert_eq!(
            properties.content_type().as_ref().map(|c| c.as_str()),
            Some("application/json")
        );
        let body: Value = serde_json::from_slice(&message.delivery.data).unwrap();
        assert_eq!(
            properties.message_id().as_ref().map(|id| id.as_str()),
            body["event_id"].as_str(),
            "message_id is the event id"
        );
        bodies.push(body);
    }
    let kinds: Vec<&str> = bodies
        .iter()
        .map(|b| b["event"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["user_created", "user_updated", "user_deleted"]);
    assert_eq!(bodies[0]["data"]["id"], "u-1001");
    assert_eq!(bodies[0]["data"]["name"], "Alice");
    assert_eq!(bodies[1]["data"]["age"], 31);
    assert_eq!(bodies[2]["data"], serde_json::json!({"id": "u-1001"}));
    assert!(
        bodies
            .iter()
            .all(|b| b["occurred_at"].as_i64().unwrap() > 0)
    );
    app.wait_for_empty_outbox().await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_wait_in_the_outbox_while_rabbitmq_is_unreachable() {
    // Arrange: RabbitMQ is reached through a proxy that is not up yet.
    let rabbitmq: std::net::SocketAddr = "127.0.0.1:5672".parse().unwrap();
    let port = free_port();
    let db = TestDatabase::create(Db::Sqlite).await;
    let queue = TestQueue::new();
    let mut config = test_config(&db.url, &queue.name);
    config.amqp_url = format!("amqp://guest:guest@127.0.0.1:{port}/%2f")
        .as_str()
        .into();
    let app = TestApp::start(config, db, queue).await;
    app.wait_until_serving().await;

    // Act: changes commit while the broker is unreachable.
    app.create_user("u-1", "Alice", 30).await;
    app.create_user("u-2", "Bob", 40).await;

    // Assert: nothing is lost; the events wait in the outbox...
    assert_eq!(app.db.outbox_rows().await, 2);

    // ...and leave once the broker is reachable.
    let proxy = TcpProxy::start(format!("127.0.0.1:{port}").parse().unwrap(), rabbitmq).await;
    let mut ids = Vec::new();
    for _ in 0..2 {
        let message = app
            .queue
            .expect_message(Duration::from_secs(30), "the relay reconnects within 30 s")
            .await;
        ids.push(event_user(&message));
    }
    assert_eq!(ids, ["u-1", "u-2"]);
    app.wait_for_empty_outbox().await;
    app.stop().await;
    drop(proxy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_for_a_vanished_queue_is_kept_and_sent_once_it_is_declared_again() {
    // Arrange: the relay is connected and its queue exists.
    let app = TestApp::spawn(Db::Sqlite).await;
    app.create_user("u-1", "Alice", 30).await;
    app.queue
        .expect_message(Duration::from_secs(20), "the first event")
        .await;

    // Act: the queue disappears, then a change commits.
    app.queue.delete_now().await;
    app.create_user("u-2", "Bob", 40).await;

    // Assert: the broker returned it instead of dropping it; the relay
    // declared the queue again and the event arrives.
    let message = app
        .queue
        .expect_message(
            Duration::from_secs(30),
            "the event after the queue was declared again",
        )
        .await;
    assert_eq!(event_user(&message), "u-2");
    app.stop().await;
}

/// The `user_id` of a `data_sync` message.
fn event_user(message: &lapin::message::BasicGetMessage) -> String {
    let body: Value = serde_json::from_slice(&message.delivery.data).unwrap();
    body["data"]["id"].as_str().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_relays_a_shared_outbox_and_another_takes_over_when_it_stops() {
    // Arrange: replica A relays (its first event is out), then B joins on the
    // same PostgreSQL. Each has a data_sync queue of its own, so every event
    // shows which replica relayed it. A polls the outbox only every 60 s.
    let a = TestApp::spawn_with(Db::Postgres, |config| {
        config.outbox_poll_interval = Duration::from_secs(60);
    })
    .await;
    a.create_user("u-1", "Alice", 30).await;
    let first = a.queue.next_message(Duration::from_secs(20)).await;
    assert_eq!(first.as_ref().map(event_user).as_deref(), Some("u-1"));
    let b = a.replica(|_| {}).await;

    // Act + Assert: a change made through B is relayed by A alone, at once
    // (B's commit notifies A; A's next poll is a minute away).
    b.create_user("u-2", "Bob", 40).await;
    let relayed = a.queue.next_message(Duration::from_secs(10)).await;
    assert_eq!(relayed.as_ref().map(event_user).as_deref(), Some("u-2"));
    assert!(
        b.queue.next_message(Duration::from_secs(2)).await.is_none(),
        "the standby replica relayed an event"
    );

    // Act + Assert: once A stops, B takes the relay over.
    a.stop().await;
    b.create_user("u-3", "Carol", 50).await;
    let taken_over = b.queue.next_message(Duration::from_secs(20)).await;
    assert_eq!(taken_over.as_ref().map(event_user).as_deref(), Some("u-3"));
    b.stop().await;
}
