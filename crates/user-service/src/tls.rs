//! TLS for the gRPC and JSON servers: a certificate, its key and, for
//! mutual TLS, the CA that client certificates must chain to, all read from
//! files and read again when they change.
//!
//! Certificates are rotated by replacing the files (cert-manager updates
//! the Secret volume, an operator copies new ones in): [`ServerTls::watch`]
//! re-reads them every `tls_reload_interval` and, when their bytes changed
//! and they form a valid set, swaps in new rustls configurations.
//! Handshakes from then on present the new certificate; connections already
//! open keep the one they started with; nothing restarts. A set that does
//! not load (a half-written file, a key that does not match the
//! certificate) is logged once, counted in
//! `tls_certificate_reloads_total{outcome="rejected"}`, and the previous
//! certificate stays in service.
//!
//! Reading on an interval rather than on file events: it sees a Kubernetes
//! `..data` symlink swap, a plain `cp` and a network filesystem alike, and a
//! certificate and key written one after the other simply load together at
//! the next read. A few kilobytes every few seconds cost nothing.
//!
//! Both servers share the files but not the configuration: gRPC offers ALPN
//! `h2` (tonic's client refuses a TLS connection without it), the JSON API
//! `http/1.1`.

use std::{
    io,
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::Duration,
};

use rustls::{
    RootCertStore, ServerConfig,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier},
    sign::CertifiedKey,
};
use tokio_util::sync::CancellationToken;

use crate::metrics::TLS_CERTIFICATE_RELOADS;

/// The config keys, named in every error so the operator knows what to fix.
const CERT_KEY: &str = "tls_cert";
const KEY_KEY: &str = "tls_key";
const CLIENT_CA_KEY: &str = "tls_client_ca";

/// Where the server's TLS material lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateFiles {
    /// PEM certificate chain, the server's own certificate first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of that certificate.
    pub key: PathBuf,
    /// PEM CA certificate(s); when set, every client must present a
    /// certificate that chains to one of them (mutual TLS).
    pub client_ca: Option<PathBuf>,
}

/// Why the TLS files cannot be used; names the key and the path, never the
/// content (a private key must not reach a log).
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file cannot be read.
    #[error("{key} {}: cannot read: {source}", path.display())]
    Unreadable {
        /// The config key naming the file.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The file was read but does not hold what the key needs.
    #[error("{key} {}: {reason}", path.display())]
    Invalid {
        /// The config key naming the file.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

impl TlsError {
    fn invalid(key: &'static str, path: &Path, reason: impl Into<String>) -> Self {
        TlsError::Invalid {
            key,
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }
}

/// Which server a configuration is for: they differ in ALPN only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// The gRPC server: HTTP/2 (`h2`).
    Grpc,
    /// The JSON gateway: HTTP/1.1.
    Http,
}

impl Protocol {
    /// The label of `tls_handshake_failures_total{server}`.
    pub fn server(self) -> &'static str {
        match self {
            Protocol::Grpc => "grpc",
            Protocol::Http => "http",
        }
    }

    fn alpn(self) -> &'static [u8] {
        match self {
            Protocol::Grpc => b"h2",
            Protocol::Http => b"http/1.1",
        }
    }
}

/// What one look at the files found.
#[derive(Debug)]
pub enum Reload {
    /// Same bytes as the certificate in service (or as a set already
    /// rejected): nothing to do.
    Unchanged,
    /// New files, loaded and in service for new handshakes.
    Applied,
    /// New files that do not load; the previous certificate stays.
    Rejected(TlsError),
}

/// The server side of TLS: the configurations in service, swapped when the
/// files change. Shared by both servers' acceptors and the watcher.
#[derive(Debug)]
pub struct ServerTls {
    files: CertificateFiles,
    provider: Arc<CryptoProvider>,
    state: RwLock<State>,
}

#[derive(Debug)]
struct State {
    grpc: Arc<ServerConfig>,
    http: Arc<ServerConfig>,
    /// The bytes the configurations were built from.
    in_service: FileBytes,
    /// The last set that failed, so a bad file is reported once, not at
    /// every read.
    last_rejected: Option<(Option<FileBytes>, String)>,
}

/// The files' content at one read.
#[derive(Debug, PartialEq, Eq)]
struct FileBytes {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
}

impl ServerTls {
    /// Reads and checks the files: an error names the key and the path.
    pub fn load(files: CertificateFiles) -> Result<Self, TlsError> {
        // Explicitly ring, like tonic and lapin: never a process-wide
        // default that another dependency might have changed.
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let bytes = FileBytes::read(&files)?;
        let (grpc, http) = configurations(&files, &bytes, &provider)?;
        Ok(ServerTls {
            files,
            provider,
            state: RwLock::new(State {
                grpc,
                http,
                in_service: bytes,
                last_rejected: None,
            }),
        })
    }

