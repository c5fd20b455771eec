//! Test fixtures: a fresh database per test (a temp SQLite file, or a new
//! PostgreSQL database that is dropped afterwards), the real service started
//! in-process on port 0, its own `data_sync` queue, and a TCP proxy that
//! stands between the service and a dependency so a test can cut the line.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use common::{
    config::SecretUrl,
    proto::user::v1::{
        CreateUserRequest, GetUserRequest, GetUserResponse, user_service_client::UserServiceClient,
    },
    shutdown::Shutdown,
};
use lapin::options::{BasicGetOptions, QueueDeleteOptions};
use sqlx::Connection as _;
use testkit::{AmqpFixture, amqp_url, block_on_cleanup};
pub(crate) use testkit::{eventually, free_port, http_get};
use tokio::{
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};
use tonic::transport::{Channel, ClientTlsConfig};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use user_service::{Application, Config, read_cache::ReadCache};

/// The PostgreSQL server of the machine (trust auth); each test creates its
/// own database on it.
pub(crate) fn postgres_admin_url() -> String {
    std::env::var("TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string())
}

/// Which database a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Db {
    Sqlite,
    Postgres,
}

/// Generates one `#[tokio::test]` per backend for `async fn $name(db: Db)`.
#[macro_export]
macro_rules! on_both_databases {
    ($($name:ident),+ $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    super::$name($crate::helpers::Db::Sqlite).await
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    super::$name($crate::helpers::Db::Postgres).await
                }
            }
        )+
    };
}

/// A database that exists for one test.
#[derive(Debug)]
pub(crate) struct TestDatabase {
    pub(crate) kind: Db,
    /// What the service connects to.
    pub(crate) url: String,
    /// PostgreSQL: the database name (dropped on `Drop`).
    pub(crate) name: String,
    /// SQLite: the directory of the file (removed on `Drop`).
    _dir: Option<tempfile::TempDir>,
}

impl TestDatabase {
    /// A fresh, empty database.
    pub(crate) async fn create(kind: Db) -> Self {
        let database = TestDatabase::named(kind);
        if kind == Db::Postgres {
            database.create_postgres_database().await;
        }
        database
    }

