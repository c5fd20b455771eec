//! Graceful shutdown, the one way every service stops: signal → cancel →
//! drain within a grace period → abort what is left.
//!
//! [`Shutdown`] pairs a [`CancellationToken`] (the signal: consumers stop
//! taking new work) with a [`TaskTracker`] (the in-flight work). A service's
//! `run_until_stopped(shutdown)` selects on [`Shutdown::cancelled`], spawns
//! each piece of in-flight work with [`Shutdown::spawn`], and ends with
//! [`Shutdown::drain`], which waits for that work at most the grace period
//! and then aborts it (an unacked message is redelivered to another
//! instance; an unfinished publish is retried by the caller's caller).
//!
//! A [`Shutdown::scope`] is a group of tasks with its own tracker that also
//! stops with the service: the consumers of one connection, drained on
//! shutdown but [aborted](Shutdown::abort) when that connection is lost.
//! Tests trigger the same path with [`Shutdown::trigger`] instead of a signal.

use std::{
    future::Future,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::task::{AbortHandle, JoinHandle};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

/// The shutdown signal plus the work it waits for. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    token: CancellationToken,
    tracker: TaskTracker,
    /// Handles of the spawned tasks, to abort what outlives the grace period.
    spawned: Arc<Mutex<Vec<AbortHandle>>>,
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
            spawned: self.spawned.clone(),
        }
    }

    /// A group of tasks of its own: its signal fires with this one (or
    /// alone), and its [`Shutdown::drain`] and [`Shutdown::abort`] concern
    /// only the tasks spawned through it.
    pub fn scope(&self) -> Shutdown {
        Shutdown {
            token: self.token.child_token(),
            tracker: TaskTracker::new(),
            spawned: Arc::default(),
        }
    }

    /// Spawns in-flight work that [`Shutdown::drain`] waits for.
    pub fn spawn<F>(&self, task: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let handle = self.tracker.spawn(task);
        let mut spawned = self.lock_spawned();
        spawned.retain(|task| !task.is_finished());
        spawned.push(handle.abort_handle());
        handle
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
    /// finish, at most `grace`; what is still running then is aborted.
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
                self.abort();
                Drained::TimedOut(left)
            }
        }
    }

    /// Fires the signal and aborts every spawned task at once, without a
    /// grace period (their connection is gone: nothing they do can be acked).
    pub fn abort(&self) {
        self.token.cancel();
        for task in self.lock_spawned().drain(..) {
            task.abort();
        }
    }

    fn lock_spawned(&self) -> std::sync::MutexGuard<'_, Vec<AbortHandle>> {
        self.spawned
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
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

    #[tokio::test(start_paused = true)]
    async fn work_left_after_the_grace_period_is_aborted() {
        let shutdown = Shutdown::new();
        let finished = Arc::new(AtomicBool::new(false));
        let flag = finished.clone();
        let handle = shutdown.spawn(async move {
            tokio::time::sleep(Duration::from_secs(60)).await;
            flag.store(true, Ordering::SeqCst);
        });
        shutdown.drain(Duration::from_secs(1)).await;
        assert!(handle.await.unwrap_err().is_cancelled());
        assert!(!finished.load(Ordering::SeqCst));
    }

    #[tokio::test(start_paused = true)]
    async fn a_scope_drains_and_aborts_only_its_own_tasks() {
        let service = Shutdown::new();
        let outside = service.spawn(tokio::time::sleep(Duration::from_secs(30)));
        let scope = service.scope();
        let inside = scope.spawn(tokio::time::sleep(Duration::from_secs(30)));
        scope.abort();
        assert!(inside.await.unwrap_err().is_cancelled());
        assert!(!service.is_triggered(), "the service keeps running");
        assert!(!outside.is_finished());

        let next = service.scope();
        let waiter = next.clone();
        let stopped_with_the_service = tokio::spawn(async move { waiter.cancelled().await });
        service.trigger();
        tokio::time::timeout(Duration::from_secs(1), stopped_with_the_service)
            .await
            .expect("a scope stops with its service")
            .unwrap();
        assert_eq!(
            service.drain(Duration::from_secs(60)).await,
            Drained::Complete
        );
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
