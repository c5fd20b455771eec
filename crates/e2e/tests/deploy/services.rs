//! The services' own configuration loaders, by binary name, and the rules a
//! loaded configuration must meet inside a container.

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    path::Path,
};

use common::{
    config::{ConfigSource, redact_url},
    telemetry::TelemetryConfig,
};
use serde_json::Value;

/// The binaries configured through a `Config` of their own.
pub(crate) const SERVICES: [&str; 6] = [
    "alert-subscriber",
    "monitor-subscriber",
    "sensor-publisher",
    "task-producer",
    "task-worker",
    "user-service",
];

/// Variables read by every service besides its config (common::telemetry).
const TELEMETRY_VARIABLES: [&str; 3] = ["LOG_FORMAT", "RUST_LOG", "OTEL_EXPORTER_OTLP_ENDPOINT"];

/// The standard variables of `service` and the keys they set.
pub(crate) fn env_keys(service: &str) -> &'static [(&'static str, &'static str)] {
    match service {
        "alert-subscriber" => alert_subscriber::ENV_KEYS,
        "monitor-subscriber" => monitor_subscriber::ENV_KEYS,
        "sensor-publisher" => sensor_publisher::ENV_KEYS,
        "task-producer" => task_producer::ENV_KEYS,
        "task-worker" => task_worker::ENV_KEYS,
        "user-service" => &user_service::ENV_KEYS,
        other => panic!("{other} is not a switchyard service"),
    }
}

/// Loads `file` and `env` as `service` does at start (its `Config` through
/// `ConfigSource`, then the telemetry settings), and returns what it loaded.
pub(crate) fn load(
    service: &str,
    file: Option<&Path>,
    env: &BTreeMap<String, String>,
) -> Result<Value, String> {
    let env: HashMap<String, String> = env.clone().into_iter().collect();
    macro_rules! load {
        ($krate:ident, $env_keys:expr) => {
            ConfigSource {
                file: file.map(Path::to_path_buf),
                env_keys: $env_keys.to_vec(),
                env: Some(env.clone()),
            }
            .load::<$krate::Config>()
            .map(|config| serde_json::to_value(&config).expect("a loaded config serializes"))
        };
    }
    let loaded = match service {
        "alert-subscriber" => load!(alert_subscriber, alert_subscriber::ENV_KEYS),
        "monitor-subscriber" => load!(monitor_subscriber, monitor_subscriber::ENV_KEYS),
        "sensor-publisher" => load!(sensor_publisher, sensor_publisher::ENV_KEYS),
        "task-producer" => load!(task_producer, task_producer::ENV_KEYS),
        "task-worker" => load!(task_worker, task_worker::ENV_KEYS),
        "user-service" => load!(user_service, user_service::ENV_KEYS),
        other => return Err(format!("{other} is not a switchyard service")),
    };
    let config = loaded.map_err(|error| error.to_string())?;
    let telemetry = TelemetryConfig::from_lookup(service, |name| env.get(name).cloned())
        .map_err(|error| error.to_string())?;
    common::telemetry::subscriber(&telemetry, std::io::sink, None)
        .map_err(|error| error.to_string())?;
    Ok(config)
}

/// The variables of `env` that `service` reads, by name (values may be
/// secret): a standard variable also in its `<NAME>_FILE` form.
pub(crate) fn variables_read(service: &str, env: &BTreeMap<String, String>) -> Vec<String> {
    env.keys()
        .filter(|name| {
            name.starts_with("SWITCHYARD__")
                || *name == "CONFIG_FILE"
                || TELEMETRY_VARIABLES.contains(&name.as_str())
                || env_keys(service).iter().any(|(variable, _)| {
                    *name == variable || name.strip_suffix("_FILE") == Some(variable)
                })
        })
        .cloned()
        .collect()
}

/// The variable that sets `key` of `service`.
pub(crate) fn variable_for(service: &str, key: &str) -> String {
    env_keys(service)
        .iter()
        .find(|(_, mapped)| *mapped == key)
        .map(|(variable, _)| variable.to_string())
        .unwrap_or_else(|| format!("SWITCHYARD__{}", key.replace('.', "__").to_uppercase()))
}

fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The host of `scheme://user:password@host:port/path`.
fn url_host(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?', '#']).next()?;
    let host_port = authority.rsplit('@').next()?;
    if let Some(bracketed) = host_port.strip_prefix('[') {
        return bracketed.split(']').next();
    }
    host_port.split(':').next()
}

/// Every string of a loaded config, with its dotted key.
pub(crate) fn walk<'a>(value: &'a Value, key: String, found: &mut Vec<(String, &'a str)>) {
    match value {
        Value::Object(map) => {
            for (field, value) in map {
                let key = if key.is_empty() {
                    field.clone()
                } else {
                    format!("{key}.{field}")
                };
                walk(value, key, found);
            }
        }
        Value::String(text) => found.push((key, text)),
        _ => {}
    }
}

/// What a configuration that loaded may still not do inside a container: a
/// URL of this very container means the deploy file left the variable out
/// (the defaults are for a developer's machine); an address bound to the
/// loopback interface cannot be reached by probes or Prometheus.
pub(crate) fn container_problems(service: &str, config: &Value) -> Vec<String> {
    let mut strings = Vec::new();
    walk(config, String::new(), &mut strings);
    let mut problems = Vec::new();
    for (key, text) in strings {
        if text.contains("://") {
            if text.split(',').filter_map(url_host).any(is_loopback_host) {
                problems.push(format!(
                    "{key} = {} is the container itself: the deploy file does not set {}",
                    redact_url(text),
                    variable_for(service, &key)
                ));
            }
        } else if key.ends_with("_addr")
            && let Ok(addr) = text.parse::<SocketAddr>()
            && addr.ip().is_loopback()
        {
            problems.push(format!(
                "{key} = {text} listens on loopback only: nothing outside the container reaches it"
            ));
        }
    }
    problems
}

/// The ports a loaded configuration listens on: each top-level `<name>_addr`, by `<name>`.
pub(crate) fn listen_ports(config: &Value) -> BTreeMap<String, u16> {
    config
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(key, value)| {
            let name = key.strip_suffix("_addr")?;
            let addr: SocketAddr = value.as_str()?.parse().ok()?;
            Some((name.to_string(), addr.port()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_hosts_are_read_past_credentials_and_brackets() {
        assert_eq!(url_host("amqp://u:p@127.0.0.1:5672/%2f"), Some("127.0.0.1"));
        assert_eq!(url_host("nats://nats:4222"), Some("nats"));
        assert_eq!(url_host("http://[::1]:50051"), Some("::1"));
        assert!(is_loopback_host("localhost") && is_loopback_host("::1"));
        assert!(!is_loopback_host("rabbitmq.switchyard.svc.cluster.local"));
    }

    #[test]
    fn defaults_in_a_container_name_the_variable_that_is_missing() {
        let config = load("task-worker", None, &BTreeMap::new()).unwrap();
        let problems = container_problems("task-worker", &config).join("\n");
        assert!(problems.contains("AMQP_URL"), "{problems}");
        assert!(problems.contains("USER_SERVICE_URL"), "{problems}");
        assert!(
            !problems.contains("guest:guest"),
            "passwords are redacted: {problems}"
        );
    }
}
