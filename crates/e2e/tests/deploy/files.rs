//! The files a service reads at run time must be files of its container: the
//! value of a `<NAME>_FILE` variable (a credential kept out of the
//! environment), the TLS files (`nats_tls`, `amqp_tls`, `user_service_tls`,
//! user-service's `tls_cert`, `tls_key`, `tls_client_ca`), the NATS
//! credentials files (`nats_auth.*_file`), and the files PostgreSQL's URL
//! names (`sslrootcert`, `sslcert`, `sslkey`). Each path is followed through
//! the container's mounts to the file this test wrote for the mounted
//! ConfigMap or Secret (or the issued one, `issued.rs`). The `_FILE` values
//! are then loaded by the service's own `Config`, and the TLS files are read
//! by the loaders the services use at start, so a path to nowhere, a key
//! the Secret lacks, or a private key named where a certificate belongs
//! fails here, naming the container, the key and the path.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use common::tls::TlsFiles;
use serde_json::Value;
use user_service::tls::{CertificateFiles, ServerTls};

use crate::{
    services::{env_keys, variable_for, walk},
    sources::Container,
};

/// The environment `service` gets in `container`, each `<NAME>_FILE` (of a
/// standard variable NAME of the service) pointing at the file this test
/// reads for it; and what could not be followed.
pub(crate) fn with_mounted_files(
    service: &str,
    container: &Container,
) -> (BTreeMap<String, String>, Vec<String>) {
    let mut env = container.env.clone();
    let mut problems = Vec::new();
    for (variable, _) in env_keys(service) {
        let file_variable = format!("{variable}_FILE");
        let Some(path) = container
            .env
            .get(&file_variable)
            .filter(|path| !path.is_empty())
        else {
            continue;
        };
        match container.resolve(Path::new(path)) {
            Ok(file) => {
                env.insert(file_variable, file.host.display().to_string());
            }
            Err(why) => problems.push(format!("{file_variable}={path}: {why}")),
        }
    }
    (env, problems)
}

/// Whether `key` (dotted, of a loaded config) names a file the service reads.
fn is_file_key(key: &str) -> bool {
    let (section, last) = key.rsplit_once('.').unwrap_or(("", key));
    last.ends_with("_file")
        || (section.ends_with("_tls") && matches!(last, "ca" | "cert" | "key"))
        || (section.is_empty() && matches!(last, "tls_cert" | "tls_key" | "tls_client_ca"))
}

/// The files PostgreSQL's URL names: (parameter, path).
fn database_files(url: &str) -> Vec<(String, String)> {
    let Some((_, query)) = url.split_once('?') else {
        return Vec::new();
    };
    query
        .split('#')
        .next()
        .unwrap_or_default()
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .filter(|(name, path)| {
            matches!(*name, "sslrootcert" | "sslcert" | "sslkey") && !path.is_empty()
        })
        .map(|(name, path)| (name.to_string(), path.to_string()))
        .collect()
}

/// What is wrong with the files the loaded `config` of `service` reads in
/// `container`: each must be a mounted file, and the TLS files must hold
/// what their loaders expect.
pub(crate) fn read_problems(service: &str, config: &Value, container: &Container) -> Vec<String> {
    let mut problems = Vec::new();
    // Container path -> the file this test reads for it.
    let mut found: BTreeMap<String, PathBuf> = BTreeMap::new();
    let mut named = Vec::new();
    let mut strings = Vec::new();
    walk(config, String::new(), &mut strings);
    for (key, text) in strings {
        if is_file_key(&key) && !text.is_empty() {
            named.push((
                format!("{key} ({})", variable_for(service, &key)),
                text.to_string(),
            ));
        }
    }
    if let Some(url) = config["database_url"].as_str() {
        for (parameter, path) in database_files(url) {
            named.push((format!("database_url {parameter}"), path));
        }
    }
    for (what, path) in named {
        match container.resolve(Path::new(&path)) {
            Ok(file) => {
                found.insert(path, file.host);
            }
            Err(why) => problems.push(format!("{what} = {path}: {why}")),
        }
    }
    // Messages name the container's paths, not this test's scratch files.
    let in_container = |message: String| {
        found.iter().fold(message, |message, (path, host)| {
            message.replace(&host.display().to_string(), path)
        })
    };
    let host = |value: &Value| -> Option<Option<PathBuf>> {
        match value.as_str() {
            None => Some(None),
            Some(path) => found.get(path).cloned().map(Some),
        }
    };
    for (section, value) in config.as_object().into_iter().flatten() {
        if !section.ends_with("_tls") || !value.is_object() {
            continue;
        }
        // A file that did not resolve is reported above already.
        let (Some(ca), Some(cert), Some(key)) = (
            host(&value["ca"]),
            host(&value["cert"]),
            host(&value["key"]),
        ) else {
            continue;
        };
        if let Err(error) = (TlsFiles { ca, cert, key }).load() {
            problems.push(in_container(format!("{section}: {error}")));
        }
    }
    if let (Some(Some(cert)), Some(Some(key)), Some(client_ca)) = (
        host(&config["tls_cert"]),
        host(&config["tls_key"]),
        host(&config["tls_client_ca"]),
    ) && let Err(error) = ServerTls::load(CertificateFiles {
        cert,
        key,
        client_ca,
    }) {
        problems.push(in_container(error.to_string()));
    }
    if let Some(url) = config["database_url"].as_str()
        && let Some((_, path)) = database_files(url)
            .into_iter()
            .find(|(name, _)| name == "sslrootcert")
        && let Some(ca) = found.get(&path)
        && let Err(error) = (TlsFiles {
            ca: Some(ca.clone()),
            ..TlsFiles::default()
        })
        .load()
    {
        problems.push(in_container(format!("database_url sslrootcert: {error}")));
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_keys_are_told_from_the_other_settings() {
        for key in [
            "nats_tls.ca",
            "amqp_tls.key",
            "user_service_tls.cert",
            "tls_cert",
            "tls_client_ca",
            "nats_auth.creds_file",
            "nats_auth.nkey_file",
        ] {
            assert!(is_file_key(key), "{key}");
        }
        for key in [
            "tls_reload_interval",
            "nats_url",
            "rules.temperature.critical",
            "ca",
        ] {
            assert!(!is_file_key(key), "{key}");
        }
    }

    #[test]
    fn the_files_of_a_postgres_url_are_its_ssl_parameters() {
        let files = database_files(
            "postgres://u:p@db:5432/app?sslmode=verify-full&sslrootcert=/etc/tls/ca.crt&sslkey=",
        );
        assert_eq!(
            files,
            vec![("sslrootcert".into(), "/etc/tls/ca.crt".into())]
        );
        assert!(database_files("postgres://u:p@db:5432/app").is_empty());
    }
}
