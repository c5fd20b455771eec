//! The resilient client of `user.v1.UserService` (task-worker and user-cli use it).
//!
//! - **One channel**, created lazily and shared by every clone: connecting
//!   never fails because the server is down; the first call connects, and
//!   tonic reconnects after a broken connection.
//! - **One deadline per logical call** (`ClientConfig::timeout`): every
//!   attempt and every backoff sleep fit inside it. Each attempt sends the
//!   time left as `grpc-timeout`, so the server stops working when the
//!   caller has stopped waiting. The call's own timer bounds the whole
//!   call: tonic's channel arms its `grpc-timeout` timer only once the
//!   request reaches a ready connection, so while the channel connects
//!   (a blackholed address, a TLS handshake that never completes; queued
//!   calls each wait for a connect attempt of their own) only this timer
//!   ends the call (`tests/never_ready.rs`).
//! - **Retries only where safe**: `UNAVAILABLE` for every call (the server
//!   or its database is down, nothing was done), `DEADLINE_EXCEEDED` only
//!   for reads (Get, List), with [`RetryPolicy`]'s exponential backoff and
//!   full jitter. A write retried after an ambiguous `UNAVAILABLE` may find
//!   its own first attempt done (`ALREADY_EXISTS` on a create, `NOT_FOUND`
//!   on a delete).
//! - **A circuit breaker** (named `user-service`): every attempt asks it
//!   first; while open, calls fail with [`ClientError::BreakerOpen`] at once,
//!   without touching the network. Only outages count as failures
//!   (`UNAVAILABLE`, `DEADLINE_EXCEEDED`, `INTERNAL`, `UNKNOWN`, `DATA_LOSS`);
//!   `NOT_FOUND` and `INVALID_ARGUMENT` are answers, not outages.
//! - **Trace propagation**: the current span's `traceparent` goes into each
//!   attempt's metadata.
//! - **TLS** for `https://` URLs: the server's certificate is checked
//!   against `ClientConfig::ca` (a PEM file: a private CA, and only it) or,
//!   without one, the operating system's trust store; `cert` and `key` add a
//!   client certificate for mutual TLS. The files are read and checked when
//!   the client is made, so a wrong path fails at start, not at the first
//!   call. A handshake that fails (an untrusted server, a refused client
//!   certificate, plaintext on one side) is [`ClientError::Tls`]: not
//!   retried within the call (the next attempt would meet the same
//!   certificates), counted by the breaker as an outage.

use std::{
    future::Future,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use common::{
    circuit_breaker::{BreakerConfig, BreakerOpen, CircuitBreaker},
    proto::user::v1::{
        CreateUserRequest, DeleteUserRequest, GetUserRequest, GetUserResponse, ListUsersRequest,
        ListUsersResponse, UpdateUserRequest, user_service_client::UserServiceClient,
    },
    retry::{RetryPolicy, Retryable},
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use tokio::time::Instant;
use tonic::{
    Code, Status,
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
};
use tracing::Instrument;

/// How an `UNAVAILABLE` from a connection lost before the request went out begins.
const CLOSED_BEFORE_SENT: &str = "connection closed before the request was sent";

/// The breaker's name (the `circuit_breaker_state{name}` label).
pub const BREAKER_NAME: &str = "user-service";

/// How to reach user-service and how patient to be.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `USER_SERVICE_URL`, e.g. `http://127.0.0.1:50051` or
    /// `https://user-service:50051` (`http://` is assumed when the scheme is
    /// missing).
    pub url: String,
    /// `https://` only: PEM file of the CA(s) the server's certificate must
    /// chain to, trusted instead of the operating system's store.
    pub ca: Option<PathBuf>,
    /// `https://` only: PEM client certificate chain for mutual TLS, with `key`.
    pub cert: Option<PathBuf>,
    /// `https://` only: PEM private key of `cert`.
    pub key: Option<PathBuf>,
    /// Overall deadline of one logical call, every retry inside it.
    pub timeout: Duration,
    /// Backoff between attempts.
    pub retry: RetryPolicy,
    /// When to stop calling a failing server for a while.
    pub breaker: BreakerConfig,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            url: "http://127.0.0.1:50051".to_string(),
            ca: None,
            cert: None,
            key: None,
            timeout: Duration::from_secs(2),
            retry: RetryPolicy::rpc(),
            breaker: BreakerConfig::default(),
        }
    }
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No such user (the server's message names the id).
    #[error("{0}")]
    NotFound(String),
    /// The request was invalid; the message names the field.
    #[error("{0}")]
    InvalidArgument(String),
    /// The user exists already (the server's message names the id).
    #[error("{0}")]
    AlreadyExists(String),
    /// The server (or its database) could not be reached, after retries.
    #[error("user-service unavailable: {0}")]
    Unavailable(String),
    /// The call's deadline passed.
    #[error("deadline exceeded: {0}")]
    DeadlineExceeded(String),
    /// The breaker is open: nothing was sent.
    #[error(transparent)]
    BreakerOpen(BreakerOpen),
    /// Any other status from the server.
    #[error("user-service error: {0}")]
    Other(Status),
    /// `ClientConfig::url` is not a usable URL.
    #[error("invalid user-service url: {0}")]
    InvalidUrl(String),
    /// TLS settings that cannot be used (a file missing or not PEM), or a
    /// TLS handshake that failed; the message says which and why.
    #[error("user-service tls: {0}")]
    Tls(String),
}

