//! One connection's life: connect, declare, consume, and end cleanly.
//!
//! A session opens a connection, declares the topology (again after every
//! broker restart: a new node may not have our queues), enables confirms on
//! a channel used to re-publish retries and dead letters, starts the task
//! slots and the `data_sync` consumer, and then waits for one of: shutdown,
//! a lost connection, a failed consumer. [`crate::app`] runs sessions one
//! after another with [`common::reconnect::keep_connected`].
//!
//! The consumers of one session run in a [`Shutdown::scope`] of their own.
//! On shutdown the scope's signal cancels every consumer first (no new
//! deliveries), the tasks in flight finish and are acked, and only then is
//! the connection closed — all within the grace period, after which the
//! scope aborts what is left: it is abandoned unacked and RabbitMQ
//! redelivers it to another worker. When the connection is lost the scope is
//! aborted at once: nothing its consumers do can be acked any more.

use std::sync::Arc;

use common::{
    circuit_breaker::CircuitBreaker,
    config::duration,
    ops::Readiness,
    reconnect::Session,
    shutdown::{Drained, Shutdown},
};
use futures::{StreamExt, stream::FuturesUnordered};
use lapin::{
    Connection,
    options::{BasicQosOptions, ConfirmSelectOptions},
};
use tokio::task::JoinHandle;
use tracing::info;
use workqueue::topology::{declare_data_sync_as, declare_data_sync_dead_letters};

use crate::{
    Config,
    consumer::{End, TaskSlot},
    contacts::ContactDirectory,
    data_sync,
    processing::TaskContext,
};

/// Prefetch of the `data_sync` consumer: events are tiny and applied in
/// memory, so a deeper buffer costs nothing.
const DATA_SYNC_PREFETCH: u16 = 64;

/// What every session of one worker shares, built once by
/// [`crate::Application::run_until_stopped`].
#[derive(Debug)]
pub(crate) struct Shared {
    /// The worker's configuration.
    pub(crate) config: Config,
    /// What processing a task needs.
    pub(crate) context: Arc<TaskContext>,
    /// The contact directory fed by `data_sync`.
    pub(crate) contacts: ContactDirectory,
    /// The breaker the task consumers pause on, if any.
    pub(crate) breaker: Option<Arc<CircuitBreaker>>,
    /// `/readyz` checks.
    pub(crate) readiness: Readiness,
    /// Prefix of this process's consumer tags (visible in the management UI).
    pub(crate) worker_id: String,
}

/// The consumers of one session, each reporting how it ended.
type Consumers = FuturesUnordered<JoinHandle<End>>;

/// Runs one session: [`Session::Finished`] after a shutdown drained it,
/// [`Session::Lost`] when the connection or a consumer failed, `Err` when
/// the connection could not be set up.
pub(crate) async fn run(
    shared: &Arc<Shared>,
    shutdown: &Shutdown,
) -> Result<Session, lapin::Error> {
    let config = &shared.config;
    let connection = tokio::select! {
        () = shutdown.cancelled() => return Ok(Session::Finished),
        connection = workqueue::connection::connect(
            &config.amqp_url,
            &config.amqp_tls,
            "task-worker",
        ) => connection?,
    };
    let scope = shutdown.scope();
    let mut consumers = Consumers::new();
    let started = workqueue::connection::set_up(
        "declaring the topology and starting the consumers",
        start(shared, &connection, &scope, &mut consumers),
    )
    .await;
    if let Err(error) = started {
        scope.abort();
        workqueue::connection::close(&connection, "setup failed").await;
        return Err(error);
    }
    info!(
        url = %config.amqp_url,
        queue = %config.queue,
        prefetch = config.prefetch,
        concurrency = config.concurrency,
        "task worker consuming"
    );
    shared.readiness.set("rabbitmq", true);

    let mut events = connection.events_listener();
    // Biased towards shutdown: the scope's signal stops the consumers too,
    // and a consumer that returned because of it is not a lost connection.
    let end = tokio::select! {
        biased;
        () = shutdown.cancelled() => Session::Finished,
        Some(ended) = consumers.next() => match ended {
            Ok(End::Lost(reason)) => Session::Lost(reason),
            Ok(End::Stopped) => Session::Lost("a consumer stopped on its own".into()),
            Err(error) => Session::Lost(format!("a consumer task failed: {error}")),
        },
        reason = connection_error(&mut events) => Session::Lost(reason),
    };
    shared.readiness.set("rabbitmq", false);
    match &end {
        Session::Finished => {
            shared.readiness.shutting_down();
            info!(
                grace = %duration::format(config.shutdown_grace),
                "stopping: consumers cancelled, finishing tasks in flight"
            );
            // Past the grace period the scope aborts what is left (and says
            // so); closing the connection then hands those tasks back.
            if let Drained::TimedOut(left) = scope.drain(config.shutdown_grace).await {
                info!(
                    left,
                    "unacked tasks go back to the queue for another worker"
                );
            }
            workqueue::connection::close(&connection, "shutdown").await;
            info!("task worker stopped");
        }
        Session::Lost(_) => {
            // keep_connected logs the reason with its reconnect delay.
            scope.abort();
            workqueue::connection::close(&connection, "reconnecting").await;
        }
    }
    Ok(end)
}

/// Declares the topology and starts every consumer on `connection`, in `scope`.
async fn start(
    shared: &Arc<Shared>,
    connection: &Connection,
    scope: &Shutdown,
    consumers: &mut Consumers,
) -> Result<(), lapin::Error> {
    let config = &shared.config;
    let publish = connection.create_channel().await?;
    shared.context.topology.declare(&publish).await?;
    declare_data_sync_as(&publish, &config.data_sync_queue, config.queue_type).await?;
    declare_data_sync_dead_letters(&publish, &config.data_sync_queue, config.queue_type).await?;
    publish
        .confirm_select(ConfirmSelectOptions::default())
        .await?;

    for slot in 0..config.concurrency {
        let channel = connection.create_channel().await?;
        channel
            .basic_qos(config.prefetch, BasicQosOptions::default())
            .await?;
        let slot = TaskSlot {
            context: shared.context.clone(),
            channel,
            publish: publish.clone(),
            consumer_tag: format!("{}-task-{slot}", shared.worker_id),
            breaker: shared.breaker.clone(),
        };
        consumers.push(scope.spawn(slot.run(scope.token())));
    }

    let channel = connection.create_channel().await?;
    channel
        .basic_qos(DATA_SYNC_PREFETCH, BasicQosOptions::default())
        .await?;
    consumers.push(scope.spawn(data_sync::run(
        channel,
        publish,
        config.data_sync_queue.clone(),
        format!("{}-data-sync", shared.worker_id),
        shared.contacts.clone(),
        shared.context.codec,
        scope.token(),
    )));
    Ok(())
}

/// Completes with a reason when the connection reports an error.
async fn connection_error(
    events: &mut (impl futures::Stream<Item = lapin::Event> + Unpin),
) -> String {
    loop {
        match events.next().await {
            Some(lapin::Event::Error(error)) => return error.to_string(),
            Some(_) => {}
            None => return "connection closed".into(),
        }
    }
}
