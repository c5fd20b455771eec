//! sensor-publisher against real NATS servers: the shared one, and a private
//! one that the restart tests kill, and a private three-node cluster.

mod cluster;
mod helpers;

use std::{
    collections::{BTreeMap, HashSet},
    sync::atomic::Ordering,
    time::Duration,
};

use async_nats::jetstream::{self, consumer::pull};
use common::{
    codec::{CONTENT_TYPE_HEADER, Codec, ContentType},
    nats::DeliveryMode,
    propagation::TRACEPARENT,
    proto::sensor::v1::SensorReading,
};
use futures::StreamExt;
use helpers::{
    NatsServer, Running, StreamGuard, config, eventually, http_get, nats_url, run_to_end,
    subscribe_below,
};

/// Reads every message stored in `stream`: (sensor_id, seq) -> times stored.
async fn stored_readings(
    js: &jetstream::Context,
    stream: &str,
) -> (BTreeMap<(String, u64), u32>, HashSet<String>) {
    let stream = js.get_stream(stream).await.unwrap();
    let consumer = stream
        .create_consumer(pull::Config::default())
        .await
        .unwrap();
    let mut stored = BTreeMap::new();
    let mut message_ids = HashSet::new();
    loop {
        let mut batch = consumer
            .batch()
            .max_messages(500)
            .expires(Duration::from_secs(1))
            .messages()
            .await
            .unwrap();
        let mut got = 0;
        while let Some(message) = batch.next().await {
            let message = message.unwrap();
            let reading: SensorReading = Codec::default()
                .decode(&message.payload, ContentType::Protobuf)
                .unwrap();
            let id = message
                .headers
                .as_ref()
                .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
                .map(|v| v.to_string())
                .expect("every stored reading has a Nats-Msg-Id");
            message_ids.insert(id);
            *stored.entry((reading.sensor_id, reading.seq)).or_insert(0) += 1;
            message.ack().await.unwrap();
            got += 1;
        }
        if got == 0 {
            return (stored, message_ids);
        }
    }
}

#[tokio::test]
async fn core_mode_publishes_protobuf_readings_with_headers_on_each_sensor_subject() {
    // Arrange
    let mut config = config(&nats_url());
    config.count = 40;
    let prefix = config.subject_prefix.clone();
    let (_client, mut subscriber) = subscribe_below(&nats_url(), &prefix).await;

    // Act
    let summary = run_to_end(config).await;

    // Assert
    assert_eq!(summary.published, 40);
    assert_eq!(summary.unsent, 0);
    let mut seqs: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for _ in 0..40 {
        let message = tokio::time::timeout(Duration::from_secs(10), subscriber.next())
            .await
            .expect("40 readings")
            .unwrap();
        let headers = message.headers.clone().expect("headers");
        assert_eq!(
            headers.get(CONTENT_TYPE_HEADER).unwrap().as_str(),
            "application/protobuf"
        );
        assert!(
            headers
                .get(TRACEPARENT)
                .unwrap()
                .as_str()
                .starts_with("00-")
        );
        let reading: SensorReading = Codec::default()
            .decode_with_header(&message.payload, Some("application/protobuf"))
            .unwrap();
        assert_eq!(
            message.subject.as_str(),
            format!("{prefix}.{}", reading.sensor_id)
        );
        assert!(reading.owner_id.is_some());
        seqs.entry(reading.sensor_id).or_default().push(reading.seq);
    }
    assert_eq!(seqs.len(), 4);
    for (sensor, seqs) in seqs {
        assert_eq!(seqs, (1..=10).collect::<Vec<_>>(), "{sensor}");
    }
}

#[tokio::test]
async fn json_is_published_when_configured() {
    // Arrange
    let mut config = config(&nats_url());
    config.count = 5;
    config.content_type = ContentType::Json;
    let (_client, mut subscriber) = subscribe_below(&nats_url(), &config.subject_prefix).await;

    // Act
    run_to_end(config).await;

    // Assert
    let message = tokio::time::timeout(Duration::from_secs(10), subscriber.next())
        .await
        .unwrap()
        .unwrap();
    let headers = message.headers.clone().unwrap();
    assert_eq!(
        headers.get(CONTENT_TYPE_HEADER).unwrap().as_str(),
        "application/json"
    );
    let json: serde_json::Value = serde_json::from_slice(&message.payload).unwrap();
    assert_eq!(json["sensor_id"], "temp-001");
    assert_eq!(json["seq"], 1);
}

