//! Hands alerts on to the work queue as `notify` tasks, without losing them
//! while RabbitMQ is away.
//!
//! Alerts wait in a bounded buffer; a background task takes them out and
//! publishes each through the [`TaskPublisher`] (persistent, confirmed), with
//! up to the publisher's window in flight. A publish that is not confirmed is
//! tried again with exponential backoff for as long as it takes — counted in
//! `alert_handoff_retries_total`, visible in the `alerts_pending_handoff`
//! gauge. When the buffer is full, [`AlertHandoff::submit`] waits: the
//! subscriber slows down rather than dropping alerts.
//!
//! A submitter that must know when its alert is safe (JetStream mode acks
//! the reading only then) gets a [`Delivered`] to await.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use common::{retry::RetryPolicy, shutdown::Shutdown};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tracing::Instrument as _;
use workqueue::{
    publisher::{PublishError, TaskPublisher},
    task::Task,
};

use crate::metrics::{ALERT_HANDOFF_RETRIES, ALERTS_ABANDONED, ALERTS_PENDING_HANDOFF};

/// Counters of the hand-off, shared with the service's summary and tests.
#[derive(Debug, Default)]
pub struct HandoffCounts {
    /// Tasks the broker confirmed.
    pub confirmed: AtomicU64,
    /// Publishes tried again after a failure.
    pub retries: AtomicU64,
    /// Alerts submitted and not confirmed yet.
    pub pending: AtomicU64,
    /// Alerts given up (only at shutdown after the grace period, or a task
    /// that cannot be encoded).
    pub abandoned: AtomicU64,
}

/// Completes when the alert's task was confirmed; errors if it was abandoned.
#[derive(Debug)]
pub struct Delivered {
    receiver: oneshot::Receiver<()>,
    /// The outcome once known: a finished receiver must not be polled again.
    outcome: Option<bool>,
}

impl Delivered {
    fn new(receiver: oneshot::Receiver<()>) -> Self {
        Delivered {
            receiver,
            outcome: None,
        }
    }

    /// `true` once the task is confirmed; `false` if it was abandoned.
    pub async fn confirmed(mut self) -> bool {
        self.wait().await
    }

    /// Waits for the outcome without giving the handle up.
    pub async fn wait(&mut self) -> bool {
        if let Some(outcome) = self.outcome {
            return outcome;
        }
        let outcome = (&mut self.receiver).await.is_ok();
        self.outcome = Some(outcome);
        outcome
    }

    /// `Some(true)` once confirmed, `Some(false)` if abandoned, `None` while
    /// still on its way; does not wait.
    pub fn try_confirmed(&mut self) -> Option<bool> {
        if self.outcome.is_none() {
            self.outcome = match self.receiver.try_recv() {
                Ok(()) => Some(true),
                Err(oneshot::error::TryRecvError::Empty) => None,
                Err(oneshot::error::TryRecvError::Closed) => Some(false),
            };
        }
        self.outcome
    }
}

struct Job {
    task: Task,
    done: Option<oneshot::Sender<()>>,
    span: tracing::Span,
}

/// The buffer in front of the work queue. Cheap to clone.
#[derive(Debug, Clone)]
pub struct AlertHandoff {
    jobs: mpsc::Sender<Job>,
    counts: Arc<HandoffCounts>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("task_id", &self.task.id)
            .finish()
    }
}

impl AlertHandoff {
    /// Starts the delivery task on `work`. `capacity` alerts may wait in the
    /// buffer.
    ///
    /// The delivery task does not watch `work`'s signal: it ends once every
    /// handle is dropped and the buffer is empty, so alerts queued before a
    /// shutdown are still delivered. `work.drain(grace)` waits for that, and
    /// aborts the deliveries still retrying when the grace period is over.
    pub fn start(
        publisher: TaskPublisher,
        capacity: usize,
        counts: Arc<HandoffCounts>,
        work: &Shutdown,
    ) -> Self {
        let (jobs, receiver) = mpsc::channel(capacity.max(1));
        work.spawn(deliver_all(publisher, receiver, counts.clone()));
        AlertHandoff { jobs, counts }
    }

