//! Confirmed, persistent task publishing with reconnection.
//!
//! A [`TaskPublisher`] owns one AMQP connection and one channel in confirm
//! mode, kept alive by a background task: it connects with the backoff of
//! [`keep_connected`], declares the work queue of the [`Topology`] every time
//! (a restarted broker may have lost non-durable state, and a fresh broker
//! has no queues at all), and reconnects when the connection drops.
//!
//! [`TaskPublisher::publish`] returns only once the broker has confirmed the
//! message, so a caller that got `Ok` knows the task is on disk in a durable
//! queue. Many publishes share the channel at once: a semaphore of
//! `max_unconfirmed` permits bounds the window of unconfirmed messages (the
//! one-at-a-time wait of a plain client is the special case `max_unconfirmed = 1`). A
//! nack, a lost confirm, a broken connection, or a message returned
//! unroutable (publishes are `mandatory`: a deleted queue is declared again
//! rather than the message dropped) sends the same message again until `publish_timeout` runs out; only then does `publish` return `Err`,
//! which always means "not confirmed" (it may still have reached the queue,
//! which is why workers are idempotent by task id).
//!
//! `amqp_url` may list the nodes of a cluster (see [`crate::connection`]):
//! a lost connection is replaced by one to the next node that answers, the
//! work queue declared again there, and every publish whose confirm was
//! outstanding at the loss is sent again on the new channel (the lost
//! channel fails its pending confirms, which is the `Err` arm above), so
//! none is dropped silently: it is confirmed, or its caller gets `Err`.
//!
//! When the service's shutdown fires, the publisher stops reconnecting but
//! keeps a live connection until the last handle is dropped or
//! [`TaskPublisher::close`] is called, so work still draining can publish.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use common::{
    clock::now_millis,
    codec::{CONTENT_TYPE_HEADER, Codec, CodecError, ContentType, DEFAULT_MAX_PAYLOAD},
    config::SecretUrl,
    propagation,
    reconnect::{Session, keep_connected},
    retry::Retryable,
    shutdown::Shutdown,
    tls::TlsFiles,
};
use futures::StreamExt;
use lapin::{
    BasicProperties, Channel, Confirmation, Connection,
    options::{BasicPublishOptions, ConfirmSelectOptions},
    types::{AMQPValue, FieldTable, LongString, ShortString},
};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::{
    task::Task,
    topology::{DEFAULT_TASK_QUEUE, QueueType, Topology},
};

/// AMQP delivery mode of a message that survives a broker restart.
const PERSISTENT: u8 = 2;

/// Pause between two sends of a nacked message: a nack means the broker is
/// struggling (disk or memory alarm), so hammering it does not help.
const NACK_PAUSE: Duration = Duration::from_millis(50);

/// How long one message may be nacked on one channel before the channel is
/// given up for a new connection. A quorum queue's client state lives in
/// the channel, and a channel that first published while the queue was
/// electing a leader can go on nacking after the new leader is up (seen on
/// RabbitMQ 3.10 after a node loss: every publish nacked for minutes, while
/// a new channel to the same queue was confirmed at once).
const NACKED_CHANNEL_LIMIT: Duration = Duration::from_secs(5);

/// Settings of a [`TaskPublisher`].
#[derive(Debug, Clone)]
pub struct PublisherConfig {
    /// The broker, e.g. `amqp://guest:guest@127.0.0.1:5672/%2f`.
    pub amqp_url: SecretUrl,
    /// CA and client certificate for an `amqps://` url (see [`crate::connection`]).
    pub amqp_tls: TlsFiles,
    /// The work queue's base name (see [`Topology`]).
    pub queue: String,
    /// How task bodies are encoded.
    pub content_type: ContentType,
    /// Most messages published but not yet confirmed at any time.
    pub max_unconfirmed: usize,
    /// How long one [`TaskPublisher::publish`] may take, waiting for a
    /// connection and resends included.
    pub publish_timeout: Duration,
    /// Classic or quorum queues (must match the workers' `queue_type`).
    pub queue_type: QueueType,
    /// Largest task body sent, in bytes (the service's `max_message_bytes`):
    /// a larger task is refused with [`PublishError::Encode`] before it
    /// reaches the broker, so no worker has to dead-letter it.
    pub max_message_bytes: usize,
}

