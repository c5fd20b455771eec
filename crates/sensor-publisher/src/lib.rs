//! `sensor-publisher`: simulates a fleet of sensors and publishes their
//! readings on NATS (the publishing side of publish-subscribe).
//!
//! - [`config`]: the settings ([`Config`], [`ENV_KEYS`]) and their checks.
//! - [`app`]: [`Application`] — connect, publish, drain, stop.
//! - [`fleet`]: the sensors and their random walk with spikes.
//! - [`pacer`]: a rate per second, or as fast as possible.
//! - [`publish`]: core NATS (at-most-once) or JetStream (acknowledged, de-duplicated).
//! - [`metrics`]: the names of what it records.

pub mod app;
pub mod config;
pub mod fleet;
pub mod metrics;
pub mod pacer;
pub mod publish;

pub use app::{Application, run};
pub use config::{Config, ENV_KEYS};
pub use fleet::FleetConfig;
pub use publish::{PublishCounts, PublishSummary};
