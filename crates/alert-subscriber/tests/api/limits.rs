//! `max_message_bytes`: a reading over the limit is counted
//! (`messages_rejected_total{reason="too_large"}`) and skipped unread, in
//! core mode and in JetStream mode, where the lane's checkpoint moves past it
//! (as past a body that never decodes); the next reading is evaluated as
//! usual.

use std::{sync::atomic::Ordering, time::Duration};

use common::codec::{Codec, ContentType};

use crate::helpers::{Alerts, TestAlert, TestEnv, eventually, http_get, metric, publish, reading};

const TOO_LARGE: &str = r#"messages_rejected_total{reason="too_large"}"#;

/// The limit of these tests; the big reading is twice as large.
const LIMIT: usize = 2048;

/// A critical reading of `sensor` that would raise an alert, padded over
/// [`LIMIT`] by its site.
fn oversize_reading(sensor: &str) -> common::proto::sensor::v1::SensorReading {
    let mut big = reading(sensor, 45.0, 1);
    big.site = Some("x".repeat(2 * LIMIT));
    big
}

#[tokio::test]
async fn a_reading_over_max_message_bytes_is_counted_and_skipped_and_the_next_one_alerts() {
    // Arrange
    let env = TestEnv::new();
    let mut config = env.config();
    config.max_message_bytes = LIMIT;
    let (instance, client, alerts) = env.start_collecting(config).await;
    let before = metric(instance.ops_addr, TOO_LARGE).await.unwrap_or(0.0);

    // Act: one reading over the limit, then an ordinary one.
    publish(
        &client,
        &env.readings,
        &oversize_reading("big"),
        Some(ContentType::Json),
    )
    .await;
    env.publish_proto(&client, "after", 45.0, 1).await;

    // Assert: the next reading alerts (in order, so the big one was seen).
    alerts.wait_for_sensor("after").await;
    assert_eq!(instance.counts.rejected.load(Ordering::Relaxed), 1);
    assert!(alerts.for_sensor("big").is_empty(), "not evaluated");
    let after = metric(instance.ops_addr, TOO_LARGE).await.unwrap_or(0.0);
    assert!(after > before, "too_large counted: {before} -> {after}");
    let (_, config) = http_get(instance.ops_addr, "/config").await;
    let config: serde_json::Value = serde_json::from_str(&config).unwrap();
    assert_eq!(
        config["settings"]["max_message_bytes"]["value"], LIMIT,
        "/config shows the limit in force: {config}"
    );
    let summary = instance.stop().await;
    assert_eq!(
        (summary.received, summary.rejected, summary.alerts),
        (2, 1, 1)
    );
}

#[tokio::test]
async fn jetstream_mode_an_oversize_or_undecodable_reading_does_not_hold_the_lane_back() {
    // Arrange: the big reading, a body that never decodes and an ordinary
    // reading, stored in the stream in that order.
    let env = TestEnv::new();
    let client = env.nats().await;
    let js = env.sensor_stream(&client).await;
    let codec = Codec::default();
    let big = codec
        .encode(&oversize_reading("big"), ContentType::Json)
        .unwrap();
    let good = codec
        .encode(&reading("after", 45.0, 1), ContentType::Json)
        .unwrap();
    for (sensor, payload) in [
        ("big", big),
        ("garbage", "temperature=25.3".into()),
        ("after", good),
    ] {
        js.publish(format!("{}.{sensor}", env.readings), payload)
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let alerts = Alerts::collect(&client, &env.alerts).await;
    let mut config = env.config();
    config.mode = common::nats::DeliveryMode::Jetstream;
    config.max_message_bytes = LIMIT;

    // Act
    let instance = TestAlert::start(config).await;

    // Assert: both skipped, and the checkpoint moved past all three.
    alerts.wait_for_sensor("after").await;
    env.wait_for_checkpoint(&js, "unmapped", 3, Duration::from_secs(20))
        .await;
    eventually(
        "both bad readings counted",
        Duration::from_secs(10),
        || async { (instance.counts.rejected.load(Ordering::Relaxed) == 2).then_some(()) },
    )
    .await;
    assert!(alerts.for_sensor("big").is_empty(), "not evaluated");
    let too_large = metric(instance.ops_addr, TOO_LARGE).await;
    assert!(too_large >= Some(1.0), "{too_large:?}");
    let invalid = metric(
        instance.ops_addr,
        r#"messages_rejected_total{reason="invalid_json"}"#,
    )
    .await;
    assert!(invalid >= Some(1.0), "{invalid:?}");
    let summary = instance.stop().await;
    assert_eq!((summary.rejected, summary.alerts), (2, 1));
}
