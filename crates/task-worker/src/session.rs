//! One connection's life: connect, declare, consume, and end cleanly.
//!
//! A session opens a connection, declares the topology (again after every
//! broker restart: a new node may not have our queues), enables confirms on
//! a channel used to re-publish retries and dead letters, starts the task
//! slots and the `data_sync` consumer, and then waits for one of: shutdown,
//! a lost connection, a failed consumer. The worker's loop starts a new
//! session after a loss.
//!
//! On shutdown every consumer is cancelled first (no new deliveries), the
//! tasks in flight finish and are acked, and only then is the connection
//! closed — all within the grace period, after which what is left is
//! abandoned unacked and RabbitMQ redelivers it to another worker.

use std::sync::Arc;

use common::shutdown::Shutdown;
use futures::StreamExt;
use lapin::{
    Connection, ConnectionProperties,
    options::{BasicQosOptions, ConfirmSelectOptions},
    types::{LongString, ShortString},
};
use task_producer::topology::declare_data_sync;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{
    consumer::{End, TaskSlot},
    data_sync,
    worker::Shared,
};

/// Prefetch of the `data_sync` consumer: events are tiny and applied in
/// memory, so a deeper buffer costs nothing.
const DATA_SYNC_PREFETCH: u16 = 64;

/// Runs one session. `Err` when the connection could not be set up.
pub(crate) async fn run(shared: &Arc<Shared>, shutdown: &Shutdown) -> Result<End, lapin::Error> {
    let config = &shared.config;
    let connection = tokio::select! {
        () = shutdown.cancelled() => return Ok(End::Stopped),
        connection = Connection::connect(
            config.amqp_url.expose(),
            ConnectionProperties::default().with_connection_name(LongString::from("task-worker")),
        ) => connection?,
    };
    let stop = CancellationToken::new();
    let mut slots = JoinSet::new();
    let started = start(shared, &connection, &stop, &mut slots).await;
    if let Err(error) = started {
        stop.cancel();
        slots.abort_all();
        let _ = connection
            .close(200, ShortString::from("setup failed"))
            .await;
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
    let end = tokio::select! {
        () = shutdown.cancelled() => End::Stopped,
        Some(ended) = slots.join_next() => match ended {
            Ok(End::Lost(reason)) => End::Lost(reason),
            Ok(End::Stopped) => End::Lost("a consumer stopped on its own".into()),
            Err(error) => End::Lost(format!("a consumer task failed: {error}")),
        },
        reason = connection_error(&mut events) => End::Lost(reason),
    };
    shared.readiness.set("rabbitmq", false);
    stop.cancel();
    match &end {
        End::Stopped => {
            shared.readiness.shutting_down();
            info!(
                grace_ms = config.shutdown_grace.as_millis() as u64,
                "stopping: consumers cancelled, finishing tasks in flight"
            );
            let drained = tokio::time::timeout(config.shutdown_grace, async {
                while slots.join_next().await.is_some() {}
            })
            .await;
            if drained.is_err() {
                warn!(
                    left = slots.len(),
                    "grace period over, abandoning tasks in flight (they will be redelivered)"
                );
                slots.abort_all();
            }
            if let Err(error) = connection.close(200, ShortString::from("shutdown")).await {
                warn!(error = %error, "closing the connection");
            }
            info!("task worker stopped");
        }
        End::Lost(reason) => {
            warn!(reason, "connection lost, reconnecting");
            slots.abort_all();
            let _ = connection
                .close(200, ShortString::from("reconnecting"))
                .await;
        }
    }
    Ok(end)
}

/// Declares the topology and starts every consumer on `connection`.
async fn start(
    shared: &Arc<Shared>,
    connection: &Connection,
    stop: &CancellationToken,
    slots: &mut JoinSet<End>,
) -> Result<(), lapin::Error> {
    let config = &shared.config;
    let publish = connection.create_channel().await?;
    shared.context.topology.declare(&publish).await?;
    declare_data_sync(&publish, &config.data_sync_queue).await?;
    declare_data_sync(
        &publish,
        &data_sync::dead_letter_queue(&config.data_sync_queue),
    )
    .await?;
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
        slots.spawn(slot.run(stop.clone()));
    }

    let channel = connection.create_channel().await?;
    channel
        .basic_qos(DATA_SYNC_PREFETCH, BasicQosOptions::default())
        .await?;
    slots.spawn(data_sync::run(
        channel,
        publish,
        config.data_sync_queue.clone(),
        format!("{}-data-sync", shared.worker_id),
        shared.contacts.clone(),
        stop.clone(),
    ));
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
