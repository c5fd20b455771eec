//! The raw hops an alert's path is made of, each measured alone with the
//! bare client, one message at a time, on the same brokers as the run:
//!
//! - NATS: async-nats publish → receive on another connection (the
//!   reading from sensor-publisher to alert-subscriber);
//! - AMQP: lapin confirmed, persistent publish → delivery to a consumer on
//!   another connection at prefetch 1 (the notify task from
//!   alert-subscriber to task-worker), the next message once the confirm
//!   and the ack are both done;
//! - gRPC: a unary `grpc.health.v1.Health/Check` on a bare tonic server
//!   (GetUser from task-worker to user-service, without the work).
//!
//! Their sum is what the pipeline would cost if each service added nothing.
//! Each hop gets a tenth of its samples untimed first (connections,
//! buffers); messages go back to back or with a pause after each
//! ([`Pace`]).

use std::time::Duration;

use anyhow::Context as _;
use common::{
    codec::{CONTENT_TYPE_HEADER, Codec, ContentType},
    proto::sensor::v1::SensorReading,
};
use futures::StreamExt;
use hdrhistogram::Histogram;
use lapin::{
    BasicProperties, Connection, ConnectionProperties,
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
        ConfirmSelectOptions,
    },
    types::FieldTable,
};
use serde_json::json;
use tokio::{net::TcpListener, time::Instant};
use tokio_util::sync::CancellationToken;
use tonic::transport::{Endpoint, server::TcpIncoming};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use workqueue::{
    task::{KIND_NOTIFY, Task},
    topology::Topology,
};

use super::latency::{histogram, record};

/// Longest one message may take before the hop is called broken.
const STALL: Duration = Duration::from_secs(10);

/// The three hops' latencies (µs).
#[derive(Debug)]
pub(crate) struct RawHops {
    pub(crate) nats: Histogram<u64>,
    pub(crate) amqp: Histogram<u64>,
    pub(crate) grpc: Histogram<u64>,
}

impl RawHops {
    /// Measures each hop: `pace.samples` timed messages after a tenth as
    /// many untimed ones, `pace.gap` apart.
    pub(crate) async fn measure(
        nats_url: &str,
        amqp_url: &str,
        pace: Pace,
    ) -> anyhow::Result<Self> {
        Ok(RawHops {
            nats: nats(nats_url, pace).await.context("raw NATS hop")?,
            amqp: amqp(amqp_url, pace).await.context("raw AMQP hop")?,
            grpc: grpc(pace).await.context("raw gRPC hop")?,
        })
    }
}

/// How many messages a hop gets, and how far apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pace {
    /// Timed messages.
    pub(crate) samples: u32,
    /// Pause after each message: 0 is back to back, every process awake;
    /// a pause lets them fall idle, as between the low phase's alerts.
    pub(crate) gap: Duration,
}

impl Pace {
    /// Every message, the untimed first tenth included.
    fn messages(self) -> std::ops::Range<u32> {
        0..self.samples + self.samples / 10
    }

    /// Whether message `n` is timed.
    fn timed(self, n: u32) -> bool {
        n >= self.samples / 10
    }

    /// The pause after a message.
    async fn rest(self) {
        if !self.gap.is_zero() {
            tokio::time::sleep(self.gap).await;
        }
    }
}

