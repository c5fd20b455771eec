//! Shared set-up for the producer tests: the local RabbitMQ, a queue set of
//! the test's own (deleted on drop), and a raw lapin client to look with.

use std::time::Duration;

use common::{config::SecretUrl, shutdown::Shutdown};
use task_producer::config::JobConfig;
use testkit::AmqpFixture;
pub(crate) use testkit::amqp_url;
use workqueue::topology::Topology;

/// A work queue with a unique base name; its queues are deleted on drop.
pub(crate) struct TestQueues {
    pub(crate) topology: Topology,
    pub(crate) amqp: AmqpFixture,
    pub(crate) shutdown: Shutdown,
}

impl TestQueues {
    pub(crate) async fn new(tiers: &[Duration]) -> Self {
        common::telemetry::init_for_tests();
        let base = format!("test.producer.{}", uuid::Uuid::new_v4().simple());
        let topology = Topology::new(base).with_retry_delays(tiers.iter().copied());
        TestQueues {
            topology,
            amqp: AmqpFixture::connect(&amqp_url()).await,
            shutdown: Shutdown::new(),
        }
    }

    pub(crate) fn publisher_config(&self) -> workqueue::publisher::PublisherConfig {
        workqueue::publisher::PublisherConfig {
            amqp_url: SecretUrl::new(amqp_url()),
            queue: self.topology.task_queue().to_string(),
            ..Default::default()
        }
    }

    /// A producer config for a job paced at `rate` tasks a second for
    /// `duration`, onto these queues.
    pub(crate) fn paced_job(&self, rate: f64, duration: Duration) -> task_producer::Config {
        self.job_config(JobConfig {
            rate,
            duration,
            ..JobConfig::default()
        })
    }

    /// Waits (at most 10 s) until `queue` holds `count` ready messages, and
    /// checks that it still holds exactly that many.
    pub(crate) async fn expect_depth(&self, queue: &str, count: u32) {
        testkit::wait_for_depth(&self.amqp.channel, queue, count, Duration::from_secs(10)).await;
        assert_eq!(self.amqp.depth(queue).await, count);
    }

    /// A producer config that runs `job` onto these queues, ops on port 0.
    pub(crate) fn job_config(&self, job: JobConfig) -> task_producer::Config {
        task_producer::Config {
            amqp_url: SecretUrl::new(amqp_url()),
            queue: self.topology.task_queue().to_string(),
            ops_addr: "127.0.0.1:0".parse().unwrap(),
            job,
            ..task_producer::Config::default()
        }
    }
}

impl Drop for TestQueues {
    fn drop(&mut self) {
        self.shutdown.trigger();
        testkit::delete_queues_on_drop(amqp_url(), self.topology.queue_names());
    }
}
