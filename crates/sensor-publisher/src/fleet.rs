//! The simulated fleet: sensors whose values follow a mean-reverting random
//! walk with occasional spikes, so that alerts happen without anyone forcing
//! them — or, with a `script`, replay given values, so that the crossings
//! are known in advance (the chaos checker's fleet).
//!
//! Each sensor has a kind (temperature, humidity, ...), an owner taken
//! round-robin from the configured owners, and its own `seq` counter: the
//! publisher's sequence of that sensor's readings, so a subscriber that sees
//! `seq` jump on a sensor knows a reading was lost on the way.

use rand::{Rng, SeedableRng, rngs::StdRng};
use serde::{Deserialize, Serialize};

use common::{clock::now_millis, proto::sensor::v1::SensorReading};

/// What the fleet looks like.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FleetConfig {
    /// Number of sensors.
    pub sensors: usize,
    /// Kinds, assigned round-robin: sensor `i` measures `kinds[i % len]`.
    pub kinds: Vec<String>,
    /// Owner user ids, assigned round-robin over sensors (contracts: the
    /// alert and its `notify` task name this owner).
    pub owners: Vec<String>,
    /// Site written into every reading, if any.
    pub site: Option<String>,
    /// Prepended to every sensor id, so two fleets do not share ids.
    pub id_prefix: String,
    /// Chance that a reading is a spike far from the walk (0 to 1).
    pub spike_probability: f64,
    /// Seed of the random walk, for a reproducible run; random when absent.
    pub seed: Option<u64>,
    /// Values every sensor plays in a loop instead of the random walk (sensor
    /// `i` starts `i` values in, so crossings spread over time); empty: walk.
    pub script: Vec<f64>,
}

impl Default for FleetConfig {
    fn default() -> Self {
        FleetConfig {
            sensors: 10,
            kinds: vec!["temperature".into(), "humidity".into()],
            owners: vec!["u-1001".into(), "u-1002".into()],
            site: None,
            id_prefix: String::new(),
            spike_probability: 0.01,
            seed: None,
            script: Vec::new(),
        }
    }
}

/// How values of one kind behave.
#[derive(Debug, Clone, Copy, PartialEq)]
struct KindProfile {
    /// Short name used in sensor ids (`temp-001`).
    short: &'static str,
    unit: &'static str,
    /// The value the walk is pulled back to.
    baseline: f64,
    /// Largest step of the walk per reading.
    step: f64,
    /// Physical bounds the walk stays in.
    min: f64,
    max: f64,
    /// Largest distance of a spike from the walk.
    spike: f64,
}

fn profile(kind: &str) -> KindProfile {
    match kind {
        "temperature" => KindProfile {
            short: "temp",
            unit: "celsius",
            baseline: 25.0,
            step: 0.4,
            min: -30.0,
            max: 70.0,
            // 25 + 8..18 lands between the default warning (30) and beyond
            // the default critical (40) threshold.
            spike: 18.0,
        },
        "humidity" => KindProfile {
            short: "hum",
            unit: "percent",
            baseline: 55.0,
            step: 1.0,
            min: 0.0,
            max: 100.0,
            spike: 42.0,
        },
        "pressure" => KindProfile {
            short: "pres",
            unit: "hPa",
            baseline: 1013.0,
            step: 0.6,
            min: 900.0,
            max: 1100.0,
            spike: 40.0,
        },
        "co2" => KindProfile {
            short: "co2",
            unit: "ppm",
            baseline: 600.0,
            step: 15.0,
            min: 350.0,
            max: 5000.0,
            spike: 1800.0,
        },
        _ => KindProfile {
            short: "",
            unit: "",
            baseline: 50.0,
            step: 1.0,
            min: 0.0,
            max: 100.0,
            spike: 40.0,
        },
    }
}

/// One simulated sensor.
#[derive(Debug, Clone)]
pub struct Sensor {
    /// Stable id, also the last token of its subject.
    pub id: String,
    /// What it measures.
    pub kind: String,
    /// Owner user id.
    pub owner_id: Option<String>,
    profile: KindProfile,
    value: f64,
    /// Its latest reading, updated in place: the strings are built once per
    /// sensor, not once per reading.
    reading: SensorReading,
}

/// The whole fleet and its random source.
#[derive(Debug)]
pub struct Fleet {
    sensors: Vec<Sensor>,
    spike_probability: f64,
    script: Vec<f64>,
    rng: StdRng,
    next: usize,
}

