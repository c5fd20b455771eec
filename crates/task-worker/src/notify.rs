//! `notify`: tell a sensor's owner about an alert.
//!
//! The request-reply pattern inside a worker: the task names the owner
//! (`payload.owner_id`), the handler asks user-service for the owner
//! (`UserClient::get_user`, with its deadline, retries and circuit breaker),
//! adds what the contact directory knows from `data_sync`, and records the
//! notification — a log line and `notifications_sent_total{severity}`.
//! Sending an e-mail or a push message would go where the log line is.
//!
//! Failures map onto the work queue's outcomes: an owner that does not exist
//! is permanent (`not_found`, dead-lettered at once, not a retry loop); a
//! user-service that is down or slow is transient (retried through the
//! tiers); an open breaker hands the task back and pauses the worker.

use std::sync::Arc;

use common::circuit_breaker::CircuitBreaker;
use futures::future::BoxFuture;
use serde_json::Value;
use tracing::info;
use user_client::{ClientConfig, ClientError, UserClient};
use workqueue::task::{KIND_NOTIFY, Task};

use crate::{
    Config,
    contacts::ContactDirectory,
    handler::{HandlerError, Handlers, TaskHandler},
    metrics::NOTIFICATIONS_SENT,
};

/// Runs `notify` tasks against user-service.
#[derive(Debug, Clone)]
pub struct NotifyHandler {
    /// The user-service client (deadline, retries, breaker).
    client: UserClient,
    /// Contact details from `data_sync`.
    contacts: ContactDirectory,
}

impl NotifyHandler {
    /// A handler using `client` for lookups and `contacts` for details.
    pub fn new(client: UserClient, contacts: ContactDirectory) -> Self {
        NotifyHandler { client, contacts }
    }
}

/// Registers the `notify` handler; returns the user-service breaker the
/// worker pauses on.
pub(crate) fn register(
    config: &Config,
    contacts: &ContactDirectory,
    handlers: &mut Handlers,
) -> anyhow::Result<Option<Arc<CircuitBreaker>>> {
    let client = UserClient::connect_lazy(ClientConfig {
        url: config.user_service_url.clone(),
        ca: config.user_service_tls.ca.clone(),
        cert: config.user_service_tls.cert.clone(),
        key: config.user_service_tls.key.clone(),
        timeout: config.user_service_timeout,
        breaker: config.user_service_breaker,
        ..ClientConfig::default()
    })?;
    let breaker = client.breaker();
    handlers.insert(
        KIND_NOTIFY,
        Arc::new(NotifyHandler::new(client, contacts.clone())),
    );
    Ok(Some(breaker))
}

impl TaskHandler for NotifyHandler {
    fn handle<'a>(&'a self, task: &'a Task) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            let owner_id = match task.payload.get("owner_id") {
                Some(Value::String(id)) if !id.trim().is_empty() => id.as_str(),
                other => {
                    return Err(HandlerError::permanent(
                        "invalid_payload",
                        format!(
                            "notify needs payload.owner_id as a non-empty string, got {other:?}"
                        ),
                    ));
                }
            };
            let severity = match task.payload.get("severity").and_then(Value::as_str) {
                Some("warning") => "warning",
                Some("critical") => "critical",
                _ => "unknown",
            };
            let user = self.client.get_user(owner_id).await.map_err(classify)?;
            let contact = self.contacts.get(owner_id);
            let email = if user.email.is_empty() {
                contact
                    .as_ref()
                    .and_then(|c| c.email.clone())
                    .unwrap_or_default()
            } else {
                user.email.clone()
            };
            // Strings without their JSON quotes, numbers as written.
            let text = |key: &str| match task.payload.get(key) {
                Some(Value::String(text)) => text.clone(),
                Some(other) => other.to_string(),
                None => String::new(),
            };
            info!(
                owner_id,
                name = %user.name,
                email = %email,
                severity,
                alert_id = %text("alert_id"),
                sensor_id = %text("sensor_id"),
                value = %text("value"),
                threshold = %text("threshold"),
                "notification sent"
            );
            metrics::counter!(NOTIFICATIONS_SENT, "severity" => severity).increment(1);
            Ok(())
        })
    }
}

/// Maps a user-service failure onto the work queue's outcomes.
fn classify(error: ClientError) -> HandlerError {
    match error {
        ClientError::NotFound(message) => HandlerError::permanent("not_found", message),
        ClientError::BreakerOpen(open) => HandlerError::BreakerOpen(open.name),
        ClientError::InvalidArgument(message) => {
            HandlerError::permanent("invalid_argument", message)
        }
        error if error.is_permanent() => {
            HandlerError::permanent("user_service_rejected", error.to_string())
        }
        error => HandlerError::Transient(error.to_string()),
    }
}
