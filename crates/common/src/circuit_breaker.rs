//! A circuit breaker: stop calling a dependency that keeps failing.
//!
//! - **Closed**: calls go through; failures are remembered for `window`. When
//!   `failure_threshold` failures fall inside the window the breaker opens.
//! - **Open**: calls fail fast with [`BreakerOpen`] without touching the
//!   network, for `open_duration`.
//! - **Half-open**: at most `half_open_probes` calls go through at a time as
//!   probes. `half_open_successes` successful probes close the breaker; one
//!   failing probe opens it again for another `open_duration`.
//!
//! Every transition sets the `circuit_breaker_state{name}` gauge (0 closed,
//! 1 half-open, 2 open), is logged, and is published on a
//! [`tokio::sync::watch`] channel so a consumer can pause while the breaker is
//! open (see [`CircuitBreaker::wait_until_callable`]).
//!
//! Time is tokio's [`Instant`]: tests drive every transition deterministically
//! on paused time.

use std::{collections::VecDeque, fmt, sync::Mutex, time::Duration};

use tokio::{sync::watch, time::Instant};

/// Tunables of a [`CircuitBreaker`].
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerConfig {
    /// Failures inside `window` that open the breaker.
    pub failure_threshold: u32,
    /// How long a failure counts.
    #[serde(with = "crate::config::duration")]
    pub window: Duration,
    /// How long the breaker stays open before it lets probes through.
    #[serde(with = "crate::config::duration")]
    pub open_duration: Duration,
    /// Probes allowed at the same time while half-open.
    pub half_open_probes: u32,
    /// Successful probes that close the breaker again.
    pub half_open_successes: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failure_threshold: 5,
            window: Duration::from_secs(10),
            open_duration: Duration::from_secs(5),
            half_open_probes: 1,
            half_open_successes: 1,
        }
    }
}

/// The three states, with their gauge values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go through.
    Closed = 0,
    /// A limited number of probe calls go through.
    HalfOpen = 1,
    /// Calls fail fast.
    Open = 2,
}

impl fmt::Display for BreakerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BreakerState::Closed => "closed",
            BreakerState::HalfOpen => "half-open",
            BreakerState::Open => "open",
        })
    }
}

/// Returned instead of calling when the breaker does not allow a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("circuit breaker {name:?} is open")]
pub struct BreakerOpen {
    /// Name of the breaker.
    pub name: &'static str,
}

#[derive(Debug)]
enum Phase {
    Closed { failures: VecDeque<Instant> },
    Open { until: Instant },
    HalfOpen { in_flight: u32, successes: u32 },
}

/// A named circuit breaker, shared by reference (`Arc`) between callers.
#[derive(Debug)]
pub struct CircuitBreaker {
    name: &'static str,
    config: BreakerConfig,
    phase: Mutex<Phase>,
    state_tx: watch::Sender<BreakerState>,
}

impl CircuitBreaker {
    /// A closed breaker called `name` (the metric label).
    pub fn new(name: &'static str, config: BreakerConfig) -> Self {
        let (state_tx, _) = watch::channel(BreakerState::Closed);
        let breaker = CircuitBreaker {
            name,
            config,
            phase: Mutex::new(Phase::Closed {
                failures: VecDeque::new(),
            }),
            state_tx,
        };
        breaker.export(BreakerState::Closed);
        breaker
    }

    /// The breaker's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The current state; an open breaker whose time is up reads as half-open.
    pub fn state(&self) -> BreakerState {
        let mut phase = self.lock();
        self.advance(&mut phase);
        state_of(&phase)
    }

    /// Follows state changes (as they happen on calls, or when waiting in
    /// [`CircuitBreaker::wait_until_callable`]).
    pub fn subscribe(&self) -> watch::Receiver<BreakerState> {
        self.state_tx.subscribe()
    }

