//! One lane's worker: reads the lane's readings in stream order from where
//! its checkpoint left off, evaluates them with the lane's own sensor states
//! and checkpoints how far it got.
//!
//! Readings come from an ordered consumer (ephemeral, no acks — the
//! checkpoint is the progress) filtered on the lane's subject and starting
//! after the checkpoint's sequence, so a new owner continues exactly where
//! the last checkpoint stands, with the sensors' states of that moment.
//!
//! A reading is accounted for once it was evaluated and, if it raised an
//! alert, once the alert's task was confirmed by RabbitMQ. Every
//! `checkpoint_interval` the worker notes the sensors' states at the last
//! evaluated reading, and writes the newest note all of whose alerts are
//! confirmed. Readings after the checkpoint are evaluated again by the next
//! owner: an alert among them is raised again with the same id, which the
//! idempotent worker notifies once.
//!
//! The worker stops on its token (release, shutdown): it stops reading, gives
//! outstanding alerts up to `handover_grace` to be confirmed and writes its
//! last checkpoint. When the lease runs out or is lost it stops at once and
//! writes nothing: someone else may own the lane already.

use std::{
    collections::VecDeque,
    sync::Arc,
    time::{Duration, Instant},
};

use async_nats::jetstream::{
    self,
    consumer::{DeliverPolicy, pull},
    kv,
};
use common::reconnect::{Session, keep_connected, until_connected};
use futures::StreamExt;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::{
    checkpoint::{Checkpoint, CheckpointError, CheckpointStore},
    group::Lease,
    handoff::Delivered,
    metrics::{PARTITION_HANDOVER, PARTITION_LAG, READINGS_MISROUTED},
    partition::Lane,
    processor::{Outcome, ReadingProcessor},
    rules::AlertEngine,
};

/// Notes of sensor states kept while their alerts wait, at most.
const MAX_NOTES: usize = 64;

/// What every lane of this member shares.
#[derive(Debug)]
pub struct LaneContext {
    /// The JetStream context of the member's connection.
    pub js: jetstream::Context,
    /// The checkpoints bucket.
    pub state: kv::Store,
    /// The readings stream.
    pub stream: String,
    /// Readings are on `<subject_prefix>...`.
    pub subject_prefix: String,
    /// Partitions P.
    pub partitions: u16,
    /// How often the lane notes and writes its progress.
    pub checkpoint_interval: Duration,
    /// How long a stopping lane waits for its outstanding alerts.
    pub handover_grace: Duration,
    /// Alerts a lane waits for at most before it stops reading.
    pub max_in_flight: usize,
    /// The member's processor; each lane gets one with its own sensor states.
    pub processor: ReadingProcessor,
}

/// Runs `lane` until `stop` fires or `lease` runs out.
pub async fn run(
    context: Arc<LaneContext>,
    lane: Lane,
    lease: Arc<Lease>,
    stop: CancellationToken,
) {
    let started = Instant::now();
    // Quits on the token or as soon as the lease is known lost.
    let quit = stop.child_token();
    let watchdog = {
        let (quit, lease) = (quit.clone(), lease.clone());
        tokio::spawn(async move {
            lease.lost().await;
            quit.cancel();
        })
    };
    let name = lane.to_string();
    let loaded = until_connected("lane checkpoint", &name, &quit, || {
        CheckpointStore::load(context.state.clone(), lane)
    })
    .await;
    let Some((store, checkpoint)) = loaded else {
        watchdog.abort();
        return;
    };
    tracing::info!(lane = %lane, from_seq = checkpoint.seq, sensors = checkpoint.sensors.len(), "lane starts from its checkpoint");
    let worker = Mutex::new(LaneWorker {
        lane,
        lease: lease.clone(),
        processor: context
            .processor
            .with_engine(AlertEngine::from_states(checkpoint.sensors)),
        store,
        last_seq: checkpoint.seq,
        written: checkpoint.seq,
        pending: VecDeque::new(),
        notes: VecDeque::new(),
        lag: metrics::gauge!(PARTITION_LAG, "lane" => name.clone()),
        handover_started: Some(started),
        lost: false,
    });
    let (context_ref, worker_ref, quit_ref) = (&context, &worker, &quit);
    keep_connected("lane consumer", &name, &quit, move || async move {
        worker_ref.lock().await.session(context_ref, quit_ref).await
    })
    .await;
    watchdog.abort();
    let worker = worker.into_inner();
    worker.lag.set(0.0);
    if worker.lost || !lease.is_valid() {
        tracing::warn!(lane = %lane, last_seq = worker.last_seq, checkpoint = worker.written, "lane stopped without a last checkpoint: its lease is gone");
        return;
    }
    worker.finish(context.handover_grace).await;
}