impl PublisherConfig {
    /// The work queue this publisher declares and publishes to.
    pub fn topology(&self) -> Topology {
        Topology::new(self.queue.clone()).with_queue_type(self.queue_type)
    }
}

impl Default for PublisherConfig {
    fn default() -> Self {
        PublisherConfig {
            amqp_url: SecretUrl::new("amqp://guest:guest@127.0.0.1:5672/%2f"),
            amqp_tls: TlsFiles::default(),
            queue: DEFAULT_TASK_QUEUE.to_string(),
            content_type: ContentType::Protobuf,
            max_unconfirmed: 256,
            publish_timeout: Duration::from_secs(5),
            queue_type: QueueType::Classic,
            max_message_bytes: DEFAULT_MAX_PAYLOAD,
        }
    }
}

/// Why a task was not confirmed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The task could not be encoded (too large, for instance); resending
    /// will not help.
    #[error("cannot encode task: {0}")]
    Encode(#[from] CodecError),
    /// No confirm within the publish timeout.
    #[error("task not confirmed within {timeout:?}: {last_error}")]
    Timeout {
        /// The configured publish timeout.
        timeout: Duration,
        /// What went wrong last (no connection, a nack, a broken channel).
        last_error: String,
    },
    /// The publisher stopped (shutdown) and has no connection any more.
    #[error("task publisher is closed")]
    Closed,
}

impl Retryable for PublishError {
    fn is_retryable(&self) -> bool {
        matches!(self, PublishError::Timeout { .. })
    }
}

/// Running totals of one publisher, for summaries and tests.
#[derive(Debug, Default)]
pub struct PublisherStats {
    /// Publishes the broker confirmed.
    confirmed: AtomicU64,
    /// Sends after the first one of a publish.
    resent: AtomicU64,
    /// Publishes that returned `Err`.
    failed: AtomicU64,
}

impl PublisherStats {
    /// Tasks the broker confirmed.
    pub fn confirmed(&self) -> u64 {
        self.confirmed.load(Ordering::Relaxed)
    }

    /// Sends after the first one (after a nack, a lost confirm or a broken
    /// connection).
    pub fn resent(&self) -> u64 {
        self.resent.load(Ordering::Relaxed)
    }

    /// Publishes that returned `Err`.
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }
}

/// The channel of the current connection, numbered so that a failure
/// reported on an old connection does not tear down a new one.
#[derive(Debug, Clone)]
struct Link {
    /// Bumped on every new connection.
    generation: u64,
    /// The confirm-mode channel of that connection.
    channel: Channel,
}

#[derive(Debug)]
struct Inner {
    /// The settings it was started with.
    config: PublisherConfig,
    /// Task encoding, with the payload size limit.
    codec: Codec,
    /// One permit per unconfirmed message allowed in flight.
    window: Semaphore,
    /// The current channel; `None` while disconnected.
    link: watch::Receiver<Option<Link>>,
    /// Connection state for readiness checks.
    connected: watch::Receiver<bool>,
    /// Generations whose channel failed; the background task reconnects.
    /// Dropping the last handle closes this and ends the background task.
    broken: mpsc::UnboundedSender<u64>,
    /// Fired by [`TaskPublisher::close`].
    closing: CancellationToken,
    stats: PublisherStats,
    /// `messages_published_total{queue}`, resolved once.
    published: metrics::Counter,
}

/// Publishes tasks to the work queue with publisher confirms. Cheap to clone;
/// every clone shares the connection and the window.
#[derive(Debug, Clone)]
pub struct TaskPublisher {
    /// Shared by every clone.
    inner: Arc<Inner>,
}

