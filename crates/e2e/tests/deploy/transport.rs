//! What the prod overlay promises (deploy/README.md, "TLS in production"),
//! read from the configuration each service really loads there: every
//! connection it opens or serves is TLS, with the client certificate the
//! brokers and user-service ask for, PostgreSQL's certificate is verified,
//! and no credential sits in the container's environment (a Secret is
//! mounted and read through `<NAME>_FILE` instead).

use serde_json::Value;

use crate::sources::Container;

fn scheme(url: &str) -> &str {
    url.split_once("://").map_or("", |(scheme, _)| scheme)
}

/// The scheme of the first URL of a comma-separated list whose scheme is
/// not `wanted` (`None`: all of them are).
fn other_scheme<'a>(urls: &'a str, wanted: &str) -> Option<&'a str> {
    urls.split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .map(scheme)
        .find(|scheme| !scheme.eq_ignore_ascii_case(wanted))
}

/// The `ca`, `cert` and `key` of a TLS section that are not set.
fn unset_tls_files(config: &Value, section: &str) -> Vec<String> {
    ["ca", "cert", "key"]
        .into_iter()
        .filter(|file| config[section][file].as_str().is_none_or(str::is_empty))
        .map(|file| format!("{section}.{file}"))
        .collect()
}

/// A URL's query parameter.
fn query_parameter<'a>(url: &'a str, name: &str) -> Option<&'a str> {
    let (_, query) = url.split_once('?')?;
    query
        .split('#')
        .next()?
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

/// Where the loaded `config` of a service, run by `container`, breaks the
/// promise. Only the connections the service has are judged.
pub(crate) fn problems(config: &Value, container: &Container) -> Vec<String> {
    let mut problems = Vec::new();
    let mut need_tls = |url_key: &str, scheme: &str, section: &str, why: &str| {
        let Some(url) = config[url_key].as_str() else {
            return;
        };
        if let Some(other) = other_scheme(url, scheme) {
            problems.push(format!(
                "{url_key} is not {scheme}:// ({other}://): the connection would be plaintext"
            ));
        }
        let unset = unset_tls_files(config, section);
        if !unset.is_empty() {
            problems.push(format!("{} not set: {why}", unset.join(", ")));
        }
    };
    need_tls(
        "nats_url",
        "tls",
        "nats_tls",
        "the NATS servers verify client certificates against switchyard-ca",
    );
    need_tls(
        "amqp_url",
        "amqps",
        "amqp_tls",
        "RabbitMQ refuses a client without a certificate (fail_if_no_peer_cert)",
    );
    need_tls(
        "user_service_url",
        "https",
        "user_service_tls",
        "user-service requires a client certificate (tls_client_ca)",
    );
    // user-service's own servers.
    if config.get("tls_reload_interval").is_some() {
        for key in ["tls_cert", "tls_key", "tls_client_ca"] {
            if config[key].as_str().is_none_or(str::is_empty) {
                problems.push(format!(
                    "{key} not set: gRPC and the JSON API must serve mutual TLS"
                ));
            }
        }
    }
    if let Some(url) = config["database_url"].as_str() {
        if !matches!(scheme(url), "postgres" | "postgresql") {
            problems.push(format!(
                "database_url is not PostgreSQL (scheme {:?})",
                scheme(url)
            ));
        } else {
            if query_parameter(url, "sslmode") != Some("verify-full") {
                problems.push(
                    "database_url has no sslmode=verify-full: the server's certificate and name go unchecked"
                        .to_string(),
                );
            }
            if query_parameter(url, "sslrootcert").is_none_or(str::is_empty) {
                problems.push(
                    "database_url has no sslrootcert: the CA of the database's certificate"
                        .to_string(),
                );
            }
        }
    }
    if !container.secret_variables.is_empty() {
        problems.push(format!(
            "variables from a Secret ({}): mount the Secret and name its files with <NAME>_FILE",
            container
                .secret_variables
                .iter()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    problems
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn plaintext_missing_certificates_and_secret_variables_are_named() {
        let config = json!({
            "nats_url": "tls://a:4222,nats://b:4222",
            "nats_tls": {"ca": "/tls/ca.crt", "cert": null, "key": null},
            "amqp_url": "amqps://u:p@r:5671/%2f",
            "amqp_tls": {"ca": "/tls/ca.crt", "cert": "/tls/tls.crt", "key": "/tls/tls.key"},
            "database_url": "postgres://u:p@db/app?sslmode=require",
        });
        let container = Container {
            secret_variables: ["AMQP_URL".to_string()].into(),
            ..Container::default()
        };
        let problems = problems(&config, &container).join("\n");
        assert!(problems.contains("nats_url is not tls://"), "{problems}");
        assert!(
            problems.contains("nats_tls.cert, nats_tls.key not set"),
            "{problems}"
        );
        assert!(!problems.contains("amqp"), "{problems}");
        assert!(problems.contains("sslmode=verify-full"), "{problems}");
        assert!(problems.contains("no sslrootcert"), "{problems}");
        assert!(
            problems.contains("variables from a Secret (AMQP_URL)"),
            "{problems}"
        );
        assert!(
            !problems.contains("u:p"),
            "no credential printed: {problems}"
        );
    }
}
