//! The checker on broker clusters: the same scripted fleet and churn of
//! alert-subscribers, on private 3-node NATS and RabbitMQ clusters whose
//! node leading the readings stream and node leading the work queue are
//! SIGKILLed mid-run and started again. Nothing confirmed may be lost.
//!
//! Slow (two clusters boot, ~40 s), so `#[ignore]`d in the normal suite and
//! run by `scripts/test.sh --cluster`.

use std::time::Duration;

use chaos::{Options, Schedule};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "boots 3-node NATS and RabbitMQ clusters: run with scripts/test.sh --cluster"]
async fn alerting_on_broker_clusters_loses_nothing_when_leaders_die() {
    let options = Options {
        schedule: Schedule::Churn,
        sensors: 30,
        rate_per_sec: 150.0,
        duration: Duration::from_secs(40),
        cluster: true,
        ..Options::default()
    };

    let report = chaos::run(&options).await.unwrap();

    println!("{}", report.render());
    assert!(
        report.expected > 100,
        "the script crosses thresholds: {report:?}"
    );
    assert_eq!(report.failures(), 0, "{}", report.render());
}
