//! Wiring and lifecycle: bind, serve, connect the database, drain, stop.
//!
//! [`Application::build`] binds every listener (port 0 works: tests ask the
//! application which port it got) and starts the ops endpoint.
//! [`Application::run_until_stopped`] then:
//!
//! 1. serves gRPC and JSON at once, with health `NOT_SERVING` and `/readyz`
//!    503, while it connects to the database (retrying with backoff) and
//!    runs the migrations; calls meanwhile get `UNAVAILABLE`;
//! 2. flips health to `SERVING`, readiness to ready, and starts the outbox
//!    relay (and, on PostgreSQL, the read cache's change feed);
//! 3. on the shutdown signal flips health back to `NOT_SERVING` and
//!    `/readyz` to 503, keeps answering for `drain_delay` (so load balancers
//!    move away), then stops accepting: new calls are refused, in-flight
//!    calls finish (at most `shutdown_grace`);
//! 4. lets the relay publish what those last calls committed, closes the
//!    database pool and the ops endpoint, and returns.

use std::{net::SocketAddr, time::Duration};

use anyhow::Context as _;
use common::{
    ops::{OpsServer, Readiness},
    proto::user::v1::user_service_server::UserServiceServer,
    retry::RetryPolicy,
    shutdown::Shutdown,
};
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::{CancellationToken, DropGuard};
use tonic::transport::server::TcpIncoming;
use tonic_health::{ServingStatus, server::HealthReporter};

use crate::{
    call_layer::GrpcCallLayer,
    change_feed::ChangeFeed,
    config::Config,
    directory::UserDirectory,
    grpc::UserGrpc,
    outbox::{OutboxRelay, RelaySettings},
    read_cache::{CacheSettings, ReadCache},
    store::{Backend, PoolSettings, UserStore},
};

/// The readiness check (and health) that waits for the database.
const DATABASE_CHECK: &str = "database";

/// How long the relay may keep publishing after the servers stopped.
const RELAY_FLUSH_GRACE: Duration = Duration::from_secs(5);

/// The gRPC service name health reports under, besides the whole server ("").
const USER_SERVICE: &str = <UserServiceServer<UserGrpc> as tonic::server::NamedService>::NAME;

/// A built, not yet running user-service.
#[derive(Debug)]
pub struct Application {
    config: Config,
    grpc_listener: TcpListener,
    http_listener: TcpListener,
    ops: OpsServer,
    /// Stops the ops endpoint when dropped, also when the application is
    /// built but never run.
    ops_stop: DropGuard,
    readiness: Readiness,
    health: HealthReporter,
    directory: UserDirectory,
}

impl Application {
    /// Binds the gRPC, HTTP and ops addresses and starts the ops endpoint.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let grpc_listener = TcpListener::bind(config.grpc_addr)
            .await
            .with_context(|| format!("cannot bind the grpc address {}", config.grpc_addr))?;
        let http_listener = TcpListener::bind(config.http_addr)
            .await
            .with_context(|| format!("cannot bind the http address {}", config.http_addr))?;
        let readiness = Readiness::new(&[DATABASE_CHECK]);
        let ops_stop = CancellationToken::new();
        let ops = OpsServer::start(
            config.ops_addr,
            readiness.clone(),
            axum::Router::new(),
            ops_stop.clone(),
        )
        .await
        .with_context(|| format!("cannot bind the ops address {}", config.ops_addr))?;
        let health = HealthReporter::new();
        set_health(&health, ServingStatus::NotServing).await;
        let directory = UserDirectory::new(ReadCache::new(CacheSettings {
            capacity: config.read_cache_capacity,
            ttl: config.read_cache_ttl,
        }));
        Ok(Application {
            config,
            grpc_listener,
            http_listener,
            ops,
            ops_stop: ops_stop.drop_guard(),
            readiness,
            health,
            directory,
        })
    }

    /// The bound gRPC address.
    pub fn grpc_addr(&self) -> SocketAddr {
        local_addr(&self.grpc_listener, self.config.grpc_addr)
    }

    /// The bound JSON gateway address.
    pub fn http_addr(&self) -> SocketAddr {
        local_addr(&self.http_listener, self.config.http_addr)
    }

    /// `GetUser`'s read cache (to watch it; the service manages it).
    pub fn read_cache(&self) -> std::sync::Arc<ReadCache> {
        self.directory.cache()
    }

    /// The bound ops address.
    pub fn ops_addr(&self) -> SocketAddr {
        self.ops.local_addr()
    }

    /// Serves until `shutdown` fires, then drains (see the module docs).
    pub async fn run_until_stopped(self, shutdown: Shutdown) -> anyhow::Result<()> {
        let Application {
            config,
            grpc_listener,
            http_listener,
            ops,
            ops_stop,
            readiness,
            health,
            directory,
        } = self;
        tracing::info!(
            grpc_addr = %local_addr(&grpc_listener, config.grpc_addr),
            http_addr = %local_addr(&http_listener, config.http_addr),
            ops_addr = %ops.local_addr(),
            database_url = %config.database_url,
            "user-service starting"
        );

        let servers_stop = CancellationToken::new();
        let grpc = tokio::spawn(serve_grpc(
            grpc_listener,
            &config,
            directory.clone(),
            health.clone(),
            servers_stop.clone(),
        )?);
        let http_router = crate::http::router(
            directory.clone(),
            config.request_timeout,
            config.max_message_bytes,
        );
        let http_stop = servers_stop.clone();
        let http = tokio::spawn(async move {
            axum::serve(http_listener, http_router)
                .with_graceful_shutdown(http_stop.cancelled_owned())
                .await
        });

        let relay_stop = CancellationToken::new();
        let mut relay = None;
        let mut change_feed = None;
        let mut database_error = None;
        tokio::select! {
            store = open_database(&config) => match store {
                Ok(store) => {
                    if store.backend() == Backend::Postgres && directory.cache().is_enabled() {
                        // Other replicas may write: nothing is cached until
                        // their changes can be heard.
                        directory.cache().suspend();
                        let feed = ChangeFeed::new(store.clone(), directory.cache());
                        change_feed = Some(tokio::spawn(feed.run(relay_stop.clone())));
                    }
                    directory.attach(store.clone());
                    readiness.set(DATABASE_CHECK, true);
                    set_health(&health, ServingStatus::Serving).await;
                    tracing::info!(backend = ?store.backend(), "database ready, serving");
                    let settings = RelaySettings {
                        amqp_url: config.amqp_url.clone(),
                        queue: config.data_sync_queue.clone(),
                        poll_interval: config.outbox_poll_interval,
                        batch_size: config.outbox_batch_size,
                    };
                    let relay_task = OutboxRelay::new(store, settings, directory.outbox_wakeup());
                    relay = Some(tokio::spawn(relay_task.run(relay_stop.clone())));
                }
                Err(error) => database_error = Some(error),
            },
            () = shutdown.cancelled() => {}
        }
        if database_error.is_none() {
            shutdown.cancelled().await;
        }

        tracing::info!(
            drain_delay_ms = config.drain_delay.as_millis() as u64,
            "shutting down: reporting not serving"
        );
        readiness.shutting_down();
        set_health(&health, ServingStatus::NotServing).await;
        if database_error.is_none() {
            tokio::time::sleep(config.drain_delay).await;
        }

        servers_stop.cancel();
        stop_server("grpc", grpc, config.shutdown_grace).await;
        stop_server("http", http, config.shutdown_grace).await;

        relay_stop.cancel();
        if let Some(relay) = relay
            && let Err(error) = stop_task(relay, RELAY_FLUSH_GRACE).await
        {
            tracing::warn!(error = %error, "outbox relay did not stop in time; pending events stay in the outbox");
        }
        if let Some(feed) = change_feed {
            // It only listens: nothing is lost by stopping it at once.
            feed.abort();
        }
        if let Some(store) = directory.store() {
            store.close().await;
        }
        drop(ops_stop);
        if let Err(error) = ops.stopped().await {
            tracing::warn!(error = %error, "ops endpoint failed");
        }
        match database_error {
            Some(error) => Err(error),
            None => {
                tracing::info!("user-service stopped");
                Ok(())
            }
        }
    }
}

