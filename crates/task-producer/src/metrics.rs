//! Every metric task-producer records, named once.
//!
//! The producer has no metric of its own: the one series it exports is the
//! shared [`common::metrics::MESSAGES_PUBLISHED`],
//! `messages_published_total{queue}`, counted by the `workqueue` publisher
//! for every task the broker confirmed (and described with the other shared
//! names). [`ALL`] is the list [`crate::Application::build`] describes, so a
//! metric of the producer's own goes here first.

use common::metrics::Metric;

/// The producer's own metrics with their `# HELP` text (none so far).
pub const ALL: &[Metric] = &[];
