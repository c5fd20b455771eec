//! The Prometheus recorder every service shares.
//!
//! Services record with the [`metrics`] macros (`counter!`, `gauge!`,
//! `histogram!`) under the names DESIGN.md fixes; [`install`] puts one
//! Prometheus recorder behind those macros for the whole process and
//! [`crate::ops`] serves its text rendering on `/metrics`. Installing is
//! idempotent, so several services (or tests) in one process share it.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Histogram buckets in seconds: 1 ms to 10 s, for RPC and task durations.
const DURATION_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 7.5, 10.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide Prometheus recorder (once) and returns its handle.
///
/// If another recorder was installed first (a library user's own), metrics
/// keep going there and the returned handle renders an empty registry.
pub fn install() -> PrometheusHandle {
    HANDLE
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
        .clone()
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
    fn install_is_idempotent() {
        let a = install();
        let b = install();
        metrics::counter!("metrics_idempotent_test_total").increment(1);
        // Both handles render the one registry the macros write to.
        assert!(a.render().contains("metrics_idempotent_test_total 1"));
        assert!(b.render().contains("metrics_idempotent_test_total 1"));
    }
}
