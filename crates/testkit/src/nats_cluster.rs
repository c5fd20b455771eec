//! A private three-node (or n-node) NATS cluster with clustered JetStream,
//! for the tests that kill the node leading a replicated stream.
//!
//! Each node is a `nats-server` process with a configuration file of its
//! own: a unique `server_name` (JetStream clustering needs one), client,
//! route and monitoring ports that were free, routes to every other node,
//! a store directory of its own and the deployments' partition mapping
//! ([`PARTITIONS_CONF`]). Every process and directory goes on drop.
//!
//! The servers' own logs are dropped; set `NATS_CLUSTER_LOG=1` to see them
//! on the test's stderr (elections, routes, stream leaders).

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::{PARTITIONS_CONF, eventually, free_port, unique};

/// How long a node may take to listen and to find the JetStream meta
/// leader. Elections take a few seconds on a loaded machine.
const NODE_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// `nats-server` processes joined by routes into one cluster with
/// JetStream; killed and their storage deleted on drop.
#[derive(Debug)]
pub struct NatsCluster {
    /// Holds every node's configuration and store.
    dir: PathBuf,
    nodes: Vec<ClusterNode>,
    /// A client on every node's address, to ask who leads what.
    client: async_nats::Client,
}

/// One server of the cluster: its ports stay the same across restarts.
#[derive(Debug)]
struct ClusterNode {
    port: u16,
    monitor_port: u16,
    config: PathBuf,
    child: Option<Child>,
}

impl NatsCluster {
    /// Starts `size` nodes and returns once every one of them listens and
    /// reports JetStream healthy (a meta leader elected, every node in the
    /// meta group), so a stream with `size` replicas can be created at once.
    pub async fn start(size: usize) -> Self {
        assert!(size >= 1, "a cluster has at least one node");
        let dir = std::env::temp_dir().join(format!("switchyard-nats-cluster-{}", unique()));
        std::fs::create_dir_all(&dir).expect("create the cluster's directory");
        let ports: Vec<(u16, u16, u16)> = (0..size)
            .map(|_| (free_port(), free_port(), free_port()))
            .collect();
        let cluster_name = format!("switchyard-{}", unique());
        let mut nodes = Vec::with_capacity(size);
        for (index, &(port, route_port, monitor_port)) in ports.iter().enumerate() {
            let routes: Vec<String> = ports
                .iter()
                .enumerate()
                .filter(|(other, _)| *other != index)
                .map(|(_, (_, route, _))| format!("\"nats-route://127.0.0.1:{route}\""))
                .collect();
            let store = dir.join(format!("node-{index}"));
            let config = dir.join(format!("node-{index}.conf"));
            let text = format!(
                "server_name: \"{name}\"\n\
                 listen: \"127.0.0.1:{port}\"\n\
                 http: \"127.0.0.1:{monitor_port}\"\n\
                 jetstream {{\n  store_dir: \"{store}\"\n}}\n\
                 cluster {{\n  name: \"{cluster_name}\"\n  listen: \"127.0.0.1:{route_port}\"\n  routes: [{routes}]\n}}\n\
                 {PARTITIONS_CONF}\n",
                name = Self::server_name(index),
                store = store.display(),
                routes = routes.join(", "),
            );
            std::fs::write(&config, text).expect("write a node's configuration");
            nodes.push(ClusterNode {
                port,
                monitor_port,
                config,
                child: None,
            });
        }
        // All at once: the first node cannot elect a meta leader alone.
        for node in &mut nodes {
            node.spawn();
        }
        for node in &nodes {
            node.wait_healthy().await;
        }
        let urls = Self::urls(&nodes);
        // async-nats takes a list, not a comma-separated `&str`.
        let urls: Vec<&str> = urls.split(',').collect();
        let client = async_nats::connect(urls)
            .await
            .expect("connect to the nats cluster");
        NatsCluster { dir, nodes, client }
    }

    /// `node-<index>`: the `server_name` of a node, as stream info names
    /// its leader.
    pub fn server_name(index: usize) -> String {
        format!("node-{index}")
    }

    /// Every node's client URL, comma-separated (what `NATS_URL` takes).
    pub fn url(&self) -> String {
        Self::urls(&self.nodes)
    }

