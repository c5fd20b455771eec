//! The work-queue topology on RabbitMQ: which queues exist and how they are wired.
//!
//! Everything hangs off one base name (`task_queue` by default), so a test or
//! a second deployment in the same vhost uses its own set of queues:
//!
//! | queue | arguments | role |
//! |---|---|---|
//! | `task_queue` | none (durable) | the work queue, declared as plain clients declare it |
//! | `task_queue.retry.<ms>ms` | `x-message-ttl`, `x-dead-letter-exchange = ""`, `x-dead-letter-routing-key = task_queue` | one delay tier of the retry backoff |
//! | `task_queue.dlq` | none (durable) | tasks that will never succeed, with headers saying why |
//! | `data_sync` | none (durable) | user events from user-service ([`declare_data_sync`]) |
//! | `data_sync.dlq` | none (durable) | user events no consumer could apply ([`data_sync_dead_letter_queue`]) |
//!
//! Why one retry queue per delay tier rather than a per-message TTL on one
//! retry queue: RabbitMQ only expires messages at the head of a queue, so a
//! 60 s message in front of a 1 s message would hold the short one back
//! (head-of-line blocking). Inside one tier every message has the same TTL,
//! so the head is always the first to expire. When a tier's TTL runs out the
//! broker dead-letters the message through the default exchange back onto
//! the work queue, body and headers untouched.
//!
//! The main queue and the DLQ carry no arguments, so a plain client that
//! declares `task_queue` as `durable=True` gets no `PRECONDITION_FAILED`.
//!
//! ## Quorum queues
//!
//! With [`QueueType::Quorum`] (`queue_type = "quorum"`, for a cluster) every
//! queue above is a replicated quorum queue and gets these arguments besides
//! the ones in the table:
//!
//! | queue | extra arguments |
//! |---|---|
//! | `task_queue`, `data_sync` | `x-queue-type = quorum`, `x-delivery-limit`, `x-dead-letter-exchange = ""`, `x-dead-letter-routing-key = <queue>.dlq`, `x-dead-letter-strategy = at-least-once`, `x-overflow = reject-publish` |
//! | `task_queue.retry.<ms>ms` | `x-queue-type = quorum`, `x-dead-letter-strategy = at-least-once`, `x-overflow = reject-publish` |
//! | `task_queue.dlq`, `data_sync.dlq` | `x-queue-type = quorum` |
//!
//! `x-delivery-limit` is a second poison guard beside our attempt counter:
//! the counter only sees failures a worker lived to report, while a task
//! that kills its worker is handed back by the broker again and again; past
//! the limit the broker dead-letters it to the DLQ itself. At-least-once
//! dead-lettering keeps a message in its source queue until the target
//! queue confirmed it, so a task cannot be lost between a retry tier and the
//! work queue when a node dies; RabbitMQ requires `reject-publish` overflow
//! with it.
//!
//! A queue's type cannot change in place: declaring an existing classic
//! queue as quorum (or the other way round) fails with `PRECONDITION_FAILED`,
//! which [`Topology::declare`] turns into an error saying what to do
//! (deploy/README.md, "Move a running installation to quorum queues").

use std::{fmt, str::FromStr, time::Duration};

use lapin::{
    Channel, ErrorKind,
    options::{QueueDeclareOptions, QueueDeleteOptions},
    protocol::{AMQPErrorKind, AMQPSoftError},
    types::{AMQPValue, FieldTable, LongString, ShortString},
};
use serde::{Deserialize, Serialize};

/// Default base name of the work queue (what plain clients use).
pub const DEFAULT_TASK_QUEUE: &str = "task_queue";

/// Default name of the user-sync event queue (what plain clients use).
pub const DATA_SYNC_QUEUE: &str = "data_sync";

/// Default retry backoff: the first delay, doubled per attempt up to the cap.
pub const DEFAULT_RETRY_BASE_DELAY: Duration = Duration::from_secs(1);
/// Default cap of one retry delay.
pub const DEFAULT_RETRY_MAX_DELAY: Duration = Duration::from_secs(60);
/// Default number of deliveries of a task (the first one included) before it
/// is dead-lettered.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;

/// Default `x-delivery-limit` of a quorum work queue: deliveries the broker
/// hands out (redeliveries after a worker died included) before it
/// dead-letters the message. Well above [`DEFAULT_MAX_ATTEMPTS`], so the
/// attempt counter always decides first for a task that fails normally, and
/// room for the redeliveries of a node loss.
pub const DEFAULT_DELIVERY_LIMIT: u32 = 20;

