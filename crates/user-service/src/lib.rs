//! `user-service`: the request-reply pattern of the seed, done for real.
//!
//! A user directory served over gRPC (`user.v1.UserService`: GetUser exactly
//! as the seed, plus Create/Update/Delete/List) and, for external clients,
//! as JSON over HTTP (`/v1/users`). Users live in SQLite (default, a file)
//! or PostgreSQL; every change also emits a `data_sync` event to RabbitMQ
//! through a transactional outbox. The crate also holds the resilient
//! [`client`] other services use, and the `user-cli` binary.
//!
//! - [`config`]: the service's settings.
//! - [`startup`]: [`Application`] — bind, serve, drain.
//! - [`domain`]: users and validation; [`error`]: the one error-to-status map.
//! - [`directory`]: the operations both protocols share; [`read_cache`]:
//!   `GetUser`'s cache; [`change_feed`]: other replicas' changes, heard.
//! - [`store`]: sqlx storage and migrations; [`outbox`]: the event relay;
//!   [`events`]: the `data_sync` message format.
//! - [`client`]: [`client::UserClient`] with deadline, retries, breaker.
//! - [`grpc`]: the tonic service; [`call_layer`]: tracing, deadlines and
//!   metrics around every call; [`http`]: the JSON gateway.

pub mod call_layer;
pub mod change_feed;
pub mod client;
pub mod config;
pub mod directory;
pub mod domain;
pub mod error;
pub mod events;
pub mod grpc;
pub mod http;
pub mod outbox;
pub mod read_cache;
pub mod startup;
pub mod store;

pub use config::Config;
pub use startup::Application;

use common::shutdown::Shutdown;

/// Runs the service until `shutdown` fires and everything has drained.
pub async fn run(config: Config, shutdown: Shutdown) -> anyhow::Result<()> {
    Application::build(config)
        .await?
        .run_until_stopped(shutdown)
        .await
}