impl Fleet {
    /// Builds the fleet described by `config` (validated by the caller).
    pub fn new(config: &FleetConfig) -> Self {
        let mut rng = match config.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_rng(&mut rand::rng()),
        };
        let sensors = (0..config.sensors)
            .map(|index| {
                let kind = config.kinds[index % config.kinds.len()].clone();
                let profile = profile(&kind);
                let short = if profile.short.is_empty() {
                    kind.as_str()
                } else {
                    profile.short
                };
                // Sensors start near the baseline, not all at the same value.
                let value = profile.baseline + (rng.random::<f64>() - 0.5) * profile.step * 4.0;
                let id = format!("{}{short}-{:03}", config.id_prefix, index + 1);
                let owner_id = (!config.owners.is_empty())
                    .then(|| config.owners[index % config.owners.len()].clone());
                let reading = SensorReading {
                    sensor_id: id.clone(),
                    kind: kind.clone(),
                    value,
                    unit: profile.unit.to_string(),
                    timestamp: 0,
                    seq: 0,
                    site: config.site.clone(),
                    owner_id: owner_id.clone(),
                };
                Sensor {
                    id,
                    owner_id,
                    kind,
                    profile,
                    value,
                    reading,
                }
            })
            .collect();
        Fleet {
            sensors,
            spike_probability: config.spike_probability,
            script: config.script.clone(),
            rng,
            next: 0,
        }
    }

    /// The sensors, in publishing order.
    pub fn sensors(&self) -> &[Sensor] {
        &self.sensors
    }

    /// The next reading and the index of its sensor, sensors taking turns.
    pub fn next_reading(&mut self) -> (usize, &SensorReading) {
        let index = self.next;
        self.next = (self.next + 1) % self.sensors.len();
        let spike_probability = self.spike_probability;
        let rng = &mut self.rng;
        let sensor = &mut self.sensors[index];
        let profile = sensor.profile;
        if !self.script.is_empty() {
            let reading = &mut sensor.reading;
            let at = (index + reading.seq as usize) % self.script.len();
            reading.seq += 1;
            reading.value = self.script[at];
            reading.timestamp = now_millis();
            return (index, reading);
        }

        // Mean-reverting walk: a random step plus a pull back to the baseline,
        // so values wander but do not drift away for good.
        let step = (rng.random::<f64>() * 2.0 - 1.0) * profile.step;
        let pull = (profile.baseline - sensor.value) * 0.05;
        sensor.value = (sensor.value + step + pull).clamp(profile.min, profile.max);

        let value = if rng.random::<f64>() < spike_probability {
            // A spike is one outlier; the walk carries on from where it was.
            let distance = profile.spike * (0.45 + 0.55 * rng.random::<f64>());
            (sensor.value + distance).clamp(profile.min, profile.max)
        } else {
            sensor.value
        };
        let reading = &mut sensor.reading;
        reading.seq += 1;
        reading.value = (value * 100.0).round() / 100.0;
        reading.timestamp = now_millis();
        (index, reading)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn config(sensors: usize) -> FleetConfig {
        FleetConfig {
            sensors,
            seed: Some(7),
            ..FleetConfig::default()
        }
    }

    #[test]
    fn sensors_take_turns_with_kinds_and_owners_round_robin() {
        let mut fleet = Fleet::new(&config(4));
        let ids: Vec<_> = fleet.sensors().iter().map(|s| s.id.clone()).collect();
        assert_eq!(ids, ["temp-001", "hum-002", "temp-003", "hum-004"]);
        let owners: Vec<_> = fleet
            .sensors()
            .iter()
            .map(|s| s.owner_id.clone().unwrap())
            .collect();
        assert_eq!(owners, ["u-1001", "u-1002", "u-1001", "u-1002"]);
        let first: Vec<_> = (0..8).map(|_| fleet.next_reading().1.clone()).collect();
        assert_eq!(first[0].sensor_id, "temp-001");
        assert_eq!(first[5].sensor_id, "hum-002");
        assert_eq!(first[1].unit, "percent");
    }

    #[test]
    fn a_scripted_fleet_replays_its_values_offset_per_sensor() {
        let mut fleet = Fleet::new(&FleetConfig {
            sensors: 2,
            kinds: vec!["temperature".into()],
            script: vec![25.0, 31.0, 41.0],
            ..FleetConfig::default()
        });
        let values: Vec<(String, u64, f64)> = (0..6)
            .map(|_| {
                let reading = fleet.next_reading().1;
                (reading.sensor_id.clone(), reading.seq, reading.value)
            })
            .collect();
        assert_eq!(
            values,
            [
                ("temp-001".to_string(), 1, 25.0),
                ("temp-002".to_string(), 1, 31.0),
                ("temp-001".to_string(), 2, 31.0),
                ("temp-002".to_string(), 2, 41.0),
                ("temp-001".to_string(), 3, 41.0),
                ("temp-002".to_string(), 3, 25.0),
            ]
        );
    }

    #[test]
    fn each_sensor_counts_its_own_readings_without_gaps() {
        let mut fleet = Fleet::new(&config(3));
        let mut last: HashMap<String, u64> = HashMap::new();
        for _ in 0..300 {
            let (_, reading) = fleet.next_reading();
            let previous = last.insert(reading.sensor_id.clone(), reading.seq);
            assert_eq!(reading.seq, previous.unwrap_or(0) + 1);
        }
        assert!(last.values().all(|seq| *seq == 100));
    }

    #[test]
    fn values_stay_in_bounds_and_spikes_cross_the_default_thresholds() {
        let mut fleet = Fleet::new(&FleetConfig {
            sensors: 1,
            kinds: vec!["temperature".into()],
            spike_probability: 0.05,
            seed: Some(42),
            ..FleetConfig::default()
        });
        let values: Vec<f64> = (0..5000).map(|_| fleet.next_reading().1.value).collect();
        assert!(values.iter().all(|v| (-30.0..=70.0).contains(v)));
        assert!(values.iter().any(|v| *v > 30.0), "some warnings");
        assert!(values.iter().any(|v| *v > 40.0), "some criticals");
        let calm = values.iter().filter(|v| **v < 30.0).count();
        assert!(calm > 4000, "mostly calm: {calm}");
    }

    #[test]
    fn an_unknown_kind_gets_a_generic_profile() {
        let mut fleet = Fleet::new(&FleetConfig {
            sensors: 1,
            kinds: vec!["vibration".into()],
            owners: vec![],
            id_prefix: "plant-a-".into(),
            ..config(1)
        });
        let (index, reading) = fleet.next_reading();
        assert_eq!(index, 0);
        assert_eq!(reading.sensor_id, "plant-a-vibration-001");
        assert_eq!(reading.owner_id, None);
    }
}
