//! The PubAcks a JetStream publisher still awaits, driven by the publishing
//! task itself.
//!
//! Every reading sent to the stream becomes one [`Confirmation`]: a small
//! future, not boxed by us, that awaits the reading's PubAck and, after a
//! failed or timed-out publish, sleeps its backoff and sends the same message
//! (same `Nats-Msg-Id`) again. They sit in one `FuturesUnordered` owned by
//! the publisher, which polls it itself: before a send when the window is
//! full or while a send waits ([`PubAcks::send`]), during the pacing waits
//! between readings ([`PubAcks::settle_while`]) and at shutdown
//! ([`PubAcks::settle_all`]). No second task, no channel and no box of ours
//! per reading.
//!
//! The window is the JetStream context's: `ack_window` PubAcks awaited at
//! once, each holding one of its permits; a reading waiting out its backoff
//! holds none, so an outage does not stop the publisher for longer than a
//! PubAck timeout. Like a plain JetStream publisher, a send settles only
//! what frees a slot, polling the confirmations in the order they were sent:
//! by then those PubAcks are mostly in, so their first poll completes them
//! without arming their timeouts (polling a fresh PubAck would arm one per
//! reading).

use std::{
    future::{Future, IntoFuture as _, poll_fn},
    pin::{Pin, pin},
    sync::{Arc, atomic::Ordering},
    task::{Context, Poll, ready},
    time::Duration,
};

use async_nats::{
    HeaderValue,
    jetstream::{
        self,
        context::{PublishAckFuture, PublishError, PublishErrorKind},
        message::PublishMessage,
        publish::PublishAck,
    },
};
use common::retry::{FullJitterBackoff, RetryPolicy};
use futures::{Stream as _, stream::FuturesUnordered};
use metrics::Counter;

use super::{OutgoingReading, PublishCounts, unsent};
use crate::metrics::{JETSTREAM_PUBLISH_DUPLICATES, JETSTREAM_PUBLISH_RETRIES};

/// The wait for one PubAck as async-nats hands it out (boxed by async-nats,
/// the PubAck timeout inside).
type AckWait = <PublishAckFuture as IntoFuture>::IntoFuture;

/// A backoff sleep and the send after it; boxed, as it is the rare path.
type Resend = Pin<Box<dyn Future<Output = Result<PublishAckFuture, PublishError>> + Send>>;

/// A JetStream context and the readings sent through it that are not yet
/// acknowledged or given up on.
#[derive(Debug)]
pub(super) struct PubAcks {
    /// Cloned (a reference count) only for a resend.
    context: Arc<jetstream::Context>,
    /// PubAcks awaited at once at most (`ack_window`).
    window: usize,
    pending: Pending,
}

/// The confirmations and what settling one updates.
#[derive(Debug)]
struct Pending {
    waiting: FuturesUnordered<Confirmation>,
    /// The confirmations in `waiting` whose backoff or resend runs: they
    /// hold no permit of the window.
    resending: usize,
    counts: Arc<PublishCounts>,
    published_metric: Counter,
    /// The `Content-Type` of a resent reading (the same for every reading).
    content_type: HeaderValue,
    /// The resends' backoff: 100 ms doubling to 2 s, full jitter, at most
    /// `max_publish_attempts` sends in all.
    policy: RetryPolicy,
}

impl PubAcks {
    /// Publishes through `context` with at most `window` PubAcks awaited at
    /// once; a reading is sent at most `max_attempts` times.
    pub(super) fn new(
        context: jetstream::Context,
        window: usize,
        counts: Arc<PublishCounts>,
        published_metric: Counter,
        content_type: HeaderValue,
        max_attempts: u32,
    ) -> Self {
        PubAcks {
            context: Arc::new(context),
            window: window.max(1),
            pending: Pending {
                waiting: FuturesUnordered::new(),
                resending: 0,
                counts,
                published_metric,
                content_type,
                policy: RetryPolicy {
                    base_delay: Duration::from_millis(100),
                    max_delay: Duration::from_secs(2),
                    max_attempts,
                    max_elapsed: None,
                },
            },
        }
    }

