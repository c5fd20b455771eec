//! `amqps://` on a private RabbitMQ node with a TLS listener that verifies
//! clients (`verify_peer`, `fail_if_no_peer_cert`) and a user of its own
//! (no guest): the task publisher's confirmed publish crosses it with the
//! CA and client certificate made at test time; a wrong password, a CA that
//! did not sign the broker, no client certificate and plain AMQP on the TLS
//! port each fail at once with an error that says why and holds no secret.
//!
//! One node for every case (a node takes seconds to boot); it runs as user
//! `rabbitmq`, so this needs root, as CI runs it.

use std::time::Duration;

use common::{config::SecretUrl, shutdown::Shutdown, tls::TlsFiles};
use lapin::options::BasicGetOptions;
use serde_json::Map;
use testkit::{RabbitNode, TestPki, unique};
use workqueue::{
    connection,
    publisher::{PublishError, PublisherConfig, TaskPublisher},
    task::Task,
};

/// How long a failing connect may take: it must fail, not hang.
const FAIL_FAST: Duration = Duration::from_secs(15);

fn mutual_tls(pki: &TestPki) -> TlsFiles {
    TlsFiles {
        ca: Some(pki.ca()),
        cert: Some(pki.client_cert()),
        key: Some(pki.client_key()),
    }
}

/// Connects and returns the error's text; panics if it connected or hung.
async fn refused(url: &str, tls: &TlsFiles) -> String {
    let url = SecretUrl::new(url);
    let attempt = connection::connect(&url, tls, "amqp-tls-test");
    match tokio::time::timeout(FAIL_FAST, attempt).await {
        Ok(Ok(_)) => panic!("connected to {url}"),
        Ok(Err(error)) => error.to_string(),
        Err(_) => panic!("connecting to {url} hung"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqps_with_a_custom_ca_a_client_certificate_and_a_user_of_its_own() {
    // Arrange
    let pki = TestPki::generate();
    let node = RabbitNode::with_tls(&pki, true);
    node.boot().await;
    let password = node.user.1.clone();
    let queue = format!("tls-tasks-{}", unique());
    let shutdown = Shutdown::new();
    let publisher = TaskPublisher::start(
        PublisherConfig {
            amqp_url: SecretUrl::new(node.amqps_url(None)),
            amqp_tls: mutual_tls(&pki),
            queue: queue.clone(),
            publish_timeout: Duration::from_secs(20),
            ..PublisherConfig::default()
        },
        shutdown.clone(),
    );
    let task = Task::new(format!("tls-{}", unique()), "sleep", Map::new());

    // Act: a confirmed publish over amqps, read back over amqps.
    publisher
        .publish(&task)
        .await
        .expect("confirmed over amqps");
    let reader = connection::connect(
        &SecretUrl::new(node.amqps_url(None)),
        &mutual_tls(&pki),
        "amqp-tls-reader",
    )
    .await
    .unwrap();
    let channel = reader.create_channel().await.unwrap();
    let delivery = channel
        .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .expect("the task is in the queue");

    // Assert
    assert_eq!(
        delivery
            .properties
            .message_id()
            .as_ref()
            .map(|id| id.as_str()),
        Some(task.id.as_str())
    );
    publisher.close().await;
    let _ = reader.close(200, "done".into()).await;

    // A wrong password: refused by the broker, the password not repeated.
    let wrong = refused(&node.amqps_url(Some("not-the-password")), &mutual_tls(&pki)).await;
    assert!(wrong.contains("ACCESS_REFUSED"), "{wrong}");
    assert!(!wrong.contains("not-the-password") && !wrong.contains(&password));

    // The task publisher with that password keeps trying, and says so.
    let refused_publisher = TaskPublisher::start(
        PublisherConfig {
            amqp_url: SecretUrl::new(node.amqps_url(Some("not-the-password"))),
            amqp_tls: mutual_tls(&pki),
            queue: queue.clone(),
            publish_timeout: Duration::from_secs(2),
            ..PublisherConfig::default()
        },
        shutdown.clone(),
    );
    let outcome = refused_publisher.publish(&task).await;
    assert!(
        matches!(outcome, Err(PublishError::Timeout { .. })),
        "{outcome:?}"
    );
    assert!(!*refused_publisher.connected().borrow());
    refused_publisher.close().await;

    // A CA that did not sign the broker's certificate.
    let other_ca = TlsFiles {
        ca: Some(pki.other_ca()),
        ..mutual_tls(&pki)
    };
    let unknown = refused(&node.amqps_url(None), &other_ca).await;
    assert!(unknown.contains("UnknownIssuer"), "{unknown}");

    // No client certificate: the broker demands one. Under TLS 1.3 the
    // client learns it after its side of the handshake, as the alert
    // (`CertificateRequired`) or as the connection closing, whichever
    // lapin reads first; `refused` has checked that it failed at once.
    let anonymous = TlsFiles {
        ca: Some(pki.ca()),
        ..TlsFiles::default()
    };
    let no_certificate = refused(&node.amqps_url(None), &anonymous).await;

    // Plain AMQP to the TLS port: the broker answers with a TLS alert or a
    // reset, whichever comes first; either way an error at once, no hang.
    let tls_port = node.tls_port.unwrap();
    let plain = format!("amqp://{}:{password}@127.0.0.1:{tls_port}/%2f", node.user.0);
    let plaintext = refused(&plain, &TlsFiles::default()).await;
    assert!(!plaintext.contains(&password), "{plaintext}");

    // A CA file that holds no certificate: named, before any connection.
    let bad_ca = TlsFiles {
        ca: Some(pki.client_key()),
        ..TlsFiles::default()
    };
    let unusable = refused(&node.amqps_url(None), &bad_ca).await;
    assert!(unusable.contains("holds no PEM certificate"), "{unusable}");
    assert!(unusable.contains("client-key.pem"), "{unusable}");
    println!(
        "wrong password: {wrong}\nunknown CA: {unknown}\nno client certificate: {no_certificate}\nplain amqp on the tls port: {plaintext}\nbad CA file: {unusable}"
    );
    shutdown.trigger();
}
