//! Idempotency: a redelivered task that was already done is acked, not run
//! again — by the same worker, by another worker of the pool through Redis,
//! and on the worker's own memory while Redis is down.

use std::time::Duration;

use common::{codec::ContentType, config::SecretUrl};
use task_worker::events::TaskOutcome;

use crate::helpers::{TestQueues, TestWorker, WAIT, done_ids, ops_get, publish_all, sleep_task};

/// Publishes one task twice (same id, as after a lost ack) and returns the
/// outcomes `worker` announces for the two deliveries.
async fn one_task_sent_twice(queues: &TestQueues, worker: &mut TestWorker) -> Vec<TaskOutcome> {
    let once = sleep_task(1);
    publish_all(queues, std::slice::from_ref(&once), ContentType::Json).await;
    publish_all(queues, std::slice::from_ref(&once), ContentType::Json).await;
    let events = worker.collect_until(WAIT, |e| e.len() == 2).await;
    events.into_iter().map(|e| e.outcome).collect()
}

/// The machine's Redis (it keeps nothing on disk); `TEST_REDIS_URL` overrides.
fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

#[tokio::test]
async fn a_redelivered_finished_task_is_not_done_twice() {
    // Arrange
    let queues = TestQueues::new().await;
    let mut worker = TestWorker::start(queues.config()).await;

    // Act: the same task (same id) arrives twice, as after a lost ack.
    let outcomes = one_task_sent_twice(&queues, &mut worker).await;

    // Assert
    assert_eq!(outcomes, [TaskOutcome::Done, TaskOutcome::Duplicate]);
    worker.stop().await;
}

#[tokio::test]
async fn a_task_one_worker_finished_is_not_done_again_by_another() {
    // Arrange: two workers, one after the other (each with a memory of its
    // own), sharing Redis under a key prefix of this test's; keys expire.
    let queues = TestQueues::new().await;
    let config = task_worker::Config {
        redis_url: Some(SecretUrl::new(redis_url())),
        finished_key_prefix: format!("test:{}:", queues.queue),
        finished_ttl: Duration::from_secs(60),
        ..queues.config()
    };
    let once = sleep_task(1);
    let mut first = TestWorker::start(config.clone()).await;
    publish_all(&queues, std::slice::from_ref(&once), ContentType::Json).await;
    let events = first.collect_until(WAIT, |e| !e.is_empty()).await;
    assert_eq!(done_ids(&events), std::slice::from_ref(&once.id));
    first.stop().await;

    // Act: the same task arrives again, now at the other worker (as when the
    // first one's ack was lost with its connection).
    let mut second = TestWorker::start(config).await;
    publish_all(&queues, std::slice::from_ref(&once), ContentType::Json).await;
    let events = second.collect_until(WAIT, |e| !e.is_empty()).await;

    // Assert
    let outcomes: Vec<&TaskOutcome> = events.iter().map(|e| &e.outcome).collect();
    assert_eq!(outcomes, [&TaskOutcome::Duplicate]);
    second.stop().await;
}

#[tokio::test]
async fn a_worker_whose_redis_is_down_keeps_working_on_its_own_memory() {
    // Arrange: Redis at a port where nothing listens.
    let queues = TestQueues::new().await;
    let config = task_worker::Config {
        redis_url: Some(SecretUrl::new(format!("redis://{}", testkit::free_addr()))),
        ..queues.config()
    };
    let mut worker = TestWorker::start(config).await;

    // Act
    let outcomes = one_task_sent_twice(&queues, &mut worker).await;

    // Assert: done once, the redelivery still recognised.
    assert_eq!(outcomes, [TaskOutcome::Done, TaskOutcome::Duplicate]);
    let metrics = ops_get(worker.ops_addr, "/metrics").await;
    assert!(
        metrics.contains("idempotency_store_errors_total"),
        "{metrics}"
    );
    assert!(
        metrics.contains("# HELP idempotency_store_errors_total "),
        "described: {metrics}"
    );
    worker.stop().await;
}
