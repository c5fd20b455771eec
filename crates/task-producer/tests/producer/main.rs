//! Producer tests against the real local RabbitMQ: topology, confirmed
//! publishing, the window of unconfirmed messages, failures and the CLI job.

mod helpers;

use std::time::Duration;

use common::{
    codec::{Codec, ContentType},
    config::SecretUrl,
    retry::Retryable,
};
use futures::future::join_all;
use helpers::{TestQueues, amqp_url};
use lapin::{
    BasicProperties,
    options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable},
};
use serde_json::json;
use task_producer::config::JobConfig;
use testkit::http_get;
use workqueue::{
    publisher::{PublishError, PublisherConfig, TaskPublisher},
    task::Task,
    topology::headers,
};

fn sleep_task(ms: u64) -> Task {
    let payload = json!({ "ms": ms }).as_object().cloned().unwrap();
    Task::new(uuid::Uuid::new_v4().to_string(), "sleep", payload)
}

#[tokio::test]
async fn a_confirmed_task_is_persistent_and_self_describing() {
    // Arrange
    let queues = TestQueues::new(&[Duration::from_secs(1)]).await;
    let publisher = TaskPublisher::start(queues.publisher_config(), queues.shutdown.clone());
    let task = sleep_task(5);

    // Act
    publisher.publish(&task).await.expect("confirmed");

    // Assert
    let message = queues
        .amqp
        .get(queues.topology.task_queue())
        .await
        .expect("the task is on the queue");
    let properties = &message.delivery.properties;
    assert_eq!(*properties.delivery_mode(), Some(2), "persistent");
    assert_eq!(
        properties.content_type().as_ref().map(|c| c.as_str()),
        Some("application/protobuf")
    );
    assert_eq!(
        properties.message_id().as_ref().map(|m| m.as_str()),
        Some(task.id.as_str())
    );
    let decoded: Task = Codec::default()
        .decode(&message.delivery.data, ContentType::Protobuf)
        .unwrap();
    assert_eq!(decoded, task);
    assert_eq!(publisher.stats().confirmed(), 1);
}

#[tokio::test]
async fn many_publishes_share_the_window_and_all_are_confirmed() {
    // Arrange
    let queues = TestQueues::new(&[]).await;
    let config = PublisherConfig {
        max_unconfirmed: 32,
        content_type: ContentType::Json,
        ..queues.publisher_config()
    };
    let publisher = TaskPublisher::start(config, queues.shutdown.clone());
    let tasks: Vec<Task> = (0..500).map(|_| sleep_task(0)).collect();

    // Act
    let results = join_all(tasks.iter().map(|task| publisher.publish(task))).await;

    // Assert
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let queue = queues.topology.task_queue();
    queues.expect_depth(queue, 500).await;
    assert_eq!(publisher.stats().confirmed(), 500);
    assert_eq!(publisher.stats().failed(), 0);
}

#[tokio::test]
async fn an_unreachable_broker_is_a_retryable_timeout_not_a_hang() {
    // Arrange: a port nothing listens on.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let config = PublisherConfig {
        amqp_url: SecretUrl::new(format!("amqp://guest:guest@127.0.0.1:{port}/%2f")),
        queue: format!("test.producer.{}", uuid::Uuid::new_v4().simple()),
        publish_timeout: Duration::from_millis(500),
        ..Default::default()
    };
    let shutdown = common::shutdown::Shutdown::new();
    let publisher = TaskPublisher::start(config, shutdown.clone());

    // Act
    let error = publisher.publish(&sleep_task(1)).await.unwrap_err();

    // Assert
    assert!(matches!(error, PublishError::Timeout { .. }), "{error}");
    assert!(error.is_retryable());
    assert!(!*publisher.connected().borrow());
    assert_eq!(publisher.stats().failed(), 1);
    shutdown.trigger();
}

