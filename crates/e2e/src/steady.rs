//! Every service as a process of its own, wired to a run's own subjects,
//! queues and database on the shared brokers, under a steady load of fixed
//! rates: what `bench memory` measures and what the leak check
//! (tests/leak.rs) watches.
//!
//! The load is the architecture's whole flow at once, each part paced:
//!
//! - readings: sensor-publisher (core NATS) at [`Load::readings_per_sec`]
//!   into alert-subscriber and monitor-subscriber. Every sensor replays a
//!   script that crosses the critical threshold once per
//!   [`Load::readings_per_alert`] readings, so alerts, and the `notify` tasks
//!   they hand to RabbitMQ, come at a known fraction of the readings;
//! - tasks: task-producer publishing `sleep {"ms": 0}` at
//!   [`Load::tasks_per_sec`], beside the notify tasks, into task-worker;
//! - `GetUser`: the worker's lookups for every notify task, plus calls made
//!   from this process at [`Load::get_user_per_sec`].
//!
//! Traces are not exported (no `OTEL_EXPORTER_OTLP_ENDPOINT`): the services
//! run as deployed without a collector. Counters are read from each
//! service's `/metrics`, so a caller can check the load really flowed.

use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::Context as _;
use common::proto::user::v1::CreateUserRequest;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
    task::JoinSet,
    time::{Instant, MissedTickBehavior},
};
use tokio_util::sync::CancellationToken;
use user_client::{ClientConfig, UserClient};
use workqueue::topology::Topology;

use crate::process::{Service, free_port};

/// How long a service may take to start and report ready (a debug build
/// on a busy machine takes seconds).
const READY_TIMEOUT: Duration = Duration::from_secs(90);

/// Calls in flight at once from the `GetUser` driver: enough for its rate
/// at a few milliseconds per call, as task-worker's pool of lookups would.
const GET_USER_CALLERS: u32 = 8;

/// The rates of a steady load.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Load {
    /// Readings per second over the whole fleet.
    pub readings_per_sec: f64,
    /// Sensors the readings are spread over.
    pub sensors: usize,
    /// Readings of one sensor per alert: the script's length. Notify tasks
    /// come at `readings_per_sec / readings_per_alert`.
    pub readings_per_alert: usize,
    /// `sleep {"ms": 0}` tasks per second from task-producer.
    pub tasks_per_sec: f64,
    /// `GetUser` calls per second from this process.
    pub get_user_per_sec: f64,
}

impl Load {
    /// The script every sensor replays: quiet values, then one reading over
    /// the critical threshold of the default rule (40 °C; back under 39 °C
    /// clears it), so each cycle raises exactly one alert.
    fn script(&self) -> Vec<f64> {
        let mut script = vec![25.0; self.readings_per_alert.max(2) - 1];
        script.push(41.0);
        script
    }
}

/// What one service is called in reports, and the binary it runs.
#[derive(Debug)]
pub struct Process {
    /// The binary's name (`sensor-publisher`, ...).
    pub name: &'static str,
    /// The running process.
    pub service: Service,
    /// Its ops port (`/readyz`, `/metrics`).
    pub ops_port: u16,
}

/// Settings the caller may change from the services' defaults.
#[derive(Debug, Clone, Default)]
pub struct Tuning {
    /// task-worker's `finished_capacity` (ids remembered): a small bound
    /// is reached within a short run, so the run sees the bounded state.
    pub finished_capacity: Option<usize>,
    /// monitor-subscriber's statistics `window`, e.g. `"10s"`.
    pub monitor_window: Option<String>,
}

/// The running system; its processes are stopped and its queues, database
/// and files deleted when it is dropped (or by [`System::stop`]).
pub struct System {
    /// The long-running services, in start order; then the load's processes.
    processes: Vec<Process>,
    /// The `GetUser` driver, while a load runs.
    driver: Option<Driver>,
    id: String,
    dir: PathBuf,
    nats_url: String,
    amqp_url: String,
    task_queue: String,
    grpc_port: u16,
    owners: Vec<String>,
    tuning: Tuning,
    /// Deletes the run's queues when dropped, after the processes stopped
    /// (fields drop in declaration order).
    _queues: testkit::QueuesGuard,
}

