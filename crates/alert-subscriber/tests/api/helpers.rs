//! Test fixtures: alert-subscribers on the local NATS and RabbitMQ with
//! subjects, streams and queues of their own (deleted afterwards), an alert
//! collector, the binary as a child process for crash tests, and private
//! nats-server / RabbitMQ nodes for restart tests.

use std::{
    collections::BTreeMap,
    future::Future,
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
use tokio::task::JoinHandle;

pub(crate) fn nats_url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

pub(crate) fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

pub(crate) fn unique() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_string()
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
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

/// A private `nats-server` (JetStream on) on a free port; killed on drop.
#[derive(Debug)]
pub(crate) struct NatsServer {
    pub(crate) port: u16,
    store: PathBuf,
    child: Option<Child>,
}

impl NatsServer {
    pub(crate) async fn start() -> Self {
        let port = free_port();
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

    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

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

/// A RabbitMQ node of the test's own on free ports, stopped and deleted on
/// drop; created before it is booted, so a test can point a service at it
/// while it is still down.
#[derive(Debug)]
pub(crate) struct RabbitNode {
    name: String,
    port: u16,
    dist_port: u16,
    dir: PathBuf,
    server: Option<Child>,
}

impl RabbitNode {
    pub(crate) fn new() -> Self {
        let port = free_port();
        let dist_port = free_port();
        let dir = std::env::temp_dir().join(format!("switchyard-rabbit-{port}"));
        std::fs::create_dir_all(dir.join("mnesia")).unwrap();
        std::fs::create_dir_all(dir.join("log")).unwrap();
        // Its own config: the machine's rabbitmq.conf pins the shared node's
        // listener, and no plugins (their ports are taken by the shared node).
        std::fs::write(
            dir.join("rabbitmq.conf"),
            format!("listeners.tcp.default = 127.0.0.1:{port}\n"),
        )
        .unwrap();
        std::fs::write(dir.join("enabled_plugins"), "[].\n").unwrap();
        let status = Command::new("chown")
            .args(["-R", "rabbitmq:rabbitmq"])
            .arg(&dir)
            .status()
            .unwrap();
        assert!(status.success(), "chown the node's directories");
        RabbitNode {
            name: format!("switchyard-alert-test-{port}@localhost"),
            port,
            dist_port,
            dir,
            server: None,
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// Starts the node and waits until it accepts AMQP connections.
    pub(crate) async fn boot(&mut self) {
        let out = std::fs::File::create(self.dir.join("server.out")).unwrap();
        let server = Command::new("rabbitmq-server")
            .env("RABBITMQ_NODENAME", &self.name)
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", self.dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", self.dir.join("log"))
            .env("RABBITMQ_CONFIG_FILE", self.dir.join("rabbitmq.conf"))
            .env(
                "RABBITMQ_ENABLED_PLUGINS_FILE",
                self.dir.join("enabled_plugins"),
            )
            .env("RABBITMQ_PID_FILE", self.dir.join("rabbitmq.pid"))
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("rabbitmq-server starts");
        self.server = Some(server);
        let url = self.url();
        eventually(
            "the test rabbitmq node to start",
            Duration::from_secs(60),
            || {
                let url = url.clone();
                async move {
                    let connection = Connection::connect(&url, ConnectionProperties::default())
                        .await
                        .ok()?;
                    let _ = connection.close(200, "probe".into()).await;
                    Some(())
                }
            },
        )
        .await;
    }
}

impl Drop for RabbitNode {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl")
            .args(["-n", &self.name, "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if let Ok(pid) = std::fs::read_to_string(self.dir.join("rabbitmq.pid")) {
            let _ = Command::new("kill")
                .args(["-KILL", pid.trim()])
                .stderr(Stdio::null())
                .status();
        }
        if let Some(mut server) = self.server.take() {
            let _ = server.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
