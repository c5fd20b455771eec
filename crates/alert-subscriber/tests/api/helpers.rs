//! Test fixtures: alert-subscribers on the local NATS and RabbitMQ with
//! subjects, streams and queues of their own (deleted afterwards), an alert
//! collector, the binary as a child process for crash tests, and private
//! nats-server / RabbitMQ nodes for restart tests.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use alert_subscriber::{Application, Config, HandoffSummary};
use common::{
    codec::{CONTENT_TYPE_HEADER, Codec, ContentType},
    config::SecretUrl,
    nats::DeliveryMode,
    proto::sensor::v1::{Alert, SensorReading},
    shutdown::Shutdown,
    task::Task,
};
use futures::StreamExt;
use lapin::{Connection, ConnectionProperties, options::BasicGetOptions};
use task_producer::topology::Topology;
pub(crate) use testkit::{NatsServer, RabbitNode, eventually, free_port, unique};
use tokio::task::JoinHandle;

pub(crate) fn nats_url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

pub(crate) fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// The names one test uses; its stream and queues are deleted on drop.
#[derive(Debug)]
pub(crate) struct TestEnv {
    pub(crate) nats_url: String,
    pub(crate) amqp_url: String,
    pub(crate) readings: String,
    pub(crate) alerts: String,
    pub(crate) stream: String,
    pub(crate) durable: String,
    pub(crate) task_queue: String,
    pub(crate) dir: PathBuf,
}

impl TestEnv {
    pub(crate) fn new() -> Self {
        Self::on(&nats_url(), &amqp_url())
    }

    pub(crate) fn on(nats_url: &str, amqp_url: &str) -> Self {
        common::telemetry::init_for_tests();
        let suffix = unique();
        let dir = std::env::temp_dir().join(format!("switchyard-alert-{suffix}"));
        std::fs::create_dir_all(&dir).unwrap();
        TestEnv {
            nats_url: nats_url.into(),
            amqp_url: amqp_url.into(),
            readings: format!("test.{suffix}.sensor.data"),
            alerts: format!("test.{suffix}.sensor.alert"),
            stream: format!("TEST_SENSORS_{suffix}"),
            durable: format!("test-alerts-{suffix}"),
            task_queue: format!("test.{suffix}.task_queue"),
            dir,
        }
    }

    /// An in-process subscriber config for this test (ops on port 0).
    pub(crate) fn config(&self) -> Config {
        Config {
            nats_url: SecretUrl::new(&self.nats_url),
            amqp_url: SecretUrl::new(&self.amqp_url),
            ops_addr: "127.0.0.1:0".parse().unwrap(),
            subject_prefix: self.readings.clone(),
            alert_subject_prefix: self.alerts.clone(),
            queue_group: "alerts".into(),
            stream: self.stream.clone(),
            durable_name: self.durable.clone(),
            task_queue: self.task_queue.clone(),
            drain_grace_ms: Duration::from_secs(20),
            ..Config::default()
        }
    }

    /// Writes a config file (TOML) for the binary or for hot reload.
    pub(crate) fn write_config(&self, name: &str, toml: &str) -> PathBuf {
        let path = self.dir.join(name);
        let tmp = self.dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, toml).unwrap();
        // Replaced in one step, as an editor or a ConfigMap update does.
        std::fs::rename(&tmp, &path).unwrap();
        path
    }

    pub(crate) async fn nats(&self) -> async_nats::Client {
        async_nats::connect(&self.nats_url).await.unwrap()
    }

    /// Takes every task from the test's queue: id -> task.
    pub(crate) async fn take_tasks(&self, tasks: &mut BTreeMap<String, Task>) {
        let connection = Connection::connect(&self.amqp_url, ConnectionProperties::default())
            .await
            .unwrap();
        let channel = connection.create_channel().await.unwrap();
        while let Ok(Some(message)) = channel
            .basic_get(
                self.task_queue.as_str().into(),
                BasicGetOptions { no_ack: true },
            )
            .await
        {
            let content_type = message
                .properties
                .content_type()
                .as_ref()
                .map(|c| c.as_str().to_string());
            let task: Task = Codec::default()
                .decode_with_header(&message.data, content_type.as_deref())
                .unwrap();
            tasks.insert(task.id.clone(), task);
        }
        let _ = connection.close(200, "done".into()).await;
    }
}

impl TestEnv {
    /// Takes tasks from the test's queue until `count` distinct ids arrived.
    pub(crate) async fn wait_for_tasks(&self, count: usize) -> BTreeMap<String, Task> {
        let mut tasks = BTreeMap::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            self.take_tasks(&mut tasks).await;
            if tasks.len() >= count {
                return tasks;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "only {} of {count} notify tasks arrived",
                tasks.len()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        let nats_url = self.nats_url.clone();
        let amqp_url = self.amqp_url.clone();
        let stream = self.stream.clone();
        let queue = self.task_queue.clone();
        let _ = std::fs::remove_dir_all(&self.dir);
        // Drop cannot await; a short-lived runtime on another thread can.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let cleanup = async {
                    if let Ok(client) = async_nats::connect(nats_url).await {
                        let _ = async_nats::jetstream::new(client)
                            .delete_stream(&stream)
                            .await;
                    }
                    if let Ok(connection) =
                        Connection::connect(&amqp_url, ConnectionProperties::default()).await
                        && let Ok(channel) = connection.create_channel().await
                    {
                        let _ = Topology::new(queue).delete(&channel).await;
                    }
                };
                let _ = tokio::time::timeout(Duration::from_secs(10), cleanup).await;
            });
        })
        .join();
    }
}