impl std::fmt::Debug for System {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("System")
            .field("id", &self.id)
            .field("task_queue", &self.task_queue)
            .field(
                "processes",
                &self.processes.iter().map(|p| p.name).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl System {
    /// Starts user-service (SQLite in the run's directory) with two owners,
    /// task-worker, alert-subscriber and monitor-subscriber on the brokers
    /// at `nats_url` and `amqp_url`, and waits until each reports ready.
    pub async fn start(nats_url: &str, amqp_url: &str, tuning: Tuning) -> anyhow::Result<Self> {
        let id = testkit::unique();
        let dir = std::env::temp_dir().join(format!("switchyard-steady-{id}"));
        std::fs::create_dir_all(&dir)?;
        let task_queue = format!("steady_{id}_task_queue");
        let data_sync_queue = format!("steady_{id}_data_sync");
        let mut queues = Topology::new(task_queue.clone()).queue_names();
        queues.push(data_sync_queue.clone());
        queues.push(format!("{data_sync_queue}.dlq"));
        let mut system = System {
            processes: Vec::new(),
            driver: None,
            owners: (1..=2).map(|n| format!("u-steady-{id}-{n}")).collect(),
            nats_url: nats_url.to_string(),
            amqp_url: amqp_url.to_string(),
            grpc_port: free_port()?,
            _queues: testkit::delete_queues_later(amqp_url.to_string(), queues),
            task_queue,
            tuning,
            dir,
            id,
        };
        let grpc_addr = format!("127.0.0.1:{}", system.grpc_port);
        let database = format!("sqlite://{}/users.db?mode=rwc", system.dir.display());
        system.spawn(
            "user-service",
            None,
            &[],
            vec![
                ("GRPC_ADDR", grpc_addr),
                ("HTTP_ADDR", format!("127.0.0.1:{}", free_port()?)),
                ("DATABASE_URL", database),
                ("AMQP_URL", system.amqp_url.clone()),
                ("SWITCHYARD__DATA_SYNC_QUEUE", data_sync_queue.clone()),
            ],
        )?;
        system.wait_ready("user-service").await?;
        system.create_owners().await?;

        let mut worker_env = vec![
            ("USER_SERVICE_URL", system.user_service_url()),
            ("AMQP_URL", system.amqp_url.clone()),
            ("SWITCHYARD__QUEUE", system.task_queue.clone()),
            ("SWITCHYARD__DATA_SYNC_QUEUE", data_sync_queue),
        ];
        if let Some(capacity) = system.tuning.finished_capacity {
            worker_env.push(("SWITCHYARD__FINISHED_CAPACITY", capacity.to_string()));
        }
        system.spawn("task-worker", None, &[], worker_env)?;

        let alert_config = format!(
            "subject_prefix = \"steady.{id}.sensor.data\"\n\
             alert_subject_prefix = \"steady.{id}.sensor.alert\"\n\
             queue_group = \"steady-{id}-alerts\"\n\
             task_queue = \"{queue}\"\n",
            id = system.id,
            queue = system.task_queue,
        );
        let nats_env = vec![("NATS_URL", system.nats_url.clone())];
        let mut alert_env = nats_env.clone();
        alert_env.push(("AMQP_URL", system.amqp_url.clone()));
        system.spawn("alert-subscriber", Some(&alert_config), &[], alert_env)?;

        let mut monitor_config = format!(
            "subject_prefix = \"steady.{id}.sensor.data\"\n\
             stats_subject = \"steady.{id}.sensor.stats\"\n",
            id = system.id,
        );
        if let Some(window) = &system.tuning.monitor_window {
            monitor_config.push_str(&format!("window = \"{window}\"\n"));
        }
        system.spawn("monitor-subscriber", Some(&monitor_config), &[], nats_env)?;
        for name in ["task-worker", "alert-subscriber", "monitor-subscriber"] {
            system.wait_ready(name).await?;
        }
        Ok(system)
    }

    /// Starts sensor-publisher at `readings_per_sec` (replacing a running
    /// one: the new one starts its sensors' sequences again, which the
    /// subscribers take as a publisher restart) and waits until it is ready.
    pub async fn start_readings(&mut self, load: &Load) -> anyhow::Result<()> {
        self.stop_process("sensor-publisher");
        let script: Vec<String> = load.script().iter().map(|v| format!("{v:?}")).collect();
        let owners: Vec<String> = self.owners.iter().map(|o| format!("\"{o}\"")).collect();
        let config = format!(
            "subject_prefix = \"steady.{id}.sensor.data\"\n\
             rate_per_sec = {rate:?}\n\
             count = 0\n\n\
             [fleet]\n\
             sensors = {sensors}\n\
             kinds = [\"temperature\"]\n\
             owners = [{owners}]\n\
             id_prefix = \"steady-{id}-\"\n\
             spike_probability = 0.0\n\
             script = [{script}]\n",
            id = self.id,
            rate = load.readings_per_sec,
            sensors = load.sensors,
            owners = owners.join(", "),
            script = script.join(", "),
        );
        let env = vec![("NATS_URL", self.nats_url.clone())];
        self.spawn("sensor-publisher", Some(&config), &[], env)?;
        self.wait_ready("sensor-publisher").await
    }

    /// Puts the whole `load` on the system for up to `duration`: readings
    /// (see [`System::start_readings`]), task-producer for `duration`, and
    /// the `GetUser` driver until [`System::stop_load`].
    pub async fn start_load(&mut self, load: &Load, duration: Duration) -> anyhow::Result<()> {
        self.start_readings(load).await?;
        if load.tasks_per_sec > 0.0 {
            let queue = self.task_queue.clone();
            let rate = load.tasks_per_sec.to_string();
            let duration = format!("{}s", duration.as_secs().max(1));
            let args = [
                "--queue",
                queue.as_str(),
                "--rate",
                rate.as_str(),
                "--duration",
                duration.as_str(),
                "--kind",
                "sleep",
                "--payload",
                r#"{"ms": 0}"#,
            ];
            let env = vec![("AMQP_URL", self.amqp_url.clone())];
            self.spawn("task-producer", None, &args, env)?;
        }
        if load.get_user_per_sec > 0.0 {
            self.driver = Some(Driver::start(
                UserClient::connect_lazy(ClientConfig {
                    url: self.user_service_url(),
                    ..ClientConfig::default()
                })?,
                self.owners.clone(),
                load.get_user_per_sec,
            ));
        }
        Ok(())
    }

    /// Stops the `GetUser` driver, task-producer and sensor-publisher;
    /// returns the driver's calls: (answered, failed).
    pub async fn stop_load(&mut self) -> (u64, u64) {
        self.stop_process("sensor-publisher");
        self.stop_process("task-producer");
        match self.driver.take() {
            Some(driver) => driver.stop().await,
            None => (0, 0),
        }
    }

    /// The running processes, in start order.
    pub fn processes(&self) -> &[Process] {
        &self.processes
    }

    /// The process running `name`, if it runs.
    pub fn process(&self, name: &str) -> Option<&Process> {
        self.processes.iter().find(|p| p.name == name)
    }

    /// Resident memory of every process, in start order; `None` for one
    /// that exited (task-producer once its duration is over).
    pub fn rss(&self) -> Vec<(&'static str, Option<u64>)> {
        self.processes
            .iter()
            .map(|p| (p.name, p.service.rss_bytes().ok()))
            .collect()
    }

    /// The sum of every sample of metric `name` (all its label sets) on the
    /// `/metrics` of process `service`; `None` when it does not answer.
    pub async fn counter(&self, service: &str, name: &str) -> Option<f64> {
        let process = self.process(service)?;
        let (status, body) = ops_get(process.ops_port, "/metrics").await?;
        (status == 200).then(|| metric_sum(&body, name))
    }

    /// The log so far of every process whose name is in `names`.
    pub fn logs(&self, names: &[&str]) -> String {
        self.processes
            .iter()
            .filter(|p| names.contains(&p.name))
            .map(|p| format!("--- {} ---\n{}", p.name, p.service.log()))
            .collect()
    }

    /// Stops the load and every process (SIGTERM, in reverse start order),
    /// then deletes the run's files and queues.
    pub async fn stop(mut self) {
        self.stop_load().await;
        while let Some(mut process) = self.processes.pop() {
            process.service.stop(Duration::from_secs(20));
        }
    }

    fn user_service_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc_port)
    }

