//! One task delivery, from bytes to ack.
//!
//! decode → skip if already done → find the handler → run it → route the
//! outcome: ack (done), a retry tier (transient failure, attempts left), the
//! DLQ (permanent failure, attempts exhausted, unknown kind, undecodable
//! body), or back to the queue untouched (breaker open). Every path counts
//! `tasks_processed_total{outcome}` or `messages_rejected_total{reason}`
//! and publishes a [`TaskEvent`].

use std::{
    collections::HashMap,
    panic::AssertUnwindSafe,
    sync::Arc,
    time::{Duration, Instant},
};

use common::{
    codec::Codec,
    metrics::{MESSAGES_RECEIVED, MESSAGES_REJECTED},
    propagation,
};
use futures::FutureExt;
use lapin::{
    Channel,
    message::Delivery,
    options::{BasicAckOptions, BasicNackOptions},
};
use metrics::{Counter, Histogram};
use tokio::sync::broadcast;
use tracing::{Instrument, debug, info, warn};
use workqueue::{task::Task, topology::Topology};

use crate::{
    events::{TaskEvent, TaskOutcome},
    finished::FinishedTasks,
    handler::{HandlerError, Handlers},
    metrics::{TASK_DURATION, TASKS_DUPLICATES, TASKS_PROCESSED, TASKS_REQUEUED},
    routing::{self, DeadLetter, RouteError},
    shared_finished::SharedFinished,
};

/// What the consumer loop does after a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    /// Take the next delivery.
    Continue,
    /// A dependency's breaker is open: stop consuming until it half-opens.
    Pause,
}

/// Everything the processing of a task needs, shared by every consumer.
#[derive(Debug)]
pub(crate) struct TaskContext {
    /// The work queue, its retry tiers and its DLQ.
    pub(crate) topology: Topology,
    /// Deliveries of a task before it is dead-lettered.
    pub(crate) max_attempts: u32,
    /// Handlers by task kind.
    pub(crate) handlers: Handlers,
    /// Recently finished task ids (idempotency).
    pub(crate) finished: FinishedTasks,
    /// The pool's finished task ids, when Redis is configured.
    pub(crate) shared_finished: SharedFinished,
    /// Where each delivery's outcome is announced.
    pub(crate) events: broadcast::Sender<TaskEvent>,
    /// Body decoding, with the payload size limit.
    pub(crate) codec: Codec,
    /// Metric handles.
    pub(crate) metrics: TaskMetrics,
}

/// Metric handles resolved once: the hot path then only bumps atomics
/// instead of hashing names and labels for every message.
#[derive(Debug)]
pub(crate) struct TaskMetrics {
    /// `messages_received_total{queue}`.
    received: Counter,
    /// `tasks_processed_total{outcome="ok"}`.
    ok: Counter,
    /// `tasks_processed_total{outcome="retried"}`.
    retried: Counter,
    /// `tasks_processed_total{outcome="dead_lettered"}`.
    dead_lettered: Counter,
    /// `task_duration_seconds{kind}`, per registered kind.
    durations: HashMap<String, Histogram>,
}

impl TaskMetrics {
    /// Handles for the work queue `queue` and the handlers' kinds.
    pub(crate) fn new(queue: &str, handlers: &Handlers) -> Self {
        // The handles bind to the recorder installed now; make sure it is ours.
        common::metrics::install();
        let outcome =
            |outcome: &'static str| metrics::counter!(TASKS_PROCESSED, "outcome" => outcome);
        TaskMetrics {
            received: metrics::counter!(MESSAGES_RECEIVED, "queue" => queue.to_string()),
            ok: outcome("ok"),
            retried: outcome("retried"),
            dead_lettered: outcome("dead_lettered"),
            durations: handlers
                .kinds()
                .into_iter()
                .map(|kind| {
                    let histogram = metrics::histogram!(TASK_DURATION, "kind" => kind.to_string());
                    (kind.to_string(), histogram)
                })
                .collect(),
        }
    }

