//! The metrics only the alert-subscriber exports: their names (a contract
//! with dashboards and alerting rules, listed in docs/ARCHITECTURE.md) and
//! their `# HELP` text.
//!
//! It also records shared series, named in [`common::metrics`]:
//! `messages_received_total`, `messages_rejected_total`,
//! `messages_published_total` (alerts on NATS; the task publisher counts its
//! queue), `messages_dropped_total` (the NATS connection) and
//! `config_reloads_total` (the rules watcher).

use common::metrics::Metric;

/// Redelivered readings recognised by their sequence number and skipped.
pub const READINGS_DUPLICATE: &str = "readings_duplicate_total";
/// Alerts raised (label `severity`: `warning`, `critical`).
pub const ALERTS_RAISED: &str = "alerts_raised_total";
/// Alerts without an owner: published on NATS, no notify task.
pub const ALERTS_UNOWNED: &str = "alerts_unowned_total";
/// Alerts waiting to be confirmed by RabbitMQ.
pub const ALERTS_PENDING_HANDOFF: &str = "alerts_pending_handoff";
/// Notify task publishes tried again after a failure.
pub const ALERT_HANDOFF_RETRIES: &str = "alert_handoff_retries_total";
/// Alerts given up (label `reason`: `shutdown`, `encode`).
pub const ALERTS_ABANDONED: &str = "alerts_abandoned_total";

/// Lanes (partitions and the two unpartitioned lanes) this member owns.
pub const PARTITIONS_OWNED: &str = "alert_partitions_owned";
/// Changes of the group's membership this member saw.
pub const GROUP_REBALANCES: &str = "alert_group_rebalances_total";
/// Lane leases lost (expired or taken while held).
pub const PARTITION_LEASE_LOSSES: &str = "alert_partition_lease_losses_total";
/// Handover durations (label `side`: `release` from the decision to the
/// lease's deletion, `acquire` from the lease to the lane's first consumer).
pub const PARTITION_HANDOVER: &str = "alert_partition_handover_seconds";
/// Readings of a lane not yet delivered to its owner (label `lane`).
pub const PARTITION_LAG: &str = "alert_partition_lag";
/// Readings that arrived in another partition than their sensor's hash.
pub const READINGS_MISROUTED: &str = "readings_misrouted_total";

/// Every metric above, described at build time.
pub const ALL: &[Metric] = &[
    Metric::counter(
        READINGS_DUPLICATE,
        "Redelivered readings recognised by seq and skipped.",
    ),
    Metric::counter(ALERTS_RAISED, "Alerts raised, by severity."),
    Metric::counter(
        ALERTS_UNOWNED,
        "Alerts without an owner: published on NATS, no notify task.",
    ),
    Metric::gauge(
        ALERTS_PENDING_HANDOFF,
        "Alerts waiting for RabbitMQ to confirm their notify task.",
    ),
    Metric::counter(
        ALERT_HANDOFF_RETRIES,
        "Notify task publishes tried again after a failure.",
    ),
    Metric::counter(
        ALERTS_ABANDONED,
        "Alerts given up without a confirmed notify task, by reason.",
    ),
    Metric::gauge(
        PARTITIONS_OWNED,
        "Lanes (partitions and the unpartitioned lanes) this member owns.",
    ),
    Metric::counter(
        GROUP_REBALANCES,
        "Changes of the alert group's membership this member saw.",
    ),
    Metric::counter(
        PARTITION_LEASE_LOSSES,
        "Lane leases lost while held (expired or taken).",
    ),
    Metric::histogram(
        PARTITION_HANDOVER,
        "Lane handover durations, by side (release, acquire).",
    ),
    Metric::gauge(
        PARTITION_LAG,
        "Readings of a lane not yet delivered to its owner, by lane.",
    ),
    Metric::counter(
        READINGS_MISROUTED,
        "Readings in another partition than their sensor's hash (mapping and partitions differ).",
    ),
];