    /// Starts binary `name` with its config file (if any), `args` and `env`
    /// plus its own ops port.
    fn spawn(
        &mut self,
        name: &'static str,
        config: Option<&str>,
        args: &[&str],
        mut env: Vec<(&'static str, String)>,
    ) -> anyhow::Result<()> {
        let ops_port = free_port()?;
        env.push(("OPS_ADDR", format!("127.0.0.1:{ops_port}")));
        env.push(("RUST_LOG", "info".into()));
        let path = self.dir.join(format!("{name}.toml"));
        let mut all_args: Vec<String> = Vec::new();
        if let Some(toml) = config {
            std::fs::write(&path, toml)?;
            all_args.extend(["--config".to_string(), path.display().to_string()]);
        }
        all_args.extend(args.iter().map(|a| a.to_string()));
        let all_args: Vec<&str> = all_args.iter().map(String::as_str).collect();
        let service = Service::spawn(name, &all_args, &env, &self.dir.join("logs"))?;
        self.processes.push(Process {
            name,
            service,
            ops_port,
        });
        Ok(())
    }

    fn stop_process(&mut self, name: &str) {
        if let Some(at) = self.processes.iter().position(|p| p.name == name) {
            let mut process = self.processes.remove(at);
            process.service.stop(Duration::from_secs(20));
        }
    }

    /// Waits until `name` answers `/readyz` with 200; fails, with its log,
    /// when it exits or does not get ready in time.
    async fn wait_ready(&mut self, name: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let process = self
                .processes
                .iter_mut()
                .find(|p| p.name == name)
                .with_context(|| format!("{name} was not started"))?;
            if let Some((200, _)) = ops_get(process.ops_port, "/readyz").await {
                return Ok(());
            }
            anyhow::ensure!(
                process.service.is_running(),
                "{name} exited while starting:\n{}",
                process.service.log()
            );
            anyhow::ensure!(
                Instant::now() < deadline,
                "{name} not ready after {READY_TIMEOUT:?}:\n{}",
                process.service.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Creates the fleet's owners, retrying while user-service warms up.
    async fn create_owners(&self) -> anyhow::Result<()> {
        let client = UserClient::connect_lazy(ClientConfig {
            url: self.user_service_url(),
            timeout: Duration::from_secs(20),
            ..ClientConfig::default()
        })?;
        for (n, owner) in self.owners.iter().enumerate() {
            client
                .create_user(CreateUserRequest {
                    user_id: owner.clone(),
                    name: format!("Steady Owner {n}"),
                    age: 40,
                    email: format!("owner{n}@example.com"),
                })
                .await
                .with_context(|| format!("cannot create owner {owner}"))?;
        }
        Ok(())
    }
}

impl Drop for System {
    /// Stops what still runs (a run that failed half way), then deletes the
    /// run's files; the queues go right after, with `_queues`.
    fn drop(&mut self) {
        if let Some(driver) = &self.driver {
            driver.stop.cancel();
        }
        while let Some(mut process) = self.processes.pop() {
            process.service.stop(Duration::from_secs(20));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `GET path` on 127.0.0.1:`port`: status and body, `None` when nothing
/// answers.
async fn ops_get(port: u16, path: &str) -> Option<(u16, String)> {
    let exchange = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await.ok()?;
        let status = response.get(9..12)?.parse().ok()?;
        let body = response.split_once("\r\n\r\n")?.1.to_string();
        Some((status, body))
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .ok()
        .flatten()
}

/// The sum of the samples of metric `name` in Prometheus text.
fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// `GetUser` calls at a fixed rate from [`GET_USER_CALLERS`] callers, each
/// paced at its share, round-robin over the owners.
#[derive(Debug)]
struct Driver {
    stop: CancellationToken,
    callers: JoinSet<()>,
    answered: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
}

impl Driver {
    fn start(client: UserClient, owners: Vec<String>, per_sec: f64) -> Self {
        let stop = CancellationToken::new();
        let answered = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let period = Duration::from_secs_f64(f64::from(GET_USER_CALLERS) / per_sec);
        let mut callers = JoinSet::new();
        for caller in 0..GET_USER_CALLERS as usize {
            let (client, owners, stop) = (client.clone(), owners.clone(), stop.clone());
            let (answered, failed) = (answered.clone(), failed.clone());
            callers.spawn(async move {
                let mut tick = tokio::time::interval(period);
                // A slow call delays the next one instead of bursting to
                // catch up: the rate is a ceiling, as a fleet's would be.
                tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
                for n in caller.. {
                    tokio::select! {
                        () = stop.cancelled() => return,
                        _ = tick.tick() => {}
                    }
                    let owner = &owners[n % owners.len()];
                    let counter = match client.get_user(owner).await {
                        Ok(_) => &answered,
                        Err(_) => &failed,
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        Driver {
            stop,
            callers,
            answered,
            failed,
        }
    }

    async fn stop(mut self) -> (u64, u64) {
        self.stop.cancel();
        while self.callers.join_next().await.is_some() {}
        (
            self.answered.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_metric_sums_its_label_sets_and_nothing_else() {
        let text = "# HELP tasks_processed_total Tasks.\n\
                    # TYPE tasks_processed_total counter\n\
                    tasks_processed_total{outcome=\"ok\"} 40\n\
                    tasks_processed_total{outcome=\"retried\"} 2\n\
                    tasks_processed_total_extra 7\n\
                    messages_received_total 5\n";
        assert_eq!(metric_sum(text, "tasks_processed_total"), 42.0);
        assert_eq!(metric_sum(text, "messages_received_total"), 5.0);
        assert_eq!(metric_sum(text, "absent_total"), 0.0);
    }

    #[test]
    fn the_script_raises_one_alert_per_cycle() {
        let load = Load {
            readings_per_sec: 100.0,
            sensors: 10,
            readings_per_alert: 5,
            tasks_per_sec: 0.0,
            get_user_per_sec: 0.0,
        };
        assert_eq!(load.script(), vec![25.0, 25.0, 25.0, 25.0, 41.0]);
    }
}
