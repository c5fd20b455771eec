//! `GET /config` on the ops port (docs/ARCHITECTURE.md, "What a service runs
//! with"): every value in force with where it came from (`default`, `file`,
//! `env`, `env-file`, `given`), secrets redacted, and the (re)load time that
//! an applied rules reload moves.
//!
//! The real alert-subscriber binary, as an operator runs it, on the local
//! brokers; and a service built in-process with `Application::build`, as
//! the tests build them.

use std::{net::SocketAddr, path::Path, time::Duration};

use e2e::process::{Service, free_port};
use serde_json::Value;
use testkit::{amqp_url, eventually, http_get, nats_url};
use workqueue::topology::Topology;

/// `/config` of the ops server at `addr`, once it answers.
async fn config_of(addr: SocketAddr) -> Value {
    eventually(
        "/config to answer",
        Duration::from_secs(60),
        || async move {
            tokio::net::TcpStream::connect(addr).await.ok()?;
            let (status, body) = http_get(addr, "/config").await;
            (status == 200).then(|| serde_json::from_str(&body).expect("/config is JSON"))
        },
    )
    .await
}

fn rules_file(id: &str, critical: f64) -> String {
    format!(
        r#"
subject_prefix = "cfg.{id}.sensor.data"
alert_subject_prefix = "cfg.{id}.sensor.alert"
queue_group = "cfg-{id}-alerts"
task_queue = "cfg_{id}_task_queue"

[rules.temperature]
warning = 30.0
critical = {critical:.1}
direction = "above"
hysteresis = 1.0
"#
    )
}