    /// The name and URL of a fresh database; on PostgreSQL not created yet
    /// (see [`TestDatabase::create_postgres_database`]).
    pub(crate) fn named(kind: Db) -> Self {
        let name = format!("user_service_test_{}", uuid::Uuid::new_v4().simple());
        match kind {
            Db::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                // A directory that does not exist yet: the service creates it.
                let url = format!("sqlite://{}/nested/{name}.db", dir.path().display());
                TestDatabase {
                    kind,
                    url,
                    name,
                    _dir: Some(dir),
                }
            }
            Db::Postgres => {
                let admin = postgres_admin_url();
                let base = admin
                    .rsplit_once('/')
                    .map(|(base, _)| base)
                    .unwrap_or(&admin);
                TestDatabase {
                    kind,
                    url: format!("{base}/{name}"),
                    name,
                    _dir: None,
                }
            }
        }
    }

    /// `CREATE DATABASE` for this test's name.
    pub(crate) async fn create_postgres_database(&self) {
        let mut admin = sqlx::PgConnection::connect(&postgres_admin_url())
            .await
            .expect("the local postgresql on 127.0.0.1:5432");
        sqlx::query(&format!("CREATE DATABASE \"{}\"", self.name))
            .execute(&mut admin)
            .await
            .expect("create the test database");
        admin.close().await.ok();
    }

    /// The SQLite file path.
    pub(crate) fn sqlite_file(&self) -> std::path::PathBuf {
        let path = self.url.strip_prefix("sqlite://").expect("a sqlite url");
        std::path::PathBuf::from(path)
    }

    /// Rows in the outbox, read directly from the database.
    pub(crate) async fn outbox_rows(&self) -> i64 {
        let query = "SELECT COUNT(*) FROM outbox";
        match self.kind {
            Db::Sqlite => {
                let url = format!("{}?mode=ro", self.url);
                let mut connection = sqlx::SqliteConnection::connect(&url).await.unwrap();
                sqlx::query_scalar(query)
                    .fetch_one(&mut connection)
                    .await
                    .unwrap()
            }
            Db::Postgres => {
                let mut connection = sqlx::PgConnection::connect(&self.url).await.unwrap();
                sqlx::query_scalar(query)
                    .fetch_one(&mut connection)
                    .await
                    .unwrap()
            }
        }
    }

    /// Takes the write lock of the users table on a separate connection and
    /// holds it until the returned guard is released: the service's writes
    /// (and on PostgreSQL its reads) wait behind it, as behind a long
    /// transaction of another client.
    pub(crate) async fn lock_users(&self) -> TableLock {
        match self.kind {
            Db::Sqlite => {
                let mut connection = sqlx::SqliteConnection::connect(&self.url).await.unwrap();
                sqlx::query("BEGIN IMMEDIATE")
                    .execute(&mut connection)
                    .await
                    .unwrap();
                TableLock::Sqlite(connection)
            }
            Db::Postgres => {
                let mut connection = sqlx::PgConnection::connect(&self.url).await.unwrap();
                sqlx::query("BEGIN").execute(&mut connection).await.unwrap();
                sqlx::query("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
                    .execute(&mut connection)
                    .await
                    .unwrap();
                TableLock::Postgres(connection)
            }
        }
    }

    /// PostgreSQL: how many of the service's queries wait for a lock.
    pub(crate) async fn queries_waiting_for_a_lock(&self) -> i64 {
        let mut connection = sqlx::PgConnection::connect(&postgres_admin_url())
            .await
            .unwrap();
        sqlx::query_scalar(
            "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = $1 AND wait_event_type = 'Lock'",
        )
        .bind(&self.name)
        .fetch_one(&mut connection)
        .await
        .unwrap()
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if self.kind == Db::Postgres {
            let name = self.name.clone();
            block_on_cleanup(async move {
                if let Ok(mut admin) = sqlx::PgConnection::connect(&postgres_admin_url()).await {
                    let drop = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
                    if let Err(error) = sqlx::query(&drop).execute(&mut admin).await {
                        eprintln!("cannot drop test database {name}: {error}");
                    }
                }
            });
        }
    }
}

/// A held table lock; [`TableLock::release`] rolls its transaction back.
#[derive(Debug)]
pub(crate) enum TableLock {
    Sqlite(sqlx::SqliteConnection),
    Postgres(sqlx::PgConnection),
}

impl TableLock {
    pub(crate) async fn release(self) {
        match self {
            TableLock::Sqlite(mut connection) => {
                sqlx::query("ROLLBACK")
                    .execute(&mut connection)
                    .await
                    .unwrap();
                connection.close().await.ok();
            }
            TableLock::Postgres(mut connection) => {
                sqlx::query("ROLLBACK")
                    .execute(&mut connection)
                    .await
                    .unwrap();
                connection.close().await.ok();
            }
        }
    }
}

/// A queue name of our own, deleted on `Drop`.
#[derive(Debug)]
pub(crate) struct TestQueue {
    pub(crate) name: String,
}

impl TestQueue {
    pub(crate) fn new() -> Self {
        TestQueue {
            name: format!("data_sync.test.{}", uuid::Uuid::new_v4().simple()),
        }
    }

    /// Deletes the queue now (as an operator might by mistake).
    pub(crate) async fn delete_now(&self) {
        let amqp = AmqpFixture::connect(&amqp_url()).await;
        amqp.channel
            .queue_delete(self.name.as_str().into(), QueueDeleteOptions::default())
            .await
            .unwrap();
        amqp.connection.close(200, "done".into()).await.ok();
    }