impl ClientError {
    /// Failures that no retry can fix: the request itself is wrong.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            ClientError::NotFound(_)
                | ClientError::InvalidArgument(_)
                | ClientError::AlreadyExists(_)
                | ClientError::InvalidUrl(_)
        )
    }

    /// Failures that are the server's fault, which count against the breaker.
    pub fn is_outage(&self) -> bool {
        match self {
            ClientError::Unavailable(_) | ClientError::DeadlineExceeded(_) => true,
            // The server cannot be used, maybe because of a bad rotation.
            ClientError::Tls(_) => true,
            ClientError::Other(status) => {
                matches!(
                    status.code(),
                    Code::Internal | Code::Unknown | Code::DataLoss
                )
            }
            _ => false,
        }
    }

    fn from_status(status: Status) -> Self {
        if let Some(tls) = tls_failure(&status) {
            return ClientError::Tls(tls);
        }
        let message = status.message().to_string();
        match status.code() {
            Code::NotFound => ClientError::NotFound(message),
            Code::InvalidArgument => ClientError::InvalidArgument(message),
            Code::AlreadyExists => ClientError::AlreadyExists(message),
            Code::Unavailable => ClientError::Unavailable(message),
            Code::DeadlineExceeded => ClientError::DeadlineExceeded(message),
            // tonic's channel reports its own expiry of `grpc-timeout` as CANCELLED.
            Code::Cancelled if expired_locally(&status) => ClientError::DeadlineExceeded(message),
            // hyper cancels a request whose connection closed before it was
            // sent (a server going away; with TLS 1.3 also a server that
            // refused the client certificate right after the handshake):
            // nothing was done, so it is an outage any call may retry.
            Code::Cancelled if is_transport_error(&status) => {
                ClientError::Unavailable(format!("{CLOSED_BEFORE_SENT}: {}", error_chain(&status)))
            }
            _ => ClientError::Other(status),
        }
    }
}

impl Retryable for ClientError {
    fn is_retryable(&self) -> bool {
        matches!(
            self,
            ClientError::Unavailable(_) | ClientError::DeadlineExceeded(_)
        )
    }
}

/// One attempt's error, with what the call may retry.
#[derive(Debug)]
struct AttemptError {
    error: ClientError,
    /// Reads may also retry DEADLINE_EXCEEDED; writes only UNAVAILABLE.
    read: bool,
}

impl std::fmt::Display for AttemptError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

impl Retryable for AttemptError {
    fn is_retryable(&self) -> bool {
        match &self.error {
            ClientError::Unavailable(_) => true,
            ClientError::DeadlineExceeded(_) => self.read,
            _ => false,
        }
    }
}

/// A user-service client. Clones share one channel and one breaker.
#[derive(Debug, Clone)]
pub struct UserClient {
    grpc: UserServiceClient<Channel>,
    /// Whether the channel speaks TLS (an `https://` URL).
    tls: bool,
    timeout: Duration,
    retry: RetryPolicy,
    breaker: Arc<CircuitBreaker>,
}

