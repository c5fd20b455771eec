//! Dispatch: tasks are done and acked, fair dispatch at prefetch 1, and N
//! handler slots run N tasks at once.

use std::{
    collections::HashSet,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use common::codec::ContentType;
use task_worker::events::TaskOutcome;
use workqueue::task::Task;

use crate::helpers::{
    Concurrency, SlowSleep, TestQueues, TestWorker, WAIT, done_ids, ops_get, publish_all,
    sleep_task,
};

#[tokio::test]
async fn sleep_tasks_are_done_and_acked() {
    // Arrange
    let queues = TestQueues::new().await;
    let mut worker = TestWorker::start(queues.config()).await;
    let tasks: Vec<Task> = (0..5).map(|_| sleep_task(10)).collect();

    // Act
    publish_all(&queues, &tasks, ContentType::Protobuf).await;
    let events = worker.collect_until(WAIT, |e| done_ids(e).len() == 5).await;

    // Assert
    let done: HashSet<String> = done_ids(&events).into_iter().collect();
    let expected: HashSet<String> = tasks.iter().map(|t| t.id.clone()).collect();
    assert_eq!(done, expected);
    assert_eq!(
        queues.amqp.depth(&queues.queue).await,
        0,
        "everything acked"
    );
    let metrics = ops_get(worker.ops_addr, "/metrics").await;
    assert!(
        metrics.contains("# HELP tasks_processed_total "),
        "the worker's own metrics are described: {metrics}"
    );
    assert!(
        metrics.contains("# HELP task_duration_seconds "),
        "{metrics}"
    );
    worker.stop().await;
}

#[tokio::test]
async fn fair_dispatch_gives_the_slow_worker_its_share_not_a_third() {
    // Arrange: three workers at prefetch 1; the third is 5x slower.
    let queues = TestQueues::new().await;
    let mut fast_a = TestWorker::start(queues.config()).await;
    let mut fast_b = TestWorker::start(queues.config()).await;
    let mut slow = TestWorker::start_with(
        queues.config(),
        vec![("sleep", Arc::new(SlowSleep { factor: 5 }))],
    )
    .await;
    // All three consuming before the first task arrives.
    queues.wait_for_consumers(&queues.queue, 3).await;
    let total = 66;
    let tasks: Vec<Task> = (0..total).map(|_| sleep_task(60)).collect();

    // Act
    publish_all(&queues, &tasks, ContentType::Protobuf).await;
    let mut counts = [0usize; 3];
    testkit::eventually(
        &format!("{total} tasks done"),
        Duration::from_secs(60),
        || {
            for (i, worker) in [&mut fast_a, &mut fast_b, &mut slow]
                .into_iter()
                .enumerate()
            {
                while let Ok(event) = worker.events.try_recv() {
                    if event.outcome == TaskOutcome::Done {
                        counts[i] += 1;
                    }
                }
            }
            std::future::ready((counts.iter().sum::<usize>() == total).then_some(()))
        },
    )
    .await;

    // Assert: round-robin would give the slow worker 22 (1/3); fair dispatch
    // about 6 (1/11). Tolerant range: at least one, well under a fifth.
    assert_eq!(counts.iter().sum::<usize>(), total, "{counts:?}");
    let share = counts[2] as f64 / total as f64;
    println!("fairness: slow worker share {share:.3} (counts {counts:?}, ideal 1/11 = 0.091)");
    assert!(counts[2] >= 1, "{counts:?}");
    assert!(
        share < 0.2,
        "slow worker got {share:.3} of the tasks: {counts:?}"
    );
    for worker in [fast_a, fast_b, slow] {
        worker.stop().await;
    }
}

#[tokio::test]
async fn n_handler_slots_really_run_n_tasks_at_once() {
    // Arrange
    let queues = TestQueues::new().await;
    let probe = Arc::new(Concurrency::default());
    let config = task_worker::Config {
        concurrency: 4,
        ..queues.config()
    };
    let mut worker = TestWorker::start_with(config, vec![("sleep", probe.clone())]).await;
    let tasks: Vec<Task> = (0..12).map(|_| sleep_task(300)).collect();

    // Act
    publish_all(&queues, &tasks, ContentType::Json).await;
    let events = worker
        .collect_until(WAIT, |e| done_ids(e).len() == 12)
        .await;

    // Assert
    assert_eq!(done_ids(&events).len(), 12);
    assert_eq!(
        probe.peak.load(Ordering::SeqCst),
        4,
        "four slots, four at once"
    );
    worker.stop().await;
}