    /// Sends `message` (the reading's first send: these go out in reading
    /// order, only resends may reach the stream out of order) and keeps the
    /// reading until its PubAck; with the window full, settles PubAcks
    /// until a slot is free first.
    pub(super) async fn send(&mut self, reading: OutgoingReading, message: PublishMessage) {
        let PubAcks {
            context,
            window,
            pending,
        } = self;
        if pending.awaiting_pubacks() >= *window {
            poll_fn(|cx| pending.poll_settle_below(*window, context, cx)).await;
        }
        // A permit of the context's window is free now (each PubAck awaited
        // holds one), so this usually completes at once. If it waits (the
        // client's buffer is full, or a resend took the permit), PubAcks go
        // on being settled meanwhile: they free the permits.
        let mut send = pin!(context.send_publish(reading.subject.clone(), message));
        let sent = poll_fn(|cx| {
            if let Poll::Ready(sent) = send.as_mut().poll(cx) {
                return Poll::Ready(sent);
            }
            let _ = pending.poll_settle(context, cx);
            Poll::Pending
        })
        .await;
        match sent {
            Ok(ack) => pending.waiting.push(Confirmation {
                reading: Some(reading),
                backoff: None,
                stage: Stage::Acking(ack.into_future()),
            }),
            Err(error) => pending.resend_or_give_up(context, reading, None, error),
        }
    }

    /// Runs `work` (the wait for the next reading) while settling PubAcks.
    pub(super) async fn settle_while<F: Future>(&mut self, work: F) -> F::Output {
        let PubAcks {
            context, pending, ..
        } = self;
        let mut work = pin!(work);
        poll_fn(|cx| {
            if let Poll::Ready(output) = work.as_mut().poll(cx) {
                return Poll::Ready(output);
            }
            let _ = pending.poll_settle(context, cx);
            Poll::Pending
        })
        .await
    }

    /// Settles every reading: acknowledged, or given up on after its last
    /// resend. The caller bounds it (the shutdown grace).
    pub(super) async fn settle_all(&mut self) {
        let PubAcks {
            context, pending, ..
        } = self;
        poll_fn(|cx| pending.poll_settle(context, cx)).await;
    }

    /// Gives up on every reading still unconfirmed; returns how many.
    pub(super) fn abandon(&mut self) -> usize {
        let left = self.pending.waiting.len();
        self.pending.waiting.clear();
        self.pending.resending = 0;
        left
    }
}

impl Pending {
    /// The PubAcks awaited: the permits of the window in use.
    fn awaiting_pubacks(&self) -> usize {
        self.waiting.len() - self.resending
    }

    /// Settles confirmations (the set polls them in the order they were
    /// sent or woken) until fewer than `window` PubAcks are awaited.
    fn poll_settle_below(
        &mut self,
        window: usize,
        context: &Arc<jetstream::Context>,
        cx: &mut Context<'_>,
    ) -> Poll<()> {
        while self.awaiting_pubacks() >= window {
            match ready!(Pin::new(&mut self.waiting).poll_next(cx)) {
                Some(confirmed) => self.settle(context, confirmed),
                None => break,
            }
        }
        Poll::Ready(())
    }

    /// Settles every confirmation that is done; ready once none is left.
    fn poll_settle(&mut self, context: &Arc<jetstream::Context>, cx: &mut Context<'_>) -> Poll<()> {
        while let Some(confirmed) = ready!(Pin::new(&mut self.waiting).poll_next(cx)) {
            self.settle(context, confirmed);
        }
        Poll::Ready(())
    }