impl UserClient {
    /// A client whose channel connects on first use: it never fails because
    /// the server is down, only when the URL is unusable. Must be called
    /// inside a tokio runtime.
    pub fn connect_lazy(config: ClientConfig) -> Result<Self, ClientError> {
        let url = if config.url.contains("://") {
            config.url.clone()
        } else {
            format!("http://{}", config.url)
        };
        let https = url.starts_with("https://");
        if !https && !url.starts_with("http://") {
            return Err(ClientError::InvalidUrl(format!(
                "{url}: the scheme must be http:// or https://"
            )));
        }
        if !https && (config.ca.is_some() || config.cert.is_some() || config.key.is_some()) {
            // Silently sending plaintext when certificates were asked for
            // would be worse than refusing.
            return Err(ClientError::Tls(format!(
                "a ca, cert or key is set but {url} is not https://"
            )));
        }
        let mut endpoint = Endpoint::from_shared(url.clone())
            .map_err(|e| ClientError::InvalidUrl(format!("{url}: {e}")))?
            .connect_timeout(config.timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_while_idle(true);
        if https {
            endpoint = endpoint
                .tls_config(tls_config(&config)?)
                .map_err(|e| ClientError::Tls(error_chain(&e)))?;
        }
        Ok(UserClient {
            grpc: UserServiceClient::new(endpoint.connect_lazy()),
            tls: https,
            timeout: config.timeout,
            retry: config.retry,
            breaker: Arc::new(CircuitBreaker::new(BREAKER_NAME, config.breaker)),
        })
    }

    /// Adds what an error may mean on this client's transport: over TLS, a
    /// connection closed before the request was sent is typically the
    /// server refusing the client certificate (TLS 1.3 tells a client so
    /// only after its side of the handshake, and the alert may be lost).
    fn explain(&self, error: ClientError) -> ClientError {
        match error {
            ClientError::Unavailable(message)
                if self.tls && message.starts_with(CLOSED_BEFORE_SENT) =>
            {
                ClientError::Unavailable(format!(
                    "{message} (over TLS: the server may have refused the client certificate)"
                ))
            }
            other => other,
        }
    }

    /// The breaker, to watch its state or wait until it lets calls through.
    pub fn breaker(&self) -> Arc<CircuitBreaker> {
        self.breaker.clone()
    }

    /// The user with this id.
    pub async fn get_user(&self, user_id: &str) -> Result<GetUserResponse, ClientError> {
        let request = GetUserRequest {
            user_id: user_id.to_string(),
        };
        self.call("GetUser", true, move |mut grpc, request_timeout| {
            let request = with_deadline(request.clone(), request_timeout);
            async move { grpc.get_user(request).await }
        })
        .await
    }

    /// Creates a user.
    pub async fn create_user(
        &self,
        request: CreateUserRequest,
    ) -> Result<GetUserResponse, ClientError> {
        self.call("CreateUser", false, move |mut grpc, request_timeout| {
            let request = with_deadline(request.clone(), request_timeout);
            async move { grpc.create_user(request).await }
        })
        .await
    }

    /// Replaces a user's name, age and email.
    pub async fn update_user(
        &self,
        request: UpdateUserRequest,
    ) -> Result<GetUserResponse, ClientError> {
        self.call("UpdateUser", false, move |mut grpc, request_timeout| {
            let request = with_deadline(request.clone(), request_timeout);
            async move { grpc.update_user(request).await }
        })
        .await
    }

    /// Deletes a user.
    pub async fn delete_user(&self, user_id: &str) -> Result<(), ClientError> {
        let request = DeleteUserRequest {
            user_id: user_id.to_string(),
        };
        self.call("DeleteUser", false, move |mut grpc, request_timeout| {
            let request = with_deadline(request.clone(), request_timeout);
            async move { grpc.delete_user(request).await }
        })
        .await
        .map(|_| ())
    }

    /// A page of users ordered by id (`page_size` 0: the server's default;
    /// `page_token` empty: the first page).
    pub async fn list_users(
        &self,
        page_size: i32,
        page_token: &str,
    ) -> Result<ListUsersResponse, ClientError> {
        let request = ListUsersRequest {
            page_size,
            page_token: page_token.to_string(),
        };
        self.call("ListUsers", true, move |mut grpc, request_timeout| {
            let request = with_deadline(request.clone(), request_timeout);
            async move { grpc.list_users(request).await }
        })
        .await
    }

    /// Runs one logical call: attempts through the breaker, retries with
    /// backoff, all inside the overall deadline.
    async fn call<T, F, Fut>(
        &self,
        method: &'static str,
        read: bool,
        attempt: F,
    ) -> Result<T, ClientError>
    where
        F: Fn(UserServiceClient<Channel>, Duration) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let span = tracing::info_span!(
            "user-service call",
            rpc.method = method,
            otel.kind = "client"
        );
        let deadline = Instant::now() + self.timeout;
        let mut attempts: u32 = 0;
        let mut last_error: Option<String> = None;
        let retried = async {
            let mut delays = self.retry.backoff();
            loop {
                attempts += 1;
                let error = match self.attempt(deadline, &attempt).await {
                    Ok(value) => return Ok(value),
                    Err(error) => AttemptError { error, read },
                };
                let delay = if error.is_retryable() {
                    delays.next()
                } else {
                    None
                };
                let Some(delay) = delay else {
                    return Err(error.error);
                };
                tracing::warn!(%error, delay_ms = delay.as_millis() as u64, "retrying");
                last_error = Some(error.to_string());
                tokio::time::sleep(delay).await;
            }
        };
        // The one timer of our own: it bounds the whole call, waiting for a
        // connection included (the channel's timer starts only once the
        // request is handed to a ready connection).
        match tokio::time::timeout_at(deadline, retried)
            .instrument(span)
            .await
        {
            Ok(outcome) => outcome,
            Err(_elapsed) => Err(ClientError::DeadlineExceeded(format!(
                "{method} gave up after {} ms and {attempts} attempt(s); last error: {}",
                self.timeout.as_millis(),
                last_error.as_deref().unwrap_or("no answer")
            ))),
        }
    }

