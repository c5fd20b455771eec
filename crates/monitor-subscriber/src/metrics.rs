//! The metrics the monitor-subscriber exports.
//!
//! Every series it records is one several services share, named and
//! described in [`common::metrics`]: [`MESSAGES_RECEIVED`] (label `subject`,
//! the subscription pattern), [`MESSAGES_REJECTED`] (label `reason`) and,
//! from the NATS connection, `messages_dropped_total{reason="slow_consumer"}`.
//! A metric of its own would get its name and help text here, in [`ALL`].

use common::metrics::Metric;
pub use common::metrics::{MESSAGES_RECEIVED, MESSAGES_REJECTED};

/// The metrics only this service exports, described at build time: none yet
/// (the shared ones are described by [`common::metrics::install`]).
pub const ALL: &[Metric] = &[];