#[tokio::test]
async fn a_reading_over_max_message_bytes_is_not_sent_but_counted() {
    // Arrange: a site name that makes every reading larger than the limit.
    // Running until stopped (its ops port with it), paced.
    let mut config = config(&nats_url());
    config.rate_per_sec = 200.0;
    config.max_message_bytes = 1024;
    config.fleet.site = Some("x".repeat(2048));
    let (_client, mut subscriber) = subscribe_below(&nats_url(), &config.subject_prefix).await;

    // Act
    let running = Running::start(config).await;
    eventually("8 readings refused", Duration::from_secs(10), || async {
        (running.counts.unsent.load(Ordering::Relaxed) >= 8).then_some(())
    })
    .await;
    let (_, metrics) = http_get(running.ops_addr, "/metrics").await;
    let summary = running.stop().await;

    // Assert: none reached NATS, each counted as too large.
    assert_eq!(summary.published, 0);
    assert!(summary.unsent >= 8, "{summary:?}");
    let too_large = metrics
        .lines()
        .find_map(|line| line.strip_prefix(r#"readings_unsent_total{reason="too_large"} "#))
        .map(|value| value.trim().parse::<f64>().unwrap());
    assert!(too_large >= Some(8.0), "{too_large:?} in\n{metrics}");
    let nothing = tokio::time::timeout(Duration::from_millis(500), subscriber.next()).await;
    assert!(nothing.is_err(), "a reading reached nats: {nothing:?}");
}

#[tokio::test]
async fn jetstream_mode_stores_every_reading_once_with_a_message_id() {
    // Arrange
    let mut config = config(&nats_url());
    config.count = 400;
    config.mode = DeliveryMode::Jetstream;
    config.ack_window = 64;
    let _cleanup = StreamGuard {
        url: nats_url(),
        name: config.stream.clone(),
    };
    let stream = config.stream.clone();

    // Act
    let summary = run_to_end(config).await;

    // Assert
    assert_eq!(summary.published, 400);
    let js = jetstream::new(async_nats::connect(nats_url()).await.unwrap());
    let (stored, ids) = stored_readings(&js, &stream).await;
    assert_eq!(stored.len(), 400);
    assert!(stored.values().all(|times| *times == 1));
    assert_eq!(ids.len(), 400);
}

#[tokio::test]
async fn core_mode_survives_a_nats_restart_and_counts_what_it_could_not_send() {
    // Arrange
    let mut server = NatsServer::start().await;
    let mut config = config(&server.url());
    config.rate_per_sec = 200.0;
    let prefix = config.subject_prefix.clone();
    let watcher = common::nats::connect(
        &common::nats::NatsOptions {
            url: server.url().as_str().into(),
            name: "watcher".into(),
            subscription_capacity: 65_536,
        },
        Default::default(),
    )
    .await
    .unwrap();
    let mut subscriber = watcher.subscribe(format!("{prefix}.>")).await.unwrap();
    let running = Running::start(config).await;
    let counts = running.counts.clone();
    tokio::time::timeout(Duration::from_secs(20), subscriber.next())
        .await
        .expect("readings before the restart");

    // Act
    server.kill();
    eventually(
        "readings counted as unsent",
        Duration::from_secs(20),
        || async { (counts.unsent.load(Ordering::Relaxed) > 0).then_some(()) },
    )
    .await;
    let (status, metrics) = http_get(running.ops_addr, "/metrics").await;
    server.restart().await;
    let published_after_restart = counts.published.load(Ordering::Relaxed);

    // Assert: the subscriber's client reconnected too and readings flow again.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no readings after the restart"
        );
        let received = tokio::time::timeout(Duration::from_millis(200), subscriber.next()).await;
        if matches!(received, Ok(Some(_)))
            && counts.published.load(Ordering::Relaxed) > published_after_restart
        {
            break;
        }
    }
    let summary = running.stop().await;
    assert!(summary.unsent > 0);
    assert!(summary.published > published_after_restart);
    // The outage shows on /metrics, described.
    assert_eq!(status, 200);
    assert!(
        metrics.contains("# HELP readings_unsent_total Readings given up on"),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"readings_unsent_total{reason=""#),
        "{metrics}"
    );
}

#[tokio::test]
async fn jetstream_mode_loses_nothing_it_reported_as_sent_across_a_restart() {
    // Arrange
    let mut server = NatsServer::start().await;
    let mut config = config(&server.url());
    config.mode = DeliveryMode::Jetstream;
    config.rate_per_sec = 500.0;
    config.publish_timeout = Duration::from_millis(500);
    let stream = config.stream.clone();
    let running = Running::start(config).await;
    let counts = running.counts.clone();
    eventually("readings acknowledged", Duration::from_secs(20), || async {
        (counts.published.load(Ordering::Relaxed) > 100).then_some(())
    })
    .await;

    // Act
    server.kill();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.restart().await;
    let before = counts.published.load(Ordering::Relaxed);
    eventually(
        "acknowledgements after the restart",
        Duration::from_secs(30),
        || async { (counts.published.load(Ordering::Relaxed) > before + 200).then_some(()) },
    )
    .await;
    let summary = running.stop().await;

    // Assert: every reading reported as published is in the stream, once.
    let js = jetstream::new(async_nats::connect(server.url()).await.unwrap());
    let (stored, _) = stored_readings(&js, &stream).await;
    assert!(
        stored.len() as u64 >= summary.published,
        "stored {} < published {}",
        stored.len(),
        summary.published
    );
    assert!(
        stored.values().all(|times| *times == 1),
        "a duplicate was stored"
    );
    assert!(summary.retried > 0, "the outage forced retries");
}