    /// Queues the task of an alert; waits while the buffer is full. The
    /// current span travels with it, so the task's `traceparent` continues
    /// the reading's trace.
    pub async fn submit(&self, task: Task, want_confirmation: bool) -> Option<Delivered> {
        let (done, delivered) = if want_confirmation {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(Delivered::new(rx)))
        } else {
            (None, None)
        };
        self.counts.pending.fetch_add(1, Ordering::Relaxed);
        metrics::gauge!(ALERTS_PENDING_HANDOFF).increment(1.0);
        let job = Job {
            task,
            done,
            span: tracing::Span::current(),
        };
        if let Err(error) = self.jobs.send(job).await {
            // Only after the delivery task ended, i.e. never while running.
            self.counts.pending.fetch_sub(1, Ordering::Relaxed);
            metrics::gauge!(ALERTS_PENDING_HANDOFF).decrement(1.0);
            tracing::error!(task_id = %error.0.task.id, "alert hand-off closed, alert not queued");
            return None;
        }
        delivered
    }
}

async fn deliver_all(
    publisher: TaskPublisher,
    mut jobs: mpsc::Receiver<Job>,
    counts: Arc<HandoffCounts>,
) {
    let window = Arc::new(Semaphore::new(publisher.max_unconfirmed()));
    let mut deliveries = tokio::task::JoinSet::new();
    while let Some(job) = jobs.recv().await {
        while deliveries.try_join_next().is_some() {}
        let Ok(permit) = window.clone().acquire_owned().await else {
            break;
        };
        let publisher = publisher.clone();
        let counts = counts.clone();
        let span = job.span.clone();
        deliveries.spawn(
            async move {
                deliver(&publisher, job, &counts).await;
                drop(permit);
            }
            .instrument(span),
        );
    }
    while deliveries.join_next().await.is_some() {}
}

/// Publishes one task until the broker confirms it.
async fn deliver(publisher: &TaskPublisher, job: Job, counts: &HandoffCounts) {
    let Job { task, done, .. } = job;
    // Patient on purpose: an alert waits out a RabbitMQ outage of any length.
    let policy = RetryPolicy {
        base_delay: Duration::from_millis(200),
        max_delay: Duration::from_secs(10),
        max_attempts: u32::MAX,
        max_elapsed: None,
    };
    let mut delays = policy.backoff();
    loop {
        match publisher.publish(&task).await {
            Ok(()) => {
                counts.confirmed.fetch_add(1, Ordering::Relaxed);
                counts.pending.fetch_sub(1, Ordering::Relaxed);
                metrics::gauge!(ALERTS_PENDING_HANDOFF).decrement(1.0);
                if let Some(done) = done {
                    let _ = done.send(());
                }
                return;
            }
            Err(PublishError::Encode(error)) => {
                tracing::error!(task_id = %task.id, %error, "notify task cannot be encoded, alert abandoned");
                abandon(counts, "encode");
                return;
            }
            Err(error) => {
                let delay = delays.next().unwrap_or(policy.max_delay);
                counts.retries.fetch_add(1, Ordering::Relaxed);
                metrics::counter!(ALERT_HANDOFF_RETRIES).increment(1);
                tracing::warn!(
                    task_id = %task.id,
                    %error,
                    delay_ms = delay.as_millis() as u64,
                    "notify task not confirmed, keeping the alert and retrying"
                );
                tokio::time::sleep(delay).await;
            }
        }
    }
}

fn abandon(counts: &HandoffCounts, reason: &'static str) {
    counts.pending.fetch_sub(1, Ordering::Relaxed);
    counts.abandoned.fetch_add(1, Ordering::Relaxed);
    metrics::gauge!(ALERTS_PENDING_HANDOFF).decrement(1.0);
    metrics::counter!(ALERTS_ABANDONED, "reason" => reason).increment(1);
}
