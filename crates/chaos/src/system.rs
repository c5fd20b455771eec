//! The system under test, as real processes on loopback, and the schedule
//! of alert-subscriber instances.
//!
//! NATS is a private nats-server with the deployments' partition mapping
//! (the run kills processes, never the shared brokers); RabbitMQ is the
//! given one, with queues of the run's own, deleted at the end. With
//! `--cluster` both are private 3-node clusters that lose nodes mid-run
//! ([`crate::brokers`]).

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use common::proto::user::v1::CreateUserRequest;
use e2e::process::{Service, free_port};
use user_client::{ClientConfig, UserClient};
use workqueue::topology::Topology;

use crate::{
    Options,
    brokers::Brokers,
    observe::{AlertWatch, Observed, notifications},
    reconcile::{self, Expected},
};

/// The values every sensor plays in a loop: crossings of the warning and
/// critical thresholds of the default rules (30 / 40, hysteresis 1) and
/// readings hovering at the lines, where split state raises false alerts.
pub const SCRIPT: [f64; 12] = [
    25.0, 30.5, 30.2, 29.6, 28.5, 30.6, 41.0, 39.5, 40.2, 38.0, 25.0, 29.0,
];

/// The owners the fleet's sensors are given (created in user-service).
const OWNERS: [&str; 2] = ["u-chaos-1", "u-chaos-2"];

/// How alert-subscriber instances come and go during the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Schedule {
    /// One instance throughout.
    One,
    /// Three instances throughout.
    Three,
    /// 1 → 3 → SIGKILL one → start one → SIGTERM one: 2 at the end.
    Churn,
}

impl Schedule {
    /// Its name in the report.
    pub fn name(self) -> &'static str {
        match self {
            Schedule::One => "one",
            Schedule::Three => "three",
            Schedule::Churn => "churn",
        }
    }
}

/// The processes of one run; stopped and cleaned up by [`System::stop`].
pub struct System {
    id: String,
    dir: PathBuf,
    brokers: Brokers,
    task_queue: String,
    data_sync_queue: String,
    user_service: Service,
    workers: Vec<Service>,
    alert_program: Option<PathBuf>,
}

impl System {
    /// Starts NATS, user-service (with the owners) and two task-workers.
    pub async fn start(options: &Options) -> anyhow::Result<Self> {
        let id = testkit::unique();
        let dir = std::env::temp_dir().join(format!("switchyard-chaos-{id}"));
        std::fs::create_dir_all(&dir)?;
        let brokers = Brokers::start(options).await;
        let amqp_url = brokers.amqp_url();
        let grpc_port = free_port()?;
        let data_sync_queue = format!("chaos_{id}_data_sync");
        let user_service = Service::spawn(
            "user-service",
            &[],
            &[
                ("GRPC_ADDR", format!("127.0.0.1:{grpc_port}")),
                ("HTTP_ADDR", format!("127.0.0.1:{}", free_port()?)),
                ("OPS_ADDR", format!("127.0.0.1:{}", free_port()?)),
                (
                    "DATABASE_URL",
                    format!("sqlite://{}/users.db?mode=rwc", dir.display()),
                ),
                ("AMQP_URL", amqp_url.clone()),
                ("SWITCHYARD__DATA_SYNC_QUEUE", data_sync_queue.clone()),
                ("RUST_LOG", "info".into()),
            ]
            .into_iter()
            .chain(brokers.settings("user-service"))
            .collect::<Vec<_>>(),
            &dir.join("logs"),
        )?;
        let mut system = System {
            task_queue: format!("chaos_{id}_task_queue"),
            data_sync_queue,
            id,
            dir,
            brokers,
            user_service,
            workers: Vec::new(),
            alert_program: options.alert_subscriber.clone(),
        };
        // Only keys every build knows, so `--alert-subscriber` can run an
        // older one; the group keeps its default name (the server is private).
        std::fs::write(
            system.dir.join("alert-subscriber.toml"),
            format!(
                "mode = \"{}\"\ntask_queue = \"{}\"\n",
                options.mode, system.task_queue
            ),
        )?;
        let user_service_url = format!("http://127.0.0.1:{grpc_port}");
        system.create_owners(&user_service_url).await?;
        for worker in 1..=2 {
            let instance = format!("task-worker-{worker}");
            system.workers.push(Service::spawn_as(
                "task-worker",
                &instance,
                &[],
                &[
                    ("USER_SERVICE_URL", user_service_url.clone()),
                    ("AMQP_URL", system.brokers.amqp_url()),
                    ("OPS_ADDR", format!("127.0.0.1:{}", free_port()?)),
                    ("SWITCHYARD__QUEUE", system.task_queue.clone()),
                    (
                        "SWITCHYARD__DATA_SYNC_QUEUE",
                        system.data_sync_queue.clone(),
                    ),
                    // The pool shares its finished task ids, as deployed.
                    ("REDIS_URL", options.redis_url.clone()),
                    (
                        "SWITCHYARD__FINISHED_KEY_PREFIX",
                        format!("chaos:{}:finished:", system.id),
                    ),
                    // Gone from the shared Redis soon after the run.
                    ("SWITCHYARD__FINISHED_TTL", "10m".into()),
                    ("RUST_LOG", "info".into()),
                ]
                .into_iter()
                .chain(system.brokers.settings("task-worker"))
                .collect::<Vec<_>>(),
                &system.dir.join("logs"),
            )?);
        }
        Ok(system)
    }

