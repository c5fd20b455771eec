//! `monitor-subscriber`: sees every reading (no queue group: each instance
//! gets everything) and keeps per-sensor statistics over a sliding window.
//!
//! - [`config`]: the settings (`window`, `summary_interval`, ...), their
//!   defaults and checks.
//! - [`app`]: [`Application::build`] binds the ops port and subscribes;
//!   [`Application::run_until_stopped`] records readings until the shutdown
//!   signal, then drains: what is buffered is still counted.
//! - [`stats`]: the per-sensor windowed statistics and the report they give.
//! - [`report`]: the live statistics ([`StatsHandle`]) and `GET /stats` on
//!   the ops port, which answers with the [`stats::StatsReport`] JSON.
//! - `responder`: the same JSON as NATS request-reply on `sensor.stats`
//!   (queue group [`STATS_QUEUE_GROUP`]: one instance answers).
//! - `recorder`: readings on `<subject_prefix>` and `<subject_prefix>.>`, in
//!   JSON or Protobuf (by `Content-Type`), decoded and recorded in batches;
//!   bad payloads counted in `messages_rejected_total{reason}`.
//! - `summary`: the "fleet summary" log line every `summary_interval`.
//! - [`metrics`]: the metrics it exports.

pub mod app;
pub mod config;
pub mod metrics;
mod recorder;
pub mod report;
mod responder;
pub mod stats;
mod summary;

pub use app::{Application, run};
pub use config::{Config, ENV_KEYS};
pub use report::StatsHandle;
pub use responder::STATS_QUEUE_GROUP;
