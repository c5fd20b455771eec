//! Test fixtures: a config on the local NATS with subjects of its own, a
//! private `nats-server` for restart tests, and polling with deadlines.

use std::{
    future::Future,
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use common::config::SecretUrl;
use sensor_publisher::{Config, FleetConfig};

/// The shared NATS server of the machine (never stopped by tests).
pub(crate) fn nats_url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// A unique suffix for this test's subjects and streams.
pub(crate) fn unique() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_string()
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

/// Polls `check` until it returns `Some`, failing after `timeout`.
pub(crate) async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A private `nats-server` (JetStream on, storage in a temp dir) on a free
/// port; killed on drop. Tests that stop a server use this, never the shared one.
#[derive(Debug)]
pub(crate) struct NatsServer {
    pub(crate) port: u16,
    store: PathBuf,
    child: Option<Child>,
}

impl NatsServer {
    pub(crate) async fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let store = std::env::temp_dir().join(format!("switchyard-nats-{}", unique()));
        std::fs::create_dir_all(&store).unwrap();
        let mut server = NatsServer {
            port,
            store,
            child: None,
        };
        server.restart().await;
        server
    }

    pub(crate) fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server (like a crash).
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and storage; returns once it listens.
    pub(crate) async fn restart(&mut self) {
        self.kill();
        let child = Command::new("nats-server")
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(&self.store)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server on PATH");
        self.child = Some(child);
        let port = self.port;
        eventually(
            "the private nats-server to listen",
            Duration::from_secs(20),
            || async move {
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .ok()
            },
        )
        .await;
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.store);
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
