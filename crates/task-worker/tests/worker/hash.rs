//! The `hash` kind (simulated CPU-bound work) through a real worker: done
//! and acked with its duration recorded under its kind, and a payload it
//! refuses dead-lettered at once as `invalid_payload`.

use std::collections::HashMap;

use common::codec::ContentType;
use serde_json::json;
use task_worker::events::TaskOutcome;

use crate::helpers::{TestQueues, TestWorker, WAIT, ops_get, publish_all, task};

#[tokio::test]
async fn hash_tasks_are_done_and_a_bad_payload_is_dead_lettered() {
    // Arrange
    let queues = TestQueues::new().await;
    let mut worker = TestWorker::start(queues.config()).await;
    let good = task("hash", json!({"rounds": 20_000}));
    let bad = task("hash", json!({"rounds": "many"}));

    // Act
    publish_all(&queues, &[good.clone(), bad.clone()], ContentType::Protobuf).await;
    let events = worker.collect_until(WAIT, |e| e.len() == 2).await;

    // Assert
    let outcomes: HashMap<String, TaskOutcome> =
        events.into_iter().map(|e| (e.task_id, e.outcome)).collect();
    assert_eq!(outcomes.get(&good.id), Some(&TaskOutcome::Done));
    assert_eq!(
        outcomes.get(&bad.id),
        Some(&TaskOutcome::DeadLettered {
            reason: "invalid_payload".into()
        })
    );
    queues.wait_for_depth(&queues.dlq(), 1).await;
    assert_eq!(queues.amqp.depth(&queues.queue).await, 0, "both acked");
    let metrics = ops_get(worker.ops_addr, "/metrics").await;
    let timed: f64 = metrics
        .lines()
        .find_map(|line| line.strip_prefix("task_duration_seconds_count{kind=\"hash\"} "))
        .and_then(|count| count.trim().parse().ok())
        .unwrap_or(0.0);
    assert!(
        timed >= 1.0,
        "the hash task's duration is recorded: {metrics}"
    );
    worker.stop().await;
}
