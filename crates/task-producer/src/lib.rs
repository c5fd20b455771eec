//! `task-producer`: puts tasks on the RabbitMQ work queue, with publisher
//! confirms and retries instead of fire-and-forget. A thin command line over
//! the `workqueue` library, which owns the topology and the confirmed
//! publisher.
//!
//! - [`config`]: the settings ([`Config`], [`ENV_KEYS`], the `[job]`
//!   section) and their checks.
//! - [`app`]: [`Application`] — the ops endpoint, the publisher, the job.
//! - [`job`]: publish N tasks, or a rate for a duration, with a progress bar
//!   and a [`job::Summary`].
//! - [`metrics`]: the names of what it records.
//!
//! [`run`] is what the binary calls: it serves the ops endpoint, runs the job
//! from [`Config::job`] and returns its summary.

pub mod app;
pub mod config;
pub mod job;
pub mod metrics;

pub use app::{Application, run};
pub use config::{Config, ENV_KEYS};
