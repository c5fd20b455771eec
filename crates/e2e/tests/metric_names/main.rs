//! Every metric name the dashboards (deploy/grafana/dashboards), the rules
//! (deploy/prometheus/rules) and the canary gates
//! (deploy/prometheus/canary-gates) read is one that a running service
//! exports: the real binaries are started on the local brokers, driven
//! through the paths that record each series (see [`system`]), and their
//! `/metrics` scraped. Not a list kept by hand: a renamed metric, or a
//! dashboard that reads one nobody exports, fails here with the file named.
//!
//! Not service metrics, and so left out: recording-rule names (`a:b:c`,
//! which must be recorded by deploy/prometheus/rules instead) and what
//! Prometheus makes itself (`up`). A histogram's series are its `_bucket`,
//! `_sum` and `_count` lines, as scraped.

#[allow(dead_code)] // only the file reading is used here
#[path = "../canary_gate/gates.rs"]
mod gates;
mod promql;
mod system;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use serde_json::Value;

/// Series Prometheus records about its scrapes, not read from a service.
const MADE_BY_PROMETHEUS: [&str; 1] = ["up"];

fn deploy_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

fn files(dir: &Path, extension: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|error| panic!("{}: {error}", dir.display()))
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == extension))
        .collect();
    files.sort();
    files
}

fn read_yaml(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap();
    serde_norway::from_str(&text).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

/// Every `expr` string anywhere in a Grafana dashboard.
fn dashboard_exprs(value: &Value, found: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, value) in map {
                match value {
                    Value::String(expr) if key == "expr" => found.push(expr.clone()),
                    other => dashboard_exprs(other, found),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| dashboard_exprs(item, found)),
        _ => {}
    }
}

/// What each file reads: metric name → the files that use it; and the
/// recording rules the rule files define.
fn names_used() -> (BTreeMap<String, BTreeSet<String>>, BTreeSet<String>) {
    let deploy = deploy_dir();
    let mut used: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut note = |file: &str, expr: &str| {
        for name in promql::metric_names(expr) {
            used.entry(name).or_default().insert(file.to_string());
        }
    };
    let mut recorded = BTreeSet::new();
    for path in files(&deploy.join("prometheus/rules"), "yaml") {
        let shown = format!(
            "deploy/prometheus/rules/{}",
            path.file_name().unwrap().to_string_lossy()
        );
        let rules = read_yaml(&path);
        for group in rules["groups"].as_array().into_iter().flatten() {
            for rule in group["rules"].as_array().into_iter().flatten() {
                note(&shown, rule["expr"].as_str().unwrap_or_default());
                if let Some(record) = rule["record"].as_str() {
                    recorded.insert(record.to_string());
                }
            }
        }
    }
    for path in files(&deploy.join("grafana/dashboards"), "json") {
        let shown = format!(
            "deploy/grafana/dashboards/{}",
            path.file_name().unwrap().to_string_lossy()
        );
        let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
            .unwrap_or_else(|error| panic!("{shown}: {error}"));
        let mut exprs = Vec::new();
        dashboard_exprs(&dashboard, &mut exprs);
        assert!(!exprs.is_empty(), "{shown}: no panel queries");
        exprs.iter().for_each(|expr| note(&shown, expr));
    }
    for gate in gates::load() {
        note(
            "deploy/prometheus/canary-gates/analysis-template.yaml",
            &gate.query,
        );
    }
    (used, recorded)
}

/// The series names in a Prometheus text exposition.
fn exported_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter_map(|line| line.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_name_in_dashboards_rules_and_gates_is_exported_by_a_service() {
    // Arrange: what the deploy files read.
    let (used, recorded) = names_used();
    assert!(used.len() > 10, "too few names found: {used:?}");

    // Act: the services, driven until they export what is wanted (or time
    // is up: then the assertion below names what is missing).
    let wanted: BTreeSet<String> = used
        .keys()
        .filter(|name| !name.contains(':') && !MADE_BY_PROMETHEUS.contains(&name.as_str()))
        .cloned()
        .collect();
    let scrapes = system::run_and_scrape(&wanted).await;

    // Assert
    let mut exported: BTreeMap<String, BTreeSet<&str>> = BTreeMap::new();
    for (service, text) in &scrapes {
        for name in exported_names(text) {
            exported.entry(name).or_default().insert(service);
        }
    }
    let mut problems = Vec::new();
    for (name, files) in &used {
        let files: Vec<&str> = files.iter().map(String::as_str).collect();
        if name.contains(':') {
            if !recorded.contains(name) {
                problems.push(format!(
                    "{name} (in {}) looks like a recording rule, but no rule records it",
                    files.join(", ")
                ));
            }
        } else if MADE_BY_PROMETHEUS.contains(&name.as_str()) {
            continue;
        } else if let Some(services) = exported.get(name) {
            println!(
                "{name}: exported by {services:?}, used in {}",
                files.join(", ")
            );
        } else {
            problems.push(format!(
                "{name} (in {}) is exported by no service",
                files.join(", ")
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "{} problem(s):\n  - {}\nexported: {:?}",
        problems.len(),
        problems.join("\n  - "),
        exported.keys().collect::<Vec<_>>()
    );
}
