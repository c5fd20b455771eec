//! Test fixtures: alert-subscribers on the local NATS and RabbitMQ with
//! subjects, streams and queues of their own (deleted afterwards), an alert
//! collector, series read from `/metrics`, the binary as a child process for
//! crash tests, and private nats-server / RabbitMQ nodes for restart tests.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use alert_subscriber::{Application, Config, HandoffSummary};
use common::{
    codec::{CONTENT_TYPE_HEADER, Codec, ContentType},
    config::SecretUrl,
    nats::DeliveryMode,
    proto::sensor::v1::{Alert, SensorReading},
    shutdown::Shutdown,
};
use futures::StreamExt;
use lapin::options::BasicGetOptions;
pub(crate) use testkit::{
    NatsServer, RabbitNode, amqp_url, eventually, free_port, http_get, nats_url, unique,
};
use tokio::task::JoinHandle;
use workqueue::{task::Task, topology::Topology};

/// The names one test uses; its stream and queues are deleted on drop.
#[derive(Debug)]
pub(crate) struct TestEnv {
    pub(crate) nats_url: String,
    pub(crate) amqp_url: String,
    pub(crate) readings: String,
    pub(crate) alerts: String,
    pub(crate) stream: String,
    pub(crate) group: String,
    pub(crate) task_queue: String,
    pub(crate) dir: PathBuf,
}

impl TestEnv {
    pub(crate) fn new() -> Self {
        Self::on(&nats_url(), &amqp_url())
    }

    /// Names on the shared NATS, with a RabbitMQ port nothing listens on.
    pub(crate) fn without_rabbitmq() -> Self {
        Self::on(
            &nats_url(),
            &format!("amqp://guest:guest@127.0.0.1:{}/%2f", free_port()),
        )
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
            group: format!("test_alerts_{suffix}"),
            task_queue: format!("test.{suffix}.task_queue"),
            dir,
        }
    }

    /// Names on a private nats-server with the deployments' partition
    /// mapping: the real subjects and stream (nobody else uses that server).
    pub(crate) fn partitioned(server: &NatsServer) -> Self {
        let mut env = Self::on(&server.url(), &amqp_url());
        env.readings = "sensor.data".into();
        env.alerts = "sensor.alert".into();
        env.stream = "SENSORS".into();
        env
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
            group: self.group.clone(),
            task_queue: self.task_queue.clone(),
            shutdown_grace: Duration::from_secs(20),
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

    /// The arrange step most tests share: a subscriber started with
    /// `config`, then a NATS client and the alerts collected on it.
    pub(crate) async fn start_collecting(
        &self,
        config: Config,
    ) -> (TestAlert, async_nats::Client, Alerts) {
        let instance = TestAlert::start(config).await;
        let client = self.nats().await;
        let alerts = Alerts::collect(&client, &self.alerts).await;
        (instance, client, alerts)
    }

    /// Publishes `reading(sensor, value, seq)` on this test's subjects as
    /// protobuf, with the content-type header.
    pub(crate) async fn publish_proto(
        &self,
        client: &async_nats::Client,
        sensor: &str,
        value: f64,
        seq: u64,
    ) {
        publish(
            client,
            &self.readings,
            &reading(sensor, value, seq),
            Some(ContentType::Protobuf),
        )
        .await;
    }

    /// Publishes one critical reading (45.0, protobuf) on each of the sensors
    /// `{prefix}-0` to `{prefix}-{count - 1}`.
    pub(crate) async fn publish_critical(
        &self,
        client: &async_nats::Client,
        prefix: &str,
        count: usize,
    ) {
        for i in 0..count {
            self.publish_proto(client, &format!("{prefix}-{i}"), 45.0, 1)
                .await;
        }
    }

    /// The JetStream context of `client`, with this test's sensor stream
    /// created on it.
    pub(crate) async fn sensor_stream(
        &self,
        client: &async_nats::Client,
    ) -> async_nats::jetstream::Context {
        let js = async_nats::jetstream::new(client.clone());
        common::nats::ensure_sensor_stream(&js, &self.stream, &self.readings)
            .await
            .unwrap();
        js
    }

    /// Waits until `lane`'s checkpoint in this test's group reached `seq`.
    pub(crate) async fn wait_for_checkpoint(
        &self,
        js: &async_nats::jetstream::Context,
        lane: &str,
        seq: u64,
        timeout: Duration,
    ) {
        let state = js
            .get_key_value(format!("{}_state", self.group))
            .await
            .unwrap();
        eventually(
            &format!("lane {lane} checkpointed at {seq}"),
            timeout,
            || {
                let state = state.clone();
                async move {
                    let value = state.get(format!("lane.{lane}")).await.ok()??;
                    let checkpoint: serde_json::Value = serde_json::from_slice(&value).ok()?;
                    (checkpoint["seq"].as_u64()? >= seq).then_some(())
                }
            },
        )
        .await;
    }

    /// Takes every task from the test's queue: id -> task.
    pub(crate) async fn take_tasks(&self, tasks: &mut BTreeMap<String, Task>) {
        let amqp = testkit::AmqpFixture::connect(&self.amqp_url).await;
        while let Ok(Some(message)) = amqp
            .channel
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
        let _ = amqp.connection.close(200, "done".into()).await;
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
        let streams = [
            self.stream.clone(),
            format!("KV_{}_leases", self.group),
            format!("KV_{}_state", self.group),
        ];
        let queue = self.task_queue.clone();
        let _ = std::fs::remove_dir_all(&self.dir);
        testkit::block_on_cleanup(async move {
            let cleanup = async {
                if let Ok(client) = async_nats::connect(nats_url).await {
                    let js = async_nats::jetstream::new(client);
                    for stream in streams {
                        let _ = js.delete_stream(&stream).await;
                    }
                }
                testkit::delete_queues(&amqp_url, Topology::new(queue).queue_names()).await;
            };
            let _ = tokio::time::timeout(Duration::from_secs(10), cleanup).await;
        });
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
        self.counts.received.load(Ordering::Relaxed)
    }

    /// Waits (at most 20 s) until `count` alerts are held for RabbitMQ.
    pub(crate) async fn wait_for_pending(&self, count: u64) {
        let what = format!("{count} alerts held for rabbitmq");
        wait_for_count(&what, &self.handoff.pending, count, Duration::from_secs(20)).await;
    }

    /// Waits (at most 60 s) until RabbitMQ confirmed `count` alerts.
    pub(crate) async fn wait_for_confirmed(&self, count: u64) {
        let what = format!("{count} alerts confirmed");
        wait_for_count(
            &what,
            &self.handoff.confirmed,
            count,
            Duration::from_secs(60),
        )
        .await;
    }

    /// Fires the shutdown signal without waiting for the drain.
    pub(crate) fn signal_shutdown(&self) {
        self.shutdown.trigger();
    }

    /// Fires the shutdown signal and waits until the service has drained.
    pub(crate) async fn stop(self) -> HandoffSummary {
        self.signal_shutdown();
        tokio::time::timeout(Duration::from_secs(40), self.task)
            .await
            .expect("the alert-subscriber drains and stops")
            .unwrap()
            .unwrap()
    }
}