    /// Asks to make one call. `Err` while open, or while half-open with every
    /// probe slot taken. The returned [`Permit`] must be told how the call
    /// went; a permit dropped without a verdict counts as a failure, so a
    /// cancelled probe does not hold the half-open slot forever.
    pub fn try_acquire(&self) -> Result<Permit<'_>, BreakerOpen> {
        let mut phase = self.lock();
        self.advance(&mut phase);
        match &mut *phase {
            Phase::Closed { .. } => Ok(Permit {
                breaker: self,
                probe: false,
                done: false,
            }),
            Phase::Open { .. } => Err(BreakerOpen { name: self.name }),
            Phase::HalfOpen { in_flight, .. } => {
                if *in_flight >= self.config.half_open_probes {
                    return Err(BreakerOpen { name: self.name });
                }
                *in_flight += 1;
                Ok(Permit {
                    breaker: self,
                    probe: true,
                    done: false,
                })
            }
        }
    }

    /// Runs `call` through the breaker. `counts_as_failure` decides which
    /// errors are the dependency's fault (a NOT_FOUND is not an outage).
    pub async fn call<T, E, Fut>(
        &self,
        call: Fut,
        counts_as_failure: impl FnOnce(&E) -> bool,
    ) -> Result<T, BreakerError<E>>
    where
        Fut: std::future::Future<Output = Result<T, E>>,
    {
        let permit = self.try_acquire().map_err(BreakerError::Open)?;
        match call.await {
            Ok(value) => {
                permit.success();
                Ok(value)
            }
            Err(error) => {
                if counts_as_failure(&error) {
                    permit.failure();
                } else {
                    permit.success();
                }
                Err(BreakerError::Inner(error))
            }
        }
    }

    /// Returns once calls are allowed again: at once when closed or
    /// half-open, otherwise when the open period ends.
    pub async fn wait_until_callable(&self) {
        loop {
            let until = {
                let mut phase = self.lock();
                self.advance(&mut phase);
                match &*phase {
                    Phase::Open { until } => *until,
                    _ => return,
                }
            };
            tokio::time::sleep_until(until).await;
        }
    }

    fn record(&self, probe: bool, success: bool) {
        let mut phase = self.lock();
        self.advance(&mut phase);
        let now = Instant::now();
        match &mut *phase {
            Phase::Closed { failures } => {
                if success {
                    return;
                }
                failures.push_back(now);
                prune(failures, now, self.config.window);
                if failures.len() as u32 >= self.config.failure_threshold {
                    tracing::warn!(
                        breaker = self.name,
                        failures = failures.len(),
                        "circuit breaker opened"
                    );
                    self.transition(
                        &mut phase,
                        Phase::Open {
                            until: now + self.config.open_duration,
                        },
                    );
                }
            }
            Phase::HalfOpen {
                in_flight,
                successes,
            } => {
                if probe {
                    *in_flight = in_flight.saturating_sub(1);
                }
                if !success {
                    tracing::warn!(
                        breaker = self.name,
                        "half-open probe failed, circuit breaker opened again"
                    );
                    self.transition(
                        &mut phase,
                        Phase::Open {
                            until: now + self.config.open_duration,
                        },
                    );
                } else if probe {
                    *successes += 1;
                    if *successes >= self.config.half_open_successes {
                        tracing::info!(breaker = self.name, "circuit breaker closed");
                        self.transition(
                            &mut phase,
                            Phase::Closed {
                                failures: VecDeque::new(),
                            },
                        );
                    }
                }
            }
            // A call admitted while closed that finished after the breaker
            // opened changes nothing.
            Phase::Open { .. } => {}
        }
    }

    /// Moves an open breaker whose time is up to half-open.
    fn advance(&self, phase: &mut Phase) {
        if let Phase::Open { until } = phase
            && Instant::now() >= *until
        {
            tracing::info!(breaker = self.name, "circuit breaker half-open, probing");
            self.transition(
                phase,
                Phase::HalfOpen {
                    in_flight: 0,
                    successes: 0,
                },
            );
        }
    }

    fn transition(&self, phase: &mut Phase, next: Phase) {
        *phase = next;
        let state = state_of(phase);
        self.export(state);
        self.state_tx.send_replace(state);
    }

    fn export(&self, state: BreakerState) {
        metrics::gauge!(crate::metrics::CIRCUIT_BREAKER_STATE, "name" => self.name)
            .set(state as u8 as f64);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Phase> {
        // The lock is never held across an await or a user callback, so a
        // poisoned lock only means a panic elsewhere; the state is still valid.
        self.phase
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn state_of(phase: &Phase) -> BreakerState {
    match phase {
        Phase::Closed { .. } => BreakerState::Closed,
        Phase::Open { .. } => BreakerState::Open,
        Phase::HalfOpen { .. } => BreakerState::HalfOpen,
    }
}

fn prune(failures: &mut VecDeque<Instant>, now: Instant, window: Duration) {
    while failures
        .front()
        .is_some_and(|t| now.duration_since(*t) > window)
    {
        failures.pop_front();
    }
}

/// Leave to make one call; report how it went with [`Permit::success`] or
/// [`Permit::failure`].
#[derive(Debug)]
#[must_use = "report the outcome with success() or failure()"]
pub struct Permit<'a> {
    breaker: &'a CircuitBreaker,
    probe: bool,
    done: bool,
}

impl Permit<'_> {
    /// The call succeeded (or failed for a reason that is not the dependency's).
    pub fn success(mut self) {
        self.done = true;
        self.breaker.record(self.probe, true);
    }

    /// The call failed because of the dependency.
    pub fn failure(mut self) {
        self.done = true;
        self.breaker.record(self.probe, false);
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.breaker.record(self.probe, false);
        }
    }
}

/// Error of [`CircuitBreaker::call`].
#[derive(Debug, thiserror::Error)]
pub enum BreakerError<E> {
    /// The breaker did not allow the call; nothing was sent.
    #[error(transparent)]
    Open(BreakerOpen),
    /// The call was made and failed.
    #[error(transparent)]
    Inner(E),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> BreakerConfig {
        BreakerConfig {
            failure_threshold: 3,
            window: Duration::from_secs(10),
            open_duration: Duration::from_secs(5),
            half_open_probes: 1,
            half_open_successes: 2,
        }
    }