    /// The next message off the queue, which must come within `timeout`;
    /// panics with `what` otherwise.
    pub(crate) async fn expect_message(
        &self,
        timeout: Duration,
        what: &str,
    ) -> lapin::message::BasicGetMessage {
        self.next_message(timeout).await.expect(what)
    }

    /// Takes the next message off the queue, waiting up to `timeout`.
    pub(crate) async fn next_message(
        &self,
        timeout: Duration,
    ) -> Option<lapin::message::BasicGetMessage> {
        let AmqpFixture {
            connection,
            channel,
        } = AmqpFixture::connect(&amqp_url()).await;
        let deadline = tokio::time::Instant::now() + timeout;
        let mut message = None;
        while tokio::time::Instant::now() < deadline {
            // The queue may not exist before the relay's first declare.
            match channel
                .basic_get(self.name.as_str().into(), BasicGetOptions { no_ack: true })
                .await
            {
                Ok(Some(got)) => {
                    message = Some(got);
                    break;
                }
                Ok(None) => {}
                Err(_) => {
                    // A channel error (404: no queue yet) closes the channel.
                    return self.retry_next_message(deadline).await;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        connection.close(200, "done".into()).await.ok();
        message
    }

    async fn retry_next_message(
        &self,
        deadline: tokio::time::Instant,
    ) -> Option<lapin::message::BasicGetMessage> {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return None;
        }
        Box::pin(self.next_message(left)).await
    }
}

impl Drop for TestQueue {
    fn drop(&mut self) {
        testkit::delete_queues_on_drop(amqp_url(), vec![self.name.clone()]);
    }
}

/// The configuration tests start from: port 0 everywhere, no drain delay.
pub(crate) fn test_config(database_url: &str, queue: &str) -> Config {
    Config {
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        http_addr: "127.0.0.1:0".parse().unwrap(),
        ops_addr: "127.0.0.1:0".parse().unwrap(),
        database_url: SecretUrl::new(database_url),
        amqp_url: SecretUrl::new(amqp_url()),
        data_sync_queue: queue.to_string(),
        outbox_poll_interval: Duration::from_millis(200),
        db_acquire_timeout: Duration::from_secs(2),
        drain_delay: Duration::ZERO,
        shutdown_grace: Duration::from_secs(20),
        ..Config::default()
    }
}

/// A running service and what the test needs to talk to it.
#[derive(Debug)]
pub(crate) struct TestApp {
    pub(crate) grpc_addr: SocketAddr,
    pub(crate) http_addr: SocketAddr,
    pub(crate) ops_addr: SocketAddr,
    pub(crate) shutdown: Shutdown,
    pub(crate) handle: JoinHandle<anyhow::Result<()>>,
    pub(crate) queue: TestQueue,
    /// Shared with the test's other replicas, dropped after the last one.
    pub(crate) db: Arc<TestDatabase>,
    pub(crate) cache: Arc<ReadCache>,
    /// The harness's own TLS settings when the service serves TLS.
    pub(crate) client_tls: Option<ClientTlsConfig>,
}

impl TestApp {
    /// A fresh database and queue, the service started and serving.
    pub(crate) async fn spawn(kind: Db) -> TestApp {
        TestApp::spawn_with(kind, |_| {}).await
    }

    /// Like [`TestApp::spawn`], with a config tweak.
    pub(crate) async fn spawn_with(kind: Db, tweak: impl FnOnce(&mut Config)) -> TestApp {
        common::telemetry::init_for_tests();
        let db = TestDatabase::create(kind).await;
        let queue = TestQueue::new();
        let mut config = test_config(&db.url, &queue.name);
        tweak(&mut config);
        let app = TestApp::start(config, db, queue).await;
        app.wait_until_serving().await;
        app
    }

    /// Like [`TestApp::spawn_with`], serving TLS with `pki`'s server
    /// certificate (`mutual`: client certificates required); the harness's
    /// own calls trust the test CA and show its client certificate.
    pub(crate) async fn spawn_tls(
        kind: Db,
        pki: &crate::pki::Pki,
        mutual: bool,
        tweak: impl FnOnce(&mut Config),
    ) -> TestApp {
        common::telemetry::init_for_tests();
        let db = TestDatabase::create(kind).await;
        let queue = TestQueue::new();
        let mut config = test_config(&db.url, &queue.name);
        pki.serve(&mut config, mutual);
        tweak(&mut config);
        let mut app = TestApp::start(config, db, queue).await;
        let read = |name| std::fs::read(pki.path(name)).unwrap();
        app.client_tls = Some(
            ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(read(
                    crate::pki::CA,
                )))
                .identity(tonic::transport::Identity::from_pem(
                    read(crate::pki::CLIENT_CERT),
                    read(crate::pki::CLIENT_KEY),
                )),
        );
        app.wait_until_serving().await;
        app
    }

    /// A fresh PostgreSQL database reached through a [`TcpProxy`] the test
    /// can cut; the service started with `tweak` and serving.
    pub(crate) async fn spawn_behind_proxy(tweak: impl FnOnce(&mut Config)) -> (TestApp, TcpProxy) {
        let db = TestDatabase::create(Db::Postgres).await;
        let proxy = TcpProxy::start("127.0.0.1:0".parse().unwrap(), POSTGRES_ADDR).await;
        let through_proxy = db
            .url
            .replace(&POSTGRES_ADDR.to_string(), &proxy.addr.to_string());
        let queue = TestQueue::new();
        let mut config = test_config(&through_proxy, &queue.name);
        tweak(&mut config);
        let app = TestApp::start(config, db, queue).await;
        app.wait_until_serving().await;
        (app, proxy)
    }

    /// Another replica on this one's database, with a `data_sync` queue of
    /// its own (so an event shows which replica relayed it); serving.
    pub(crate) async fn replica(&self, tweak: impl FnOnce(&mut Config)) -> TestApp {
        let queue = TestQueue::new();
        let mut config = test_config(&self.db.url, &queue.name);
        tweak(&mut config);
        let replica = TestApp::start(config, self.db.clone(), queue).await;
        replica.wait_until_serving().await;
        replica
    }

    /// Starts the service with `config`; does not wait for the database.
    pub(crate) async fn start(
        config: Config,
        db: impl Into<Arc<TestDatabase>>,
        queue: TestQueue,
    ) -> TestApp {
        common::telemetry::init_for_tests();
        let application = Application::build(config)
            .await
            .expect("the service builds");
        let shutdown = Shutdown::new();
        TestApp {
            grpc_addr: application.grpc_addr(),
            http_addr: application.http_addr(),
            ops_addr: application.ops_addr(),
            cache: application.read_cache(),
            handle: tokio::spawn(application.run_until_stopped(shutdown.clone())),
            shutdown,
            queue,
            db: db.into(),
            client_tls: None,
        }
    }

    pub(crate) fn grpc_url(&self) -> String {
        let scheme = if self.client_tls.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.grpc_addr)
    }

