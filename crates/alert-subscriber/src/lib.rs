//! `alert-subscriber`: evaluates sensor readings against per-kind rules and
//! raises alerts — on NATS (`sensor.alert.<sensor_id>`) and as `notify`
//! tasks on the RabbitMQ work queue.
//!
//! - [`config`]: the settings, their defaults and checks.
//! - [`app`]: [`Application::build`] binds the ops port (port 0 works),
//!   connects and subscribes; [`Application::run_until_stopped`] processes
//!   readings until the shutdown signal, then drains: no new readings, the
//!   buffered ones are still evaluated, and queued alerts get `shutdown_grace`
//!   to be confirmed.
//! - [`rules`]: thresholds with hysteresis, hot-reloaded from the config file.
//! - [`alert`]: the alert and its `notify` task.
//! - [`processor`]: one reading at a time, in order: decode, evaluate, raise.
//! - [`handoff`]: the bounded buffer in front of RabbitMQ, retried until confirmed.
//! - [`intake`]: where readings come from — a core NATS queue group
//!   (`alerts`: one instance) or the partitioned consumer group on JetStream:
//! - [`partition`]: a sensor's partition (nats-server's hash) and the lanes;
//! - [`group`]: members and lane leases in a key-value bucket, the assignment;
//! - [`lane`]: one lane read in order from its checkpoint;
//! - [`checkpoint`]: a lane's position and sensor states, for its next owner.
//! - [`metrics`]: the names and help text of the metrics it exports.

pub mod alert;
pub mod app;
pub mod checkpoint;
pub mod config;
pub mod group;
pub mod handoff;
pub mod intake;
pub mod lane;
pub mod metrics;
pub mod partition;
pub mod processor;
pub mod rules;

pub use app::{Application, HandoffSummary, RABBITMQ_CHECK, run};
pub use config::{Config, ENV_KEYS};
pub use group::GroupView;
pub use handoff::HandoffCounts;
pub use processor::AlertCounts;
pub use rules::{Direction, Rule, Rules};
