//! Hot reload of `[rules.*]`: an edit applies without a restart, a bad one
//! is rejected and the rules in force stay.

use std::time::Duration;

use common::proto::sensor::v1::Severity;

use crate::helpers::{TestEnv, eventually, metric};

/// Reloads that reached the service, and reloads refused (the only test of
/// this binary that edits a watched file, so the counts are its own).
const APPLIED: &str = r#"config_reloads_total{outcome="applied"}"#;
const REJECTED: &str = r#"config_reloads_total{outcome="rejected"}"#;

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
    let (mut instance, client, alerts) = env.start_collecting(config).await;
    env.publish_proto(&client, "before", 35.0, 1).await;
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
    env.publish_proto(&client, "calm", 35.0, 1).await;
    env.publish_proto(&client, "hot", 65.0, 1).await;

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

    assert!(metric(instance.ops_addr, APPLIED).await >= Some(1.0));

    // A bad edit (critical below warning), then a broken file: each is
    // rejected (the watcher counts it), and the rules stay.
    for bad in [
        rules(70.0, 10.0),
        "[rules.temperature\nwarning = ".to_string(),
    ] {
        let rejected = metric(instance.ops_addr, REJECTED).await.unwrap_or(0.0);
        env.write_config("alert.toml", &bad);
        eventually("the edit rejected", Duration::from_secs(20), || async {
            (metric(instance.ops_addr, REJECTED).await > Some(rejected)).then_some(())
        })
        .await;
    }
    assert!(
        !instance.rules.has_changed().unwrap(),
        "a bad edit must not reach the service"
    );
    assert_eq!(instance.rules.borrow()["temperature"].warning, 50.0);
    env.publish_proto(&client, "still", 55.0, 1).await;
    let alert = alerts.wait_for_sensor("still").await;
    assert_eq!(
        (alert.severity, alert.threshold),
        (Severity::Warning as i32, 50.0)
    );
    instance.stop().await;
}
