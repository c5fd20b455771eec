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
    /// accepts AMQP connections (about 7 s on a quiet machine, at most
    /// `BOOT_DEADLINE`, 90 s).
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
        self.wait_for_amqp().await;
    }

    /// Waits until the node completes an AMQP handshake. Each attempt is
    /// bounded: a node that accepts TCP but never answers the handshake
    /// (one still syncing with its cluster) must not hold the test forever.
    pub(crate) async fn wait_for_amqp(&self) {
        let deadline = tokio::time::Instant::now() + BOOT_DEADLINE;
        let url = self.url();
        loop {
            let attempt = tokio::time::timeout(
                Duration::from_secs(5),
                Connection::connect(&url, ConnectionProperties::default()),
            );
            if let Ok(Ok(connection)) = attempt.await {
                let _ = tokio::time::timeout(
                    Duration::from_secs(5),
                    connection.close(200, "probe".into()),
                )
                .await;
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "rabbitmq node {} did not accept AMQP in {BOOT_DEADLINE:?} (see {})",
                self.name,
                self.dir.join("server.out").display()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// `rabbitmqctl -n <node> <args>` on a blocking thread, at most
    /// `CTL_DEADLINE`; the standard output, or why it failed.
    pub(crate) async fn ctl(&self, args: &[&str]) -> Result<String, String> {
        self.cli("rabbitmqctl", args).await
    }

    /// One of RabbitMQ's CLI tools (`rabbitmqctl`, `rabbitmq-queues`, ...)
    /// with `-n <node> --timeout 20 <args>`, as [`RabbitNode::ctl`].
    pub(crate) async fn cli(&self, tool: &str, args: &[&str]) -> Result<String, String> {
        let mut command = Command::new(tool);
        command
            .args(["-n", &self.name, "--timeout", "20"])
            .args(args)
            .stdin(Stdio::null());
        let what = format!("{tool} -n {} {}", self.name, args.join(" "));
        let run = tokio::task::spawn_blocking(move || command.output());
        let output = match tokio::time::timeout(CTL_DEADLINE, run).await {
            Err(_) => return Err(format!("{what}: no answer in {CTL_DEADLINE:?}")),
            Ok(joined) => joined
                .expect("the CLI thread does not panic")
                .map_err(|e| format!("{what}: {e}"))?,
        };
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        } else {
            Err(format!(
                "{what}: {}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ))
        }
    }

    /// SIGKILLs every process of this node (its wrapper scripts, its Erlang
    /// VM and the VM's helpers) and reaps the server process: the abrupt
    /// loss of a machine, without a clean shutdown.
    pub fn kill(&self) {
        for pid in self.own_pids() {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .stderr(Stdio::null())
                .status();
        }
        if let Some(mut server) = self.server.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = server.kill();
            let _ = server.wait();
        }
    }

    /// Stops the node (a clean broker shutdown, as on a restart).
    ///
    /// Never hangs: a node that does not stop by `rabbitmqctl stop` — one
    /// still booting when a test gave up on it, or already killed — is
    /// SIGKILLed, and so is one still running after 30 s.
    pub fn stop(&self) {
        let stopped = Command::new("rabbitmqctl")
            .args(["-n", &self.name, "--timeout", "30", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        if !stopped {
            self.kill();
            return;
        }
        let Some(mut server) = self.server.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return;
        };
        let deadline = std::time::Instant::now() + STOP_DEADLINE;
        while matches!(server.try_wait(), Ok(None)) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(250));
        }
        let _ = server.kill();
        let _ = server.wait();
        self.kill();
    }

    /// The pids whose environment names this node (`RABBITMQ_NODENAME`),
    /// found in `/proc`, never by a broad name. epmd is left alone: it may
    /// serve the machine's shared broker too.
    fn own_pids(&self) -> Vec<u32> {
        let marker = format!("RABBITMQ_NODENAME={}", self.name);
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        entries
            .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| *pid != std::process::id())
            .filter(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|comm| comm.trim() != "epmd")
            })
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|environ| {
                    environ
                        .split(|byte| *byte == 0)
                        .any(|var| var == marker.as_bytes())
                })
            })
            .collect()
    }
}

/// How long one boot may take until the node accepts AMQP connections
/// (about 7 s on a quiet machine; CI's are not quiet, and a restarted
/// cluster member first syncs with its peers).
const BOOT_DEADLINE: Duration = Duration::from_secs(90);

/// The longest one `rabbitmqctl` call may take (it starts an Erlang VM of
/// its own, ~1–2 s, then asks the node with `--timeout 20`).
const CTL_DEADLINE: Duration = Duration::from_secs(30);

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
