//! The service's configuration: defaults < TOML file < environment.
//!
//! Every key is top level and snake_case; durations are text with their
//! unit (`request_timeout = "5s"`), and a key of the retired `*_ms` form is
//! refused at load with the name of its replacement. Standard variables:
//! `GRPC_ADDR`, `HTTP_ADDR`, `OPS_ADDR`, `DATABASE_URL`, `AMQP_URL`; any key
//! also as `SWITCHYARD__<KEY>` (e.g. `SWITCHYARD__REQUEST_TIMEOUT=5s`).
//!
//! TLS: `tls_cert` and `tls_key` (file paths, e.g.
//! `SWITCHYARD__TLS_CERT=/etc/user-service/tls/tls.crt`) turn it on for the
//! gRPC server and the JSON API alike; `tls_client_ca` adds mutual TLS.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use common::{
    codec::{DEFAULT_MAX_PAYLOAD, validate_max_message_bytes},
    config::{ConfigError, SecretUrl, Validate, duration},
};
use serde::{Deserialize, Serialize};

use crate::{
    store::{Backend, sqlite_path},
    tls::CertificateFiles,
};

/// Environment variables and the keys they set.
pub const ENV_KEYS: [(&str, &str); 8] = [
    ("GRPC_ADDR", "grpc_addr"),
    ("HTTP_ADDR", "http_addr"),
    ("OPS_ADDR", "ops_addr"),
    ("DATABASE_URL", "database_url"),
    ("AMQP_URL", "amqp_url"),
    ("AMQP_TLS_CA", "amqp_tls.ca"),
    ("AMQP_TLS_CERT", "amqp_tls.cert"),
    ("AMQP_TLS_KEY", "amqp_tls.key"),
];

/// Configuration of one user-service process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// gRPC listen address (`user.v1.UserService`, health, reflection).
    pub grpc_addr: SocketAddr,
    /// JSON-over-HTTP gateway listen address (`/v1/users`).
    pub http_addr: SocketAddr,
    /// Ops HTTP listen address (`/healthz`, `/readyz`, `/metrics`).
    pub ops_addr: SocketAddr,
    /// `sqlite://path/file.db` (created with its directory when missing) or
    /// `postgres://user:password@host:5432/db`.
    pub database_url: SecretUrl,
    /// Largest pool of database connections.
    pub db_max_connections: u32,
    /// How long a query waits for a database connection before the call
    /// fails with `UNAVAILABLE`.
    #[serde(with = "duration")]
    pub db_acquire_timeout: Duration,
    /// Users `GetUser` keeps in memory; 0 turns the read cache off. Changes
    /// through any replica invalidate it (see `read_cache`).
    pub read_cache_capacity: usize,
    /// Longest a cached user is served without reading the database again.
    #[serde(with = "duration")]
    pub read_cache_ttl: Duration,
    /// RabbitMQ, where the outbox relay publishes `data_sync` events.
    pub amqp_url: SecretUrl,
    /// The queue of user change events (durable, no arguments: the
    /// declaration plain clients make, so theirs and ours agree).
    pub data_sync_queue: String,
    /// How often the relay looks for events left in the outbox (by a crash,
    /// a broker outage, or another replica) when no commit woke it.
    #[serde(with = "duration")]
    pub outbox_poll_interval: Duration,
    /// Events the relay reads per round trip to the database.
    pub outbox_batch_size: u32,
    /// Server-side deadline of a call; a caller's shorter `grpc-timeout`
    /// wins. Also bounds each JSON gateway request.
    #[serde(with = "duration")]
    pub request_timeout: Duration,
    /// Largest gRPC message accepted or sent, in bytes; larger requests are
    /// refused with `OUT_OF_RANGE` before they are decoded and counted in
    /// `messages_rejected_total{reason="too_large"}`. Also the JSON
    /// gateway's body limit.
    pub max_message_bytes: usize,
    /// On shutdown, how long health reports `NOT_SERVING` while calls are
    /// still answered, so load balancers stop sending new work first.
    #[serde(with = "duration")]
    pub drain_delay: Duration,
    /// On shutdown, how long in-flight calls may take to finish.
    #[serde(with = "duration")]
    pub shutdown_grace: Duration,
    /// PEM certificate chain (the server's certificate first) of the gRPC
    /// server and the JSON API; with `tls_key`, both serve TLS only.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificate(s): when set, both servers require a client
    /// certificate issued by one of them (mutual TLS).
    pub tls_client_ca: Option<PathBuf>,
    /// How often the TLS files are read again; changed files that load
    /// replace the certificate for new connections.
    #[serde(with = "duration")]
    pub tls_reload_interval: Duration,
    /// CA and client certificate of an `amqps://` `amqp_url` (`AMQP_TLS_CA`,
    /// `AMQP_TLS_CERT`, `AMQP_TLS_KEY`; docs/ARCHITECTURE.md).
    pub amqp_tls: common::tls::TlsFiles,
    /// `classic` (default) or `quorum`: the type `data_sync_queue` is
    /// declared with; must match the task-workers' (docs/ARCHITECTURE.md).
    pub queue_type: workqueue::topology::QueueType,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            grpc_addr: SocketAddr::from(([0, 0, 0, 0], 50051)),
            http_addr: SocketAddr::from(([0, 0, 0, 0], 8080)),
            ops_addr: SocketAddr::from(([0, 0, 0, 0], 9104)),
            database_url: SecretUrl::new("sqlite://data/users.db?mode=rwc"),
            db_max_connections: 10,
            db_acquire_timeout: Duration::from_secs(3),
            read_cache_capacity: 10_000,
            read_cache_ttl: Duration::from_secs(5),
            amqp_url: SecretUrl::new("amqp://guest:guest@127.0.0.1:5672/%2f"),
            data_sync_queue: "data_sync".to_string(),
            outbox_poll_interval: Duration::from_secs(1),
            outbox_batch_size: 100,
            request_timeout: Duration::from_secs(10),
            max_message_bytes: DEFAULT_MAX_PAYLOAD,
            drain_delay: Duration::from_secs(1),
            shutdown_grace: Duration::from_secs(20),
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            tls_reload_interval: Duration::from_secs(10),
            amqp_tls: common::tls::TlsFiles::default(),
            queue_type: workqueue::topology::QueueType::Classic,
        }
    }
}

