//! Worker tests against the real RabbitMQ (and a node of their own for the
//! restart), the real binary for the kill and SIGTERM cases.

mod helpers;

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use common::{
    circuit_breaker::{BreakerConfig, BreakerState},
    codec::ContentType,
    shutdown::Shutdown,
    task::Task,
};
use helpers::{
    Concurrency, Flaky, RabbitNode, SlowSleep, TestQueues, TestWorker, UserServiceApp,
    WorkerProcess, done_ids, free_local_addr, http_get, sleep_task, task, wait_for_consumers,
};
use lapin::{
    BasicProperties,
    options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable},
};
use serde_json::json;
use task_producer::topology::headers;
use task_worker::events::TaskOutcome;

async fn publish_all(queues: &TestQueues, tasks: &[Task], content_type: ContentType) {
    let shutdown = Shutdown::new();
    let publisher = queues.publisher(content_type, &shutdown);
    let results = futures::future::join_all(tasks.iter().map(|t| publisher.publish(t))).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    shutdown.trigger();
}

fn header<'a>(properties: &'a BasicProperties, name: &str) -> Option<&'a AMQPValue> {
    properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(name))
}

fn header_text(properties: &BasicProperties, name: &str) -> String {
    match header(properties, name) {
        Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        other => panic!("header {name}: {other:?}"),
    }
}

