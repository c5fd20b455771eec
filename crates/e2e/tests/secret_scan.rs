//! No service prints a secret: every service runs as its
//! real binary with known secrets in its URLs, some given in the
//! environment, some as `<NAME>_FILE`, logging at `debug`; its `/readyz`,
//! `/metrics` and `/config`, and everything it wrote to stdout and stderr
//! from start to exit, must not contain any of them.
//!
//! The scan means something only if the secrets were really used, so the
//! brokers check them: a private nats-server that requires a user and
//! password, a private RabbitMQ node with a user of our own, PostgreSQL and
//! Redis as the machine runs them (trust auth and a `nopass` default user:
//! they take any password, so the secret travels and is accepted). Every
//! service must become ready, which it can only do with the right secret.
//! Two more instances get a wrong password (NATS and RabbitMQ refuse it):
//! the error paths, reconnect loops and `/readyz` texts must not print it
//! either.

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use e2e::process::{Service, free_port};
use testkit::{RabbitNode, eventually, http_get};

/// The secrets of one run: unique, so a hit cannot be a coincidence.
struct Secrets {
    nats: String,
    amqp: String,
    database: String,
    redis: String,
    /// A password the brokers refuse.
    wrong: String,
}

impl Secrets {
    fn new(id: &str) -> Self {
        let secret = |what: &str| format!("s3cr3t-{id}-{what}");
        Secrets {
            nats: secret("nats"),
            amqp: secret("amqp"),
            database: secret("database"),
            redis: secret("redis"),
            wrong: secret("wrong"),
        }
    }

    fn all(&self) -> [&str; 5] {
        [
            &self.nats,
            &self.amqp,
            &self.database,
            &self.redis,
            &self.wrong,
        ]
    }
}

/// A private `nats-server` that accepts only `user` with `password`.
struct AuthenticatedNats {
    port: u16,
    child: Child,
}

impl AuthenticatedNats {
    async fn start(user: &str, password: &str) -> Self {
        let port = free_port().unwrap();
        let child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .args(["--user", user, "--pass", password])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server on PATH");
        eventually(
            "the private nats-server",
            Duration::from_secs(20),
            || async {
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .ok()
            },
        )
        .await;
        AuthenticatedNats { port, child }
    }

    fn url(&self, user: &str, password: &str) -> String {
        format!("nats://{user}:{password}@127.0.0.1:{}", self.port)
    }
}

