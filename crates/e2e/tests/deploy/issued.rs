//! The Secrets cert-manager will issue: every `Certificate` among the
//! rendered objects writes its Secret (`spec.secretName`) with `tls.crt`,
//! `tls.key` and `ca.crt` once the cluster runs. The Secret is not in the
//! rendered objects, yet pods mount it and KEDA reads it; this stands in for
//! it, with real PEM made at test time (testkit's certificates), so a
//! container that names the key where the certificate belongs, or a file the
//! Secret does not have, fails here as it would in the cluster.

use serde_json::{Value, json};
use testkit::TestPki;

use crate::sources::{kind, name};

/// The keys of a cert-manager Secret (`kubernetes.io/tls`, plus the CA).
pub(crate) const ISSUED_KEYS: [&str; 3] = ["tls.crt", "tls.key", "ca.crt"];

/// The Secrets the Certificates among `objects` will make, in the namespace
/// of each, holding `pki`'s server certificate, its key and its CA.
pub(crate) fn issued_secrets(objects: &[Value], pki: &TestPki) -> Vec<Value> {
    let read = |path: std::path::PathBuf| std::fs::read_to_string(path).expect("a test pem file");
    let (cert, key, ca) = (
        read(pki.server_cert()),
        read(pki.server_key()),
        read(pki.ca()),
    );
    objects
        .iter()
        .filter(|object| kind(object) == "Certificate")
        .filter_map(|certificate| {
            let secret_name = certificate["spec"]["secretName"].as_str()?;
            let mut metadata = json!({
                "name": secret_name,
                "annotations": {"cert-manager.io/certificate-name": name(certificate)},
            });
            if let Some(namespace) = certificate["metadata"]["namespace"].as_str() {
                metadata["namespace"] = json!(namespace);
            }
            Some(json!({
                "apiVersion": "v1",
                "kind": "Secret",
                "type": "kubernetes.io/tls",
                "metadata": metadata,
                "stringData": {
                    ISSUED_KEYS[0]: cert,
                    ISSUED_KEYS[1]: key,
                    ISSUED_KEYS[2]: ca,
                },
            }))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::{object_data, parse_yaml_stream};

    #[test]
    fn each_certificate_issues_a_secret_with_the_three_keys() {
        let objects = parse_yaml_stream(
            "apiVersion: cert-manager.io/v1\nkind: Certificate\nmetadata: {name: web}\n\
             spec: {secretName: web-tls, issuerRef: {name: ca}}\n---\n\
             apiVersion: v1\nkind: ConfigMap\nmetadata: {name: other}\n",
        )
        .unwrap();
        let pki = TestPki::generate();
        let secrets = issued_secrets(&objects, &pki);
        assert_eq!(secrets.len(), 1);
        assert_eq!(name(&secrets[0]), "web-tls");
        let data = object_data(&secrets[0]);
        for key in ISSUED_KEYS {
            assert!(data[key].contains("-----BEGIN "), "{key}: {:?}", data[key]);
        }
        assert!(data["tls.key"].contains("PRIVATE KEY"));
    }
}
