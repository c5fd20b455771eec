//! `user-service`: the request-reply pattern, done for real.
//!
//! A user directory served over gRPC (`user.v1.UserService`: `GetUser`
//! answers exactly as plain clients expect, plus Create/Update/Delete/List)
//! and, for external clients, as JSON over HTTP (`/v1/users`). Users live in
//! SQLite (default, a file) or PostgreSQL; every change also emits a
//! `data_sync` event to RabbitMQ through a transactional outbox. The crate
//! also ships the `user-cli` binary; the resilient client other services use
//! is the `user-client` crate.
//!
//! - [`config`]: the service's settings; [`app`]: [`Application`] — bind,
//!   serve, drain; [`metrics`]: the names of what it records.
//! - [`domain`]: users and validation; [`error`]: the one error-to-status map.
//! - [`directory`]: the operations both protocols share; [`read_cache`]:
//!   `GetUser`'s cache; [`change_feed`]: other replicas' changes, heard.
//! - [`store`]: sqlx storage and migrations (on SQLite `GetUser` reads
//!   through read-only connections of its own, `sqlite_reads`);
//!   [`outbox`]: the event relay;
//!   [`events`]: the `data_sync` message format.
//! - [`grpc`]: the tonic service; [`call_layer`]: tracing, deadlines and
//!   metrics around every call; [`http`]: the JSON gateway; [`openapi`]: its
//!   OpenAPI document, generated from the handlers, at `GET /openapi.json`.
//! - [`tls`]: both servers' certificates, reloaded when the files change;
//!   [`tls_listener`]: connections handed over after their handshake.

pub mod app;
pub mod call_layer;
pub mod change_feed;
pub mod config;
pub mod directory;
pub mod domain;
pub mod error;
pub mod events;
pub mod grpc;
pub mod http;
pub mod metrics;
pub mod openapi;
pub mod outbox;
pub mod read_cache;
mod sqlite_reads;
pub mod store;
pub mod tls;
pub mod tls_listener;

pub use app::{Application, run};
pub use config::{Config, ENV_KEYS};