/// Replaces `path` the way an editor saves: a new file renamed over it.
fn save(path: &Path, text: &str) {
    let temporary = path.with_extension("swp");
    std::fs::write(&temporary, text).unwrap();
    std::fs::rename(&temporary, path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_shows_each_value_with_its_origin_and_a_rules_reload_moves_its_load_time() {
    // Arrange: a value from each source; the AMQP URL (with its password)
    // from a secret file, as Kubernetes mounts one.
    let id = testkit::unique();
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("alert-subscriber.toml");
    std::fs::write(&config_path, rules_file(&id, 40.0)).unwrap();
    let secret_path = dir.path().join("amqp_url");
    std::fs::write(&secret_path, format!("{}\n", amqp_url())).unwrap();
    let ops: SocketAddr = ([127, 0, 0, 1], free_port().unwrap()).into();
    let _queues = QueuesDeletedOnDrop(format!("cfg_{id}_task_queue"));
    let config_arg = config_path.display().to_string();
    let service = Service::spawn(
        "alert-subscriber",
        &["--config", &config_arg],
        &[
            ("NATS_URL", nats_url()),
            ("AMQP_URL_FILE", secret_path.display().to_string()),
            ("OPS_ADDR", ops.to_string()),
            ("SWITCHYARD__HANDOFF_BUFFER", "77".into()),
            ("RUST_LOG", "info".into()),
        ],
        &dir.path().join("logs"),
    )
    .unwrap();

    // Act
    let first = config_of(ops).await;

    // Assert: values, origins, redaction.
    let settings = &first["settings"];
    let setting = |key: &str| {
        let value = &settings[key];
        assert!(value.is_object(), "{key} missing from {first:#}");
        value.clone()
    };
    assert_eq!(first["service"], "alert-subscriber");
    assert_eq!(first["file"], config_arg.as_str());
    let from_file = setting("subject_prefix");
    assert_eq!(from_file["value"], format!("cfg.{id}.sensor.data"));
    assert_eq!(from_file["source"], "file");
    assert_eq!(from_file["path"], config_arg.as_str());
    let rule = setting("rules.temperature.critical");
    assert_eq!(
        (&rule["value"], &rule["source"]),
        (&40.0.into(), &"file".into())
    );
    let default = setting("mode");
    assert_eq!(
        (&default["value"], &default["source"]),
        (&"core".into(), &"default".into())
    );
    let from_env = setting("handoff_buffer");
    assert_eq!(from_env["value"], 77);
    assert_eq!(from_env["source"], "env");
    assert_eq!(from_env["variable"], "SWITCHYARD__HANDOFF_BUFFER");
    assert_eq!(setting("nats_url")["variable"], "NATS_URL");
    let secret = setting("amqp_url");
    assert_eq!(secret["source"], "env-file");
    assert_eq!(secret["variable"], "AMQP_URL_FILE");
    assert_eq!(secret["path"], secret_path.display().to_string());
    assert_eq!(secret["value"], "amqp://***@127.0.0.1:5672/%2f");
    let password = amqp_url()
        .split_once("://")
        .and_then(|(_, rest)| rest.split_once('@'))
        .and_then(|(userinfo, _)| userinfo.split_once(':'))
        .map(|(_, password)| format!(":{password}@"))
        .expect("the local AMQP URL has a password");
    assert!(!first.to_string().contains(&password), "{first:#}");
    assert_eq!(first["reloads"]["applied"], 0);
    let loaded_at = first["loaded_at_unix_ms"].as_u64().unwrap();
    let loaded_at_text = first["loaded_at"].as_str().unwrap().to_string();
    assert!(
        loaded_at_text.ends_with('Z'),
        "RFC 3339 UTC: {loaded_at_text}"
    );

    // Act: the rules are edited while it runs.
    save(&config_path, &rules_file(&id, 45.0));

    // Assert: the new rule is shown and the load time moved.
    let reloaded = eventually(
        "/config to show the reloaded rule",
        Duration::from_secs(30),
        || async {
            let report = config_of(ops).await;
            (report["settings"]["rules.temperature.critical"]["value"] == 45.0).then_some(report)
        },
    )
    .await;
    assert!(
        reloaded["loaded_at_unix_ms"].as_u64().unwrap() > loaded_at,
        "{first:#}\nthen\n{reloaded:#}"
    );
    assert_ne!(reloaded["loaded_at"], loaded_at_text.as_str());
    assert_eq!(reloaded["reloads"]["applied"], 1);
    assert_eq!(
        reloaded["settings"]["rules.temperature.critical"]["source"],
        "file"
    );
    assert_eq!(
        reloaded["settings"]["handoff_buffer"]["value"], 77,
        "keys read only at start keep their value"
    );

    // Act: a bad edit (critical under warning) is rejected...
    save(&config_path, &rules_file(&id, 20.0));
    let rejected = eventually(
        "/config to count the rejected reload",
        Duration::from_secs(30),
        || async {
            let report = config_of(ops).await;
            (report["reloads"]["rejected"] == 1).then_some(report)
        },
    )
    .await;
    // ...and changes nothing in force.
    assert_eq!(
        rejected["settings"]["rules.temperature.critical"]["value"],
        45.0
    );
    assert_eq!(rejected["loaded_at"], reloaded["loaded_at"]);
    drop(service);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_built_in_process_shows_its_given_config() {
    // Arrange: a config handed to the service directly, no file or variable.
    let id = testkit::unique();
    let config = monitor_subscriber::Config {
        nats_url: common::config::SecretUrl::new(format!(
            "nats://someone:pw-{id}@{}",
            nats_url().trim_start_matches("nats://")
        )),
        ops_addr: "127.0.0.1:0".parse().unwrap(),
        subject_prefix: format!("cfg.{id}.sensor.data"),
        ..monitor_subscriber::Config::default()
    };

    // Act
    let app = monitor_subscriber::Application::build(config)
        .await
        .unwrap();
    let report = config_of(app.ops_addr()).await;

    // Assert
    let settings = &report["settings"];
    assert_eq!(settings["subject_prefix"]["source"], "given");
    assert_eq!(settings["window"]["source"], "default");
    assert_eq!(settings["nats_url"]["source"], "given");
    assert!(
        !report.to_string().contains(&format!("pw-{id}")),
        "{report:#}"
    );
    assert!(report["service"].is_null(), "{report:#}");
}

/// Deletes the queues alert-subscriber declares for `task_queue`.
struct QueuesDeletedOnDrop(String);

impl Drop for QueuesDeletedOnDrop {
    fn drop(&mut self) {
        testkit::delete_queues_on_drop(amqp_url(), Topology::new(self.0.clone()).queue_names());
    }
}
