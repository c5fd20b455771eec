//! The pipeline as real processes on loopback, the release binaries beside
//! the running `bench`: user-service (SQLite in the run's directory, the
//! fleet's owners created in it), one task-worker, one alert-subscriber,
//! and a sensor-publisher per phase.
//!
//! NATS is a private nats-server with the deployments' partition mapping
//! (testkit), so JetStream mode runs as deployed and nothing else on the
//! machine publishes to it; RabbitMQ is the shared one, with queues of the
//! run's own. Every process is stopped and every queue, stream and file
//! deleted when the [`System`] is dropped, on error too (fields drop in
//! declaration order: processes first).

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use ::e2e::process::{Service, binary, free_port};
use anyhow::Context as _;
use common::proto::user::v1::CreateUserRequest;
use testkit::{NatsServer, QueuesGuard};
use user_client::{ClientConfig, UserClient};
use workqueue::topology::Topology;

use super::{phase::Phase, timeline};

/// The owners the fleet's sensors are given round-robin.
const OWNERS: [&str; 2] = ["u-e2e-1", "u-e2e-2"];

/// The binaries the run starts.
const BINARIES: [&str; 4] = [
    "user-service",
    "task-worker",
    "alert-subscriber",
    "sensor-publisher",
];

/// alert-subscriber's default partitions: in JetStream mode the run waits
/// until it reads every lane.
const PARTITIONS: u64 = 16;

/// How long a service may take to get ready.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// After the publisher finished, how long the notifications may stay
/// still before the phase is over with some missing.
const SETTLE_QUIET: Duration = Duration::from_secs(5);

/// The running pipeline.
pub(crate) struct System {
    alert_subscriber: Service,
    worker: Service,
    user_service: Service,
    _queues: QueuesGuard,
    nats: NatsServer,
    dir: RunDir,
    mode: String,
    /// Where every service exports its spans (`--spans`), if anywhere.
    otlp_endpoint: Option<String>,
}

impl std::fmt::Debug for System {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("System")
            .field("nats", &self.nats.url())
            .field("mode", &self.mode)
            .field("dir", &self.dir.path)
            .finish_non_exhaustive()
    }
}

/// What a phase left in the logs.
#[derive(Debug)]
pub(crate) struct PhaseLogs {
    /// task-worker's log: the notifications.
    pub(crate) worker: String,
    /// alert-subscriber's log: the alerts raised.
    pub(crate) alert_subscriber: String,
    /// The readings the publisher reported as published.
    pub(crate) published: Option<u64>,
}

