//! Wiring and lifecycle: bind, serve, connect the database, drain, stop.
//!
//! [`Application::build`] loads the TLS files when TLS is on (a missing or
//! bad file stops the start with an error naming the key and the path),
//! binds every listener (port 0 works: tests ask the application which port
//! it got), describes the metrics and starts the ops endpoint.
//! [`Application::run_until_stopped`] then:
//!
//! 1. serves gRPC and JSON at once (both over TLS when configured, the
//!    files re-read every `tls_reload_interval`), with health `NOT_SERVING`
//!    and `/readyz` 503, while it connects to the database (retrying with backoff through
//!    [`until_connected`], until the shutdown signal) and runs the
//!    migrations; calls meanwhile get `UNAVAILABLE`;
//! 2. flips health to `SERVING`, readiness to ready, and starts the outbox
//!    relay (and, on PostgreSQL, the read cache's change feed);
//! 3. on the shutdown signal flips health back to `NOT_SERVING` and
//!    `/readyz` to 503, keeps answering for `drain_delay` (so load balancers
//!    move away), then stops accepting: new calls are refused, in-flight
//!    calls get `shutdown_grace` to finish and are aborted after it;
//! 4. lets the relay publish what those last calls committed (at most
//!    [`RELAY_FLUSH_GRACE`]), closes the database pool and the ops endpoint,
//!    and returns.
//!
//! The servers and the background tasks are two [`Shutdown`] groups of
//! their own rather than scopes of the service's: a scope would stop with
//! the signal, but the servers must keep answering through `drain_delay`,
//! and the relay must keep publishing until the servers are done.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use common::{
    ops::{OpsServer, Readiness},
    proto::user::v1::user_service_server::UserServiceServer,
    reconnect::until_connected,
    shutdown::{Drained, Shutdown},
};
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use tonic::transport::server::{Router, TcpIncoming};
use tonic_health::{ServingStatus, server::HealthReporter};
use tower::layer::util::{Identity, Stack};
use workqueue::preflight::{Declaration, refuse_mismatched_queues};

use crate::{
    call_layer::GrpcCallLayer,
    change_feed::ChangeFeed,
    config::Config,
    directory::UserDirectory,
    grpc::UserGrpc,
    outbox::{OutboxRelay, RelaySettings},
    read_cache::{CacheSettings, ReadCache},
    store::{Backend, PoolSettings, UserStore},
    tls::{Protocol, ServerTls},
    tls_listener::TlsListener,
};

/// The readiness check (and health) that waits for the database.
const DATABASE_CHECK: &str = "database";

/// How long the relay may keep publishing after the servers stopped.
pub const RELAY_FLUSH_GRACE: Duration = Duration::from_secs(5);

/// The gRPC service name health reports under, besides the whole server ("").
const USER_SERVICE: &str = <UserServiceServer<UserGrpc> as tonic::server::NamedService>::NAME;

/// A built, not yet running user-service.
#[derive(Debug)]
pub struct Application {
    config: Config,
    grpc_listener: TcpListener,
    http_listener: TcpListener,
    /// `/healthz`, `/readyz`, `/metrics`; stops when dropped, also when the
    /// application is built but never run.
    ops: OpsServer,
    readiness: Readiness,
    health: HealthReporter,
    directory: UserDirectory,
    /// Both servers' TLS, when `tls_cert` and `tls_key` are set.
    tls: Option<Arc<ServerTls>>,
}