    /// One attempt: ask the breaker, send with the time left, report back.
    async fn attempt<T, F, Fut>(&self, deadline: Instant, attempt: &F) -> Result<T, ClientError>
    where
        F: Fn(UserServiceClient<Channel>, Duration) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ClientError::DeadlineExceeded(
                "no time left for another attempt".into(),
            ));
        }
        let permit = self
            .breaker
            .try_acquire()
            .map_err(ClientError::BreakerOpen)?;
        // No timer of our own: the channel arms one from the request's
        // `grpc-timeout` (reported as CANCELLED, mapped back to
        // DEADLINE_EXCEEDED), and the caller's `timeout_at` bounds the rest.
        let outcome = match attempt(self.grpc.clone(), left).await {
            Ok(response) => Ok(response.into_inner()),
            Err(status) => Err(self.explain(ClientError::from_status(status))),
        };
        match &outcome {
            Err(error) if error.is_outage() => permit.failure(),
            _ => permit.success(),
        }
        outcome
    }
}

/// The channel's TLS settings, every file read and checked now.
fn tls_config(config: &ClientConfig) -> Result<ClientTlsConfig, ClientError> {
    let tls = ClientTlsConfig::new();
    let tls = match &config.ca {
        Some(path) => tls.ca_certificate(Certificate::from_pem(read_certificates("ca", path)?)),
        None => tls.with_native_roots(),
    };
    match (&config.cert, &config.key) {
        (None, None) => Ok(tls),
        (Some(cert), Some(key)) => {
            let cert = read_certificates("cert", cert)?;
            let key = read_private_key(key)?;
            Ok(tls.identity(Identity::from_pem(cert, key)))
        }
        (Some(_), None) => Err(ClientError::Tls("cert is set without key".into())),
        (None, Some(_)) => Err(ClientError::Tls("key is set without cert".into())),
    }
}

/// A PEM file with at least one certificate.
fn read_certificates(what: &str, path: &Path) -> Result<Vec<u8>, ClientError> {
    let pem = read_file(what, path)?;
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ClientError::Tls(format!("{what} {}: not PEM: {e}", path.display())))?;
    if certificates.is_empty() {
        return Err(ClientError::Tls(format!(
            "{what} {}: no PEM certificate in the file",
            path.display()
        )));
    }
    Ok(pem)
}

/// A PEM private key file; its content never reaches an error message.
fn read_private_key(path: &Path) -> Result<Vec<u8>, ClientError> {
    let pem = read_file("key", path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|_| {
        ClientError::Tls(format!(
            "key {}: no PEM private key (PKCS#8, PKCS#1 or SEC1) in the file",
            path.display()
        ))
    })?;
    Ok(pem)
}

fn read_file(what: &str, path: &Path) -> Result<Vec<u8>, ClientError> {
    std::fs::read(path)
        .map_err(|e| ClientError::Tls(format!("{what} {}: cannot read: {e}", path.display())))
}

/// The TLS failure behind a status, if that is what it is: the status
/// itself only says "transport error"; the cause is some levels down its
/// sources, as a rustls error (a certificate the client rejected) or as the
/// `InvalidData` I/O error rustls reads as (an alert from a server that
/// rejected the client: no or a wrong client certificate).
fn tls_failure(status: &Status) -> Option<String> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(error) = source {
        if let Some(rustls) = error.downcast_ref::<rustls::Error>() {
            return Some(format!("handshake with user-service failed: {rustls}"));
        }
        if let Some(io) = error.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::InvalidData
        {
            return Some(format!("handshake with user-service failed: {io}"));
        }
        source = error.source();
    }
    None
}

/// Whether the status comes from the channel's transport, not the server.
fn is_transport_error(status: &Status) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(error) = source {
        if error.is::<tonic::transport::Error>() {
            return true;
        }
        source = error.source();
    }
    false
}

