//! A deploy file written for an older release: every key of the retired
//! unit-in-the-name convention (`lease_ttl_ms = 5000`, `window_secs = 60`)
//! stops its service at start with an error naming what to write instead,
//! through each service's own loader, whether the key comes from a
//! `SWITCHYARD__…` variable or from the config file.

use std::collections::BTreeMap;

use crate::services;

/// Every key a service read before durations carried their unit, and what
/// replaced it (docs/ARCHITECTURE.md, "Configuration").
const RETIRED: &[(&str, &str, &str)] = &[
    ("alert-subscriber", "lease_ttl_ms", "lease_ttl"),
    ("alert-subscriber", "publish_timeout_ms", "publish_timeout"),
    ("alert-subscriber", "drain_grace_ms", "shutdown_grace"),
    ("monitor-subscriber", "window_secs", "window"),
    (
        "monitor-subscriber",
        "summary_interval_ms",
        "summary_interval",
    ),
    ("monitor-subscriber", "drain_grace_ms", "shutdown_grace"),
    ("sensor-publisher", "publish_timeout_ms", "publish_timeout"),
    ("sensor-publisher", "drain_grace_ms", "shutdown_grace"),
    ("task-producer", "publish_timeout_ms", "publish_timeout"),
    ("task-producer", "job.duration_ms", "duration"),
    ("task-worker", "retry_base_delay_ms", "retry_base_delay"),
    ("task-worker", "retry_max_delay_ms", "retry_max_delay"),
    ("task-worker", "finished_ttl_ms", "finished_ttl"),
    ("task-worker", "max_sleep_ms", "max_sleep"),
    ("task-worker", "shutdown_grace_ms", "shutdown_grace"),
    (
        "task-worker",
        "user_service_timeout_ms",
        "user_service_timeout",
    ),
    (
        "user-service",
        "db_acquire_timeout_ms",
        "db_acquire_timeout",
    ),
    ("user-service", "read_cache_ttl_ms", "read_cache_ttl"),
    (
        "user-service",
        "outbox_poll_interval_ms",
        "outbox_poll_interval",
    ),
    ("user-service", "request_timeout_ms", "request_timeout"),
    ("user-service", "drain_delay_ms", "drain_delay"),
    ("user-service", "shutdown_grace_ms", "shutdown_grace"),
];

/// What the error must say for `old`: the old key and `new = "<example>"`.
fn expected(old: &str, new: &str) -> (String, String) {
    let example = if old.ends_with("_secs") {
        "60s"
    } else {
        "250ms"
    };
    (old.to_string(), format!("{new} = \"{example}\""))
}

/// The error `service` gives for `error`, or a note that it started.
fn refusal(service: &str, loaded: Result<serde_json::Value, String>) -> String {
    match loaded {
        Ok(_) => format!("{service} started with a retired key"),
        Err(error) => error,
    }
}

#[test]
fn every_retired_variable_stops_its_service_naming_the_replacement() {
    for (service, old, new) in RETIRED {
        let variable = format!("SWITCHYARD__{}", old.replace('.', "__").to_uppercase());
        let env = BTreeMap::from([(variable.clone(), "5000".to_string())]);
        let error = refusal(service, services::load(service, None, &env));
        let (key, replacement) = expected(old, new);
        assert!(
            error.contains(&format!("config key {key} is no longer read"))
                && error.contains(&replacement),
            "{service} given {variable}: {error}"
        );
    }
}

#[test]
fn every_retired_key_in_a_config_file_stops_its_service_naming_the_replacement() {
    let dir = tempfile::tempdir().unwrap();
    for (service, old, new) in RETIRED {
        let toml = match old.split_once('.') {
            Some((table, key)) => format!("[{table}]\n{key} = 5000\n"),
            None => format!("{old} = 5000\n"),
        };
        let file = dir.path().join(format!("{service}.toml"));
        std::fs::write(&file, toml).unwrap();
        let error = refusal(
            service,
            services::load(service, Some(&file), &BTreeMap::new()),
        );
        let (key, replacement) = expected(old, new);
        assert!(
            error.contains(&format!("config key {key} is no longer read"))
                && error.contains(&replacement),
            "{service} given {old} in {}: {error}",
            file.display()
        );
    }
}