/// Builds the gRPC server future: the user service, health, reflection
/// (v1 and v1alpha), all behind [`GrpcCallLayer`].
fn serve_grpc(
    listener: TcpListener,
    config: &Config,
    directory: UserDirectory,
    health: HealthReporter,
    stop: CancellationToken,
) -> anyhow::Result<impl Future<Output = Result<(), tonic::transport::Error>> + use<>> {
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(common::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("cannot build the reflection service")?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(common::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .context("cannot build the reflection service")?;
    let users = UserServiceServer::new(UserGrpc::new(directory))
        .max_decoding_message_size(config.max_message_bytes)
        .max_encoding_message_size(config.max_message_bytes);
    let health_service = tonic_health::pb::health_server::HealthServer::new(
        tonic_health::server::HealthService::from_health_reporter(health),
    );
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    Ok(tonic::transport::Server::builder()
        .layer(GrpcCallLayer::new(config.request_timeout))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(users)
        .serve_with_incoming_shutdown(incoming, stop.cancelled_owned()))
}

/// Connects (retrying with backoff until it works) and migrates.
async fn open_database(config: &Config) -> anyhow::Result<UserStore> {
    let settings = PoolSettings {
        max_connections: config.db_max_connections,
        acquire_timeout: config.db_acquire_timeout,
    };
    let mut backoff = RetryPolicy::reconnect().backoff();
    let store = loop {
        match UserStore::connect(&config.database_url, settings).await {
            Ok(store) => break store,
            Err(error) => {
                let delay = backoff.next().unwrap_or(RetryPolicy::reconnect().max_delay);
                tracing::warn!(
                    error = %error,
                    database_url = %config.database_url,
                    delay_ms = delay.as_millis() as u64,
                    "database not reachable, retrying"
                );
                tokio::time::sleep(delay).await;
            }
        }
    };
    // A failed migration is not transient: stop and let the operator look.
    store
        .migrate()
        .await
        .context("cannot migrate the database")?;
    Ok(store)
}

async fn set_health(health: &HealthReporter, status: ServingStatus) {
    health.set_service_status("", status).await;
    health.set_service_status(USER_SERVICE, status).await;
}

async fn stop_server<E: std::fmt::Display>(
    name: &str,
    task: JoinHandle<Result<(), E>>,
    grace: Duration,
) {
    match stop_task(task, grace).await {
        Ok(Ok(())) => tracing::info!(server = name, "server stopped"),
        Ok(Err(error)) => tracing::warn!(server = name, error = %error, "server failed"),
        Err(error) => tracing::warn!(server = name, error = %error, "server did not drain in time"),
    }
}

/// Waits for `task` at most `grace`, then aborts it.
async fn stop_task<T>(mut task: JoinHandle<T>, grace: Duration) -> anyhow::Result<T> {
    match tokio::time::timeout(grace, &mut task).await {
        Ok(joined) => joined.context("task panicked"),
        Err(_) => {
            task.abort();
            anyhow::bail!("still running after {} ms, aborted", grace.as_millis())
        }
    }
}

fn local_addr(listener: &TcpListener, configured: SocketAddr) -> SocketAddr {
    listener.local_addr().unwrap_or(configured)
}
