//! Is a process's memory still growing? The verdict of the leak check
//! (tests/leak.rs) on a series of resident-memory samples taken under a
//! steady load, after a warm-up.
//!
//! A healthy service's RSS climbs while its pools, caches and allocator
//! arenas fill, then holds a plateau with noise: the allocator keeps freed
//! pages and a burst of work leaves a step that stays. A leak keeps
//! climbing at the pace of the load. Each sign alone is easily fooled, so
//! the series counts as growing only when all three hold:
//!
//! 1. it climbs through the **first half** of the window: the least-squares
//!    slope there is over [`Limits::max_slope_per_hour`];
//! 2. and still through the **second half** (same slope limit): a cache
//!    that filled early has a flat second half, a single step has a flat
//!    half on one side of it;
//! 3. by a material amount: the median of the last quarter is more than
//!    [`Limits::margin_bytes`] above the median of the first quarter, so a
//!    creep of a few KiB a minute (page-granular noise, a histogram's new
//!    bucket) does not count.
//!
//! Medians rather than single samples keep a momentary spike (a batch
//! being encoded) from deciding either end.

use std::fmt;

/// When a series counts as growing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Growth rate, in bytes per hour, above which a half of the window
    /// counts as climbing.
    pub max_slope_per_hour: f64,
    /// How far, in bytes, the end of the window must be above its start.
    pub margin_bytes: f64,
}

/// What [`judge`] found in a series.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Verdict {
    /// Slope of the first half, bytes per hour.
    pub first_half_per_hour: f64,
    /// Slope of the second half, bytes per hour.
    pub second_half_per_hour: f64,
    /// Median of the first quarter, bytes.
    pub start_bytes: f64,
    /// Median of the last quarter, bytes.
    pub end_bytes: f64,
    /// All three signs of growth at once.
    pub growing: bool,
}

impl Verdict {
    /// End minus start, bytes.
    pub fn grown_bytes(&self) -> f64 {
        self.end_bytes - self.start_bytes
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const MIB: f64 = 1024.0 * 1024.0;
        write!(
            f,
            "{:.1} MiB -> {:.1} MiB ({:+.2} MiB), slope {:+.1} then {:+.1} MiB/h: {}",
            self.start_bytes / MIB,
            self.end_bytes / MIB,
            self.grown_bytes() / MIB,
            self.first_half_per_hour / MIB,
            self.second_half_per_hour / MIB,
            if self.growing { "GROWING" } else { "steady" }
        )
    }
}

/// Judges `samples` (seconds since any fixed instant, bytes), in time
/// order. Fewer than 8 samples, or samples all taken at one instant, are
/// not judged: `None`.
pub fn judge(samples: &[(f64, f64)], limits: Limits) -> Option<Verdict> {
    let n = samples.len();
    if n < 8 {
        return None;
    }
    let first_half_per_hour = slope(&samples[..n / 2])? * 3600.0;
    let second_half_per_hour = slope(&samples[n / 2..])? * 3600.0;
    let start_bytes = median(samples[..n / 4].iter().map(|s| s.1));
    let end_bytes = median(samples[n - n / 4..].iter().map(|s| s.1));
    let growing = first_half_per_hour > limits.max_slope_per_hour
        && second_half_per_hour > limits.max_slope_per_hour
        && end_bytes - start_bytes > limits.margin_bytes;
    Some(Verdict {
        first_half_per_hour,
        second_half_per_hour,
        start_bytes,
        end_bytes,
        growing,
    })
}

/// Least-squares slope of y over x; `None` when every x is the same.
fn slope(points: &[(f64, f64)]) -> Option<f64> {
    let n = points.len() as f64;
    let mean_x = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_y = points.iter().map(|p| p.1).sum::<f64>() / n;
    let (mut covariance, mut variance) = (0.0, 0.0);
    for (x, y) in points {
        covariance += (x - mean_x) * (y - mean_y);
        variance += (x - mean_x) * (x - mean_x);
    }
    (variance > 0.0).then(|| covariance / variance)
}

fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut values: Vec<f64> = values.collect();
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len().is_multiple_of(2) {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: f64 = 1024.0 * 1024.0;
    const LIMITS: Limits = Limits {
        max_slope_per_hour: 50.0 * MIB,
        margin_bytes: 3.0 * MIB,
    };

    /// 45 samples 2 s apart (90 s), as the leak check takes them, of
    /// `shape(t)` plus page-granular noise of up to ±`noise` bytes from a
    /// fixed pseudo-random sequence.
    fn series(noise: f64, shape: impl Fn(f64) -> f64) -> Vec<(f64, f64)> {
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        (0..45)
            .map(|i| {
                let t = f64::from(i) * 2.0;
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let unit = (state % 10_001) as f64 / 5_000.0 - 1.0;
                let bytes = 30.0 * MIB + shape(t) + unit * noise;
                (t, (bytes / 4096.0).round() * 4096.0)
            })
            .collect()
    }

    fn growing(samples: &[(f64, f64)]) -> bool {
        judge(samples, LIMITS).unwrap().growing
    }

    #[test]
    fn a_flat_series_is_steady() {
        assert!(!growing(&series(0.0, |_| 0.0)));
    }

    #[test]
    fn noise_of_a_few_mib_around_a_plateau_is_steady() {
        assert!(!growing(&series(2.0 * MIB, |_| 0.0)));
    }

    #[test]
    fn a_cache_filling_during_the_first_quarter_is_steady() {
        // 8 MiB that fill in 20 s, then hold.
        let cache = |t: f64| 8.0 * MIB * (t / 20.0).min(1.0);
        assert!(!growing(&series(0.5 * MIB, cache)));
    }

    #[test]
    fn one_step_anywhere_is_steady() {
        for at in [10.0, 30.0, 44.0, 46.0, 60.0, 80.0] {
            let samples = series(0.3 * MIB, |t| if t >= at { 10.0 * MIB } else { 0.0 });
            assert!(!growing(&samples), "a step at {at} s: {samples:?}");
        }
    }

    #[test]
    fn a_slow_creep_below_the_margin_is_steady() {
        // 2 KiB/s: 180 KiB over the window, 7 MiB an hour.
        assert!(!growing(&series(0.2 * MIB, |t| 2048.0 * t)));
    }

    #[test]
    fn steady_growth_is_growing() {
        // 100 KiB/s: 350 MiB an hour.
        let verdict = judge(&series(0.5 * MIB, |t| 100.0 * 1024.0 * t), LIMITS).unwrap();
        assert!(verdict.growing, "{verdict}");
        assert!(verdict.grown_bytes() > 6.0 * MIB, "{verdict}");
    }

    #[test]
    fn growth_that_slows_but_goes_on_is_growing() {
        // A leak under a load that drops to half its rate mid-window.
        let leak = |t: f64| 100.0 * 1024.0 * t.min(45.0) + 50.0 * 1024.0 * (t - 45.0).max(0.0);
        assert!(growing(&series(0.5 * MIB, leak)));
    }

    #[test]
    fn too_few_samples_are_not_judged() {
        let flat: Vec<(f64, f64)> = (0..8).map(|i| (f64::from(i), 1.0)).collect();
        assert_eq!(judge(&flat[..7], LIMITS), None);
        assert_eq!(judge(&flat, LIMITS).map(|v| v.growing), Some(false));
        assert_eq!(judge(&[(0.0, 1.0); 8], LIMITS), None, "all at one instant");
    }
}
