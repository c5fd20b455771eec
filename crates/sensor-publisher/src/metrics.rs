//! Every metric sensor-publisher records, named once.
//!
//! The names are a contract (dashboards, alerts and docs/ARCHITECTURE.md
//! use them): change one only together with those. [`ALL`] carries the
//! `# HELP` text that [`crate::Application::build`] registers. The shared
//! names it records are in [`common::metrics`]:
//! `messages_published_total{subject="<prefix>.>"}` for every reading handed
//! to NATS (core) or acknowledged by the stream (JetStream), and
//! `messages_dropped_total` through the NATS connection.

use common::metrics::Metric;

/// Readings given up on (label `reason`: `disconnected`, `publish_error`,
/// `timeout`, `retries_exhausted`, `encode`, `too_large`, `shutdown`).
pub const READINGS_UNSENT: &str = "readings_unsent_total";
/// JetStream publishes sent again after a timeout or an error.
pub const JETSTREAM_PUBLISH_RETRIES: &str = "jetstream_publish_retries_total";
/// Resent readings the stream recognised by `Nats-Msg-Id` and dropped.
pub const JETSTREAM_PUBLISH_DUPLICATES: &str = "jetstream_publish_duplicates_total";

/// The publisher's own metrics with their `# HELP` text.
pub const ALL: &[Metric] = &[
    Metric::counter(
        READINGS_UNSENT,
        "Readings given up on, by reason (not connected, failed, too large, retries exhausted, shutdown).",
    ),
    Metric::counter(
        JETSTREAM_PUBLISH_RETRIES,
        "JetStream publishes sent again after a timeout or an error.",
    ),
    Metric::counter(
        JETSTREAM_PUBLISH_DUPLICATES,
        "Resent readings the stream recognised as duplicates and dropped.",
    ),
];