#[tokio::test]
async fn sleep_tasks_are_done_and_acked() {
    // Arrange
    let queues = TestQueues::new().await;
    let mut worker = TestWorker::start(queues.config()).await;
    let tasks: Vec<Task> = (0..5).map(|_| sleep_task(10)).collect();

    // Act
    publish_all(&queues, &tasks, ContentType::Protobuf).await;
    let events = worker
        .collect_until(Duration::from_secs(30), |e| done_ids(e).len() == 5)
        .await;

    // Assert
    let done: HashSet<String> = done_ids(&events).into_iter().collect();
    let expected: HashSet<String> = tasks.iter().map(|t| t.id.clone()).collect();
    assert_eq!(done, expected);
    assert_eq!(queues.depth(&queues.queue).await, 0, "everything acked");
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
    tokio::time::sleep(Duration::from_secs(1)).await;
    let total = 66;
    let tasks: Vec<Task> = (0..total).map(|_| sleep_task(60)).collect();

    // Act
    publish_all(&queues, &tasks, ContentType::Protobuf).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut counts = [0usize; 3];
    while counts.iter().sum::<usize>() < total && Instant::now() < deadline {
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
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

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
        .collect_until(Duration::from_secs(30), |e| done_ids(e).len() == 12)
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

#[tokio::test]
async fn a_transient_failure_is_retried_then_succeeds() {
    // Arrange
    let queues = TestQueues::new().await;
    let mut worker =
        TestWorker::start_with(queues.config(), vec![("flaky", Arc::new(Flaky::new(2)))]).await;
    let flaky = task("flaky", json!({}));

    // Act
    publish_all(&queues, std::slice::from_ref(&flaky), ContentType::Json).await;
    let events = worker
        .collect_until(Duration::from_secs(30), |e| !done_ids(e).is_empty())
        .await;

    // Assert
    let outcomes: Vec<(u32, &TaskOutcome)> =
        events.iter().map(|e| (e.attempt, &e.outcome)).collect();
    assert_eq!(outcomes.len(), 3, "{outcomes:?}");
    assert!(
        matches!(outcomes[0], (1, TaskOutcome::Retried { .. })),
        "{outcomes:?}"
    );
    assert!(
        matches!(outcomes[1], (2, TaskOutcome::Retried { .. })),
        "{outcomes:?}"
    );
    assert_eq!(outcomes[2], (3, &TaskOutcome::Done));
    assert_eq!(queues.depth(&queues.dlq()).await, 0);
    worker.stop().await;
}

#[tokio::test]
async fn a_poison_task_is_dead_lettered_after_max_attempts_with_the_delays_respected() {
    // Arrange: 3 attempts, retries after 300 ms then 600 ms.
    let queues = TestQueues::on(&helpers::amqp_url(), 3, Duration::from_millis(300)).await;
    let mut worker = TestWorker::start_with(
        queues.config(),
        vec![("flaky", Arc::new(Flaky::new(u32::MAX)))],
    )
    .await;
    let poison = task("flaky", json!({"n": 1}));

    // Act
    publish_all(&queues, std::slice::from_ref(&poison), ContentType::Json).await;
    let mut times = Vec::new();
    let mut outcomes = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while outcomes.len() < 3 && Instant::now() < deadline {
        if let Ok(Ok(event)) =
            tokio::time::timeout(Duration::from_millis(200), worker.events.recv()).await
        {
            times.push(event.received_at);
            outcomes.push(event.outcome);
        }
    }

    // Assert
    assert_eq!(outcomes.len(), 3, "{outcomes:?}");
    assert!(
        matches!(outcomes[0], TaskOutcome::Retried { delay } if delay == Duration::from_millis(300))
    );
    assert!(
        matches!(outcomes[1], TaskOutcome::Retried { delay } if delay == Duration::from_millis(600))
    );
    assert_eq!(
        outcomes[2],
        TaskOutcome::DeadLettered {
            reason: "max_attempts".into()
        }
    );
    assert!(
        times[1] - times[0] >= Duration::from_millis(300),
        "first retry too early"
    );
    assert!(
        times[2] - times[1] >= Duration::from_millis(600),
        "second retry too early"
    );
    assert_eq!(queues.wait_for_depth(&queues.dlq(), 1).await, 1);
    let letter = queues.get(&queues.dlq()).await.unwrap();
    let properties = &letter.delivery.properties;
    assert_eq!(header_text(properties, headers::REASON), "max_attempts");
    assert!(header_text(properties, headers::ERROR).contains("planned failure 3"));
    assert_eq!(
        header(properties, headers::ATTEMPTS),
        Some(&AMQPValue::LongInt(3))
    );
    assert!(matches!(
        header(properties, headers::DEAD_LETTERED_AT),
        Some(AMQPValue::LongLongInt(ms)) if *ms > 0
    ));
    let body: Task = serde_json::from_slice(&letter.delivery.data).unwrap();
    assert_eq!(body.id, poison.id, "the original body, untouched");
    worker.stop().await;
}

#[tokio::test]
async fn unknown_kinds_undecodable_and_oversize_bodies_go_to_the_dlq_at_once() {
    // Arrange
    let queues = TestQueues::new().await;
    let mut worker = TestWorker::start(queues.config()).await;
    let unknown = task("teleport", json!({"to": "mars"}));
    let channel = queues.connection.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();

    // Act
    publish_all(
        &queues,
        std::slice::from_ref(&unknown),
        ContentType::Protobuf,
    )
    .await;
    channel
        .basic_publish(
            "".into(),
            queues.queue.as_str().into(),
            BasicPublishOptions::default(),
            b"temperature=25.3",
            BasicProperties::default().with_message_id("garbage-1".into()),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    channel
        .basic_publish(
            "".into(),
            queues.queue.as_str().into(),
            BasicPublishOptions::default(),
            &vec![b'{'; 2 * 1024 * 1024],
            BasicProperties::default().with_message_id("oversize-1".into()),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let events = worker
        .collect_until(Duration::from_secs(30), |e| e.len() == 3)
        .await;

    // Assert
    let reasons: HashMap<String, (u32, TaskOutcome)> = events
        .into_iter()
        .map(|e| (e.task_id, (e.attempt, e.outcome)))
        .collect();
    assert_eq!(
        reasons[&unknown.id],
        (
            1,
            TaskOutcome::DeadLettered {
                reason: "unknown_kind".into()
            }
        )
    );
    assert_eq!(
        reasons["garbage-1"],
        (
            1,
            TaskOutcome::DeadLettered {
                reason: "invalid_json".into()
            }
        )
    );
    assert_eq!(
        reasons["oversize-1"],
        (
            1,
            TaskOutcome::DeadLettered {
                reason: "too_large".into()
            }
        )
    );
    assert_eq!(queues.wait_for_depth(&queues.dlq(), 3).await, 3);
    let mut dlq_reasons = HashSet::new();
    while let Some(letter) = queues.get(&queues.dlq()).await {
        dlq_reasons.insert(header_text(&letter.delivery.properties, headers::REASON));
    }
    assert_eq!(
        dlq_reasons,
        HashSet::from([
            "unknown_kind".into(),
            "invalid_json".into(),
            "too_large".into()
        ])
    );
    worker.stop().await;
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

/// Publishes one task twice (same id, as after a lost ack) and returns the
/// outcomes `worker` announces for the two deliveries.
async fn one_task_sent_twice(queues: &TestQueues, worker: &mut TestWorker) -> Vec<TaskOutcome> {
    let once = sleep_task(1);
    publish_all(queues, std::slice::from_ref(&once), ContentType::Json).await;
    publish_all(queues, std::slice::from_ref(&once), ContentType::Json).await;
    let events = worker
        .collect_until(Duration::from_secs(30), |e| e.len() == 2)
        .await;
    events.into_iter().map(|e| e.outcome).collect()
}

/// The machine's Redis (it keeps nothing on disk); `TEST_REDIS_URL` overrides.
fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

#[tokio::test]
async fn a_task_one_worker_finished_is_not_done_again_by_another() {
    // Arrange: two workers, one after the other (each with a memory of its
    // own), sharing Redis under a key prefix of this test's; keys expire.
    let queues = TestQueues::new().await;
    let config = task_worker::Config {
        redis_url: Some(common::config::SecretUrl::new(redis_url())),
        finished_key_prefix: format!("test:{}:", queues.queue),
        finished_ttl: Duration::from_secs(60),
        ..queues.config()
    };
    let once = sleep_task(1);
    let mut first = TestWorker::start(config.clone()).await;
    publish_all(&queues, std::slice::from_ref(&once), ContentType::Json).await;
    let events = first
        .collect_until(Duration::from_secs(30), |e| !e.is_empty())
        .await;
    assert_eq!(done_ids(&events), std::slice::from_ref(&once.id));
    first.stop().await;

    // Act: the same task arrives again, now at the other worker (as when the
    // first one's ack was lost with its connection).
    let mut second = TestWorker::start(config).await;
    publish_all(&queues, std::slice::from_ref(&once), ContentType::Json).await;
    let events = second
        .collect_until(Duration::from_secs(30), |e| !e.is_empty())
        .await;

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
        redis_url: Some(common::config::SecretUrl::new(format!(
            "redis://{}",
            free_local_addr()
        ))),
        ..queues.config()
    };
    let mut worker = TestWorker::start(config).await;

    // Act
    let outcomes = one_task_sent_twice(&queues, &mut worker).await;

    // Assert: done once, the redelivery still recognised.
    assert_eq!(outcomes, [TaskOutcome::Done, TaskOutcome::Duplicate]);
    let metrics = http_get(worker.ops_addr, "/metrics").await;
    assert!(
        metrics.contains("idempotency_store_errors_total"),
        "{metrics}"
    );
    worker.stop().await;
}

#[tokio::test]
async fn a_seed_style_client_interoperates() {
    // Arrange: a worker, then the seed's client: raw lapin, durable declare,
    // persistent JSON without a content type.
    let queues = TestQueues::new().await;
    let mut worker = TestWorker::start(queues.config()).await;
    let seed = queues.connection.create_channel().await.unwrap();
    seed.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    for queue in [&queues.queue, &queues.data_sync] {
        seed.queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions::durable(),
            FieldTable::default(),
        )
        .await
        .expect("no PRECONDITION_FAILED against our topology");
    }
    let persistent = BasicProperties::default().with_delivery_mode(2);

    // Act
    seed.basic_publish(
        "".into(),
        queues.queue.as_str().into(),
        BasicPublishOptions::default(),
        br#"{"id": "seed-task-1", "kind": "sleep", "payload": {"ms": 5}}"#,
        persistent.clone(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    seed.basic_publish(
        "".into(),
        queues.data_sync.as_str().into(),
        BasicPublishOptions::default(),
        br#"{"event": "user_created", "data": {"id": 1001, "name": "Alice"}}"#,
        persistent,
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let events = worker
        .collect_until(Duration::from_secs(30), |e| !done_ids(e).is_empty())
        .await;

    // Assert
    assert_eq!(done_ids(&events), ["seed-task-1"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut contacts = String::new();
    while Instant::now() < deadline {
        contacts = http_get(worker.ops_addr, "/contacts").await;
        if contacts.contains("Alice") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let contacts: serde_json::Value = serde_json::from_str(&contacts).unwrap();
    assert_eq!(contacts[0]["id"], "1001");
    assert_eq!(contacts[0]["name"], "Alice");
    worker.stop().await;
}

#[tokio::test]
async fn a_worker_process_killed_mid_task_has_its_tasks_redelivered_and_done() {
    // Arrange: the real binary, two slots, two long tasks.
    let queues = TestQueues::new().await;
    let process = WorkerProcess::spawn(&queues, 2);
    process.wait_for_log("task worker consuming").await;
    let long: Vec<Task> = (0..2).map(|_| sleep_task(4_000)).collect();
    publish_all(&queues, &long, ContentType::Protobuf).await;
    // Both taken (none ready) = both in progress, unacked, in the process.
    assert_eq!(queues.wait_for_depth(&queues.queue, 0).await, 0);
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Act
    process.signal("-KILL");
    let (_, done_by_killed) = process.wait(Duration::from_secs(10)).await;
    let mut rescuer = TestWorker::start(task_worker::Config {
        concurrency: 2,
        ..queues.config()
    })
    .await;
    let events = rescuer
        .collect_until(Duration::from_secs(30), |e| done_ids(e).len() == 2)
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
async fn sigterm_under_load_loses_nothing_and_does_nothing_twice() {
    // Arrange
    let queues = TestQueues::new().await;
    let process = WorkerProcess::spawn(&queues, 4);
    process.wait_for_log("task worker consuming").await;
    let tasks: Vec<Task> = (0..40).map(|_| sleep_task(250)).collect();
    publish_all(&queues, &tasks, ContentType::Protobuf).await;
    // Under load: some done, more in flight and waiting.
    let deadline = Instant::now() + Duration::from_secs(30);
    while process.done_ids().len() < 4 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Act
    process.signal("-TERM");
    let (status, done_by_stopped) = process.wait(Duration::from_secs(25)).await;
    let mut rest = TestWorker::start(task_worker::Config {
        concurrency: 4,
        ..queues.config()
    })
    .await;
    let left = 40 - done_by_stopped.len();
    let events = rest
        .collect_until(Duration::from_secs(30), |e| done_ids(e).len() == left)
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
async fn nothing_is_lost_when_rabbitmq_restarts_under_a_producer_and_a_consumer() {
    // Arrange: a node of our own; a worker and a producer on it.
    let node = RabbitNode::start().await;
    let queues = TestQueues::on(&node.url(), 5, Duration::from_millis(100)).await;
    let mut worker = TestWorker::start(task_worker::Config {
        concurrency: 2,
        ..queues.config()
    })
    .await;
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
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            failed
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
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

#[tokio::test]
async fn notify_looks_the_owner_up_and_dead_letters_an_unknown_one() {
    // Arrange: the real user-service with one user; its data_sync events
    // feed the worker's contact directory.
    let queues = TestQueues::new().await;
    let users = UserServiceApp::start("127.0.0.1:0".parse().unwrap(), &queues).await;
    users
        .create_user("u-notify-1", "Alice", "alice@example.com")
        .await;
    let mut worker = TestWorker::start(task_worker::Config {
        user_service_url: users.url(),
        ..queues.config()
    })
    .await;
    let known = task(
        "notify",
        json!({"owner_id": "u-notify-1", "alert_id": "a-1", "sensor_id": "temp-001",
               "kind": "temperature", "severity": "critical", "value": 41.5, "threshold": 40.0}),
    );
    let unknown = task(
        "notify",
        json!({"owner_id": "u-nobody", "severity": "warning"}),
    );

    // Act
    publish_all(
        &queues,
        &[known.clone(), unknown.clone()],
        ContentType::Protobuf,
    )
    .await;
    let events = worker
        .collect_until(Duration::from_secs(30), |e| e.len() == 2)
        .await;

    // Assert
    let outcomes: HashMap<String, TaskOutcome> =
        events.into_iter().map(|e| (e.task_id, e.outcome)).collect();
    assert_eq!(outcomes[&known.id], TaskOutcome::Done);
    assert_eq!(
        outcomes[&unknown.id],
        TaskOutcome::DeadLettered {
            reason: "not_found".into()
        },
        "a missing owner is permanent, not a retry loop"
    );
    let letter = queues.get(&queues.dlq()).await.expect("dead letter");
    assert_eq!(
        header_text(&letter.delivery.properties, headers::REASON),
        "not_found"
    );
    let metrics = http_get(worker.ops_addr, "/metrics").await;
    assert!(
        metrics.contains(r#"notifications_sent_total{severity="critical"}"#),
        "{metrics}"
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut contacts = String::new();
    while Instant::now() < deadline && !contacts.contains("alice@example.com") {
        contacts = http_get(worker.ops_addr, "/contacts").await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        contacts.contains("u-notify-1"),
        "user_created reached the directory: {contacts}"
    );
    worker.stop().await;
    users.stop().await;
}

#[tokio::test]
async fn an_open_breaker_pauses_consumption_and_half_open_resumes_it() {
    // Arrange: the worker points at a user-service address where nothing
    // listens yet; its breaker opens after two failed lookups.
    let queues = TestQueues::new().await;
    let user_service_addr = free_local_addr();
    let config = task_worker::Config {
        user_service_url: format!("http://{user_service_addr}"),
        user_service_timeout: Duration::from_millis(500),
        user_service_breaker: BreakerConfig {
            failure_threshold: 2,
            window: Duration::from_secs(30),
            open_duration: Duration::from_secs(2),
            half_open_probes: 1,
            half_open_successes: 1,
        },
        max_attempts: 50,
        ..queues.config()
    };
    let worker = task_worker::Worker::build(config).await.unwrap();
    let breaker = worker.breaker().expect("notify has a breaker");
    let mut worker = TestWorker::run(worker);
    let tasks: Vec<Task> = (0..3)
        .map(|i| task("notify", json!({"owner_id": "u-breaker-1", "alert_id": format!("a-{i}"), "severity": "warning"})))
        .collect();

    // Act 1: user-service is down.
    publish_all(&queues, &tasks, ContentType::Json).await;
    let opened = tokio::time::timeout(Duration::from_secs(30), async {
        let mut state = breaker.subscribe();
        state.wait_for(|s| *s == BreakerState::Open).await.is_ok()
    })
    .await;

    // Assert 1: open breaker, no consumer on the work queue.
    assert_eq!(opened, Ok(true), "the breaker opened");
    assert_eq!(
        wait_for_consumers(&queues, &queues.queue, 0).await,
        0,
        "consumption paused while the breaker is open"
    );

    // Act 2: user-service comes up at that address, with the owner.
    let users = UserServiceApp::start(user_service_addr, &queues).await;
    users
        .create_user("u-breaker-1", "Bob", "bob@example.com")
        .await;
    let events = worker
        .collect_until(Duration::from_secs(60), |e| done_ids(e).len() == 3)
        .await;

    // Assert 2: resumed at half-open, the probe closed the breaker, all done,
    // and nothing burned its attempts into the DLQ.
    assert_eq!(done_ids(&events).len(), 3, "{events:?}");
    assert_eq!(breaker.state(), BreakerState::Closed);
    assert_eq!(
        wait_for_consumers(&queues, &queues.queue, 1).await,
        1,
        "consuming again"
    );
    assert!(
        events
            .iter()
            .all(|e| !matches!(e.outcome, TaskOutcome::DeadLettered { .. })),
        "{events:?}"
    );
    assert_eq!(queues.depth(&queues.dlq()).await, 0);
    worker.stop().await;
    users.stop().await;
}

#[tokio::test]
async fn a_panicking_handler_dead_letters_its_task_and_the_worker_goes_on() {
    // Arrange
    let queues = TestQueues::new().await;
    let mut worker =
        TestWorker::start_with(queues.config(), vec![("buggy", Arc::new(helpers::Panics))]).await;
    let buggy = task("buggy", json!({}));
    let after = sleep_task(1);

    // Act
    publish_all(&queues, &[buggy.clone(), after.clone()], ContentType::Json).await;
    let events = worker
        .collect_until(Duration::from_secs(30), |e| e.len() == 2)
        .await;

    // Assert
    let outcomes: HashMap<String, TaskOutcome> =
        events.into_iter().map(|e| (e.task_id, e.outcome)).collect();
    assert_eq!(
        outcomes[&buggy.id],
        TaskOutcome::DeadLettered {
            reason: "handler_panicked".into()
        }
    );
    assert_eq!(
        outcomes[&after.id],
        TaskOutcome::Done,
        "the consumer survived"
    );
    worker.stop().await;
}

#[tokio::test]
async fn user_events_keep_the_directory_current_and_bad_ones_are_parked() {
    // Arrange
    let queues = TestQueues::new().await;
    let worker = task_worker::Worker::build(queues.config()).await.unwrap();
    let contacts = worker.contacts();
    let worker = TestWorker::run(worker);
    let channel = queues.connection.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let events: [&[u8]; 5] = [
        br#"{"event":"user_created","data":{"id":"u-7","name":"Carol","email":"c@x"},"event_id":"e1","occurred_at":10}"#,
        br#"{"event":"user_updated","data":{"id":"u-7","name":"Caroline"},"event_id":"e2","occurred_at":20}"#,
        // The first event again (a redelivery): must not roll the name back.
        br#"{"event":"user_created","data":{"id":"u-7","name":"Carol","email":"c@x"},"event_id":"e1","occurred_at":10}"#,
        br#"{"event":"user_renamed","data":{"id":"u-7"}}"#,
        br#"{"event":"user_created","data":{"id":1001,"name":"Alice"}}"#,
    ];

    // Act
    for body in events {
        channel
            .basic_publish(
                "".into(),
                queues.data_sync.as_str().into(),
                BasicPublishOptions::default(),
                body,
                BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_content_type("application/json".into()),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    while contacts.get("1001").is_none() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Assert
    let carol = contacts.get("u-7").expect("u-7 known");
    assert_eq!(carol.name.as_deref(), Some("Caroline"));
    assert_eq!(carol.email.as_deref(), Some("c@x"));
    assert_eq!(contacts.get("1001").unwrap().name.as_deref(), Some("Alice"));
    let parked = task_worker::data_sync::dead_letter_queue(&queues.data_sync);
    assert_eq!(queues.wait_for_depth(&parked, 1).await, 1);
    let letter = queues.get(&parked).await.unwrap();
    assert_eq!(
        header_text(&letter.delivery.properties, headers::REASON),
        "invalid_message"
    );
    worker.stop().await;
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
    assert_eq!(queues.wait_for_depth(&queues.queue, 0).await, 0, "taken up");

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
        .collect_until(Duration::from_secs(30), |e| !done_ids(e).is_empty())
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
