//! sensor-publisher in JetStream mode on a three-node NATS cluster, the
//! readings stream kept on all three (`stream_replicas = 3`): the node
//! leading the stream is killed mid-publish, and no reading the publisher
//! counted as acknowledged is lost or stored twice.

use std::{
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use async_nats::jetstream;
use common::nats::DeliveryMode;
use testkit::NatsCluster;

use crate::{
    helpers::{Running, config, eventually},
    stored_readings,
};

/// Readings per run: 4 sensors × 1,250.
const READINGS: u64 = 5_000;

#[tokio::test]
#[ignore = "boots a 3-node NATS cluster: run with scripts/test.sh --cluster"]
async fn every_acknowledged_reading_is_stored_once_when_the_stream_leader_dies_mid_publish() {
    // Arrange: a publisher given every node's address, paced so the kill
    // lands in the middle of the run.
    let mut cluster = NatsCluster::start(3).await;
    let mut config = config(&cluster.url());
    config.mode = DeliveryMode::Jetstream;
    config.stream_replicas = 3;
    config.count = READINGS;
    config.rate_per_sec = 1_000.0;
    config.publish_timeout = Duration::from_secs(1);
    // Resends that span a stream leader election (up to ~10 s on
    // nats-server 2.9): the default 20 can run out before it ends.
    config.max_publish_attempts = 60;
    let stream = config.stream.clone();
    let running = Running::start(config).await;
    let counts = running.counts.clone();
    let published = || counts.published.load(Ordering::Relaxed);
    eventually(
        "1,000 readings acknowledged",
        Duration::from_secs(20),
        || async { (published() >= 1_000).then_some(()) },
    )
    .await;
    let leader = cluster
        .wait_for_stream_leader(&stream, Duration::from_secs(5))
        .await;

    // Act: SIGKILL the leader, wait for acknowledgements from its successor,
    // let the run finish, then bring the node back.
    cluster.kill(leader);
    let killed = Instant::now();
    let at_kill = published();
    eventually(
        "acknowledgements after the leader died",
        Duration::from_secs(30),
        || async { (published() > at_kill + 100).then_some(()) },
    )
    .await;
    let failover = killed.elapsed();
    let successor = cluster
        .wait_for_stream_leader(&stream, Duration::from_secs(5))
        .await;
    eventually(
        "every reading acknowledged or given up",
        Duration::from_secs(40),
        || async {
            let done = published() + counts.unsent.load(Ordering::Relaxed);
            (done >= READINGS).then_some(())
        },
    )
    .await;
    let summary = running.stop().await;
    cluster.restart(leader).await;

    // Assert: each (sensor, seq) of the run is in the stream exactly once.
    let js = jetstream::new(cluster.client());
    let (stored, message_ids) = stored_readings(&js, &stream).await;
    println!(
        "stream leader node-{leader} killed at {at_kill} acks; node-{successor} acknowledged \
         again after {failover:?}; {summary:?}"
    );
    assert_ne!(successor, leader);
    let duplicates: Vec<_> = stored.iter().filter(|(_, times)| **times > 1).collect();
    assert!(duplicates.is_empty(), "stored twice: {duplicates:?}");
    assert!(
        stored.len() as u64 >= summary.published,
        "stored {} < acknowledged {}",
        stored.len(),
        summary.published
    );
    assert_eq!(
        summary.unsent, 0,
        "every reading was acknowledged in the end"
    );
    assert_eq!(summary.published, READINGS);
    assert_eq!(stored.len() as u64, READINGS, "a reading is missing");
    assert_eq!(message_ids.len() as u64, READINGS);
    let sensors: std::collections::BTreeSet<&String> = stored.keys().map(|(id, _)| id).collect();
    assert_eq!(sensors.len(), 4);
    for id in sensors {
        let seqs = stored.keys().filter(|(sensor_id, _)| sensor_id == id);
        assert!(
            seqs.map(|(_, seq)| *seq).eq(1..=READINGS / 4),
            "{id}: a gap in its sequence"
        );
    }
}
