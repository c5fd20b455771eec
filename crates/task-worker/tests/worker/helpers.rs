//! Shared set-up for the worker tests: the local RabbitMQ, queue sets of the
//! test's own (deleted on drop), workers started in-process on port 0 or as
//! the real binary, the real user-service, a RabbitMQ node of the test's own
//! for restarts, publishing and header helpers, and the few handlers a user
//! never runs (one that fails on purpose, one that measures how many tasks
//! run at once, one that panics).

use std::{
    collections::HashMap,
    path::PathBuf,
    process::Stdio,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, AtomicUsize, Ordering},
    },
    time::Duration,
};

use common::{
    codec::ContentType,
    config::{SecretUrl, duration},
    shutdown::Shutdown,
};
use futures::future::BoxFuture;
use lapin::{BasicProperties, types::AMQPValue};
use serde_json::json;
use task_worker::{
    Application, Config,
    events::{TaskEvent, TaskOutcome},
    handler::{HandlerError, TaskHandler},
};
use testkit::AmqpFixture;
pub(crate) use testkit::{RabbitNode, amqp_url};
use tokio::{sync::broadcast, task::JoinHandle};
use workqueue::{
    publisher::{PublisherConfig, TaskPublisher},
    task::Task,
};

/// How long a test waits for a condition before it fails.
pub(crate) const WAIT: Duration = Duration::from_secs(30);

/// A work queue and a data_sync queue with unique names on one broker;
/// every queue is deleted on drop.
pub(crate) struct TestQueues {
    pub(crate) url: String,
    pub(crate) queue: String,
    pub(crate) data_sync: String,
    pub(crate) max_attempts: u32,
    pub(crate) retry_base: Duration,
    pub(crate) amqp: AmqpFixture,
}

impl TestQueues {
    /// Queues on the shared broker, retries after 100 ms, 200 ms, ...
    pub(crate) async fn new() -> Self {
        Self::on(&amqp_url(), 5, Duration::from_millis(100)).await
    }

    /// Queues on the broker at `url`.
    pub(crate) async fn on(url: &str, max_attempts: u32, retry_base: Duration) -> Self {
        common::telemetry::init_for_tests();
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        let queues = TestQueues {
            url: url.to_string(),
            queue: format!("test.worker.{suffix}"),
            data_sync: format!("test.data_sync.{suffix}"),
            max_attempts,
            retry_base,
            amqp: AmqpFixture::connect(url).await,
        };
        // Declared up front so tests can publish before a worker starts.
        queues
            .config()
            .topology()
            .declare(&queues.amqp.channel)
            .await
            .unwrap();
        workqueue::topology::declare_data_sync(&queues.amqp.channel, &queues.data_sync)
            .await
            .unwrap();
        queues
    }

    /// A worker config on these queues: ops on port 0, fast retries.
    pub(crate) fn config(&self) -> Config {
        Config {
            amqp_url: SecretUrl::new(self.url.clone()),
            queue: self.queue.clone(),
            data_sync_queue: self.data_sync.clone(),
            max_attempts: self.max_attempts,
            retry_base_delay: self.retry_base,
            retry_max_delay: self.retry_base * 8,
            shutdown_grace: Duration::from_secs(20),
            ops_addr: "127.0.0.1:0".parse().unwrap(),
            ..Config::default()
        }
    }

    /// [`TestQueues::config`] with `concurrency` tasks at once.
    pub(crate) fn config_with_concurrency(&self, concurrency: usize) -> Config {
        Config {
            concurrency,
            ..self.config()
        }
    }

    pub(crate) fn dlq(&self) -> String {
        format!("{}.dlq", self.queue)
    }

    /// A confirmed publisher onto the work queue.
    pub(crate) fn publisher(
        &self,
        content_type: ContentType,
        shutdown: &Shutdown,
    ) -> TaskPublisher {
        TaskPublisher::start(
            PublisherConfig {
                amqp_url: SecretUrl::new(self.url.clone()),
                queue: self.queue.clone(),
                content_type,
                publish_timeout: Duration::from_secs(30),
                ..PublisherConfig::default()
            },
            shutdown.clone(),
        )
    }

    /// Waits until `queue` holds `count` ready messages; fails after [`WAIT`].
    pub(crate) async fn wait_for_depth(&self, queue: &str, count: u32) {
        testkit::wait_for_depth(&self.amqp.channel, queue, count, WAIT).await;
    }

    /// Waits until `queue` has `count` consumers; fails after [`WAIT`].
    pub(crate) async fn wait_for_consumers(&self, queue: &str, count: u32) {
        testkit::wait_for_consumers(&self.amqp.channel, queue, count, WAIT).await;
    }

