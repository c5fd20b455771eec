//! Test fixtures: a config on the local NATS with subjects of its own, a
//! publisher run to its end or in the background, a private `nats-server`
//! for restart tests, and polling with deadlines.

use std::{net::SocketAddr, sync::Arc};

use common::{config::SecretUrl, shutdown::Shutdown};
use sensor_publisher::{Application, Config, FleetConfig, PublishCounts, PublishSummary};
use testkit::unique;
pub(crate) use testkit::{NatsServer, eventually, http_get, nats_url};
use tokio::task::JoinHandle;

/// A publisher config on its own subject prefix and stream, ops on port 0.
pub(crate) fn config(url: &str) -> Config {
    common::telemetry::init_for_tests();
    let suffix = unique();
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

/// Runs a publisher with `config` until it has sent its `count`.
pub(crate) async fn run_to_end(config: Config) -> PublishSummary {
    Application::build(config)
        .await
        .unwrap()
        .run_until_stopped(Shutdown::new())
        .await
        .unwrap()
}

/// A client on the NATS at `url` subscribed to every subject below
/// `prefix`, flushed so that nothing published afterwards is missed.
pub(crate) async fn subscribe_below(
    url: &str,
    prefix: &str,
) -> (async_nats::Client, async_nats::Subscriber) {
    let client = async_nats::connect(url).await.unwrap();
    let subscriber = client.subscribe(format!("{prefix}.>")).await.unwrap();
    client.flush().await.unwrap();
    (client, subscriber)
}

/// A publisher running in the background until [`Running::stop`].
#[derive(Debug)]
pub(crate) struct Running {
    pub(crate) counts: Arc<PublishCounts>,
    pub(crate) ops_addr: SocketAddr,
    shutdown: Shutdown,
    task: JoinHandle<anyhow::Result<PublishSummary>>,
}

impl Running {
    pub(crate) async fn start(config: Config) -> Self {
        let app = Application::build(config).await.unwrap();
        let shutdown = Shutdown::new();
        Running {
            counts: app.counts(),
            ops_addr: app.ops_addr(),
            shutdown: shutdown.clone(),
            task: tokio::spawn(app.run_until_stopped(shutdown)),
        }
    }

    /// Fires the shutdown signal and waits for the summary.
    pub(crate) async fn stop(self) -> PublishSummary {
        self.shutdown.trigger();
        self.task.await.unwrap().unwrap()
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
        testkit::block_on_cleanup(async move {
            if let Ok(client) = async_nats::connect(url).await {
                let _ = async_nats::jetstream::new(client)
                    .delete_stream(&name)
                    .await;
            }
        });
    }
}
