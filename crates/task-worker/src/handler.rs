//! Task handlers: what the worker does with each kind of task.
//!
//! A [`TaskHandler`] runs one task and says how it went: `Ok`, or a
//! [`HandlerError`] that decides the task's fate — a transient failure is
//! retried later through the retry tiers, a permanent one goes to the DLQ at
//! once, and [`HandlerError::BreakerOpen`] hands the task back untouched
//! while the worker pauses. [`Handlers`] maps kinds to handlers; a kind with
//! no handler is dead-lettered as `unknown_kind`.

use std::{collections::HashMap, fmt, sync::Arc, time::Duration};

use futures::future::BoxFuture;
use workqueue::task::{KIND_SLEEP, Task};

/// Why a handler did not finish a task.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// May succeed later (a dependency down or slow): retry with backoff.
    #[error("{0}")]
    Transient(String),
    /// Will never succeed (bad payload, unknown owner): dead-letter now.
    #[error("{message}")]
    Permanent {
        /// Short label for the DLQ's `x-reason` header and metrics.
        reason: &'static str,
        /// What went wrong.
        message: String,
    },
    /// A dependency's circuit breaker is open: requeue the task without
    /// counting an attempt, and stop taking work until it half-opens.
    #[error("circuit breaker {0:?} is open")]
    BreakerOpen(&'static str),
}

impl HandlerError {
    /// A permanent failure with a reason label.
    pub fn permanent(reason: &'static str, message: impl Into<String>) -> Self {
        HandlerError::Permanent {
            reason,
            message: message.into(),
        }
    }
}

/// Runs tasks of one kind.
pub trait TaskHandler: Send + Sync + fmt::Debug + 'static {
    /// Does the work of `task`. The worker acks only after this returns.
    fn handle<'a>(&'a self, task: &'a Task) -> BoxFuture<'a, Result<(), HandlerError>>;
}

/// The handlers of a worker, by task kind.
#[derive(Debug, Clone, Default)]
pub struct Handlers {
    /// The handler of each kind.
    by_kind: HashMap<String, Arc<dyn TaskHandler>>,
}

impl Handlers {
    /// Registers (or replaces) the handler of `kind`.
    pub fn insert(&mut self, kind: impl Into<String>, handler: Arc<dyn TaskHandler>) {
        self.by_kind.insert(kind.into(), handler);
    }

    /// The handler of `kind`, if any.
    pub fn get(&self, kind: &str) -> Option<&Arc<dyn TaskHandler>> {
        self.by_kind.get(kind)
    }

    /// The registered kinds, sorted.
    pub fn kinds(&self) -> Vec<&str> {
        let mut kinds: Vec<&str> = self.by_kind.keys().map(String::as_str).collect();
        kinds.sort_unstable();
        kinds
    }
}

/// `sleep` `{"ms": N}`: simulated work, for demos and benchmarks.
#[derive(Debug, Clone)]
pub struct SleepHandler {
    /// Longest sleep accepted; a longer one is a bad payload, not a stuck worker.
    pub max: Duration,
}

impl SleepHandler {
    /// The kind this handler serves.
    pub const KIND: &'static str = KIND_SLEEP;
}

impl TaskHandler for SleepHandler {
    fn handle<'a>(&'a self, task: &'a Task) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            let duration = sleep_duration(task, self.max)?;
            if !duration.is_zero() {
                tokio::time::sleep(duration).await;
            }
            Ok(())
        })
    }
}

/// Reads `{"ms": N}`: a missing `ms` sleeps 0 ms; anything else than a
/// non-negative integer up to `max` is a permanent `invalid_payload`.
pub fn sleep_duration(task: &Task, max: Duration) -> Result<Duration, HandlerError> {
    let Some(value) = task.payload.get("ms") else {
        return Ok(Duration::ZERO);
    };
    let ms = value.as_u64().ok_or_else(|| {
        HandlerError::permanent(
            "invalid_payload",
            format!("sleep.ms must be a non-negative integer, got {value}"),
        )
    })?;
    let duration = Duration::from_millis(ms);
    if duration > max {
        return Err(HandlerError::permanent(
            "invalid_payload",
            format!("sleep.ms {ms} exceeds the limit of {} ms", max.as_millis()),
        ));
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn task(payload: serde_json::Value) -> Task {
        Task::new("t", KIND_SLEEP, payload.as_object().cloned().unwrap())
    }

    #[test]
    fn sleep_payloads_are_checked() {
        let max = Duration::from_secs(1);
        assert_eq!(
            sleep_duration(&task(json!({"ms": 20})), max).unwrap(),
            Duration::from_millis(20)
        );
        assert_eq!(
            sleep_duration(&task(json!({})), max).unwrap(),
            Duration::ZERO
        );
        for bad in [json!({"ms": -1}), json!({"ms": "5"}), json!({"ms": 5000})] {
            let err = sleep_duration(&task(bad.clone()), max).unwrap_err();
            assert!(
                matches!(
                    err,
                    HandlerError::Permanent {
                        reason: "invalid_payload",
                        ..
                    }
                ),
                "{bad}: {err}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_sleep_handler_sleeps() {
        let handler = SleepHandler {
            max: Duration::from_secs(60),
        };
        let started = tokio::time::Instant::now();
        handler.handle(&task(json!({"ms": 1500}))).await.unwrap();
        assert_eq!(started.elapsed(), Duration::from_millis(1500));
    }
}
