//! Graceful shutdown: SIGTERM under load finishes and acks what is in
//! flight and hands the rest back; a task longer than the grace period is
//! abandoned unacked and redelivered.

use std::{collections::HashSet, time::Duration};

use common::codec::ContentType;
use tokio::time::Instant;
use workqueue::task::Task;

use crate::helpers::{
    TestQueues, TestWorker, WAIT, WorkerProcess, done_ids, publish_all, sleep_task,
};

#[tokio::test]
async fn sigterm_under_load_loses_nothing_and_does_nothing_twice() {
    // Arrange
    let queues = TestQueues::new().await;
    let process = WorkerProcess::spawn(&queues, 4);
    process.wait_for_log("task worker consuming").await;
    let tasks: Vec<Task> = (0..40).map(|_| sleep_task(250)).collect();
    publish_all(&queues, &tasks, ContentType::Protobuf).await;
    // Under load: some done, more in flight and waiting.
    testkit::eventually("4 tasks done by the process", WAIT, || {
        std::future::ready((process.done_ids().len() >= 4).then_some(()))
    })
    .await;

    // Act
    process.signal("-TERM");
    let (status, done_by_stopped) = process.wait(Duration::from_secs(25)).await;
    let mut rest = TestWorker::start(queues.config_with_concurrency(4)).await;
    let left = 40 - done_by_stopped.len();
    let events = rest
        .collect_until(WAIT, |e| done_ids(e).len() == left)
        .await;

    // Assert
    assert!(status.success(), "clean exit: {status:?}");
    assert!(
        !done_by_stopped.is_empty() && left > 0,
        "stopped mid-run ({} done)",
        done_by_stopped.len()
    );
    let mut all = done_by_stopped.clone();
    all.extend(done_ids(&events));
    let unique: HashSet<&String> = all.iter().collect();
    assert_eq!(all.len(), unique.len(), "a task was done twice");
    assert_eq!(unique.len(), 40, "a task was lost");
    // Deliveries prefetched but not started were handed back (redelivered
    // flag set); none of them had been done by the stopped process.
    rest.stop().await;
}

#[tokio::test]
async fn a_task_longer_than_the_grace_period_is_abandoned_and_redelivered() {
    // Arrange: a 1 s grace period and a 6 s task in progress.
    let queues = TestQueues::new().await;
    let mut first = TestWorker::start(task_worker::Config {
        shutdown_grace: Duration::from_secs(1),
        ..queues.config()
    })
    .await;
    let long = sleep_task(6_000);
    publish_all(&queues, std::slice::from_ref(&long), ContentType::Json).await;
    // Taken up: no longer ready in the queue.
    queues.wait_for_depth(&queues.queue, 0).await;

    // Act
    let started = Instant::now();
    first.shutdown.trigger();
    tokio::time::timeout(Duration::from_secs(15), &mut first.handle)
        .await
        .expect("the worker returns soon after its grace period")
        .unwrap()
        .unwrap();
    let stopped_after = started.elapsed();
    let mut second = TestWorker::start(queues.config()).await;
    let events = second
        .collect_until(WAIT, |e| !done_ids(e).is_empty())
        .await;

    // Assert
    assert!(
        stopped_after < Duration::from_secs(5),
        "did not wait for the task: {stopped_after:?}"
    );
    assert_eq!(done_ids(&events).as_slice(), std::slice::from_ref(&long.id));
    assert!(events[0].redelivered, "unacked, so RabbitMQ redelivered it");
    second.stop().await;
}
