//! Core mode: instances in the `alerts` queue group share the readings,
//! each evaluated exactly once.

use std::{collections::HashSet, time::Duration};

use crate::helpers::{Alerts, TestAlert, TestEnv, eventually};

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
    env.publish_critical(&client, "s", 300).await;

    // Assert
    eventually("300 readings received", Duration::from_secs(30), || async {
        (first.received() + second.received() == 300).then_some(())
    })
    .await;
    eventually("300 alerts", Duration::from_secs(30), || async {
        (alerts.all().len() >= 300).then_some(())
    })
    .await;
    assert!(
        first.received() > 0 && second.received() > 0,
        "both instances took a share"
    );
    let tasks = env.wait_for_tasks(300).await;
    // Stopped, the instances have raised every alert they ever will: their
    // own counts say whether a reading was evaluated twice, with no wait for
    // late duplicates on the wire.
    let (first, second) = (first.stop().await, second.stop().await);
    assert_eq!(
        first.alerts + second.alerts,
        300,
        "no reading evaluated twice"
    );
    let all = alerts.all();
    let sensors: HashSet<_> = all.iter().map(|a| a.sensor_id.clone()).collect();
    assert_eq!(all.len(), 300, "no alert published twice");
    assert_eq!(sensors.len(), 300, "no reading missed");
    let alert_ids: HashSet<_> = all.iter().map(|a| a.alert_id.clone()).collect();
    assert_eq!(tasks.keys().cloned().collect::<HashSet<_>>(), alert_ids);
}
