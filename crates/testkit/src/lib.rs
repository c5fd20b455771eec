//! Fixtures shared by the integration tests of every switchyard crate.
//!
//! - [`unique`], [`free_port`], [`free_addr`], [`eventually`]: names no
//!   other test uses, ports nobody listens on, and polling with a deadline
//!   instead of sleeps.
//! - [`queue_state`], [`wait_for_depth`], [`wait_for_consumers`]: what a
//!   RabbitMQ queue holds, observed without changing it.
//! - [`amqp_url`], [`nats_url`]: the shared brokers of the machine.
//! - [`AmqpFixture`], [`amqp_connect`]: a connection and channel to look at
//!   queues with; [`delete_queues`], [`delete_queues_on_drop`] and
//!   [`block_on_cleanup`]: clean-up that also runs from `Drop`.
//! - [`http_get`]: one request to a service's ops port (`/metrics`, `/readyz`,
//!   `/stats`, `/contacts`).
//! - [`NatsServer`] and [`RabbitNode`]: private brokers on free ports for the
//!   tests that kill or restart a broker. The shared brokers of the machine
//!   are never stopped or reconfigured.
//! - [`NatsCluster`]: a private NATS cluster with replicated JetStream, for
//!   the tests that kill the node leading a stream.
//! - [`RabbitCluster`]: a private RabbitMQ cluster (three nodes joined
//!   with `rabbitmqctl join_cluster`), for the tests that kill the node
//!   leading a quorum queue.
//! - [`TestPki`]: a CA, server and client certificates made at test time,
//!   for the brokers' TLS listeners.
//! - [`PostgresServer`]: a private PostgreSQL that takes TLS connections
//!   only (a password role and a client-certificate role), for the tests
//!   of `sslmode`.
//! - [`NatsOperator`], [`NatsAccount`], [`NatsUser`]: operator, account and
//!   user JWTs signed with NKeys at test time, the nats-server
//!   configuration trusting them and `.creds` files.
//!
//! Only tests depend on this crate (as a dev-dependency).

mod amqp;
mod certificates;
mod nats_cluster;
mod nats_jwt;
mod nats_server;
mod postgres_server;
mod rabbit_cluster;
mod rabbit_node;

use std::{future::Future, net::TcpListener, time::Duration};

pub use amqp::{
    AmqpFixture, QueuesGuard, amqp_connect, amqp_url, block_on_cleanup, delete_queues,
    delete_queues_later, delete_queues_on_drop, nats_url,
};
pub use certificates::TestPki;
pub use nats_cluster::NatsCluster;
pub use nats_jwt::{NatsAccount, NatsOperator, NatsUser};
pub use nats_server::{NatsServer, PARTITIONS_CONF};
pub use postgres_server::PostgresServer;
pub use rabbit_cluster::RabbitCluster;
pub use rabbit_node::RabbitNode;

/// Twelve random hex digits for the subjects, streams, queues and
/// directories of one test, so tests run in parallel on the shared brokers.
pub fn unique() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_string()
}

/// A TCP port on 127.0.0.1 that was free when asked (bind it soon).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("a free local port")
}

/// An address on 127.0.0.1 with a port that was free when asked.
pub fn free_addr() -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// A one-shot HTTP/1.1 GET: the status code and the body. Panics when
/// nothing answers (the service under test is expected to be up).
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap_or_else(|error| panic!("nothing answers on {addr}: {error}"));
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response
        .get(9..12)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response from {addr}{path}: {response:?}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Polls until `queue` holds `count` ready messages; panics after `timeout`.
pub async fn wait_for_depth(channel: &lapin::Channel, queue: &str, count: u32, timeout: Duration) {
    eventually(&format!("{count} messages in {queue}"), timeout, || async {
        (queue_state(channel, queue).await.0 == count).then_some(())
    })
    .await;
}

/// Polls until `queue` has `count` consumers; panics after `timeout`.
pub async fn wait_for_consumers(
    channel: &lapin::Channel,
    queue: &str,
    count: u32,
    timeout: Duration,
) {
    eventually(
        &format!("{count} consumers on {queue}"),
        timeout,
        || async { (queue_state(channel, queue).await.1 == count).then_some(()) },
    )
    .await;
}

/// Messages ready in `queue` and consumers on it, by a passive declare (the
/// queue must exist; nothing about it changes).
pub async fn queue_state(channel: &lapin::Channel, queue: &str) -> (u32, u32) {
    let queue = channel
        .queue_declare(
            queue.into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            lapin::types::FieldTable::default(),
        )
        .await
        .expect("the queue exists");
    (queue.message_count(), queue.consumer_count())
}

/// Polls `check` every 50 ms until it returns `Some`, and returns the value;
/// panics naming `what` once `timeout` has passed.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[test]
    fn unique_names_differ() {
        assert_ne!(unique(), unique());
        assert_eq!(unique().len(), 12);
    }

    #[tokio::test]
    async fn eventually_returns_the_first_value() {
        let calls = AtomicU32::new(0);
        let value = eventually("the third call", Duration::from_secs(5), || async {
            (calls.fetch_add(1, Ordering::SeqCst) == 2).then_some("done")
        })
        .await;
        assert_eq!(value, "done");
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn cleanup_runs_to_the_end_from_inside_a_runtime() {
        let done = std::sync::Arc::new(AtomicU32::new(0));
        let flag = done.clone();
        block_on_cleanup(async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            flag.store(1, Ordering::SeqCst);
        });
        assert_eq!(done.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn deleting_queues_on_a_broker_that_is_gone_is_quiet() {
        let url = format!("amqp://guest:guest@127.0.0.1:{}/%2f", free_port());
        delete_queues_on_drop(url, vec!["nothing".into()]);
    }

    #[tokio::test]
    #[should_panic(expected = "waiting for nothing")]
    async fn eventually_gives_up_after_the_timeout() {
        eventually("nothing", Duration::from_millis(200), || async {
            None::<()>
        })
        .await;
    }
}
