//! Shutdown: the hand-off keeps delivering queued alerts after the signal,
//! for at most `shutdown_grace`; what is left then is abandoned and counted.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use crate::helpers::{RabbitNode, TestAlert, TestEnv, nats_url, series_value};

#[tokio::test]
async fn alerts_queued_before_the_signal_are_still_delivered() {
    // Arrange: RabbitMQ down, five alerts waiting in the hand-off, and a
    // grace period long enough for a broker to boot.
    let node = RabbitNode::new();
    let env = TestEnv::on(&nats_url(), &node.url());
    let mut config = env.config();
    config.publish_timeout = Duration::from_millis(500);
    config.shutdown_grace = Duration::from_secs(90);
    let instance = TestAlert::start(config).await;
    let client = env.nats().await;
    env.publish_critical(&client, "queued", 5).await;
    instance.wait_for_pending(5).await;

    // Act: the signal first, then the broker comes up.
    instance.signal_shutdown();
    node.boot().await;

    // Assert
    let summary = instance.stop().await;
    assert_eq!((summary.confirmed, summary.pending), (5, 0));
    let mut tasks = BTreeMap::new();
    env.take_tasks(&mut tasks).await;
    assert_eq!(tasks.len(), 5, "every queued alert reached the work queue");
}

#[tokio::test]
async fn alerts_left_after_the_grace_period_are_abandoned_and_counted() {
    // Arrange: RabbitMQ unreachable for good, a short grace period.
    let env = TestEnv::without_rabbitmq();
    let mut config = env.config();
    config.publish_timeout = Duration::from_millis(200);
    config.shutdown_grace = Duration::from_millis(500);
    let instance = TestAlert::start(config).await;
    let client = env.nats().await;
    env.publish_critical(&client, "left", 3).await;
    instance.wait_for_pending(3).await;
    // The service runs in this process: its counters are in this recorder.
    let abandoned = r#"alerts_abandoned_total{reason="shutdown"}"#;
    let before = series_value(&common::metrics::render(), abandoned).unwrap_or(0.0);

    // Act
    let started = Instant::now();
    let summary = instance.stop().await;

    // Assert
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the grace period bounds the drain: {:?}",
        started.elapsed()
    );
    assert_eq!(summary.pending, 3, "abandoned, not confirmed");
    let after = series_value(&common::metrics::render(), abandoned).unwrap_or(0.0);
    assert!(after >= before + 3.0, "{before} -> {after}");
}
