//! Graceful shutdown: one signal fans out to every task, and `run` returns
//! only when the in-flight work has drained or a grace deadline has passed.
//!
//! [`Shutdown`] pairs a [`CancellationToken`] (the signal: consumers stop
//! taking new work) with a [`TaskTracker`] (the in-flight work). A service's
//! `run(config, shutdown)` selects on [`Shutdown::cancelled`], spawns each
//! piece of work with [`Shutdown::spawn`], and ends with [`Shutdown::drain`].
//! Tests trigger the same path with [`Shutdown::trigger`] instead of a signal.

use std::{future::Future, time::Duration};

use tokio::task::JoinHandle;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

/// The shutdown signal plus the work it waits for. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    token: CancellationToken,
    tracker: TaskTracker,
}

/// How a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drained {
    /// Every tracked task finished.
    Complete,
    /// The grace period ran out; this many tasks were still running.
    TimedOut(usize),
}

impl Shutdown {
    /// A shutdown that only fires when [`Shutdown::trigger`] is called.
    pub fn new() -> Self {
        Shutdown::default()
    }

    /// A shutdown that also fires on SIGTERM or Ctrl-C (SIGINT).
    ///
    /// The SIGTERM handler is installed before this returns, so a signal sent
    /// right after start is not lost. Must be called inside a tokio runtime.
    pub fn on_signals() -> Self {
        let shutdown = Shutdown::new();
        let token = shutdown.token.clone();
        let signal = shutdown_signal();
        tokio::spawn(async move {
            tokio::select! {
                () = signal => token.cancel(),
                () = token.cancelled() => {}
            }
        });
        shutdown
    }

    /// Fires the signal: every [`Shutdown::cancelled`] future completes.
    pub fn trigger(&self) {
        self.token.cancel();
    }

    /// `true` once the signal has fired.
    pub fn is_triggered(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Completes when the signal fires.
    pub async fn cancelled(&self) {
        self.token.cancelled().await;
    }

    /// The underlying token, for libraries that take one.
    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }

    /// A child signal: fires with this one, and can also be fired on its own
    /// (to stop one consumer without stopping the service).
    pub fn child(&self) -> Shutdown {
        Shutdown {
            token: self.token.child_token(),
            tracker: self.tracker.clone(),
        }
    }

    /// Spawns in-flight work that [`Shutdown::drain`] waits for.
    pub fn spawn<F>(&self, task: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tracker.spawn(task)
    }

    /// Tracks a future run in place (not spawned) as in-flight work.
    pub fn track<F: Future>(&self, future: F) -> impl Future<Output = F::Output> {
        self.tracker.track_future(future)
    }

    /// Tasks still running.
    pub fn in_flight(&self) -> usize {
        self.tracker.len()
    }

    /// Fires the signal if it has not fired, then waits for tracked work to
    /// finish, at most `grace`.
    pub async fn drain(&self, grace: Duration) -> Drained {
        self.token.cancel();
        self.tracker.close();
        match tokio::time::timeout(grace, self.tracker.wait()).await {
            Ok(()) => Drained::Complete,
            Err(_) => {
                let left = self.tracker.len();
                tracing::warn!(
                    left,
                    grace_ms = grace.as_millis() as u64,
                    "grace period over, abandoning in-flight work"
                );
                Drained::TimedOut(left)
            }
        }
    }
}

/// Completes on SIGTERM (what Kubernetes and `docker stop` send) or Ctrl-C.
///
/// The SIGTERM handler is registered when this is called, not when the
/// returned future is first polled.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    let terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .inspect_err(|error| tracing::error!(%error, "cannot listen for sigterm"))
        .ok();
    async move {
        let ctrl_c = async {
            if let Err(error) = tokio::signal::ctrl_c().await {
                tracing::error!(%error, "cannot listen for ctrl-c");
                std::future::pending::<()>().await;
            }
        };
        #[cfg(unix)]
        let terminate = async move {
            match terminate {
                Some(mut signal) => {
                    signal.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let terminate = std::future::pending::<()>();

        tokio::select! {
            () = ctrl_c => tracing::info!("ctrl-c received, shutting down"),
            () = terminate => tracing::info!("sigterm received, shutting down"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    };

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn drain_waits_for_in_flight_work() {
        let shutdown = Shutdown::new();
        let finished = Arc::new(AtomicBool::new(false));
        let flag = finished.clone();
        shutdown.spawn(async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            flag.store(true, Ordering::SeqCst);
        });
        assert_eq!(
            shutdown.drain(Duration::from_secs(5)).await,
            Drained::Complete
        );
        assert!(finished.load(Ordering::SeqCst));
        assert!(shutdown.is_triggered());
    }

    #[tokio::test(start_paused = true)]
    async fn drain_gives_up_after_the_grace_period() {
        let shutdown = Shutdown::new();
        shutdown.spawn(tokio::time::sleep(Duration::from_secs(60)));
        let started = tokio::time::Instant::now();
        assert_eq!(
            shutdown.drain(Duration::from_secs(3)).await,
            Drained::TimedOut(1)
        );
        assert_eq!(started.elapsed(), Duration::from_secs(3));
    }

    #[tokio::test]
    async fn the_signal_reaches_every_clone_and_child() {
        let shutdown = Shutdown::new();
        let clone = shutdown.clone();
        let child = shutdown.child();
        let waiter = tokio::spawn(async move {
            clone.cancelled().await;
            child.cancelled().await;
        });
        shutdown.trigger();
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn a_child_can_stop_alone() {
        let shutdown = Shutdown::new();
        let child = shutdown.child();
        child.trigger();
        assert!(child.is_triggered());
        assert!(!shutdown.is_triggered());
    }

    #[tokio::test]
    async fn sigterm_fires_the_signal() {
        let shutdown = Shutdown::on_signals();
        let status = std::process::Command::new("kill")
            .args(["-TERM", &std::process::id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        tokio::time::timeout(Duration::from_secs(5), shutdown.cancelled())
            .await
            .expect("sigterm should trigger shutdown");
    }
}