    fn fail(breaker: &CircuitBreaker, times: u32) {
        for _ in 0..times {
            breaker.try_acquire().expect("call allowed").failure();
        }
    }

    async fn open_breaker(name: &'static str) -> CircuitBreaker {
        let breaker = CircuitBreaker::new(name, config());
        fail(&breaker, 3);
        assert_eq!(breaker.state(), BreakerState::Open);
        breaker
    }

    #[tokio::test(start_paused = true)]
    async fn closed_stays_closed_below_the_threshold() {
        let breaker = CircuitBreaker::new("below", config());
        fail(&breaker, 2);
        breaker.try_acquire().unwrap().success();
        assert_eq!(breaker.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn failures_outside_the_window_do_not_count() {
        let breaker = CircuitBreaker::new("window", config());
        fail(&breaker, 2);
        tokio::time::advance(Duration::from_secs(11)).await;
        fail(&breaker, 2);
        assert_eq!(breaker.state(), BreakerState::Closed);
        fail(&breaker, 1);
        assert_eq!(breaker.state(), BreakerState::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn closed_to_open_at_the_threshold_then_fails_fast() {
        let breaker = open_breaker("opens").await;
        let err = breaker.try_acquire().unwrap_err();
        assert_eq!(err.name, "opens");
        let mut called = false;
        let result: Result<(), BreakerError<()>> = breaker
            .call(
                async {
                    called = true;
                    Ok(())
                },
                |_| true,
            )
            .await;
        assert!(matches!(result, Err(BreakerError::Open(_))));
        assert!(!called, "an open breaker must not make the call");
    }

    #[tokio::test(start_paused = true)]
    async fn open_to_half_open_after_the_open_duration() {
        let breaker = open_breaker("half").await;
        tokio::time::advance(Duration::from_millis(4999)).await;
        assert_eq!(breaker.state(), BreakerState::Open);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
    }

    #[tokio::test(start_paused = true)]
    async fn half_open_limits_concurrent_probes() {
        let breaker = open_breaker("probes").await;
        tokio::time::advance(Duration::from_secs(5)).await;
        let probe = breaker.try_acquire().expect("first probe allowed");
        assert!(
            breaker.try_acquire().is_err(),
            "second concurrent probe refused"
        );
        probe.success();
        let probe = breaker
            .try_acquire()
            .expect("next probe allowed after the first finished");
        probe.success();
    }

    #[tokio::test(start_paused = true)]
    async fn half_open_to_closed_after_enough_successful_probes() {
        let breaker = open_breaker("closes").await;
        tokio::time::advance(Duration::from_secs(5)).await;
        breaker.try_acquire().unwrap().success();
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        breaker.try_acquire().unwrap().success();
        assert_eq!(breaker.state(), BreakerState::Closed);
        // The old failures are forgotten: it takes the full threshold again.
        fail(&breaker, 2);
        assert_eq!(breaker.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_probe_opens_it_again() {
        let breaker = open_breaker("reopens").await;
        tokio::time::advance(Duration::from_secs(5)).await;
        breaker.try_acquire().unwrap().failure();
        assert_eq!(breaker.state(), BreakerState::Open);
        tokio::time::advance(Duration::from_millis(4999)).await;
        assert_eq!(
            breaker.state(),
            BreakerState::Open,
            "a full new open period"
        );
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_probe_counts_as_a_failure() {
        let breaker = open_breaker("dropped").await;
        tokio::time::advance(Duration::from_secs(5)).await;
        drop(breaker.try_acquire().unwrap());
        assert_eq!(breaker.state(), BreakerState::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn errors_that_are_not_outages_do_not_open_it() {
        let breaker = CircuitBreaker::new("not-found", config());
        for _ in 0..10 {
            let result: Result<(), _> = breaker.call(async { Err("not found") }, |_| false).await;
            assert!(matches!(result, Err(BreakerError::Inner("not found"))));
        }
        assert_eq!(breaker.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn watchers_see_transitions_and_waiters_wake_at_half_open() {
        let breaker = CircuitBreaker::new("watched", config());
        let mut states = breaker.subscribe();
        fail(&breaker, 3);
        assert_eq!(*states.borrow_and_update(), BreakerState::Open);
        let started = Instant::now();
        breaker.wait_until_callable().await;
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        assert_eq!(*states.borrow_and_update(), BreakerState::HalfOpen);
    }

    #[tokio::test(start_paused = true)]
    async fn the_state_is_exported_as_a_gauge() {
        let handle = crate::metrics::install();
        let breaker = open_breaker("gauge-test").await;
        let rendered = handle.render();
        assert!(
            rendered.contains(r#"circuit_breaker_state{name="gauge-test"} 2"#),
            "{rendered}"
        );
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        assert!(
            handle
                .render()
                .contains(r#"circuit_breaker_state{name="gauge-test"} 1"#)
        );
    }
}
