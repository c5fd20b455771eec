//! The services as separate processes (each with its own `/metrics`), on the
//! local brokers under this test's own subjects and queues, driven through
//! the paths that record the series the deploy files read:
//!
//! - user-service (SQLite) answers CreateUser and, for task-worker, GetUser:
//!   gRPC calls, read cache, outbox relay;
//! - alert-subscriber gets a reading over its critical threshold (an alert,
//!   a notify task), a body that does not decode (a reject) and a burst;
//! - monitor-subscriber, with a one-message subscription buffer, gets the
//!   same and must drop (slow consumer);
//! - task-worker A notifies the owner through user-service;
//! - task-worker B calls a user-service that is not there, so its breaker
//!   opens, its consumer pauses and tasks go back to the queue;
//! - sensor-publisher loses its (private) NATS server, so its readings are
//!   counted as unsent.
//!
//! Readings go out in the NATS text protocol over a plain TCP socket, as
//! any external client could send them.

use std::{collections::BTreeSet, net::SocketAddr, path::Path, time::Duration};

use common::proto::user::v1::CreateUserRequest;
use e2e::process::{Service, free_port};
use lapin::{BasicProperties, options::BasicPublishOptions};
use testkit::{AmqpFixture, amqp_url, nats_url};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use user_client::{ClientConfig, ClientError, UserClient};
use workqueue::topology::Topology;

/// A started service and where its `/metrics` is.
struct Running {
    name: &'static str,
    ops: SocketAddr,
    service: Service,
}

fn spawn(name: &'static str, env: Vec<(&str, String)>, logs: &Path) -> Running {
    let ops: SocketAddr = ([127, 0, 0, 1], free_port().unwrap()).into();
    let mut env = env;
    env.extend([
        ("OPS_ADDR", ops.to_string()),
        ("RUST_LOG", "info".to_string()),
    ]);
    let service = Service::spawn(name, &[], &env, logs).unwrap();
    Running { name, ops, service }
}

/// `/metrics` of `addr`, `None` while nothing listens there.
async fn scrape(addr: SocketAddr) -> Option<String> {
    tokio::net::TcpStream::connect(addr).await.ok()?;
    let (status, body) = testkit::http_get(addr, "/metrics").await;
    (status == 200).then_some(body)
}

/// Publishes `messages` (subject, payload) to the local NATS server and
/// returns once the server has them (PING answered by PONG).
async fn nats_publish(messages: &[(String, String)]) {
    let url = nats_url();
    let addr = url.trim_start_matches("nats://");
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap_or_else(|error| panic!("nats at {addr}: {error}"));
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    let info = lines.next_line().await.unwrap().unwrap_or_default();
    assert!(
        info.starts_with("INFO"),
        "not a NATS server at {addr}: {info}"
    );
    let mut out = String::from("CONNECT {\"verbose\":false,\"pedantic\":false}\r\n");
    for (subject, payload) in messages {
        out.push_str(&format!("PUB {subject} {}\r\n{payload}\r\n", payload.len()));
    }
    out.push_str("PING\r\n");
    write.write_all(out.as_bytes()).await.unwrap();
    loop {
        let line = lines.next_line().await.unwrap().expect("nats answers");
        if line.starts_with("PONG") {
            return;
        }
        assert!(!line.starts_with("-ERR"), "nats refused: {line}");
    }
}

fn reading(sensor: &str, seq: u64, value: f64, owner: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    format!(
        r#"{{"sensor_id":"{sensor}","kind":"temperature","value":{value},"unit":"celsius","timestamp":{now},"seq":{seq},"owner_id":"{owner}"}}"#
    )
}

