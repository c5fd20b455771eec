//! Per-sensor statistics over a sliding window, plus lifetime counters.
//!
//! Each sensor keeps one bucket per second of the window (count, sum, min,
//! max), so recording is O(1) and old readings fall out as time passes.
//! Sequence numbers are checked per sensor: the publisher numbers each
//! sensor's readings 1, 2, 3, ..., so a jump is a reading lost on the way
//! (`seq_gaps`), a step back is a duplicate or a late arrival, and a return
//! to 1 is a publisher that restarted.

use std::collections::{BTreeMap, HashMap, VecDeque};

use serde::{Deserialize, Serialize};

use common::proto::sensor::v1::SensorReading;

/// One second of one sensor's readings.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    second: u64,
    count: u64,
    sum: f64,
    min: f64,
    max: f64,
}

/// Everything known about one sensor.
#[derive(Debug, Clone)]
struct SensorStats {
    kind: String,
    unit: String,
    buckets: VecDeque<Bucket>,
    first_second: u64,
    total: u64,
    last: f64,
    last_timestamp: i64,
    last_seq: Option<u64>,
    seq_gaps: u64,
    seq_late_or_duplicate: u64,
    publisher_restarts: u64,
}

impl SensorStats {
    fn new(reading: &SensorReading, second: u64) -> Self {
        SensorStats {
            kind: reading.kind.clone(),
            unit: reading.unit.clone(),
            buckets: VecDeque::new(),
            first_second: second,
            total: 0,
            last: reading.value,
            last_timestamp: reading.timestamp,
            last_seq: None,
            seq_gaps: 0,
            seq_late_or_duplicate: 0,
            publisher_restarts: 0,
        }
    }

    fn record(&mut self, reading: &SensorReading, second: u64, window: u64) {
        match self.buckets.back_mut() {
            Some(bucket) if bucket.second == second => {
                bucket.count += 1;
                bucket.sum += reading.value;
                bucket.min = bucket.min.min(reading.value);
                bucket.max = bucket.max.max(reading.value);
            }
            _ => self.buckets.push_back(Bucket {
                second,
                count: 1,
                sum: reading.value,
                min: reading.value,
                max: reading.value,
            }),
        }
        self.prune(second, window);
        self.total += 1;
        self.last = reading.value;
        self.last_timestamp = reading.timestamp;
        self.check_seq(reading.seq);
    }

    fn check_seq(&mut self, seq: u64) {
        // seq 0 means the sender does not number its readings (external JSON).
        if seq == 0 {
            return;
        }
        match self.last_seq {
            None => self.last_seq = Some(seq),
            Some(last) if seq > last => {
                self.seq_gaps += seq - last - 1;
                self.last_seq = Some(seq);
            }
            Some(last) if seq == 1 && last > 1 => {
                self.publisher_restarts += 1;
                self.last_seq = Some(seq);
            }
            Some(_) => self.seq_late_or_duplicate += 1,
        }
    }

    fn prune(&mut self, now: u64, window: u64) {
        while self
            .buckets
            .front()
            .is_some_and(|bucket| bucket.second + window <= now)
        {
            self.buckets.pop_front();
        }
    }

    fn report(&self, now: u64, window: u64) -> SensorReport {
        let live = self
            .buckets
            .iter()
            .filter(|bucket| bucket.second + window > now);
        let (mut count, mut sum, mut min, mut max) = (0u64, 0.0, f64::INFINITY, f64::NEG_INFINITY);
        for bucket in live {
            count += bucket.count;
            sum += bucket.sum;
            min = min.min(bucket.min);
            max = max.max(bucket.max);
        }
        // A sensor seen for less than the window is rated over the time seen.
        let span = (now.saturating_sub(self.first_second) + 1).min(window) as f64;
        SensorReport {
            kind: self.kind.clone(),
            unit: self.unit.clone(),
            count,
            min: (count > 0).then_some(min),
            max: (count > 0).then_some(max),
            mean: (count > 0).then(|| sum / count as f64),
            last: self.last,
            last_timestamp: self.last_timestamp,
            rate_per_sec: count as f64 / span,
            total: self.total,
            last_seq: self.last_seq,
            seq_gaps: self.seq_gaps,
            seq_late_or_duplicate: self.seq_late_or_duplicate,
            publisher_restarts: self.publisher_restarts,
        }
    }
}

/// One sensor in the `/stats` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SensorReport {
    /// What the sensor measures.
    pub kind: String,
    /// Unit of the values.
    pub unit: String,
    /// Readings in the window.
    pub count: u64,
    /// Smallest value in the window (absent when the window is empty).
    pub min: Option<f64>,
    /// Largest value in the window.
    pub max: Option<f64>,
    /// Mean value in the window.
    pub mean: Option<f64>,
    /// The latest value.
    pub last: f64,
    /// Timestamp of the latest reading, Unix milliseconds.
    pub last_timestamp: i64,
    /// Readings per second over the window.
    pub rate_per_sec: f64,
    /// Readings since this monitor started.
    pub total: u64,
    /// Highest sequence number seen.
    pub last_seq: Option<u64>,
    /// Readings missing between sequence numbers: lost on the way.
    pub seq_gaps: u64,
    /// Readings that came with an old sequence number.
    pub seq_late_or_duplicate: u64,
    /// Times the sequence started again at 1.
    pub publisher_restarts: u64,
}