    fn settle(&mut self, context: &Arc<jetstream::Context>, confirmed: Confirmed) {
        let Confirmed {
            reading,
            backoff,
            outcome,
        } = confirmed;
        match outcome {
            Outcome::Acked(Ok(ack)) => {
                if ack.duplicate {
                    self.counts.duplicates.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!(JETSTREAM_PUBLISH_DUPLICATES).increment(1);
                }
                self.counts.published.fetch_add(1, Ordering::Relaxed);
                self.published_metric.increment(1);
            }
            Outcome::Resent(Ok(ack)) => {
                self.resending -= 1;
                self.waiting.push(Confirmation {
                    reading: Some(reading),
                    backoff,
                    stage: Stage::Acking(ack.into_future()),
                });
            }
            Outcome::Resent(Err(error)) => {
                self.resending -= 1;
                self.resend_or_give_up(context, reading, backoff, error);
            }
            Outcome::Acked(Err(error)) => self.resend_or_give_up(context, reading, backoff, error),
        }
    }

    /// After a failed send or PubAck: the same message again after the next
    /// backoff delay, or, with no attempt left (or a message the server
    /// will never take), the reading counted as unsent.
    fn resend_or_give_up(
        &mut self,
        context: &Arc<jetstream::Context>,
        reading: OutgoingReading,
        backoff: Option<FullJitterBackoff>,
        error: PublishError,
    ) {
        let retryable = !matches!(error.kind(), PublishErrorKind::MaxPayloadExceeded);
        let mut backoff = backoff.unwrap_or_else(|| self.policy.backoff());
        // The logs are the resent reading's, not the span of whichever
        // reading is being published while this one is settled.
        match backoff.next().filter(|_| retryable) {
            Some(delay) => {
                tracing::warn!(
                    parent: None,
                    %error,
                    subject = %reading.subject,
                    message_id = %reading.message_id,
                    delay_ms = delay.as_millis() as u64,
                    "publish not acknowledged, sending again"
                );
                self.counts.retried.fetch_add(1, Ordering::Relaxed);
                metrics::counter!(JETSTREAM_PUBLISH_RETRIES).increment(1);
                let context = context.clone();
                let subject = reading.subject.clone();
                let message = reading.build(&self.content_type);
                let resend: Resend = Box::pin(async move {
                    tokio::time::sleep(delay).await;
                    context.send_publish(subject, message).await
                });
                self.resending += 1;
                self.waiting.push(Confirmation {
                    reading: Some(reading),
                    backoff: Some(backoff),
                    stage: Stage::Resending(resend),
                });
            }
            None => {
                tracing::error!(
                    parent: None,
                    %error,
                    subject = %reading.subject,
                    message_id = %reading.message_id,
                    "reading not stored, giving up"
                );
                unsent(&self.counts, "retries_exhausted");
            }
        }
    }
}

/// One reading on its way into the stream: its PubAck awaited, or its
/// resend due.
struct Confirmation {
    /// Kept to send it again; taken when the confirmation completes.
    reading: Option<OutgoingReading>,
    /// The delays left, from the first failure on.
    backoff: Option<FullJitterBackoff>,
    stage: Stage,
}

enum Stage {
    /// Sent; the PubAck is awaited.
    Acking(AckWait),
    /// Failed; the backoff runs, then the message is sent again.
    Resending(Resend),
}

/// A completed [`Confirmation`] with its reading.
struct Confirmed {
    reading: OutgoingReading,
    backoff: Option<FullJitterBackoff>,
    outcome: Outcome,
}

/// How a stage ended.
enum Outcome {
    /// The PubAck, or why there is none.
    Acked(Result<PublishAck, PublishError>),
    /// The resend went out (its PubAck is to be awaited), or failed.
    Resent(Result<PublishAckFuture, PublishError>),
}

impl Future for Confirmation {
    type Output = Confirmed;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Confirmed> {
        let this = self.get_mut();
        // A resend sent ends the confirmation too, so that the publisher
        // counts it among the PubAcks awaited again.
        let outcome = match &mut this.stage {
            Stage::Acking(ack) => Outcome::Acked(ready!(ack.as_mut().poll(cx))),
            Stage::Resending(resend) => Outcome::Resent(ready!(resend.as_mut().poll(cx))),
        };
        Poll::Ready(Confirmed {
            reading: this
                .reading
                .take()
                .expect("a confirmation is not polled after it completed"),
            backoff: this.backoff.take(),
            outcome,
        })
    }
}
