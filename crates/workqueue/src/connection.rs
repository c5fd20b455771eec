//! The one way every service opens its AMQP connection.
//!
//! `amqp://` is plaintext; `amqps://` is TLS through lapin's rustls, the
//! broker's certificate checked against the public roots plus the CA of
//! `amqp_tls.ca`, and the client certificate of `amqp_tls.cert`/`key` shown
//! when the broker asks for one (RabbitMQ's `ssl_options.verify =
//! verify_peer`). The files are read and checked before the connection is
//! tried, so a wrong path or a file without a certificate is one error
//! naming the file; a CA that did not sign the broker's certificate fails
//! the handshake with rustls' reason (`invalid peer certificate:
//! UnknownIssuer`).
//!
//! `amqp_url` may list several nodes of one cluster, comma-separated
//! (`amqp://app:pw@rabbit-0:5672/%2f,amqp://app:pw@rabbit-1:5672/%2f`):
//! [`connect`] tries them in turn, starting after the node it reached last
//! time, and returns the first connection made. Callers run it inside
//! [`common::reconnect::keep_connected`], so after a node dies the next
//! session lands on a survivor, and when all are down the backoff applies.
//!
//! What follows the connection (channels, topology, consumers) goes through
//! [`set_up`]: a node that accepted the connection but cannot answer (a
//! restarted member still syncing, a queue whose leader is being elected)
//! fails the attempt after [`SETUP_TIMEOUT`] instead of holding the session,
//! and the reconnect loop moves on to the next node.
//!
//! Closing goes through [`close`], bounded by [`CLOSE_TIMEOUT`]: lapin waits
//! for the broker's `close-ok`, and on a connection whose node died before
//! lapin noticed, that answer never comes (a task-worker once waited there
//! for minutes instead of reconnecting).
//!
//! Used by the task publisher (task-producer, alert-subscriber), the
//! task-worker and user-service's outbox relay.

use std::{
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use common::{
    config::{ConfigError, SecretUrl},
    tls::TlsFiles,
};
use lapin::{
    Connection, ConnectionProperties,
    tcp::{OwnedIdentity, OwnedTLSConfig},
    types::{LongString, ShortString},
};

/// How long one node of the list may take to accept a connection before
/// the next one is tried (a node that died without closing its sockets
/// would otherwise hold the failover for the TCP timeout).
const NODE_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the set-up of a new connection (channels, declarations,
/// consumers) may take before the attempt is given up.
pub const SETUP_TIMEOUT: Duration = Duration::from_secs(20);

/// How long closing a connection may take (the broker's `close-ok`).
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the next [`connect`] starts in a list of nodes: one past the node
/// that answered last, so a reconnect after a node loss tries a survivor
/// first. Process-wide: every caller shares the rotation, which is fine.
static NEXT_NODE: AtomicUsize = AtomicUsize::new(0);

/// The nodes of a comma-separated `amqp_url`, blanks dropped.
pub fn nodes(url: &SecretUrl) -> Vec<SecretUrl> {
    url.expose()
        .split(',')
        .map(str::trim)
        .filter(|one| !one.is_empty())
        .map(SecretUrl::new)
        .collect()
}

/// Opens a connection to `url` (one node, or the first that answers of a
/// comma-separated list), named `name` in the management UI, with the TLS
/// files of `tls` (only for `amqps://`).
pub async fn connect(
    url: &SecretUrl,
    tls: &TlsFiles,
    name: &str,
) -> Result<Connection, lapin::Error> {
    check_scheme(url, tls).map_err(invalid)?;
    let material = tls.load().map_err(invalid)?;
    let config = OwnedTLSConfig {
        identity: material
            .identity
            .map(|(pem, key)| OwnedIdentity::PKCS8 { pem, key }),
        cert_chain: material.ca_pem,
    };
    let nodes = nodes(url);
    let start = NEXT_NODE.load(Ordering::Relaxed);
    let mut last_error = None;
    for offset in 0..nodes.len() {
        let index = (start + offset) % nodes.len();
        let node = &nodes[index];
        let attempt = Connection::connect_with_config(
            node.expose(),
            ConnectionProperties::default().with_connection_name(LongString::from(name)),
            config.clone(),
            lapin::runtime::default_runtime()?,
        );
        let error = match tokio::time::timeout(NODE_CONNECT_TIMEOUT, attempt).await {
            Ok(Ok(connection)) => {
                NEXT_NODE.store(index + 1, Ordering::Relaxed);
                return Ok(connection);
            }
            Ok(Err(error)) => error,
            Err(_) => invalid(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("{node}: no answer in {NODE_CONNECT_TIMEOUT:?}"),
            )),
        };
        if nodes.len() > 1 {
            tracing::debug!(node = %node, error = %error, "AMQP node unreachable, trying the next");
        }
        last_error = Some(error);
    }
    Err(last_error.unwrap_or_else(|| {
        invalid(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "amqp_url lists no node",
        ))
    }))
}