/// A reading to publish by hand.
pub(crate) fn reading(sensor: &str, value: f64, seq: u64) -> SensorReading {
    SensorReading {
        sensor_id: sensor.into(),
        kind: "temperature".into(),
        value,
        unit: "celsius".into(),
        timestamp: 1_700_000_000_000 + seq as i64,
        seq,
        site: None,
        owner_id: Some("u-1001".into()),
    }
}

/// Publishes a reading on core NATS in `content_type` (with the header) or
/// as header-less JSON when `None`.
pub(crate) async fn publish(
    client: &async_nats::Client,
    prefix: &str,
    reading: &SensorReading,
    content_type: Option<ContentType>,
) {
    let subject = format!("{prefix}.{}", reading.sensor_id);
    let codec = Codec::default();
    match content_type {
        Some(content_type) => {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(CONTENT_TYPE_HEADER, content_type.mime());
            let payload = codec.encode(reading, content_type).unwrap();
            client
                .publish_with_headers(subject, headers, payload)
                .await
                .unwrap();
        }
        None => {
            let payload = codec.encode(reading, ContentType::Json).unwrap();
            client.publish(subject, payload).await.unwrap();
        }
    }
}

/// Collects every alert published under a prefix.
#[derive(Debug, Clone, Default)]
pub(crate) struct Alerts(Arc<Mutex<Vec<Alert>>>);

impl Alerts {
    pub(crate) async fn collect(client: &async_nats::Client, prefix: &str) -> Self {
        let alerts = Alerts::default();
        let mut subscriber = client.subscribe(format!("{prefix}.>")).await.unwrap();
        client.flush().await.unwrap();
        let sink = alerts.clone();
        tokio::spawn(async move {
            while let Some(message) = subscriber.next().await {
                let content_type = message
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(CONTENT_TYPE_HEADER))
                    .map(|v| v.as_str().to_string());
                let alert: Alert = Codec::default()
                    .decode_with_header(&message.payload, content_type.as_deref())
                    .unwrap();
                sink.0.lock().unwrap().push(alert);
            }
        });
        alerts
    }

    pub(crate) fn all(&self) -> Vec<Alert> {
        self.0.lock().unwrap().clone()
    }

    pub(crate) fn for_sensor(&self, sensor: &str) -> Vec<Alert> {
        self.all()
            .into_iter()
            .filter(|a| a.sensor_id == sensor)
            .collect()
    }

    pub(crate) async fn wait_for_sensor(&self, sensor: &str) -> Alert {
        eventually(
            &format!("an alert for {sensor}"),
            Duration::from_secs(20),
            || async { self.for_sensor(sensor).into_iter().next() },
        )
        .await
    }
}

/// An alert-subscriber running in-process.
#[derive(Debug)]
pub(crate) struct TestAlert {
    pub(crate) ops_addr: SocketAddr,
    pub(crate) counts: Arc<alert_subscriber::AlertCounts>,
    pub(crate) handoff: Arc<alert_subscriber::HandoffCounts>,
    pub(crate) rules: tokio::sync::watch::Receiver<alert_subscriber::Rules>,
    shutdown: Shutdown,
    task: JoinHandle<anyhow::Result<HandoffSummary>>,
}

impl TestAlert {
    pub(crate) async fn start(config: Config) -> Self {
        let core = config.mode == DeliveryMode::Core;
        let app = Application::build(config).await.unwrap();
        if core {
            app.wait_until_subscribed().await;
        }
        let shutdown = Shutdown::new();
        TestAlert {
            ops_addr: app.ops_addr(),
            counts: app.counts(),
            handoff: app.handoff_counts(),
            rules: app.rules(),
            shutdown: shutdown.clone(),
            task: tokio::spawn(app.run_until_stopped(shutdown)),
        }
    }

    pub(crate) fn received(&self) -> u64 {
        self.counts
            .received
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(crate) async fn stop(self) -> HandoffSummary {
        self.shutdown.trigger();
        tokio::time::timeout(Duration::from_secs(40), self.task)
            .await
            .expect("the alert-subscriber drains and stops")
            .unwrap()
            .unwrap()
    }
}

/// The alert-subscriber binary as a child process, killed on drop.
#[derive(Debug)]
pub(crate) struct AlertProcess {
    child: Child,
}

impl AlertProcess {
    pub(crate) fn spawn(config_file: &Path, env: &TestEnv) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_alert-subscriber"))
            .arg("--config")
            .arg(config_file)
            .env("NATS_URL", &env.nats_url)
            .env("AMQP_URL", &env.amqp_url)
            .env("OPS_ADDR", "127.0.0.1:0")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the alert-subscriber binary");
        AlertProcess { child }
    }

    /// SIGKILL: a crash, nothing drained.
    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits for a clean exit.
    pub(crate) async fn terminate(mut self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "clean exit on SIGTERM: {status}");
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no exit after SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for AlertProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
