//! A stalled subscriber: intake slows down instead of queueing without
//! bound, and the NATS client's drops are reported.

use std::time::Duration;

use crate::helpers::{TestAlert, TestEnv, eventually, http_get};

#[tokio::test]
async fn a_stalled_subscriber_applies_backpressure_and_reports_slow_consumer_drops() {
    // Arrange: RabbitMQ unreachable, a one-alert hand-off buffer and a tiny
    // subscription buffer: intake stalls, and the NATS client must drop.
    let env = TestEnv::without_rabbitmq();
    let mut config = env.config();
    config.handoff_buffer = 1;
    config.subscription_capacity = 16;
    config.publish_timeout = Duration::from_millis(200);
    config.shutdown_grace = Duration::from_millis(500);
    let instance = TestAlert::start(config).await;
    let client = env.nats().await;

    // Act
    env.publish_critical(&client, "slow", 2000).await;
    client.flush().await.unwrap();

    // Assert
    let metrics = eventually(
        "slow-consumer drops reported",
        Duration::from_secs(30),
        || async {
            let (_, metrics) = http_get(instance.ops_addr, "/metrics").await;
            metrics
                .contains(r#"messages_dropped_total{reason="slow_consumer"}"#)
                .then_some(metrics)
        },
    )
    .await;
    assert!(metrics.contains("alerts_pending_handoff"), "{metrics}");
    assert!(
        instance.received() < 2000,
        "intake is bounded, not an unbounded queue"
    );
    let summary = instance.stop().await;
    assert!(
        summary.pending > 0,
        "alerts still held for rabbitmq at shutdown"
    );
}