/// Waits until `counter` reads `count`; fails naming `what` after `timeout`.
async fn wait_for_count(what: &str, counter: &AtomicU64, count: u64, timeout: Duration) {
    eventually(what, timeout, || async {
        (counter.load(Ordering::Relaxed) == count).then_some(())
    })
    .await;
}

/// The value of one series (`name{labels}`, exactly as rendered) on the
/// `/metrics` page at `addr`; `None` while it is absent.
pub(crate) async fn metric(addr: SocketAddr, series: &str) -> Option<f64> {
    let (status, body) = http_get(addr, "/metrics").await;
    assert_eq!(status, 200, "{body}");
    series_value(&body, series)
}

/// The value of `series` in a Prometheus text page.
pub(crate) fn series_value(page: &str, series: &str) -> Option<f64> {
    page.lines().find_map(|line| {
        line.strip_prefix(series)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|value| value.trim().parse().ok())
    })
}

/// The alert-subscriber binary as a child process, killed on drop.
#[derive(Debug)]
pub(crate) struct AlertProcess {
    child: Child,
    /// Its ops address (`/partitions`, `/metrics`).
    pub(crate) ops_addr: SocketAddr,
}

impl AlertProcess {
    pub(crate) fn spawn(config_file: &Path, env: &TestEnv) -> Self {
        let ops_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let child = Command::new(env!("CARGO_BIN_EXE_alert-subscriber"))
            .arg("--config")
            .arg(config_file)
            .env("NATS_URL", &env.nats_url)
            .env("AMQP_URL", &env.amqp_url)
            .env("OPS_ADDR", ops_addr.to_string())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the alert-subscriber binary");
        AlertProcess { child, ops_addr }
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
