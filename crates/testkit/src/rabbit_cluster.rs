//! A private RabbitMQ cluster for the tests that kill the node leading a
//! quorum queue.
//!
//! Each node follows [`crate::RabbitNode`]'s recipe (its own directory,
//! node name, AMQP and distribution ports, config without plugins, run as
//! user `rabbitmq`); the nodes boot at the same time, and every node after
//! the first joins the first with `rabbitmqctl stop_app; join_cluster;
//! start_app`. All nodes share user `rabbitmq`'s Erlang cookie, which is
//! what lets them (and `rabbitmqctl`) talk to each other.
//!
//! Clean-up never depends on the test passing: `Drop` SIGKILLs every
//! process that carries one of the cluster's node names in its environment
//! (found by pid in `/proc`, never by a broad name), waits for the server
//! processes and deletes the directories. A SIGKILL rather than
//! `rabbitmqctl stop` because a clean stop of a cluster takes seconds per
//! node and nothing of the data is wanted afterwards.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::Mutex,
    time::Duration,
};

use lapin::{Connection, ConnectionProperties};

use crate::{free_port, unique};

/// How long one node may take to accept AMQP connections after it was
/// started (about 7 s on a quiet machine; CI's are not quiet).
const BOOT_DEADLINE: Duration = Duration::from_secs(90);

/// A RabbitMQ cluster of the test's own on free ports, killed and deleted
/// on drop. The shared broker is never touched.
#[derive(Debug)]
pub struct RabbitCluster {
    nodes: Vec<ClusterNode>,
}

/// One node of a [`RabbitCluster`].
#[derive(Debug)]
struct ClusterNode {
    /// Erlang node name, `switchyard-cluster-<id>-<i>@localhost`.
    name: String,
    port: u16,
    dist_port: u16,
    dir: PathBuf,
    server: Mutex<Option<Child>>,
}

impl RabbitCluster {
    /// Starts `size` nodes and joins them into one cluster; returns once
    /// every node accepts AMQP connections as a cluster member. Panics (and
    /// cleans up) when a node does not come up within 90 s.
    pub async fn start(size: usize) -> Self {
        assert!(size >= 1, "a cluster has at least one node");
        let id = unique();
        let cluster = RabbitCluster {
            nodes: (0..size)
                .map(|index| ClusterNode::prepare(&id, index))
                .collect(),
        };
        futures_join_all(cluster.nodes.iter().map(ClusterNode::boot)).await;
        let first = cluster.nodes[0].name.clone();
        for node in &cluster.nodes[1..] {
            node.ctl(&["stop_app"]);
            node.ctl(&["join_cluster", &first]);
            node.ctl(&["start_app"]);
            node.wait_for_amqp().await;
        }
        cluster
    }

    /// How many nodes the cluster has.
    pub fn size(&self) -> usize {
        self.nodes.len()
    }

    /// `amqp://guest:guest@127.0.0.1:<port>/%2f` of node `index`.
    pub fn url(&self, index: usize) -> String {
        self.nodes[index].url()
    }

