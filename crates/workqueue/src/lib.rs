//! The work queue on RabbitMQ, as one library every service shares.
//!
//! - [`topology`]: every queue name (`task_queue`, its retry tiers, its DLQ,
//!   `data_sync` and its DLQ) and how each is declared, in one place.
//! - [`task`]: the [`task::Task`] envelope and its JSON and Protobuf encodings.
//! - [`connection`]: the one AMQP connect of every service, `amqp://` or
//!   `amqps://` with a custom CA and an optional client certificate.
//! - [`publisher`]: [`publisher::TaskPublisher`], persistent publishing that
//!   returns only once the broker confirmed, with a bounded window of
//!   unconfirmed messages and reconnection.
//! - [`preflight`]: at start, a queue of another type than `queue_type`
//!   stops the service with what to do.
//!
//! The producers (task-producer, alert-subscriber) publish with it; the
//! consumers (task-worker) declare the same topology and read the same
//! headers ([`topology::headers`]). user-service declares `data_sync` with
//! [`topology::declare_data_sync`].

pub mod connection;
pub mod preflight;
pub mod publisher;
pub mod task;
pub mod topology;
