//! A scale curve: throughput at each number of instances beside the ideal
//! line, and the figure for its largest size.
//!
//! The ideal line is the smallest size's throughput scaled in proportion
//! (with sizes 1, 2, 4, 8: N × the one-instance figure); efficiency is
//! measured over ideal. Each size may be measured in several rounds: the
//! table shows each size's median round, the `RESULT` line the median
//! throughput at the largest size against the median ideal, and its
//! `SPREAD` line the efficiency of each round (that round's largest size
//! against that round's smallest).

use bench::report::{Figure, median, number, table};

/// One measurement of one size in one round.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Point {
    /// Throughput, in the curve's unit.
    pub(crate) rate: f64,
    /// What else the table shows for it (offered rate, drops, ...).
    pub(crate) note: String,
}

/// Throughput by size, over rounds.
#[derive(Debug, Clone)]
pub(crate) struct Curve {
    /// The scenario name of the `RESULT` line, e.g. `scale.workqueue.io`.
    name: String,
    /// Unit of the throughput, e.g. `tasks/s`.
    unit: String,
    /// The sizes, ascending, each with its points (one per round).
    sizes: Vec<(usize, Vec<Point>)>,
}

impl Curve {
    /// An empty curve over `sizes` (sorted, duplicates dropped).
    pub(crate) fn new(name: impl Into<String>, unit: impl Into<String>, sizes: &[usize]) -> Self {
        let mut sizes = sizes.to_vec();
        sizes.sort_unstable();
        sizes.dedup();
        Curve {
            name: name.into(),
            unit: unit.into(),
            sizes: sizes.into_iter().map(|size| (size, Vec::new())).collect(),
        }
    }

    /// The sizes, ascending.
    pub(crate) fn sizes(&self) -> Vec<usize> {
        self.sizes.iter().map(|(size, _)| *size).collect()
    }

    /// Records one round's point for `size`.
    pub(crate) fn add(&mut self, size: usize, point: Point) {
        if let Some((_, points)) = self.sizes.iter_mut().find(|(s, _)| *s == size) {
            points.push(point);
        }
    }

    /// The median throughput of `size` (0 without points).
    fn median_rate(points: &[Point]) -> f64 {
        median(points.iter().map(|point| point.rate))
    }

    /// The smallest size and its median throughput: the ideal line's base.
    fn base(&self) -> Option<(usize, f64)> {
        let (size, points) = self.sizes.first()?;
        Some((*size, Self::median_rate(points)))
    }

    /// The ideal throughput at `size`: the base scaled in proportion.
    pub(crate) fn ideal(&self, size: usize) -> f64 {
        match self.base() {
            Some((base_size, base_rate)) if base_size > 0 => {
                base_rate * size as f64 / base_size as f64
            }
            _ => 0.0,
        }
    }

    /// The table: size, throughput, ideal, efficiency and the note of the
    /// median round.
    pub(crate) fn table(&self, size_header: &str, note_header: &str) -> String {
        let mut rows = vec![vec![
            size_header.to_string(),
            self.unit.clone(),
            "ideal".into(),
            "efficiency".into(),
            note_header.to_string(),
        ]];
        for (size, points) in &self.sizes {
            if points.is_empty() {
                continue;
            }
            let rate = Self::median_rate(points);
            let ideal = self.ideal(*size);
            let efficiency = if ideal > 0.0 { rate / ideal } else { 0.0 };
            let note = points
                .iter()
                .find(|point| point.rate == rate)
                .map(|point| point.note.clone())
                .unwrap_or_default();
            rows.push(vec![
                size.to_string(),
                number(rate.round()),
                number(ideal.round()),
                format!("{efficiency:.2}"),
                note,
            ]);
        }
        table(&rows)
    }

    /// The figure at the largest size: its throughput against the ideal,
    /// round by round.
    pub(crate) fn figure(&self) -> Figure {
        let (Some((base_size, base_points)), Some((top_size, top_points))) =
            (self.sizes.first(), self.sizes.last())
        else {
            return Figure::new(self.name.clone(), 0.0, self.unit.clone(), 0.0);
        };
        let scale = *top_size as f64 / (*base_size).max(1) as f64;
        let ours: Vec<f64> = top_points.iter().map(|point| point.rate).collect();
        let ideal: Vec<f64> = base_points
            .iter()
            .map(|point| point.rate * scale)
            .take(ours.len())
            .collect();
        Figure::from_rounds(self.name.clone(), self.unit.clone(), &ours, &ideal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(rate: f64) -> Point {
        Point {
            rate,
            note: format!("at {rate}"),
        }
    }

    #[test]
    fn the_ideal_line_scales_the_smallest_size_and_efficiency_is_against_it() {
        let mut curve = Curve::new("scale.x", "tasks/s", &[4, 1, 2, 2]);
        assert_eq!(curve.sizes(), [1, 2, 4]);
        curve.add(1, point(100.0));
        curve.add(2, point(190.0));
        curve.add(4, point(200.0));
        assert_eq!(curve.ideal(4), 400.0);

        let figure = curve.figure();
        assert_eq!(
            figure.report_lines(),
            "SPREAD scenario=scale.x rounds=1 min=0.500 max=0.500\n\
             RESULT scenario=scale.x value=200 unit=tasks/s baseline=400 ratio=0.500"
        );
        let table = curve.table("workers", "note");
        let rows: Vec<&str> = table.lines().collect();
        assert!(rows[0].starts_with("workers  tasks/s  ideal  efficiency  note"));
        assert_eq!(rows[3], "2        190      200    0.95        at 190");
        assert_eq!(rows[4], "4        200      400    0.50        at 200");
    }

    #[test]
    fn rounds_give_medians_and_per_round_efficiencies() {
        let mut curve = Curve::new("scale.y", "msg/s", &[1, 8]);
        for (one, eight) in [(100.0, 400.0), (110.0, 880.0), (90.0, 540.0)] {
            curve.add(1, point(one));
            curve.add(8, point(eight));
        }
        let figure = curve.figure();
        // Medians: 540 at 8 against 8 × 100.
        assert_eq!(figure.value, 540.0);
        assert_eq!(figure.baseline, 800.0);
        // Per round: 400/800, 880/880, 540/720.
        assert_eq!(figure.spread(), Some((0.5, 1.0)));
    }

    #[test]
    fn a_curve_without_points_reports_zero() {
        let curve = Curve::new("scale.z", "u", &[1, 2]);
        assert_eq!(curve.figure().ratio(), 0.0);
        assert_eq!(curve.table("n", "note").lines().count(), 2);
    }
}
