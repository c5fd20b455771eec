//! The worker as an application: built once (ops endpoint bound, handlers
//! registered), then run until stopped, one session (a connection and its
//! consumers) after another.
//!
//! [`Application::build`] → [`Application::ops_addr`] →
//! [`Application::run_until_stopped`] lets tests bind port 0 and embed the
//! worker; [`run`] is what the binary calls.

use std::{net::SocketAddr, sync::Arc};

use anyhow::Context as _;
use common::{
    circuit_breaker::CircuitBreaker,
    codec::Codec,
    ops::{OpsServer, Readiness},
    reconnect::keep_connected,
    shutdown::Shutdown,
};
use tokio::sync::broadcast;
use workqueue::preflight::{Declaration, refuse_mismatched_queues};

use crate::{
    Config,
    contacts::{self, ContactDirectory},
    events::TaskEvent,
    finished::FinishedTasks,
    handler::{Handlers, SleepHandler, TaskHandler},
    hash::HashHandler,
    metrics,
    processing::{TaskContext, TaskMetrics},
    session::{self, Shared},
    shared_finished::SharedFinished,
};

/// Buffered events per subscriber before the oldest are dropped.
const EVENT_BUFFER: usize = 4096;

/// A task worker, ready to run.
#[derive(Debug)]
pub struct Application {
    /// The worker's configuration.
    config: Config,
    /// Handlers by task kind (built-in ones plus [`Application::with_handler`]).
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
    /// The running ops endpoint, stopped last, when the worker returns.
    ops: OpsServer,
}

impl Application {
    /// Binds the ops endpoint (port 0 picks one) and registers the built-in
    /// handlers: `sleep`, `hash`, and `notify` with a user-service client
    /// (connected lazily: a user-service that is down does not stop the
    /// worker).
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        common::metrics::describe(metrics::ALL);
        refuse_mismatched_queues(
            &config.amqp_url,
            &config.amqp_tls,
            "task-worker",
            &[
                Declaration::Topology(&config.topology()),
                Declaration::DataSync {
                    queue: &config.data_sync_queue,
                    queue_type: config.queue_type,
                },
            ],
        )
        .await?;
        let contacts = ContactDirectory::new();
        let mut handlers = Handlers::default();
        handlers.insert(
            SleepHandler::KIND,
            Arc::new(SleepHandler {
                max: config.max_sleep,
            }),
        );
        handlers.insert(HashHandler::KIND, Arc::new(HashHandler));
        let breaker = crate::notify::register(&config, &contacts, &mut handlers)?;

        let readiness = Readiness::new(&["rabbitmq"]);
        let ops = OpsServer::start(
            config.ops_addr,
            readiness.clone(),
            &config,
            contacts::routes(contacts.clone()),
        )
        .await?;
        let shared_finished = match &config.redis_url {
            Some(url) => {
                SharedFinished::redis(url, &config.finished_key_prefix, config.finished_ttl)
                    .with_context(|| format!("invalid redis_url {url}"))?
            }
            None => SharedFinished::disabled(),
        };
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        Ok(Application {
            finished: FinishedTasks::new(config.finished_capacity),
            shared_finished,
            config,
            handlers,
            breaker,
            contacts,
            events,
            readiness,
            ops,
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

    /// Consumes until `shutdown` fires, reconnecting after every lost
    /// connection; on shutdown the session drains within the grace period.
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
                codec: Codec::new(self.config.max_message_bytes),
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

        // Each session watches the signal itself and drains before it
        // returns; the loop only decides when to connect again.
        keep_connected(
            "task worker",
            &shared.config.amqp_url,
            &shutdown.token(),
            || session::run(&shared, &shutdown),
        )
        .await;
        self.ops.stop().await;
        Ok(())
    }
}

/// Builds the worker and runs it until `shutdown` fires.
pub async fn run(config: Config, shutdown: Shutdown) -> anyhow::Result<()> {
    Application::build(config)
        .await?
        .run_until_stopped(shutdown)
        .await
}
