//! One reconnect loop for every long-lived connection (NATS pull consumers,
//! AMQP sessions and publishers, the database, PostgreSQL `LISTEN`).
//!
//! A service describes one *session*: connect, set up, work until the
//! connection is lost or the service stops. [`keep_connected`] runs sessions
//! one after another with the same rules everywhere:
//!
//! - a session that could not be set up (`Err`) is retried after a
//!   [`RetryPolicy::reconnect`] delay (full jitter, 250 ms doubling to 10 s),
//!   logged at warn with what it tried to reach (`peer`: the field is not
//!   called `target`, which JSON logs already use for the module) and why it
//!   failed;
//! - a session that ran and then lost its connection ([`Session::Lost`])
//!   resets the backoff: the next attempt comes after the first, short delay,
//!   so a broker restart is followed at once, but a connection that drops as
//!   soon as it is made cannot spin;
//! - [`Session::Finished`] (the session saw the stop signal and wound down)
//!   or the stop signal during a delay ends the loop.
//!
//! The session itself watches the stop signal: only it knows how to drain
//! (finish and ack in-flight work) before it returns, so the loop never
//! cancels a running session. [`until_connected`] is the same loop for a
//! connection that is made once (a database pool at start).

use std::{fmt, future::Future};

use tokio_util::sync::CancellationToken;

use crate::retry::{FullJitterBackoff, RetryPolicy};

/// How one session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Session {
    /// The stop signal fired (or the work is done) and the session wound
    /// down: do not reconnect.
    Finished,
    /// The connection was up and then lost (the reason is for the log):
    /// reconnect.
    Lost(String),
}

/// The delays between attempts: reset after every session that ran.
#[derive(Debug)]
struct Delays {
    policy: RetryPolicy,
    backoff: FullJitterBackoff,
}

impl Delays {
    fn new() -> Self {
        let policy = RetryPolicy::reconnect();
        Delays {
            backoff: policy.backoff(),
            policy,
        }
    }

    fn reset(&mut self) {
        self.backoff = self.policy.backoff();
    }

    /// Logs an attempt that could not connect; the delay before the next one.
    fn after_failure(
        &mut self,
        what: &str,
        target: &(dyn fmt::Display + Sync),
        error: &dyn fmt::Display,
    ) -> std::time::Duration {
        let delay = self.next();
        tracing::warn!(
            what,
            peer = %target,
            %error,
            delay_ms = delay.as_millis() as u64,
            "cannot connect, retrying"
        );
        delay
    }

    /// The next delay; the policy's longest once the backoff gives up (it
    /// never does for `reconnect`, but the fallback is the same everywhere).
    fn next(&mut self) -> std::time::Duration {
        self.backoff.next().unwrap_or(self.policy.max_delay)
    }
}

/// Waits `delay`; `false` when `stop` fired first.
async fn pause(stop: &CancellationToken, delay: std::time::Duration) -> bool {
    tokio::select! {
        () = stop.cancelled() => false,
        () = tokio::time::sleep(delay) => true,
    }
}

/// Runs `session` again and again until it returns [`Session::Finished`] or
/// `stop` fires while waiting to reconnect.
///
/// `target` names what is being reached (a redacted URL or a queue name) for
/// the log lines; `what` says who is connecting (`"outbox relay"`).
pub async fn keep_connected<S, F, E>(
    what: &str,
    target: &(dyn fmt::Display + Sync),
    stop: &CancellationToken,
    mut session: S,
) where
    S: FnMut() -> F,
    F: Future<Output = Result<Session, E>>,
    E: fmt::Display,
{
    let mut delays = Delays::new();
    loop {
        if stop.is_cancelled() {
            return;
        }
        let delay = match session().await {
            Ok(Session::Finished) => return,
            Ok(Session::Lost(reason)) => {
                delays.reset();
                let delay = delays.next();
                tracing::warn!(
                    what,
                    peer = %target,
                    reason,
                    delay_ms = delay.as_millis() as u64,
                    "connection lost, reconnecting"
                );
                delay
            }
            Err(error) => delays.after_failure(what, target, &error),
        };
        if !pause(stop, delay).await {
            return;
        }
    }
}