/// `step` (the set-up of a new connection), failed with a timeout error
/// naming `what` when it takes longer than [`SETUP_TIMEOUT`].
pub async fn set_up<T>(
    what: &str,
    step: impl std::future::Future<Output = Result<T, lapin::Error>>,
) -> Result<T, lapin::Error> {
    match tokio::time::timeout(SETUP_TIMEOUT, step).await {
        Ok(result) => result,
        Err(_) => Err(invalid(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("{what}: no answer from the broker in {SETUP_TIMEOUT:?}"),
        ))),
    }
}

/// Closes `connection` politely (so the broker flushes and forgets it at
/// once), giving up after [`CLOSE_TIMEOUT`]; an error only means the
/// connection is gone already, so it is logged at debug, never returned.
pub async fn close(connection: &Connection, reason: &str) {
    let closing = connection.close(200, ShortString::from(reason));
    match tokio::time::timeout(CLOSE_TIMEOUT, closing).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::debug!(error = %error, "closing a broken AMQP connection"),
        Err(_) => tracing::debug!("no close-ok in {CLOSE_TIMEOUT:?}, dropping the AMQP connection"),
    }
}

/// The config check of a service with `amqp_url` and `amqp_tls`: TLS files
/// only make sense with `amqps://` (lapin would ignore them on `amqp://`,
/// and the operator would believe the link encrypted).
pub fn check_scheme(url: &SecretUrl, tls: &TlsFiles) -> Result<(), ConfigError> {
    tls.validate("amqp_tls")?;
    let nodes = nodes(url);
    if nodes.is_empty() {
        return Err(ConfigError::invalid("amqp_url", url, "lists no node"));
    }
    if let Some(node) = nodes
        .iter()
        .find(|node| !matches!(node.scheme().as_str(), "amqp" | "amqps"))
    {
        return Err(ConfigError::invalid(
            "amqp_url",
            node,
            "every node needs an amqp:// or amqps:// url",
        ));
    }
    if !tls.is_empty() && nodes.iter().any(|node| node.scheme() != "amqps") {
        return Err(ConfigError::invalid(
            "amqp_url",
            url,
            "amqp_tls files are set: use an amqps:// url (TLS), or unset them",
        ));
    }
    Ok(())
}

fn invalid(error: impl std::error::Error + Send + Sync + 'static) -> lapin::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidInput, error).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_files_need_an_amqps_url() {
        let tls = TlsFiles {
            ca: Some("/etc/switchyard/ca.pem".into()),
            ..Default::default()
        };
        let plain = SecretUrl::new("amqp://app:s3cret@rabbit:5672/%2f");
        let error = check_scheme(&plain, &tls).unwrap_err().to_string();
        assert!(error.contains("amqps://"), "{error}");
        assert!(!error.contains("s3cret"), "{error}");
        let tls_url = SecretUrl::new("amqps://app:s3cret@rabbit:5671/%2f");
        assert!(check_scheme(&tls_url, &tls).is_ok());
        assert!(check_scheme(&plain, &TlsFiles::default()).is_ok());
        let mixed = SecretUrl::new("amqps://app:s3cret@a:5671/%2f,amqp://app:s3cret@b:5672/%2f");
        assert!(
            check_scheme(&mixed, &tls).is_err(),
            "every node must be amqps"
        );
    }

    #[test]
    fn a_comma_separated_url_lists_the_cluster_nodes() {
        let list = SecretUrl::new("amqp://u:p@a:5672/%2f, amqp://u:p@b:5672/%2f,");
        let nodes = nodes(&list);
        assert_eq!(nodes.len(), 2);
        assert_eq!(nodes[1].expose(), "amqp://u:p@b:5672/%2f");
        assert!(check_scheme(&list, &TlsFiles::default()).is_ok());
        let error = check_scheme(&SecretUrl::new("amqp://a,nats://b"), &TlsFiles::default())
            .unwrap_err()
            .to_string();
        assert!(error.contains("amqp://"), "{error}");
        assert!(check_scheme(&SecretUrl::new(" , "), &TlsFiles::default()).is_err());
    }
}
