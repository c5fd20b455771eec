//! Restarts: a worker process killed mid-task has its tasks redelivered and
//! done by another; a RabbitMQ restart under a producer and a consumer loses
//! nothing.

use std::{collections::HashSet, time::Duration};

use common::{codec::ContentType, shutdown::Shutdown};
use workqueue::task::Task;

use crate::helpers::{
    RabbitNode, TestQueues, TestWorker, WAIT, WorkerProcess, done_ids, ops_get, publish_all,
    sleep_task,
};

#[tokio::test]
async fn a_worker_process_killed_mid_task_has_its_tasks_redelivered_and_done() {
    // Arrange: the real binary, two slots, two long tasks.
    let queues = TestQueues::new().await;
    let process = WorkerProcess::spawn(&queues, 2);
    process.wait_for_log("task worker consuming").await;
    let long: Vec<Task> = (0..2).map(|_| sleep_task(4_000)).collect();
    publish_all(&queues, &long, ContentType::Protobuf).await;
    // Both taken up by the process's handlers: in progress, unacked.
    let received = format!(r#"messages_received_total{{queue="{}"}} 2"#, queues.queue);
    testkit::eventually("both tasks taken up by the process", WAIT, || async {
        ops_get(process.ops_addr, "/metrics")
            .await
            .contains(&received)
            .then_some(())
    })
    .await;

    // Act
    process.signal("-KILL");
    let (_, done_by_killed) = process.wait(Duration::from_secs(10)).await;
    let mut rescuer = TestWorker::start(queues.config_with_concurrency(2)).await;
    let events = rescuer
        .collect_until(WAIT, |e| done_ids(e).len() == 2)
        .await;

    // Assert
    assert!(
        done_by_killed.is_empty(),
        "killed before finishing: {done_by_killed:?}"
    );
    let done: HashSet<String> = done_ids(&events).into_iter().collect();
    assert_eq!(done, long.iter().map(|t| t.id.clone()).collect());
    assert!(events.iter().all(|e| e.redelivered), "{events:?}");
    rescuer.stop().await;
}

#[tokio::test]
async fn nothing_is_lost_when_rabbitmq_restarts_under_a_producer_and_a_consumer() {
    // Arrange: a node of our own; a worker and a producer on it.
    let node = RabbitNode::start().await;
    let queues = TestQueues::on(&node.url(), 5, Duration::from_millis(100)).await;
    let mut worker = TestWorker::start(queues.config_with_concurrency(2)).await;
    let shutdown = Shutdown::new();
    let publisher = queues.publisher(ContentType::Protobuf, &shutdown);
    let tasks: Vec<Task> = (0..120).map(|_| sleep_task(20)).collect();
    // Proof that the restart happened: the publisher saw the connection drop.
    let dropped = {
        let mut connected = publisher.connected();
        tokio::spawn(async move {
            let _ = connected.wait_for(|up| *up).await;
            connected.wait_for(|up| !*up).await.is_ok()
        })
    };

    // Act: publish steadily; restart the broker a third of the way in.
    let producer = {
        let publisher = publisher.clone();
        let tasks = tasks.clone();
        tokio::spawn(async move {
            let mut failed = 0;
            for task in &tasks {
                if publisher.publish(task).await.is_err() {
                    failed += 1;
                }
                // The pacing is the point: a steady stream that the restart
                // cuts through, not one burst before it.
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            failed
        })
    };
    testkit::eventually("a third of the tasks confirmed", WAIT, || {
        std::future::ready((publisher.stats().confirmed() >= 40).then_some(()))
    })
    .await;
    node.stop();
    node.boot().await;
    let failed = producer.await.unwrap();
    let events = worker
        .collect_until(Duration::from_secs(60), |e| {
            done_ids(e).into_iter().collect::<HashSet<_>>().len() == tasks.len()
        })
        .await;

    // Assert
    assert_eq!(failed, 0, "every publish confirmed in the end");
    assert!(dropped.await.unwrap(), "the broker restart was seen");
    assert_eq!(publisher.stats().confirmed(), 120);
    let done: HashSet<String> = done_ids(&events).into_iter().collect();
    let missing: Vec<&String> = tasks
        .iter()
        .map(|t| &t.id)
        .filter(|id| !done.contains(*id))
        .collect();
    assert!(missing.is_empty(), "lost across the restart: {missing:?}");
    shutdown.trigger();
    worker.stop().await;
    drop(queues);
}