    /// The files this reads.
    pub fn files(&self) -> &CertificateFiles {
        &self.files
    }

    /// Whether clients must present a certificate.
    pub fn is_mutual(&self) -> bool {
        self.files.client_ca.is_some()
    }

    /// The configuration new handshakes of `protocol` use.
    pub fn config(&self, protocol: Protocol) -> Arc<ServerConfig> {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        match protocol {
            Protocol::Grpc => state.grpc.clone(),
            Protocol::Http => state.http.clone(),
        }
    }

    /// Reads the files once; swaps the configurations when they changed and
    /// load. Logs and counts what it did.
    pub fn reload(&self) -> Reload {
        let read = FileBytes::read(&self.files);
        // Only the watcher writes; handshakes wait for the lock at most the
        // time a parse takes.
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        let outcome = match read {
            Ok(bytes) if bytes == state.in_service => {
                // Back to the files in service (a bad write undone): a new
                // bad set is worth reporting again.
                state.last_rejected = None;
                return Reload::Unchanged;
            }
            Ok(bytes) => match configurations(&self.files, &bytes, &self.provider) {
                Ok((grpc, http)) => {
                    state.grpc = grpc;
                    state.http = http;
                    state.in_service = bytes;
                    state.last_rejected = None;
                    Ok(())
                }
                Err(error) => Err((Some(bytes), error)),
            },
            Err(error) => Err((None, error)),
        };
        match outcome {
            Ok(()) => {
                metrics::counter!(TLS_CERTIFICATE_RELOADS, "outcome" => "applied").increment(1);
                tracing::info!(
                    cert = %self.files.cert.display(),
                    "tls certificate reloaded, new connections get it"
                );
                Reload::Applied
            }
            Err((bytes, error)) => {
                let seen = (bytes, error.to_string());
                if state.last_rejected.as_ref() == Some(&seen) {
                    return Reload::Unchanged;
                }
                state.last_rejected = Some(seen);
                metrics::counter!(TLS_CERTIFICATE_RELOADS, "outcome" => "rejected").increment(1);
                tracing::error!(
                    %error,
                    "tls certificate reload rejected, keeping the certificate in service"
                );
                Reload::Rejected(error)
            }
        }
    }

    /// Re-reads the files every `every` until `stop` fires.
    pub async fn watch(self: Arc<Self>, every: Duration, stop: CancellationToken) {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick is immediate: the files were just read.
        ticks.tick().await;
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = ticks.tick() => {}
            }
            // File reads block: off the runtime's worker threads.
            let tls = self.clone();
            if let Err(error) = tokio::task::spawn_blocking(move || tls.reload()).await {
                tracing::warn!(%error, "tls certificate reload panicked");
            }
        }
    }
}

impl FileBytes {
    fn read(files: &CertificateFiles) -> Result<Self, TlsError> {
        let read = |key: &'static str, path: &Path| {
            std::fs::read(path).map_err(|source| TlsError::Unreadable {
                key,
                path: path.to_path_buf(),
                source,
            })
        };
        Ok(FileBytes {
            cert: read(CERT_KEY, &files.cert)?,
            key: read(KEY_KEY, &files.key)?,
            client_ca: match &files.client_ca {
                Some(path) => Some(read(CLIENT_CA_KEY, path)?),
                None => None,
            },
        })
    }
}

/// The gRPC and HTTP configurations for one read of the files.
fn configurations(
    files: &CertificateFiles,
    bytes: &FileBytes,
    provider: &Arc<CryptoProvider>,
) -> Result<(Arc<ServerConfig>, Arc<ServerConfig>), TlsError> {
    let certified = Arc::new(certified_key(files, bytes, provider)?);
    let client_verifier = match (&files.client_ca, &bytes.client_ca) {
        (Some(path), Some(pem)) => {
            let roots = Arc::new(trust_anchors(CLIENT_CA_KEY, path, pem)?);
            let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .map_err(|e| TlsError::invalid(CLIENT_CA_KEY, path, e.to_string()))?;
            Some(verifier)
        }
        _ => None,
    };
    let config = |protocol: Protocol| {
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("ring supports TLS 1.2 and 1.3");
        let builder = match &client_verifier {
            Some(verifier) => builder.with_client_cert_verifier(verifier.clone()),
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_cert_resolver(Arc::new(ServedCertificate(certified.clone())));
        config.alpn_protocols = vec![protocol.alpn().to_vec()];
        Arc::new(config)
    };
    Ok((config(Protocol::Grpc), config(Protocol::Http)))
}

/// The chain and key, checked to belong together.
fn certified_key(
    files: &CertificateFiles,
    bytes: &FileBytes,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let chain = certificates(CERT_KEY, &files.cert, &bytes.cert)?;
    let key = PrivateKeyDer::from_pem_slice(&bytes.key).map_err(|error| {
        let reason = match error {
            rustls::pki_types::pem::Error::NoItemsFound => {
                "no PEM private key in the file (PKCS#8, PKCS#1 or SEC1)".to_string()
            }
            other => format!("not a PEM private key: {other}"),
        };
        TlsError::invalid(KEY_KEY, &files.key, reason)
    })?;
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| TlsError::invalid(KEY_KEY, &files.key, format!("unusable key: {e}")))?;
    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        // A key type whose public half rustls cannot derive: nothing to compare.
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            Ok(certified)
        }
        Err(rustls::Error::InconsistentKeys(_)) => Err(TlsError::invalid(
            KEY_KEY,
            &files.key,
            format!(
                "does not match the certificate in {CERT_KEY} {}",
                files.cert.display()
            ),
        )),
        Err(error) => Err(TlsError::invalid(
            CERT_KEY,
            &files.cert,
            format!("not a usable certificate: {error}"),
        )),
    }
}

