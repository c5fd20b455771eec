//! The partitioned consumer group, on a private nats-server with the
//! deployments' partition mapping: the server and the hash agree, lanes are
//! balanced and exclusive, a member that leaves or dies hands its lanes over
//! within the bounds, the sensors' states follow their lanes, and three
//! members give the same alerts as one.

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    time::{Duration, Instant},
};

use alert_subscriber::{
    partition::{Lane, partition_of},
    rules::{AlertEngine, Verdict, default_rules},
};
use common::{codec::ContentType, nats::DeliveryMode};
use futures::StreamExt;

use crate::helpers::{
    AlertProcess, Alerts, NatsServer, TestAlert, TestEnv, eventually, publish, reading,
};

/// Every lane of the default 16 partitions.
const LANES: usize = 18;

/// What `/partitions` of the member at `addr` says, once it answers.
async fn view(addr: SocketAddr) -> Option<serde_json::Value> {
    tokio::net::TcpStream::connect(addr).await.ok()?;
    let (status, body) = testkit::http_get(addr, "/partitions").await;
    (status == 200).then(|| serde_json::from_str(&body).ok())?
}

fn names(value: &serde_json::Value) -> BTreeSet<String> {
    value
        .as_array()
        .map(|lanes| {
            lanes
                .iter()
                .filter_map(|lane| lane.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until the members at `addrs` hold every lane exactly once, each
/// holding what the assignment gives it, with partitions balanced.
async fn wait_for_balance(addrs: &[SocketAddr], timeout: Duration) {
    eventually(
        &format!("{} members balanced", addrs.len()),
        timeout,
        || async {
            let mut held = Vec::new();
            for addr in addrs {
                let view = view(*addr).await?;
                let owned = names(&view["owned"]);
                let mine = names(&view["assignment"][view["member_id"].as_str()?]);
                let settled = view["members"].as_array()?.len() == addrs.len()
                    && owned == mine
                    && names(&view["releasing"]).is_empty();
                if !settled {
                    return None;
                }
                held.push(owned);
            }
            let all: Vec<&String> = held.iter().flatten().collect();
            let distinct: BTreeSet<&String> = all.iter().copied().collect();
            if all.len() != LANES || distinct.len() != LANES {
                return None;
            }
            let partitions: Vec<usize> = held
                .iter()
                .map(|lanes| lanes.iter().filter(|lane| lane.starts_with('p')).count())
                .collect();
            let spread = partitions.iter().max()? - partitions.iter().min()?;
            (spread <= 1).then_some(())
        },
    )
    .await;
}

/// A member of `env`'s group, in-process, with the given id.
async fn member(env: &TestEnv, id: &str) -> TestAlert {
    let mut config = env.config();
    config.mode = DeliveryMode::Jetstream;
    config.member_id = Some(id.into());
    TestAlert::start(config).await
}

#[tokio::test]
async fn the_servers_partition_mapping_puts_a_reading_where_the_hash_says() {
    // Arrange: a plain subscriber of sensor.data.> on a server with the
    // deployments' configuration.
    let server = NatsServer::with_partitions().await;
    let client = async_nats::connect(server.url()).await.unwrap();
    let mut readings = client.subscribe("sensor.data.>").await.unwrap();
    client.flush().await.unwrap();
    let sensors: Vec<String> = (0..50).map(|i| format!("dev-{i}")).collect();

    // Act: a plain client publishes on sensor.data.<sensor_id>.
    for sensor in &sensors {
        client
            .publish(format!("sensor.data.{sensor}"), "x".into())
            .await
            .unwrap();
    }
    client.flush().await.unwrap();

    // Assert: each arrives, on sensor.data.<sensor_id>.<partition_of(id)>.
    for sensor in &sensors {
        let message = tokio::time::timeout(Duration::from_secs(5), readings.next())
            .await
            .expect("the reading reaches a sensor.data.> subscriber")
            .unwrap();
        let expected = format!("sensor.data.{sensor}.{}", partition_of(sensor, 16));
        assert_eq!(message.subject.as_str(), expected);
    }
}

#[tokio::test]
async fn lanes_are_balanced_and_exclusive_for_one_two_and_three_members_and_a_leave_hands_over_at_once()
 {
    // Arrange
    let server = NatsServer::with_partitions().await;
    let env = TestEnv::partitioned(&server);
    let mut members = Vec::new();

    // Act / Assert: members join one by one.
    for id in ["m-1", "m-2", "m-3"] {
        members.push(member(&env, id).await);
        let addrs: Vec<SocketAddr> = members.iter().map(|m| m.ops_addr).collect();
        wait_for_balance(&addrs, Duration::from_secs(20)).await;
    }

    // A clean leave: the others hold its lanes within 2 s of its goodbye.
    let leaving = members.remove(1);
    leaving.stop().await;
    let left = Instant::now();
    let addrs: Vec<SocketAddr> = members.iter().map(|m| m.ops_addr).collect();
    wait_for_balance(&addrs, Duration::from_secs(10)).await;
    let handover = left.elapsed();
    assert!(
        handover <= Duration::from_secs(2),
        "lanes of a member that left moved in {handover:?}"
    );
    for member in members {
        member.stop().await;
    }
}

#[tokio::test]
async fn a_killed_members_lanes_move_within_ten_seconds() {
    // Arrange: two member processes, balanced.
    let server = NatsServer::with_partitions().await;
    let env = TestEnv::partitioned(&server);
    let config = env.write_config(
        "member.toml",
        &format!(
            "mode = \"jetstream\"\ngroup = \"{}\"\ntask_queue = \"{}\"\n",
            env.group, env.task_queue
        ),
    );
    let mut doomed = AlertProcess::spawn(&config, &env);
    let survivor = AlertProcess::spawn(&config, &env);
    wait_for_balance(
        &[doomed.ops_addr, survivor.ops_addr],
        Duration::from_secs(30),
    )
    .await;

    // Act: SIGKILL, no goodbye.
    doomed.kill();
    let killed = Instant::now();

    // Assert: the survivor holds every lane within the bound.
    wait_for_balance(&[survivor.ops_addr], Duration::from_secs(30)).await;
    let moved = killed.elapsed();
    assert!(
        moved <= Duration::from_secs(10),
        "lanes of a killed member moved in {moved:?}"
    );
    survivor.terminate().await;
}

/// A temperature series crossing the warning and critical thresholds back
/// and forth, hovering at the lines (default rules: 30 / 40, hysteresis 1).
const SERIES: [f64; 12] = [
    25.0, 30.5, 30.2, 29.6, 28.5, 30.6, 41.0, 39.5, 40.2, 38.0, 25.0, 29.0,
];

/// The alert ids one evaluator in stream order raises for `sensors`, each
/// publishing `count` readings of [`SERIES`] (seq 1..=count).
fn expected_alerts(sensors: &[String], count: u64) -> BTreeSet<String> {
    let rules = default_rules();
    let mut engine = AlertEngine::default();
    let mut ids = BTreeSet::new();
    for seq in 1..=count {
        for sensor in sensors {
            let value = SERIES[(seq - 1) as usize % SERIES.len()];
            if let Verdict::Raise { .. } =
                engine.evaluate(&rules, sensor, "temperature", value, seq)
            {
                let reading = reading(sensor, value, seq);
                ids.insert(format!("{sensor}-{}-{seq}", reading.timestamp));
            }
        }
    }
    ids
}

/// Publishes readings `seqs` of each sensor, round-robin, as a plain client.
async fn publish_series(
    client: &async_nats::Client,
    sensors: &[String],
    seqs: std::ops::RangeInclusive<u64>,
) {
    for seq in seqs {
        for sensor in sensors {
            let value = SERIES[(seq - 1) as usize % SERIES.len()];
            publish(
                client,
                "sensor.data",
                &reading(sensor, value, seq),
                Some(ContentType::Protobuf),
            )
            .await;
        }
    }
    client.flush().await.unwrap();
}

/// The distinct alert ids seen.
fn alert_ids(alerts: &Alerts) -> BTreeSet<String> {
    alerts
        .all()
        .into_iter()
        .map(|alert| alert.alert_id)
        .collect()
}

#[tokio::test]
async fn sensor_states_follow_their_lane_across_a_handover() {
    // Arrange: member m-a alone holds every lane; sensors whose partitions
    // go to m-b once it joins (odd partitions: lanes are dealt alternately).
    let server = NatsServer::with_partitions().await;
    let env = TestEnv::partitioned(&server);
    let client = env.nats().await;
    let alerts = Alerts::collect(&client, &env.alerts).await;
    let sensors: Vec<String> = (0..200)
        .map(|i| format!("hand-{i}"))
        .filter(|sensor| partition_of(sensor, 16) % 2 == 1)
        .take(20)
        .collect();
    let first = member(&env, "m-a").await;
    wait_for_balance(&[first.ops_addr], Duration::from_secs(20)).await;

    // Act: the first half of every series is evaluated by m-a; m-b joins and
    // takes their lanes while the second half is being published.
    publish_series(&client, &sensors, 1..=30).await;
    let expected_first = expected_alerts(&sensors, 30);
    eventually(
        "m-a raised the first half's alerts",
        Duration::from_secs(30),
        || async { (alert_ids(&alerts) == expected_first).then_some(()) },
    )
    .await;
    let second = member(&env, "m-b").await;
    publish_series(&client, &sensors, 31..=45).await;
    wait_for_balance(&[first.ops_addr, second.ops_addr], Duration::from_secs(20)).await;
    publish_series(&client, &sensors, 46..=60).await;

    // Assert: exactly the alerts one evaluator in order raises — a crossing
    // hovering across the handover is not raised again, none is missed.
    let expected = expected_alerts(&sensors, 60);
    eventually("every expected alert", Duration::from_secs(30), || async {
        (alert_ids(&alerts).len() >= expected.len()).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ids = alert_ids(&alerts);
    assert_eq!(ids, expected, "alert ids across the handover");
    let held_by_b = view(second.ops_addr).await.unwrap();
    let lanes_b = names(&held_by_b["owned"]);
    for sensor in &sensors {
        let lane = Lane::Partition(partition_of(sensor, 16)).to_string();
        assert!(lanes_b.contains(&lane), "{sensor}'s lane moved to m-b");
    }
    second.stop().await;
    first.stop().await;
}

#[tokio::test]
async fn three_members_raise_the_same_alerts_as_one() {
    // Arrange: a fleet's readings stored in the stream by a plain client.
    let server = NatsServer::with_partitions().await;
    let env = TestEnv::partitioned(&server);
    let client = env.nats().await;
    let js = env.sensor_stream(&client).await;
    let alerts = Alerts::collect(&client, &env.alerts).await;
    let sensors: Vec<String> = (0..40).map(|i| format!("fleet-{i}")).collect();
    publish_series(&client, &sensors, 1..=24).await;
    let expected = expected_alerts(&sensors, 24);
    eventually("every reading stored", Duration::from_secs(10), || async {
        let mut stream = js.get_stream(&env.stream).await.ok()?;
        (stream.info().await.ok()?.state.messages == 40 * 24).then_some(())
    })
    .await;

    // Act: one member evaluates everything; then a new group of three.
    let single = member(&env, "solo").await;
    eventually(
        "the single member's alerts",
        Duration::from_secs(30),
        || async { (alert_ids(&alerts).len() >= expected.len()).then_some(()) },
    )
    .await;
    single.stop().await;
    let one = alert_ids(&alerts);
    let mut env3 = TestEnv::partitioned(&server);
    env3.task_queue = env.task_queue.clone();
    let alerts3 = Alerts::collect(&client, &env3.alerts).await;
    let trio = [
        member(&env3, "t-1").await,
        member(&env3, "t-2").await,
        member(&env3, "t-3").await,
    ];
    eventually("the trio's alerts", Duration::from_secs(30), || async {
        (alert_ids(&alerts3).len() >= expected.len()).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let three = alert_ids(&alerts3);
    for member in trio {
        member.stop().await;
    }

    // Assert
    assert_eq!(one, expected, "one member");
    assert_eq!(three, expected, "three members");
}

#[tokio::test]
async fn monitor_subscriber_still_sees_every_reading_on_a_mapped_server() {
    // Arrange: monitor-subscriber, unchanged, on the deployments' server.
    let server = NatsServer::with_partitions().await;
    let monitor = monitor_subscriber::Application::build(monitor_subscriber::Config {
        nats_url: common::config::SecretUrl::new(server.url()),
        ops_addr: "127.0.0.1:0".parse().unwrap(),
        ..Default::default()
    })
    .await
    .unwrap();
    monitor.wait_until_subscribed().await;
    let stats = monitor.stats();
    let shutdown = common::shutdown::Shutdown::new();
    let running = tokio::spawn(monitor.run_until_stopped(shutdown.clone()));
    let client = async_nats::connect(server.url()).await.unwrap();
    let sensors: Vec<String> = (0..20).map(|i| format!("plain-{i}")).collect();

    // Act: a plain client publishes on sensor.data.<sensor_id>; the server
    // moves each reading to its partition's subject.
    publish_series(&client, &sensors, 1..=5).await;

    // Assert: every reading of every sensor counted, none lost on the way.
    eventually("all 100 readings seen", Duration::from_secs(10), || async {
        let report = stats.report();
        (report.totals.readings == 100).then_some(report)
    })
    .await;
    let report = stats.report();
    assert_eq!(report.totals.sensors, 20);
    assert_eq!(report.totals.seq_gaps, 0);
    shutdown.trigger();
    running.await.unwrap().unwrap();
}
