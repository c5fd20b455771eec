//! The statistics as their readers see them: [`StatsHandle`], shared by the
//! recorder that writes them and everything that reads the report, and the
//! `GET /stats` route on the ops port that answers with it as JSON.

use std::{
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use axum::{Json, Router, extract::State, routing::get};
use common::nats::ConnectionWatch;
use tokio::time::Instant;

use crate::stats::{FleetStats, StatsReport};

/// The live statistics of a running monitor. Cheap to clone: every clone
/// reads and writes the same numbers.
#[derive(Debug, Clone)]
pub struct StatsHandle {
    /// Every sensor's statistics, behind one lock (taken once per batch of
    /// readings, and once per report).
    stats: Arc<Mutex<FleetStats>>,
    /// When the monitor started: the statistics count seconds from here.
    start: Instant,
    /// The NATS connection, whose slow-consumer drops the report includes.
    watch: ConnectionWatch,
}

impl StatsHandle {
    /// Empty statistics over `window` (whole seconds, as validated).
    pub(crate) fn new(window: Duration, watch: ConnectionWatch) -> Self {
        StatsHandle {
            stats: Arc::new(Mutex::new(FleetStats::new(window.as_secs()))),
            start: Instant::now(),
            watch,
        }
    }

    /// The current report (what `/stats` answers).
    pub fn report(&self) -> StatsReport {
        let second = self.second();
        self.lock().report(second, self.watch.slow_consumer_drops())
    }

    /// Readings recorded so far (cheaper than a full report).
    pub fn readings(&self) -> u64 {
        self.lock().readings()
    }

    /// The statistics, for a batch of updates.
    pub(crate) fn lock(&self) -> MutexGuard<'_, FleetStats> {
        // Recording never panics half-way, so a poisoned lock still holds
        // consistent numbers.
        self.stats
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Seconds since the monitor started: the clock of the window.
    pub(crate) fn second(&self) -> u64 {
        self.start.elapsed().as_secs()
    }
}

/// `GET /stats`, merged into the ops server's routes.
pub(crate) fn routes(stats: StatsHandle) -> Router {
    Router::new()
        .route("/stats", get(stats_handler))
        .with_state(stats)
}

async fn stats_handler(State(stats): State<StatsHandle>) -> Json<StatsReport> {
    Json(stats.report())
}
