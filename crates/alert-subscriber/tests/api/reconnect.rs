//! A NATS server restart: publisher, alert-subscriber and monitor-subscriber
//! reconnect by themselves and readings flow again.

use std::time::Duration;

use common::shutdown::Shutdown;

use crate::helpers::{NatsServer, TestAlert, TestEnv, amqp_url, eventually};

#[tokio::test]
async fn a_nats_restart_publisher_and_subscribers_reconnect_and_carry_on() {
    // Arrange: everything on a private nats-server.
    let mut server = NatsServer::start().await;
    let env = TestEnv::on(&server.url(), &amqp_url());
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
    // The outage itself: long enough for every client to notice.
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