/// Calls `connect` until it succeeds, with the same delays and log lines as
/// [`keep_connected`]; `None` when `stop` fires first.
pub async fn until_connected<T, C, F, E>(
    what: &str,
    target: &(dyn fmt::Display + Sync),
    stop: &CancellationToken,
    mut connect: C,
) -> Option<T>
where
    C: FnMut() -> F,
    F: Future<Output = Result<T, E>>,
    E: fmt::Display,
{
    let mut delays = Delays::new();
    loop {
        let attempt = tokio::select! {
            () = stop.cancelled() => return None,
            attempt = connect() => attempt,
        };
        match attempt {
            Ok(connected) => return Some(connected),
            Err(error) => {
                if !pause(stop, delays.after_failure(what, target, &error)).await {
                    return None;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::{
            Arc,
            atomic::{AtomicU32, Ordering},
        },
        time::Duration,
    };

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn failed_attempts_back_off_and_a_finished_session_ends_the_loop() {
        let attempts = Arc::new(AtomicU32::new(0));
        let counted = attempts.clone();
        let started = tokio::time::Instant::now();
        keep_connected("test", &"nowhere", &CancellationToken::new(), || {
            let attempt = counted.fetch_add(1, Ordering::SeqCst);
            async move {
                match attempt {
                    0..=3 => Err("refused"),
                    _ => Ok(Session::Finished),
                }
            }
        })
        .await;
        assert_eq!(attempts.load(Ordering::SeqCst), 5);
        // Four delays, each at most 250 ms · 2^n: never more than 3.75 s.
        assert!(started.elapsed() <= Duration::from_millis(3_750));
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_session_reconnects_with_a_fresh_backoff() {
        let attempts = Arc::new(AtomicU32::new(0));
        let counted = attempts.clone();
        keep_connected("test", &"broker", &CancellationToken::new(), || {
            let attempt = counted.fetch_add(1, Ordering::SeqCst);
            async move {
                match attempt {
                    0..=5 => Ok::<_, &str>(Session::Lost("closed".into())),
                    _ => Ok(Session::Finished),
                }
            }
        })
        .await;
        assert_eq!(attempts.load(Ordering::SeqCst), 7);
    }

    #[tokio::test(start_paused = true)]
    async fn the_stop_signal_ends_the_wait_between_attempts() {
        let stop = CancellationToken::new();
        let attempts = Arc::new(AtomicU32::new(0));
        let counted = attempts.clone();
        let looping = tokio::spawn({
            let stop = stop.clone();
            async move {
                keep_connected("test", &"down", &stop, || {
                    counted.fetch_add(1, Ordering::SeqCst);
                    async { Err::<Session, _>("refused") }
                })
                .await;
            }
        });
        tokio::time::sleep(Duration::from_secs(60)).await;
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(1), looping)
            .await
            .expect("the loop ends on stop")
            .unwrap();
        let tried = attempts.load(Ordering::SeqCst);
        assert!(
            tried >= 6,
            "kept retrying while the target was down ({tried})"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn until_connected_returns_the_connection_or_none_on_stop() {
        let attempts = Arc::new(AtomicU32::new(0));
        let counted = attempts.clone();
        let connected = until_connected("test", &"db", &CancellationToken::new(), || {
            let attempt = counted.fetch_add(1, Ordering::SeqCst);
            async move {
                if attempt < 2 {
                    Err("down")
                } else {
                    Ok(attempt)
                }
            }
        })
        .await;
        assert_eq!(connected, Some(2));

        let stop = CancellationToken::new();
        stop.cancel();
        let never = until_connected("test", &"db", &stop, || async { Err::<(), _>("down") }).await;
        assert_eq!(never, None);
    }
}
