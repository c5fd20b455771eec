//! alert-subscriber against the real NATS and RabbitMQ: the shared servers,
//! and private ones for the tests that stop a broker.

mod helpers;

use std::{
    collections::{BTreeMap, HashSet},
    sync::atomic::Ordering,
    time::Duration,
};

use common::{
    codec::{Codec, ContentType},
    proto::sensor::v1::Severity,
    shutdown::Shutdown,
};
use helpers::{
    AlertProcess, Alerts, NatsServer, RabbitNode, TestAlert, TestEnv, eventually, publish, reading,
};

#[tokio::test]
async fn queue_group_two_instances_split_the_load_none_twice_none_missed() {
    // Arrange: every reading is critical on a sensor of its own, so each
    // evaluation raises exactly one alert.
    let env = TestEnv::new();
    let first = TestAlert::start(env.config()).await;
    let second = TestAlert::start(env.config()).await;
    let client = env.nats().await;
    let alerts = Alerts::collect(&client, &env.alerts).await;

    // Act
    for i in 0..300 {
        publish(
            &client,
            &env.readings,
            &reading(&format!("s-{i:03}"), 45.0, 1),
            Some(ContentType::Protobuf),
        )
        .await;
    }

    // Assert
    eventually("300 readings received", Duration::from_secs(30), || async {
        (first.received() + second.received() == 300).then_some(())
    })
    .await;
    eventually("300 alerts", Duration::from_secs(30), || async {
        (alerts.all().len() >= 300).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let all = alerts.all();
    let sensors: HashSet<_> = all.iter().map(|a| a.sensor_id.clone()).collect();
    assert_eq!(all.len(), 300, "no reading evaluated twice");
    assert_eq!(sensors.len(), 300, "no reading missed");
    assert!(
        first.received() > 0 && second.received() > 0,
        "both instances took a share"
    );
    let tasks = env.wait_for_tasks(300).await;
    let alert_ids: HashSet<_> = all.iter().map(|a| a.alert_id.clone()).collect();
    assert_eq!(tasks.keys().cloned().collect::<HashSet<_>>(), alert_ids);
    first.stop().await;
    second.stop().await;
}

#[tokio::test]
async fn protobuf_json_headerless_json_and_a_bad_payload_among_them() {
    // Arrange
    let env = TestEnv::new();
    let instance = TestAlert::start(env.config()).await;
    let client = env.nats().await;
    let alerts = Alerts::collect(&client, &env.alerts).await;

    // Act
    publish(
        &client,
        &env.readings,
        &reading("proto", 41.0, 1),
        Some(ContentType::Protobuf),
    )
    .await;
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
    let metrics = http_get(instance.ops_addr, "/metrics").await;
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
async fn threshold_hot_reload_changes_behaviour_without_restart() {
    // Arrange
    let env = TestEnv::new();
    let rules = |warning: f64, critical: f64| {
        format!(
            "[rules.temperature]\nwarning = {warning}\ncritical = {critical}\ndirection = \"above\"\nhysteresis = 1.0\n"
        )
    };
    let file = env.write_config("alert.toml", &rules(30.0, 40.0));
    let mut config = env.config();
    config.config_file = Some(file);
    let mut instance = TestAlert::start(config).await;
    let client = env.nats().await;
    let alerts = Alerts::collect(&client, &env.alerts).await;
    publish(
        &client,
        &env.readings,
        &reading("before", 35.0, 1),
        Some(ContentType::Protobuf),
    )
    .await;
    let alert = alerts.wait_for_sensor("before").await;
    assert_eq!(
        (alert.severity, alert.threshold),
        (Severity::Warning as i32, 30.0)
    );

    // Act: raise the thresholds while it runs.
    env.write_config("alert.toml", &rules(50.0, 60.0));
    tokio::time::timeout(
        Duration::from_secs(20),
        instance
            .rules
            .wait_for(|r| r["temperature"].warning == 50.0),
    )
    .await
    .expect("the new rules applied")
    .unwrap();
    publish(
        &client,
        &env.readings,
        &reading("calm", 35.0, 1),
        Some(ContentType::Protobuf),
    )
    .await;
    publish(
        &client,
        &env.readings,
        &reading("hot", 65.0, 1),
        Some(ContentType::Protobuf),
    )
    .await;

    // Assert: 35 no longer alerts; 65 is critical against the new 60.
    let alert = alerts.wait_for_sensor("hot").await;
    assert_eq!(
        (alert.severity, alert.threshold),
        (Severity::Critical as i32, 60.0)
    );
    assert!(
        alerts.for_sensor("calm").is_empty(),
        "readings are evaluated in order"
    );

    // A bad edit (critical below warning), then a broken file: the rules stay.
    env.write_config("alert.toml", &rules(70.0, 10.0));
    tokio::time::sleep(Duration::from_millis(800)).await;
    env.write_config("alert.toml", "[rules.temperature\nwarning = ");
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(instance.rules.borrow()["temperature"].warning, 50.0);
    publish(
        &client,
        &env.readings,
        &reading("still", 55.0, 1),
        Some(ContentType::Protobuf),
    )
    .await;
    let alert = alerts.wait_for_sensor("still").await;
    assert_eq!(
        (alert.severity, alert.threshold),
        (Severity::Warning as i32, 50.0)
    );
    instance.stop().await;
}

#[tokio::test]
async fn an_alert_reaches_sensor_alert_and_the_task_queue() {
    // Arrange
    let env = TestEnv::new();
    let instance = TestAlert::start(env.config()).await;
    let client = env.nats().await;
    let alerts = Alerts::collect(&client, &env.alerts).await;

    // Act
    publish(
        &client,
        &env.readings,
        &reading("temp-042", 41.5, 7),
        Some(ContentType::Protobuf),
    )
    .await;

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
async fn rabbitmq_down_keeps_alerts_buffered_and_delivers_them_when_it_is_back() {
    // Arrange: the broker's port is reserved but nothing listens yet.
    let node = RabbitNode::new();
    let env = TestEnv::on(&helpers::nats_url(), &node.url());
    let mut config = env.config();
    config.publish_timeout_ms = Duration::from_millis(500);
    let instance = TestAlert::start(config).await;
    let client = env.nats().await;
    let alerts = Alerts::collect(&client, &env.alerts).await;

    // Act
    for i in 0..5 {
        publish(
            &client,
            &env.readings,
            &reading(&format!("down-{i}"), 45.0, 1),
            Some(ContentType::Protobuf),
        )
        .await;
    }
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
    let metrics = http_get(instance.ops_addr, "/metrics").await;
    assert!(metrics.contains("alert_handoff_retries_total"), "{metrics}");
    node.boot().await;

    // Assert
    eventually(
        "the buffered alerts confirmed",
        Duration::from_secs(60),
        || async { (instance.handoff.confirmed.load(Ordering::Relaxed) == 5).then_some(()) },
    )
    .await;
    let mut tasks = BTreeMap::new();
    env.take_tasks(&mut tasks).await;
    assert_eq!(tasks.len(), 5);
    instance.stop().await;
}

#[tokio::test]
async fn jetstream_mode_a_killed_subscriber_loses_no_reading() {
    // Arrange: 2000 critical readings, each on its own sensor, stored in the
    // test's stream before any subscriber runs.
    let env = TestEnv::new();
    let client = env.nats().await;
    let js = async_nats::jetstream::new(client.clone());
    common::nats::ensure_sensor_stream(&js, &env.stream, &env.readings)
        .await
        .unwrap();
    let codec = Codec::default();
    let mut acks = Vec::new();
    for i in 0..2000 {
        let payload = codec
            .encode(&reading(&format!("js-{i:04}"), 45.0, 1), ContentType::Json)
            .unwrap();
        acks.push(
            js.publish(format!("{}.js-{i:04}", env.readings), payload)
                .await
                .unwrap(),
        );
    }
    for ack in acks {
        ack.await.unwrap();
    }
    let alerts = Alerts::collect(&client, &env.alerts).await;
    let config = |max_in_flight: usize| {
        format!(
            "mode = \"jetstream\"\nsubject_prefix = \"{}\"\nalert_subject_prefix = \"{}\"\nstream = \"{}\"\ndurable_name = \"{}\"\ntask_queue = \"{}\"\nack_wait_ms = 2000\nmax_in_flight = {max_in_flight}\n",
            env.readings, env.alerts, env.stream, env.durable, env.task_queue
        )
    };
    // The first one hands alerts on one at a time, so it is mid-stream when killed.
    let slow = env.write_config("slow.toml", &config(1));
    let mut first = AlertProcess::spawn(&slow, &env);
    eventually(
        "the first subscriber under way",
        Duration::from_secs(30),
        || async { (alerts.all().len() >= 100).then_some(()) },
    )
    .await;

    // Act
    first.kill();
    let seen_before_restart = alerts.all().len();
    assert!(seen_before_restart < 2000, "killed mid-stream");
    let normal = env.write_config("normal.toml", &config(64));
    let second = AlertProcess::spawn(&normal, &env);

    // Assert: every reading raised its alert; repeats carry the same id.
    eventually(
        "an alert for every reading",
        Duration::from_secs(60),
        || async {
            let ids: HashSet<_> = alerts.all().into_iter().map(|a| a.alert_id).collect();
            (ids.len() == 2000).then_some(())
        },
    )
    .await;
    let tasks = env.wait_for_tasks(2000).await;
    assert!(tasks.values().all(|task| task.kind == "notify"));
    let all = alerts.all();
    let sensors: HashSet<_> = all.iter().map(|a| a.sensor_id.clone()).collect();
    assert_eq!(sensors.len(), 2000);
    let js = async_nats::jetstream::new(env.nats().await);
    let mut stream = js.get_stream(&env.stream).await.unwrap();
    let info = stream.info().await.unwrap();
    assert_eq!(info.state.messages, 2000);
    // The readings the killed instance had in hand stay "ack pending" until
    // their ack wait runs out and they are redelivered to the second one,
    // which may come after every alert id was already seen: wait for that.
    let consumer: async_nats::jetstream::consumer::PullConsumer =
        stream.get_consumer(&env.durable).await.unwrap();
    eventually("every reading acked", Duration::from_secs(60), || {
        let mut consumer = consumer.clone();
        async move {
            let info = consumer.info().await.ok()?;
            (info.num_ack_pending == 0 && info.num_pending == 0).then_some(())
        }
    })
    .await;
    second.terminate().await;
}

#[tokio::test]
async fn a_nats_restart_publisher_and_subscribers_reconnect_and_carry_on() {
    // Arrange: everything on a private nats-server.
    let mut server = NatsServer::start().await;
    let env = TestEnv::on(&server.url(), &helpers::amqp_url());
    let alert = TestAlert::start(env.config()).await;
    let monitor = monitor_subscriber::Application::build(monitor_subscriber::Config {
        nats_url: server.url().as_str().into(),
        ops_addr: "127.0.0.1:0".parse().unwrap(),
        subject_prefix: env.readings.clone(),
        stats_subject: format!("{}.stats", env.readings),
        ..Default::default()
    })
    .await
    .unwrap();
    monitor.wait_until_subscribed().await;
    let stats = monitor.stats();
    let monitor_stop = Shutdown::new();
    let monitor_task = tokio::spawn(monitor.run_until_stopped(monitor_stop.clone()));
    let publisher = sensor_publisher::Application::build(sensor_publisher::Config {
        nats_url: server.url().as_str().into(),
        ops_addr: "127.0.0.1:0".parse().unwrap(),
        subject_prefix: env.readings.clone(),
        rate_per_sec: 200.0,
        ..Default::default()
    })
    .await
    .unwrap();
    let publisher_stop = Shutdown::new();
    let publisher_task = tokio::spawn(publisher.run_until_stopped(publisher_stop.clone()));
    eventually("readings flowing", Duration::from_secs(20), || async {
        (stats.readings() > 50 && alert.received() > 50).then_some(())
    })
    .await;

    // Act
    server.kill();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    server.restart().await;
    let (monitor_before, alert_before) = (stats.readings(), alert.received());

    // Assert
    eventually(
        "readings flowing again",
        Duration::from_secs(30),
        || async {
            (stats.readings() > monitor_before + 100 && alert.received() > alert_before + 100)
                .then_some(())
        },
    )
    .await;
    publisher_stop.trigger();
    let summary = publisher_task.await.unwrap().unwrap();
    assert!(summary.unsent > 0, "readings during the outage are counted");
    monitor_stop.trigger();
    monitor_task.await.unwrap().unwrap();
    alert.stop().await;
}

/// A one-shot HTTP GET; the body.
async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}

#[tokio::test]
async fn a_stalled_subscriber_applies_backpressure_and_reports_slow_consumer_drops() {
    // Arrange: RabbitMQ unreachable, a one-alert hand-off buffer and a tiny
    // subscription buffer: intake stalls, and the NATS client must drop.
    let env = TestEnv::on(
        &helpers::nats_url(),
        &format!("amqp://guest:guest@127.0.0.1:{}/%2f", helpers::free_port()),
    );
    let mut config = env.config();
    config.handoff_buffer = 1;
    config.subscription_capacity = 16;
    config.publish_timeout_ms = Duration::from_millis(200);
    config.drain_grace_ms = Duration::from_millis(500);
    let instance = TestAlert::start(config).await;
    let client = env.nats().await;

    // Act
    for i in 0..2000 {
        publish(
            &client,
            &env.readings,
            &reading(&format!("slow-{i:04}"), 45.0, 1),
            Some(ContentType::Protobuf),
        )
        .await;
    }
    client.flush().await.unwrap();

    // Assert
    let metrics = eventually(
        "slow-consumer drops reported",
        Duration::from_secs(30),
        || async {
            let metrics = http_get(instance.ops_addr, "/metrics").await;
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

#[tokio::test]
async fn jetstream_mode_holds_readings_while_rabbitmq_is_down_without_redelivery() {
    // Arrange: readings stored in the stream, RabbitMQ not up yet, and an ack
    // wait much shorter than the outage.
    let node = RabbitNode::new();
    let env = TestEnv::on(&helpers::nats_url(), &node.url());
    let client = env.nats().await;
    let js = async_nats::jetstream::new(client.clone());
    common::nats::ensure_sensor_stream(&js, &env.stream, &env.readings)
        .await
        .unwrap();
    let codec = Codec::default();
    for i in 0..5 {
        let payload = codec
            .encode(
                &reading(&format!("held-{i}"), 45.0, 1),
                ContentType::Protobuf,
            )
            .unwrap();
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Content-Type", "application/protobuf");
        js.publish_with_headers(format!("{}.held-{i}", env.readings), headers, payload)
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let mut config = env.config();
    config.mode = common::nats::DeliveryMode::Jetstream;
    config.ack_wait_ms = Duration::from_millis(1000);
    config.publish_timeout_ms = Duration::from_millis(500);
    let instance = TestAlert::start(config).await;

    // Act: the outage lasts several ack waits.
    eventually(
        "5 alerts held for rabbitmq",
        Duration::from_secs(20),
        || async { (instance.handoff.pending.load(Ordering::Relaxed) == 5).then_some(()) },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    node.boot().await;

    // Assert
    eventually(
        "the held alerts confirmed",
        Duration::from_secs(60),
        || async { (instance.handoff.confirmed.load(Ordering::Relaxed) == 5).then_some(()) },
    )
    .await;
    assert_eq!(
        instance.counts.duplicates.load(Ordering::Relaxed),
        0,
        "no reading was redelivered while its alert waited"
    );
    assert_eq!(instance.counts.alerts.load(Ordering::Relaxed), 5);
    let tasks = env.wait_for_tasks(5).await;
    assert_eq!(tasks.len(), 5);
    let stream = js.get_stream(&env.stream).await.unwrap();
    let mut consumer: async_nats::jetstream::consumer::PullConsumer =
        stream.get_consumer(&env.durable).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while consumer.info().await.unwrap().num_ack_pending > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "readings left unacked"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    instance.stop().await;
}
