//! Quorum queues on a private RabbitMQ node: the topology declares them with
//! their arguments, the broker enforces the delivery limit by dead-lettering
//! into the DLQ, a queue of the other type is refused with an error that
//! says what to do, and the publisher reaches the node through a list of
//! URLs whose first node is down.

use std::{process::Command, time::Duration};

use common::{config::SecretUrl, shutdown::Shutdown};
use futures::StreamExt;
use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties,
    options::{BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, QueueDeclareOptions},
    types::FieldTable,
};
use testkit::{RabbitNode, free_port, unique};
use workqueue::{
    publisher::{PublisherConfig, TaskPublisher},
    task::Task,
    topology::{QueueType, Topology, declare_data_sync_as, is_queue_mismatch},
};

async fn channel(url: &str) -> (Connection, Channel) {
    let connection = Connection::connect(url, ConnectionProperties::default())
        .await
        .expect("connect to the private node");
    let channel = connection.create_channel().await.unwrap();
    (connection, channel)
}

/// `name -> type` of every queue on `node`, from `rabbitmqctl`.
fn queue_types(node: &RabbitNode) -> Vec<(String, String)> {
    let output = Command::new("rabbitmqctl")
        .args([
            "-n",
            &node.name,
            "list_queues",
            "-q",
            "--no-table-headers",
            "name",
            "type",
        ])
        .output()
        .expect("rabbitmqctl is installed");
    assert!(output.status.success(), "{output:?}");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            Some((fields.next()?.to_string(), fields.next()?.to_string()))
        })
        .collect()
}

#[tokio::test]
async fn quorum_topology_is_declared_enforced_and_guarded_against_a_type_mismatch() {
    let node = RabbitNode::start().await;
    let url = node.url();

    // 1. Every queue of a quorum topology is a quorum queue; declaring again
    //    is a no-op.
    let queue = format!("q.{}", unique());
    let quorum = Topology::new(queue.clone())
        .with_retry_delays([Duration::from_millis(200)])
        .with_queue_type(QueueType::Quorum)
        .with_delivery_limit(2);
    let (_connection, ch) = channel(&url).await;
    quorum.declare(&ch).await.expect("declare quorum topology");
    quorum
        .declare(&ch)
        .await
        .expect("the same declaration again");
    declare_data_sync_as(&ch, &format!("{queue}.sync"), QueueType::Quorum)
        .await
        .expect("declare quorum data_sync");
    let types = queue_types(&node);
    let mut expected = quorum.queue_names();
    expected.push(format!("{queue}.sync"));
    expected.push(format!("{queue}.sync.dlq"));
    for name in &expected {
        let found = types.iter().find(|(n, _)| n == name);
        assert_eq!(
            found.map(|(_, t)| t.as_str()),
            Some("quorum"),
            "{name} in {types:?}"
        );
    }

    // 2. x-delivery-limit: a task handed back more often than the limit is
    //    dead-lettered into the DLQ by the broker, not lost.
    ch.basic_publish(
        "".into(),
        queue.as_str().into(),
        BasicPublishOptions::default(),
        b"poison",
        BasicProperties::default().with_delivery_mode(2),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let mut consumer = ch
        .basic_consume(
            queue.as_str().into(),
            "poison-test".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut handed_back = 0;
    while let Ok(Some(delivery)) =
        tokio::time::timeout(Duration::from_secs(2), consumer.next()).await
    {
        let delivery = delivery.unwrap();
        delivery
            .nack(BasicNackOptions {
                requeue: true,
                ..BasicNackOptions::default()
            })
            .await
            .unwrap();
        handed_back += 1;
        assert!(
            handed_back <= 5,
            "the delivery limit did not stop the redeliveries"
        );
    }
    assert_eq!(handed_back, 3, "limit 2: two redeliveries after the first");
    testkit::wait_for_depth(&ch, &quorum.dead_letter_queue(), 1, Duration::from_secs(10)).await;

    // 3. The same names declared classic: refused with a message that says
    //    what to do, never the generic PRECONDITION_FAILED alone.
    let (_connection, ch) = channel(&url).await;
    let error = Topology::new(queue.clone())
        .declare(&ch)
        .await
        .expect_err("a classic declaration of a quorum queue");
    assert!(is_queue_mismatch(&error), "{error:?}");
    let message = error.to_string();
    assert!(message.contains(&queue), "{message}");
    assert!(message.contains("queue_type = \"quorum\""), "{message}");
    assert!(message.contains("drain"), "{message}");

    // 4. The other way round: a plain client's classic task_queue and a
    //    worker configured for quorum.
    let plain = format!("plain.{}", unique());
    let (_connection, ch) = channel(&url).await;
    ch.queue_declare(
        plain.as_str().into(),
        QueueDeclareOptions::durable(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let error = Topology::new(plain.clone())
        .with_queue_type(QueueType::Quorum)
        .declare(&ch)
        .await
        .expect_err("a quorum declaration of a classic queue");
    assert!(is_queue_mismatch(&error), "{error:?}");
    assert!(
        error.to_string().contains("queue_type = \"classic\""),
        "{error}"
    );
}

#[tokio::test]
async fn the_publisher_skips_a_dead_node_of_its_list_and_declares_quorum_queues() {
    let node = RabbitNode::start().await;
    let queue = format!("p.{}", unique());
    // The first node of the list has nobody listening.
    let dead = format!("amqp://guest:guest@127.0.0.1:{}/%2f", free_port());
    let shutdown = Shutdown::new();
    let publisher = TaskPublisher::start(
        PublisherConfig {
            amqp_url: SecretUrl::new(format!("{dead},{}", node.url())),
            queue: queue.clone(),
            queue_type: QueueType::Quorum,
            publish_timeout: Duration::from_secs(20),
            ..PublisherConfig::default()
        },
        shutdown.clone(),
    );
    let tasks: Vec<Task> = (0..50)
        .map(|i| Task::new(format!("t-{i}"), "sleep", Default::default()))
        .collect();
    let results = futures::future::join_all(tasks.iter().map(|t| publisher.publish(t))).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(publisher.stats().confirmed(), 50);

    let types = queue_types(&node);
    assert!(
        types.contains(&(queue.clone(), "quorum".into())),
        "{queue} in {types:?}"
    );
    let (_connection, ch) = channel(&node.url()).await;
    testkit::wait_for_depth(&ch, &queue, 50, Duration::from_secs(10)).await;
    publisher.close().await;
    shutdown.trigger();
}
