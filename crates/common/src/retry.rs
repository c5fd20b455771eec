//! Retries with exponential backoff and full jitter.
//!
//! The delay before retry `n` (0-based) is a uniform random draw from
//! `[0, min(max_delay, base_delay * 2^n)]` ("full jitter", from the AWS
//! architecture blog's comparison of backoff strategies): clients that failed
//! together do not retry together. A policy stops after `max_attempts` calls or
//! when the next sleep would end past `max_elapsed`, whichever comes first.
//!
//! Only errors that say they are [`Retryable`] are retried; everything else is
//! returned at once. The sleeping is [`backon`]'s on tokio's timer, so tests
//! run on paused tokio time and never really sleep.

use std::{fmt, future::Future, time::Duration};

use backon::Retryable as _;
use rand::Rng;
use tokio::time::Instant;

/// Classifies an error as worth retrying or not.
pub trait Retryable {
    /// `true` when the same call may succeed if repeated later (a broker or
    /// server that is down, a timeout); `false` for a caller's mistake.
    fn is_retryable(&self) -> bool;
}

/// How often and how patiently to retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Upper bound of the first delay; later bounds double.
    #[serde(with = "crate::config::duration")]
    pub base_delay: Duration,
    /// No delay is longer than this.
    #[serde(with = "crate::config::duration")]
    pub max_delay: Duration,
    /// Total calls, the first one included; 1 means no retry.
    pub max_attempts: u32,
    /// Give up when the next sleep would end later than this after the first
    /// call started; `None` for no time limit.
    #[serde(default, with = "crate::config::opt_duration")]
    pub max_elapsed: Option<Duration>,
}

impl RetryPolicy {
    /// For a unary gRPC call inside a caller's deadline: a few quick retries.
    pub const fn rpc() -> Self {
        RetryPolicy {
            base_delay: Duration::from_millis(50),
            max_delay: Duration::from_secs(1),
            max_attempts: 4,
            max_elapsed: Some(Duration::from_secs(5)),
        }
    }

    /// For publishing one message to a broker: patient, but bounded.
    pub const fn publish() -> Self {
        RetryPolicy {
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(2),
            max_attempts: 8,
            max_elapsed: Some(Duration::from_secs(30)),
        }
    }

    /// For (re)connecting to a broker or database: keep trying until stopped.
    pub const fn reconnect() -> Self {
        RetryPolicy {
            base_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(10),
            max_attempts: u32::MAX,
            max_elapsed: None,
        }
    }

    /// Upper bound of the delay before retry `retry` (0-based), before jitter.
    pub fn delay_cap(&self, retry: u32) -> Duration {
        let factor = 2u32.checked_pow(retry).unwrap_or(u32::MAX);
        self.base_delay
            .checked_mul(factor)
            .unwrap_or(self.max_delay)
            .min(self.max_delay)
    }

    /// The delays of this policy, as an iterator that starts its clock now.
    pub fn backoff(&self) -> FullJitterBackoff {
        FullJitterBackoff {
            policy: *self,
            retries: 0,
            started: Instant::now(),
            slept: Duration::ZERO,
        }
    }

    /// Calls `operation` until it succeeds, fails with a non-retryable error,
    /// or the policy gives up; returns the last result. Each retry is logged at
    /// warn with the error and the delay.
    pub async fn retry<T, E, F, Fut>(&self, operation: F) -> Result<T, E>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: Retryable + fmt::Display,
    {
        operation
            .retry(self.backoff())
            .sleep(tokio::time::sleep)
            .when(|error: &E| error.is_retryable())
            .notify(|error: &E, delay: Duration| {
                tracing::warn!(error = %error, delay_ms = delay.as_millis() as u64, "retrying");
            })
            .await
    }
}

/// Delays of a [`RetryPolicy`]: full jitter, bounded by attempts and elapsed time.
#[derive(Debug, Clone)]
pub struct FullJitterBackoff {
    policy: RetryPolicy,
    retries: u32,
    started: Instant,
    slept: Duration,
}

