//! One phase of the run: sensor-publisher replaying a script at a given
//! rate, one reading in `alert_every` crossing the critical threshold, so
//! how many alerts are due, and when, is known before the phase starts.
//!
//! The script is `alert_every - 1` calm values and one alerting value.
//! Every sensor plays it in a loop, sensor `i` starting `i` values in, and
//! sensors take turns; with a fleet one larger than a multiple of the
//! script's length, global reading `k` is alerting exactly when
//! `k % alert_every == alert_every - 1`: alerts are evenly spaced, never two
//! at once, whatever the rate.

use std::time::Duration;

/// Under both thresholds of the default temperature rule (warning 30,
/// critical 40, hysteresis 1), and far enough under them to clear a level:
/// the next alerting reading raises a new alert.
const CALM: f64 = 25.0;

/// Over the critical threshold: raises a critical alert from a calm sensor.
pub(crate) const ALERTING: f64 = 41.0;

/// What one phase publishes.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Phase {
    /// `warmup`, `low` or `high`; also the sensors' id prefix, so a phase's
    /// alerts are told apart by their id.
    pub(crate) name: &'static str,
    /// Readings per second, the whole fleet together.
    pub(crate) rate_per_sec: f64,
    /// Readings published in the phase.
    pub(crate) readings: u64,
    /// One reading in this many raises an alert.
    pub(crate) alert_every: u64,
}

impl Phase {
    /// A phase of `duration` at `rate_per_sec`.
    pub(crate) fn new(
        name: &'static str,
        rate_per_sec: f64,
        duration: Duration,
        alert_every: u64,
    ) -> Self {
        Phase {
            name,
            rate_per_sec,
            readings: (rate_per_sec * duration.as_secs_f64()).round().max(1.0) as u64,
            alert_every: alert_every.max(2),
        }
    }

    /// How long the publisher takes for the phase's readings.
    pub(crate) fn duration(&self) -> Duration {
        Duration::from_secs_f64(self.readings as f64 / self.rate_per_sec)
    }

    /// Sensors in the fleet: one more than a multiple of the script's
    /// length (see the module docs), and more than one script's worth, so
    /// the readings of one sensor are not all that the rate is made of.
    pub(crate) fn sensors(&self) -> u64 {
        2 * self.alert_every + 1
    }

    /// The values every sensor plays in a loop.
    pub(crate) fn script(&self) -> Vec<f64> {
        let mut script = vec![CALM; self.alert_every as usize - 1];
        script.push(ALERTING);
        script
    }

    /// The sensors' id prefix: alert ids of this phase start with it.
    pub(crate) fn id_prefix(&self) -> String {
        format!("{}-", self.name)
    }

    /// Alerts the phase raises when no reading is lost.
    pub(crate) fn expected_alerts(&self) -> u64 {
        self.readings / self.alert_every
    }

    /// Alerts per second the phase offers.
    pub(crate) fn alert_rate(&self) -> f64 {
        self.rate_per_sec / self.alert_every as f64
    }

    /// sensor-publisher's configuration file for the phase.
    pub(crate) fn publisher_config(&self, mode: &str, owners: &[&str]) -> String {
        let script: Vec<String> = self.script().iter().map(|v| format!("{v:?}")).collect();
        let owners: Vec<String> = owners.iter().map(|owner| format!("\"{owner}\"")).collect();
        format!(
            "mode = \"{mode}\"\nrate_per_sec = {rate:?}\ncount = {count}\n\n\
             [fleet]\nsensors = {sensors}\nkinds = [\"temperature\"]\nowners = [{owners}]\n\
             id_prefix = \"{prefix}\"\nspike_probability = 0.0\nscript = [{script}]\n",
            rate = self.rate_per_sec,
            count = self.readings,
            sensors = self.sensors(),
            owners = owners.join(", "),
            prefix = self.id_prefix(),
            script = script.join(", "),
        )
    }
}

#[cfg(test)]
mod tests {
    use common::config::ConfigSource;
    use sensor_publisher::{Config, ENV_KEYS, fleet::Fleet};

    use super::*;

    /// The phase's file as sensor-publisher loads it, and its fleet.
    fn loaded(phase: &Phase) -> Config {
        let file = std::env::temp_dir().join(format!("bench-e2e-phase-{}.toml", testkit::unique()));
        std::fs::write(&file, phase.publisher_config("core", &["u-1", "u-2"])).unwrap();
        let config = ConfigSource::isolated(Some(file.clone()), ENV_KEYS, &[]).load::<Config>();
        std::fs::remove_file(file).unwrap();
        config.unwrap()
    }

    #[test]
    fn alerting_readings_are_evenly_spaced_and_counted_in_advance() {
        for alert_every in [2, 3, 10] {
            let phase = Phase::new("low", 50.0, Duration::from_secs(3), alert_every);
            let config = loaded(&phase);
            assert_eq!(config.count, phase.readings);
            assert_eq!(config.rate_per_sec, 50.0);
            let mut fleet = Fleet::new(&config.fleet);
            let alerting: Vec<u64> = (0..phase.readings)
                .filter(|_| fleet.next_reading().1.value == ALERTING)
                .collect();
            let evenly: Vec<u64> = (0..phase.readings)
                .filter(|k| k % alert_every == alert_every - 1)
                .collect();
            assert_eq!(alerting, evenly, "alert_every {alert_every}");
            assert_eq!(alerting.len() as u64, phase.expected_alerts());
        }
    }

    #[test]
    fn every_alerting_reading_follows_a_calm_one_of_its_sensor() {
        let phase = Phase::new("high", 2000.0, Duration::from_millis(500), 10);
        let mut fleet = Fleet::new(&loaded(&phase).fleet);
        let mut last = std::collections::HashMap::new();
        for _ in 0..phase.readings {
            let reading = fleet.next_reading().1;
            assert!(
                reading.sensor_id.starts_with("high-"),
                "{}",
                reading.sensor_id
            );
            assert!(reading.owner_id.is_some());
            if reading.value == ALERTING {
                // A first reading, or one after a calm value: the level rises.
                let before = last.get(&reading.sensor_id).copied().unwrap_or(CALM);
                assert_eq!(before, CALM);
            }
            last.insert(reading.sensor_id.clone(), reading.value);
        }
    }

    #[test]
    fn a_phase_knows_its_size_and_rates() {
        let phase = Phase::new("low", 50.0, Duration::from_secs(40), 10);
        assert_eq!(phase.readings, 2000);
        assert_eq!(phase.expected_alerts(), 200);
        assert_eq!(phase.alert_rate(), 5.0);
        assert_eq!(phase.duration(), Duration::from_secs(40));
        assert_eq!(phase.sensors(), 21);
    }
}
