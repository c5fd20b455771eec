//! Fixtures shared by the integration tests of every switchyard crate.
//!
//! - [`unique`], [`free_port`], [`eventually`]: names no other test uses,
//!   ports nobody listens on, and polling with a deadline instead of sleeps.
//! - [`NatsServer`] and [`RabbitNode`]: private brokers on free ports for the
//!   tests that kill or restart a broker. The shared brokers of the machine
//!   are never stopped or reconfigured (DESIGN.md).
//!
//! Only tests depend on this crate (as a dev-dependency).

mod nats_server;
mod rabbit_node;

use std::{future::Future, net::TcpListener, time::Duration};

pub use nats_server::NatsServer;
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
    #[should_panic(expected = "waiting for nothing")]
    async fn eventually_gives_up_after_the_timeout() {
        eventually("nothing", Duration::from_millis(200), || async {
            None::<()>
        })
        .await;
    }
}