/// Which kind of RabbitMQ queue the topology declares (`queue_type`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueType {
    /// Single-node queues with no arguments: what plain clients declare.
    #[default]
    Classic,
    /// Replicated Raft queues for a cluster (`x-queue-type = quorum`).
    Quorum,
}

impl QueueType {
    /// `classic` or `quorum`, as in the config file and `x-queue-type`.
    pub fn as_str(self) -> &'static str {
        match self {
            QueueType::Classic => "classic",
            QueueType::Quorum => "quorum",
        }
    }

    fn other(self) -> QueueType {
        match self {
            QueueType::Classic => QueueType::Quorum,
            QueueType::Quorum => QueueType::Classic,
        }
    }
}

impl fmt::Display for QueueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for QueueType {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "classic" => Ok(QueueType::Classic),
            "quorum" => Ok(QueueType::Quorum),
            other => Err(format!("unknown queue type {other:?}: classic or quorum")),
        }
    }
}

/// Names of the AMQP headers the work queue uses.
pub mod headers {
    /// Failed deliveries so far (an integer); absent on a fresh task.
    pub const ATTEMPTS: &str = "x-attempts";
    /// On a dead-lettered task: the last error, as text.
    pub const ERROR: &str = "x-error";
    /// On a dead-lettered task: a short label (`max_attempts`, `unknown_kind`,
    /// `not_found`, `invalid_json`, ...).
    pub const REASON: &str = "x-reason";
    /// On a dead-lettered task: when it was dead-lettered, Unix milliseconds.
    pub const DEAD_LETTERED_AT: &str = "x-dead-lettered-at";
    /// On a dead-lettered task: the work queue it came from.
    pub const ORIGINAL_QUEUE: &str = "x-original-queue";
}

/// The queues of one work queue, derived from its base name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    task_queue: String,
    retry_delays: Vec<Duration>,
    queue_type: QueueType,
    delivery_limit: u32,
}

impl Default for Topology {
    fn default() -> Self {
        Topology::new(DEFAULT_TASK_QUEUE)
    }
}

impl Topology {
    /// The topology of the work queue `task_queue` with the default retry tiers.
    pub fn new(task_queue: impl Into<String>) -> Self {
        Topology {
            task_queue: task_queue.into(),
            retry_delays: exponential_delays(
                DEFAULT_RETRY_BASE_DELAY,
                DEFAULT_RETRY_MAX_DELAY,
                DEFAULT_MAX_ATTEMPTS,
            ),
            queue_type: QueueType::Classic,
            delivery_limit: DEFAULT_DELIVERY_LIMIT,
        }
    }

    /// Declares the queues as `queue_type` (classic by default).
    pub fn with_queue_type(mut self, queue_type: QueueType) -> Self {
        self.queue_type = queue_type;
        self
    }

    /// The `x-delivery-limit` of quorum queues (at least 1).
    pub fn with_delivery_limit(mut self, limit: u32) -> Self {
        self.delivery_limit = limit.max(1);
        self
    }

    /// The kind of queue this topology declares.
    pub fn queue_type(&self) -> QueueType {
        self.queue_type
    }

    /// Replaces the retry tiers. Delays are sorted and de-duplicated; zero
    /// delays are dropped (a zero TTL would make the broker deliver at once).
    pub fn with_retry_delays(mut self, delays: impl IntoIterator<Item = Duration>) -> Self {
        let mut delays: Vec<Duration> = delays
            .into_iter()
            .map(whole_millis)
            .filter(|delay| !delay.is_zero())
            .collect();
        delays.sort();
        delays.dedup();
        self.retry_delays = delays;
        self
    }

    /// The work queue's name (the base name).
    pub fn task_queue(&self) -> &str {
        &self.task_queue
    }

    /// The dead-letter queue: `<base>.dlq`.
    pub fn dead_letter_queue(&self) -> String {
        format!("{}.dlq", self.task_queue)
    }

    /// The retry tiers' delays, shortest first.
    pub fn retry_delays(&self) -> &[Duration] {
        &self.retry_delays
    }

    /// The retry queue holding tasks for `delay`: `<base>.retry.<ms>ms`.
    pub fn retry_queue(&self, delay: Duration) -> String {
        format!("{}.retry.{}ms", self.task_queue, delay.as_millis())
    }

