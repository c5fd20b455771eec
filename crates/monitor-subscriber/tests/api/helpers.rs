//! Test fixtures: monitors on the local NATS with subjects of their own, and
//! polling with deadlines.

use std::{net::SocketAddr, time::Duration};

use common::{config::SecretUrl, shutdown::Shutdown};
use monitor_subscriber::{Application, Config, StatsHandle};
pub(crate) use testkit::{eventually, http_get, nats_url, unique};
use tokio::task::JoinHandle;

/// Subjects of one test.
#[derive(Debug, Clone)]
pub(crate) struct Subjects {
    pub(crate) readings: String,
    pub(crate) stats: String,
}

impl Subjects {
    pub(crate) fn new() -> Self {
        let suffix = unique();
        Subjects {
            readings: format!("test.{suffix}.sensor.data"),
            stats: format!("test.{suffix}.sensor.stats"),
        }
    }
}

/// A monitor running in-process.
#[derive(Debug)]
pub(crate) struct TestMonitor {
    pub(crate) ops_addr: SocketAddr,
    pub(crate) stats: StatsHandle,
    pub(crate) shutdown: Shutdown,
    pub(crate) task: JoinHandle<anyhow::Result<()>>,
}

impl TestMonitor {
    pub(crate) async fn start(subjects: &Subjects) -> Self {
        Self::start_with(subjects, |_| {}).await
    }

    /// A monitor on `subjects` whose config `change` adjusts first.
    pub(crate) async fn start_with(subjects: &Subjects, change: impl FnOnce(&mut Config)) -> Self {
        common::telemetry::init_for_tests();
        let mut config = Config {
            nats_url: SecretUrl::new(nats_url()),
            ops_addr: "127.0.0.1:0".parse().unwrap(),
            subject_prefix: subjects.readings.clone(),
            stats_subject: subjects.stats.clone(),
            summary_interval: Duration::from_millis(500),
            ..Config::default()
        };
        change(&mut config);
        let app = Application::build(config).await.unwrap();
        app.wait_until_subscribed().await;
        let shutdown = Shutdown::new();
        TestMonitor {
            ops_addr: app.ops_addr(),
            stats: app.stats(),
            shutdown: shutdown.clone(),
            task: tokio::spawn(app.run_until_stopped(shutdown)),
        }
    }

    /// Waits until `readings + rejected` reach `expected`.
    pub(crate) async fn wait_for(&self, expected: u64) {
        let stats = self.stats.clone();
        eventually(
            "the monitor to count every message",
            Duration::from_secs(20),
            move || {
                let stats = stats.clone();
                async move {
                    let totals = stats.report().totals;
                    (totals.readings + totals.rejected >= expected).then_some(())
                }
            },
        )
        .await;
    }

    pub(crate) async fn stop(self) {
        self.shutdown.trigger();
        tokio::time::timeout(Duration::from_secs(20), self.task)
            .await
            .expect("the monitor drains and stops")
            .unwrap()
            .unwrap();
    }
}
