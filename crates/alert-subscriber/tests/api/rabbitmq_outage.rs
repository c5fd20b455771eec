//! RabbitMQ away: alerts wait in the hand-off buffer, are retried, and are
//! delivered once the broker is back.

use std::{collections::BTreeMap, sync::atomic::Ordering, time::Duration};

use crate::helpers::{RabbitNode, TestEnv, eventually, http_get, nats_url};

#[tokio::test]
async fn rabbitmq_down_keeps_alerts_buffered_and_delivers_them_when_it_is_back() {
    // Arrange: the broker's port is reserved but nothing listens yet.
    let node = RabbitNode::new();
    let env = TestEnv::on(&nats_url(), &node.url());
    let mut config = env.config();
    config.publish_timeout = Duration::from_millis(500);
    let (instance, client, alerts) = env.start_collecting(config).await;

    // Act
    env.publish_critical(&client, "down", 5).await;
    eventually("5 alerts on nats", Duration::from_secs(20), || async {
        (alerts.all().len() == 5).then_some(())
    })
    .await;
    eventually(
        "retries while rabbitmq is down",
        Duration::from_secs(30),
        || async { (instance.handoff.retries.load(Ordering::Relaxed) > 0).then_some(()) },
    )
    .await;
    assert_eq!(
        instance.handoff.pending.load(Ordering::Relaxed),
        5,
        "kept, not dropped"
    );
    let (_, metrics) = http_get(instance.ops_addr, "/metrics").await;
    assert!(metrics.contains("alert_handoff_retries_total"), "{metrics}");
    node.boot().await;

    // Assert
    instance.wait_for_confirmed(5).await;
    let mut tasks = BTreeMap::new();
    env.take_tasks(&mut tasks).await;
    assert_eq!(tasks.len(), 5);
    instance.stop().await;
}