    /// Where a task goes after its `failures`-th failed delivery (1-based):
    /// tier `failures - 1`, the last tier once the tiers run out. `None` when
    /// there are no tiers.
    pub fn retry_tier(&self, failures: u32) -> Option<(String, Duration)> {
        let index = (failures.max(1) as usize - 1).min(self.retry_delays.len().checked_sub(1)?);
        let delay = self.retry_delays[index];
        Some((self.retry_queue(delay), delay))
    }

    /// Every queue of this topology: work queue, retry tiers, DLQ.
    pub fn queue_names(&self) -> Vec<String> {
        let mut names = vec![self.task_queue.clone()];
        names.extend(self.retry_delays.iter().map(|d| self.retry_queue(*d)));
        names.push(self.dead_letter_queue());
        names
    }

    /// The declare arguments of the work queue (none when classic).
    pub fn task_queue_arguments(&self) -> FieldTable {
        main_queue_arguments(
            self.queue_type,
            &self.dead_letter_queue(),
            self.delivery_limit,
        )
    }

    /// The declare arguments of the retry tier for `delay`.
    pub fn retry_queue_arguments(&self, delay: Duration) -> FieldTable {
        let mut arguments = type_arguments(self.queue_type);
        arguments.insert(
            "x-message-ttl".into(),
            AMQPValue::LongLongInt(delay.as_millis() as i64),
        );
        dead_letter_to(&mut arguments, self.queue_type, &self.task_queue);
        arguments
    }

    /// The declare arguments of the DLQ (none when classic).
    pub fn dead_letter_queue_arguments(&self) -> FieldTable {
        type_arguments(self.queue_type)
    }

    /// Declares the work queue and its DLQ: what a producer needs so that its
    /// messages are routed. Retry tiers are left to the workers, which know
    /// their backoff.
    pub async fn declare_work_queue(&self, channel: &Channel) -> Result<(), lapin::Error> {
        // The DLQ first: the work queue dead-letters into it.
        declare_queue(
            channel,
            &self.dead_letter_queue(),
            self.dead_letter_queue_arguments(),
            self.queue_type,
        )
        .await?;
        declare_queue(
            channel,
            &self.task_queue,
            self.task_queue_arguments(),
            self.queue_type,
        )
        .await
    }

    /// Declares every queue (idempotent: the same declaration again is a
    /// no-op). A queue that exists with another type fails with an error
    /// saying what to do.
    pub async fn declare(&self, channel: &Channel) -> Result<(), lapin::Error> {
        self.declare_work_queue(channel).await?;
        for delay in &self.retry_delays {
            declare_queue(
                channel,
                &self.retry_queue(*delay),
                self.retry_queue_arguments(*delay),
                self.queue_type,
            )
            .await?;
        }
        Ok(())
    }

    /// Deletes every queue of this topology, with its messages (tests and
    /// tear-down of a throwaway deployment).
    pub async fn delete(&self, channel: &Channel) -> Result<(), lapin::Error> {
        for name in self.queue_names() {
            channel
                .queue_delete(ShortString::from(name), QueueDeleteOptions::default())
                .await?;
        }
        Ok(())
    }
}

/// Declares a classic user-event queue (default name [`DATA_SYNC_QUEUE`]):
/// durable, no arguments, so a plain AMQP client declaring it the same way
/// agrees with us instead of failing with `PRECONDITION_FAILED`.
pub async fn declare_data_sync(channel: &Channel, queue: &str) -> Result<(), lapin::Error> {
    declare_data_sync_as(channel, queue, QueueType::Classic).await
}

/// Declares a user-event queue as `queue_type`. A quorum one dead-letters
/// into its DLQ past its delivery limit, so the DLQ is declared first; a
/// classic one does not, and its DLQ is left to the consumer
/// ([`declare_data_sync_dead_letters`]).
pub async fn declare_data_sync_as(
    channel: &Channel,
    queue: &str,
    queue_type: QueueType,
) -> Result<(), lapin::Error> {
    let dead_letters = data_sync_dead_letter_queue(queue);
    if queue_type == QueueType::Quorum {
        declare_data_sync_dead_letters(channel, queue, queue_type).await?;
    }
    declare_queue(
        channel,
        queue,
        main_queue_arguments(queue_type, &dead_letters, DEFAULT_DELIVERY_LIMIT),
        queue_type,
    )
    .await
}

