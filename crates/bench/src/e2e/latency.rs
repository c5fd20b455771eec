//! From the points each alert passed to the latencies of a phase: the
//! whole path (reading timestamp → notification) and its stages, each as
//! an HDR histogram in µs.
//!
//! Stages, all on the host's one clock:
//! - publish: reading timestamp → NATS delivered it (to the tap);
//! - evaluate: delivered → alert-subscriber logged "alert raised";
//! - hand on: "alert raised" → task-worker logged "notification sent"
//!   (alert published on NATS, task confirmed into RabbitMQ, delivered to
//!   the worker, GetUser, the log line);
//! - from delivery: delivered → notification, the exact part of the whole.

use std::collections::HashMap;

use hdrhistogram::Histogram;

use super::{
    phase::Phase,
    tap::Delivered,
    timeline::{Logged, first_times, reading_millis},
};

/// A new latency histogram: 1 µs to 60 s, 3 significant digits.
pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// Records `micros`, at least 1 (two clocks read µs apart may disagree in
/// order by a µs or two).
pub(crate) fn record(histogram: &mut Histogram<u64>, micros: i64) {
    histogram.saturating_record(micros.max(1) as u64);
}

/// Count and percentiles of one histogram, µs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Spread {
    pub(crate) count: u64,
    pub(crate) p50: u64,
    pub(crate) p99: u64,
    pub(crate) max: u64,
}

impl Spread {
    pub(crate) fn of(histogram: &Histogram<u64>) -> Self {
        if histogram.is_empty() {
            return Spread::default();
        }
        Spread {
            count: histogram.len(),
            p50: histogram.value_at_quantile(0.50),
            p99: histogram.value_at_quantile(0.99),
            max: histogram.max(),
        }
    }
}

/// What one phase measured.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PhaseLatency {
    /// Alerts the script raises.
    pub(crate) expected: u64,
    /// Alerts alert-subscriber logged as raised.
    pub(crate) raised: u64,
    /// Distinct alerts the worker notified.
    pub(crate) notified: u64,
    /// Notifications beyond the first of an alert (should be 0).
    pub(crate) repeated: u64,
    /// Reading timestamp → notification (the figure; ms-resolution start).
    pub(crate) total: Spread,
    /// Reading timestamp → NATS delivery.
    pub(crate) publish: Spread,
    /// NATS delivery → "alert raised".
    pub(crate) evaluate: Spread,
    /// "alert raised" → notification.
    pub(crate) hand_on: Spread,
    /// NATS delivery → notification.
    pub(crate) from_delivery: Spread,
    /// Notifications per second, from the first alerting reading to the
    /// last notification.
    pub(crate) notified_per_sec: f64,
}

/// The latencies of `phase`'s alerts from what each point recorded.
pub(crate) fn analyse(
    phase: &Phase,
    notified: &Logged,
    raised: &Logged,
    delivered: &Delivered,
) -> PhaseLatency {
    let prefix = phase.id_prefix();
    let ours = |logged: &Logged| -> HashMap<String, i64> {
        let mut first = first_times(logged);
        first.retain(|id, _| id.starts_with(&prefix));
        first
    };
    let notified_at = ours(notified);
    let raised_at = ours(raised);
    let repeated = notified
        .iter()
        .filter(|(id, _)| id.starts_with(&prefix))
        .map(|(_, times)| times.len() as u64 - 1)
        .sum();

    let [
        mut total,
        mut publish,
        mut evaluate,
        mut hand_on,
        mut from_delivery,
    ] = std::array::from_fn(|_| histogram());
    let (mut first_reading, mut last_notification) = (i64::MAX, i64::MIN);
    for (id, &done) in &notified_at {
        let Some(reading) = reading_millis(id).map(|ms| ms * 1000) else {
            continue;
        };
        first_reading = first_reading.min(reading);
        last_notification = last_notification.max(done);
        record(&mut total, done - reading);
        let tapped = delivered.get(id).copied();
        if let Some(tapped) = tapped {
            record(&mut publish, tapped - reading);
            record(&mut from_delivery, done - tapped);
        }
        if let Some(&raised) = raised_at.get(id) {
            record(&mut hand_on, done - raised);
            if let Some(tapped) = tapped {
                record(&mut evaluate, raised - tapped);
            }
        }
    }
    // Nothing notified leaves the bounds crossed: no span.
    let span_secs = last_notification.saturating_sub(first_reading).max(0) as f64 / 1e6;
    PhaseLatency {
        expected: phase.expected_alerts(),
        raised: raised_at.len() as u64,
        notified: notified_at.len() as u64,
        repeated,
        total: Spread::of(&total),
        publish: Spread::of(&publish),
        evaluate: Spread::of(&evaluate),
        hand_on: Spread::of(&hand_on),
        from_delivery: Spread::of(&from_delivery),
        notified_per_sec: if span_secs > 0.0 {
            notified_at.len() as f64 / span_secs
        } else {
            0.0
        },
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn each_alert_is_timed_from_its_reading_through_every_stage() {
        let phase = Phase::new("low", 10.0, Duration::from_secs(3), 10);
        // Reading at t = 1_700_000_000_000 ms; delivered 300 µs later,
        // raised 500 µs later, notified 2_000 µs later.
        let reading_us = 1_700_000_000_000_000;
        let id = "low-temp-001-1700000000000-10".to_string();
        let second = "low-temp-002-1700000000100-10".to_string();
        let other_phase = "high-temp-001-1700000000000-10".to_string();
        let notified = Logged::from([
            (id.clone(), vec![reading_us + 2_000, reading_us + 9_000]),
            (second.clone(), vec![reading_us + 100_000 + 4_000]),
            (other_phase.clone(), vec![reading_us + 1]),
        ]);
        let raised = Logged::from([(id.clone(), vec![reading_us + 500])]);
        let delivered = Delivered::from([(id.clone(), reading_us + 300)]);

        let measured = analyse(&phase, &notified, &raised, &delivered);

        assert_eq!(measured.expected, 3);
        assert_eq!(measured.notified, 2, "the other phase's alert is not ours");
        assert_eq!(measured.raised, 1);
        assert_eq!(measured.repeated, 1);
        assert_eq!(measured.total.count, 2);
        assert_eq!(measured.total.p50, 2_000, "the first notification counts");
        let max = measured.total.max;
        assert!(
            (4_000..=4_003).contains(&max),
            "4 ms within the precision: {max}"
        );
        assert_eq!(measured.publish.p50, 300);
        assert_eq!(measured.evaluate.p50, 200);
        assert_eq!(measured.hand_on.p50, 1_500);
        assert_eq!(measured.from_delivery.p50, 1_700);
        assert_eq!(measured.from_delivery.count, 1);
        // 2 alerts from the first reading to the last notification: 104 ms.
        assert!((measured.notified_per_sec - 2.0 / 0.104).abs() < 1e-6);
    }

    #[test]
    fn nothing_notified_measures_nothing() {
        let phase = Phase::new("high", 10.0, Duration::from_secs(1), 10);
        let measured = analyse(&phase, &Logged::new(), &Logged::new(), &Delivered::new());
        assert_eq!(measured.notified, 0);
        assert_eq!(measured.total, Spread::default());
        assert_eq!(measured.notified_per_sec, 0.0);
    }
}
