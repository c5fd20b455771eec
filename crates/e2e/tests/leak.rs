//! The leak check: every service as the real binary, under a steady load of
//! fixed rates for a bounded time, its resident memory sampled; the test
//! fails when any service's memory is still growing at the end
//! (`e2e::growth` says what counts as growing).
//!
//! Timeline (about 2½ minutes, in its own test binary, so cargo runs it
//! alone): start-up, [`WARM_UP`] under load (connections, pools, caches and
//! allocator arenas fill; not judged), then [`WINDOW`] sampled every
//! [`EVERY`]. The bounded caches are shrunk so that they fill during the
//! warm-up (task-worker remembers [`FINISHED_CAPACITY`] task ids instead of
//! 100,000, monitor-subscriber keeps a 10 s window instead of 60 s): what is
//! judged is the state a long-running service reaches, not the filling.
//!
//! The rates ([`LOAD`]) are low enough for debug builds on a busy two-core
//! machine to keep up with: a subscriber that fell behind would buffer
//! readings and grow for that reason, so the test also checks nothing was
//! dropped and every part of the flow moved during the window. They are
//! high enough for a real leak to show: one retained reading per reading
//! grows alert-subscriber or monitor-subscriber by more than the margin
//! within the window (`one_retained_reading_per_reading_is_caught`). On the
//! real binaries: with a fleet of a million sensors, every reading from a
//! sensor not seen before, alert-subscriber (+7.8 MiB over the window) and
//! monitor-subscriber (+45 MiB), which keep state per sensor ever seen,
//! fail it.

use std::time::{Duration, Instant};

use e2e::{
    growth::{self, Limits, Verdict},
    steady::{Load, System, Tuning},
};
use testkit::{amqp_url, nats_url};

/// The load: readings at a fixed rate, an alert (a notify task and its
/// `GetUser`) every 50 readings of a sensor, sleep tasks and direct
/// `GetUser` calls.
const LOAD: Load = Load {
    readings_per_sec: 500.0,
    sensors: 50,
    readings_per_alert: 50,
    tasks_per_sec: 50.0,
    get_user_per_sec: 50.0,
};
/// Under load before sampling starts.
const WARM_UP: Duration = Duration::from_secs(40);
/// The judged window.
const WINDOW: Duration = Duration::from_secs(90);
/// Sampling period.
const EVERY: Duration = Duration::from_secs(2);
/// task-worker's `finished_capacity`: full within the warm-up.
const FINISHED_CAPACITY: usize = 1_000;

const MIB: f64 = 1024.0 * 1024.0;
/// What counts as growing: climbing at more than 50 MiB an hour through
/// both halves of the window, and by more than 3 MiB over it. The quietest
/// leak this catches at [`LOAD`] is about 45 KiB/s (3 MiB over the ~70 s
/// between the medians of the window's first and last quarters): ~90 bytes
/// kept per reading, ~450 bytes per task or per `GetUser` call.
const LIMITS: Limits = Limits {
    max_slope_per_hour: 50.0 * MIB,
    margin_bytes: 3.0 * MIB,
};

/// The smallest a reading can weigh when something keeps it: the decoded
/// `SensorReading` (ids, kind, unit, owner: five heap strings) or the NATS
/// message (subject, payload, a header map with `Content-Type` and
/// `traceparent`), each a few hundred bytes with the allocator's overhead.
const RETAINED_READING_BYTES: f64 = 256.0;