/// An error and its sources on one line.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// A request carrying the time left as `grpc-timeout` and the current
/// trace context as `traceparent`.
fn with_deadline<M>(message: M, left: Duration) -> tonic::Request<M> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(left);
    common::propagation::inject_grpc(request.metadata_mut());
    request
}

/// Whether a CANCELLED status is tonic's own deadline timer firing.
fn expired_locally(status: &Status) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(error) = source {
        if error.is::<tonic::TimeoutExpired>() {
            return true;
        }
        source = error.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_matches_the_contract() {
        let permanent = [
            ClientError::NotFound("x".into()),
            ClientError::InvalidArgument("x".into()),
            ClientError::AlreadyExists("x".into()),
            ClientError::InvalidUrl("x".into()),
        ];
        for error in &permanent {
            assert!(error.is_permanent(), "{error}");
            assert!(!error.is_retryable(), "{error}");
            assert!(!error.is_outage(), "{error}");
        }
        for error in [
            ClientError::Unavailable("x".into()),
            ClientError::DeadlineExceeded("x".into()),
        ] {
            assert!(error.is_retryable() && error.is_outage() && !error.is_permanent());
        }
        assert!(ClientError::Other(Status::internal("boom")).is_outage());
        assert!(!ClientError::Other(Status::permission_denied("no")).is_outage());
    }

    #[test]
    fn writes_retry_only_unavailable() {
        let write = |error| AttemptError { error, read: false };
        let read = |error| AttemptError { error, read: true };
        assert!(write(ClientError::Unavailable("x".into())).is_retryable());
        assert!(!write(ClientError::DeadlineExceeded("x".into())).is_retryable());
        assert!(read(ClientError::DeadlineExceeded("x".into())).is_retryable());
        assert!(!read(ClientError::NotFound("x".into())).is_retryable());
    }

    #[test]
    fn statuses_map_to_variants() {
        assert!(matches!(
            ClientError::from_status(Status::not_found("u")),
            ClientError::NotFound(_)
        ));
        assert!(matches!(
            ClientError::from_status(Status::unavailable("down")),
            ClientError::Unavailable(_)
        ));
        assert!(matches!(
            ClientError::from_status(Status::cancelled("by the caller")),
            ClientError::Other(_)
        ));
    }

    #[tokio::test]
    async fn urls_without_a_scheme_get_http_and_other_schemes_are_refused() {
        assert!(
            UserClient::connect_lazy(ClientConfig {
                url: "127.0.0.1:50051".into(),
                ..ClientConfig::default()
            })
            .is_ok()
        );
        let ftp = UserClient::connect_lazy(ClientConfig {
            url: "ftp://users.example.com".into(),
            ..ClientConfig::default()
        });
        assert!(matches!(ftp, Err(ClientError::InvalidUrl(_))));
        let garbage = UserClient::connect_lazy(ClientConfig {
            url: "http://exa mple".into(),
            ..ClientConfig::default()
        });
        assert!(matches!(garbage, Err(ClientError::InvalidUrl(_))));
    }

    #[tokio::test]
    async fn tls_files_are_checked_when_the_client_is_made() {
        let https = |ca: Option<&str>, cert: Option<&str>, key: Option<&str>| {
            UserClient::connect_lazy(ClientConfig {
                url: "https://127.0.0.1:50051".into(),
                ca: ca.map(PathBuf::from),
                cert: cert.map(PathBuf::from),
                key: key.map(PathBuf::from),
                ..ClientConfig::default()
            })
        };
        let missing = https(Some("/nonexistent/ca.pem"), None, None).unwrap_err();
        assert!(
            matches!(&missing, ClientError::Tls(m) if m.contains("ca /nonexistent/ca.pem: cannot read")),
            "{missing}"
        );
        let not_pem = tempfile_with(b"not a certificate");
        let error = https(Some(not_pem.to_str().unwrap()), None, None).unwrap_err();
        assert!(error.to_string().contains("no PEM certificate"), "{error}");
        let error = https(None, Some("/c.pem"), None).unwrap_err();
        assert!(error.to_string().contains("without key"), "{error}");
        let plaintext = UserClient::connect_lazy(ClientConfig {
            url: "http://127.0.0.1:50051".into(),
            ca: Some(PathBuf::from("/ca.pem")),
            ..ClientConfig::default()
        })
        .unwrap_err();
        assert!(
            plaintext.to_string().contains("not https://"),
            "{plaintext}"
        );
        std::fs::remove_file(not_pem).ok();
    }

    fn tempfile_with(content: &[u8]) -> PathBuf {
        let path = std::env::temp_dir().join(format!(
            "user-client-test-{}-{:?}.pem",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::write(&path, content).unwrap();
        path
    }
}
