//! Readings in, alerts out: every encoding a publisher may use, the alert
//! on NATS and its `notify` task, one alert per threshold crossing.

use std::{sync::atomic::Ordering, time::Duration};

use common::{codec::ContentType, proto::sensor::v1::Severity};

use crate::helpers::{TestEnv, eventually, http_get, publish, reading};

#[tokio::test]
async fn protobuf_json_headerless_json_and_a_bad_payload_among_them() {
    // Arrange
    let env = TestEnv::new();
    let (instance, client, alerts) = env.start_collecting(env.config()).await;

    // Act
    env.publish_proto(&client, "proto", 41.0, 1).await;
    client
        .publish(format!("{}.text", env.readings), "temperature=25.3".into())
        .await
        .unwrap();
    publish(
        &client,
        &env.readings,
        &reading("json", 42.0, 1),
        Some(ContentType::Json),
    )
    .await;
    // An external client's reading: no headers, only the required fields,
    // on the bare subject.
    client
        .publish(
            env.readings.clone(),
            r#"{"sensor_id":"bare","kind":"temperature","value":43.0,"timestamp":1700000000000}"#
                .into(),
        )
        .await
        .unwrap();
    publish(
        &client,
        &env.readings,
        &reading("headerless", 44.0, 1),
        None,
    )
    .await;

    // Assert
    for sensor in ["proto", "json", "bare", "headerless"] {
        let alert = alerts.wait_for_sensor(sensor).await;
        assert_eq!(alert.severity, Severity::Critical as i32);
        assert_eq!(alert.threshold, 40.0);
    }
    eventually(
        "the bad payload counted",
        Duration::from_secs(10),
        || async { (instance.counts.rejected.load(Ordering::Relaxed) == 1).then_some(()) },
    )
    .await;
    assert_eq!(instance.received(), 5);
    let (_, metrics) = http_get(instance.ops_addr, "/metrics").await;
    assert!(
        metrics.contains(r#"messages_rejected_total{reason="invalid_json"}"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"alerts_raised_total{severity="critical"}"#),
        "{metrics}"
    );
    let summary = instance.stop().await;
    assert_eq!((summary.alerts, summary.rejected), (4, 1));
    // "bare" has no owner: published on NATS, no notify task.
    assert_eq!(summary.confirmed, 3);
}

#[tokio::test]
async fn an_alert_reaches_sensor_alert_and_the_task_queue() {
    // Arrange
    let env = TestEnv::new();
    let (instance, client, alerts) = env.start_collecting(env.config()).await;

    // Act
    env.publish_proto(&client, "temp-042", 41.5, 7).await;

    // Assert
    let alert = alerts.wait_for_sensor("temp-042").await;
    assert_eq!(alert.owner_id.as_deref(), Some("u-1001"));
    assert_eq!(alert.value, 41.5);
    let tasks = env.wait_for_tasks(1).await;
    let task = &tasks[&alert.alert_id];
    assert_eq!(task.kind, "notify");
    assert_eq!(task.payload["owner_id"], "u-1001");
    assert_eq!(task.payload["severity"], "critical");
    assert_eq!(task.payload["sensor_id"], "temp-042");
    assert_eq!(task.payload["threshold"], 40.0);
    instance.stop().await;
}

#[tokio::test]
async fn one_alert_per_crossing_and_hovering_at_the_line_does_not_flap() {
    // Arrange: temperature warns above 30 and clears 1.0 below it.
    let env = TestEnv::new();
    let (instance, client, alerts) = env.start_collecting(env.config()).await;
    let values = [31.0, 32.0, 30.5, 29.5, 30.8, 28.5, 31.0];

    // Act: up, hovering around the line (29.5 is within the hysteresis),
    // cleared at 28.5, then up again.
    for (seq, value) in (1..).zip(values) {
        env.publish_proto(&client, "hover", value, seq).await;
    }

    // Assert: one warning for each of the two crossings, no more.
    eventually(
        "every reading evaluated",
        Duration::from_secs(20),
        || async { (instance.received() == values.len() as u64).then_some(()) },
    )
    .await;
    eventually("two alerts", Duration::from_secs(20), || async {
        (alerts.for_sensor("hover").len() == 2).then_some(())
    })
    .await;
    let summary = instance.stop().await;
    assert_eq!(summary.alerts, 2, "one alert per crossing");
    let raised = alerts.for_sensor("hover");
    assert_eq!(raised.len(), 2);
    assert!(
        raised
            .iter()
            .all(|alert| alert.severity == Severity::Warning as i32 && alert.threshold == 30.0)
    );
    // The alert id ends with the reading's seq.
    let mut ids: Vec<_> = raised.iter().map(|alert| alert.alert_id.clone()).collect();
    ids.sort();
    assert!(
        ids[0].ends_with("-1") && ids[1].ends_with("-7"),
        "raised by the first and the last reading: {ids:?}"
    );
}