/// Whole-fleet numbers in the `/stats` answer.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Totals {
    /// Sensors seen.
    pub sensors: usize,
    /// Readings since start.
    pub readings: u64,
    /// Readings in the window, all sensors.
    pub window_readings: u64,
    /// Readings per second over the window, all sensors.
    pub rate_per_sec: f64,
    /// Sum of every sensor's `seq_gaps`.
    pub seq_gaps: u64,
    /// Messages that did not decode.
    pub rejected: u64,
    /// Messages the NATS client dropped because this monitor fell behind.
    pub slow_consumer_drops: u64,
}

/// The `/stats` answer (and the `sensor.stats` reply).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatsReport {
    /// Length of the window, seconds.
    pub window_secs: u64,
    /// Fleet totals.
    pub totals: Totals,
    /// Per sensor, by id.
    pub sensors: BTreeMap<String, SensorReport>,
}

/// The statistics of every sensor seen.
#[derive(Debug, Clone)]
pub struct FleetStats {
    window: u64,
    sensors: HashMap<String, SensorStats>,
    readings: u64,
    rejected: u64,
}

impl FleetStats {
    /// Empty statistics over a window of `window_secs` (at least 1).
    pub fn new(window_secs: u64) -> Self {
        FleetStats {
            window: window_secs.max(1),
            sensors: HashMap::new(),
            readings: 0,
            rejected: 0,
        }
    }

    /// Records a reading received at `second` (any monotonic second count).
    pub fn record(&mut self, reading: &SensorReading, second: u64) {
        self.readings += 1;
        let window = self.window;
        match self.sensors.get_mut(reading.sensor_id.as_str()) {
            Some(stats) => stats.record(reading, second, window),
            None => {
                let mut stats = SensorStats::new(reading, second);
                stats.record(reading, second, window);
                self.sensors.insert(reading.sensor_id.clone(), stats);
            }
        }
    }

    /// Counts a message that did not decode.
    pub fn reject(&mut self) {
        self.rejected += 1;
    }

    /// Readings recorded since start.
    pub fn readings(&self) -> u64 {
        self.readings
    }

    /// The report as of `second`.
    pub fn report(&self, second: u64, slow_consumer_drops: u64) -> StatsReport {
        let sensors: BTreeMap<String, SensorReport> = self
            .sensors
            .iter()
            .map(|(id, stats)| (id.clone(), stats.report(second, self.window)))
            .collect();
        let totals = Totals {
            sensors: sensors.len(),
            readings: self.readings,
            window_readings: sensors.values().map(|s| s.count).sum(),
            rate_per_sec: sensors.values().map(|s| s.rate_per_sec).sum(),
            seq_gaps: sensors.values().map(|s| s.seq_gaps).sum(),
            rejected: self.rejected,
            slow_consumer_drops,
        };
        StatsReport {
            window_secs: self.window,
            totals,
            sensors,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(sensor: &str, value: f64, seq: u64) -> SensorReading {
        SensorReading {
            sensor_id: sensor.into(),
            kind: "temperature".into(),
            value,
            unit: "celsius".into(),
            timestamp: 1,
            seq,
            site: None,
            owner_id: None,
        }
    }

    #[test]
    fn window_stats_follow_the_readings_and_forget_old_ones() {
        let mut stats = FleetStats::new(10);
        stats.record(&reading("t1", 20.0, 1), 100);
        stats.record(&reading("t1", 30.0, 2), 100);
        stats.record(&reading("t1", 25.0, 3), 105);
        let report = stats.report(105, 0);
        let t1 = &report.sensors["t1"];
        assert_eq!(t1.count, 3);
        assert_eq!(
            (t1.min, t1.max, t1.mean),
            (Some(20.0), Some(30.0), Some(25.0))
        );
        assert_eq!(t1.last, 25.0);
        assert!((t1.rate_per_sec - 0.5).abs() < 1e-9, "3 readings over 6 s");

        // Ten seconds on, the first two readings left the window.
        let later = stats.report(110, 0);
        let t1 = &later.sensors["t1"];
        assert_eq!((t1.count, t1.min, t1.total), (1, Some(25.0), 3));
        assert_eq!(stats.report(200, 0).sensors["t1"].mean, None);
    }

    #[test]
    fn sequence_jumps_are_gaps_and_steps_back_are_late_or_duplicate() {
        let mut stats = FleetStats::new(60);
        for seq in [1, 2, 5, 6, 6, 4, 9] {
            stats.record(&reading("t1", 1.0, seq), 1);
        }
        stats.record(&reading("t2", 1.0, 1), 1);
        stats.record(&reading("t2", 1.0, 2), 1);
        let report = stats.report(1, 3);
        assert_eq!(report.sensors["t1"].seq_gaps, 2 + 2);
        assert_eq!(report.sensors["t1"].seq_late_or_duplicate, 2);
        assert_eq!(report.sensors["t2"].seq_gaps, 0);
        assert_eq!(report.totals.seq_gaps, 4);
        assert_eq!(report.totals.slow_consumer_drops, 3);
        assert_eq!(report.totals.readings, 9);
    }

    #[test]
    fn a_restarted_publisher_is_not_a_gap_and_unnumbered_readings_are_fine() {
        let mut stats = FleetStats::new(60);
        for seq in [1, 2, 3, 1, 2, 0, 0] {
            stats.record(&reading("t1", 1.0, seq), 1);
        }
        let t1 = &stats.report(1, 0).sensors["t1"];
        assert_eq!(
            (t1.seq_gaps, t1.publisher_restarts, t1.seq_late_or_duplicate),
            (0, 1, 0)
        );
    }
}
