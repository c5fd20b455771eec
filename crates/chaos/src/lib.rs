//! `chaos`: does the alerting answer stay the same while alert-subscribers
//! join, crash and leave? A Jepsen-style checker, loopback only, bounded in
//! time.
//!
//! One run: a private nats-server with the deployments' partition mapping,
//! user-service, two task-workers and sensor-publisher in JetStream mode with
//! a scripted fleet (values that cross the thresholds back and forth and
//! hover at them), while alert-subscriber processes follow a [`Schedule`] —
//! for `churn`, 1 → 3 → 2 with a SIGKILL and a restart in the middle. Then it
//! reconciles ([`reconcile`]) what one evaluator reading the stored readings
//! in order would alert against what was observed on `sensor.alert.>` and in
//! the workers' notifications, by alert id.
//!
//! With `cluster`, NATS and RabbitMQ are private 3-node clusters and the
//! schedule also kills the node leading the readings stream and the node
//! leading the work queue, and starts each again ([`brokers`]).
//!
//! - [`system`]: the processes and the schedule.
//! - [`brokers`]: one private server, or clusters that lose nodes.
//! - [`observe`]: alerts seen on NATS, notifications from the workers' logs.
//! - [`reconcile`]: expected against observed; the report and its `RESULT`.

pub mod brokers;
pub mod observe;
pub mod reconcile;
pub mod system;

use std::time::Duration;

pub use reconcile::Report;
pub use system::Schedule;

/// What one run does.
#[derive(Debug, Clone)]
pub struct Options {
    /// How alert-subscriber instances come and go.
    pub schedule: Schedule,
    /// Sensors in the fleet.
    pub sensors: usize,
    /// Readings per second, all sensors together.
    pub rate_per_sec: f64,
    /// How long the fleet publishes.
    pub duration: Duration,
    /// `jetstream` (the partitioned group) or `core` (the queue group).
    pub mode: String,
    /// RabbitMQ URL (the run's queues are its own and deleted after).
    pub amqp_url: String,
    /// Redis URL: the worker pool's shared finished task ids.
    pub redis_url: String,
    /// Another alert-subscriber build to run (default: the one beside).
    pub alert_subscriber: Option<std::path::PathBuf>,
    /// Private 3-node NATS and RabbitMQ clusters instead, with node losses
    /// in the schedule.
    pub cluster: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            schedule: Schedule::Churn,
            sensors: 40,
            rate_per_sec: 200.0,
            duration: Duration::from_secs(30),
            mode: "jetstream".into(),
            amqp_url: testkit::amqp_url(),
            redis_url: std::env::var("REDIS_URL")
                .unwrap_or_else(|_| "redis://127.0.0.1:6379".into()),
            alert_subscriber: None,
            cluster: false,
        }
    }
}

/// Runs the system through the schedule and reconciles.
pub async fn run(options: &Options) -> anyhow::Result<Report> {
    system::built()?;
    let mut system = system::System::start(options).await?;
    let outcome = system.run_schedule(options).await;
    system.stop().await;
    let (expected, observed) = outcome?;
    Ok(reconcile::Report::new(options, &expected, &observed))
}
