//! The report line every scenario prints last, and a small table printer.
//!
//! `RESULT scenario=<name> value=<x> unit=<u> baseline=<y> ratio=<x/y>`: one
//! line per figure, machine-readable, so scripts/bench.sh and CI logs can be
//! grepped for the numbers the README quotes.
//!
//! A figure measured over several rounds (ours and raw alternating, so a
//! slow minute of a shared machine hits both) also keeps the spread of the
//! per-round ratios: `SPREAD scenario=<name> rounds=<n> min=<r> max=<r>`,
//! printed just before its `RESULT` line. A median ratio of 0.95 with a
//! spread of 0.93–0.97 is a result; with 0.70–1.20 it is noise.

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
    /// The per-round ratios, when measured over rounds.
    pub round_ratios: Vec<f64>,
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
            round_ratios: Vec::new(),
        }
    }

    /// A figure from rounds measured in pairs (`ours[i]` beside `raw[i]`):
    /// the median of each side, and the ratio of every pair for the spread.
    pub fn from_rounds(
        scenario: impl Into<String>,
        unit: impl Into<String>,
        ours: &[f64],
        raw: &[f64],
    ) -> Self {
        let mut figure = Figure::new(
            scenario,
            median(ours.iter().copied()),
            unit,
            median(raw.iter().copied()),
        );
        figure.round_ratios = ours
            .iter()
            .zip(raw)
            .filter(|(_, raw)| **raw != 0.0)
            .map(|(ours, raw)| ours / raw)
            .collect();
        figure
    }

    /// The lowest and highest per-round ratio, when there were rounds.
    pub fn spread(&self) -> Option<(f64, f64)> {
        let min = self.round_ratios.iter().copied().reduce(f64::min)?;
        let max = self.round_ratios.iter().copied().reduce(f64::max)?;
        Some((min, max))
    }

    /// The `SPREAD ...` line, when there were rounds.
    pub fn spread_line(&self) -> Option<String> {
        let (min, max) = self.spread()?;
        Some(format!(
            "SPREAD scenario={} rounds={} min={min:.3} max={max:.3}",
            self.scenario,
            self.round_ratios.len()
        ))
    }

    /// The `SPREAD` line (if any) and then the `RESULT` line.
    pub fn report_lines(&self) -> String {
        match self.spread_line() {
            Some(spread) => format!("{spread}\n{}", self.result_line()),
            None => self.result_line(),
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
    fn rounds_give_medians_and_the_spread_of_their_ratios() {
        let figure =
            Figure::from_rounds("x", "msg/s", &[90.0, 100.0, 80.0], &[100.0, 100.0, 100.0]);
        assert_eq!(figure.value, 90.0);
        assert_eq!(figure.baseline, 100.0);
        assert_eq!(figure.spread(), Some((0.8, 1.0)));
        assert_eq!(
            figure.report_lines(),
            "SPREAD scenario=x rounds=3 min=0.800 max=1.000\n\
             RESULT scenario=x value=90 unit=msg/s baseline=100 ratio=0.900"
        );
        assert_eq!(Figure::new("y", 1.0, "u", 2.0).spread_line(), None);
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
