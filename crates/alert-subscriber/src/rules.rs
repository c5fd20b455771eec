//! Alert rules per kind, and the per-sensor state that gives them hysteresis.
//!
//! A rule has a warning and a critical threshold and a direction (`above`:
//! a value over the threshold is bad; `below`: under it). A sensor's level
//! rises as soon as a value crosses a threshold, and falls back only when a
//! value has come `hysteresis` past that threshold the other way, so a sensor
//! hovering at the line raises one alert, not one per reading.
//!
//! An alert is raised when the level rises (normal → warning, normal or
//! warning → critical). Falling back raises nothing; it is logged.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use common::{config::ConfigError, proto::sensor::v1::Severity};

/// Which side of a threshold is bad.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Values above the threshold raise the alert (heat, humidity).
    #[default]
    Above,
    /// Values below the threshold raise the alert (cold, low pressure).
    Below,
}

/// The thresholds of one kind (`[rules.temperature]` in the config file).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Crossing this raises a warning.
    pub warning: f64,
    /// Crossing this raises a critical alert.
    pub critical: f64,
    /// Which side of the thresholds is bad.
    #[serde(default)]
    pub direction: Direction,
    /// How far back past a threshold a value must come to clear it.
    #[serde(default)]
    pub hysteresis: f64,
}

impl Rule {
    /// Checks the rule of `kind`; the error names `rules.<kind>.<field>`.
    pub fn validate(&self, kind: &str) -> Result<(), ConfigError> {
        let key = |field: &str| format!("rules.{kind}.{field}");
        for (field, value) in [
            ("warning", self.warning),
            ("critical", self.critical),
            ("hysteresis", self.hysteresis),
        ] {
            if !value.is_finite() {
                return Err(ConfigError::invalid(
                    key(field),
                    value,
                    "must be a finite number",
                ));
            }
        }
        if self.hysteresis < 0.0 {
            return Err(ConfigError::invalid(
                key("hysteresis"),
                self.hysteresis,
                "must not be negative",
            ));
        }
        let ordered = match self.direction {
            Direction::Above => self.critical > self.warning,
            Direction::Below => self.critical < self.warning,
        };
        if !ordered {
            return Err(ConfigError::invalid(
                key("critical"),
                self.critical,
                match self.direction {
                    Direction::Above => "must be above warning when direction is \"above\"",
                    Direction::Below => "must be below warning when direction is \"below\"",
                },
            ));
        }
        Ok(())
    }

    fn exceeds(&self, value: f64, threshold: f64) -> bool {
        match self.direction {
            Direction::Above => value > threshold,
            Direction::Below => value < threshold,
        }
    }

    fn cleared(&self, value: f64, threshold: f64) -> bool {
        match self.direction {
            Direction::Above => value <= threshold - self.hysteresis,
            Direction::Below => value >= threshold + self.hysteresis,
        }
    }

    /// The level a sensor at `current` moves to on `value`.
    fn next_level(&self, current: Level, value: f64) -> Level {
        let critical = self.exceeds(value, self.critical)
            || (current == Level::Critical && !self.cleared(value, self.critical));
        if critical {
            return Level::Critical;
        }
        let warning = self.exceeds(value, self.warning)
            || (current >= Level::Warning && !self.cleared(value, self.warning));
        if warning {
            Level::Warning
        } else {
            Level::Normal
        }
    }
}

/// The rules of every kind, by kind.
pub type Rules = BTreeMap<String, Rule>;

/// The defaults: temperature warning above 30 °C, critical above 40 °C;
/// humidity warning above 80 %, critical above 95 %.
pub fn default_rules() -> Rules {
    Rules::from([
        (
            "temperature".to_string(),
            Rule {
                warning: 30.0,
                critical: 40.0,
                direction: Direction::Above,
                hysteresis: 1.0,
            },
        ),
        (
            "humidity".to_string(),
            Rule {
                warning: 80.0,
                critical: 95.0,
                direction: Direction::Above,
                hysteresis: 2.0,
            },
        ),
    ])
}

/// Checks every rule.
pub fn validate_rules(rules: &Rules) -> Result<(), ConfigError> {
    rules
        .iter()
        .try_for_each(|(kind, rule)| rule.validate(kind))
}

/// How bad a sensor currently is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Inside the thresholds.
    #[default]
    Normal,
    /// Past the warning threshold.
    Warning,
    /// Past the critical threshold.
    Critical,
}

/// What evaluating one reading decided.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Verdict {
    /// No rule for the kind: nothing to do.
    NoRule,
    /// The reading's seq is not newer than one already evaluated for the
    /// sensor: a redelivery, skipped.
    Duplicate,
    /// The level did not rise.
    Quiet {
        /// The level before the reading.
        from: Level,
        /// The level after it.
        to: Level,
    },
    /// The level rose: raise an alert.
    Raise {
        /// `Warning` or `Critical`.
        severity: Severity,
        /// The threshold that was crossed.
        threshold: f64,
    },
}

/// Where one sensor stands: what the next reading is evaluated against, and
/// what a new owner of the sensor's partition continues from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SensorState {
    /// The level its readings so far put it at.
    pub level: Level,
    /// The highest `seq` evaluated (0: none numbered yet).
    pub last_seq: u64,
}

/// The states of every sensor one evaluator has seen, by sensor id.
pub type SensorStates = HashMap<String, SensorState>;

