//! A private RabbitMQ node for tests that restart the broker or start it
//! late, or need a TLS listener and a user of their own.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::Mutex,
    time::Duration,
};

use lapin::{Connection, ConnectionProperties};

use crate::{TestPki, free_port, unique};

/// A RabbitMQ node of the test's own on free ports, stopped and deleted on
/// drop. It runs as user `rabbitmq`, so its directories are chowned to it
/// (the tests that use it run as root, as CI does). The shared broker is
/// never touched.
#[derive(Debug)]
pub struct RabbitNode {
    /// Erlang node name, `switchyard-test-<port>@localhost`.
    pub name: String,
    /// The AMQP port.
    pub port: u16,
    /// The AMQPS (TLS) port, for a node made by [`RabbitNode::with_tls`].
    pub tls_port: Option<u16>,
    /// The user the node was created with, and its password: `guest` and
    /// `guest`, or a user of the test's own ([`RabbitNode::with_tls`]).
    pub user: (String, String),
    dist_port: u16,
    dir: PathBuf,
    server: Mutex<Option<Child>>,
}

impl RabbitNode {
    /// Prepares a node without starting it, so a test can point a service
    /// at a broker that is still down; [`RabbitNode::boot`] starts it.
    pub fn new() -> Self {
        Self::prepare(None)
    }

    /// Prepares a node with, besides its plain listener, a TLS listener on
    /// [`RabbitNode::tls_port`] serving `pki`'s server certificate, and a
    /// user of its own instead of `guest` (created at first boot with
    /// `default_user`). With `verify_clients` the node asks for a client
    /// certificate signed by `pki`'s CA and refuses a connection without one
    /// (mutual TLS). Not started: [`RabbitNode::boot`].
    pub fn with_tls(pki: &TestPki, verify_clients: bool) -> Self {
        Self::prepare(Some((pki, verify_clients)))
    }

    fn prepare(tls: Option<(&TestPki, bool)>) -> Self {
        let port = free_port();
        let tls_port = tls.map(|_| free_port());
        let dist_port = free_port();
        let user = match tls {
            Some(_) => (format!("app-{}", unique()), unique()),
            None => ("guest".to_string(), "guest".to_string()),
        };
        let dir = std::env::temp_dir().join(format!("switchyard-rabbit-{port}"));
        std::fs::create_dir_all(dir.join("mnesia")).expect("create the node's directories");
        std::fs::create_dir_all(dir.join("log")).expect("create the node's directories");
        // Its own config file: the machine's /etc/rabbitmq/rabbitmq.conf pins
        // the shared node's listener, and no plugins (their ports are taken).
        let mut conf = format!("listeners.tcp.default = 127.0.0.1:{port}\n");
        if let (Some((pki, verify_clients)), Some(tls_port)) = (tls, tls_port) {
            let (user, password) = &user;
            conf.push_str(&format!(
                "listeners.ssl.default = 127.0.0.1:{tls_port}\n\
                 ssl_options.cacertfile = {}\n\
                 ssl_options.certfile = {}\n\
                 ssl_options.keyfile = {}\n\
                 ssl_options.verify = {}\n\
                 ssl_options.fail_if_no_peer_cert = {verify_clients}\n\
                 default_user = {user}\n\
                 default_pass = {password}\n\
                 loopback_users = none\n",
                pki.ca().display(),
                pki.server_cert().display(),
                pki.server_key().display(),
                if verify_clients {
                    "verify_peer"
                } else {
                    "verify_none"
                },
            ));
        }
        std::fs::write(dir.join("rabbitmq.conf"), conf).expect("write the node's config");
        std::fs::write(dir.join("enabled_plugins"), "[].\n").expect("write the node's plugins");
        let status = Command::new("chown")
            .args(["-R", "rabbitmq:rabbitmq"])
            .arg(&dir)
            .status()
            .expect("chown is installed");
        assert!(
            status.success(),
            "chown the node's directories (needs root)"
        );
        RabbitNode {
            name: format!("switchyard-test-{port}@localhost"),
            port,
            tls_port,
            user,
            dist_port,
            dir,
            server: Mutex::new(None),
        }
    }