    fn record(&self, kind: &str, outcome: Outcome, elapsed: Duration) {
        match outcome {
            Outcome::Ok => self.ok.increment(1),
            Outcome::Retried => self.retried.increment(1),
            Outcome::DeadLettered => self.dead_lettered.increment(1),
        }
        if let Some(histogram) = self.durations.get(kind) {
            histogram.record(elapsed.as_secs_f64());
        }
    }
}

/// The `outcome` label of `tasks_processed_total`.
#[derive(Debug, Clone, Copy)]
enum Outcome {
    Ok,
    Retried,
    DeadLettered,
}

/// Handles one delivery completely (acked, re-published or requeued).
/// `Err` means the channel failed: the delivery will come back.
pub(crate) async fn process(
    context: &Arc<TaskContext>,
    publish: &Channel,
    delivery: Delivery,
) -> Result<Next, RouteError> {
    let received_at = Instant::now();
    let queue = context.topology.task_queue();
    context.metrics.received.increment(1);
    let failures_before = routing::attempts(&delivery.properties);
    let content_type = routing::content_type(&delivery.properties);
    let task: Task = match context
        .codec
        .decode_with_header(&delivery.data, content_type)
    {
        Ok(task) => task,
        Err(error) => {
            let reason = error.reason();
            metrics::counter!(MESSAGES_REJECTED, "reason" => reason).increment(1);
            let message_id = delivery
                .properties
                .message_id()
                .as_ref()
                .map(|id| id.as_str().to_string())
                .unwrap_or_default();
            warn!(queue, message_id, reason, error = %error, "undecodable task, dead-lettering");
            let event = TaskEvent {
                task_id: message_id,
                kind: String::new(),
                attempt: failures_before + 1,
                redelivered: delivery.redelivered,
                received_at,
                outcome: TaskOutcome::DeadLettered {
                    reason: reason.to_string(),
                },
            };
            dead_letter(
                context,
                publish,
                &delivery,
                reason,
                &error.to_string(),
                failures_before + 1,
            )
            .await?;
            let _ = context.events.send(event);
            return Ok(Next::Continue);
        }
    };

    let span = tracing::info_span!("task", task_id = %task.id, kind = %task.kind, attempt = failures_before + 1);
    propagation::set_parent(
        &span,
        propagation::extract_amqp(delivery.properties.headers().as_ref()),
    );
    handle(
        context,
        publish,
        delivery,
        task,
        failures_before,
        received_at,
    )
    .instrument(span)
    .await
}

