//! monitor-subscriber against the local NATS server, fed by the real
//! sensor-publisher and by hand-made messages.

mod helpers;

use std::time::Duration;

use async_nats::HeaderMap;
use common::{
    codec::{CONTENT_TYPE_HEADER, Codec, ContentType},
    config::SecretUrl,
    proto::sensor::v1::SensorReading,
    shutdown::Shutdown,
};
use helpers::{Subjects, TestMonitor, http_get, nats_url};
use monitor_subscriber::stats::StatsReport;

fn reading(sensor: &str, value: f64, seq: u64) -> SensorReading {
    SensorReading {
        sensor_id: sensor.into(),
        kind: "temperature".into(),
        value,
        unit: "celsius".into(),
        timestamp: 1_700_000_000_000,
        seq,
        site: None,
        owner_id: Some("u-1001".into()),
    }
}

async fn publish(
    client: &async_nats::Client,
    subject: String,
    payload: Vec<u8>,
    content_type: Option<&str>,
) {
    match content_type {
        Some(content_type) => {
            let mut headers = HeaderMap::new();
            headers.insert(CONTENT_TYPE_HEADER, content_type);
            client
                .publish_with_headers(subject, headers, payload.into())
                .await
                .unwrap();
        }
        None => client.publish(subject, payload.into()).await.unwrap(),
    }
}

/// Publishes `reading` encoded as `content_type`, with the header saying so.
async fn publish_encoded(
    client: &async_nats::Client,
    subject: String,
    reading: &SensorReading,
    content_type: ContentType,
) {
    let payload = Codec::default().encode(reading, content_type).unwrap();
    publish(client, subject, payload.to_vec(), Some(content_type.mime())).await;
}

/// The arrange step most tests share: subjects of their own, a monitor on
/// them, and a client on the shared NATS to publish with.
async fn start_monitor() -> (Subjects, TestMonitor, async_nats::Client) {
    let subjects = Subjects::new();
    let monitor = TestMonitor::start(&subjects).await;
    let client = async_nats::connect(nats_url()).await.unwrap();
    (subjects, monitor, client)
}

#[tokio::test]
async fn fan_out_two_monitors_both_see_every_reading() {
    // Arrange
    let subjects = Subjects::new();
    let first = TestMonitor::start(&subjects).await;
    let second = TestMonitor::start(&subjects).await;
    let config = sensor_publisher::Config {
        nats_url: SecretUrl::new(nats_url()),
        ops_addr: "127.0.0.1:0".parse().unwrap(),
        subject_prefix: subjects.readings.clone(),
        rate_per_sec: 0.0,
        count: 500,
        fleet: sensor_publisher::FleetConfig {
            sensors: 5,
            ..Default::default()
        },
        ..Default::default()
    };

    // Act
    let summary = sensor_publisher::Application::build(config)
        .await
        .unwrap()
        .run_until_stopped(Shutdown::new())
        .await
        .unwrap();

    // Assert
    assert_eq!(summary.published, 500);
    for monitor in [&first, &second] {
        monitor.wait_for(500).await;
        let report = monitor.stats.report();
        assert_eq!(report.totals.readings, 500);
        assert_eq!(report.totals.sensors, 5);
        assert_eq!(report.totals.seq_gaps, 0);
        assert!(
            report
                .sensors
                .values()
                .all(|s| s.total == 100 && s.last_seq == Some(100))
        );
    }
    first.stop().await;
    second.stop().await;
}

#[tokio::test]
async fn protobuf_json_and_headerless_json_are_all_understood() {
    // Arrange
    let (subjects, monitor, client) = start_monitor().await;

    // Act
    for (sensor, value, content_type) in [
        ("p-1", 21.0, ContentType::Protobuf),
        ("j-1", 22.0, ContentType::Json),
    ] {
        publish_encoded(
            &client,
            format!("{}.{sensor}", subjects.readings),
            &reading(sensor, value, 1),
            content_type,
        )
        .await;
    }
    // An external client: no headers at all, only the required fields, on
    // the bare subject.
    let external = br#"{"sensor_id": "x-1", "kind": "temperature", "value": 23.5, "timestamp": 1700000000000}"#;
    publish(&client, subjects.readings.clone(), external.to_vec(), None).await;

    // Assert
    monitor.wait_for(3).await;
    let report = monitor.stats.report();
    assert_eq!(report.totals.rejected, 0);
    assert_eq!(report.sensors["p-1"].last, 21.0);
    assert_eq!(report.sensors["j-1"].last, 22.0);
    assert_eq!(report.sensors["x-1"].last, 23.5);
    monitor.stop().await;
}