/// The state of a running lane.
struct LaneWorker {
    lane: Lane,
    lease: Arc<Lease>,
    processor: ReadingProcessor,
    store: CheckpointStore,
    /// The stream sequence of the last reading evaluated.
    last_seq: u64,
    /// The sequence of the last checkpoint written.
    written: u64,
    /// Readings whose alert's task is not confirmed yet, oldest first.
    pending: VecDeque<(u64, Delivered)>,
    /// Sensor states noted at some sequences, oldest first, waiting for the
    /// alerts before them to be confirmed.
    notes: VecDeque<Checkpoint>,
    lag: metrics::Gauge,
    /// Set until the lane's first consumer runs (the handover's end).
    handover_started: Option<Instant>,
    /// The lease was lost (or ran out) while running.
    lost: bool,
}

impl LaneWorker {
    /// One consumer's life: from the reading after `last_seq` until `quit`
    /// ([`Session::Finished`]) or the consumer fails ([`Session::Lost`]).
    async fn session(
        &mut self,
        context: &LaneContext,
        quit: &CancellationToken,
    ) -> Result<Session, async_nats::Error> {
        let stream = context.js.get_stream(&context.stream).await?;
        let consumer = stream
            .create_consumer(pull::OrderedConfig {
                filter_subject: self.lane.filter(&context.subject_prefix),
                deliver_policy: match self.last_seq {
                    0 => DeliverPolicy::All,
                    seq => DeliverPolicy::ByStartSequence {
                        start_sequence: seq + 1,
                    },
                },
                description: Some(format!("alert-subscriber lane {}", self.lane)),
                ..Default::default()
            })
            .await?;
        let mut messages = consumer.messages().await?;
        if let Some(started) = self.handover_started.take() {
            metrics::histogram!(PARTITION_HANDOVER, "side" => "acquire")
                .record(started.elapsed().as_secs_f64());
        }
        let mut checkpoints = tokio::time::interval(context.checkpoint_interval);
        checkpoints.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if self.pending.len() >= context.max_in_flight {
                // Full: wait for the oldest alert before reading more.
                tokio::select! {
                    biased;
                    () = quit.cancelled() => return Ok(Session::Finished),
                    _ = checkpoints.tick() => self.checkpoint().await,
                    _ = wait_front(&mut self.pending) => {}
                }
                continue;
            }
            let next = tokio::select! {
                biased;
                () = quit.cancelled() => return Ok(Session::Finished),
                _ = checkpoints.tick() => {
                    self.checkpoint().await;
                    continue;
                }
                next = messages.next() => next,
            };
            match next {
                Some(Ok(message)) => {
                    if !self.evaluate(message, context.partitions).await {
                        return Ok(Session::Finished);
                    }
                }
                Some(Err(error)) => return Ok(Session::Lost(error.to_string())),
                None => return Ok(Session::Lost("the lane's consumer ended".into())),
            }
            if self.lost {
                return Ok(Session::Finished);
            }
        }
    }

    /// Evaluates one reading; `false` when the lease no longer allows it.
    async fn evaluate(&mut self, message: jetstream::Message, partitions: u16) -> bool {
        let (seq, lag) = match message.info() {
            Ok(info) => (info.stream_sequence, info.pending),
            Err(error) => {
                tracing::warn!(lane = %self.lane, %error, subject = %message.subject, "message without stream metadata, skipped");
                return true;
            }
        };
        // A recreated consumer may start before what was evaluated.
        if seq <= self.last_seq {
            return true;
        }
        if !self.lease.is_valid() {
            self.lost = true;
            return false;
        }
        if let Some(expected) = sensor_token(&message.subject)
            .and_then(|sensor| self.lane.misrouted(sensor, partitions))
        {
            metrics::counter!(READINGS_MISROUTED).increment(1);
            tracing::warn!(lane = %self.lane, subject = %message.subject, expected_partition = expected, "reading in another partition than its hash: the server's mapping and `partitions` differ");
        }
        let outcome = self
            .processor
            .process(
                &message.subject,
                &message.payload,
                message.headers.as_ref(),
                true,
            )
            .await;
        if let Outcome::Alerted(Some(delivered)) = outcome {
            self.pending.push_back((seq, delivered));
        }
        self.last_seq = seq;
        self.lag.set(lag as f64);
        true
    }

    /// Notes the current states and writes the newest note whose alerts are
    /// all confirmed. A conflict means another owner: the lane stops.
    async fn checkpoint(&mut self) {
        while let Some((_, delivered)) = self.pending.front_mut() {
            if delivered.try_confirmed().is_none() {
                break;
            }
            self.pending.pop_front();
        }
        // With nothing outstanding the current states are the best note.
        if self.pending.is_empty() {
            self.notes.clear();
        }
        let noted = self.notes.back().map_or(self.written, |note| note.seq);
        if self.last_seq > noted && self.notes.len() < MAX_NOTES {
            self.notes.push_back(Checkpoint {
                seq: self.last_seq,
                sensors: self.processor.engine().states().clone(),
            });
        }
        // Everything before the oldest unconfirmed alert is accounted for.
        let safe = self
            .pending
            .front()
            .map_or(self.last_seq, |(seq, _)| seq - 1);
        let mut ready = None;
        while self.notes.front().is_some_and(|note| note.seq <= safe) {
            ready = self.notes.pop_front();
        }
        let Some(note) = ready else { return };
        if !self.lease.is_valid() {
            self.lost = true;
            return;
        }
        match self.store.save(&note).await {
            Ok(()) => self.written = note.seq,
            Err(CheckpointError::Conflict(lane)) => {
                tracing::warn!(lane = %lane, "lane checkpoint written by another owner, the lane stops");
                self.lost = true;
            }
            Err(error) => {
                tracing::warn!(lane = %self.lane, %error, "checkpoint not written, trying again");
                self.notes.push_front(note);
            }
        }
    }

    /// The last checkpoint of a stopping lane, after its outstanding alerts
    /// had `grace` to be confirmed.
    async fn finish(mut self, grace: Duration) {
        let deadline = tokio::time::Instant::now() + grace;
        while !self.pending.is_empty() {
            if tokio::time::timeout_at(deadline, wait_front(&mut self.pending))
                .await
                .is_err()
            {
                tracing::warn!(lane = %self.lane, outstanding = self.pending.len(), "alerts still unconfirmed at handover: the next owner raises them again");
                break;
            }
        }
        self.checkpoint().await;
        tracing::info!(lane = %self.lane, checkpoint = self.written, last_seq = self.last_seq, "lane stopped");
    }
}

/// Waits for the oldest outstanding alert and drops it from `pending`.
async fn wait_front(pending: &mut VecDeque<(u64, Delivered)>) {
    if let Some((_, delivered)) = pending.front_mut() {
        delivered.wait().await;
        pending.pop_front();
    }
}

/// The sensor token of a partitioned subject `<prefix>.<sensor_id>.<p>`.
fn sensor_token(subject: &str) -> Option<&str> {
    let (rest, _partition) = subject.rsplit_once('.')?;
    rest.rsplit('.').next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sensor_token_is_the_one_before_the_partition() {
        assert_eq!(sensor_token("sensor.data.temp-001.13"), Some("temp-001"));
        assert_eq!(sensor_token("sensor"), None);
    }
}