    pub(crate) fn http_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http_addr)
    }

    /// A gRPC client on its own connection.
    pub(crate) async fn grpc(&self) -> UserServiceClient<Channel> {
        UserServiceClient::new(self.channel().await)
    }

    /// A new connection to the gRPC port (over TLS when the service serves it).
    pub(crate) async fn channel(&self) -> Channel {
        let mut endpoint = Channel::from_shared(self.grpc_url()).unwrap();
        if let Some(tls) = &self.client_tls {
            endpoint = endpoint.tls_config(tls.clone()).unwrap();
        }
        endpoint.connect().await.expect("connect to the service")
    }

    pub(crate) async fn health(&self) -> HealthClient<Channel> {
        HealthClient::new(self.channel().await)
    }

    /// The overall health status ("" service).
    pub(crate) async fn health_status(&self) -> i32 {
        self.health()
            .await
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .expect("health check answers")
            .into_inner()
            .status
    }

    /// Polls health until SERVING (at most 30 s).
    pub(crate) async fn wait_until_serving(&self) {
        let serving = tonic_health::pb::health_check_response::ServingStatus::Serving as i32;
        eventually(
            "the service to report SERVING",
            Duration::from_secs(30),
            || async { (self.health_status().await == serving).then_some(()) },
        )
        .await;
    }

    /// Creates a user over gRPC.
    pub(crate) async fn create_user(&self, id: &str, name: &str, age: i32) -> GetUserResponse {
        self.grpc()
            .await
            .create_user(CreateUserRequest {
                user_id: id.to_string(),
                name: name.to_string(),
                age,
                email: format!("{id}@example.com"),
            })
            .await
            .expect("create user")
            .into_inner()
    }

    /// `GetUser` for `id` on a connection of its own.
    pub(crate) async fn get_user(&self, id: &str) -> Result<GetUserResponse, tonic::Status> {
        self.grpc()
            .await
            .get_user(GetUserRequest {
                user_id: id.to_string(),
            })
            .await
            .map(tonic::Response::into_inner)
    }

    /// `GET path` on the JSON gateway, its body decoded.
    pub(crate) async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        http: &reqwest::Client,
        path: &str,
    ) -> T {
        http.get(self.http_url(path))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Waits (at most 10 s) until the relay has emptied the outbox.
    pub(crate) async fn wait_for_empty_outbox(&self) {
        eventually(
            "the outbox to be emptied",
            Duration::from_secs(10),
            || async { (self.db.outbox_rows().await == 0).then_some(()) },
        )
        .await;
    }

    /// The ops endpoint's `/metrics` text.
    pub(crate) async fn metrics(&self) -> String {
        let (status, body) = http_get(self.ops_addr, "/metrics").await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// Triggers shutdown and waits for `run_until_stopped` to return.
    pub(crate) async fn stop(self) -> (Arc<TestDatabase>, TestQueue) {
        self.shutdown.trigger();
        tokio::time::timeout(Duration::from_secs(30), self.handle)
            .await
            .expect("the service stops within 30 s")
            .expect("the service task does not panic")
            .expect("the service stops cleanly");
        (self.db, self.queue)
    }
}

/// The machine's PostgreSQL, where [`TcpProxy`]s forward to.
pub(crate) const POSTGRES_ADDR: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::LOCALHOST,
    5432,
));