/// Starts the services, drives them, and scrapes every one until together
/// they export all of `wanted` (or 60 s pass); the last scrape of each.
pub(crate) async fn run_and_scrape(wanted: &BTreeSet<String>) -> Vec<(String, String)> {
    let id = testkit::unique();
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    let prefix = format!("mn.{id}.sensor.data");
    let queue_a = format!("mn_{id}_task_queue");
    let queue_b = format!("mn_{id}_b_task_queue");
    let data_sync_a = format!("mn_{id}_data_sync");
    let data_sync_b = format!("mn_{id}_b_data_sync");
    let mut queues = Topology::new(queue_a.clone()).queue_names();
    queues.extend(Topology::new(queue_b.clone()).queue_names());
    for data_sync in [&data_sync_a, &data_sync_b] {
        queues.extend([data_sync.clone(), format!("{data_sync}.dlq")]);
    }
    let _queues = testkit::delete_queues_later(amqp_url(), queues);
    let brokers = || vec![("NATS_URL", nats_url()), ("AMQP_URL", amqp_url())];
    let nowhere = || format!("127.0.0.1:{}", free_port().unwrap());

    // user-service first, and the owner the notifications are for.
    let grpc = nowhere();
    let mut env = brokers();
    env.extend([
        ("GRPC_ADDR", grpc.clone()),
        ("HTTP_ADDR", nowhere()),
        (
            "DATABASE_URL",
            format!("sqlite://{}/users.db?mode=rwc", dir.path().display()),
        ),
        ("SWITCHYARD__DATA_SYNC_QUEUE", data_sync_a.clone()),
    ]);
    let mut running = vec![spawn("user-service", env, &logs)];
    let owner = format!("u-mn-{id}");
    let client = UserClient::connect_lazy(ClientConfig {
        url: format!("http://{grpc}"),
        timeout: Duration::from_secs(5),
        ..ClientConfig::default()
    })
    .unwrap();
    testkit::eventually(
        "user-service to create the owner",
        Duration::from_secs(60),
        || async {
            let created = client
                .create_user(CreateUserRequest {
                    user_id: owner.clone(),
                    name: "Metric Names".into(),
                    age: 30,
                    email: format!("{owner}@example.com"),
                })
                .await;
            matches!(created, Ok(_) | Err(ClientError::AlreadyExists(_))).then_some(())
        },
    )
    .await;

    let mut env = brokers();
    env.extend([
        ("USER_SERVICE_URL", format!("http://{grpc}")),
        ("SWITCHYARD__QUEUE", queue_a.clone()),
        ("SWITCHYARD__DATA_SYNC_QUEUE", data_sync_a.clone()),
    ]);
    running.push(spawn("task-worker", env, &logs));
    let mut env = brokers();
    env.extend([
        ("USER_SERVICE_URL", format!("http://{}", nowhere())),
        ("SWITCHYARD__QUEUE", queue_b.clone()),
        ("SWITCHYARD__DATA_SYNC_QUEUE", data_sync_b.clone()),
        ("SWITCHYARD__USER_SERVICE_TIMEOUT", "500ms".into()),
        (
            "SWITCHYARD__USER_SERVICE_BREAKER__FAILURE_THRESHOLD",
            "1".into(),
        ),
    ]);
    running.push(spawn("task-worker", env, &logs.join("b")));
    let mut env = brokers();
    env.extend([
        ("SWITCHYARD__SUBJECT_PREFIX", prefix.clone()),
        (
            "SWITCHYARD__ALERT_SUBJECT_PREFIX",
            format!("mn.{id}.sensor.alert"),
        ),
        ("SWITCHYARD__QUEUE_GROUP", format!("mn-{id}-alerts")),
        ("SWITCHYARD__TASK_QUEUE", queue_a.clone()),
    ]);
    running.push(spawn("alert-subscriber", env, &logs));
    let mut env = brokers();
    env.extend([
        ("SWITCHYARD__SUBJECT_PREFIX", prefix.clone()),
        ("SWITCHYARD__STATS_SUBJECT", format!("mn.{id}.sensor.stats")),
        ("SWITCHYARD__SUBSCRIPTION_CAPACITY", "1".into()),
    ]);
    running.push(spawn("monitor-subscriber", env, &logs));
    // sensor-publisher on a private nats-server, killed once it publishes.
    let mut private_nats = testkit::NatsServer::start().await;
    running.push(spawn(
        "sensor-publisher",
        vec![
            ("NATS_URL", private_nats.url()),
            ("SWITCHYARD__SUBJECT_PREFIX", format!("mn.{id}.private")),
            ("SWITCHYARD__RATE_PER_SEC", "20".into()),
        ],
        &logs,
    ));

    // Every service up, the subscribers subscribed.
    for service in &running {
        testkit::eventually(
            &format!("{} to serve /metrics", service.name),
            Duration::from_secs(60),
            || scrape(service.ops),
        )
        .await;
    }
    testkit::eventually(
        "the subscribers to subscribe",
        Duration::from_secs(30),
        || async {
            let log = |name: &str| {
                running
                    .iter()
                    .find(|service| service.name == name)
                    .map(|service| service.service.log())
                    .unwrap_or_default()
            };
            (log("alert-subscriber").contains("evaluating readings")
                && log("monitor-subscriber").contains("monitoring readings"))
            .then_some(())
        },
    )
    .await;

    // Drive: the publisher loses its server; an alert for the owner, a body
    // that does not decode, and notify tasks for the worker whose
    // user-service is missing.
    private_nats.kill();
    nats_publish(&[
        (
            format!("{prefix}.mn-hot"),
            reading("mn-hot", 1, 45.0, &owner),
        ),
        (format!("{prefix}.mn-bad"), "{not json".to_string()),
    ])
    .await;
    let amqp = AmqpFixture::connect(&amqp_url()).await;
    for n in 0..3 {
        let task = format!(
            r#"{{"id":"mn-{id}-{n}","kind":"notify","payload":{{"owner_id":"u-nobody","sensor_id":"mn-b","severity":"critical"}}}}"#
        );
        amqp.channel
            .basic_publish(
                "".into(),
                queue_b.as_str().into(),
                BasicPublishOptions::default(),
                task.as_bytes(),
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }
    amqp.connection.close(200, "done".into()).await.ok();

    // Scrape until everything wanted is there; a burst of ordinary readings
    // each round until monitor-subscriber's one-message buffer overflows.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut round = 0;
    loop {
        let mut scrapes = Vec::new();
        for service in &running {
            if let Some(text) = scrape(service.ops).await {
                scrapes.push((service.name.to_string(), text));
            }
        }
        let seen: BTreeSet<String> = scrapes
            .iter()
            .flat_map(|(_, text)| crate::exported_names(text))
            .collect();
        let missing: Vec<&String> = wanted.iter().filter(|name| !seen.contains(*name)).collect();
        if missing.is_empty() || tokio::time::Instant::now() > deadline {
            if !missing.is_empty() {
                for service in &running {
                    eprintln!("--- {} log:\n{}", service.name, service.service.log());
                }
            }
            return scrapes;
        }
        if missing
            .iter()
            .any(|name| name.starts_with("messages_dropped"))
        {
            let burst: Vec<(String, String)> = (0..5000)
                .map(|seq| {
                    let sensor = format!("mn-burst-{round}");
                    (
                        format!("{prefix}.{sensor}"),
                        reading(&sensor, seq + 1, 20.0, &owner),
                    )
                })
                .collect();
            nats_publish(&burst).await;
        }
        round += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
