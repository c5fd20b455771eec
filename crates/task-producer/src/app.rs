//! Wiring and lifecycle: the ops endpoint, the publisher, the job, the
//! summary.
//!
//! [`Application::build`] describes the metrics and binds the ops endpoint
//! (port 0 works). A one-off job still runs when another producer holds the
//! port: the endpoint only serves metrics while the job runs, so a busy
//! port is logged and skipped. [`Application::run_until_stopped`] then:
//!
//! 1. starts the [`TaskPublisher`], which connects (and reconnects) in the
//!    background and reports readiness on `/readyz`;
//! 2. publishes the job ([`job::publish`]); the shutdown signal stops
//!    creating tasks, and those already sent are still confirmed (or fail
//!    after their `publish_timeout`);
//! 3. closes the connection cleanly, stops the ops endpoint and returns the
//!    job's [`Summary`].

use std::net::SocketAddr;

use common::{
    ops::{OpsServer, Readiness},
    shutdown::Shutdown,
};
use workqueue::publisher::TaskPublisher;

use crate::{
    config::Config,
    job::{self, Summary},
};

/// The readiness check that follows the broker connection.
const RABBITMQ_CHECK: &str = "rabbitmq";

/// A producer with its ops endpoint up, not yet publishing.
#[derive(Debug)]
pub struct Application {
    /// The settings it was built with.
    config: Config,
    /// `/healthz`, `/readyz`, `/metrics`; `None` when the port was busy.
    ops: Option<OpsServer>,
    /// What `/readyz` reports.
    readiness: Readiness,
}

impl Application {
    /// Describes the metrics and starts the ops endpoint (skipped, with a
    /// warning, when its address cannot be bound).
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        common::metrics::describe(crate::metrics::ALL);
        config
            .publisher()
            .refuse_mismatched_queue("task-producer")
            .await?;
        let readiness = Readiness::new(&[RABBITMQ_CHECK]);
        let ops = match OpsServer::start(
            config.ops_addr,
            readiness.clone(),
            &config,
            axum::Router::new(),
        )
        .await
        {
            Ok(ops) => Some(ops),
            Err(error) => {
                tracing::warn!(addr = %config.ops_addr, %error, "cannot bind the ops address, running without it");
                None
            }
        };
        Ok(Application {
            config,
            ops,
            readiness,
        })
    }

    /// The ops address actually bound; `None` when it was busy.
    pub fn ops_addr(&self) -> Option<SocketAddr> {
        self.ops.as_ref().map(OpsServer::local_addr)
    }

    /// Publishes the job and returns its summary (see the module docs).
    pub async fn run_until_stopped(self, shutdown: Shutdown) -> anyhow::Result<Summary> {
        let Application {
            config,
            ops,
            readiness,
        } = self;
        let publisher = TaskPublisher::start(config.publisher(), shutdown.clone());
        let mut connected = publisher.connected();
        // Ends by itself once the publisher is closed (its sender is gone).
        let follow = tokio::spawn(async move {
            loop {
                readiness.set(RABBITMQ_CHECK, *connected.borrow_and_update());
                if connected.changed().await.is_err() {
                    readiness.set(RABBITMQ_CHECK, false);
                    return;
                }
            }
        });

        let summary = job::publish(&publisher, &config.job, &shutdown).await;
        // A clean close: the broker sees a goodbye, not a dropped socket.
        publisher.close().await;
        drop(publisher);
        let _ = follow.await;
        if let Some(ops) = ops {
            ops.stop().await;
        }
        summary
    }
}

/// Builds the producer, publishes the job and returns its summary.
pub async fn run(config: Config, shutdown: Shutdown) -> anyhow::Result<Summary> {
    Application::build(config)
        .await?
        .run_until_stopped(shutdown)
        .await
}
