//! Every metric user-service records, named once.
//!
//! The names are a contract (dashboards, alerts and docs/ARCHITECTURE.md
//! use them): change one only together with those. [`ALL`] carries the
//! `# HELP` text that [`crate::Application::build`] registers. The shared
//! names the service records are in [`common::metrics`]:
//! `messages_published_total{queue}` for each relayed `data_sync` event, and
//! `messages_rejected_total{reason="too_large"}` for each request refused
//! for its size (gRPC in [`crate::call_layer`]).

use common::metrics::Metric;

/// gRPC calls answered (labels `method`, `code`).
pub const GRPC_SERVER_REQUESTS: &str = "grpc_server_requests_total";
/// Time from a gRPC call's arrival to the end of its response (label `method`).
pub const GRPC_SERVER_DURATION: &str = "grpc_server_duration_seconds";
/// `GetUser` lookups in the read cache (label `result`: `hit`, `miss`).
pub const USER_CACHE_LOOKUPS: &str = "user_cache_lookups_total";
/// Times the change feed could not listen or lost its connection.
pub const USER_CACHE_FEED_ERRORS: &str = "user_cache_feed_errors_total";
/// 1 on the replica that holds the outbox relay lease, 0 elsewhere.
pub const OUTBOX_RELAY_LEADER: &str = "outbox_relay_leader";
/// Reloads of the TLS files after a change (label `outcome`: `applied`,
/// `rejected`).
pub const TLS_CERTIFICATE_RELOADS: &str = "tls_certificate_reloads_total";
/// Connections dropped before their TLS handshake finished (label
/// `server`: `grpc`, `http`): plaintext, no or a wrong client certificate,
/// an untrusted server certificate, a timeout.
pub const TLS_HANDSHAKE_FAILURES: &str = "tls_handshake_failures_total";

/// The service's own metrics with their `# HELP` text.
pub const ALL: &[Metric] = &[
    Metric::counter(
        GRPC_SERVER_REQUESTS,
        "gRPC calls answered, by method and status code.",
    ),
    Metric::histogram(
        GRPC_SERVER_DURATION,
        "Duration of gRPC calls in seconds, by method.",
    ),
    Metric::counter(
        USER_CACHE_LOOKUPS,
        "GetUser lookups in the read cache, by result (hit or miss).",
    ),
    Metric::counter(
        USER_CACHE_FEED_ERRORS,
        "Times the read cache's change feed could not listen or was cut off.",
    ),
    Metric::gauge(
        OUTBOX_RELAY_LEADER,
        "1 on the replica that relays the outbox, 0 on the others.",
    ),
    Metric::counter(
        TLS_CERTIFICATE_RELOADS,
        "Reloads of changed TLS certificate files, by outcome (applied or rejected).",
    ),
    Metric::counter(
        TLS_HANDSHAKE_FAILURES,
        "Connections dropped before their TLS handshake finished, by server (grpc or http).",
    ),
];
