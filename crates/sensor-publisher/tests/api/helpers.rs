//! Test fixtures: a config on the local NATS with subjects of its own, a
//! private `nats-server` for restart tests, and polling with deadlines.

use common::config::SecretUrl;
use sensor_publisher::{Config, FleetConfig};
pub(crate) use testkit::{NatsServer, eventually, unique};

/// The shared NATS server of the machine (never stopped by tests).
pub(crate) fn nats_url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// A publisher config on its own subject prefix and stream, ops on port 0.
pub(crate) fn config(url: &str, suffix: &str) -> Config {
    common::telemetry::init_for_tests();
    Config {
        nats_url: SecretUrl::new(url),
        ops_addr: "127.0.0.1:0".parse().unwrap(),
        subject_prefix: format!("test.{suffix}.sensor.data"),
        stream: format!("TEST_SENSORS_{suffix}"),
        fleet: FleetConfig {
            sensors: 4,
            seed: Some(1),
            ..FleetConfig::default()
        },
        rate_per_sec: 0.0,
        ..Config::default()
    }
}

/// Deletes a test stream on the shared server when dropped.
#[derive(Debug)]
pub(crate) struct StreamGuard {
    pub(crate) url: String,
    pub(crate) name: String,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let url = self.url.clone();
        let name = self.name.clone();
        // Drop cannot await; a short-lived runtime on another thread can.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                if let Ok(client) = async_nats::connect(url).await {
                    let _ = async_nats::jetstream::new(client)
                        .delete_stream(&name)
                        .await;
                }
            });
        })
        .join();
    }
}