/// The per-sensor levels of one evaluator (an instance in core mode, a lane
/// in partitioned mode).
#[derive(Debug, Default, Clone)]
pub struct AlertEngine {
    sensors: SensorStates,
}

impl AlertEngine {
    /// An engine continuing from `sensors` (a checkpoint).
    pub fn from_states(sensors: SensorStates) -> Self {
        AlertEngine { sensors }
    }

    /// Every sensor's state, for a checkpoint.
    pub fn states(&self) -> &SensorStates {
        &self.sensors
    }

    /// Evaluates a reading of `sensor_id` against `rules`.
    pub fn evaluate(
        &mut self,
        rules: &Rules,
        sensor_id: &str,
        kind: &str,
        value: f64,
        seq: u64,
    ) -> Verdict {
        let Some(rule) = rules.get(kind) else {
            return Verdict::NoRule;
        };
        let state = match self.sensors.get_mut(sensor_id) {
            Some(state) => state,
            None => self.sensors.entry(sensor_id.to_string()).or_default(),
        };
        // seq 0: the sender does not number readings; seq 1 after a higher
        // one: the publisher restarted. Anything else not newer was seen.
        if seq != 0 && seq <= state.last_seq && !(seq == 1 && state.last_seq > 1) {
            return Verdict::Duplicate;
        }
        if seq != 0 {
            state.last_seq = seq;
        }
        let from = state.level;
        let to = rule.next_level(from, value);
        state.level = to;
        if to > from {
            let (severity, threshold) = match to {
                Level::Critical => (Severity::Critical, rule.critical),
                _ => (Severity::Warning, rule.warning),
            };
            Verdict::Raise {
                severity,
                threshold,
            }
        } else {
            Verdict::Quiet { from, to }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(engine: &mut AlertEngine, rules: &Rules, values: &[f64]) -> Vec<Option<Severity>> {
        values
            .iter()
            .enumerate()
            .map(|(i, value)| {
                match engine.evaluate(rules, "t-1", "temperature", *value, i as u64 + 1) {
                    Verdict::Raise { severity, .. } => Some(severity),
                    _ => None,
                }
            })
            .collect()
    }

    #[test]
    fn crossing_raises_once_and_hovering_at_the_line_does_not_flap() {
        let rules = default_rules();
        let mut engine = AlertEngine::default();
        let w = Some(Severity::Warning);
        let c = Some(Severity::Critical);
        assert_eq!(
            run(
                &mut engine,
                &rules,
                &[
                    25.0, 30.5, 29.5, 30.2, 29.8, 30.4, 28.9, 30.1, 41.0, 39.5, 40.5, 38.0, 45.0
                ]
            ),
            // 30.5 warns; hovering within 1.0 of 30 stays warned; 28.9
            // clears; 30.1 warns again; 41 is critical; 39.5 and 40.5 hover;
            // 38.0 clears critical (still warning); 45 is critical again.
            [
                None, w, None, None, None, None, None, w, c, None, None, None, c
            ]
        );
    }

    #[test]
    fn a_below_rule_alerts_on_low_values() {
        let rules = Rules::from([(
            "temperature".to_string(),
            Rule {
                warning: 5.0,
                critical: 0.0,
                direction: Direction::Below,
                hysteresis: 0.5,
            },
        )]);
        let mut engine = AlertEngine::default();
        let got = run(&mut engine, &rules, &[10.0, 4.9, 5.2, 5.6, -1.0]);
        assert_eq!(
            got,
            [
                None,
                Some(Severity::Warning),
                None,
                None,
                Some(Severity::Critical)
            ]
        );
    }

    #[test]
    fn redelivered_readings_are_recognised_by_seq() {
        let rules = default_rules();
        let mut engine = AlertEngine::default();
        let first = engine.evaluate(&rules, "t-1", "temperature", 45.0, 7);
        assert!(
            matches!(first, Verdict::Raise { severity: Severity::Critical, threshold } if threshold == 40.0)
        );
        assert_eq!(
            engine.evaluate(&rules, "t-1", "temperature", 45.0, 7),
            Verdict::Duplicate
        );
        assert_eq!(
            engine.evaluate(&rules, "t-1", "temperature", 45.0, 3),
            Verdict::Duplicate
        );
        // A restarted publisher starts again at 1: evaluated.
        assert!(matches!(
            engine.evaluate(&rules, "t-1", "temperature", 20.0, 1),
            Verdict::Quiet { .. }
        ));
        // Unnumbered readings are always evaluated.
        assert!(matches!(
            engine.evaluate(&rules, "t-2", "temperature", 20.0, 0),
            Verdict::Quiet { .. }
        ));
        assert_eq!(
            engine.evaluate(&rules, "t-3", "pressure", 2000.0, 1),
            Verdict::NoRule
        );
    }

    #[test]
    fn bad_rules_name_their_key() {
        let mut rules = default_rules();
        validate_rules(&rules).unwrap();
        rules.get_mut("humidity").unwrap().critical = 70.0;
        let error = validate_rules(&rules).unwrap_err().to_string();
        assert!(error.contains("rules.humidity.critical"), "{error}");
        rules.insert(
            "co2".into(),
            Rule {
                warning: 1000.0,
                critical: 2000.0,
                direction: Direction::Above,
                hysteresis: -1.0,
            },
        );
        let error = validate_rules(&rules).unwrap_err().to_string();
        assert!(error.contains("rules.co2.hysteresis"), "{error}");
    }
}