    fn names(&self) -> Vec<String> {
        let mut names = self.config().topology().queue_names();
        names.push(self.data_sync.clone());
        names.push(workqueue::topology::data_sync_dead_letter_queue(
            &self.data_sync,
        ));
        names
    }
}

impl Drop for TestQueues {
    fn drop(&mut self) {
        testkit::delete_queues_on_drop(self.url.clone(), self.names());
    }
}

/// A worker running in-process.
pub(crate) struct TestWorker {
    pub(crate) events: broadcast::Receiver<TaskEvent>,
    pub(crate) ops_addr: std::net::SocketAddr,
    pub(crate) shutdown: Shutdown,
    pub(crate) handle: JoinHandle<anyhow::Result<()>>,
}

impl TestWorker {
    pub(crate) async fn start(config: Config) -> Self {
        Self::start_with(config, Vec::new()).await
    }

    pub(crate) async fn start_with(
        config: Config,
        handlers: Vec<(&str, Arc<dyn TaskHandler>)>,
    ) -> Self {
        let mut worker = Application::build(config).await.expect("worker builds");
        for (kind, handler) in handlers {
            worker = worker.with_handler(kind, handler);
        }
        Self::run(worker)
    }

    pub(crate) fn run(worker: Application) -> Self {
        let events = worker.subscribe();
        let ops_addr = worker.ops_addr();
        let shutdown = Shutdown::new();
        let handle = tokio::spawn(worker.run_until_stopped(shutdown.clone()));
        TestWorker {
            events,
            ops_addr,
            shutdown,
            handle,
        }
    }

    /// Collects events until `done` says so, at most `within`.
    pub(crate) async fn collect_until(
        &mut self,
        within: Duration,
        mut done: impl FnMut(&[TaskEvent]) -> bool,
    ) -> Vec<TaskEvent> {
        let mut seen = Vec::new();
        let deadline = tokio::time::Instant::now() + within;
        while !done(&seen) {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Ok(event)) => seen.push(event),
                Ok(Err(broadcast::error::RecvError::Lagged(n))) => {
                    panic!("test subscriber lagged by {n} events")
                }
                Ok(Err(broadcast::error::RecvError::Closed)) | Err(_) => break,
            }
        }
        seen
    }

    /// Triggers shutdown and waits for `run_until_stopped` to return.
    pub(crate) async fn stop(self) {
        self.shutdown.trigger();
        tokio::time::timeout(Duration::from_secs(30), self.handle)
            .await
            .expect("the worker stops within 30 s")
            .unwrap()
            .unwrap();
    }
}

/// Ids of the tasks with outcome `Done` in `events`.
pub(crate) fn done_ids(events: &[TaskEvent]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e.outcome == TaskOutcome::Done)
        .map(|e| e.task_id.clone())
        .collect()
}

pub(crate) fn task(kind: &str, payload: serde_json::Value) -> Task {
    Task::new(
        uuid::Uuid::new_v4().to_string(),
        kind,
        payload.as_object().cloned().unwrap_or_default(),
    )
}

pub(crate) fn sleep_task(ms: u64) -> Task {
    task("sleep", json!({ "ms": ms }))
}

/// Publishes `tasks` through a confirmed publisher; every one confirmed.
pub(crate) async fn publish_all(queues: &TestQueues, tasks: &[Task], content_type: ContentType) {
    let shutdown = Shutdown::new();
    let publisher = queues.publisher(content_type, &shutdown);
    let results = futures::future::join_all(tasks.iter().map(|t| publisher.publish(t))).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    shutdown.trigger();
}

/// The AMQP header `name` of a message.
pub(crate) fn header<'a>(properties: &'a BasicProperties, name: &str) -> Option<&'a AMQPValue> {
    properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(name))
}

/// The text of the AMQP header `name`; panics when absent or not text.
pub(crate) fn header_text(properties: &BasicProperties, name: &str) -> String {
    match header(properties, name) {
        Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        other => panic!("header {name}: {other:?}"),
    }
}

/// A handler that fails transiently `failures` times per task, then succeeds.
#[derive(Debug, Default)]
pub(crate) struct Flaky {
    pub(crate) failures: u32,
    calls: Mutex<HashMap<String, u32>>,
}

impl Flaky {
    pub(crate) fn new(failures: u32) -> Self {
        Flaky {
            failures,
            calls: Mutex::default(),
        }
    }
}

