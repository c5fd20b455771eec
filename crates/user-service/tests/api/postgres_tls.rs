//! PostgreSQL over TLS, with the `sslmode`, `sslrootcert`, `sslcert` and
//! `sslkey` parameters of `DATABASE_URL`: the real `user-service` binary
//! against a private PostgreSQL that takes TLS connections only
//! ([`testkit::PostgresServer`], certificates made at test time).
//!
//! The right CA (and, for the certificate role, the right client
//! certificate) → users are created and read through gRPC, over a
//! connection the server logs as TLS. A CA that did not sign the server,
//! or `sslmode=disable`, leave the service running and not ready
//! (`/readyz` 503, calls `UNAVAILABLE`) while it retries, the cause in its
//! log; the database password appears nowhere in what it printed.

use std::{
    net::SocketAddr,
    process::Stdio,
    sync::{Arc, Mutex},
    time::Duration,
};

use common::proto::user::v1::{
    CreateUserRequest, GetUserRequest, user_service_client::UserServiceClient,
};
use testkit::{PostgresServer, TestPki, amqp_url};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

use crate::helpers::{TestQueue, eventually, free_port, http_get};

/// The `user-service` binary running on free ports with `DATABASE_URL`,
/// everything it prints kept; killed on drop.
struct Service {
    grpc: SocketAddr,
    ops: SocketAddr,
    output: Arc<Mutex<String>>,
    _child: tokio::process::Child,
    _queue: TestQueue,
}

impl Service {
    fn start(database_url: &str) -> Service {
        let addr = || SocketAddr::from(([127, 0, 0, 1], free_port()));
        let (grpc, http, ops) = (addr(), addr(), addr());
        let queue = TestQueue::new();
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_user-service"))
            // Nothing from the test's environment (PGSSLMODE, …) leaks in.
            .env_clear()
            .env("DATABASE_URL", database_url)
            .env("AMQP_URL", amqp_url())
            .env("GRPC_ADDR", grpc.to_string())
            .env("HTTP_ADDR", http.to_string())
            .env("OPS_ADDR", ops.to_string())
            .env("SWITCHYARD__DATA_SYNC_QUEUE", &queue.name)
            .env("SWITCHYARD__DRAIN_DELAY", "0")
            // Everything, the clients' debug lines included, must keep the
            // password out.
            .env("RUST_LOG", "debug")
            .env("LOG_FORMAT", "json")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("the user-service binary starts");
        let output = Arc::new(Mutex::new(String::new()));
        collect(child.stdout.take().unwrap(), output.clone());
        collect(child.stderr.take().unwrap(), output.clone());
        Service {
            grpc,
            ops,
            output,
            _child: child,
            _queue: queue,
        }
    }

    /// Everything printed so far.
    fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    /// The lines printed so far that contain `needle`.
    fn lines_with(&self, needle: &str) -> Vec<String> {
        self.output()
            .lines()
            .filter(|line| line.contains(needle))
            .map(str::to_string)
            .collect()
    }

    /// `/readyz`: its status and the report.
    async fn readyz(&self) -> (u16, serde_json::Value) {
        let (status, body) = http_get(self.ops, "/readyz").await;
        let report = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("/readyz is not JSON ({e}): {body}"));
        (status, report)
    }

    /// Waits until `/readyz` answers 200 (the database is connected and
    /// migrated).
    async fn wait_until_ready(&self) {
        eventually(
            "user-service to be ready on its database",
            Duration::from_secs(30),
            || async {
                let answered = tokio::net::TcpStream::connect(self.ops).await.is_ok();
                (answered && self.readyz().await.0 == 200).then_some(())
            },
        )
        .await;
    }

    async fn grpc(&self) -> UserServiceClient<tonic::transport::Channel> {
        UserServiceClient::connect(format!("http://{}", self.grpc))
            .await
            .expect("the grpc port answers")
    }

    /// Waits for `needle` in a line of the output (the service logs
    /// asynchronously); returns that line.
    async fn wait_for_line(&self, needle: &str) -> String {
        eventually(
            &format!("a line with {needle:?} from user-service"),
            Duration::from_secs(20),
            || async { self.lines_with(needle).into_iter().next() },
        )
        .await
    }
}

/// Appends every line of `stream` to `output`, in the background.
fn collect(stream: impl AsyncRead + Unpin + Send + 'static, output: Arc<Mutex<String>>) {
    tokio::spawn(async move {
        let mut lines = BufReader::new(stream).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let mut output = output.lock().unwrap();
            output.push_str(&line);
            output.push('\n');
        }
    });
}

/// `url` with TLS parameters; the paths need no escaping (temp dirs of
/// letters, digits and dashes).
fn with_params(url: &str, params: &[(&str, String)]) -> String {
    let query: Vec<String> = params
        .iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect();
    format!("{url}?{}", query.join("&"))
}

