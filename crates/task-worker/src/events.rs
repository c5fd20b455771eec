//! What happened to each task, for whoever embeds the worker.
//!
//! Every delivery the worker finishes with produces one [`TaskEvent`] on a
//! broadcast channel ([`crate::Application::subscribe`]): an embedding
//! application can react to outcomes, and the integration tests assert on
//! them instead of on log text. A slow subscriber loses the oldest events
//! (broadcast semantics); the worker never waits for one.

use std::time::{Duration, Instant};

/// How one delivery ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskOutcome {
    /// The handler finished; the task is remembered as done and acked (if
    /// the ack is lost with the connection, the redelivery comes back as
    /// [`TaskOutcome::Duplicate`], not as a second run).
    Done,
    /// A transient failure: the task went to a retry tier with this delay.
    Retried {
        /// The tier's delay.
        delay: Duration,
    },
    /// The task went to the dead-letter queue.
    DeadLettered {
        /// The `x-reason` it carries.
        reason: String,
    },
    /// The task had already been done: acked without running it again.
    Duplicate,
    /// The task was handed back to the queue untouched (breaker open).
    Requeued,
}

/// One finished delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskEvent {
    /// The task id (the AMQP message id when the body did not decode).
    pub task_id: String,
    /// The task kind (empty when the body did not decode).
    pub kind: String,
    /// Which delivery of the task this was, 1-based (from `x-attempts`).
    pub attempt: u32,
    /// RabbitMQ's redelivered flag: an earlier delivery was not acked.
    pub redelivered: bool,
    /// When the worker took the delivery up (before decoding it).
    pub received_at: Instant,
    /// How it ended.
    pub outcome: TaskOutcome,
}