    /// Prepares and boots a node; returns once it accepts AMQP connections.
    pub async fn start() -> Self {
        let node = RabbitNode::new();
        node.boot().await;
        node
    }

    /// `amqp://guest:guest@127.0.0.1:<port>/%2f` (the node's own user for a
    /// node made by [`RabbitNode::with_tls`]).
    pub fn url(&self) -> String {
        let (user, password) = &self.user;
        format!("amqp://{user}:{password}@127.0.0.1:{}/%2f", self.port)
    }

    /// `amqps://<user>:<password>@127.0.0.1:<tls port>/%2f` with the node's
    /// own user (`None`: that user's real password). Panics on a node
    /// without TLS.
    pub fn amqps_url(&self, password: Option<&str>) -> String {
        let (user, real) = &self.user;
        let port = self.tls_port.expect("a node made by RabbitNode::with_tls");
        format!(
            "amqps://{user}:{}@127.0.0.1:{port}/%2f",
            password.unwrap_or(real)
        )
    }

    /// Starts the node (again) on the same data directory and waits until it
    /// accepts AMQP connections (about 7 s, at most 60 s).
    pub async fn boot(&self) {
        let out = std::fs::File::create(self.dir.join("server.out")).expect("create server.out");
        let server = Command::new("rabbitmq-server")
            .env("RABBITMQ_NODENAME", &self.name)
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", self.dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", self.dir.join("log"))
            .env("RABBITMQ_CONFIG_FILE", self.dir.join("rabbitmq.conf"))
            .env(
                "RABBITMQ_ENABLED_PLUGINS_FILE",
                self.dir.join("enabled_plugins"),
            )
            .env("RABBITMQ_PID_FILE", self.dir.join("rabbitmq.pid"))
            .stdout(out.try_clone().expect("clone server.out"))
            .stderr(out)
            .spawn()
            .expect("rabbitmq-server starts");
        *self.server.lock().unwrap_or_else(|p| p.into_inner()) = Some(server);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(connection) =
                Connection::connect(&self.url(), ConnectionProperties::default()).await
            {
                let _ = connection.close(200, "probe".into()).await;
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the test rabbitmq node did not start in 60 s (see {})",
                self.dir.join("server.out").display()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Stops the node (a clean broker shutdown, as on a restart).
    ///
    /// Never hangs: a node that ignores `rabbitmqctl stop` — one still booting
    /// when a test gave up on it, which writes its pid file only later — is
    /// killed once it has one, and the server process is killed after
    /// 30 s whatever happens.
    pub fn stop(&self) {
        let stopped = Command::new("rabbitmqctl")
            .args(["-n", &self.name, "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        if !stopped {
            self.kill_own_beam();
        }
        let Some(mut server) = self.server.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return;
        };
        let deadline = std::time::Instant::now() + STOP_DEADLINE;
        while matches!(server.try_wait(), Ok(None)) {
            if std::time::Instant::now() > deadline {
                let _ = server.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(250));
            if !stopped {
                self.kill_own_beam();
            }
        }
        self.kill_own_beam();
        let _ = server.wait();
    }

    /// Kills the node's Erlang VM when `rabbitmqctl stop` could not: only the
    /// pid from our pid file, and only if that process really is our node.
    fn kill_own_beam(&self) {
        let Ok(pid) = std::fs::read_to_string(self.dir.join("rabbitmq.pid")) else {
            return;
        };
        let pid = pid.trim();
        let ours = std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|environ| {
            environ
                .split(|byte| *byte == 0)
                .any(|var| var == format!("RABBITMQ_NODENAME={}", self.name).as_bytes())
        });
        if ours {
            let _ = Command::new("kill")
                .args(["-KILL", pid])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// How long [`RabbitNode::stop`] waits for the node to go before it kills it.
const STOP_DEADLINE: Duration = Duration::from_secs(30);

impl Default for RabbitNode {
    fn default() -> Self {
        RabbitNode::new()
    }
}

impl Drop for RabbitNode {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