/// Declares the DLQ of the user-event queue `queue` as `queue_type`.
pub async fn declare_data_sync_dead_letters(
    channel: &Channel,
    queue: &str,
    queue_type: QueueType,
) -> Result<(), lapin::Error> {
    declare_queue(
        channel,
        &data_sync_dead_letter_queue(queue),
        type_arguments(queue_type),
        queue_type,
    )
    .await
}

/// The dead-letter queue of a user-event queue: `<queue>.dlq`.
pub fn data_sync_dead_letter_queue(queue: &str) -> String {
    format!("{queue}.dlq")
}

/// The retry delays `base, 2·base, 4·base, …` capped at `max`, one per retry
/// a task may get before it is dead-lettered (`max_attempts - 1` of them).
pub fn exponential_delays(base: Duration, max: Duration, max_attempts: u32) -> Vec<Duration> {
    let mut delays: Vec<Duration> = (0..max_attempts.saturating_sub(1))
        .map(|retry| {
            let factor = 2u32.checked_pow(retry).unwrap_or(u32::MAX);
            whole_millis(base.checked_mul(factor).unwrap_or(max).min(max))
        })
        .filter(|delay| !delay.is_zero())
        .collect();
    delays.dedup();
    delays
}

/// `x-queue-type = quorum` for a quorum queue; nothing for a classic one, so
/// it matches a plain client's declaration.
fn type_arguments(queue_type: QueueType) -> FieldTable {
    let mut arguments = FieldTable::default();
    if queue_type == QueueType::Quorum {
        arguments.insert("x-queue-type".into(), text("quorum"));
    }
    arguments
}

/// A work queue or `data_sync`: classic plain; quorum with its delivery
/// limit, dead-lettering at least once into `dead_letters`.
fn main_queue_arguments(queue_type: QueueType, dead_letters: &str, limit: u32) -> FieldTable {
    let mut arguments = type_arguments(queue_type);
    if queue_type == QueueType::Quorum {
        arguments.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongLongInt(limit.into()),
        );
        dead_letter_to(&mut arguments, queue_type, dead_letters);
    }
    arguments
}

/// Dead-letters through the default exchange onto `queue`; at least once on
/// a quorum queue.
fn dead_letter_to(arguments: &mut FieldTable, queue_type: QueueType, queue: &str) {
    arguments.insert("x-dead-letter-exchange".into(), text(""));
    arguments.insert("x-dead-letter-routing-key".into(), text(queue));
    if queue_type == QueueType::Quorum {
        arguments.insert("x-dead-letter-strategy".into(), text("at-least-once"));
        arguments.insert("x-overflow".into(), text("reject-publish"));
    }
}

fn text(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value))
}

async fn declare_queue(
    channel: &Channel,
    queue: &str,
    arguments: FieldTable,
    queue_type: QueueType,
) -> Result<(), lapin::Error> {
    channel
        .queue_declare(
            ShortString::from(queue),
            QueueDeclareOptions::durable(),
            arguments,
        )
        .await
        .map(|_| ())
        .map_err(|error| explain_mismatch(error, queue, queue_type))
}

/// RabbitMQ answers a declaration whose arguments differ from the existing
/// queue's with `PRECONDITION_FAILED` and closes the channel; the bare
/// message ("inequivalent arg 'x-queue-type'") does not tell an operator
/// what to do, this one does.
fn explain_mismatch(error: lapin::Error, queue: &str, queue_type: QueueType) -> lapin::Error {
    let ErrorKind::ProtocolError(amqp) = error.kind() else {
        return error;
    };
    if amqp.kind() != &AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED) {
        return error;
    }
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        QueueMismatch {
            queue: queue.to_string(),
            configured: queue_type,
            broker: amqp.get_message().to_string(),
        },
    )
    .into()
}

/// An existing queue declared with other arguments than ours.
#[derive(Debug, thiserror::Error)]
#[error(
    "queue {queue:?} already exists with other arguments than queue_type = \"{configured}\" \
     declares (broker: {broker}); a queue's type cannot change in place: set queue_type = \
     \"{other}\" to match the existing queues, or drain and delete them first (deploy/README.md, \
     \"Move a running installation to quorum queues\")",
    other = configured.other()
)]
pub struct QueueMismatch {
    /// The queue whose declaration failed.
    pub queue: String,
    /// The `queue_type` of our configuration.
    pub configured: QueueType,
    /// RabbitMQ's own text (`PRECONDITION_FAILED - inequivalent arg ...`).
    pub broker: String,
}

