//! Shared set-up for the producer tests: the local RabbitMQ, a queue set of
//! the test's own (deleted on drop), and a raw lapin client to look with.

use std::time::Duration;

use common::{config::SecretUrl, shutdown::Shutdown};
use lapin::{
    Channel, Connection, ConnectionProperties, message::BasicGetMessage, options::BasicGetOptions,
};
use task_producer::topology::Topology;

/// The shared RabbitMQ (`AMQP_URL` or the default local one).
pub(crate) fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// A work queue with a unique base name; its queues are deleted on drop.
pub(crate) struct TestQueues {
    pub(crate) topology: Topology,
    pub(crate) connection: Connection,
    pub(crate) channel: Channel,
    pub(crate) shutdown: Shutdown,
}

impl TestQueues {
    pub(crate) async fn new(tiers: &[Duration]) -> Self {
        common::telemetry::init_for_tests();
        let base = format!("test.producer.{}", uuid::Uuid::new_v4().simple());
        let topology = Topology::new(base).with_retry_delays(tiers.iter().copied());
        let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
            .await
            .expect("the local rabbitmq");
        let channel = connection.create_channel().await.unwrap();
        TestQueues {
            topology,
            connection,
            channel,
            shutdown: Shutdown::new(),
        }
    }

    pub(crate) fn publisher_config(&self) -> task_producer::publisher::PublisherConfig {
        task_producer::publisher::PublisherConfig {
            amqp_url: SecretUrl::new(amqp_url()),
            queue: self.topology.task_queue().to_string(),
            ..Default::default()
        }
    }

    /// Messages ready in `queue` (declares it passively).
    pub(crate) async fn depth(&self, queue: &str) -> u32 {
        testkit::queue_state(&self.channel, queue).await.0
    }

    /// Polls `queue` until `count` messages are ready, at most `within`.
    pub(crate) async fn wait_for_depth(&self, queue: &str, count: u32, within: Duration) -> u32 {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let depth = self.depth(queue).await;
            if depth >= count || tokio::time::Instant::now() > deadline {
                return depth;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Takes one message off `queue` (auto-ack), if any.
    pub(crate) async fn get(&self, queue: &str) -> Option<BasicGetMessage> {
        self.channel
            .basic_get(queue.into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
    }
}

impl Drop for TestQueues {
    fn drop(&mut self) {
        self.shutdown.trigger();
        let topology = self.topology.clone();
        // Drop cannot await: delete from a thread of its own, on its own
        // connection, so a failed test still leaves the broker clean.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                if let Ok(connection) =
                    Connection::connect(&amqp_url(), ConnectionProperties::default()).await
                {
                    if let Ok(channel) = connection.create_channel().await {
                        let _ = topology.delete(&channel).await;
                    }
                    let _ = connection.close(200, "bye".into()).await;
                }
            });
        })
        .join();
    }
}