impl Application {
    /// Binds the gRPC, HTTP and ops addresses, describes the metrics and
    /// starts the ops endpoint.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        common::metrics::describe(crate::metrics::ALL);
        refuse_mismatched_queues(
            &config.amqp_url,
            &config.amqp_tls,
            "user-service",
            &[Declaration::DataSync {
                queue: &config.data_sync_queue,
                queue_type: config.queue_type,
            }],
        )
        .await?;
        let tls = match config.certificate_files() {
            Some(files) => Some(Arc::new(
                ServerTls::load(files).context("cannot set up tls")?,
            )),
            None => None,
        };
        let grpc_listener = TcpListener::bind(config.grpc_addr)
            .await
            .with_context(|| format!("cannot bind the grpc address {}", config.grpc_addr))?;
        let http_listener = TcpListener::bind(config.http_addr)
            .await
            .with_context(|| format!("cannot bind the http address {}", config.http_addr))?;
        let readiness = Readiness::new(&[DATABASE_CHECK]);
        let ops = OpsServer::start(
            config.ops_addr,
            readiness.clone(),
            &config,
            axum::Router::new(),
        )
        .await?;
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
            readiness,
            health,
            directory,
            tls,
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
            readiness,
            health,
            directory,
            tls,
        } = self;
        let tls_mode = match &tls {
            None => "off",
            Some(tls) if tls.is_mutual() => "mutual",
            Some(_) => "on",
        };
        tracing::info!(
            grpc_addr = %local_addr(&grpc_listener, config.grpc_addr),
            http_addr = %local_addr(&http_listener, config.http_addr),
            ops_addr = %ops.local_addr(),
            database_url = %config.database_url,
            tls = tls_mode,
            "user-service starting"
        );

        // Stopped only after `drain_delay`, not by the signal itself.
        let servers = Shutdown::new();
        let grpc_router = grpc_router(&config, directory.clone(), health.clone())?;
        let grpc_stop = servers.token().cancelled_owned();
        let http_router = crate::http::router(
            directory.clone(),
            config.request_timeout,
            config.max_message_bytes,
        );
        let http_stop = servers.token().cancelled_owned();
        let (grpc, http) = match &tls {
            None => {
                let incoming = TcpIncoming::from(grpc_listener).with_nodelay(Some(true));
                (
                    servers.spawn(grpc_router.serve_with_incoming_shutdown(incoming, grpc_stop)),
                    servers.spawn(async move {
                        axum::serve(http_listener, http_router)
                            .with_graceful_shutdown(http_stop)
                            .await
                    }),
                )
            }
            Some(tls) => {
                servers.spawn(
                    tls.clone()
                        .watch(config.tls_reload_interval, servers.token()),
                );
                let grpc_incoming =
                    TlsListener::start(grpc_listener, tls.clone(), Protocol::Grpc, servers.token())
                        .context("cannot start the grpc tls listener")?;
                let http_incoming =
                    TlsListener::start(http_listener, tls.clone(), Protocol::Http, servers.token())
                        .context("cannot start the http tls listener")?;
                (
                    servers.spawn(
                        grpc_router
                            .serve_with_incoming_shutdown(grpc_incoming.into_stream(), grpc_stop),
                    ),
                    servers.spawn(async move {
                        axum::serve(http_incoming, http_router)
                            .with_graceful_shutdown(http_stop)
                            .await
                    }),
                )
            }
        };

        // The relay and the change feed, stopped once the servers are done.
        let background = Shutdown::new();
        let database = open_database(&config, &readiness, &shutdown.token()).await;
        if let Ok(Some(store)) = &database {
            if store.backend() == Backend::Postgres && directory.cache().is_enabled() {
                // Other replicas may write: nothing is cached until their
                // changes can be heard.
                directory.cache().suspend();
                let feed = ChangeFeed::new(store.clone(), directory.cache());
                background.spawn(feed.run(background.token()));
            }
            directory.attach(store.clone());
            readiness.set(DATABASE_CHECK, true);
            set_health(&health, ServingStatus::Serving).await;
            tracing::info!(backend = ?store.backend(), "database ready, serving");
            let settings = RelaySettings {
                amqp_url: config.amqp_url.clone(),
                amqp_tls: config.amqp_tls.clone(),
                queue: config.data_sync_queue.clone(),
                queue_type: config.queue_type,
                poll_interval: config.outbox_poll_interval,
                batch_size: config.outbox_batch_size,
            };
            let relay = OutboxRelay::new(store.clone(), settings, directory.outbox_wakeup());
            background.spawn(relay.run(background.token()));
            shutdown.cancelled().await;
        }

        tracing::info!(
            drain_delay_ms = config.drain_delay.as_millis() as u64,
            "shutting down: reporting not serving"
        );
        readiness.shutting_down();
        set_health(&health, ServingStatus::NotServing).await;
        if database.is_ok() {
            tokio::time::sleep(config.drain_delay).await;
        }

        // Whatever is still running after the grace is aborted (and logged).
        servers.drain(config.shutdown_grace).await;
        report_server("grpc", grpc).await;
        report_server("http", http).await;

        // After the signal the relay makes one more pass: the events of the
        // calls that finished while the servers drained.
        if let Drained::TimedOut(_) = background.drain(RELAY_FLUSH_GRACE).await {
            tracing::warn!("outbox relay did not stop in time; pending events stay in the outbox");
        }
        if let Some(store) = directory.store() {
            store.close().await;
        }
        ops.stop().await;
        database.map(|_| tracing::info!("user-service stopped"))
    }
}