/// The service binaries judged, and the load's processes.
const JUDGED: [&str; 6] = [
    "user-service",
    "task-worker",
    "alert-subscriber",
    "monitor-subscriber",
    "sensor-publisher",
    "task-producer",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_service_keeps_growing_under_a_steady_load() {
    let tuning = Tuning {
        finished_capacity: Some(FINISHED_CAPACITY),
        monitor_window: Some("10s".into()),
    };
    let mut system = System::start(&nats_url(), &amqp_url(), tuning)
        .await
        .expect("the services start");
    // task-producer publishes until a little after the window ends.
    let load_for = WARM_UP + WINDOW + Duration::from_secs(20);
    system
        .start_load(&LOAD, load_for)
        .await
        .expect("the load starts");
    tokio::time::sleep(WARM_UP).await;

    let before = Flow::read(&system).await;
    let start = Instant::now();
    let mut samples: Vec<Vec<(f64, f64)>> = vec![Vec::new(); JUDGED.len()];
    let mut tick = tokio::time::interval(EVERY);
    while start.elapsed() < WINDOW {
        tick.tick().await;
        let at = start.elapsed().as_secs_f64();
        for (name, series) in JUDGED.iter().zip(&mut samples) {
            let rss = system
                .process(name)
                .and_then(|p| p.service.rss_bytes().ok())
                .unwrap_or_else(|| {
                    panic!(
                        "{name} is not running during the window:\n{}",
                        system.logs(&[name])
                    )
                });
            series.push((at, rss as f64));
        }
    }
    let after = Flow::read(&system).await;
    let (answered, failed) = system.stop_load().await;
    system.stop().await;

    let verdicts: Vec<(&str, Verdict)> = JUDGED
        .iter()
        .zip(&samples)
        .map(|(name, series)| {
            (
                *name,
                growth::judge(series, LIMITS).expect("enough samples"),
            )
        })
        .collect();
    for (name, verdict) in &verdicts {
        eprintln!("leak check: {name:<18} {verdict}");
    }
    after.assert_moved_since(&before, WINDOW);
    assert!(
        answered > 0 && failed == 0,
        "the GetUser driver: {answered} answered, {failed} failed"
    );
    for ((name, verdict), series) in verdicts.iter().zip(&samples) {
        assert!(
            !verdict.growing,
            "{name} kept growing under a steady load: {verdict}\nsamples (s, bytes): {series:?}"
        );
    }
}

/// The detector at this test's load, on synthetic series shaped like the
/// samples: a service that keeps one reading per reading it handles fails
/// the check, and one that keeps nothing passes with ±1 MiB of noise (the
/// real services move by less than 0.3 MiB over the window, with slopes
/// under 20 MiB/h).
#[test]
fn one_retained_reading_per_reading_is_caught() {
    let leak_per_sec = LOAD.readings_per_sec * RETAINED_READING_BYTES;
    let leaking = synthetic(|t| leak_per_sec * t);
    let verdict = growth::judge(&leaking, LIMITS).unwrap();
    assert!(verdict.growing, "a leak of {leak_per_sec} B/s: {verdict}");

    let steady = synthetic(|_| 0.0);
    let verdict = growth::judge(&steady, LIMITS).unwrap();
    assert!(!verdict.growing, "no leak: {verdict}");
}

/// Samples over [`WINDOW`] every [`EVERY`]: 40 MiB plus `leak(t)` plus noise
/// of ±1 MiB in whole pages, a fixed pseudo-random sequence.
fn synthetic(leak: impl Fn(f64) -> f64) -> Vec<(f64, f64)> {
    let mut state: u64 = 0x2545_F491_4F6C_DD1D;
    let count = WINDOW.as_secs() / EVERY.as_secs();
    (0..count)
        .map(|i| {
            let t = (i * EVERY.as_secs()) as f64;
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let noise = ((state % 10_001) as f64 / 5_000.0 - 1.0) * MIB;
            let bytes = 40.0 * MIB + leak(t) + noise;
            (t, (bytes / 4096.0).round() * 4096.0)
        })
        .collect()
}

/// The counters that show each part of the flow moving.
#[derive(Debug, Clone, Copy, Default)]
struct Flow {
    /// monitor-subscriber: readings received.
    readings: f64,
    /// alert-subscriber: alerts raised.
    alerts: f64,
    /// task-worker: tasks done.
    tasks: f64,
    /// user-service: gRPC calls answered.
    calls: f64,
    /// Readings dropped by either subscriber (slow consumer).
    dropped: f64,
}

impl Flow {
    async fn read(system: &System) -> Self {
        let counter = |service: &'static str, name: &'static str| async move {
            system
                .counter(service, name)
                .await
                .unwrap_or_else(|| panic!("{service} serves /metrics"))
        };
        Flow {
            readings: counter("monitor-subscriber", "messages_received_total").await,
            alerts: counter("alert-subscriber", "alerts_raised_total").await,
            tasks: counter("task-worker", "tasks_processed_total").await,
            calls: counter("user-service", "grpc_server_requests_total").await,
            dropped: counter("monitor-subscriber", "messages_dropped_total").await
                + counter("alert-subscriber", "messages_dropped_total").await,
        }
    }

    /// Every part moved at least at half its rate over `window`, and no
    /// subscriber fell behind: memory measured under the load it claims.
    fn assert_moved_since(&self, before: &Flow, window: Duration) {
        let secs = window.as_secs_f64();
        let alerts_per_sec = LOAD.readings_per_sec / LOAD.readings_per_alert as f64;
        let expected = [
            (
                "readings",
                self.readings - before.readings,
                LOAD.readings_per_sec,
            ),
            ("alerts", self.alerts - before.alerts, alerts_per_sec),
            (
                "tasks",
                self.tasks - before.tasks,
                LOAD.tasks_per_sec + alerts_per_sec,
            ),
            (
                "gRPC calls",
                self.calls - before.calls,
                LOAD.get_user_per_sec + alerts_per_sec,
            ),
        ];
        for (what, moved, per_sec) in expected {
            assert!(
                moved >= 0.5 * per_sec * secs,
                "only {moved} {what} in {secs} s, the load asks for {per_sec}/s"
            );
        }
        assert_eq!(
            self.dropped, 0.0,
            "a subscriber dropped readings: it fell behind the load"
        );
    }
}
