//! The Prometheus recorder every service shares.
//!
//! Services record with the [`metrics`] macros (`counter!`, `gauge!`,
//! `histogram!`); [`install`] puts one Prometheus recorder behind those
//! macros for the whole process and [`crate::ops`] serves its text rendering
//! on `/metrics`. Installing is idempotent, so several services (or tests) in
//! one process share it.
//!
//! Every metric name is defined once, as a constant beside its [`Metric`]
//! description: the names several services share are here ([`SHARED`]), each
//! service's own are in its `metrics` module. [`describe`] registers the
//! descriptions, so `/metrics` carries a `# HELP` line for each, and the
//! lists are what docs/ARCHITECTURE.md's metric table is checked against.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Histogram buckets in seconds: 1 ms to 10 s, for RPC and task durations.
const DURATION_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 7.5, 10.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Messages taken from a subject or queue (label `subject` or `queue`).
pub const MESSAGES_RECEIVED: &str = "messages_received_total";
/// Messages refused as bad input (label `reason`: `invalid_json`,
/// `invalid_protobuf`, `invalid_message`, `unsupported_content_type`,
/// `too_large`, ...).
pub const MESSAGES_REJECTED: &str = "messages_rejected_total";
/// Messages published (label `subject` or `queue`).
pub const MESSAGES_PUBLISHED: &str = "messages_published_total";
/// Messages lost before they were read (label `reason`: `slow_consumer`).
pub const MESSAGES_DROPPED: &str = "messages_dropped_total";
/// Config file reloads (label `outcome`: `applied` or `rejected`).
pub const CONFIG_RELOADS: &str = "config_reloads_total";
/// A circuit breaker's state: 0 closed, 1 half-open, 2 open (label `name`).
pub const CIRCUIT_BREAKER_STATE: &str = "circuit_breaker_state";

/// What kind of series a metric is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    /// Only goes up.
    Counter,
    /// Goes up and down.
    Gauge,
    /// Observations in buckets.
    Histogram,
}

/// A metric a service exports: its name, its kind and its `# HELP` text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Metric {
    /// The series name, e.g. `messages_received_total`.
    pub name: &'static str,
    /// Counter, gauge or histogram.
    pub kind: MetricKind,
    /// One line for `# HELP`.
    pub help: &'static str,
}

impl Metric {
    /// A counter.
    pub const fn counter(name: &'static str, help: &'static str) -> Self {
        Metric {
            name,
            kind: MetricKind::Counter,
            help,
        }
    }

    /// A gauge.
    pub const fn gauge(name: &'static str, help: &'static str) -> Self {
        Metric {
            name,
            kind: MetricKind::Gauge,
            help,
        }
    }

    /// A histogram.
    pub const fn histogram(name: &'static str, help: &'static str) -> Self {
        Metric {
            name,
            kind: MetricKind::Histogram,
            help,
        }
    }
}

/// The metrics several services export.
pub const SHARED: &[Metric] = &[
    Metric::counter(MESSAGES_RECEIVED, "Messages taken from a subject or queue."),
    Metric::counter(
        MESSAGES_REJECTED,
        "Messages refused as bad input, by reason.",
    ),
    Metric::counter(
        MESSAGES_PUBLISHED,
        "Messages published, by subject or queue.",
    ),
    Metric::counter(
        MESSAGES_DROPPED,
        "Messages lost before they were read, by reason.",
    ),
    Metric::counter(CONFIG_RELOADS, "Config file reloads, by outcome."),
    Metric::gauge(
        CIRCUIT_BREAKER_STATE,
        "Circuit breaker state: 0 closed, 1 half-open, 2 open.",
    ),
];

/// Registers the `# HELP` text of `metrics` with the process's recorder
/// (installing it first). Call once per service at build time, with the
/// service's own list; [`SHARED`] is described by [`install`].
pub fn describe(list: &[Metric]) {
    install();
    register(list);
}

/// Installs the process-wide Prometheus recorder (once) and returns its handle.
///
/// If another recorder was installed first (a library user's own), metrics
/// keep going there and the returned handle renders an empty registry.
pub fn install() -> PrometheusHandle {
    let handle = HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets(&DURATION_BUCKETS)
                .expect("the bucket list is not empty");
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            if let Err(error) = metrics::set_global_recorder(recorder) {
                tracing::warn!(%error, "a metrics recorder was already installed; /metrics will be empty");
            }
            handle
        })
        .clone();
    SHARED_DESCRIBED.get_or_init(|| register(SHARED));
    handle
}

/// Set once [`SHARED`] has been described.
static SHARED_DESCRIBED: OnceLock<()> = OnceLock::new();

fn register(list: &[Metric]) {
    for metric in list {
        match metric.kind {
            MetricKind::Counter => metrics::describe_counter!(metric.name, metric.help),
            MetricKind::Gauge => metrics::describe_gauge!(metric.name, metric.help),
            MetricKind::Histogram => metrics::describe_histogram!(metric.name, metric.help),
        }
    }
}

/// Renders every metric in the Prometheus text format.
pub fn render() -> String {
    let handle = install();
    // Upkeep drains histogram samples into their buckets; doing it on each
    // scrape saves a background thread.
    handle.run_upkeep();
    handle.render()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_histograms_render_in_text_format() {
        install();
        metrics::counter!("messages_rejected_total", "reason" => "metrics-module-test")
            .increment(2);
        metrics::histogram!("task_duration_seconds", "kind" => "metrics-module-test").record(0.003);
        let text = render();
        assert!(
            text.contains(r#"messages_rejected_total{reason="metrics-module-test"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"task_duration_seconds_bucket{kind="metrics-module-test",le="0.005"} 1"#
            ),
            "{text}"
        );
    }

    #[test]
    fn described_metrics_carry_help_lines() {
        describe(&[Metric::counter(
            "metrics_described_test_total",
            "A counter for the help-line test.",
        )]);
        metrics::counter!("metrics_described_test_total").increment(1);
        metrics::counter!(MESSAGES_PUBLISHED, "subject" => "metrics.help.test").increment(1);
        let text = render();
        assert!(
            text.contains("# HELP metrics_described_test_total A counter for the help-line test."),
            "{text}"
        );
        assert!(
            text.contains("# HELP messages_published_total Messages published"),
            "shared metrics are described by install: {text}"
        );
    }

    #[test]
    fn install_is_idempotent() {
        let a = install();
        let b = install();
        metrics::counter!("metrics_idempotent_test_total").increment(1);
        // Both handles render the one registry the macros write to.
        assert!(a.render().contains("metrics_idempotent_test_total 1"));
        assert!(b.render().contains("metrics_idempotent_test_total 1"));
    }
}
