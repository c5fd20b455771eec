//! The shared brokers of the machine, and RabbitMQ fixtures on them: a
//! connection with a channel to look at queues, and queue deletion that also
//! works from `Drop`.

use std::future::Future;

use lapin::{
    Channel, Connection, ConnectionProperties,
    message::BasicGetMessage,
    options::{BasicGetOptions, QueueDeleteOptions},
};

/// The shared RabbitMQ of the machine: `AMQP_URL`, or guest on
/// 127.0.0.1:5672. Tests use queues of their own on it and never stop it.
pub fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// The shared NATS server of the machine: `NATS_URL`, or 127.0.0.1:4222.
/// Tests use subjects and streams of their own on it and never stop it.
pub fn nats_url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// Connects to the RabbitMQ at `url`; panics when none answers.
pub async fn amqp_connect(url: &str) -> Connection {
    Connection::connect(url, ConnectionProperties::default())
        .await
        .unwrap_or_else(|error| panic!("a running rabbitmq at {url}: {error}"))
}

/// A connection to a RabbitMQ and one channel on it, to look at queues the
/// way a plain AMQP client does.
#[derive(Debug)]
pub struct AmqpFixture {
    /// The connection (open more channels on it as needed).
    pub connection: Connection,
    /// A channel for [`AmqpFixture::depth`] and [`AmqpFixture::get`].
    pub channel: Channel,
}

impl AmqpFixture {
    /// Connects to the RabbitMQ at `url` and opens a channel; panics when
    /// none answers.
    pub async fn connect(url: &str) -> Self {
        let connection = amqp_connect(url).await;
        let channel = connection
            .create_channel()
            .await
            .expect("a channel on the rabbitmq connection");
        AmqpFixture {
            connection,
            channel,
        }
    }

    /// Messages ready in `queue` now (a passive declare: the queue must exist).
    pub async fn depth(&self, queue: &str) -> u32 {
        crate::queue_state(&self.channel, queue).await.0
    }

    /// Takes one message off `queue` (auto-ack), if there is one.
    pub async fn get(&self, queue: &str) -> Option<BasicGetMessage> {
        self.channel
            .basic_get(queue.into(), BasicGetOptions { no_ack: true })
            .await
            .expect("basic.get on the test queue")
    }
}

/// Deletes `queues` on the RabbitMQ at `url`, each on a fresh channel (a
/// failed delete closes its channel), ignoring every error: for clean-up,
/// where a queue may never have been declared or the broker may be gone.
pub async fn delete_queues(url: &str, queues: impl IntoIterator<Item = String>) {
    let Ok(connection) = Connection::connect(url, ConnectionProperties::default()).await else {
        return;
    };
    for queue in queues {
        if let Ok(channel) = connection.create_channel().await {
            let _ = channel
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
    }
    let _ = connection.close(200, "test clean-up".into()).await;
}

/// [`delete_queues`] from a `Drop`: blocks until done, so a failed test
/// still leaves the broker clean.
pub fn delete_queues_on_drop(url: String, queues: Vec<String>) {
    block_on_cleanup(async move { delete_queues(&url, queues).await });
}

/// Deletes `queues` when the guard is dropped: hold it for as long as the
/// services that declare them run (a test that fails half way still cleans up).
#[must_use = "the queues are deleted when this guard is dropped"]
#[derive(Debug)]
pub struct QueuesGuard {
    url: String,
    queues: Vec<String>,
}

/// A guard deleting `queues` on `url` when it is dropped.
pub fn delete_queues_later(url: String, queues: Vec<String>) -> QueuesGuard {
    QueuesGuard { url, queues }
}

impl Drop for QueuesGuard {
    fn drop(&mut self) {
        delete_queues_on_drop(self.url.clone(), std::mem::take(&mut self.queues));
    }
}

/// Runs `cleanup` to completion on a runtime of its own in a thread of its
/// own, and waits for it. `Drop` cannot await, and a runtime cannot be
/// blocked on from inside the test's runtime; this works in both places.
pub fn block_on_cleanup<F>(cleanup: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    let thread = std::thread::spawn(move || {
        match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime.block_on(cleanup),
            Err(error) => eprintln!("cannot clean up: {error}"),
        }
    });
    let _ = thread.join();
}