/// The gRPC server's routes: the user service, health, reflection (v1 and
/// v1alpha), all behind [`GrpcCallLayer`]; served over TCP or TLS.
fn grpc_router(
    config: &Config,
    directory: UserDirectory,
    health: HealthReporter,
) -> anyhow::Result<Router<Stack<GrpcCallLayer, Identity>>> {
    // Every service refuses a request over `max_message_bytes` before
    // decoding it (tonic answers `OUT_OF_RANGE`, which the call layer
    // counts); health and reflection keep tonic's default limit for what
    // they send, since a descriptor set is not a caller's input.
    let limit = config.max_message_bytes;
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(common::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("cannot build the reflection service")?
        .max_decoding_message_size(limit);
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(common::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .context("cannot build the reflection service")?
        .max_decoding_message_size(limit);
    let users = UserServiceServer::new(UserGrpc::new(directory))
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit);
    let health_service = tonic_health::pb::health_server::HealthServer::new(
        tonic_health::server::HealthService::from_health_reporter(health),
    )
    .max_decoding_message_size(limit);
    Ok(tonic::transport::Server::builder()
        .layer(GrpcCallLayer::new(config.request_timeout, limit))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(users))
}

/// Connects (retrying with backoff until it works or `stop` fires) and
/// migrates; `None` when stopped first. Meanwhile `/readyz` says why the
/// last attempt failed (sqlx's text names the cause, never the URL).
async fn open_database(
    config: &Config,
    readiness: &Readiness,
    stop: &CancellationToken,
) -> anyhow::Result<Option<UserStore>> {
    let settings = PoolSettings {
        max_connections: config.db_max_connections,
        acquire_timeout: config.db_acquire_timeout,
    };
    let connect = || async {
        let attempt = UserStore::connect(&config.database_url, settings).await;
        let reason = attempt.as_ref().err().map(ToString::to_string);
        readiness.set_reason(DATABASE_CHECK, reason);
        attempt
    };
    let Some(store) = until_connected("user store", &config.database_url, stop, connect).await
    else {
        return Ok(None);
    };
    tokio::select! {
        () = stop.cancelled() => Ok(None),
        // A failed migration is not transient: stop and let the operator look.
        migrated = store.migrate() => {
            migrated.context("cannot migrate the database")?;
            Ok(Some(store))
        }
    }
}

async fn set_health(health: &HealthReporter, status: ServingStatus) {
    health.set_service_status("", status).await;
    health.set_service_status(USER_SERVICE, status).await;
}

/// Logs how a server task ended (an aborted one was logged by the drain).
async fn report_server<E: std::fmt::Display>(name: &str, task: JoinHandle<Result<(), E>>) {
    match task.await {
        Ok(Ok(())) => tracing::info!(server = name, "server stopped"),
        Ok(Err(error)) => tracing::warn!(server = name, error = %error, "server failed"),
        Err(error) if error.is_cancelled() => {}
        Err(error) => tracing::warn!(server = name, error = %error, "server task panicked"),
    }
}

/// Builds and runs the service until `shutdown` fires and everything has
/// drained.
pub async fn run(config: Config, shutdown: Shutdown) -> anyhow::Result<()> {
    Application::build(config)
        .await?
        .run_until_stopped(shutdown)
        .await
}

fn local_addr(listener: &TcpListener, configured: SocketAddr) -> SocketAddr {
    listener.local_addr().unwrap_or(configured)
}
