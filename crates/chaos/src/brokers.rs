//! The brokers of one run: a private nats-server beside the shared
//! RabbitMQ, or — with [`Options::cluster`] — private 3-node NATS and
//! RabbitMQ clusters whose nodes the run kills and brings back.
//!
//! On the clusters every service runs as the Kubernetes prod overlay runs
//! it: the readings stream and the group's buckets with 3 replicas, quorum
//! queues, every node's address in `NATS_URL` and `AMQP_URL`. The node
//! losses are the ones that matter most: the node leading stream `SENSORS`
//! and the node leading the work queue, each SIGKILLed mid-run and started
//! again a step later.

use std::time::Duration;

use testkit::{NatsCluster, NatsServer, RabbitCluster};

use crate::Options;

/// How many nodes each cluster has: the smallest that survives a loss.
const CLUSTER_SIZE: usize = 3;

/// The readings stream (docs/ARCHITECTURE.md).
const STREAM: &str = "SENSORS";

/// The brokers the run's processes talk to.
#[derive(Debug)]
pub enum Brokers {
    /// One private nats-server; RabbitMQ is the given (shared) one.
    Single {
        /// The private server, with the deployments' partition mapping.
        nats: NatsServer,
        /// The given RabbitMQ.
        amqp_url: String,
    },
    /// Private 3-node clusters of both.
    Cluster {
        /// JetStream cluster, partition mapping on every node.
        nats: NatsCluster,
        /// RabbitMQ cluster for quorum queues.
        rabbit: RabbitCluster,
        /// The node killed by the last loss, started again by the next step.
        down: Option<Down>,
    },
}

/// A node the run killed and has not restarted yet.
#[derive(Debug, Clone, Copy)]
pub enum Down {
    /// A NATS node.
    Nats(usize),
    /// A RabbitMQ node.
    Rabbit(usize),
}

impl Brokers {
    /// Starts the private brokers `options` asks for.
    pub async fn start(options: &Options) -> Self {
        if options.cluster {
            let (nats, rabbit) = tokio::join!(
                NatsCluster::start(CLUSTER_SIZE),
                RabbitCluster::start(CLUSTER_SIZE)
            );
            Brokers::Cluster {
                nats,
                rabbit,
                down: None,
            }
        } else {
            Brokers::Single {
                nats: NatsServer::with_partitions().await,
                amqp_url: options.amqp_url.clone(),
            }
        }
    }

    /// `NATS_URL`: one server, or every node of the cluster.
    pub fn nats_url(&self) -> String {
        match self {
            Brokers::Single { nats, .. } => nats.url(),
            Brokers::Cluster { nats, .. } => nats.url(),
        }
    }

    /// `AMQP_URL`: the given broker, or every node of the cluster.
    pub fn amqp_url(&self) -> String {
        match self {
            Brokers::Single { amqp_url, .. } => amqp_url.clone(),
            Brokers::Cluster { rabbit, .. } => rabbit.urls(),
        }
    }

    /// Whether the run's queues live on the shared broker (and must be
    /// deleted after it) rather than on a cluster that goes with the run.
    pub fn shared_rabbitmq(&self) -> bool {
        matches!(self, Brokers::Single { .. })
    }

    /// What every service is given besides its addresses: on the
    /// clusters, replicated streams and buckets and quorum queues (keys
    /// a service does not have are ignored by the others' configs, so each
    /// service gets only its own).
    pub fn settings(&self, service: &str) -> Vec<(&'static str, String)> {
        if !matches!(self, Brokers::Cluster { .. }) {
            return Vec::new();
        }
        let replicas = ("SWITCHYARD__STREAM_REPLICAS", CLUSTER_SIZE.to_string());
        let quorum = ("SWITCHYARD__QUEUE_TYPE", "quorum".to_string());
        match service {
            "sensor-publisher" => vec![replicas],
            "alert-subscriber" => vec![replicas, quorum],
            "task-worker" | "user-service" => vec![quorum],
            _ => Vec::new(),
        }
    }

    /// Step `step` (1–4) of the node losses on the clusters: kill the
    /// leader of `SENSORS`, start it again, kill the leader of
    /// `task_queue`, start it again. Returns what it did, for the run's
    /// log; nothing on a single node.
    pub async fn lose_a_node(&mut self, step: usize, task_queue: &str) -> Option<String> {
        let Brokers::Cluster { nats, rabbit, down } = self else {
            return None;
        };
        match (step, *down) {
            (1, None) => {
                let leader = nats
                    .wait_for_stream_leader(STREAM, Duration::from_secs(30))
                    .await;
                nats.kill(leader);
                *down = Some(Down::Nats(leader));
                Some(format!(
                    "NATS node {leader} (leads {STREAM}) killed (SIGKILL)"
                ))
            }
            (3, None) => {
                let leader = rabbit.leader_of(task_queue).await?;
                rabbit.kill(leader);
                *down = Some(Down::Rabbit(leader));
                Some(format!(
                    "RabbitMQ node {leader} (leads {task_queue}) killed (SIGKILL)"
                ))
            }
            (_, Some(Down::Nats(node))) => {
                nats.restart(node).await;
                *down = None;
                Some(format!("NATS node {node} started again"))
            }
            (_, Some(Down::Rabbit(node))) => {
                rabbit.restart(node).await;
                *down = None;
                Some(format!("RabbitMQ node {node} started again"))
            }
            _ => None,
        }
    }

    /// Starts again whatever node is still down, so the run settles on a
    /// whole cluster.
    pub async fn heal(&mut self, task_queue: &str) -> Option<String> {
        if let Brokers::Cluster { down: Some(_), .. } = self {
            return self.lose_a_node(0, task_queue).await;
        }
        None
    }
}

/// A client on `url`, one server or a comma-separated list (async-nats
/// takes a list, not a comma-separated `&str`).
pub async fn connect_nats(url: &str) -> anyhow::Result<async_nats::Client> {
    let servers: Vec<&str> = url.split(',').collect();
    Ok(async_nats::connect(servers).await?)
}
