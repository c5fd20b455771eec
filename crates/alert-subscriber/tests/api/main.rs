//! alert-subscriber against the real NATS and RabbitMQ: the shared servers,
//! and private ones for the tests that stop a broker. One module per
//! feature; the fixtures are in `helpers`.

mod alerts;
mod backpressure;
mod cluster;
mod helpers;
mod jetstream;
mod limits;
mod metrics;
mod partitions;
mod queue_group;
mod rabbitmq_outage;
mod reconnect;
mod reload;
mod shutdown;
