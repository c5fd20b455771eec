//! The worker: built once (ops endpoint bound, handlers registered), then run
//! until stopped, reconnecting after every lost connection.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use axum::{Json, Router, extract::State, routing::get};
use common::{
    circuit_breaker::CircuitBreaker,
    codec::Codec,
    ops::{OpsServer, Readiness},
    retry::RetryPolicy,
    shutdown::Shutdown,
};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::{
    Config,
    consumer::End,
    contacts::{Contact, ContactDirectory},
    events::TaskEvent,
    finished::FinishedTasks,
    handler::{Handlers, SleepHandler, TaskHandler},
    processing::{TaskContext, TaskMetrics},
    session,
    shared_finished::SharedFinished,
};

/// Buffered events per subscriber before the oldest are dropped.
const EVENT_BUFFER: usize = 4096;

/// What every session and consumer of one worker shares.
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

/// A task worker, ready to run.
#[derive(Debug)]
pub struct Worker {
    /// The worker's configuration.
    config: Config,
    /// Handlers by task kind (built-in ones plus [`Worker::with_handler`]).
    handlers: Handlers,
    /// The user-service breaker the consumers pause on.
    breaker: Option<Arc<CircuitBreaker>>,
    /// The contact directory fed by `data_sync`.
    contacts: ContactDirectory,
    /// Recently finished task ids.
    finished: FinishedTasks,
    /// The pool's finished task ids (Redis), when configured.
    shared_finished: SharedFinished,
    /// Outcome announcements.
    events: broadcast::Sender<TaskEvent>,
    /// `/readyz` checks.
    readiness: Readiness,
    /// The running ops endpoint.
    ops: OpsServer,
    /// Stops the ops endpoint when the worker returns.
    ops_stop: CancellationToken,
}

impl Worker {
    /// Binds the ops endpoint (port 0 picks one) and registers the built-in
    /// handlers: `sleep`, and `notify` with a user-service client (connected
    /// lazily: a user-service that is down does not stop the worker).
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let contacts = ContactDirectory::new();
        let mut handlers = Handlers::default();
        handlers.insert(
            SleepHandler::KIND,
            Arc::new(SleepHandler {
                max: config.max_sleep,
            }),
        );
        let breaker = crate::notify::register(&config, &contacts, &mut handlers)?;

        let readiness = Readiness::new(&["rabbitmq"]);
        let ops_stop = CancellationToken::new();
        let routes = Router::new()
            .route("/contacts", get(list_contacts))
            .with_state(contacts.clone());
        let ops = OpsServer::start(config.ops_addr, readiness.clone(), routes, ops_stop.clone())
            .await
            .with_context(|| format!("cannot bind the ops address {}", config.ops_addr))?;
        let shared_finished = match &config.redis_url {
            Some(url) => {
                SharedFinished::redis(url, &config.finished_key_prefix, config.finished_ttl)
                    .with_context(|| format!("invalid redis_url {url}"))?
            }
            None => SharedFinished::disabled(),
        };
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        Ok(Worker {
            finished: FinishedTasks::new(config.finished_capacity),
            shared_finished,
            config,
            handlers,
            breaker,
            contacts,
            events,
            readiness,
            ops,
            ops_stop,
        })
    }

    /// Registers (or replaces) the handler of `kind`.
    pub fn with_handler(mut self, kind: impl Into<String>, handler: Arc<dyn TaskHandler>) -> Self {
        self.handlers.insert(kind, handler);
        self
    }

    /// The ops endpoint's address (`/healthz`, `/readyz`, `/metrics`, `/contacts`).
    pub fn ops_addr(&self) -> SocketAddr {
        self.ops.local_addr()
    }

    /// Follows what happens to each task from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<TaskEvent> {
        self.events.subscribe()
    }

    /// The contact directory fed by `data_sync`.
    pub fn contacts(&self) -> ContactDirectory {
        self.contacts.clone()
    }

    /// The user-service circuit breaker the worker pauses on, if `notify` is on.
    pub fn breaker(&self) -> Option<Arc<CircuitBreaker>> {
        self.breaker.clone()
    }

    /// Consumes until `shutdown` fires, then drains within the grace period.
    pub async fn run_until_stopped(self, shutdown: Shutdown) -> anyhow::Result<()> {
        let topology = self.config.topology();
        let shared = Arc::new(Shared {
            context: Arc::new(TaskContext {
                metrics: TaskMetrics::new(topology.task_queue(), &self.handlers),
                topology,
                max_attempts: self.config.max_attempts,
                handlers: self.handlers,
                finished: self.finished,
                shared_finished: self.shared_finished,
                events: self.events,
                codec: Codec::default(),
            }),
            contacts: self.contacts,
            breaker: self.breaker,
            readiness: self.readiness,
            worker_id: format!(
                "task-worker-{}",
                &uuid::Uuid::new_v4().simple().to_string()[..8]
            ),
            config: self.config,
        });

        let mut delays = RetryPolicy::reconnect().backoff();
        loop {
            match session::run(&shared, &shutdown).await {
                Ok(End::Stopped) => break,
                Ok(End::Lost(_)) => {
                    // The session logged why; connect again at once, with
                    // backoff only if that fails.
                    delays = RetryPolicy::reconnect().backoff();
                }
                Err(error) => {
                    let delay = delays.next().unwrap_or(Duration::from_secs(10));
                    warn!(
                        url = %shared.config.amqp_url,
                        error = %error,
                        delay_ms = delay.as_millis() as u64,
                        "cannot connect the task worker, retrying"
                    );
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        self.ops_stop.cancel();
        if let Err(error) = self.ops.stopped().await {
            warn!(error = %error, "ops server stopped with an error");
        }
        Ok(())
    }
}

async fn list_contacts(State(contacts): State<ContactDirectory>) -> Json<Vec<Contact>> {
    Json(contacts.list())
}
