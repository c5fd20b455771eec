//! Certificates made at test time for the TLS tests, written as PEM files
//! to a directory of their own: a CA with a server certificate (for
//! `127.0.0.1` and `localhost`) and a client certificate, and a second,
//! unrelated CA with a client certificate of its own (the "wrong CA").
//! [`Pki::rotate_server`] issues a new server certificate into the same
//! files, as cert-manager does; the rustls clients here see which
//! certificate a server presents.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tokio_rustls::TlsConnector;
use user_service::Config;

/// The file names in [`Pki::dir`].
pub(crate) const CA: &str = "ca.pem";
pub(crate) const SERVER_CERT: &str = "tls.crt";
pub(crate) const SERVER_KEY: &str = "tls.key";
pub(crate) const CLIENT_CERT: &str = "client.pem";
pub(crate) const CLIENT_KEY: &str = "client-key.pem";
pub(crate) const OTHER_CA: &str = "other-ca.pem";
pub(crate) const OTHER_CLIENT_CERT: &str = "other-client.pem";
pub(crate) const OTHER_CLIENT_KEY: &str = "other-client-key.pem";

/// One test's certificates.
#[derive(Debug)]
pub(crate) struct Pki {
    dir: tempfile::TempDir,
    ca: CertifiedIssuer<'static, KeyPair>,
    /// The server certificate the files hold now.
    pub(crate) server: CertificateDer<'static>,
}

impl Pki {
    pub(crate) fn generate() -> Self {
        let dir = tempfile::tempdir().expect("a temp dir");
        let ca = authority("user-service test ca");
        let other_ca = authority("an unrelated ca");
        let (client, client_key) = issue(&ca, Role::Client);
        let (other_client, other_client_key) = issue(&other_ca, Role::Client);
        let pki = Pki {
            server: CertificateDer::from(Vec::new()),
            dir,
            ca,
        };
        for (name, pem) in [
            (CA, pki.ca.pem()),
            (OTHER_CA, other_ca.pem()),
            (CLIENT_CERT, client),
            (CLIENT_KEY, client_key),
            (OTHER_CLIENT_CERT, other_client),
            (OTHER_CLIENT_KEY, other_client_key),
        ] {
            std::fs::write(pki.path(name), pem).unwrap();
        }
        let mut pki = pki;
        pki.rotate_server();
        pki
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Issues a new server certificate and key and replaces the files (each
    /// written beside and renamed over, so no read sees half a file);
    /// returns the new certificate.
    pub(crate) fn rotate_server(&mut self) -> CertificateDer<'static> {
        let (cert, key) = issue(&self.ca, Role::Server);
        self.replace(SERVER_KEY, key.as_bytes());
        self.replace(SERVER_CERT, cert.as_bytes());
        self.server = CertificateDer::from_pem_slice(cert.as_bytes()).unwrap();
        self.server.clone()
    }

    /// Replaces a file's content at once.
    pub(crate) fn replace(&self, name: &str, content: &[u8]) {
        let staged = self.path(&format!(".{name}.new"));
        std::fs::write(&staged, content).unwrap();
        std::fs::rename(&staged, self.path(name)).unwrap();
    }

    /// Sets the service's TLS keys to these files; `mutual`: client
    /// certificates from this CA required.
    pub(crate) fn serve(&self, config: &mut Config, mutual: bool) {
        config.tls_cert = Some(self.path(SERVER_CERT));
        config.tls_key = Some(self.path(SERVER_KEY));
        config.tls_client_ca = mutual.then(|| self.path(CA));
        config.tls_reload_interval = std::time::Duration::from_millis(100);
    }

    /// A rustls client that trusts the test CA, offers `alpn`, and shows
    /// the client certificate `identity` (a pair of file names) if given.
    pub(crate) fn rustls_client(
        &self,
        alpn: &[u8],
        identity: Option<(&str, &str)>,
    ) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        for certificate in CertificateDer::pem_file_iter(self.path(CA)).unwrap() {
            roots.add(certificate.unwrap()).unwrap();
        }
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
        let mut config = match identity {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => builder
                .with_client_auth_cert(
                    CertificateDer::pem_file_iter(self.path(cert))
                        .unwrap()
                        .map(Result::unwrap)
                        .collect(),
                    PrivateKeyDer::from_pem_file(self.path(key)).unwrap(),
                )
                .unwrap(),
        };
        config.alpn_protocols = vec![alpn.to_vec()];
        Arc::new(config)
    }

    pub(crate) fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// The certificate `addr` presents to a new connection.
pub(crate) async fn served_certificate(
    addr: SocketAddr,
    client: Arc<rustls::ClientConfig>,
) -> CertificateDer<'static> {
    let tls = handshake(addr, client).await.expect("a tls handshake");
    let (_, session) = tls.get_ref();
    session.peer_certificates().expect("a server certificate")[0].clone()
}

/// One HTTP/1.1 request over TLS (`Connection: close`); the status and the
/// body, or the I/O error of a refused handshake.
pub(crate) async fn https_request(
    addr: SocketAddr,
    client: Arc<rustls::ClientConfig>,
    method: &str,
    path: &str,
) -> std::io::Result<(u16, String)> {
    let mut tls = handshake(addr, client).await?;
    let request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    tls.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    tls.read_to_string(&mut response).await?;
    let status = response
        .get(9..12)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

async fn handshake(
    addr: SocketAddr,
    client: Arc<rustls::ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::IpAddress(addr.ip().into());
    TlsConnector::from(client).connect(name, tcp).await
}

#[derive(Debug, Clone, Copy)]
enum Role {
    Server,
    Client,
}

fn authority(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

/// A certificate signed by `ca` and its key, both PEM.
fn issue(ca: &CertifiedIssuer<'static, KeyPair>, role: Role) -> (String, String) {
    let (name, usage) = match role {
        Role::Server => ("127.0.0.1", ExtendedKeyUsagePurpose::ServerAuth),
        Role::Client => ("task-worker", ExtendedKeyUsagePurpose::ClientAuth),
    };
    let mut params =
        CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.extended_key_usages = vec![usage];
    let key = KeyPair::generate().unwrap();
    let certificate = params.signed_by(&key, ca).unwrap();
    (certificate.pem(), key.serialize_pem())
}