/// `true` when `error` is a [`QueueMismatch`] from [`Topology::declare`] or
/// [`declare_data_sync_as`]: retrying will not help, the operator must act.
pub fn is_queue_mismatch(error: &lapin::Error) -> bool {
    match error.kind() {
        ErrorKind::IOError(io) => io
            .get_ref()
            .is_some_and(|inner| inner.downcast_ref::<QueueMismatch>().is_some()),
        _ => false,
    }
}

/// Queue TTLs are whole milliseconds; rounding here keeps names and TTLs equal.
fn whole_millis(delay: Duration) -> Duration {
    Duration::from_millis(delay.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_derive_from_the_base_name() {
        let topology = Topology::new("jobs")
            .with_retry_delays([Duration::from_secs(2), Duration::from_secs(1)]);
        assert_eq!(topology.task_queue(), "jobs");
        assert_eq!(topology.dead_letter_queue(), "jobs.dlq");
        assert_eq!(
            topology.queue_names(),
            ["jobs", "jobs.retry.1000ms", "jobs.retry.2000ms", "jobs.dlq"]
        );
    }

    #[test]
    fn delays_double_up_to_the_cap() {
        let delays = exponential_delays(Duration::from_millis(100), Duration::from_millis(500), 6);
        assert_eq!(
            delays,
            [100, 200, 400, 500].map(Duration::from_millis),
            "five retries, the last two capped and merged into one tier"
        );
        assert!(exponential_delays(Duration::from_secs(1), Duration::from_secs(9), 1).is_empty());
    }

    #[test]
    fn failures_past_the_last_tier_stay_on_the_last_tier() {
        let topology = Topology::new("q")
            .with_retry_delays([Duration::from_millis(100), Duration::from_millis(400)]);
        assert_eq!(
            topology.retry_tier(1),
            Some(("q.retry.100ms".into(), Duration::from_millis(100)))
        );
        assert_eq!(
            topology.retry_tier(2).unwrap().1,
            Duration::from_millis(400)
        );
        assert_eq!(
            topology.retry_tier(9).unwrap().1,
            Duration::from_millis(400)
        );
        assert_eq!(Topology::new("q").with_retry_delays([]).retry_tier(1), None);
    }

    #[test]
    fn classic_queues_carry_no_type_and_quorum_queues_dead_letter_at_least_once() {
        let classic = Topology::new("q");
        assert_eq!(classic.task_queue_arguments(), FieldTable::default());
        assert_eq!(classic.dead_letter_queue_arguments(), FieldTable::default());
        let retry = classic.retry_queue_arguments(Duration::from_secs(1));
        assert!(!retry.inner().contains_key("x-queue-type"));
        assert!(!retry.inner().contains_key("x-dead-letter-strategy"));

        let quorum = Topology::new("q").with_queue_type(QueueType::Quorum);
        let main = quorum.task_queue_arguments();
        let main = main.inner();
        assert_eq!(main.get("x-queue-type"), Some(&text("quorum")));
        assert_eq!(
            main.get("x-delivery-limit"),
            Some(&AMQPValue::LongLongInt(DEFAULT_DELIVERY_LIMIT.into()))
        );
        assert_eq!(main.get("x-dead-letter-routing-key"), Some(&text("q.dlq")));
        assert_eq!(
            main.get("x-dead-letter-strategy"),
            Some(&text("at-least-once"))
        );
        assert_eq!(main.get("x-overflow"), Some(&text("reject-publish")));
        let retry = quorum.retry_queue_arguments(Duration::from_secs(1));
        let retry = retry.inner();
        assert_eq!(retry.get("x-dead-letter-routing-key"), Some(&text("q")));
        assert_eq!(
            retry.get("x-dead-letter-strategy"),
            Some(&text("at-least-once"))
        );
        let dlq = quorum.dead_letter_queue_arguments();
        assert_eq!(dlq.inner().len(), 1, "the DLQ only has its type: {dlq:?}");
    }

    #[test]
    fn queue_type_reads_as_lowercase_text() {
        assert_eq!("quorum".parse(), Ok(QueueType::Quorum));
        assert_eq!("classic".parse(), Ok(QueueType::Classic));
        assert!("mirrored".parse::<QueueType>().is_err());
        assert_eq!(QueueType::default(), QueueType::Classic);
    }
}
