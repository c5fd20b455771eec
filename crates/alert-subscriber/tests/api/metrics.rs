//! `/metrics`: the alert-subscriber's own series, each with its `# HELP`
//! and `# TYPE` lines, beside the shared ones.

use crate::helpers::{TestEnv, http_get};

#[tokio::test]
async fn metrics_carry_help_lines_for_the_alert_series() {
    // Arrange
    let env = TestEnv::new();
    let (instance, client, alerts) = env.start_collecting(env.config()).await;

    // Act: one critical reading, so the alert series have a value.
    env.publish_proto(&client, "described", 45.0, 1).await;
    alerts.wait_for_sensor("described").await;
    let (status, metrics) = http_get(instance.ops_addr, "/metrics").await;

    // Assert
    assert_eq!(status, 200);
    for line in [
        "# HELP alerts_raised_total Alerts raised, by severity.",
        "# TYPE alerts_raised_total counter",
        "# HELP alerts_pending_handoff ",
        "# TYPE alerts_pending_handoff gauge",
        "# HELP messages_received_total ",
    ] {
        assert!(metrics.contains(line), "{line:?} missing from\n{metrics}");
    }
    instance.stop().await;
}
