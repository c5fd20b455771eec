//! The partition mapping alert-subscriber's consumer group relies on is the
//! same wherever a NATS server is configured — docker compose, both
//! Kubernetes overlays, the tests' private server (which reads
//! deploy/nats/partitions.conf itself) — and its partition count is the
//! `partitions` of every alert-subscriber config file that is deployed.

use std::path::Path;

use alert_subscriber::Config;
use common::config::ConfigSource;
use serde_json::Value;

use crate::sources::root;

/// The subject the mapping applies to.
const SOURCE: &str = "sensor.data.*";

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The destination of the `sensor.data.*` mapping in a nats-server config.
fn destination(conf: &str) -> String {
    let line = conf
        .lines()
        .find(|line| line.trim_start().starts_with(&format!("\"{SOURCE}\"")))
        .expect("the sensor.data.* mapping");
    let (_, value) = line.split_once(':').expect("source: destination");
    value.trim().trim_matches('"').to_string()
}

/// P in `{{partition(P,1)}}`.
fn partitions(destination: &str) -> u16 {
    let (_, rest) = destination
        .split_once("{{partition(")
        .expect("a partition() token");
    rest.split(',').next().unwrap().parse().unwrap()
}

#[test]
fn every_nats_server_gets_the_same_partition_mapping_and_every_group_its_count() {
    let root = root();
    let canonical = read(&root.join("deploy/nats/partitions.conf"));
    let mapped_to = destination(&canonical);
    assert_eq!(mapped_to, "sensor.data.{{wildcard(1)}}.{{partition(16,1)}}");
    assert_eq!(
        canonical,
        testkit::PARTITIONS_CONF,
        "the tests' private server"
    );

    let compose = read(&root.join("docker-compose.yml"));
    assert!(
        compose.contains("./deploy/nats/partitions.conf:/etc/nats/partitions.conf")
            && compose.contains("\"-c\", \"/etc/nats/partitions.conf\""),
        "compose's nats mounts and reads deploy/nats/partitions.conf"
    );

    let dev = read(&root.join("deploy/k8s/overlays/dev/nats.yaml"));
    let config_map = dev
        .split("\n---\n")
        .map(|doc| serde_norway::from_str::<Value>(doc).unwrap())
        .find(|doc| doc["kind"] == "ConfigMap" && doc["metadata"]["name"] == "nats-config")
        .expect("the dev overlay's nats-config ConfigMap");
    assert_eq!(
        config_map["data"]["partitions.conf"].as_str(),
        Some(canonical.as_str()),
        "the dev overlay carries deploy/nats/partitions.conf verbatim"
    );
    assert!(dev.contains("\"-c\", \"/etc/nats/partitions.conf\""));

    let values: Value = serde_norway::from_str(&read(
        &root.join("deploy/k8s/overlays/prod/nats/values.yaml"),
    ))
    .unwrap();
    assert_eq!(
        values["config"]["merge"]["mappings"][SOURCE].as_str(),
        Some(mapped_to.as_str()),
        "the prod NATS chart values"
    );

    let p = partitions(&mapped_to);
    for file in [
        "deploy/config/alert-rules/alert-subscriber.toml",
        "deploy/k8s/base/config/alert-subscriber.toml",
    ] {
        let config: Config = ConfigSource::isolated(Some(root.join(file)), &[], &[])
            .load()
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(config.partitions, p, "{file}: partitions");
        assert_eq!(
            config.mode,
            common::nats::DeliveryMode::Jetstream,
            "{file}: mode"
        );
    }
}
