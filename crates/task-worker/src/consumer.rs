//! One handler slot: a channel, a consumer on the work queue, tasks one at a
//! time.
//!
//! A worker runs `concurrency` slots, each with its own channel and
//! `basic_qos(prefetch)`: N slots at prefetch 1 behave like N single-slot
//! workers in one process (fair dispatch holds per slot), and the ack of a
//! task goes out only after its handler returned.
//!
//! A slot stops in two ways. On shutdown it cancels its consumer, hands back
//! what was prefetched but not started, finishes the task it is running and
//! returns. When the dependency's circuit breaker opens it does the same
//! but then waits for the breaker to half-open and consumes again.

use std::{sync::Arc, time::Duration};

use common::circuit_breaker::{BreakerState, CircuitBreaker};
use futures::StreamExt;
use lapin::{
    Channel, Consumer,
    options::{BasicCancelOptions, BasicConsumeOptions, BasicNackOptions},
    types::{FieldTable, ShortString},
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{
    metrics::TASK_CONSUMERS_PAUSED,
    processing::{self, Next, TaskContext},
};

/// How long a stopping slot waits for deliveries still in the client buffer.
const DRAIN_BUFFER: Duration = Duration::from_millis(200);

/// How long a slot refused in half-open waits for the probe's verdict.
const HALF_OPEN_WAIT: Duration = Duration::from_secs(1);

/// Why a consumer loop ended.
#[derive(Debug)]
pub(crate) enum End {
    /// Shutdown: the consumer was cancelled and in-flight work finished.
    Stopped,
    /// The channel or connection failed, or the broker cancelled the consumer.
    Lost(String),
}

/// A handler slot on the work queue.
#[derive(Debug)]
pub(crate) struct TaskSlot {
    /// What processing a task needs.
    pub(crate) context: Arc<TaskContext>,
    /// This slot's channel, with its own `basic_qos`.
    pub(crate) channel: Channel,
    /// The shared confirm-mode channel for retries and dead letters.
    pub(crate) publish: Channel,
    /// Unique per slot, so the slot can cancel exactly its consumer.
    pub(crate) consumer_tag: String,
    /// The breaker to pause on, if any.
    pub(crate) breaker: Option<Arc<CircuitBreaker>>,
}

impl TaskSlot {
    /// Consumes until `stop` fires or the channel fails.
    pub(crate) async fn run(self, stop: CancellationToken) -> End {
        let mut breaker_state = self.breaker.as_ref().map(|b| b.subscribe());
        loop {
            let mut consumer = match self.consume(self.context.topology.task_queue()).await {
                Ok(consumer) => consumer,
                Err(error) => return End::Lost(error.to_string()),
            };
            let refused = loop {
                tokio::select! {
                    biased;
                    () = stop.cancelled() => {
                        self.cancel(&mut consumer).await;
                        return End::Stopped;
                    }
                    () = opened(&mut breaker_state) => break false,
                    next = consumer.next() => match next {
                        Some(Ok(delivery)) => {
                            match processing::process(&self.context, &self.publish, delivery).await {
                                Ok(Next::Continue) => {}
                                Ok(Next::Pause) => break true,
                                Err(error) => return End::Lost(error.to_string()),
                            }
                        }
                        Some(Err(error)) => return End::Lost(error.to_string()),
                        None => return End::Lost("consumer cancelled by the broker".into()),
                    },
                }
            };
            self.cancel(&mut consumer).await;
            let Some(breaker) = &self.breaker else {
                // A handler reported an open breaker the worker does not
                // know: back off a moment rather than spin on requeues.
                tokio::select! {
                    () = stop.cancelled() => return End::Stopped,
                    () = tokio::time::sleep(HALF_OPEN_WAIT) => {}
                }
                continue;
            };
            metrics::gauge!(TASK_CONSUMERS_PAUSED).increment(1.0);
            info!(consumer = %self.consumer_tag, breaker = breaker.name(), "breaker open, task consumption paused");
            let resumed = tokio::select! {
                () = stop.cancelled() => false,
                () = wait_until_callable(breaker, breaker_state.as_mut(), refused) => true,
            };
            metrics::gauge!(TASK_CONSUMERS_PAUSED).decrement(1.0);
            if !resumed {
                return End::Stopped;
            }
            info!(consumer = %self.consumer_tag, state = %breaker.state(), "task consumption resumed");
        }
    }

    async fn consume(&self, queue: &str) -> Result<Consumer, lapin::Error> {
        self.channel
            .basic_consume(
                ShortString::from(queue),
                ShortString::from(self.consumer_tag.as_str()),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
    }

    /// Cancels the consumer and requeues what was prefetched but not started.
    async fn cancel(&self, consumer: &mut Consumer) {
        cancel_and_requeue(&self.channel, consumer, &self.consumer_tag).await;
    }
}

/// Cancels `consumer` and hands its buffered, unstarted deliveries back to
/// the queue so another consumer takes them at once.
pub(crate) async fn cancel_and_requeue(channel: &Channel, consumer: &mut Consumer, tag: &str) {
    if let Err(error) = channel
        .basic_cancel(ShortString::from(tag), BasicCancelOptions::default())
        .await
    {
        warn!(consumer = tag, error = %error, "cannot cancel the consumer");
        return;
    }
    while let Ok(Some(Ok(delivery))) = tokio::time::timeout(DRAIN_BUFFER, consumer.next()).await {
        let requeue = BasicNackOptions {
            requeue: true,
            ..Default::default()
        };
        if let Err(error) = delivery.acker.nack(requeue).await {
            warn!(consumer = tag, error = %error, "cannot requeue a prefetched delivery");
            return;
        }
    }
}

/// Completes when the breaker opens; never without a breaker.
async fn opened(state: &mut Option<watch::Receiver<BreakerState>>) {
    match state {
        Some(state) => {
            if state.wait_for(|s| *s == BreakerState::Open).await.is_err() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}

/// Returns when calls are allowed again. `refused` says a half-open breaker
/// turned this slot away (its probe slots were taken): wait for the probe's
/// verdict a moment instead of spinning on requeues.
async fn wait_until_callable(
    breaker: &CircuitBreaker,
    state: Option<&mut watch::Receiver<BreakerState>>,
    refused: bool,
) {
    match breaker.state() {
        BreakerState::Closed => {}
        BreakerState::HalfOpen => {
            if refused && let Some(state) = state {
                state.borrow_and_update();
                let _ = tokio::time::timeout(HALF_OPEN_WAIT, state.changed()).await;
            }
        }
        BreakerState::Open => breaker.wait_until_callable().await,
    }
}