    /// One node's client URL.
    pub fn node_url(&self, index: usize) -> String {
        format!("nats://127.0.0.1:{}", self.nodes[index].port)
    }

    /// How many nodes the cluster has.
    pub fn size(&self) -> usize {
        self.nodes.len()
    }

    /// A client connected to the cluster (any node, reconnecting to the
    /// others when its node goes).
    pub fn client(&self) -> async_nats::Client {
        self.client.clone()
    }

    /// Kills node `index` with SIGKILL (like a crash).
    pub fn kill(&mut self, index: usize) {
        self.nodes[index].kill();
    }

    /// Starts node `index` again on its ports and store; returns once it
    /// listens and reports JetStream healthy (caught up with the others).
    pub async fn restart(&mut self, index: usize) {
        let node = &mut self.nodes[index];
        node.kill();
        node.spawn();
        node.wait_healthy().await;
    }

    /// The index of the node leading stream `name` (a key-value bucket's
    /// stream is `KV_<bucket>`), as the cluster reports it now; `None`
    /// while it has no leader (an election is running) or the stream does
    /// not exist.
    pub async fn stream_leader(&self, name: &str) -> Option<usize> {
        let js = async_nats::jetstream::new(self.client.clone());
        let info = tokio::time::timeout(Duration::from_secs(2), async {
            js.get_stream(name).await.ok()?.info().await.ok().cloned()
        })
        .await
        .ok()??;
        let leader = info.cluster?.leader?;
        (0..self.nodes.len()).find(|index| Self::server_name(*index) == leader)
    }

    /// Waits (up to `timeout`) until stream `name` has a leader, and
    /// returns its index.
    pub async fn wait_for_stream_leader(&self, name: &str, timeout: Duration) -> usize {
        eventually(&format!("a leader for stream {name}"), timeout, || {
            self.stream_leader(name)
        })
        .await
    }

    fn urls(nodes: &[ClusterNode]) -> String {
        nodes
            .iter()
            .map(|node| format!("nats://127.0.0.1:{}", node.port))
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl ClusterNode {
    fn spawn(&mut self) {
        let child = Command::new("nats-server")
            .arg("-c")
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(if std::env::var_os("NATS_CLUSTER_LOG").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .spawn()
            .expect("nats-server on PATH");
        self.child = Some(child);
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Polls the monitoring port's `/healthz`: 200 once the server is up
    /// and JetStream current (in contact with a meta leader, its streams
    /// caught up).
    async fn wait_healthy(&self) {
        let port = self.port;
        let monitor = self.monitor_port;
        eventually(
            &format!("the nats cluster node on port {port} to be healthy"),
            NODE_READY_TIMEOUT,
            || async move { healthz(monitor).await.then_some(()) },
        )
        .await;
    }
}

/// `true` when `GET /healthz` on the monitoring port answers 200.
async fn healthz(monitor_port: u16) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ask = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", monitor_port))
            .await
            .ok()?;
        let request = "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await.ok()?;
        Some(response.starts_with("HTTP/1.1 200"))
    };
    tokio::time::timeout(Duration::from_secs(2), ask)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    #[ignore = "boots a 3-node NATS cluster: run with scripts/test.sh --cluster"]
    async fn a_replicated_stream_gets_a_new_leader_when_its_leader_dies() {
        let mut cluster = NatsCluster::start(3).await;
        let js = async_nats::jetstream::new(cluster.client());
        let name = format!("PROBE_{}", unique());
        js.create_stream(async_nats::jetstream::stream::Config {
            name: name.clone(),
            subjects: vec![format!("probe.{name}")],
            num_replicas: 3,
            ..Default::default()
        })
        .await
        .expect("an R3 stream on a fresh cluster");
        let leader = cluster
            .wait_for_stream_leader(&name, Duration::from_secs(10))
            .await;

        cluster.kill(leader);
        let next = eventually("another leader", Duration::from_secs(20), || async {
            cluster.stream_leader(&name).await.filter(|n| *n != leader)
        })
        .await;
        cluster.restart(leader).await;

        assert_ne!(next, leader);
        js.publish(format!("probe.{name}"), "x".into())
            .await
            .unwrap()
            .await
            .expect("the stream takes writes after the failover");
    }
}
