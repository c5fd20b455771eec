//! Paces readings to a rate per second, or lets them go as fast as possible.
//!
//! The schedule is absolute (reading `n` is due at `start + n / rate`), so a
//! slow publish is caught up on instead of slowing the whole run down, and
//! high rates do not depend on the timer's millisecond resolution: every
//! reading already due goes out without sleeping. A publisher that fell far
//! behind (starved of CPU, stalled on a reconnect) does not burst to catch
//! up, though: past [`MAX_LAG`] the schedule restarts from now, as real
//! sensors would simply have sent later.

use std::time::Duration;

use tokio::time::Instant;

/// How far behind schedule the pacer may fall before it stops catching up.
pub const MAX_LAG: Duration = Duration::from_millis(50);

/// Decides when the next reading is due.
#[derive(Debug)]
pub struct Pacer {
    interval: Option<Duration>,
    start: Instant,
    released: u32,
}

impl Pacer {
    /// `rate_per_sec` of 0 means as fast as possible.
    pub fn new(rate_per_sec: f64) -> Self {
        Pacer {
            interval: (rate_per_sec > 0.0).then(|| Duration::from_secs_f64(1.0 / rate_per_sec)),
            start: Instant::now(),
            released: 0,
        }
    }

    /// When the next reading is due, or `None` when unpaced.
    pub fn next_due(&self) -> Option<Instant> {
        self.interval
            .map(|interval| self.start + interval.saturating_mul(self.released))
    }

    /// Waits until the next reading is due and counts it as released.
    pub async fn wait(&mut self) {
        if let (Some(due), Some(interval)) = (self.next_due(), self.interval) {
            let now = Instant::now();
            if now > due + MAX_LAG {
                self.start = now - interval.saturating_mul(self.released);
            } else {
                tokio::time::sleep_until(due).await;
            }
        }
        self.released = self.released.wrapping_add(1);
        if self.released == u32::MAX {
            // Restart the schedule long before the multiplication saturates.
            self.start = Instant::now();
            self.released = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_rate_spaces_readings_evenly() {
        let mut pacer = Pacer::new(100.0);
        let start = Instant::now();
        for _ in 0..=100 {
            pacer.wait().await;
        }
        let elapsed = start.elapsed();
        assert!(
            elapsed >= Duration::from_millis(1000) && elapsed < Duration::from_millis(1020),
            "{elapsed:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_publisher_far_behind_does_not_burst_to_catch_up() {
        let mut pacer = Pacer::new(1000.0);
        pacer.wait().await;
        // Stalled for a second: 1000 readings behind.
        tokio::time::advance(Duration::from_secs(1)).await;
        pacer.wait().await;
        let start = Instant::now();
        for _ in 0..100 {
            pacer.wait().await;
        }
        let elapsed = start.elapsed();
        assert!(
            elapsed >= Duration::from_millis(99),
            "paced again, not a burst: {elapsed:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn zero_means_as_fast_as_possible() {
        let mut pacer = Pacer::new(0.0);
        let start = Instant::now();
        for _ in 0..10_000 {
            pacer.wait().await;
        }
        assert_eq!(start.elapsed(), Duration::ZERO);
        assert_eq!(pacer.next_due(), None);
    }
}
