//! The "fleet summary" log line, once per `summary_interval`: what
//! `docker compose logs -f monitor-subscriber` shows a user.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::report::StatsHandle;

/// Logs one line per `interval` until `stop` fires; a zero interval logs
/// nothing.
pub(crate) async fn log_summaries(stats: StatsHandle, interval: Duration, stop: CancellationToken) {
    if interval.is_zero() {
        return;
    }
    let mut ticker = tokio::time::interval(interval);
    ticker.tick().await;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let report = stats.report();
        tracing::info!(
            sensors = report.totals.sensors,
            readings = report.totals.readings,
            rate_per_sec = format!("{:.1}", report.totals.rate_per_sec),
            seq_gaps = report.totals.seq_gaps,
            rejected = report.totals.rejected,
            slow_consumer_drops = report.totals.slow_consumer_drops,
            "fleet summary"
        );
    }
}
