//! The report line every scenario prints last, and a small table printer.
//!
//! `RESULT scenario=<name> value=<x> unit=<u> baseline=<y> ratio=<x/y>`: one
//! line per figure, machine-readable, so scripts/bench.sh and CI logs can be
//! grepped for the numbers the README quotes.

use std::fmt::Write as _;

/// One measured figure beside the raw-client baseline measured in the same run.
#[derive(Debug, Clone, PartialEq)]
pub struct Figure {
    /// Scenario name, e.g. `codec` or `pubsub.jetstream`.
    pub scenario: String,
    /// Our measurement.
    pub value: f64,
    /// Unit of both numbers, e.g. `ns`, `msg/s`.
    pub unit: String,
    /// The raw client's measurement.
    pub baseline: f64,
}

impl Figure {
    /// A figure for `scenario`.
    pub fn new(
        scenario: impl Into<String>,
        value: f64,
        unit: impl Into<String>,
        baseline: f64,
    ) -> Self {
        Figure {
            scenario: scenario.into(),
            value,
            unit: unit.into(),
            baseline,
        }
    }

    /// `value / baseline`; 0 when the baseline is 0.
    pub fn ratio(&self) -> f64 {
        if self.baseline == 0.0 {
            0.0
        } else {
            self.value / self.baseline
        }
    }

    /// The `RESULT ...` line.
    pub fn result_line(&self) -> String {
        format!(
            "RESULT scenario={} value={} unit={} baseline={} ratio={:.3}",
            self.scenario,
            number(self.value),
            self.unit,
            number(self.baseline),
            self.ratio()
        )
    }
}

/// The middle value (the upper one of the two middles for an even count);
/// the default (0) when there is none. Rounds are summarised by their median
/// everywhere: one slow round on a busy machine does not move it.
pub fn median<T: Copy + PartialOrd + Default>(values: impl IntoIterator<Item = T>) -> T {
    let mut values: Vec<T> = values.into_iter().collect();
    values.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    values.get(values.len() / 2).copied().unwrap_or_default()
}

/// Formats a number with at most 3 decimals and no trailing zeros.
pub fn number(value: f64) -> String {
    let text = format!("{value:.3}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    if text.is_empty() {
        "0".to_string()
    } else {
        text.to_string()
    }
}

/// Renders rows as a left-aligned text table; the first row is the header.
pub fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|row| row.get(c))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for (i, row) in rows.iter().enumerate() {
        let line: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(c, cell)| format!("{cell:<width$}", width = widths[c]))
            .collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
        if i == 0 {
            let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
            let _ = writeln!(out, "{}", rule.join("  "));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_result_line_has_the_agreed_shape() {
        let line = Figure::new("codec", 50.0, "ns", 200.0).result_line();
        assert_eq!(
            line,
            "RESULT scenario=codec value=50 unit=ns baseline=200 ratio=0.250"
        );
    }

    #[test]
    fn a_zero_baseline_does_not_divide_by_zero() {
        assert_eq!(Figure::new("x", 1.0, "u", 0.0).ratio(), 0.0);
    }

    #[test]
    fn tables_align_columns() {
        let text = table(&[
            vec!["a".into(), "bb".into()],
            vec!["ccc".into(), "d".into()],
        ]);
        assert_eq!(text, "a    bb\n---  --\nccc  d\n");
    }
}
