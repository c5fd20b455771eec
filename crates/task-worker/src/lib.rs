//! `task-worker`: the worker pool of the work queue on RabbitMQ.
//!
//! - Fair dispatch: `concurrency` handler slots per process, each a consumer
//!   with `basic_qos(prefetch)` (default 1, as plain clients consume), manual
//!   ack only after the handler finished (`consumer`).
//! - Failures: a transient one goes to a retry tier and comes back after an
//!   exponentially growing delay, with `x-attempts` counting; after
//!   `max_attempts` deliveries, or at once for a permanent failure, an unknown
//!   kind or an undecodable body, the task goes to `<queue>.dlq` with headers
//!   naming the reason, the error, the attempts and the time (`processing`,
//!   [`routing`], topology in [`workqueue::topology`]).
//! - Idempotent: a redelivered task that was already done is acked and
//!   skipped ([`finished`]; across the pool with `REDIS_URL`,
//!   [`shared_finished`]).
//! - Resilient: reconnects after a broker restart and declares the topology
//!   again (`session`, run by [`common::reconnect::keep_connected`]); on
//!   SIGTERM stops consuming, finishes and acks what is in flight, closes,
//!   within `shutdown_grace`.
//! - `notify` asks user-service for the owner (request-reply inside a worker,
//!   [`notify`]); while the user-service circuit breaker is open the worker
//!   stops consuming and resumes when it half-opens.
//! - Also consumes `data_sync` into a contact directory (`data_sync`,
//!   [`contacts`]), served on the ops port as `GET /contacts`.
//!
//! Modules: [`config`] (settings), [`app`] (the [`Application`]: build, run,
//! reconnect), [`metrics`] (metric names), `session` (one connection and its
//! consumers), `consumer` and `data_sync` (the consumers), `processing`
//! (one task from bytes to ack), [`routing`] (retry tiers and the DLQ),
//! [`handler`], [`hash`] and [`notify`] (what a task does), [`events`]
//! (outcomes for embedders and tests).

pub mod app;
pub mod config;
pub mod contacts;
pub mod events;
pub mod finished;
pub mod handler;
pub mod hash;
pub mod metrics;
pub mod notify;
pub mod routing;
pub mod shared_finished;

mod consumer;
mod data_sync;
mod processing;
mod session;

pub use app::{Application, run};
pub use config::{Config, ENV_KEYS};