/// A reading as sensor-publisher sends it: Protobuf, with its headers.
fn reading_message() -> anyhow::Result<(bytes::Bytes, async_nats::HeaderMap)> {
    let reading = SensorReading {
        sensor_id: "low-temp-001".into(),
        kind: "temperature".into(),
        value: 41.0,
        unit: "celsius".into(),
        timestamp: 1_764_201_600_000,
        seq: 10,
        site: None,
        owner_id: Some("u-e2e-1".into()),
    };
    let payload = Codec::default().encode(&reading, ContentType::Protobuf)?;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(CONTENT_TYPE_HEADER, ContentType::Protobuf.mime());
    headers.insert(
        "traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    );
    Ok((payload, headers))
}

/// async-nats publish → receive, one message at a time.
async fn nats(url: &str, pace: Pace) -> anyhow::Result<Histogram<u64>> {
    let publisher = async_nats::connect(url).await?;
    let subscriber = async_nats::connect(url).await?;
    let subject = format!("bench.e2e.{}.raw", testkit::unique());
    let mut messages = subscriber.subscribe(subject.clone()).await?;
    subscriber.flush().await?;
    // `flush` only writes the SUB out: the server may not have it yet when
    // the other connection's first message comes (seen: that message lost,
    // one run in three on a busy JetStream server). A probe that comes back
    // proves it has; a late one is told apart by its payload.
    let probe = bytes::Bytes::from_static(b"probe");
    let subscribed_by = Instant::now() + STALL;
    loop {
        publisher.publish(subject.clone(), probe.clone()).await?;
        match tokio::time::timeout(Duration::from_millis(100), messages.next()).await {
            Ok(Some(_)) => break,
            Ok(None) => anyhow::bail!("the subscription ended"),
            Err(_) => anyhow::ensure!(
                Instant::now() < subscribed_by,
                "the subscription never received a probe"
            ),
        }
    }
    let (payload, headers) = reading_message()?;
    let mut latencies = histogram();
    for n in pace.messages() {
        let started = Instant::now();
        publisher
            .publish_with_headers(subject.clone(), headers.clone(), payload.clone())
            .await?;
        loop {
            let message = tokio::time::timeout(STALL, messages.next())
                .await
                .with_context(|| format!("message {n} did not arrive within {STALL:?}"))?
                .context("the subscription ended")?;
            if message.payload != probe {
                break;
            }
        }
        if pace.timed(n) {
            record(&mut latencies, started.elapsed().as_micros() as i64);
        }
        pace.rest().await;
    }
    Ok(latencies)
}

/// lapin confirmed publish → delivery on another connection, one message
/// at a time, into a work queue declared as the pipeline's is.
async fn amqp(url: &str, pace: Pace) -> anyhow::Result<Histogram<u64>> {
    let topology = Topology::new(format!("bench_e2e_{}_raw", testkit::unique()));
    let _queues = testkit::delete_queues_later(url.to_string(), topology.queue_names());
    let publishing = Connection::connect(url, ConnectionProperties::default()).await?;
    let consuming = Connection::connect(url, ConnectionProperties::default()).await?;
    let channel = publishing.create_channel().await?;
    topology.declare(&channel).await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let deliveries = consuming.create_channel().await?;
    deliveries.basic_qos(1, BasicQosOptions::default()).await?;
    let mut consumer = deliveries
        .basic_consume(
            topology.task_queue().into(),
            "bench-e2e-raw".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let task = Task::new(
        "low-temp-001-1764201600000-10",
        KIND_NOTIFY,
        match json!({
            "owner_id": "u-e2e-1", "alert_id": "low-temp-001-1764201600000-10",
            "sensor_id": "low-temp-001", "kind": "temperature", "severity": "critical",
            "value": 41.0, "threshold": 40.0, "timestamp": 1_764_201_600_000_i64,
        }) {
            serde_json::Value::Object(payload) => payload,
            _ => unreachable!("a JSON object"),
        },
    );
    let body = Codec::default().encode(&task, ContentType::Protobuf)?;
    let properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type(ContentType::Protobuf.mime().into());
    let mut latencies = histogram();
    for n in pace.messages() {
        let started = Instant::now();
        let confirm = channel
            .basic_publish(
                "".into(),
                topology.task_queue().into(),
                BasicPublishOptions::default(),
                &body,
                properties.clone(),
            )
            .await?;
        let delivered = async {
            let delivery = consumer.next().await.context("the consumer ended")??;
            let took = started.elapsed();
            delivery.acker.ack(BasicAckOptions::default()).await?;
            Ok::<_, anyhow::Error>(took)
        };
        let (confirmed, took) =
            tokio::time::timeout(STALL, async { tokio::join!(confirm, delivered) })
                .await
                .context("a message was not confirmed and delivered")?;
        anyhow::ensure!(confirmed?.is_ack(), "the broker nacked a publish");
        if pace.timed(n) {
            record(&mut latencies, took?.as_micros() as i64);
        }
        pace.rest().await;
    }
    let _ = publishing.close(200, "bench done".into()).await;
    let _ = consuming.close(200, "bench done".into()).await;
    Ok(latencies)
}

/// Unary Health/Check on a bare tonic server, one call at a time.
async fn grpc(pace: Pace) -> anyhow::Result<Histogram<u64>> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (_reporter, health) = tonic_health::server::health_reporter();
    let stop = CancellationToken::new();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(health)
            .serve_with_incoming_shutdown(
                TcpIncoming::from(listener).with_nodelay(Some(true)),
                stop.clone().cancelled_owned(),
            ),
    );
    let channel = Endpoint::from_shared(format!("http://{addr}"))?
        .tcp_nodelay(true)
        .connect_lazy();
    let mut client = HealthClient::new(channel);
    let mut latencies = histogram();
    let calls = async {
        for n in pace.messages() {
            let started = Instant::now();
            tokio::time::timeout(
                STALL,
                client.check(HealthCheckRequest {
                    service: String::new(),
                }),
            )
            .await
            .context("a call did not return")??;
            if pace.timed(n) {
                record(&mut latencies, started.elapsed().as_micros() as i64);
            }
            pace.rest().await;
        }
        Ok::<_, anyhow::Error>(())
    }
    .await;
    stop.cancel();
    let _ = server.await;
    calls.map(|()| latencies)
}
