//! Node loss on a 3-node RabbitMQ cluster: 10,000 confirmed tasks on a
//! quorum work queue, the node leading it SIGKILLed while a worker consumes
//! and brought back: every task is done, none lost, and the redeliveries of
//! the loss are caught by the worker's idempotency store (counted). Then
//! the node a publisher is connected to is SIGKILLed mid-publish: every
//! publish still ends confirmed, and every confirmed task is done.
//!
//! Slow (three nodes boot and join, ~30 s before the first task), so it is
//! `#[ignore]`d in the normal suite and run by `scripts/test.sh --cluster`.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use common::{config::SecretUrl, shutdown::Shutdown};
use lapin::{Connection, ConnectionProperties};
use task_worker::{
    Application, Config,
    events::{TaskEvent, TaskOutcome},
};
use testkit::{RabbitCluster, unique};
use tokio::sync::broadcast;
use workqueue::{
    publisher::{PublisherConfig, TaskPublisher},
    task::Task,
    topology::{QueueType, declare_data_sync_as},
};

use crate::helpers::sleep_task;

const TASKS: usize = 10_000;
/// Published while the publisher's node is killed.
const MORE_TASKS: usize = 3_000;

/// Every event the worker reports, gathered by a task of its own so the
/// broadcast never lags while the test kills and restarts nodes.
fn gather(mut events: broadcast::Receiver<TaskEvent>) -> Arc<Mutex<Vec<(Instant, TaskEvent)>>> {
    let seen = Arc::new(Mutex::new(Vec::with_capacity(TASKS * 2)));
    let sink = seen.clone();
    tokio::spawn(async move {
        loop {
            match events.recv().await {
                Ok(event) => sink.lock().unwrap().push((Instant::now(), event)),
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    panic!("the test lost {n} worker events")
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    });
    seen
}

fn done(seen: &Mutex<Vec<(Instant, TaskEvent)>>) -> usize {
    seen.lock()
        .unwrap()
        .iter()
        .filter(|(_, e)| e.outcome == TaskOutcome::Done)
        .count()
}

/// The cluster's urls with node `leader` third: the publisher's one
/// connection moved `connection::connect`'s process-wide rotation past the
/// first node of a list, the worker's start-up check
/// (`workqueue::preflight`) takes the second, so the worker's consuming
/// connection lands on the third.
fn leader_third(cluster: &RabbitCluster, leader: usize) -> String {
    let size = cluster.size();
    (0..size)
        .map(|offset| cluster.url((leader + 2 * size - 2 + offset) % size))
        .collect::<Vec<_>>()
        .join(",")
}

/// `step` within `limit`, or the test fails naming `what`: no await of
/// this test may hang it (a hang once showed nothing of where it was).
async fn within<T>(what: &str, limit: Duration, step: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(limit, step).await {
        Ok(value) => value,
        Err(_) => panic!("timed out after {limit:?}: {what}"),
    }
}

async fn wait_until(what: &str, within: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "boots a 3-node RabbitMQ cluster: run with scripts/test.sh --cluster"]
async fn killing_the_leader_of_a_quorum_work_queue_loses_no_task() {
    common::telemetry::init_for_tests();
    let booting = Instant::now();
    let cluster = RabbitCluster::start(3).await;
    let boot_time = booting.elapsed();

    let suffix = unique();
    let config = Config {
        amqp_url: SecretUrl::new(cluster.urls()),
        queue: format!("test.cluster.{suffix}"),
        data_sync_queue: format!("test.cluster.sync.{suffix}"),
        queue_type: QueueType::Quorum,
        concurrency: 4,
        prefetch: 50,
        retry_base_delay: Duration::from_millis(100),
        retry_max_delay: Duration::from_millis(800),
        ops_addr: "127.0.0.1:0".parse().unwrap(),
        ..Config::default()
    };
    // Declared through node 0: RabbitMQ places a new quorum queue's leader
    // on the node the client is connected to.
    let connection = Connection::connect(&cluster.url(0), ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    config.topology().declare(&channel).await.unwrap();
    declare_data_sync_as(&channel, &config.data_sync_queue, QueueType::Quorum)
        .await
        .unwrap();
    let _ = connection.close(200, "declared".into()).await;

    // Arrange: 10,000 tasks, every one confirmed by the cluster.
    let publishing = Instant::now();
    let publisher_stop = Shutdown::new();
    let publisher = TaskPublisher::start(
        PublisherConfig {
            amqp_url: SecretUrl::new(cluster.urls()),
            queue: config.queue.clone(),
            queue_type: QueueType::Quorum,
            publish_timeout: Duration::from_secs(60),
            ..PublisherConfig::default()
        },
        publisher_stop.clone(),
    );
    // 2 ms each: the kill lands while most of them are still queued.
    let tasks: Vec<Task> = (0..TASKS).map(|_| sleep_task(2)).collect();
    let results = within(
        "publishing 10,000 tasks",
        Duration::from_secs(300),
        futures::future::join_all(tasks.iter().map(|t| publisher.publish(t))),
    )
    .await;
    assert!(results.iter().all(Result::is_ok), "every task confirmed");
    let publish_time = publishing.elapsed();
    within(
        "closing the publisher",
        Duration::from_secs(30),
        publisher.close(),
    )
    .await;
    publisher_stop.trigger();
    let published: HashSet<String> = tasks.iter().map(|t| t.id.clone()).collect();

    // Act: a worker on the whole cluster, connected to the leader (so the
    // kill takes its connection too); kill the leader once it is busy.
    let leader = cluster
        .leader_of(&config.queue)
        .await
        .expect("the cluster names the queue's leader");
    let worker_config = Config {
        amqp_url: SecretUrl::new(leader_third(&cluster, leader)),
        ..config.clone()
    };
    let worker = within(
        "the worker starts",
        Duration::from_secs(60),
        Application::build(worker_config),
    )
    .await
    .unwrap();
    let seen = gather(worker.subscribe());
    let shutdown = Shutdown::new();
    let handle = tokio::spawn(worker.run_until_stopped(shutdown.clone()));
    wait_until(
        "1,000 tasks done before the kill",
        Duration::from_secs(120),
        || done(&seen) >= 1_000,
    )
    .await;
    let done_at_kill = done(&seen);
    let killed_at = Instant::now();
    cluster.kill(leader);
    // More tasks done than the worker could hold unacked at the kill
    // (concurrency × prefetch): consuming resumed on the survivors.
    let held = config.concurrency * usize::from(config.prefetch);
    wait_until(
        "consuming resumed after the kill",
        Duration::from_secs(60),
        || done(&seen) > done_at_kill + held,
    )
    .await;
    let resumed_after = killed_at.elapsed();
    let done_before_restart = done(&seen);
    within(
        "restarting the killed node",
        Duration::from_secs(120),
        cluster.restart(leader),
    )
    .await;
    wait_until("every task done", Duration::from_secs(300), || {
        done(&seen) >= TASKS
    })
    .await;
    let total_time = killed_at.elapsed();

    // Then lose the node a publisher is connected to, mid-publish: every
    // publish still ends confirmed (re-sent on a survivor), and the worker
    // gets every one of them.
    let publisher_stop = Shutdown::new();
    let publisher = TaskPublisher::start(
        PublisherConfig {
            amqp_url: SecretUrl::new(cluster.urls()),
            queue: config.queue.clone(),
            queue_type: QueueType::Quorum,
            publish_timeout: Duration::from_secs(90),
            ..PublisherConfig::default()
        },
        publisher_stop.clone(),
    );
    within(
        "the second publisher connects",
        Duration::from_secs(60),
        publisher.connected().wait_for(|connected| *connected),
    )
    .await
    .unwrap();
    let publishers_node = cluster
        .node_serving("task-producer")
        .await
        .expect("the cluster lists the publisher's connection");
    // One node lost at a time: the one restarted above must have its queue
    // members back before the next goes (otherwise this is the loss of two
    // of three, and the queue nacks every publish until one returns).
    cluster
        .await_quorum_without(publishers_node, Duration::from_secs(120))
        .await
        .expect("the restarted node's queue members are back");
    let more: Vec<Task> = (0..MORE_TASKS).map(|_| sleep_task(2)).collect();
    // In batches with pauses, so the kill lands mid-publish.
    let publishing = {
        let publisher = publisher.clone();
        let more = more.clone();
        tokio::spawn(async move {
            let mut results = Vec::with_capacity(more.len());
            for batch in more.chunks(50) {
                let sent = futures::future::join_all(batch.iter().map(|t| publisher.publish(t)));
                results.extend(sent.await);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            results
        })
    };
    wait_until("500 more tasks confirmed", Duration::from_secs(60), || {
        publisher.stats().confirmed() >= 500
    })
    .await;
    let confirmed_at_kill = publisher.stats().confirmed();
    cluster.kill(publishers_node);
    assert!(
        confirmed_at_kill < MORE_TASKS as u64,
        "the kill came after the last confirm"
    );
    let results = within(
        "publishing across the node loss",
        Duration::from_secs(180),
        publishing,
    )
    .await
    .unwrap();
    let failed = results.iter().filter(|r| r.is_err()).count();
    assert_eq!(
        failed, 0,
        "publishes not confirmed across the loss: {results:?}"
    );
    let resent = publisher.stats().resent();
    within(
        "closing the publisher",
        Duration::from_secs(30),
        publisher.close(),
    )
    .await;
    publisher_stop.trigger();
    let published: HashSet<String> = published
        .into_iter()
        .chain(more.iter().map(|t| t.id.clone()))
        .collect();
    wait_until("every task done", Duration::from_secs(300), || {
        done(&seen) >= TASKS + MORE_TASKS
    })
    .await;
    // Whatever the loss hands back late comes now, as a duplicate.
    tokio::time::sleep(Duration::from_secs(2)).await;
    shutdown.trigger();
    within("the worker stops", Duration::from_secs(60), handle)
        .await
        .unwrap()
        .unwrap();

    // Assert: every published task done exactly once, nothing dead-lettered.
    let events: Vec<TaskEvent> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|(_, e)| e.clone())
        .collect();
    let done_ids: Vec<&String> = events
        .iter()
        .filter(|e| e.outcome == TaskOutcome::Done)
        .map(|e| &e.task_id)
        .collect();
    let unique_done: HashSet<String> = done_ids.iter().map(|id| id.to_string()).collect();
    let missing = published.difference(&unique_done).count();
    assert_eq!(missing, 0, "tasks lost");
    assert_eq!(
        done_ids.len(),
        TASKS + MORE_TASKS,
        "a task ran twice (not caught)"
    );
    let dead_lettered = events
        .iter()
        .filter(|e| matches!(e.outcome, TaskOutcome::DeadLettered { .. }))
        .count();
    assert_eq!(dead_lettered, 0, "tasks dead-lettered");
    let duplicates = events
        .iter()
        .filter(|e| e.outcome == TaskOutcome::Duplicate)
        .count();
    let redelivered = events.iter().filter(|e| e.redelivered).count();
    assert!(
        redelivered > 0,
        "the worker's own connection went with the node: its unacked tasks come back"
    );
    eprintln!(
        "cluster: boot+join {boot_time:?}; published {TASKS} confirmed in {publish_time:?}; \
         killed leader node {leader} after {done_at_kill} done; consuming resumed \
         {resumed_after:?} after the kill ({done_before_restart} done before the restart); \
         all done {total_time:?} after the kill; redelivered {redelivered}, duplicates caught \
         {duplicates}, lost 0; then killed the publisher's node {publishers_node} mid-publish \
         ({confirmed_at_kill} confirmed then): {MORE_TASKS} confirmed ({resent} re-sent), all done"
    );
}