#[tokio::test]
async fn a_bad_payload_among_good_ones_is_rejected_counted_and_skipped() {
    // Arrange
    let (subjects, monitor, client) = start_monitor().await;
    let codec = Codec::default();
    let good = |seq| {
        codec
            .encode(&reading("t-1", 20.0 + seq as f64, seq), ContentType::Json)
            .unwrap()
            .to_vec()
    };
    let subject = format!("{}.t-1", subjects.readings);

    // Act: a plain client's text payload, and garbage claiming to be Protobuf.
    publish(&client, subject.clone(), good(1), None).await;
    publish(&client, subject.clone(), b"temperature=25.3".to_vec(), None).await;
    publish(&client, subject.clone(), good(2), None).await;
    publish(
        &client,
        subject.clone(),
        vec![0xff, 0xff, 0xff],
        Some("application/protobuf"),
    )
    .await;
    publish(&client, subject.clone(), good(3), None).await;

    // Assert
    monitor.wait_for(5).await;
    let report = monitor.stats.report();
    assert_eq!(report.totals.rejected, 2);
    assert_eq!(report.totals.readings, 3);
    assert_eq!(report.sensors["t-1"].last, 23.0);
    let (status, metrics) = http_get(monitor.ops_addr, "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        metrics.contains("# HELP messages_rejected_total "),
        "described: {metrics}"
    );
    assert!(
        metrics.contains(r#"messages_rejected_total{reason="invalid_json"}"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"messages_rejected_total{reason="invalid_protobuf"}"#),
        "{metrics}"
    );
    monitor.stop().await;
}

/// `messages_rejected_total{reason="too_large"}` on the monitor's
/// `/metrics` (0 while absent).
async fn too_large_count(monitor: &TestMonitor) -> f64 {
    let (status, metrics) = http_get(monitor.ops_addr, "/metrics").await;
    assert_eq!(status, 200, "{metrics}");
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(r#"messages_rejected_total{reason="too_large"} "#))
        .map_or(0.0, |value| value.trim().parse().unwrap())
}

#[tokio::test]
async fn a_reading_over_max_message_bytes_is_counted_and_skipped_unread() {
    // Arrange
    let subjects = Subjects::new();
    let monitor =
        TestMonitor::start_with(&subjects, |config| config.max_message_bytes = 2048).await;
    let client = async_nats::connect(nats_url()).await.unwrap();
    let subject = format!("{}.t-1", subjects.readings);
    let mut big = reading("t-1", 99.0, 2);
    big.site = Some("x".repeat(4096));
    let before = too_large_count(&monitor).await;

    // Act: an ordinary reading, one over the limit (Protobuf that would
    // decode), and an ordinary one again.
    publish_encoded(
        &client,
        subject.clone(),
        &reading("t-1", 21.0, 1),
        ContentType::Protobuf,
    )
    .await;
    publish_encoded(&client, subject.clone(), &big, ContentType::Protobuf).await;
    publish_encoded(
        &client,
        subject.clone(),
        &reading("t-1", 23.0, 3),
        ContentType::Protobuf,
    )
    .await;

    // Assert
    monitor.wait_for(3).await;
    let report = monitor.stats.report();
    assert_eq!((report.totals.readings, report.totals.rejected), (2, 1));
    let sensor = &report.sensors["t-1"];
    assert_eq!(
        (sensor.max, sensor.last),
        (Some(23.0), 23.0),
        "99.0 never counted"
    );
    let after = too_large_count(&monitor).await;
    assert!(after > before, "too_large counted: {before} -> {after}");
    monitor.stop().await;
}

#[tokio::test]
async fn a_stats_request_over_max_message_bytes_gets_an_error_and_the_next_one_the_stats() {
    // Arrange
    let subjects = Subjects::new();
    let monitor =
        TestMonitor::start_with(&subjects, |config| config.max_message_bytes = 2048).await;
    let client = async_nats::connect(nats_url()).await.unwrap();
    let before = too_large_count(&monitor).await;
    let ask = |body: Vec<u8>| {
        let request = client.request(subjects.stats.clone(), body.into());
        async move {
            tokio::time::timeout(Duration::from_secs(10), request)
                .await
                .expect("an answer, not a timeout")
                .unwrap()
        }
    };

    // Act
    let refused = ask(vec![b'x'; 4096]).await;
    let answered = ask(Vec::new()).await;

    // Assert: the error in the headers of the NATS service convention and
    // in a JSON body; the next request gets the report.
    let headers = refused.headers.as_ref().expect("error headers");
    assert_eq!(
        headers.get("Nats-Service-Error-Code").map(|v| v.as_str()),
        Some("413")
    );
    let error: serde_json::Value = serde_json::from_slice(&refused.payload).unwrap();
    assert_eq!(error["error"]["code"], "too_large");
    assert_eq!(
        error["error"]["message"],
        "payload of 4096 bytes exceeds the limit of 2048 bytes"
    );
    let report: StatsReport = serde_json::from_slice(&answered.payload).unwrap();
    assert_eq!(report.totals.rejected, 0, "a request is not a reading");
    let after = too_large_count(&monitor).await;
    assert!(after > before, "too_large counted: {before} -> {after}");
    monitor.stop().await;
}

#[tokio::test]
async fn stats_answer_over_http_and_nats_request_reply_with_gaps_counted() {
    // Arrange
    let (subjects, monitor, client) = start_monitor().await;
    let subject = format!("{}.t-9", subjects.readings);

    // Act: seq 3 and 4 never arrive.
    for (value, seq) in [(10.0, 1), (20.0, 2), (30.0, 5), (40.0, 6)] {
        publish_encoded(
            &client,
            subject.clone(),
            &reading("t-9", value, seq),
            ContentType::Protobuf,
        )
        .await;
    }
    monitor.wait_for(4).await;

    // Assert
    let (status, body) = http_get(monitor.ops_addr, "/stats").await;
    assert_eq!(status, 200, "{body}");
    let over_http: StatsReport = serde_json::from_str(&body).unwrap();
    let reply = tokio::time::timeout(
        Duration::from_secs(10),
        client.request(subjects.stats.clone(), "".into()),
    )
    .await
    .unwrap()
    .unwrap();
    let over_nats: StatsReport = serde_json::from_slice(&reply.payload).unwrap();
    for report in [over_http, over_nats] {
        let sensor = &report.sensors["t-9"];
        assert_eq!(sensor.count, 4);
        assert_eq!(
            (sensor.min, sensor.max, sensor.mean),
            (Some(10.0), Some(40.0), Some(25.0))
        );
        assert_eq!(sensor.last, 40.0);
        assert_eq!(sensor.seq_gaps, 2);
        assert!(sensor.rate_per_sec > 0.0);
        assert_eq!(report.window_secs, 60);
    }
    monitor.stop().await;
}
