//! A work queue that exists with another type than `queue_type` stops the
//! worker at start with what to do, rather than failing every reconnect
//! while the process looks alive.

use task_worker::{Application, Config};
use workqueue::topology::QueueType;

use crate::helpers::TestQueues;

#[tokio::test]
async fn a_classic_work_queue_stops_a_worker_configured_for_quorum_at_start() {
    // Arrange: the queues exist as classic (a plain client's declaration).
    let queues = TestQueues::new().await;
    let config = Config {
        queue_type: QueueType::Quorum,
        ..queues.config()
    };

    // Act
    let error = match Application::build(config).await {
        Ok(_) => panic!("a quorum worker started on classic queues"),
        Err(error) => format!("{error:#}"),
    };

    // Assert: the error names the queue, the setting and the way out; the
    // queue itself is untouched (still there, still classic: a classic
    // declaration of it is accepted).
    assert!(error.contains(&queues.queue), "{error}");
    assert!(error.contains("queue_type = \"classic\""), "{error}");
    assert!(error.contains("drain"), "{error}");
    let classic = Application::build(queues.config()).await;
    assert!(classic.is_ok(), "{:?}", classic.err());
}
