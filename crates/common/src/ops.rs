//! The ops HTTP endpoint every service exposes (ports in docs/ARCHITECTURE.md).
//!
//! - `GET /healthz`: the process is alive (always 200 while it serves).
//! - `GET /readyz`: 200 when every registered dependency is connected, 503
//!   otherwise and during shutdown; the body names each check, so
//!   `curl :9102/readyz` tells an operator what is missing.
//! - `GET /metrics`: Prometheus text format (see [`crate::metrics`]).
//! - `GET /config`: the configuration in force, secrets redacted, where each
//!   value came from and when it was last (re)loaded (see
//!   [`crate::effective_config`]).
//!
//! A service adds its own routes (monitor-subscriber's `/stats`) by passing
//! a [`Router`]. Binding to port 0 works: [`OpsServer::local_addr`] tells the
//! port that was picked.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use axum::{
    Json, Router,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use serde::Serialize;
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::CancellationToken;

use crate::effective_config::EffectiveConfig;

/// Named readiness checks, shared between the service and `/readyz`.
#[derive(Debug, Clone, Default)]
pub struct Readiness {
    inner: Arc<Mutex<ReadinessState>>,
}

#[derive(Debug, Default)]
struct ReadinessState {
    checks: BTreeMap<&'static str, bool>,
    /// Why a check fails, where its owner knows (no secrets: shown on `/readyz`).
    reasons: BTreeMap<&'static str, String>,
    shutting_down: bool,
}

impl Readiness {
    /// Readiness with the given checks, all not ready yet.
    pub fn new(checks: &[&'static str]) -> Self {
        let readiness = Readiness::default();
        for check in checks {
            readiness.set(check, false);
        }
        readiness
    }

    /// Marks one dependency as connected (`true`) or not.
    pub fn set(&self, check: &'static str, ready: bool) {
        let mut state = self.lock();
        let previous = state.checks.insert(check, ready);
        if previous != Some(ready) {
            tracing::info!(check, ready, "readiness changed");
        }
    }

    /// Says why `check` fails (`None`: no reason, or it passes again);
    /// shown on `/readyz` under `reasons`. The text must hold no secret.
    pub fn set_reason(&self, check: &'static str, reason: Option<String>) {
        let mut state = self.lock();
        match reason {
            Some(reason) => state.reasons.insert(check, reason),
            None => state.reasons.remove(check),
        };
    }

    /// Why `check` fails, if its owner said.
    pub fn reason(&self, check: &str) -> Option<String> {
        self.lock().reasons.get(check).cloned()
    }

    /// From now on the service reports not ready, so load balancers stop
    /// sending it work while it drains.
    pub fn shutting_down(&self) {
        self.lock().shutting_down = true;
    }

    /// `true` when every check passes and the service is not shutting down.
    pub fn is_ready(&self) -> bool {
        let state = self.lock();
        !state.shutting_down && state.checks.values().all(|ready| *ready)
    }

    fn report(&self) -> serde_json::Value {
        let state = self.lock();
        let mut report = serde_json::json!({
            "ready": !state.shutting_down && state.checks.values().all(|ready| *ready),
            "shutting_down": state.shutting_down,
            "checks": state.checks,
        });
        if !state.reasons.is_empty() {
            report["reasons"] = serde_json::json!(state.reasons);
        }
        report
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ReadinessState> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The ops address could not be bound (taken by another process, or not
/// an address of this host).
#[derive(Debug, thiserror::Error)]
#[error("cannot bind the ops address {addr}: {source}")]
pub struct BindError {
    /// The address asked for.
    pub addr: SocketAddr,
    /// Why it failed.
    #[source]
    pub source: std::io::Error,
}

/// A running ops HTTP server. It is the last thing a service stops, so
/// `/readyz` can say "shutting down" while the rest drains; dropping it
/// stops it too.
#[derive(Debug)]
pub struct OpsServer {
    /// The address actually bound.
    local_addr: SocketAddr,
    /// Fires the server's graceful shutdown.
    stop: CancellationToken,
    /// The serving task; taken by [`OpsServer::stop`].
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl OpsServer {
    /// Binds `addr` (port 0 picks a free port) and serves the ops routes plus
    /// `extra` until [`OpsServer::stop`]; `/config` shows `config`, the
    /// service's configuration in force ([`EffectiveConfig::in_force`]).
    pub async fn start<C>(
        addr: SocketAddr,
        readiness: Readiness,
        config: &C,
        extra: Router,
    ) -> Result<Self, BindError>
    where
        C: Serialize + Default,
    {
        let bind_error = |source| BindError { addr, source };
        let listener = TcpListener::bind(addr).await.map_err(bind_error)?;
        let local_addr = listener.local_addr().map_err(bind_error)?;
        let app = router(readiness, EffectiveConfig::in_force(config)).merge(extra);
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { stopped.cancelled().await })
                .await
        });
        tracing::info!(addr = %local_addr, "ops http listening");
        Ok(OpsServer {
            local_addr,
            stop,
            task: Some(task),
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops serving and waits until the server is gone; an error it ended
    /// with is logged, since nothing is left to do about it at shutdown.
    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            match task.await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::warn!(%error, "ops server stopped with an error"),
                Err(error) => tracing::warn!(%error, "ops server task failed"),
            }
        }
    }
}

impl Drop for OpsServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The `/healthz`, `/readyz`, `/metrics` and `/config` routes.
pub fn router(readiness: Readiness, effective: EffectiveConfig) -> Router {
    crate::metrics::install();
    let config_routes = Router::new()
        .route("/config", get(effective_config))
        .with_state(effective);
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(readiness)
        .merge(config_routes)
}

async fn effective_config(State(effective): State<EffectiveConfig>) -> impl IntoResponse {
    Json(effective.report())
}

async fn readyz(State(readiness): State<Readiness>) -> impl IntoResponse {
    let status = if readiness.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(readiness.report()))
}

async fn metrics() -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::metrics::render(),
    )
}

