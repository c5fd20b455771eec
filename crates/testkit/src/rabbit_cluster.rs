//! A private RabbitMQ cluster for the tests that kill the node leading a
//! quorum queue.
//!
//! Each node is a [`RabbitNode`] (its own directory, node name, AMQP and
//! distribution ports, config without plugins, run as user `rabbitmq`);
//! the nodes boot at the same time, and every node after the first joins
//! the first with `rabbitmqctl stop_app; join_cluster; start_app`. All
//! nodes share user `rabbitmq`'s Erlang cookie, which is what lets them
//! (and `rabbitmqctl`) talk to each other.
//!
//! Clean-up never depends on the test passing: `Drop` SIGKILLs every node
//! ([`RabbitNode::kill`]) before the nodes delete their directories. A
//! SIGKILL rather than `rabbitmqctl stop` because a clean stop of a cluster
//! takes seconds per node and nothing of the data is wanted afterwards.
//! Every wait is bounded (a boot, a `rabbitmqctl` call), so a node that
//! stops answering fails the test instead of hanging it.

use std::time::Duration;

use crate::RabbitNode;

/// A RabbitMQ cluster of the test's own on free ports, killed and deleted
/// on drop. The shared broker is never touched.
#[derive(Debug)]
pub struct RabbitCluster {
    nodes: Vec<RabbitNode>,
}

impl RabbitCluster {
    /// Starts `size` nodes and joins them into one cluster; returns once
    /// every node accepts AMQP connections as a cluster member. Panics (and
    /// cleans up) when a node does not come up within 90 s.
    pub async fn start(size: usize) -> Self {
        assert!(size >= 1, "a cluster has at least one node");
        let cluster = RabbitCluster {
            nodes: (0..size).map(|_| RabbitNode::new()).collect(),
        };
        futures_join_all(cluster.nodes.iter().map(RabbitNode::boot)).await;
        let first = cluster.nodes[0].name.clone();
        for node in &cluster.nodes[1..] {
            for step in [&["stop_app"][..], &["join_cluster", &first], &["start_app"]] {
                if let Err(failed) = node.ctl(step).await {
                    panic!("joining the cluster: {failed}");
                }
            }
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
            .map(RabbitNode::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The Erlang node name of node `index` (`rabbitmqctl -n <name>`).
    pub fn node_name(&self, index: usize) -> &str {
        &self.nodes[index].name
    }

    /// Which node leads the quorum queue `queue`, asked of each running
    /// node in turn; `None` while no node answers or the queue has no
    /// leader.
    pub async fn leader_of(&self, queue: &str) -> Option<usize> {
        for node in &self.nodes {
            let Ok(output) = node
                .ctl(&["list_queues", "-q", "--no-table-headers", "name", "leader"])
                .await
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
    pub async fn node_serving(&self, connection_name: &str) -> Option<usize> {
        let quoted = format!("\"{connection_name}\"");
        for node in &self.nodes {
            let Ok(output) = node
                .ctl(&[
                    "list_connections",
                    "-q",
                    "--no-table-headers",
                    "port",
                    "client_properties",
                ])
                .await
            else {
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

    /// Waits until losing node `index` would leave every quorum queue with
    /// a majority of its members online (`rabbitmq-queues
    /// check_if_node_is_quorum_critical`), as an operator checks before
    /// taking a node down; `Err` with the tool's last answer after `limit`.
    ///
    /// A node that was just restarted accepts AMQP before its queue members
    /// are back: killing another node then is the loss of two, and the
    /// queues that lost their majority nack every publish until one returns.
    pub async fn await_quorum_without(&self, index: usize, limit: Duration) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let answer = self.nodes[index]
                .cli("rabbitmq-queues", &["check_if_node_is_quorum_critical"])
                .await;
            match answer {
                Ok(_) => return Ok(()),
                Err(why) if tokio::time::Instant::now() >= deadline => return Err(why),
                Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
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
        // Killed first, so each node's own drop (a clean stop) finds
        // nothing to wait for and only deletes its directory.
        for node in &self.nodes {
            node.kill();
        }
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