impl TaskHandler for Flaky {
    fn handle<'a>(&'a self, task: &'a Task) -> BoxFuture<'a, Result<(), HandlerError>> {
        let call = {
            let mut calls = self.calls.lock().unwrap();
            let call = calls.entry(task.id.clone()).or_default();
            *call += 1;
            *call
        };
        Box::pin(async move {
            if call <= self.failures {
                Err(HandlerError::Transient(format!("planned failure {call}")))
            } else {
                Ok(())
            }
        })
    }
}

/// Sleeps like `sleep` and records how many tasks ran at the same time.
#[derive(Debug, Default)]
pub(crate) struct Concurrency {
    running: AtomicUsize,
    pub(crate) peak: AtomicUsize,
    pub(crate) started: AtomicU32,
}

impl TaskHandler for Concurrency {
    fn handle<'a>(&'a self, task: &'a Task) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            self.started.fetch_add(1, Ordering::SeqCst);
            let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
            self.peak.fetch_max(now, Ordering::SeqCst);
            let ms = task.payload.get("ms").and_then(|v| v.as_u64()).unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            self.running.fetch_sub(1, Ordering::SeqCst);
            Ok(())
        })
    }
}

/// `sleep`, `factor` times slower: the slow machine of the fairness test.
#[derive(Debug)]
pub(crate) struct SlowSleep {
    pub(crate) factor: u32,
}

impl TaskHandler for SlowSleep {
    fn handle<'a>(&'a self, task: &'a Task) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            let ms = task.payload.get("ms").and_then(|v| v.as_u64()).unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(ms) * self.factor).await;
            Ok(())
        })
    }
}

/// The real `task-worker` binary, configured through the environment, with
/// JSON logs captured from stdout.
pub(crate) struct WorkerProcess {
    pub(crate) child: tokio::process::Child,
    pub(crate) log: Arc<Mutex<Vec<serde_json::Value>>>,
    /// Its ops endpoint (`/metrics`), on a port that was free at spawn.
    pub(crate) ops_addr: std::net::SocketAddr,
    reader: JoinHandle<()>,
}

impl WorkerProcess {
    pub(crate) fn spawn(queues: &TestQueues, concurrency: usize) -> Self {
        let ops_addr = testkit::free_addr();
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_task-worker"))
            .env("AMQP_URL", &queues.url)
            .env("OPS_ADDR", ops_addr.to_string())
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .env("SWITCHYARD__QUEUE", &queues.queue)
            .env("SWITCHYARD__DATA_SYNC_QUEUE", &queues.data_sync)
            .env("SWITCHYARD__CONCURRENCY", concurrency.to_string())
            .env("SWITCHYARD__MAX_ATTEMPTS", queues.max_attempts.to_string())
            .env(
                "SWITCHYARD__RETRY_BASE_DELAY",
                duration::format(queues.retry_base),
            )
            .env(
                "SWITCHYARD__RETRY_MAX_DELAY",
                duration::format(queues.retry_base * 8),
            )
            .env("SWITCHYARD__SHUTDOWN_GRACE", "20s")
            .env_remove("CONFIG_FILE")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("the task-worker binary starts");
        let stdout = child.stdout.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let lines = log.clone();
        let reader = tokio::spawn(async move {
            use tokio::io::AsyncBufReadExt;
            let mut reader = tokio::io::BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                if let Ok(value) = serde_json::from_str::<serde_json::Value>(&line) {
                    lines.lock().unwrap().push(value);
                }
            }
        });
        WorkerProcess {
            child,
            log,
            ops_addr,
            reader,
        }
    }

    /// Ids of the tasks the process logged as done.
    pub(crate) fn done_ids(&self) -> Vec<String> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|line| message(line) == Some("task done"))
            .filter_map(|line| field(line, "task_id"))
            .collect()
    }

    /// Waits until the process logged `wanted`; fails after [`WAIT`].
    pub(crate) async fn wait_for_log(&self, wanted: &str) {
        testkit::eventually(&format!("the log line {wanted:?}"), WAIT, || async {
            let log = self.log.lock().unwrap();
            log.iter()
                .any(|line| message(line) == Some(wanted))
                .then_some(())
        })
        .await;
    }

    /// Sends `signal` (`-TERM`, `-KILL`) to the process.
    pub(crate) fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("still running").to_string();
        let status = std::process::Command::new("kill")
            .args([signal, &pid])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the exit (at most `within`) and for the last log lines.
    pub(crate) async fn wait(
        mut self,
        within: Duration,
    ) -> (std::process::ExitStatus, Vec<String>) {
        let status = tokio::time::timeout(within, self.child.wait())
            .await
            .expect("the worker process exits in time")
            .unwrap();
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut self.reader).await;
        let done = self.done_ids();
        (status, done)
    }
}