#[cfg(test)]
mod tests {
    use testkit::http_get;

    use super::*;

    async fn start(readiness: Readiness, extra: Router) -> OpsServer {
        OpsServer::start("127.0.0.1:0".parse().unwrap(), readiness, &(), extra)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn healthz_answers_on_a_picked_port() {
        let server = start(Readiness::default(), Router::new()).await;
        assert_ne!(server.local_addr().port(), 0);
        let (status, body) = http_get(server.local_addr(), "/healthz").await;
        assert_eq!((status, body.as_str()), (200, "ok"));
        server.stop().await;
    }

    #[tokio::test]
    async fn a_taken_port_is_an_error_naming_the_address() {
        let server = start(Readiness::default(), Router::new()).await;
        let error = OpsServer::start(
            server.local_addr(),
            Readiness::default(),
            &(),
            Router::new(),
        )
        .await
        .unwrap_err();
        assert_eq!(error.addr, server.local_addr());
        assert!(
            error.to_string().starts_with(&format!(
                "cannot bind the ops address {}",
                server.local_addr()
            )),
            "{error}"
        );
        server.stop().await;
    }

    #[tokio::test]
    async fn a_stopped_server_no_longer_answers() {
        let server = start(Readiness::default(), Router::new()).await;
        let addr = server.local_addr();
        server.stop().await;
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    }

    #[tokio::test]
    async fn readyz_follows_the_checks_and_shutdown() {
        let readiness = Readiness::new(&["nats", "rabbitmq"]);
        let server = start(readiness.clone(), Router::new()).await;

        let (status, body) = http_get(server.local_addr(), "/readyz").await;
        assert_eq!(status, 503);
        let report: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(report["checks"]["nats"], false);

        readiness.set_reason(
            "nats",
            Some("cannot connect to nats://n:4222: refused".into()),
        );
        let (_, body) = http_get(server.local_addr(), "/readyz").await;
        let report: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            report["reasons"]["nats"],
            "cannot connect to nats://n:4222: refused"
        );
        readiness.set_reason("nats", None);
        readiness.set("nats", true);
        let (status, body) = http_get(server.local_addr(), "/readyz").await;
        assert_eq!(status, 503, "rabbitmq still missing");
        let report: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert!(report.get("reasons").is_none(), "{report}");
        readiness.set("rabbitmq", true);
        assert_eq!(http_get(server.local_addr(), "/readyz").await.0, 200);

        readiness.shutting_down();
        let (status, body) = http_get(server.local_addr(), "/readyz").await;
        assert_eq!(status, 503);
        assert!(body.contains(r#""shutting_down":true"#), "{body}");
        server.stop().await;
    }

    #[tokio::test]
    async fn metrics_are_served_in_prometheus_text_format() {
        let server = start(Readiness::default(), Router::new()).await;
        metrics::counter!("messages_received_total", "subject" => "ops.test").increment(3);
        let (status, body) = http_get(server.local_addr(), "/metrics").await;
        assert_eq!(status, 200);
        assert!(
            body.contains(r#"messages_received_total{subject="ops.test"} 3"#),
            "{body}"
        );
        server.stop().await;
    }

    #[tokio::test]
    async fn config_shows_the_configuration_in_force_redacted() {
        #[derive(Debug, Default, serde::Serialize)]
        struct Settings {
            amqp_url: String,
            workers: u32,
        }
        let settings = Settings {
            amqp_url: "amqp://app:s3cr3t@rabbit:5672/%2f".into(),
            workers: 0,
        };
        let server = OpsServer::start(
            "127.0.0.1:0".parse().unwrap(),
            Readiness::default(),
            &settings,
            Router::new(),
        )
        .await
        .unwrap();
        let (status, body) = http_get(server.local_addr(), "/config").await;
        assert_eq!(status, 200);
        assert!(!body.contains("s3cr3t"), "{body}");
        let report: serde_json::Value = serde_json::from_str(&body).unwrap();
        let amqp_url = &report["settings"]["amqp_url"];
        assert_eq!(amqp_url["value"], "amqp://***@rabbit:5672/%2f");
        assert_eq!(amqp_url["source"], "given");
        assert_eq!(report["settings"]["workers"]["source"], "default");
        server.stop().await;
    }

    #[tokio::test]
    async fn services_add_their_own_routes() {
        let extra = Router::new().route(
            "/stats",
            get(|| async { Json(serde_json::json!({"sensors": 0})) }),
        );
        let server = start(Readiness::default(), extra).await;
        let (status, body) = http_get(server.local_addr(), "/stats").await;
        assert_eq!((status, body.as_str()), (200, r#"{"sensors":0}"#));
        assert_eq!(http_get(server.local_addr(), "/nope").await.0, 404);
        server.stop().await;
    }
}
