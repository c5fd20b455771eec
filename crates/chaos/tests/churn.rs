//! The checker itself, short: a scripted fleet through the whole system while
//! alert-subscribers go 1 → 3 → (SIGKILL one) → start one → (SIGTERM one);
//! the answer must be the one a single in-order evaluator gives.

use std::time::Duration;

use chaos::{Options, Schedule};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churning_alert_subscribers_lose_duplicate_and_invent_nothing() {
    let options = Options {
        schedule: Schedule::Churn,
        sensors: 30,
        rate_per_sec: 150.0,
        duration: Duration::from_secs(20),
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
