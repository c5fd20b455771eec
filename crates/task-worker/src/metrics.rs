//! The names of the metrics task-worker records, each defined once with its
//! `# HELP` text.
//!
//! The names are a contract (dashboards, alerts and docs/ARCHITECTURE.md
//! read them): never rename one. The worker also records the shared
//! `messages_received_total{queue}` and `messages_rejected_total{reason}`
//! ([`common::metrics`]) and, through its user-service client,
//! `circuit_breaker_state{name}`.

use common::metrics::Metric;

/// Tasks finished by a handler (label `outcome`: `ok`, `retried`,
/// `dead_lettered`).
pub const TASKS_PROCESSED: &str = "tasks_processed_total";
/// How long a handler ran (label `kind`).
pub const TASK_DURATION: &str = "task_duration_seconds";
/// Redeliveries of tasks already done, acked without running them again.
pub const TASKS_DUPLICATES: &str = "tasks_duplicates_total";
/// Tasks handed back to the queue untouched (label `reason`: `breaker_open`).
pub const TASKS_REQUEUED: &str = "tasks_requeued_total";
/// Handler slots paused while the user-service breaker is open.
pub const TASK_CONSUMERS_PAUSED: &str = "task_consumers_paused";
/// Notifications recorded by `notify` (label `severity`: `warning`,
/// `critical`, `unknown`).
pub const NOTIFICATIONS_SENT: &str = "notifications_sent_total";
/// Failed calls to the pool's Redis of finished task ids (label `op`:
/// `exists`, `set`).
pub const IDEMPOTENCY_STORE_ERRORS: &str = "idempotency_store_errors_total";

/// Every metric of this crate, for [`common::metrics::describe`].
pub const ALL: &[Metric] = &[
    Metric::counter(
        TASKS_PROCESSED,
        "Tasks finished by a handler, by outcome (ok, retried, dead_lettered).",
    ),
    Metric::histogram(TASK_DURATION, "How long a handler ran, by task kind."),
    Metric::counter(
        TASKS_DUPLICATES,
        "Redeliveries of tasks already done, acked without running them again.",
    ),
    Metric::counter(
        TASKS_REQUEUED,
        "Tasks handed back to the queue untouched, by reason.",
    ),
    Metric::gauge(
        TASK_CONSUMERS_PAUSED,
        "Handler slots paused while the user-service circuit breaker is open.",
    ),
    Metric::counter(
        NOTIFICATIONS_SENT,
        "Notifications recorded by notify tasks, by alert severity.",
    ),
    Metric::counter(
        IDEMPOTENCY_STORE_ERRORS,
        "Failed calls to the Redis store of finished task ids, by operation.",
    ),
];

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn each_name_is_defined_once_and_described() {
        let names: Vec<&str> = ALL.iter().map(|metric| metric.name).collect();
        let unique: HashSet<&str> = names.iter().copied().collect();
        assert_eq!(names.len(), unique.len(), "a name listed twice: {names:?}");
        for shared in common::metrics::SHARED {
            assert!(
                !unique.contains(shared.name),
                "{} is shared: use common::metrics, not a second definition",
                shared.name
            );
        }
        assert!(ALL.iter().all(|metric| !metric.help.trim().is_empty()));
    }
}
