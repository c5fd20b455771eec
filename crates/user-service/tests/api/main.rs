//! Integration tests of user-service: the real service in-process on port 0,
//! against the machine's PostgreSQL and RabbitMQ, or a temp SQLite file.

mod cli;
mod client;
mod deadline;
mod events;
mod grpc;
mod health;
mod helpers;
mod http;
mod openapi;
mod pki;
mod postgres_tls;
mod read_cache;
mod reads;
mod reflection;
mod tls;
mod trace;
