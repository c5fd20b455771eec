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

use std::time::Duration;

use lapin::{
    Channel,
    options::{QueueDeclareOptions, QueueDeleteOptions},
    types::{AMQPValue, FieldTable, LongString, ShortString},
};

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
        }
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

    /// Declares the work queue and its DLQ: what a producer needs so that its
    /// messages are routed. Retry tiers are left to the workers, which know
    /// their backoff.
    pub async fn declare_work_queue(&self, channel: &Channel) -> Result<(), lapin::Error> {
        declare_plain(channel, &self.task_queue).await?;
        declare_plain(channel, &self.dead_letter_queue()).await
    }

    /// Declares every queue (idempotent: the same declaration again is a no-op).
    pub async fn declare(&self, channel: &Channel) -> Result<(), lapin::Error> {
        self.declare_work_queue(channel).await?;
        for delay in &self.retry_delays {
            let mut arguments = FieldTable::default();
            arguments.insert(
                "x-message-ttl".into(),
                AMQPValue::LongLongInt(delay.as_millis() as i64),
            );
            arguments.insert(
                "x-dead-letter-exchange".into(),
                AMQPValue::LongString(LongString::from("")),
            );
            arguments.insert(
                "x-dead-letter-routing-key".into(),
                AMQPValue::LongString(LongString::from(self.task_queue.as_str())),
            );
            channel
                .queue_declare(
                    ShortString::from(self.retry_queue(*delay)),
                    QueueDeclareOptions::durable(),
                    arguments,
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

/// Declares a user-event queue (default name [`DATA_SYNC_QUEUE`]): durable,
/// no arguments, so a plain AMQP client declaring it the same way agrees
/// with us instead of failing with `PRECONDITION_FAILED`.
pub async fn declare_data_sync(channel: &Channel, queue: &str) -> Result<(), lapin::Error> {
    declare_plain(channel, queue).await
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

async fn declare_plain(channel: &Channel, queue: &str) -> Result<(), lapin::Error> {
    channel
        .queue_declare(
            ShortString::from(queue),
            QueueDeclareOptions::durable(),
            FieldTable::default(),
        )
        .await
        .map(|_| ())
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
}
