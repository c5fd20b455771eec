//! JetStream mode on a server without the partition mapping (the shared
//! one): every reading goes through the `unmapped` lane, whose checkpoint
//! moves only once its alerts are safe, so a killed subscriber or a RabbitMQ
//! outage loses nothing.

use std::{collections::HashSet, sync::atomic::Ordering, time::Duration};

use futures::TryStreamExt;

use common::codec::{Codec, ContentType};

use crate::helpers::{
    AlertProcess, Alerts, RabbitNode, TestAlert, TestEnv, eventually, nats_url, reading,
};

#[tokio::test]
async fn jetstream_mode_a_killed_subscriber_loses_no_reading() {
    // Arrange: 2000 critical readings, each on its own sensor, stored in the
    // test's stream before any subscriber runs.
    let env = TestEnv::new();
    let client = env.nats().await;
    let js = env.sensor_stream(&client).await;
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
            "mode = \"jetstream\"\nsubject_prefix = \"{}\"\nalert_subject_prefix = \"{}\"\nstream = \"{}\"\ngroup = \"{}\"\ntask_queue = \"{}\"\nmax_in_flight = {max_in_flight}\n",
            env.readings, env.alerts, env.stream, env.group, env.task_queue
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
    // The second instance takes the lane once the killed one's lease ran
    // out, and continues from its checkpoint to the end of the stream.
    env.wait_for_checkpoint(&js, "unmapped", 2000, Duration::from_secs(60))
        .await;
    second.terminate().await;
}

#[tokio::test]
async fn jetstream_mode_holds_readings_while_rabbitmq_is_down_without_redelivery() {
    // Arrange: readings stored in the stream, RabbitMQ not up yet.
    let node = RabbitNode::new();
    let env = TestEnv::on(&nats_url(), &node.url());
    let client = env.nats().await;
    let js = env.sensor_stream(&client).await;
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
    config.publish_timeout = Duration::from_millis(500);
    let instance = TestAlert::start(config).await;

    // Act: the outage lasts several checkpoint intervals and lease renewals.
    instance.wait_for_pending(5).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    node.boot().await;

    // Assert
    instance.wait_for_confirmed(5).await;
    assert_eq!(
        instance.counts.duplicates.load(Ordering::Relaxed),
        0,
        "no reading was evaluated twice while its alert waited"
    );
    assert_eq!(instance.counts.alerts.load(Ordering::Relaxed), 5);
    let tasks = env.wait_for_tasks(5).await;
    assert_eq!(tasks.len(), 5);
    env.wait_for_checkpoint(&js, "unmapped", 5, Duration::from_secs(10))
        .await;
    instance.stop().await;
}

#[tokio::test]
async fn jetstream_mode_sets_the_consumers_up_again_when_they_are_deleted() {
    // Arrange: a subscriber pulling from the test's stream.
    let env = TestEnv::new();
    let client = env.nats().await;
    let js = env.sensor_stream(&client).await;
    let alerts = Alerts::collect(&client, &env.alerts).await;
    let mut config = env.config();
    config.mode = common::nats::DeliveryMode::Jetstream;
    let instance = TestAlert::start(config).await;
    let codec = Codec::default();
    let store = |sensor: &'static str| {
        let js = js.clone();
        let subject = format!("{}.{sensor}", env.readings);
        let payload = codec
            .encode(&reading(sensor, 45.0, 1), ContentType::Json)
            .unwrap();
        async move { js.publish(subject, payload).await.unwrap().await.unwrap() }
    };
    store("before").await;
    alerts.wait_for_sensor("before").await;

    // Act: an operator deletes every consumer under the running service.
    let stream = js.get_stream(&env.stream).await.unwrap();
    let names: Vec<String> = stream.consumer_names().try_collect().await.unwrap();
    assert!(!names.is_empty(), "the lanes' consumers exist");
    for name in names {
        stream.delete_consumer(&name).await.unwrap();
    }
    store("after").await;

    // Assert: the consumer is back, and the new reading raised its alert.
    alerts.wait_for_sensor("after").await;
    env.wait_for_checkpoint(&js, "unmapped", 2, Duration::from_secs(20))
        .await;
    let summary = instance.stop().await;
    assert_eq!(summary.alerts, 2, "the replayed reading is a duplicate");
}