impl TaskPublisher {
    /// Returns at once; connects (and after a broker restart reconnects) in
    /// the background with [`keep_connected`], declaring the topology each
    /// time.
    pub fn start(config: PublisherConfig, shutdown: Shutdown) -> Self {
        let (link_tx, link_rx) = watch::channel(None);
        let (connected_tx, connected_rx) = watch::channel(false);
        let (broken_tx, broken_rx) = mpsc::unbounded_channel();
        let closing = CancellationToken::new();
        let inner = Arc::new(Inner {
            window: Semaphore::new(config.max_unconfirmed.max(1)),
            codec: Codec::new(config.max_message_bytes),
            link: link_rx,
            connected: connected_rx,
            broken: broken_tx,
            closing: closing.clone(),
            stats: PublisherStats::default(),
            published: {
                // The handle binds to the recorder installed now; make sure it is ours.
                common::metrics::install();
                metrics::counter!(common::metrics::MESSAGES_PUBLISHED, "queue" => config.queue.clone())
            },
            config: config.clone(),
        });
        // Not tracked by the shutdown: the connection must outlive the drain
        // of the service's own work, which may still publish.
        tokio::spawn(maintain_connection(
            config,
            link_tx,
            connected_tx,
            broken_rx,
            shutdown,
            closing,
        ));
        TaskPublisher { inner }
    }

    /// Publishes one persistent task (delivery_mode 2, `Content-Type`,
    /// `traceparent` from the current span, `message_id` = task id) and returns
    /// after the broker confirmed it. Many calls may be in flight at once (up
    /// to `max_unconfirmed`). A nack or a lost confirm is retried inside
    /// `publish_timeout`; `Err` means NOT confirmed.
    pub async fn publish(&self, task: &Task) -> Result<(), PublishError> {
        let inner = &self.inner;
        let content_type = inner.config.content_type;
        let payload = inner.codec.encode(task, content_type)?;
        let mut headers = FieldTable::default();
        headers.insert(
            CONTENT_TYPE_HEADER.into(),
            AMQPValue::LongString(LongString::from(content_type.mime())),
        );
        propagation::inject_amqp(&mut headers);
        let properties = BasicProperties::default()
            .with_delivery_mode(PERSISTENT)
            .with_content_type(ShortString::from(content_type.mime()))
            .with_message_id(ShortString::from(task.id.as_str()))
            .with_timestamp(u64::try_from(now_millis() / 1000).unwrap_or_default())
            .with_headers(headers);

        let timeout = inner.config.publish_timeout;
        let mut last_error = String::from("no connection to the broker");
        let outcome = tokio::time::timeout(
            timeout,
            self.send_until_confirmed(&payload, properties, &mut last_error),
        )
        .await;
        let result = match outcome {
            Ok(result) => result,
            Err(_) => Err(PublishError::Timeout {
                timeout,
                last_error,
            }),
        };
        match &result {
            Ok(()) => {
                inner.stats.confirmed.fetch_add(1, Ordering::Relaxed);
                inner.published.increment(1);
            }
            Err(error) => {
                inner.stats.failed.fetch_add(1, Ordering::Relaxed);
                warn!(task_id = %task.id, error = %error, "task publish failed");
            }
        }
        result
    }

    /// Closes the connection cleanly and waits until it is closed. Publishes
    /// still waiting for a confirm fail with [`PublishError::Closed`]; so does
    /// every later publish, through any clone.
    pub async fn close(&self) {
        self.inner.closing.cancel();
        let mut link = self.inner.link.clone();
        // The background task drops the sender once the connection is closed.
        while link.changed().await.is_ok() {}
    }

    /// `true` while connected with the topology declared.
    pub fn connected(&self) -> watch::Receiver<bool> {
        self.inner.connected.clone()
    }

    /// Totals since start.
    pub fn stats(&self) -> &PublisherStats {
        &self.inner.stats
    }

    /// The size of the window of unconfirmed messages.
    pub fn max_unconfirmed(&self) -> usize {
        self.inner.config.max_unconfirmed.max(1)
    }

    /// The work queue this publisher publishes to.
    pub fn queue(&self) -> &str {
        &self.inner.config.queue
    }