async fn handle(
    context: &Arc<TaskContext>,
    publish: &Channel,
    delivery: Delivery,
    task: Task,
    failures_before: u32,
    received_at: Instant,
) -> Result<Next, RouteError> {
    let attempt = failures_before + 1;
    let event = |outcome| TaskEvent {
        task_id: task.id.clone(),
        kind: task.kind.clone(),
        attempt,
        redelivered: delivery.redelivered,
        received_at,
        outcome,
    };

    // Held until this delivery is settled: a second copy arriving meanwhile
    // is a duplicate (see `finished`).
    let claim = context.finished.claim(&task.id);
    if claim.is_none() || context.shared_finished.contains(&task.id).await {
        debug!("task already done or running, acking the copy");
        delivery.acker.ack(BasicAckOptions::default()).await?;
        metrics::counter!(TASKS_DUPLICATES).increment(1);
        let _ = context.events.send(event(TaskOutcome::Duplicate));
        return Ok(Next::Continue);
    }

    let Some(handler) = context.handlers.get(&task.kind).cloned() else {
        metrics::counter!(MESSAGES_REJECTED, "reason" => "unknown_kind").increment(1);
        warn!(known = ?context.handlers.kinds(), "unknown task kind, dead-lettering");
        let error = format!("no handler for task kind {:?}", task.kind);
        dead_letter(context, publish, &delivery, "unknown_kind", &error, attempt).await?;
        let _ = context.events.send(event(TaskOutcome::DeadLettered {
            reason: "unknown_kind".into(),
        }));
        return Ok(Next::Continue);
    };

    let started = Instant::now();
    // A panicking handler must not take the consumer down with it: the task
    // would come back and panic again forever. It is a permanent failure.
    let result = match AssertUnwindSafe(handler.handle(&task)).catch_unwind().await {
        Ok(result) => result,
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "handler panicked".to_string());
            Err(HandlerError::permanent("handler_panicked", message))
        }
    };
    let elapsed = started.elapsed();
    let kind = task.kind.clone();
    match result {
        Ok(()) => {
            // Remembered before the ack: if the ack is lost with the
            // connection, the redelivery is recognised instead of redone.
            context.finished.insert(&task.id);
            context.shared_finished.insert(&task.id).await;
            context.metrics.record(&kind, Outcome::Ok, elapsed);
            info!(task_id = %task.id, duration_ms = elapsed.as_millis() as u64, "task done");
            let _ = context.events.send(event(TaskOutcome::Done));
            delivery.acker.ack(BasicAckOptions::default()).await?;
            Ok(Next::Continue)
        }
        Err(HandlerError::Transient(error)) => {
            let tier = (attempt < context.max_attempts)
                .then(|| context.topology.retry_tier(attempt))
                .flatten();
            match tier {
                Some((tier, delay)) => {
                    routing::to_retry_tier(
                        publish,
                        &tier,
                        &delivery.data,
                        &delivery.properties,
                        attempt,
                    )
                    .await?;
                    delivery.acker.ack(BasicAckOptions::default()).await?;
                    context.metrics.record(&kind, Outcome::Retried, elapsed);
                    warn!(error = %error, delay_ms = delay.as_millis() as u64, "task failed, retrying later");
                    let _ = context.events.send(event(TaskOutcome::Retried { delay }));
                }
                None => {
                    warn!(error = %error, attempts = attempt, "task failed for the last time, dead-lettering");
                    dead_letter(context, publish, &delivery, "max_attempts", &error, attempt)
                        .await?;
                    context
                        .metrics
                        .record(&kind, Outcome::DeadLettered, elapsed);
                    let _ = context.events.send(event(TaskOutcome::DeadLettered {
                        reason: "max_attempts".into(),
                    }));
                }
            }
            Ok(Next::Continue)
        }
        Err(HandlerError::Permanent { reason, message }) => {
            warn!(reason, error = %message, "task cannot succeed, dead-lettering");
            dead_letter(context, publish, &delivery, reason, &message, attempt).await?;
            context
                .metrics
                .record(&kind, Outcome::DeadLettered, elapsed);
            let _ = context.events.send(event(TaskOutcome::DeadLettered {
                reason: reason.to_string(),
            }));
            Ok(Next::Continue)
        }
        Err(HandlerError::BreakerOpen(breaker)) => {
            // Not the task's fault: back to the queue with its attempts
            // unchanged, and this consumer pauses.
            info!(breaker, "dependency breaker open, requeueing the task");
            delivery
                .acker
                .nack(BasicNackOptions {
                    requeue: true,
                    ..Default::default()
                })
                .await?;
            metrics::counter!(TASKS_REQUEUED, "reason" => "breaker_open").increment(1);
            let _ = context.events.send(event(TaskOutcome::Requeued));
            Ok(Next::Pause)
        }
    }
}

async fn dead_letter(
    context: &TaskContext,
    publish: &Channel,
    delivery: &Delivery,
    reason: &str,
    error: &str,
    attempts: u32,
) -> Result<(), RouteError> {
    routing::to_dead_letter_queue(
        publish,
        &context.topology.dead_letter_queue(),
        &delivery.data,
        &delivery.properties,
        DeadLetter {
            reason,
            error,
            attempts,
            original_queue: context.topology.task_queue(),
        },
    )
    .await?;
    delivery.acker.ack(BasicAckOptions::default()).await?;
    Ok(())
}