/// Every PEM certificate in a file; at least one.
fn certificates(
    key: &'static str,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let chain = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::invalid(key, path, format!("not PEM: {e}")))?;
    if chain.is_empty() {
        return Err(TlsError::invalid(
            key,
            path,
            "no PEM certificate in the file",
        ));
    }
    Ok(chain)
}

/// The CA certificates of a file as trust anchors.
fn trust_anchors(key: &'static str, path: &Path, pem: &[u8]) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for certificate in certificates(key, path, pem)? {
        roots.add(certificate).map_err(|e| {
            TlsError::invalid(key, path, format!("not a usable CA certificate: {e}"))
        })?;
    }
    Ok(roots)
}

/// The one certificate a configuration serves, whatever the client asks
/// for (SNI is not needed to pick it).
#[derive(Debug)]
struct ServedCertificate(Arc<CertifiedKey>);

impl ResolvesServerCert for ServedCertificate {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate and its key, PEM.
    fn pair() -> (String, String) {
        let rcgen::CertifiedKey { cert, signing_key } =
            rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        (cert.pem(), signing_key.serialize_pem())
    }

    fn files(dir: &Path) -> CertificateFiles {
        CertificateFiles {
            cert: dir.join("tls.crt"),
            key: dir.join("tls.key"),
            client_ca: None,
        }
    }

    fn write(files: &CertificateFiles, (cert, key): &(String, String)) {
        std::fs::write(&files.cert, cert).unwrap();
        std::fs::write(&files.key, key).unwrap();
    }

    #[test]
    fn a_new_pair_is_applied_and_a_bad_one_reported_once() {
        let dir = tempfile::tempdir().unwrap();
        let files = files(dir.path());
        write(&files, &pair());
        let tls = ServerTls::load(files.clone()).unwrap();
        assert_eq!(
            tls.config(Protocol::Grpc).alpn_protocols,
            vec![b"h2".to_vec()]
        );
        assert_eq!(
            tls.config(Protocol::Http).alpn_protocols,
            vec![b"http/1.1".to_vec()]
        );
        assert!(matches!(tls.reload(), Reload::Unchanged));

        let served = tls.config(Protocol::Grpc);
        std::fs::write(&files.cert, "not pem").unwrap();
        assert!(matches!(
            tls.reload(),
            Reload::Rejected(TlsError::Invalid {
                key: "tls_cert",
                ..
            })
        ));
        // The same bad file again: already reported.
        assert!(matches!(tls.reload(), Reload::Unchanged));
        assert!(Arc::ptr_eq(&served, &tls.config(Protocol::Grpc)));

        // A certificate with another pair's key: named as the key's fault.
        let (cert, _) = pair();
        std::fs::write(&files.cert, cert).unwrap();
        match tls.reload() {
            Reload::Rejected(error) => {
                assert!(error.to_string().contains("does not match"), "{error}");
                assert!(error.to_string().starts_with("tls_key "), "{error}");
            }
            other => panic!("rejected, got {other:?}"),
        }

        write(&files, &pair());
        assert!(matches!(tls.reload(), Reload::Applied));
        assert!(!Arc::ptr_eq(&served, &tls.config(Protocol::Grpc)));
    }

    #[test]
    fn errors_name_key_and_path_never_the_content() {
        let dir = tempfile::tempdir().unwrap();
        let files = files(dir.path());
        let missing = ServerTls::load(files.clone()).unwrap_err().to_string();
        assert!(
            missing.starts_with("tls_cert ") && missing.contains("cannot read"),
            "{missing}"
        );

        let (cert, key) = pair();
        // The key where the certificate should be, and the reverse.
        write(&files, &(key.clone(), cert));
        let swapped = ServerTls::load(files).unwrap_err().to_string();
        assert!(swapped.contains("no PEM certificate"), "{swapped}");
        assert!(!swapped.contains("PRIVATE KEY"), "{swapped}");
    }
}