    async fn send_until_confirmed(
        &self,
        payload: &[u8],
        properties: BasicProperties,
        last_error: &mut String,
    ) -> Result<(), PublishError> {
        let inner = &self.inner;
        let _permit = inner
            .window
            .acquire()
            .await
            .map_err(|_| PublishError::Closed)?;
        let mut first = true;
        // The link this message was first nacked on, and when.
        let mut nacked_on: Option<(u64, tokio::time::Instant)> = None;
        loop {
            let link = self.current_link().await?;
            if !first {
                inner.stats.resent.fetch_add(1, Ordering::Relaxed);
            }
            first = false;
            let sent = async {
                link.channel
                    .basic_publish(
                        ShortString::from(""),
                        ShortString::from(inner.config.queue.as_str()),
                        // Mandatory: if the queue was deleted under us the
                        // broker returns the message instead of acking a drop.
                        BasicPublishOptions {
                            mandatory: true,
                            ..BasicPublishOptions::default()
                        },
                        payload,
                        properties.clone(),
                    )
                    .await?
                    .await
            };
            match sent.await {
                Ok(Confirmation::Ack(None)) => return Ok(()),
                Ok(Confirmation::Ack(Some(_returned))) => {
                    // Unroutable: the queue is gone. Reconnecting declares it again.
                    *last_error = "the work queue does not exist".into();
                    warn!(queue = %inner.config.queue, "task returned unroutable, declaring the topology again");
                    let _ = inner.broken.send(link.generation);
                    self.wait_for_new_link(link.generation).await?;
                }
                Ok(Confirmation::Nack(_)) => {
                    *last_error = "the broker nacked the message".into();
                    let now = tokio::time::Instant::now();
                    let since = match nacked_on {
                        Some((generation, since)) if generation == link.generation => since,
                        _ => nacked_on.insert((link.generation, now)).1,
                    };
                    if now.duration_since(since) >= NACKED_CHANNEL_LIMIT {
                        warn!(
                            queue = %inner.config.queue,
                            nacked_for_ms = now.duration_since(since).as_millis() as u64,
                            "every send nacked on this channel, reconnecting"
                        );
                        let _ = inner.broken.send(link.generation);
                        self.wait_for_new_link(link.generation).await?;
                    } else {
                        debug!("task nacked, sending again");
                        tokio::time::sleep(NACK_PAUSE).await;
                    }
                }
                Ok(Confirmation::NotRequested) => {
                    // Cannot happen on a channel in confirm mode; treat the
                    // channel as broken rather than trusting an unconfirmed send.
                    *last_error = "channel is not in confirm mode".into();
                    let _ = inner.broken.send(link.generation);
                    self.wait_for_new_link(link.generation).await?;
                }
                Err(error) => {
                    *last_error = error.to_string();
                    debug!(error = %error, "publish failed, waiting for a new connection");
                    let _ = inner.broken.send(link.generation);
                    self.wait_for_new_link(link.generation).await?;
                }
            }
        }
    }

    /// The current channel, waiting for one while disconnected.
    async fn current_link(&self) -> Result<Link, PublishError> {
        let mut link = self.inner.link.clone();
        let current = link
            .wait_for(Option::is_some)
            .await
            .map_err(|_| PublishError::Closed)?;
        Ok(current.clone().expect("wait_for checked is_some"))
    }

    /// Waits until the link is no longer `generation` (replaced or gone).
    async fn wait_for_new_link(&self, generation: u64) -> Result<(), PublishError> {
        let mut link = self.inner.link.clone();
        link.wait_for(|link| link.as_ref().is_none_or(|l| l.generation != generation))
            .await
            .map(|_| ())
            .map_err(|_| PublishError::Closed)
    }
}