#[tokio::test]
async fn a_plain_client_declares_our_queue_without_a_precondition_failure() {
    // Arrange: our topology first.
    let queues = TestQueues::new(&[Duration::from_millis(200)]).await;
    queues.topology.declare(&queues.amqp.channel).await.unwrap();

    // Act: exactly what a plain client (the original design's Python one)
    // does: durable, no arguments.
    let plain = queues.amqp.connection.create_channel().await.unwrap();
    let declared = plain
        .queue_declare(
            queues.topology.task_queue().into(),
            QueueDeclareOptions::durable(),
            FieldTable::default(),
        )
        .await;

    // Assert
    assert!(declared.is_ok(), "{declared:?}");
}

#[tokio::test]
async fn a_retry_tier_returns_its_messages_to_the_work_queue_after_its_delay() {
    // Arrange
    let queues = TestQueues::new(&[Duration::from_millis(300), Duration::from_secs(30)]).await;
    queues.topology.declare(&queues.amqp.channel).await.unwrap();
    let (short_tier, _) = queues.topology.retry_tier(1).unwrap();
    let (long_tier, _) = queues.topology.retry_tier(2).unwrap();
    let channel = queues.amqp.connection.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let mut retry_headers = FieldTable::default();
    retry_headers.insert(headers::ATTEMPTS.into(), AMQPValue::LongInt(1));

    // Act: a long-delay message first, then a short one: no head-of-line
    // blocking because they sit in different tiers.
    for (tier, body) in [(&long_tier, "slow"), (&short_tier, "fast")] {
        channel
            .basic_publish(
                "".into(),
                tier.as_str().into(),
                BasicPublishOptions::default(),
                body.as_bytes(),
                BasicProperties::default().with_headers(retry_headers.clone()),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }

    // Assert
    let queue = queues.topology.task_queue();
    queues.expect_depth(queue, 1).await;
    let message = queues.amqp.get(queues.topology.task_queue()).await.unwrap();
    assert_eq!(message.delivery.data, b"fast");
    let attempts = message
        .delivery
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(headers::ATTEMPTS).cloned());
    assert_eq!(
        attempts,
        Some(AMQPValue::LongInt(1)),
        "headers survive the tier"
    );
    assert_eq!(queues.amqp.depth(&long_tier).await, 1);
}

#[tokio::test]
async fn the_job_publishes_and_confirms_every_task() {
    // Arrange
    let queues = TestQueues::new(&[]).await;
    let config = task_producer::Config {
        content_type: ContentType::Json,
        ..queues.job_config(JobConfig {
            count: 200,
            kind: "sleep".into(),
            payload: r#"{"ms": 1}"#.into(),
            ..JobConfig::default()
        })
    };

    // Act
    let summary = task_producer::run(config, queues.shutdown.clone())
        .await
        .unwrap();

    // Assert
    assert_eq!(
        (summary.published, summary.confirmed, summary.failed),
        (200, 200, 0)
    );
    let queue = queues.topology.task_queue();
    queues.expect_depth(queue, 200).await;
    let message = queues.amqp.get(queues.topology.task_queue()).await.unwrap();
    let task: Task = Codec::default()
        .decode_with_header(&message.delivery.data, Some("application/json"))
        .unwrap();
    assert_eq!(task.kind, "sleep");
    assert_eq!(task.payload["ms"], 1);
}

#[tokio::test]
async fn a_paced_job_runs_for_its_duration() {
    // Arrange
    let queues = TestQueues::new(&[]).await;
    let config = queues.paced_job(50.0, Duration::from_secs(1));

    // Act
    let summary = task_producer::run(config, queues.shutdown.clone())
        .await
        .unwrap();

    // Assert: paced, so about rate x duration tasks (the first tick is immediate).
    assert!(
        (40..=60).contains(&summary.published),
        "published {}",
        summary.published
    );
    assert_eq!(summary.confirmed, summary.published);
    assert!(summary.elapsed >= Duration::from_secs(1));
}

#[tokio::test]
async fn a_deleted_queue_is_declared_again_instead_of_dropping_the_task() {
    // Arrange
    let queues = TestQueues::new(&[]).await;
    let publisher = TaskPublisher::start(queues.publisher_config(), queues.shutdown.clone());
    publisher.publish(&sleep_task(1)).await.unwrap();
    queues
        .amqp
        .channel
        .queue_delete(
            queues.topology.task_queue().into(),
            lapin::options::QueueDeleteOptions::default(),
        )
        .await
        .unwrap();

    // Act
    publisher
        .publish(&sleep_task(2))
        .await
        .expect("confirmed after redeclaring");

    // Assert
    assert_eq!(queues.amqp.depth(queues.topology.task_queue()).await, 1);
    assert!(publisher.stats().resent() >= 1);
}