    /// Every node's url, comma-separated: an `AMQP_URL` for the whole
    /// cluster.
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(ClusterNode::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The Erlang node name of node `index` (`rabbitmqctl -n <name>`).
    pub fn node_name(&self, index: usize) -> &str {
        &self.nodes[index].name
    }

    /// Which node leads the quorum queue `queue`, asked of any running
    /// node; `None` while no node answers or the queue has no leader.
    pub fn leader_of(&self, queue: &str) -> Option<usize> {
        for node in &self.nodes {
            let Some(output) =
                node.ctl_output(&["list_queues", "-q", "--no-table-headers", "name", "leader"])
            else {
                continue;
            };
            let leader = output.lines().find_map(|line| {
                let mut fields = line.split_whitespace();
                (fields.next() == Some(queue)).then(|| fields.next().map(str::to_string))?
            })?;
            return self.nodes.iter().position(|node| node.name == leader);
        }
        None
    }

    /// Which node serves the client connection named `connection_name`
    /// (lapin's `connection_name` property), from the server port of the
    /// connection as any running node lists it.
    pub fn node_serving(&self, connection_name: &str) -> Option<usize> {
        let quoted = format!("\"{connection_name}\"");
        for node in &self.nodes {
            let Some(output) = node.ctl_output(&[
                "list_connections",
                "-q",
                "--no-table-headers",
                "port",
                "client_properties",
            ]) else {
                continue;
            };
            let port: u16 = output
                .lines()
                .find(|line| line.contains(&quoted))?
                .split_whitespace()
                .next()?
                .parse()
                .ok()?;
            return self.nodes.iter().position(|node| node.port == port);
        }
        None
    }

    /// SIGKILLs node `index` (its Erlang VM and everything it started):
    /// the abrupt loss of a machine, without a clean shutdown.
    pub fn kill(&self, index: usize) {
        self.nodes[index].kill();
    }

    /// Starts node `index` again on its data directory (after
    /// [`RabbitCluster::kill`]); it rejoins the cluster by itself. Returns
    /// once it accepts AMQP connections.
    pub async fn restart(&self, index: usize) {
        self.nodes[index].boot().await;
    }
}

impl Drop for RabbitCluster {
    fn drop(&mut self) {
        for node in &self.nodes {
            node.kill();
            let _ = std::fs::remove_dir_all(&node.dir);
        }
    }
}

impl ClusterNode {
    fn prepare(id: &str, index: usize) -> Self {
        let port = free_port();
        let dist_port = free_port();
        let name = format!("switchyard-cluster-{id}-{index}@localhost");
        let dir = std::env::temp_dir().join(format!("switchyard-rabbit-cluster-{id}-{index}"));
        std::fs::create_dir_all(dir.join("mnesia")).expect("create the node's directories");
        std::fs::create_dir_all(dir.join("log")).expect("create the node's directories");
        // Its own config: the machine's /etc/rabbitmq/rabbitmq.conf pins the
        // shared node's listener, and no plugins (their ports are taken).
        std::fs::write(
            dir.join("rabbitmq.conf"),
            format!("listeners.tcp.default = 127.0.0.1:{port}\n"),
        )
        .expect("write the node's config");
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
        ClusterNode {
            name,
            port,
            dist_port,
            dir,
            server: Mutex::new(None),
        }
    }

    fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// Starts the node on its data directory and waits for AMQP.
    async fn boot(&self) {
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

    async fn wait_for_amqp(&self) {
        let deadline = tokio::time::Instant::now() + BOOT_DEADLINE;
        loop {
            if let Ok(connection) =
                Connection::connect(&self.url(), ConnectionProperties::default()).await
            {
                let _ = connection.close(200, "probe".into()).await;
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "cluster node {} did not accept AMQP in {BOOT_DEADLINE:?} (see {})",
                self.name,
                self.dir.join("server.out").display()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// `rabbitmqctl -n <node> <args>`; panics when it fails.
    fn ctl(&self, args: &[&str]) {
        let output = Command::new("rabbitmqctl")
            .args(["-n", &self.name])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("rabbitmqctl is installed");
        assert!(
            output.status.success(),
            "rabbitmqctl -n {} {}: {}{}",
            self.name,
            args.join(" "),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// The standard output of `rabbitmqctl -n <node> <args>`; `None` when it
    /// failed (the node is down).
    fn ctl_output(&self, args: &[&str]) -> Option<String> {
        let output = Command::new("rabbitmqctl")
            .args(["-n", &self.name, "--timeout", "10"])
            .args(args)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()?;
        output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// SIGKILLs every process of this node and reaps the server process.
    fn kill(&self) {
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

    /// The pids whose environment names this node (`RABBITMQ_NODENAME`):
    /// its wrapper scripts, its Erlang VM and the VM's helpers. epmd is
    /// left alone: it may serve the machine's shared broker too.
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

/// Runs the futures at the same time (testkit has no `futures` dependency).
async fn futures_join_all<F: std::future::Future<Output = ()>>(futures: impl Iterator<Item = F>) {
    let mut pinned: Vec<_> = futures.map(Box::pin).collect();
    let mut done = vec![false; pinned.len()];
    std::future::poll_fn(|cx| {
        for (future, done) in pinned.iter_mut().zip(done.iter_mut()) {
            if !*done && future.as_mut().poll(cx).is_ready() {
                *done = true;
            }
        }
        if done.iter().all(|d| *d) {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
}