fn message(line: &serde_json::Value) -> Option<&str> {
    line.get("fields")
        .and_then(|f| f.get("message"))
        .or_else(|| line.get("message"))
        .and_then(|m| m.as_str())
}

fn field(line: &serde_json::Value, name: &str) -> Option<String> {
    line.get("fields")
        .and_then(|f| f.get(name))
        .or_else(|| line.get(name))
        .and_then(|v| v.as_str().map(String::from))
}

/// The body of `GET path` on an ops port, which must answer 200.
pub(crate) async fn ops_get(addr: std::net::SocketAddr, path: &str) -> String {
    let (status, body) = testkit::http_get(addr, path).await;
    assert_eq!(status, 200, "GET {path}: {body}");
    body
}

/// The real user-service, in-process, on a SQLite file of its own; its
/// `data_sync` events go to the test's queue.
pub(crate) struct UserServiceApp {
    pub(crate) grpc_addr: std::net::SocketAddr,
    shutdown: Shutdown,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
    dir: PathBuf,
}

impl UserServiceApp {
    /// Starts it on `grpc_addr` (port 0 picks one).
    pub(crate) async fn start(grpc_addr: std::net::SocketAddr, queues: &TestQueues) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "switchyard-worker-users-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self::start_in(dir, grpc_addr, queues).await
    }

    /// Starts it on `grpc_addr` with the user `(id, name, email)` already in
    /// its database: whoever calls that address first finds the user there
    /// (the user is created by a first run of the service on a port nobody
    /// else knows, over the same database file).
    pub(crate) async fn start_with_user(
        grpc_addr: std::net::SocketAddr,
        queues: &TestQueues,
        (user_id, name, email): (&str, &str, &str),
    ) -> Self {
        let mut seeding = Self::start("127.0.0.1:0".parse().unwrap(), queues).await;
        seeding.create_user(user_id, name, email).await;
        let dir = std::mem::take(&mut seeding.dir);
        seeding.stop().await;
        Self::start_in(dir, grpc_addr, queues).await
    }

    async fn start_in(dir: PathBuf, grpc_addr: std::net::SocketAddr, queues: &TestQueues) -> Self {
        let config = user_service::Config {
            grpc_addr,
            http_addr: "127.0.0.1:0".parse().unwrap(),
            ops_addr: "127.0.0.1:0".parse().unwrap(),
            database_url: SecretUrl::new(format!("sqlite://{}/users.db?mode=rwc", dir.display())),
            amqp_url: SecretUrl::new(queues.url.clone()),
            data_sync_queue: queues.data_sync.clone(),
            outbox_poll_interval: Duration::from_millis(100),
            drain_delay: Duration::ZERO,
            ..user_service::Config::default()
        };
        let app = user_service::Application::build(config)
            .await
            .expect("user-service builds");
        let grpc_addr = app.grpc_addr();
        let shutdown = Shutdown::new();
        let handle = tokio::spawn(app.run_until_stopped(shutdown.clone()));
        UserServiceApp {
            grpc_addr,
            shutdown,
            handle: Some(handle),
            dir,
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.grpc_addr)
    }

    /// Creates a user through the real client, retrying while the server starts.
    pub(crate) async fn create_user(&self, user_id: &str, name: &str, email: &str) {
        let client = user_client::UserClient::connect_lazy(user_client::ClientConfig {
            url: self.url(),
            ..Default::default()
        })
        .unwrap();
        let client = &client;
        testkit::eventually(&format!("user {user_id} created"), WAIT, || async move {
            let created = client
                .create_user(common::proto::user::v1::CreateUserRequest {
                    user_id: user_id.into(),
                    name: name.into(),
                    age: 30,
                    email: email.into(),
                })
                .await;
            created
                .inspect_err(|error| tracing::debug!(%error, "user-service not ready yet"))
                .ok()
        })
        .await;
    }

    pub(crate) async fn stop(mut self) {
        self.shutdown.trigger();
        if let Some(handle) = self.handle.take() {
            let _ = tokio::time::timeout(Duration::from_secs(30), handle).await;
        }
    }
}

impl Drop for UserServiceApp {
    fn drop(&mut self) {
        self.shutdown.trigger();
        // Empty when the directory was handed on to the next run.
        if !self.dir.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A handler with a bug: it panics.
#[derive(Debug)]
pub(crate) struct Panics;

impl TaskHandler for Panics {
    fn handle<'a>(&'a self, _task: &'a Task) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move { panic!("index out of bounds in a handler") })
    }
}