/// The assertions shared by the refusal tests: up, not ready, calls
/// `UNAVAILABLE`, retrying (two attempts logged at least), `why` in the
/// log line, and the password nowhere.
async fn assert_not_ready_and_retrying(service: &Service, why: &str, password: &str) {
    let first = service.wait_for_line("cannot connect, retrying").await;
    assert!(first.contains(why), "{first}");
    assert!(first.contains("user store"), "{first}");
    eventually(
        "a second connection attempt",
        Duration::from_secs(20),
        || async { (service.lines_with("cannot connect, retrying").len() >= 2).then_some(()) },
    )
    .await;
    let (status, report) = service.readyz().await;
    assert_eq!(status, 503, "{report}");
    assert_eq!(report["checks"]["database"], false, "{report}");
    let reason = report["reasons"]["database"].as_str().unwrap_or_default();
    assert!(reason.contains(why), "/readyz says why: {report}");
    let refused = service
        .grpc()
        .await
        .get_user(GetUserRequest {
            user_id: "u-1".into(),
        })
        .await
        .expect_err("no database, no answer");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(!report.to_string().contains(password), "{report}");
    let output = service.output();
    assert!(
        !output.contains(password),
        "the database password was printed:\n{output}"
    );
}

/// Creates a user over gRPC and reads it back.
async fn assert_users_round_trip(service: &Service) {
    let created = service
        .grpc()
        .await
        .create_user(CreateUserRequest {
            user_id: "u-tls-1".into(),
            name: "Ada".into(),
            age: 36,
            email: "ada@example.com".into(),
        })
        .await
        .expect("create over a tls database connection")
        .into_inner();
    let fetched = service
        .grpc()
        .await
        .get_user(GetUserRequest {
            user_id: "u-tls-1".into(),
        })
        .await
        .expect("get over a tls database connection")
        .into_inner();
    assert_eq!(created.name, "Ada");
    assert_eq!(fetched, created);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_with_the_servers_ca_serves_users_over_tls() {
    // Arrange
    let pki = TestPki::generate();
    let postgres = PostgresServer::start(&pki).await;
    let url = with_params(
        &postgres.password_url(),
        &[
            ("sslmode", "verify-full".into()),
            ("sslrootcert", pki.ca().display().to_string()),
        ],
    );

    // Act
    let service = Service::start(&url);
    service.wait_until_ready().await;

    // Assert
    assert_users_round_trip(&service).await;
    let server_log = postgres.log();
    assert!(
        server_log.contains("user=switchyard database=switchyard SSL enabled"),
        "the server saw TLS connections: {server_log}"
    );
    let output = service.output();
    assert!(
        !output.contains(postgres.password()),
        "the database password was printed:\n{output}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_that_did_not_sign_the_server_leaves_the_service_up_not_ready_and_retrying() {
    // Arrange
    let pki = TestPki::generate();
    let postgres = PostgresServer::start(&pki).await;
    let url = with_params(
        &postgres.password_url(),
        &[
            ("sslmode", "verify-full".into()),
            ("sslrootcert", pki.other_ca().display().to_string()),
        ],
    );

    // Act
    let service = Service::start(&url);

    // Assert
    assert_not_ready_and_retrying(&service, "UnknownIssuer", postgres.password()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sslmode_disable_against_a_tls_only_server_is_refused_cleanly() {
    // Arrange
    let pki = TestPki::generate();
    let postgres = PostgresServer::start(&pki).await;
    let url = with_params(&postgres.password_url(), &[("sslmode", "disable".into())]);

    // Act
    let service = Service::start(&url);

    // Assert: the server's own words, passed on.
    assert_not_ready_and_retrying(&service, "no encryption", postgres.password()).await;
    assert!(
        postgres.log().contains("no encryption"),
        "{}",
        postgres.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_logs_in_without_a_password() {
    // Arrange: the role named like the certificate, `cert` authentication.
    let pki = TestPki::generate();
    let postgres = PostgresServer::start(&pki).await;
    let url = with_params(
        &postgres.certificate_url(),
        &[
            ("sslmode", "verify-full".into()),
            ("sslrootcert", pki.ca().display().to_string()),
            ("sslcert", pki.client_cert().display().to_string()),
            ("sslkey", pki.client_key().display().to_string()),
        ],
    );

    // Act
    let service = Service::start(&url);
    service.wait_until_ready().await;

    // Assert
    assert_users_round_trip(&service).await;
    let server_log = postgres.log();
    assert!(
        server_log.contains(&format!(
            "user={} database=certified SSL enabled",
            TestPki::CLIENT_NAME
        )),
        "{server_log}"
    );
}