#[tokio::test]
async fn a_shutdown_stops_new_tasks_and_waits_for_the_confirms_in_flight() {
    // Arrange: a long paced job.
    let queues = TestQueues::new(&[]).await;
    let config = queues.paced_job(200.0, Duration::from_secs(60));
    let shutdown = common::shutdown::Shutdown::new();
    let app = task_producer::Application::build(config).await.unwrap();
    let ops_addr = app.ops_addr().expect("port 0 is always free");
    let job = tokio::spawn(app.run_until_stopped(shutdown.clone()));

    // Act: stop once tasks are being confirmed (on a busy machine the first
    // connection may take a while; a stop before it proves nothing).
    let queue = queues.topology.task_queue();
    let series = format!(r#"messages_published_total{{queue="{queue}"}}"#);
    let (status, metrics) =
        testkit::eventually("confirms counted", Duration::from_secs(30), || async {
            let (status, metrics) = http_get(ops_addr, "/metrics").await;
            let confirmed = metrics
                .lines()
                .find_map(|line| line.strip_prefix(series.as_str()))
                .and_then(|count| count.trim().parse::<f64>().ok())
                .unwrap_or_default();
            (confirmed > 0.0).then_some((status, metrics))
        })
        .await;
    shutdown.trigger();
    let summary = tokio::time::timeout(Duration::from_secs(10), job)
        .await
        .expect("the job ends soon after the shutdown")
        .unwrap()
        .unwrap();

    // Assert: stopped early, and every task sent was confirmed and is queued.
    assert!(
        summary.published > 0 && summary.published < 12_000,
        "{summary}"
    );
    assert_eq!(summary.confirmed, summary.published, "{summary}");
    assert_eq!(summary.failed, 0);
    let confirmed = summary.confirmed as u32;
    queues.expect_depth(queue, confirmed).await;
    // While it ran, /metrics counted the confirms, described.
    assert_eq!(status, 200);
    assert!(
        metrics.contains("# HELP messages_published_total"),
        "{metrics}"
    );
}

#[tokio::test]
async fn an_oversize_task_is_refused_before_it_reaches_the_broker() {
    // Arrange
    let queues = TestQueues::new(&[]).await;
    let publisher = TaskPublisher::start(queues.publisher_config(), queues.shutdown.clone());
    let payload = json!({ "blob": "x".repeat(2 * 1024 * 1024) });
    let huge = Task::new("huge-1", "sleep", payload.as_object().cloned().unwrap());

    // Act
    let error = publisher.publish(&huge).await.unwrap_err();

    // Assert
    assert!(matches!(error, PublishError::Encode(_)), "{error}");
    assert!(!error.is_retryable());
    publisher
        .publish(&sleep_task(1))
        .await
        .expect("the next one goes through");
    assert_eq!(queues.amqp.depth(queues.topology.task_queue()).await, 1);
}

#[tokio::test]
async fn a_job_over_max_message_bytes_is_refused_before_anything_is_sent() {
    // Arrange: tasks of about 4 KiB against a limit of 2 KiB, and the queue
    // declared, to be found empty.
    let queues = TestQueues::new(&[]).await;
    queues.topology.declare(&queues.amqp.channel).await.unwrap();
    let payload = json!({ "ms": 1, "blob": "x".repeat(4096) }).to_string();
    let config = task_producer::Config {
        max_message_bytes: 2048,
        ..queues.job_config(JobConfig {
            count: 3,
            payload: payload.clone(),
            ..JobConfig::default()
        })
    };

    // Act: the binary validates its config at start; a config handed to the
    // library unvalidated meets the publisher's own check at every publish.
    let binary = std::process::Command::new(env!("CARGO_BIN_EXE_task-producer"))
        .env("AMQP_URL", amqp_url())
        .env("OPS_ADDR", "127.0.0.1:0")
        .env("SWITCHYARD__MAX_MESSAGE_BYTES", "2048")
        .env_remove("CONFIG_FILE")
        .args(["--queue", queues.topology.task_queue(), "--count", "3"])
        .args(["--payload", &payload])
        .output()
        .unwrap();
    let summary = task_producer::run(config, queues.shutdown.clone())
        .await
        .unwrap();

    // Assert
    assert!(!binary.status.success());
    let stderr = String::from_utf8_lossy(&binary.stderr);
    assert!(
        stderr.contains("job.payload") && stderr.contains("exceeds max_message_bytes = 2048"),
        "{stderr}"
    );
    assert_eq!(
        (summary.published, summary.confirmed, summary.failed),
        (3, 0, 3)
    );
    assert_eq!(queues.amqp.depth(queues.topology.task_queue()).await, 0);
}

#[tokio::test]
async fn a_closed_publisher_refuses_to_publish() {
    // Arrange
    let queues = TestQueues::new(&[]).await;
    let publisher = TaskPublisher::start(queues.publisher_config(), queues.shutdown.clone());
    publisher.publish(&sleep_task(1)).await.unwrap();

    // Act
    tokio::time::timeout(Duration::from_secs(10), publisher.close())
        .await
        .expect("closes promptly");

    // Assert
    let error = publisher.clone().publish(&sleep_task(1)).await.unwrap_err();
    assert!(matches!(error, PublishError::Closed), "{error}");
    assert!(!*publisher.connected().borrow());
}

#[tokio::test]
async fn the_binary_prints_a_summary_and_fails_when_tasks_are_not_confirmed() {
    // Arrange
    let queues = TestQueues::new(&[]).await;
    let run = |url: String, extra: &[&str]| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_task-producer"));
        command
            .env("AMQP_URL", url)
            .env("OPS_ADDR", "127.0.0.1:0")
            .env("RUST_LOG", "error")
            .env_remove("CONFIG_FILE")
            .args(["--queue", queues.topology.task_queue(), "--format", "json"])
            .args(extra);
        command.output().unwrap()
    };
    let closed_port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };

    // Act
    let ok = run(amqp_url(), &["--count", "25", "--payload", r#"{"ms": 2}"#]);
    let unreachable = run(
        format!("amqp://guest:guest@127.0.0.1:{closed_port}/%2f"),
        &["--count", "2"],
    );
    let bad_flag = run(amqp_url(), &["--count", "1", "--payload", "[1]"]);
    let bare_duration = run(amqp_url(), &["--rate", "20", "--duration", "30"]);

    // Assert
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert!(ok.status.success(), "{stdout}");
    assert!(
        stdout.contains("published=25 confirmed=25 retried=0 failed=0"),
        "{stdout}"
    );
    assert_eq!(queues.amqp.depth(queues.topology.task_queue()).await, 25);
    let stdout = String::from_utf8_lossy(&unreachable.stdout);
    assert!(!unreachable.status.success());
    assert!(
        stdout.contains("confirmed=0") && stdout.contains("failed=2"),
        "{stdout}"
    );
    assert!(!bad_flag.status.success());
    assert!(
        String::from_utf8_lossy(&bad_flag.stderr).contains("job.payload"),
        "the error names the key"
    );
    assert!(!bare_duration.status.success());
    let stderr = String::from_utf8_lossy(&bare_duration.stderr);
    assert!(stderr.contains("no unit"), "{stderr}");

    // A paced run for a duration written with its unit: about 20/s for 0.5 s.
    let paced = run(
        amqp_url(),
        &["--count", "1000", "--rate", "20", "--duration", "500ms"],
    );
    let stdout = String::from_utf8_lossy(&paced.stdout);
    assert!(paced.status.success(), "{stdout}");
    let published: u64 = stdout
        .split_whitespace()
        .find_map(|field| field.strip_prefix("published="))
        .and_then(|count| count.parse().ok())
        .unwrap_or_else(|| panic!("no summary in {stdout}"));
    assert!((5..=15).contains(&published), "{stdout}");
}