    /// The private NATS server's (or cluster's) URL.
    pub fn nats_url(&self) -> String {
        self.brokers.nats_url()
    }

    async fn create_owners(&self, url: &str) -> anyhow::Result<()> {
        let client = UserClient::connect_lazy(ClientConfig {
            url: url.into(),
            timeout: Duration::from_secs(30),
            ..ClientConfig::default()
        })?;
        let deadline = Instant::now() + Duration::from_secs(60);
        for owner in OWNERS {
            loop {
                let created = client
                    .create_user(CreateUserRequest {
                        user_id: owner.into(),
                        name: format!("Owner {owner}"),
                        age: 40,
                        email: format!("{owner}@example.com"),
                    })
                    .await;
                match created {
                    Ok(_) => break,
                    Err(error) if Instant::now() > deadline => {
                        return Err(anyhow::anyhow!("user-service never answered: {error}"));
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
                }
            }
        }
        Ok(())
    }

    /// One alert-subscriber instance; every instance reads the same file,
    /// written once when the system starts.
    fn alert_subscriber(&self, number: usize) -> anyhow::Result<Service> {
        let config = self.dir.join("alert-subscriber.toml").display().to_string();
        let program = match &self.alert_program {
            Some(program) => program.clone(),
            None => e2e::process::binary("alert-subscriber")?,
        };
        Service::spawn_program(
            &program,
            &format!("alert-subscriber-{number}"),
            &["--config", &config],
            &[
                ("NATS_URL", self.brokers.nats_url()),
                ("AMQP_URL", self.brokers.amqp_url()),
                ("OPS_ADDR", format!("127.0.0.1:{}", free_port()?)),
                ("RUST_LOG", "info".into()),
            ]
            .into_iter()
            .chain(self.brokers.settings("alert-subscriber"))
            .collect::<Vec<_>>(),
            &self.dir.join("logs"),
        )
    }

    /// sensor-publisher in JetStream mode with the scripted fleet.
    fn publisher(&self, options: &Options) -> anyhow::Result<Service> {
        let count = (options.rate_per_sec * options.duration.as_secs_f64()).ceil() as u64;
        let script: Vec<String> = SCRIPT.iter().map(|value| format!("{value:?}")).collect();
        let owners: Vec<String> = OWNERS.iter().map(|owner| format!("\"{owner}\"")).collect();
        let config = self.dir.join("sensor-publisher.toml");
        std::fs::write(
            &config,
            format!(
                "mode = \"jetstream\"\nrate_per_sec = {rate:?}\ncount = {count}\n\n[fleet]\nsensors = {sensors}\nkinds = [\"temperature\"]\nowners = [{owners}]\nid_prefix = \"chaos-\"\nspike_probability = 0.0\nscript = [{script}]\n",
                rate = options.rate_per_sec,
                sensors = options.sensors,
                owners = owners.join(", "),
                script = script.join(", "),
            ),
        )?;
        let config = config.display().to_string();
        Service::spawn(
            "sensor-publisher",
            &["--config", &config],
            &[
                ("NATS_URL", self.brokers.nats_url()),
                ("OPS_ADDR", format!("127.0.0.1:{}", free_port()?)),
                ("RUST_LOG", "info".into()),
            ]
            .into_iter()
            .chain(self.brokers.settings("sensor-publisher"))
            .collect::<Vec<_>>(),
            &self.dir.join("logs"),
        )
    }

    /// Publishes for `options.duration` while instances follow the
    /// schedule, waits for the system to settle, and returns what one
    /// in-order evaluator expects and what was observed.
    pub async fn run_schedule(
        &mut self,
        options: &Options,
    ) -> anyhow::Result<(Expected, Observed)> {
        let client = crate::brokers::connect_nats(&self.brokers.nats_url()).await?;
        let watch = AlertWatch::start(&client).await?;
        let step = options.duration / 5;
        let mut instances = Vec::new();
        let mut started = 0;
        let mut start = |system: &Self, instances: &mut Vec<Service>| -> anyhow::Result<()> {
            started += 1;
            instances.push(system.alert_subscriber(started)?);
            eprintln!("chaos: alert-subscriber-{started} started");
            Ok(())
        };
        let initial = match options.schedule {
            Schedule::One | Schedule::Churn => 1,
            Schedule::Three => 3,
        };
        for _ in 0..initial {
            start(self, &mut instances)?;
        }
        let mut publisher = self.publisher(options)?;
        for moment in 1..=4 {
            tokio::time::sleep(step).await;
            if options.schedule == Schedule::Churn {
                match moment {
                    1 => {
                        start(self, &mut instances)?;
                        start(self, &mut instances)?;
                    }
                    2 => {
                        instances[1].kill();
                        eprintln!("chaos: alert-subscriber-2 killed (SIGKILL)");
                    }
                    3 => start(self, &mut instances)?,
                    _ => {
                        instances[2].stop(Duration::from_secs(30));
                        eprintln!("chaos: alert-subscriber-3 stopped (SIGTERM)");
                    }
                }
            }
            if let Some(loss) = self.brokers.lose_a_node(moment, &self.task_queue).await {
                eprintln!("chaos: {loss}");
            }
        }
        if let Some(healed) = self.brokers.heal(&self.task_queue).await {
            eprintln!("chaos: {healed}");
        }
        // The publisher stops by itself once it published `count` readings.
        let deadline = Instant::now() + options.duration + Duration::from_secs(60);
        while publisher.is_running() {
            anyhow::ensure!(Instant::now() < deadline, "sensor-publisher did not finish");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let expected = reconcile::expected(&self.brokers.nats_url()).await?;
        // Settle: every expected alert notified, or nothing new for a while.
        let settle_by = Instant::now() + Duration::from_secs(90);
        let mut last = (0, 0);
        let mut quiet_since = Instant::now();
        loop {
            let observed = self.observe(&watch);
            let now = (
                observed.alerts.values().map(|a| a.times).sum::<u64>(),
                observed.notifications.values().sum::<u64>(),
            );
            let all_notified = expected
                .alerts
                .keys()
                .all(|id| observed.notifications.contains_key(id));
            if now != last {
                last = now;
                quiet_since = Instant::now();
            }
            let quiet = quiet_since.elapsed() > Duration::from_secs(10);
            if (all_notified && quiet_since.elapsed() > Duration::from_secs(3))
                || quiet
                || Instant::now() > settle_by
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let observed = self.observe(&watch);
        for mut instance in instances {
            instance.stop(Duration::from_secs(30));
        }
        Ok((expected, observed))
    }

    fn observe(&self, watch: &AlertWatch) -> Observed {
        let (alerts, undecodable) = watch.snapshot();
        let logs: Vec<String> = self.workers.iter().map(Service::log).collect();
        Observed {
            alerts,
            notifications: notifications(logs.iter().map(String::as_str)),
            undecodable,
        }
    }

    /// Stops every process and deletes the run's queues and files.
    pub async fn stop(mut self) {
        for worker in &mut self.workers {
            worker.stop(Duration::from_secs(30));
        }
        self.user_service.stop(Duration::from_secs(30));
        if self.brokers.shared_rabbitmq() {
            let mut queues = Topology::new(self.task_queue.clone()).queue_names();
            queues.push(self.data_sync_queue.clone());
            queues.push(format!("{}.dlq", self.data_sync_queue));
            testkit::delete_queues(&self.brokers.amqp_url(), queues).await;
        }
        if std::env::var_os("CHAOS_KEEP_LOGS").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("chaos: logs kept in {}", self.dir.join("logs").display());
        }
    }
}

impl std::fmt::Debug for System {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("System")
            .field("id", &self.id)
            .field("nats", &self.brokers.nats_url())
            .field("task_queue", &self.task_queue)
            .finish_non_exhaustive()
    }
}

/// `anyhow` context for a missing binary, naming the build to run.
pub fn built() -> anyhow::Result<()> {
    e2e::process::binary("alert-subscriber")
        .map(|_| ())
        .context("build the workspace's binaries first: cargo build --workspace --bins")
}