impl Iterator for FullJitterBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        if self.retries.saturating_add(1) >= self.policy.max_attempts {
            return None;
        }
        let cap = self.policy.delay_cap(self.retries);
        let delay = if cap.is_zero() {
            cap
        } else {
            rand::rng().random_range(Duration::ZERO..=cap)
        };
        if let Some(max_elapsed) = self.policy.max_elapsed {
            // The elapsed time includes the calls themselves, not just the sleeps.
            let elapsed = self.started.elapsed().max(self.slept);
            if elapsed + delay > max_elapsed {
                return None;
            }
        }
        self.retries += 1;
        self.slept += delay;
        Some(delay)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    };

    use super::*;

    #[derive(Debug)]
    struct Failure {
        retryable: bool,
    }

    impl fmt::Display for Failure {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "failure (retryable: {})", self.retryable)
        }
    }

    impl Retryable for Failure {
        fn is_retryable(&self) -> bool {
            self.retryable
        }
    }

    fn policy(max_attempts: u32, max_elapsed: Option<Duration>) -> RetryPolicy {
        RetryPolicy {
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
            max_attempts,
            max_elapsed,
        }
    }

    /// An operation that fails `failures` times with `retryable`, then succeeds.
    fn flaky(
        calls: Arc<AtomicU32>,
        failures: u32,
        retryable: bool,
    ) -> impl FnMut() -> std::pin::Pin<Box<dyn Future<Output = Result<u32, Failure>> + Send>> {
        move || {
            let call = calls.fetch_add(1, Ordering::SeqCst) + 1;
            Box::pin(async move {
                if call <= failures {
                    Err(Failure { retryable })
                } else {
                    Ok(call)
                }
            })
        }
    }

    #[test]
    fn delay_caps_double_up_to_the_maximum() {
        let p = policy(10, None);
        let caps: Vec<u64> = (0..6).map(|n| p.delay_cap(n).as_millis() as u64).collect();
        assert_eq!(caps, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(
            p.delay_cap(200),
            Duration::from_secs(1),
            "no overflow on huge exponents"
        );
    }

    #[test]
    fn full_jitter_stays_within_the_caps_and_varies() {
        let p = policy(u32::MAX, None);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            for (n, delay) in p.backoff().take(5).enumerate() {
                assert!(delay <= p.delay_cap(n as u32));
                seen.insert(delay);
            }
        }
        assert!(
            seen.len() > 100,
            "jitter should spread delays, saw {}",
            seen.len()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn retries_until_success() {
        let calls = Arc::new(AtomicU32::new(0));
        let started = Instant::now();
        let result = policy(5, None).retry(flaky(calls.clone(), 3, true)).await;
        assert_eq!(result.unwrap(), 4);
        assert_eq!(calls.load(Ordering::SeqCst), 4);
        // Three sleeps, each at most its cap: 100 + 200 + 400 ms.
        assert!(started.elapsed() <= Duration::from_millis(700));
    }

    #[tokio::test(start_paused = true)]
    async fn a_non_retryable_error_is_returned_at_once() {
        let calls = Arc::new(AtomicU32::new(0));
        let started = Instant::now();
        let result = policy(5, None).retry(flaky(calls.clone(), 3, false)).await;
        assert!(!result.unwrap_err().retryable);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(started.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_after_max_attempts() {
        let calls = Arc::new(AtomicU32::new(0));
        let result = policy(3, None).retry(flaky(calls.clone(), 10, true)).await;
        assert!(result.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_when_the_time_budget_is_spent() {
        let calls = Arc::new(AtomicU32::new(0));
        let started = Instant::now();
        let budget = Duration::from_millis(1500);
        let result = policy(u32::MAX, Some(budget))
            .retry(flaky(calls.clone(), u32::MAX, true))
            .await;
        assert!(result.is_err());
        assert!(started.elapsed() <= budget, "slept {:?}", started.elapsed());
        assert!(calls.load(Ordering::SeqCst) >= 2, "retried at least once");
    }

    #[tokio::test(start_paused = true)]
    async fn slow_calls_count_against_the_time_budget() {
        let calls = Arc::new(AtomicU32::new(0));
        let counter = calls.clone();
        let started = Instant::now();
        let result: Result<(), Failure> = policy(u32::MAX, Some(Duration::from_secs(2)))
            .retry(|| {
                counter.fetch_add(1, Ordering::SeqCst);
                async {
                    tokio::time::sleep(Duration::from_millis(900)).await;
                    Err(Failure { retryable: true })
                }
            })
            .await;
        assert!(result.is_err());
        assert!(calls.load(Ordering::SeqCst) <= 3);
        assert!(started.elapsed() < Duration::from_secs(4));
    }

    #[test]
    fn presets_are_sane() {
        for p in [
            RetryPolicy::rpc(),
            RetryPolicy::publish(),
            RetryPolicy::reconnect(),
        ] {
            assert!(p.base_delay <= p.max_delay);
            assert!(p.max_attempts > 1);
        }
        assert_eq!(RetryPolicy::reconnect().max_elapsed, None);
    }
}