/// Connects, declares, hands the channel out, and starts over when it
/// breaks: one [`keep_connected`] session per connection.
///
/// Reconnecting stops with the service's shutdown or [`TaskPublisher::close`]
/// (`stop` fires on either), but only `close` or the last handle going away
/// ends a live session: after the shutdown signal the connection stays up
/// for the work still draining, and is just not replaced once lost.
async fn maintain_connection(
    config: PublisherConfig,
    link: watch::Sender<Option<Link>>,
    connected: watch::Sender<bool>,
    broken: mpsc::UnboundedReceiver<u64>,
    shutdown: Shutdown,
    closing: CancellationToken,
) {
    let connection = PublisherConnection {
        topology: config.topology(),
        config,
        link,
        connected,
        broken: tokio::sync::Mutex::new(broken),
        closing,
        generation: AtomicU64::new(0),
    };
    let stop = connection.closing.child_token();
    let follow_shutdown = async {
        tokio::select! {
            () = shutdown.cancelled() => stop.cancel(),
            () = stop.cancelled() => {}
        }
    };
    let reconnect = async {
        keep_connected("task publisher", &connection.config.amqp_url, &stop, || {
            connection.session(&stop)
        })
        .await;
        // Also ends `follow_shutdown` when the loop ended by itself.
        stop.cancel();
    };
    tokio::join!(follow_shutdown, reconnect);
    debug!("task publisher stopped");
}

/// What the background task of a [`TaskPublisher`] keeps between sessions.
#[derive(Debug)]
struct PublisherConnection {
    config: PublisherConfig,
    /// The work queue to declare on every new connection.
    topology: Topology,
    /// Where publishers find the current channel.
    link: watch::Sender<Option<Link>>,
    /// Readiness.
    connected: watch::Sender<bool>,
    /// Generations whose channel failed (sessions never overlap: the lock is
    /// only ever taken by the one running session).
    broken: tokio::sync::Mutex<mpsc::UnboundedReceiver<u64>>,
    /// Fired by [`TaskPublisher::close`].
    closing: CancellationToken,
    /// Numbers the connections.
    generation: AtomicU64,
}

impl PublisherConnection {
    /// One connection: connect and declare (abandoned when `stop` fires
    /// first), hand the channel out, and wait for it to break, for
    /// [`TaskPublisher::close`] or for the last handle to go away.
    async fn session(&self, stop: &CancellationToken) -> Result<Session, lapin::Error> {
        let (connection, channel) = tokio::select! {
            () = stop.cancelled() => return Ok(Session::Finished),
            established = connect(&self.config, &self.topology) => established?,
        };
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        info!(url = %self.config.amqp_url, queue = %self.config.queue, "task publisher connected");
        self.link.send_replace(Some(Link {
            generation,
            channel: channel.clone(),
        }));
        self.connected.send_replace(true);

        let mut broken = self.broken.lock().await;
        let mut events = connection.events_listener();
        let ended = loop {
            tokio::select! {
                () = self.closing.cancelled() => break Session::Finished,
                event = events.next() => match event {
                    Some(lapin::Event::Error(error)) => break Session::Lost(error.to_string()),
                    Some(_) => {}
                    None => break Session::Lost("connection closed".into()),
                },
                report = broken.recv() => match report {
                    Some(failed) if failed == generation => {
                        break Session::Lost("channel failed".into());
                    }
                    Some(_) => {}
                    // Every handle is gone: nobody can publish any more.
                    None => break Session::Finished,
                },
            }
        };
        self.link.send_replace(None);
        self.connected.send_replace(false);
        // Channel first: closing the connection under an open channel makes
        // lapin log a spurious error.
        let _ = tokio::time::timeout(
            crate::connection::CLOSE_TIMEOUT,
            channel.close(200, ShortString::from("bye")),
        )
        .await;
        crate::connection::close(&connection, "bye").await;
        Ok(match ended {
            // After the shutdown signal a lost connection is not replaced.
            Session::Lost(reason) if stop.is_cancelled() => {
                warn!(reason, "task publisher connection lost during shutdown");
                Session::Finished
            }
            ended => ended,
        })
    }
}

async fn connect(
    config: &PublisherConfig,
    topology: &Topology,
) -> Result<(Connection, Channel), lapin::Error> {
    let connection =
        crate::connection::connect(&config.amqp_url, &config.amqp_tls, "task-producer").await?;
    let prepared = crate::connection::set_up("declaring the work queue", async {
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        topology.declare_work_queue(&channel).await?;
        Ok::<_, lapin::Error>(channel)
    })
    .await;
    match prepared {
        Ok(channel) => Ok((connection, channel)),
        Err(error) => {
            // A half-set-up connection would otherwise linger on the broker.
            crate::connection::close(&connection, "setup failed").await;
            Err(error)
        }
    }
}