#[tokio::test]
async fn a_paced_reading_is_confirmed_while_the_publisher_waits_for_the_next() {
    // Arrange: one reading every 3 s, so the second is far off.
    let mut config = config(&nats_url());
    config.mode = DeliveryMode::Jetstream;
    config.rate_per_sec = 1.0 / 3.0;
    config.count = 2;
    let _cleanup = StreamGuard {
        url: nats_url(),
        name: config.stream.clone(),
    };
    let (_client, mut subscriber) = subscribe_below(&nats_url(), &config.subject_prefix).await;
    let running = Running::start(config).await;
    let counts = running.counts.clone();

    // Act: the first reading goes out.
    tokio::time::timeout(Duration::from_secs(20), subscriber.next())
        .await
        .expect("the first reading");

    // Assert: its PubAck is settled during the pacing wait, not when the
    // next reading is published 3 s later.
    eventually(
        "the first PubAck settled",
        Duration::from_secs(1),
        || async { (counts.published.load(Ordering::Relaxed) == 1).then_some(()) },
    )
    .await;
    running.stop().await;
}

#[tokio::test]
async fn jetstream_mode_accounts_for_every_reading_through_an_outage() {
    // Arrange: few attempts and short PubAck timeouts, so that an outage
    // makes readings run out of attempts.
    let mut server = NatsServer::start().await;
    let mut config = config(&server.url());
    config.mode = DeliveryMode::Jetstream;
    config.rate_per_sec = 300.0;
    config.count = 1_500;
    config.publish_timeout = Duration::from_millis(300);
    config.max_publish_attempts = 2;
    let stream = config.stream.clone();
    let running = Running::start(config).await;
    let counts = running.counts.clone();
    eventually("readings acknowledged", Duration::from_secs(20), || async {
        (counts.published.load(Ordering::Relaxed) > 100).then_some(())
    })
    .await;

    // Act: an outage long enough for readings to be given up on.
    server.kill();
    eventually("readings given up on", Duration::from_secs(20), || async {
        (counts.unsent.load(Ordering::Relaxed) > 0).then_some(())
    })
    .await;
    server.restart().await;

    // Assert: every reading ends up acknowledged or counted as unsent.
    eventually("every reading settled", Duration::from_secs(60), || async {
        let summary = counts.summary();
        (summary.published + summary.unsent == 1_500).then_some(())
    })
    .await;
    let summary = running.stop().await;
    assert_eq!(summary.published + summary.unsent, 1_500, "{summary:?}");
    assert!(summary.unsent > 0 && summary.retried > 0, "{summary:?}");
    let js = jetstream::new(async_nats::connect(server.url()).await.unwrap());
    let (stored, _) = stored_readings(&js, &stream).await;
    assert!(
        stored.len() as u64 >= summary.published,
        "stored {} < published {}",
        stored.len(),
        summary.published
    );
    assert!(
        stored.values().all(|times| *times == 1),
        "a duplicate was stored"
    );
}

#[tokio::test]
async fn a_jetstream_publisher_stopped_during_an_outage_stops_within_its_grace() {
    // Arrange: more readings being resent than the window holds (each has
    // 20 attempts: far longer than the grace) when the stop comes.
    let mut server = NatsServer::start().await;
    let mut config = config(&server.url());
    config.mode = DeliveryMode::Jetstream;
    config.rate_per_sec = 200.0;
    config.ack_window = 16;
    config.publish_timeout = Duration::from_millis(300);
    config.shutdown_grace = Duration::from_secs(1);
    let running = Running::start(config).await;
    let counts = running.counts.clone();
    eventually("readings acknowledged", Duration::from_secs(20), || async {
        (counts.published.load(Ordering::Relaxed) > 50).then_some(())
    })
    .await;
    server.kill();
    eventually("resends", Duration::from_secs(20), || async {
        (counts.retried.load(Ordering::Relaxed) > 32).then_some(())
    })
    .await;

    // Act
    let started = std::time::Instant::now();
    let summary = tokio::time::timeout(Duration::from_secs(10), running.stop())
        .await
        .expect("the publisher stops within its grace and a PubAck timeout");

    // Assert: what was still unconfirmed is counted as unsent.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(summary.unsent > 0, "{summary:?}");
    server.restart().await;
}
