//! JetStream mode: the durable consumer acks a reading only once its alert
//! is safe, so a killed subscriber or a RabbitMQ outage loses nothing.

use std::{collections::HashSet, sync::atomic::Ordering, time::Duration};

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
            "mode = \"jetstream\"\nsubject_prefix = \"{}\"\nalert_subject_prefix = \"{}\"\nstream = \"{}\"\ndurable_name = \"{}\"\ntask_queue = \"{}\"\nack_wait = \"2s\"\nmax_in_flight = {max_in_flight}\n",
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
    env.wait_until_acked(&js, Duration::from_secs(60), true)
        .await;
    second.terminate().await;
}

#[tokio::test]
async fn jetstream_mode_holds_readings_while_rabbitmq_is_down_without_redelivery() {
    // Arrange: readings stored in the stream, RabbitMQ not up yet, and an ack
    // wait much shorter than the outage.
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
    config.ack_wait = Duration::from_millis(1000);
    config.publish_timeout = Duration::from_millis(500);
    let instance = TestAlert::start(config).await;

    // Act: the outage lasts several ack waits.
    instance.wait_for_pending(5).await;
    // The outage itself: four ack waits with nothing but progress acks.
    tokio::time::sleep(Duration::from_secs(4)).await;
    node.boot().await;

    // Assert
    instance.wait_for_confirmed(5).await;
    assert_eq!(
        instance.counts.duplicates.load(Ordering::Relaxed),
        0,
        "no reading was redelivered while its alert waited"
    );
    assert_eq!(instance.counts.alerts.load(Ordering::Relaxed), 5);
    let tasks = env.wait_for_tasks(5).await;
    assert_eq!(tasks.len(), 5);
    env.wait_until_acked(&js, Duration::from_secs(10), false)
        .await;
    instance.stop().await;
}

#[tokio::test]
async fn jetstream_mode_sets_the_consumer_up_again_when_it_is_deleted() {
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

    // Act: an operator deletes the durable consumer under the running service.
    js.get_stream(&env.stream)
        .await
        .unwrap()
        .delete_consumer(&env.durable)
        .await
        .unwrap();
    store("after").await;

    // Assert: the consumer is back, and the new reading raised its alert.
    alerts.wait_for_sensor("after").await;
    env.wait_until_acked(&js, Duration::from_secs(20), true)
        .await;
    let summary = instance.stop().await;
    assert_eq!(summary.alerts, 2, "the replayed reading is a duplicate");
}