impl System {
    /// Starts NATS, user-service (and creates the owners), task-worker and
    /// alert-subscriber in `mode` (`core` or `jetstream`), and waits until
    /// each is ready.
    pub(crate) async fn start(
        mode: &str,
        amqp_url: &str,
        keep_logs: bool,
        otlp_endpoint: Option<String>,
    ) -> anyhow::Result<Self> {
        for name in BINARIES {
            binary(name).with_context(|| {
                "build the services beside bench first: cargo build --release --workspace --bins"
            })?;
        }
        let id = testkit::unique();
        let dir = RunDir::create(
            std::env::temp_dir().join(format!("switchyard-bench-e2e-{id}")),
            keep_logs,
        )?;
        let task_queue = format!("bench_e2e_{id}_task_queue");
        let data_sync_queue = format!("bench_e2e_{id}_data_sync");
        let mut queues = Topology::new(task_queue.clone()).queue_names();
        queues.push(data_sync_queue.clone());
        queues.push(format!("{data_sync_queue}.dlq"));
        let queues = testkit::delete_queues_later(amqp_url.to_string(), queues);
        let nats = NatsServer::with_partitions().await;
        let logs = dir.path.join("logs");

        let grpc_port = free_port()?;
        let (user_service, user_service_ops) = spawn(
            "user-service",
            &[],
            vec![
                ("GRPC_ADDR", format!("127.0.0.1:{grpc_port}")),
                ("HTTP_ADDR", format!("127.0.0.1:{}", free_port()?)),
                (
                    "DATABASE_URL",
                    format!("sqlite://{}/users.db?mode=rwc", dir.path.display()),
                ),
                ("AMQP_URL", amqp_url.to_string()),
                ("SWITCHYARD__DATA_SYNC_QUEUE", data_sync_queue.clone()),
            ],
            &logs,
            otlp_endpoint.as_deref(),
        )?;
        let user_service_url = format!("http://127.0.0.1:{grpc_port}");
        let (worker, worker_ops) = spawn(
            "task-worker",
            &[],
            vec![
                ("USER_SERVICE_URL", user_service_url.clone()),
                ("AMQP_URL", amqp_url.to_string()),
                ("SWITCHYARD__QUEUE", task_queue.clone()),
                ("SWITCHYARD__DATA_SYNC_QUEUE", data_sync_queue),
            ],
            &logs,
            otlp_endpoint.as_deref(),
        )?;
        let alert_config = dir.path.join("alert-subscriber.toml");
        std::fs::write(
            &alert_config,
            format!("mode = \"{mode}\"\ntask_queue = \"{task_queue}\"\n"),
        )?;
        let alert_config = alert_config.display().to_string();
        let (alert_subscriber, alert_ops) = spawn(
            "alert-subscriber",
            &["--config", &alert_config],
            vec![("NATS_URL", nats.url()), ("AMQP_URL", amqp_url.to_string())],
            &logs,
            otlp_endpoint.as_deref(),
        )?;
        let mut system = System {
            alert_subscriber,
            worker,
            user_service,
            _queues: queues,
            nats,
            dir,
            mode: mode.to_string(),
            otlp_endpoint,
        };
        wait_ready("user-service", &mut system.user_service, user_service_ops).await?;
        create_owners(&user_service_url).await?;
        wait_ready("task-worker", &mut system.worker, worker_ops).await?;
        wait_ready("alert-subscriber", &mut system.alert_subscriber, alert_ops).await?;
        if mode == "jetstream" {
            let alerts = &mut system.alert_subscriber;
            let deadline = Instant::now() + READY_TIMEOUT;
            while timeline::count_lines(&alerts.log(), "lane starts from its checkpoint")
                < PARTITIONS
            {
                anyhow::ensure!(
                    alerts.is_running() && Instant::now() < deadline,
                    "alert-subscriber did not take its {PARTITIONS} lanes:\n{}",
                    alerts.log()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(system)
    }

    /// The private NATS server.
    pub(crate) fn nats_url(&self) -> String {
        self.nats.url()
    }

    /// Where the services' logs are.
    pub(crate) fn logs_dir(&self) -> PathBuf {
        self.dir.path.join("logs")
    }

    /// Keeps the logs when the system is dropped (after a failure).
    pub(crate) fn keep_logs(&mut self) {
        self.dir.keep = true;
    }

    /// Runs `phase`: a sensor-publisher publishes its readings and exits;
    /// then waits until every expected alert was notified, or nothing new
    /// came for a while. Returns the logs to read the phase from.
    pub(crate) async fn run_phase(&self, phase: &Phase) -> anyhow::Result<PhaseLogs> {
        let config = self
            .dir
            .path
            .join(format!("sensor-publisher-{}.toml", phase.name));
        std::fs::write(&config, phase.publisher_config(&self.mode, &OWNERS))?;
        let config = config.display().to_string();
        let instance = format!("sensor-publisher-{}", phase.name);
        let mut env = vec![
            ("NATS_URL", self.nats.url()),
            ("OPS_ADDR", format!("127.0.0.1:{}", free_port()?)),
            ("RUST_LOG", "info".into()),
        ];
        env.extend(tracing_env(self.otlp_endpoint.as_deref()));
        let mut publisher = Service::spawn_as(
            "sensor-publisher",
            &instance,
            &["--config", &config],
            &env,
            &self.logs_dir(),
        )?;
        // It stops by itself after `count` readings.
        let deadline = Instant::now() + phase.duration() + READY_TIMEOUT;
        while publisher.is_running() {
            anyhow::ensure!(
                Instant::now() < deadline,
                "{instance} did not finish in time:\n{}",
                publisher.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let published = published(&publisher.log());

        let prefix = phase.id_prefix();
        let expected = phase.expected_alerts();
        let (mut last, mut moved) = (0, Instant::now());
        loop {
            let notified = timeline::count(&self.worker.log(), "notification sent", &prefix);
            if notified >= expected {
                break;
            }
            if notified != last {
                (last, moved) = (notified, Instant::now());
            }
            if moved.elapsed() > SETTLE_QUIET {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(PhaseLogs {
            worker: self.worker.log(),
            alert_subscriber: self.alert_subscriber.log(),
            published,
        })
    }

    /// Stops the services, downstream last (SIGTERM, then SIGKILL); the
    /// queues, the NATS server and the files go as `self` drops.
    pub(crate) fn stop(mut self) {
        for service in [
            &mut self.alert_subscriber,
            &mut self.worker,
            &mut self.user_service,
        ] {
            service.stop(Duration::from_secs(10));
        }
    }
}

/// Starts `name` with its own ops port, info logs and span export (if
/// any); returns it and the port.
fn spawn(
    name: &str,
    args: &[&str],
    mut env: Vec<(&'static str, String)>,
    logs: &std::path::Path,
    otlp_endpoint: Option<&str>,
) -> anyhow::Result<(Service, u16)> {
    let ops_port = free_port()?;
    env.push(("OPS_ADDR", format!("127.0.0.1:{ops_port}")));
    env.push(("RUST_LOG", "info".into()));
    env.extend(tracing_env(otlp_endpoint));
    Ok((Service::spawn(name, args, &env, logs)?, ops_port))
}

/// The variables that make a service export its spans to `endpoint`, in
/// batches every 200 ms (the default 5 s would hold a phase's spans back).
fn tracing_env(endpoint: Option<&str>) -> Vec<(&'static str, String)> {
    match endpoint {
        Some(endpoint) => vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.to_string()),
            ("OTEL_BSP_SCHEDULE_DELAY", "200".into()),
        ],
        None => Vec::new(),
    }
}

/// Waits until `service` answers `GET /readyz` with 200 on `ops_port`.
async fn wait_ready(name: &str, service: &mut Service, ops_port: u16) -> anyhow::Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    while !ready(ops_port).await {
        anyhow::ensure!(
            service.is_running(),
            "{name} exited while starting:\n{}",
            service.log()
        );
        anyhow::ensure!(
            Instant::now() < deadline,
            "{name} was not ready after {READY_TIMEOUT:?}:\n{}",
            service.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// `true` when `/readyz` on `port` answers 200.
async fn ready(port: u16) -> bool {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    let request =
        format!("GET /readyz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response).await;
    response.starts_with("HTTP/1.1 200")
}

/// Creates the owners (GetUser finds them; the first lookup of each is the
/// only one that misses the service's read cache, in the warm-up).
async fn create_owners(url: &str) -> anyhow::Result<()> {
    let client = UserClient::connect_lazy(ClientConfig {
        url: url.into(),
        timeout: Duration::from_secs(10),
        ..ClientConfig::default()
    })?;
    for owner in OWNERS {
        client
            .create_user(CreateUserRequest {
                user_id: owner.into(),
                name: format!("Owner {owner}"),
                age: 40,
                email: format!("{owner}@example.com"),
            })
            .await
            .with_context(|| format!("cannot create owner {owner}"))?;
    }
    Ok(())
}

/// `published` of the publisher's "publisher stopped" line.
fn published(log: &str) -> Option<u64> {
    log.lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|event| event["message"] == "publisher stopped")
        .and_then(|event| event["published"].as_u64())
}

/// The run's directory: deleted on drop unless kept.
struct RunDir {
    path: PathBuf,
    keep: bool,
}

impl RunDir {
    fn create(path: PathBuf, keep: bool) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&path)?;
        Ok(RunDir { path, keep })
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if self.keep {
            eprintln!("e2e: logs kept in {}", self.path.join("logs").display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}
