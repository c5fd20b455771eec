//! The TLS files of a broker connection: which CA to trust, and which
//! certificate (with its key) to show when the broker asks for one.
//!
//! [`TlsFiles`] is what a service's config holds (`nats_tls`, `amqp_tls`:
//! `ca`, `cert`, `key`, each a PEM file path). [`TlsFiles::load`] reads and
//! checks them before any connection is tried, so a wrong path or a file
//! that holds no certificate is one clear error naming the file, not a
//! handshake failure repeated on every reconnect. The key's content never
//! appears in an error or a log line.

use std::{
    fmt,
    path::{Path, PathBuf},
};

use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use serde::{Deserialize, Serialize};

use crate::config::ConfigError;

/// PEM files for one broker connection; all optional.
///
/// Only `ca` set: TLS with the broker's certificate checked against that CA
/// (on top of the public roots). `cert` and `key` (always both): a client
/// certificate for brokers that verify clients (mutual TLS).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsFiles {
    /// The CA certificate(s) the broker's certificate must chain to.
    pub ca: Option<PathBuf>,
    /// The client certificate (chain), shown to a broker that asks for one.
    pub cert: Option<PathBuf>,
    /// The client certificate's private key (PKCS#8, PKCS#1 or SEC1).
    pub key: Option<PathBuf>,
}

/// Why the TLS files cannot be used. Names the file, never its content.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file could not be read.
    #[error("cannot read the {what} file {}: {reason}", path.display())]
    Read {
        /// `CA`, `client certificate` or `client key`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        reason: String,
    },
    /// The file was read but holds nothing usable.
    #[error("the {what} file {} {reason}", path.display())]
    Invalid {
        /// `CA`, `client certificate` or `client key`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong, e.g. "holds no PEM certificate".
        reason: String,
    },
    /// A client certificate without its key, or a key without its certificate.
    #[error("{0}: a client certificate needs both `cert` and `key`")]
    HalfIdentity(&'static str),
}

/// The checked content of [`TlsFiles`], as the clients take it. `Debug`
/// leaves the key out.
#[derive(Clone, Default)]
pub struct TlsMaterial {
    /// The CA certificates, PEM.
    pub ca_pem: Option<String>,
    /// The client certificate chain and its key, both PEM.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("ca", &self.ca_pem.is_some())
            .field("client_certificate", &self.identity.is_some())
            .finish()
    }
}

impl TlsFiles {
    /// `true` when no file is set.
    pub fn is_empty(&self) -> bool {
        self.ca.is_none() && self.cert.is_none() && self.key.is_none()
    }

    /// The config check: `cert` and `key` come together. `section` names the
    /// key in the error (`nats_tls`, `amqp_tls`).
    pub fn validate(&self, section: &str) -> Result<(), ConfigError> {
        match (&self.cert, &self.key) {
            (Some(_), None) => Err(ConfigError::invalid(
                format!("{section}.key"),
                "(unset)",
                "a client certificate needs its key: set both cert and key",
            )),
            (None, Some(_)) => Err(ConfigError::invalid(
                format!("{section}.cert"),
                "(unset)",
                "a client key needs its certificate: set both cert and key",
            )),
            _ => Ok(()),
        }
    }

    /// Reads every file and checks that it holds what it should: at least
    /// one certificate in `ca` and `cert`, a private key in `key`.
    pub fn load(&self) -> Result<TlsMaterial, TlsError> {
        let ca_pem = match &self.ca {
            Some(path) => {
                let pem = read("CA", path)?;
                certificates("CA", path, &pem)?;
                Some(String::from_utf8(pem).map_err(|_| TlsError::Invalid {
                    what: "CA",
                    path: path.clone(),
                    reason: "is not PEM text".into(),
                })?)
            }
            None => None,
        };
        let identity = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                let cert_pem = read("client certificate", cert)?;
                certificates("client certificate", cert, &cert_pem)?;
                let key_pem = read("client key", key)?;
                // The parser's error could quote a line of the key: only say
                // that no key was found.
                PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| TlsError::Invalid {
                    what: "client key",
                    path: key.clone(),
                    reason: "holds no PEM private key".into(),
                })?;
                Some((cert_pem, key_pem))
            }
            (None, None) => None,
            (Some(_), None) => return Err(TlsError::HalfIdentity("the key is missing")),
            (None, Some(_)) => return Err(TlsError::HalfIdentity("the certificate is missing")),
        };
        Ok(TlsMaterial { ca_pem, identity })
    }
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::Read {
        what,
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Every certificate of a PEM file; an error when there is none or one is
/// malformed (the clients would silently skip it, and then trust nothing).
fn certificates(
    what: &'static str,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let invalid = |reason: String| TlsError::Invalid {
        what,
        path: path.to_path_buf(),
        reason,
    };
    let certificates = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(format!("is not valid PEM: {e}")))?;
    if certificates.is_empty() {
        return Err(invalid("holds no PEM certificate".into()));
    }
    Ok(certificates)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cert_and_key_come_together() {
        let half = TlsFiles {
            cert: Some("/c.pem".into()),
            ..Default::default()
        };
        let error = half.validate("amqp_tls").unwrap_err().to_string();
        assert!(error.contains("amqp_tls.key"), "{error}");
        assert!(TlsFiles::default().validate("amqp_tls").is_ok());
        assert!(matches!(half.load(), Err(TlsError::HalfIdentity(_))));
    }

    #[test]
    fn a_file_without_a_certificate_is_named_in_the_error() {
        let dir = std::env::temp_dir().join(format!("switchyard-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let not_pem = dir.join("ca.pem");
        std::fs::write(&not_pem, "hello").unwrap();
        let files = TlsFiles {
            ca: Some(not_pem.clone()),
            ..Default::default()
        };
        let error = files.load().unwrap_err().to_string();
        assert!(error.contains("holds no PEM certificate"), "{error}");
        assert!(error.contains(&not_pem.display().to_string()), "{error}");

        let missing = TlsFiles {
            ca: Some(dir.join("absent.pem")),
            ..Default::default()
        };
        let error = missing.load().unwrap_err().to_string();
        assert!(error.starts_with("cannot read the CA file"), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
