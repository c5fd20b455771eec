//! Worker tests against the real RabbitMQ (and a node of their own for the
//! restart), the real user-service, the shared Redis, and the real binary
//! for the kill and SIGTERM cases. One module per feature.

mod cluster;
mod data_sync;
mod dispatch;
mod hash;
mod helpers;
mod idempotency;
mod interop;
mod notify;
mod queue_type;
mod restarts;
mod retries;
mod shutdown;