impl Drop for AuthenticatedNats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Adds `user` with `password` and every permission on `/` to `node`.
fn add_rabbit_user(node: &RabbitNode, user: &str, password: &str) {
    for args in [
        vec!["add_user", user, password],
        vec!["set_permissions", "-p", "/", user, ".*", ".*", ".*"],
    ] {
        let output = Command::new("rabbitmqctl")
            .args(["-n", &node.name])
            .args(&args)
            .output()
            .expect("rabbitmqctl is installed");
        assert!(
            output.status.success(),
            "rabbitmqctl {}: {}",
            args[0],
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// A PostgreSQL database of its own on the machine's server, dropped on drop.
struct Database(String);

impl Database {
    fn create(name: String) -> Self {
        psql(&format!("CREATE DATABASE {name}"));
        Database(name)
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        psql(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.0));
    }
}

fn psql(statement: &str) {
    let output = Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            "test",
            "-c",
            statement,
        ])
        .output()
        .expect("psql is installed");
    assert!(
        output.status.success(),
        "psql {statement}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// One running binary under scan.
struct Scanned {
    /// What it is in failure messages: the binary and its case.
    label: String,
    service: Service,
    ops: SocketAddr,
    /// The bodies of `/readyz`, `/metrics` and `/config`, fetched while it ran.
    answers: Vec<(String, String)>,
}

/// The files of one run (secret files, config files, logs); removed on drop.
struct Run {
    dir: PathBuf,
}

impl Drop for Run {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Run {
    /// A file holding `value` and a trailing newline, as `echo > file` writes
    /// a Docker secret.
    fn secret_file(&self, name: &str, value: &str) -> String {
        let path = self.dir.join(name);
        std::fs::write(&path, format!("{value}\n")).unwrap();
        path.display().to_string()
    }

    fn config_file(&self, name: &str, toml: &str) -> String {
        let path = self.dir.join(format!("{name}.toml"));
        std::fs::write(&path, toml).unwrap();
        path.display().to_string()
    }

    fn spawn(
        &self,
        label: &str,
        binary: &str,
        args: &[&str],
        mut env: Vec<(&str, String)>,
    ) -> Scanned {
        let ops: SocketAddr = ([127, 0, 0, 1], free_port().unwrap()).into();
        env.push(("OPS_ADDR", ops.to_string()));
        // Every line our code and its libraries log, not only `info`.
        env.push(("RUST_LOG", "debug".into()));
        let service = Service::spawn(binary, args, &env, &self.dir.join("logs").join(label))
            .unwrap_or_else(|error| panic!("{label}: {error:#}"));
        Scanned {
            label: label.to_string(),
            service,
            ops,
            answers: Vec::new(),
        }
    }
}

/// Waits until `scanned` answers `/readyz` with `expected_status`, then
/// keeps its `/readyz`, `/metrics` and `/config`.
async fn fetch_ops(scanned: &mut Scanned, expected_status: u16) {
    let ops = scanned.ops;
    let readyz = eventually(
        &format!("{} /readyz {expected_status}", scanned.label),
        Duration::from_secs(90),
        || async move {
            tokio::net::TcpStream::connect(ops).await.ok()?;
            let (status, body) = http_get(ops, "/readyz").await;
            (status == expected_status).then_some(body)
        },
    )
    .await;
    scanned.answers.push(("/readyz".into(), readyz));
    for path in ["/metrics", "/config"] {
        let (status, body) = http_get(ops, path).await;
        assert_eq!(status, 200, "{} {path}: {body}", scanned.label);
        scanned.answers.push((path.into(), body));
    }
}

/// What `secrets` found in `scanned`'s answers and output: `label where: secret`.
fn leaks(scanned: &Scanned, log: &str, secrets: &Secrets) -> Vec<String> {
    let mut found = Vec::new();
    for secret in secrets.all() {
        for (path, body) in &scanned.answers {
            if body.contains(secret) {
                found.push(format!("{} {path}: {secret}", scanned.label));
            }
        }
        for line in log.lines().filter(|line| line.contains(secret)) {
            found.push(format!("{} log: {line}", scanned.label));
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_service_prints_its_secrets() {
    // Arrange: brokers that check the secrets.
    let id = testkit::unique();
    let secrets = Secrets::new(&id);
    let run = Run {
        dir: std::env::temp_dir().join(format!("switchyard-secret-scan-{id}")),
    };
    std::fs::create_dir_all(&run.dir).unwrap();
    let nats = AuthenticatedNats::start("switchyard", &secrets.nats).await;
    let rabbit = RabbitNode::start().await;
    add_rabbit_user(&rabbit, "switchyard", &secrets.amqp);
    let database = Database::create(format!("secret_scan_{id}"));
    let nats_url = nats.url("switchyard", &secrets.nats);
    let amqp_url = format!(
        "amqp://switchyard:{}@127.0.0.1:{}/%2f",
        secrets.amqp, rabbit.port
    );
    let database_url = format!(
        "postgres://postgres:{}@127.0.0.1:5432/{}",
        secrets.database, database.0
    );
    let redis_url = format!("redis://default:{}@127.0.0.1:6379/0", secrets.redis);
    let grpc_port = free_port().unwrap();
    let subjects = format!("subject_prefix = \"scan.{id}.sensor.data\"\n");

    // Act: every service, each with some secrets from files.
    let mut ready = vec![
        run.spawn(
            "sensor-publisher",
            "sensor-publisher",
            &[
                "--config",
                &run.config_file(
                    "sensor-publisher",
                    &format!("{subjects}rate_per_sec = 2.0\n[fleet]\nsensors = 1\nkinds = [\"temperature\"]\n"),
                ),
            ],
            vec![("NATS_URL", nats_url.clone())],
        ),
        run.spawn(
            "monitor-subscriber",
            "monitor-subscriber",
            &["--config", &run.config_file("monitor-subscriber", &subjects)],
            vec![
                ("NATS_URL", String::new()),
                ("NATS_URL_FILE", run.secret_file("monitor-nats-url", &nats_url)),
            ],
        ),
        run.spawn(
            "alert-subscriber",
            "alert-subscriber",
            &[
                "--config",
                &run.config_file(
                    "alert-subscriber",
                    &format!("{subjects}task_queue = \"scan_{id}_task_queue\"\n"),
                ),
            ],
            vec![
                ("NATS_URL", nats_url.clone()),
                ("AMQP_URL", String::new()),
                ("AMQP_URL_FILE", run.secret_file("alert-amqp-url", &amqp_url)),
            ],
        ),
        run.spawn(
            "user-service",
            "user-service",
            &[],
            vec![
                ("GRPC_ADDR", format!("127.0.0.1:{grpc_port}")),
                ("HTTP_ADDR", format!("127.0.0.1:{}", free_port().unwrap())),
                ("DATABASE_URL", String::new()),
                ("DATABASE_URL_FILE", run.secret_file("database-url", &database_url)),
                ("AMQP_URL", String::new()),
                ("AMQP_URL_FILE", run.secret_file("user-amqp-url", &amqp_url)),
            ],
        ),
        run.spawn(
            "task-worker",
            "task-worker",
            &[],
            vec![
                ("AMQP_URL", amqp_url.clone()),
                ("REDIS_URL", String::new()),
                ("REDIS_URL_FILE", run.secret_file("redis-url", &redis_url)),
                ("USER_SERVICE_URL", format!("http://127.0.0.1:{grpc_port}")),
                ("SWITCHYARD__QUEUE", format!("scan_{id}_task_queue")),
            ],
        ),
        run.spawn(
            "task-producer",
            "task-producer",
            // Long enough to be running when its ops port is read; stopped by SIGTERM.
            &["--count", "1000", "--rate", "2", "--kind", "sleep", "--payload", "{\"ms\": 1}"],
            vec![
                ("AMQP_URL", String::new()),
                ("AMQP_URL_FILE", run.secret_file("producer-amqp-url", &amqp_url)),
                ("SWITCHYARD__QUEUE", format!("scan_{id}_task_queue")),
            ],
        ),
    ];
    let wrong_nats = nats.url("switchyard", &secrets.wrong);
    let wrong_amqp = format!(
        "amqp://switchyard:{}@127.0.0.1:{}/%2f",
        secrets.wrong, rabbit.port
    );
    let mut refused = vec![
        run.spawn(
            "monitor-subscriber-wrong-password",
            "monitor-subscriber",
            &[
                "--config",
                &run.config_file("monitor-subscriber", &subjects),
            ],
            vec![("NATS_URL", wrong_nats)],
        ),
        run.spawn(
            "task-worker-wrong-password",
            "task-worker",
            &[],
            vec![
                ("AMQP_URL", String::new()),
                (
                    "AMQP_URL_FILE",
                    run.secret_file("wrong-amqp-url", &wrong_amqp),
                ),
                ("SWITCHYARD__QUEUE", format!("scan_{id}_wrong_queue")),
            ],
        ),
    ];
    // Ready proves the right secret reached the broker or database.
    for scanned in &mut ready {
        fetch_ops(scanned, 200).await;
    }
    for scanned in &mut refused {
        fetch_ops(scanned, 503).await;
    }
    // Some reconnect attempts, each a chance to log the URL.
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Assert: nothing anywhere, from start to a graceful exit.
    let mut found = Vec::new();
    for mut scanned in ready.into_iter().chain(refused) {
        scanned.service.stop(Duration::from_secs(20));
        let log = scanned.service.log();
        assert!(
            log.contains(&format!("starting {}", binary_of(&scanned.label))),
            "{}: the scan needs its log, got: {log}",
            scanned.label
        );
        found.extend(leaks(&scanned, &log, &secrets));
        let config = &scanned
            .answers
            .iter()
            .find(|(path, _)| path == "/config")
            .expect("fetched")
            .1;
        assert!(
            config.contains("***@127.0.0.1"),
            "{}: /config shows its URLs redacted: {config}",
            scanned.label
        );
    }
    assert!(found.is_empty(), "secrets printed:\n{}", found.join("\n"));
}

/// `task-worker-wrong-password` → `task-worker`.
fn binary_of(label: &str) -> &str {
    label.strip_suffix("-wrong-password").unwrap_or(label)
}
