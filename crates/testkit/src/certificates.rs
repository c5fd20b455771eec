//! Certificates made at test time for the TLS tests: a CA, a server
//! certificate for `127.0.0.1` and `localhost`, and a client certificate,
//! all signed by that CA, plus a second CA that signed nothing (the "wrong
//! CA" of the failure tests). Written as PEM files to a directory of their
//! own, deleted on drop.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

use crate::unique;

/// PEM files of a small public-key infrastructure for one test.
#[derive(Debug)]
pub struct TestPki {
    dir: PathBuf,
}

impl TestPki {
    /// The client certificate's common name: servers that map a
    /// certificate to a user (PostgreSQL's `cert` authentication) see this.
    pub const CLIENT_NAME: &'static str = "switchyard-test-client";

    /// Generates the CA, the server and client certificates and the
    /// unrelated CA, readable by every user (a RabbitMQ node runs as
    /// `rabbitmq`).
    pub fn generate() -> Self {
        let dir = std::env::temp_dir().join(format!("switchyard-pki-{}", unique()));
        std::fs::create_dir_all(&dir).expect("create the pki directory");
        let ca = certificate_authority("switchyard test ca");
        let other_ca = certificate_authority("switchyard unrelated ca");

        let mut server = leaf("127.0.0.1", &["127.0.0.1", "localhost"]);
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server_key = KeyPair::generate().expect("generate the server key");
        let server_cert = server
            .signed_by(&server_key, &ca)
            .expect("sign the server certificate");

        let mut client = leaf(Self::CLIENT_NAME, &["localhost"]);
        client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let client_key = KeyPair::generate().expect("generate the client key");
        let client_cert = client
            .signed_by(&client_key, &ca)
            .expect("sign the client certificate");

        for (name, pem) in [
            ("ca.pem", ca.pem()),
            ("other-ca.pem", other_ca.pem()),
            ("server.pem", server_cert.pem()),
            ("server-key.pem", server_key.serialize_pem()),
            ("client.pem", client_cert.pem()),
            ("client-key.pem", client_key.serialize_pem()),
        ] {
            std::fs::write(dir.join(name), pem).expect("write a pem file");
        }
        // The broker reads them as its own user; a test directory under
        // /tmp holds nothing else.
        let _ = std::process::Command::new("chmod")
            .args(["-R", "a+rX"])
            .arg(&dir)
            .status();
        TestPki { dir }
    }

    /// The directory holding the files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The CA that signed the server and client certificates.
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// A CA that signed nothing here: trusting only it must fail.
    pub fn other_ca(&self) -> PathBuf {
        self.dir.join("other-ca.pem")
    }

    /// The server certificate (`127.0.0.1`, `localhost`).
    pub fn server_cert(&self) -> PathBuf {
        self.dir.join("server.pem")
    }

    /// The server certificate's key.
    pub fn server_key(&self) -> PathBuf {
        self.dir.join("server-key.pem")
    }

    /// The client certificate.
    pub fn client_cert(&self) -> PathBuf {
        self.dir.join("client.pem")
    }

    /// The client certificate's key.
    pub fn client_key(&self) -> PathBuf {
        self.dir.join("client-key.pem")
    }
}

impl Drop for TestPki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn certificate_authority(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca parameters");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate().expect("generate the ca key");
    CertifiedIssuer::self_signed(params, key).expect("self-sign the ca")
}

fn leaf(common_name: &str, names: &[&str]) -> CertificateParams {
    let names: Vec<String> = names.iter().map(|name| name.to_string()).collect();
    let mut params = CertificateParams::new(names).expect("certificate parameters");
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params
}