/// A TCP forwarder to `target`. Stopping it closes the listening socket and
/// every forwarded connection: to the service, the dependency behind it is
/// down (connections reset, new ones refused).
#[derive(Debug)]
pub(crate) struct TcpProxy {
    pub(crate) addr: SocketAddr,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl TcpProxy {
    /// Listens on `listen` (port 0 for any) and forwards to `target`. A
    /// port just released by a stopped proxy may take a moment to be free.
    pub(crate) async fn start(listen: SocketAddr, target: SocketAddr) -> TcpProxy {
        let mut attempts = 0;
        let listener = loop {
            match TcpListener::bind(listen).await {
                Ok(listener) => break listener,
                Err(error) if attempts < 100 => {
                    attempts += 1;
                    let _ = error;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(error) => panic!("proxy cannot bind {listen}: {error}"),
            }
        };
        let addr = listener.local_addr().unwrap();
        let tasks: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let connections = tasks.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let forward = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                connections.lock().unwrap().push(forward);
            }
        });
        tasks.lock().unwrap().push(accept);
        TcpProxy { addr, tasks }
    }

    /// Closes the listener and every connection, and returns once they are
    /// really gone: `abort` only takes effect at a task's next poll, and a
    /// forwarding task caught mid-copy would otherwise still serve a query.
    pub(crate) async fn stop(&self) {
        let tasks: Vec<JoinHandle<()>> = self.tasks.lock().unwrap().drain(..).collect();
        for task in &tasks {
            task.abort();
        }
        for task in tasks {
            let _ = task.await;
        }
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}
