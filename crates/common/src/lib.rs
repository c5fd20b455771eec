//! Shared ground for every switchyard service.
//!
//! One module per concern, each usable on its own:
//!
//! - [`clock`]: wall-clock time as Unix milliseconds, as the messages carry it.
//! - [`proto`]: the generated `sensor.v1`, `user.v1` and `task.v1` types.
//! - [`codec`]: JSON and Protobuf behind one abstraction, chosen by `Content-Type`.
//! - [`retry`]: exponential backoff with full jitter and a `Retryable` classification.
//! - [`circuit_breaker`]: closed → open → half-open → closed, exported as a metric.
//! - [`config`]: defaults < TOML file < environment (or `<NAME>_FILE`), validation, secret redaction, hot reload.
//! - [`effective_config`]: the configuration in force, where each value came from, when it was loaded.
//! - [`telemetry`]: logs (json or pretty) and optional OTLP traces.
//! - [`propagation`]: W3C `traceparent` through NATS, AMQP and gRPC headers.
//! - [`shutdown`]: SIGTERM/Ctrl-C into one cancellation signal, in-flight work drained, then aborted.
//! - [`reconnect`]: the one reconnect-with-backoff loop every long-lived connection uses.
//! - [`ops`]: `/healthz`, `/readyz`, `/metrics` and `/config` over HTTP.
//! - [`metrics`]: the Prometheus recorder every service shares.
//! - [`nats`]: NATS connection with credentials, TLS, readiness and slow-consumer reporting, the readings stream.
//! - [`tls`]: the CA and client certificate files of a broker connection, checked before use.
//! - [`service`]: a binary's start: `--config`, telemetry, the config, then the service until a signal.

pub mod circuit_breaker;
pub mod clock;
pub mod codec;
pub mod config;
pub mod effective_config;
pub mod metrics;
pub mod nats;
pub mod ops;
pub mod propagation;
pub mod proto;
pub mod reconnect;
pub mod retry;
pub mod service;
pub mod shutdown;
pub mod telemetry;
pub mod tls;