impl Config {
    /// The TLS files, when TLS is on (validation ensures certificate and key
    /// come together).
    pub fn certificate_files(&self) -> Option<CertificateFiles> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(CertificateFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: self.tls_client_ca.clone(),
            }),
            _ => None,
        }
    }
}

impl Validate for Config {
    fn validate(&self) -> Result<(), ConfigError> {
        workqueue::connection::check_scheme(&self.amqp_url, &self.amqp_tls)?;
        let backend = Backend::of(&self.database_url)
            .map_err(|e| ConfigError::invalid("database_url", &self.database_url, e.to_string()))?;
        if backend == Backend::Sqlite && sqlite_path(self.database_url.expose()).is_none() {
            return Err(ConfigError::invalid(
                "database_url",
                &self.database_url,
                "in-memory SQLite is not supported: every pooled connection would see its own empty database",
            ));
        }
        if self.db_max_connections == 0 {
            return Err(ConfigError::invalid(
                "db_max_connections",
                0,
                "must be at least 1",
            ));
        }
        if !matches!(self.amqp_url.scheme().as_str(), "amqp" | "amqps") {
            return Err(ConfigError::invalid(
                "amqp_url",
                &self.amqp_url,
                "must start with amqp:// or amqps://",
            ));
        }
        if self.data_sync_queue.is_empty() || self.data_sync_queue.len() > 255 {
            return Err(ConfigError::invalid(
                "data_sync_queue",
                &self.data_sync_queue,
                "must be 1 to 255 bytes",
            ));
        }
        if self.outbox_batch_size == 0 {
            return Err(ConfigError::invalid(
                "outbox_batch_size",
                0,
                "must be at least 1",
            ));
        }
        for (key, value) in [
            ("request_timeout", self.request_timeout),
            ("outbox_poll_interval", self.outbox_poll_interval),
            ("db_acquire_timeout", self.db_acquire_timeout),
            ("tls_reload_interval", self.tls_reload_interval),
        ] {
            if value.is_zero() {
                return Err(ConfigError::invalid(key, 0, "must be more than 0"));
            }
        }
        validate_max_message_bytes(self.max_message_bytes)?;
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => {
                return Err(ConfigError::invalid(
                    "tls_key",
                    "unset",
                    "must be set with tls_cert",
                ));
            }
            (None, Some(_)) => {
                return Err(ConfigError::invalid(
                    "tls_cert",
                    "unset",
                    "must be set with tls_key",
                ));
            }
            _ => {}
        }
        if self.tls_client_ca.is_some() && self.tls_cert.is_none() {
            return Err(ConfigError::invalid(
                "tls_client_ca",
                "set",
                "mutual TLS needs tls_cert and tls_key too",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use common::config::ConfigSource;

    use super::*;

    fn load(env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        ConfigSource::isolated(None, &ENV_KEYS, env).load()
    }

    #[test]
    fn defaults_are_valid_and_standard_variables_apply() {
        let defaults = load(&[]).unwrap();
        assert_eq!(defaults, Config::default());
        let config = load(&[
            ("DATABASE_URL", "postgres://postgres@db:5432/users"),
            ("GRPC_ADDR", "127.0.0.1:6000"),
            ("SWITCHYARD__REQUEST_TIMEOUT", "2500ms"),
            ("SWITCHYARD__DATA_SYNC_QUEUE", "data_sync_test"),
        ])
        .unwrap();
        assert_eq!(config.database_url.scheme(), "postgres");
        assert_eq!(config.grpc_addr.port(), 6000);
        assert_eq!(config.request_timeout, Duration::from_millis(2500));
        assert_eq!(config.data_sync_queue, "data_sync_test");
    }

    #[test]
    fn bad_values_are_named() {
        let error = load(&[("DATABASE_URL", "mysql://db/users")]).unwrap_err();
        assert!(error.to_string().contains("database_url"), "{error}");
        let error = load(&[("DATABASE_URL", "sqlite::memory:")]).unwrap_err();
        assert!(error.to_string().contains("in-memory"), "{error}");
        let error = load(&[("SWITCHYARD__REQUEST_TIMEOUT", "0")]).unwrap_err();
        assert!(error.to_string().contains("request_timeout"), "{error}");
        let error = load(&[("SWITCHYARD__READ_CACHE_TTL", "5")]).unwrap_err();
        assert!(error.to_string().contains("no unit"), "{error}");
    }

    #[test]
    fn durations_are_written_with_their_unit() {
        let file = tempfile::NamedTempFile::with_suffix(".toml").unwrap();
        std::fs::write(
            file.path(),
            "shutdown_grace = \"45s\"\ndrain_delay = \"1m30s\"\nread_cache_ttl = \"250ms\"\n",
        )
        .unwrap();
        let config: Config =
            ConfigSource::isolated(Some(file.path().to_path_buf()), &ENV_KEYS, &[])
                .load()
                .unwrap();
        assert_eq!(config.shutdown_grace, Duration::from_secs(45));
        assert_eq!(config.drain_delay, Duration::from_secs(90));
        assert_eq!(config.read_cache_ttl, Duration::from_millis(250));
    }

    #[test]
    fn tls_files_come_as_a_set() {
        let config = load(&[
            ("SWITCHYARD__TLS_CERT", "/tls/tls.crt"),
            ("SWITCHYARD__TLS_KEY", "/tls/tls.key"),
            ("SWITCHYARD__TLS_CLIENT_CA", "/tls/ca.crt"),
            ("SWITCHYARD__TLS_RELOAD_INTERVAL", "30s"),
        ])
        .unwrap();
        let files = config.certificate_files().unwrap();
        assert_eq!(files.cert, PathBuf::from("/tls/tls.crt"));
        assert_eq!(files.client_ca, Some(PathBuf::from("/tls/ca.crt")));
        assert_eq!(config.tls_reload_interval, Duration::from_secs(30));
        assert!(load(&[]).unwrap().certificate_files().is_none());

        let error = load(&[("SWITCHYARD__TLS_CERT", "/tls/tls.crt")]).unwrap_err();
        assert!(error.to_string().contains("tls_key"), "{error}");
        let error = load(&[("SWITCHYARD__TLS_CLIENT_CA", "/tls/ca.crt")]).unwrap_err();
        assert!(error.to_string().contains("tls_client_ca"), "{error}");
    }

    #[test]
    fn passwords_do_not_print() {
        let config = load(&[("DATABASE_URL", "postgres://app:s3cret@db/users")]).unwrap();
        assert!(!format!("{config:?}").contains("s3cret"));
    }
}
