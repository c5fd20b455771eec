//! The whole system as separate processes, wired to a test's own subjects
//! and queues on the local brokers, exporting spans to an in-test collector.

use std::{collections::BTreeSet, path::PathBuf};

use e2e::{
    collector::{CollectedSpan, OtlpCollector},
    process::{Service, free_port},
};
pub(crate) use testkit::eventually;
use testkit::{amqp_url, nats_url};
use workqueue::topology::Topology;

/// Names and files of one test run; removes its queues and files on drop.
pub(crate) struct Run {
    pub(crate) id: String,
    pub(crate) dir: PathBuf,
    pub(crate) collector: OtlpCollector,
    pub(crate) task_queue: String,
    pub(crate) data_sync_queue: String,
    pub(crate) grpc_port: u16,
    pub(crate) worker_ops_port: u16,
}

impl Run {
    pub(crate) async fn new() -> Self {
        let id = testkit::unique();
        let dir = std::env::temp_dir().join(format!("switchyard-e2e-{id}"));
        std::fs::create_dir_all(&dir).unwrap();
        Run {
            task_queue: format!("e2e_{id}_task_queue"),
            data_sync_queue: format!("e2e_{id}_data_sync"),
            collector: OtlpCollector::start().await.unwrap(),
            grpc_port: free_port().unwrap(),
            worker_ops_port: free_port().unwrap(),
            id,
            dir,
        }
    }

    /// Variables every service gets: brokers, trace export, fast span batches.
    fn common_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("NATS_URL", nats_url()),
            ("AMQP_URL", amqp_url()),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", self.collector.endpoint()),
            ("OTEL_BSP_SCHEDULE_DELAY", "200".into()),
            ("RUST_LOG", "info".into()),
            ("OPS_ADDR", format!("127.0.0.1:{}", free_port().unwrap())),
        ]
    }

    fn spawn(
        &self,
        name: &str,
        config: Option<&str>,
        extra: Vec<(&'static str, String)>,
    ) -> Service {
        let mut env = self.common_env();
        env.extend(extra);
        let mut args = Vec::new();
        let path;
        if let Some(toml) = config {
            path = self.dir.join(format!("{name}.toml"));
            std::fs::write(&path, toml).unwrap();
            args.push("--config".to_string());
            args.push(path.display().to_string());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Service::spawn(name, &args, &env, &self.dir.join("logs")).unwrap()
    }

    pub(crate) fn user_service(&self) -> Service {
        self.spawn(
            "user-service",
            None,
            vec![
                ("GRPC_ADDR", format!("127.0.0.1:{}", self.grpc_port)),
                ("HTTP_ADDR", format!("127.0.0.1:{}", free_port().unwrap())),
                (
                    "DATABASE_URL",
                    format!("sqlite://{}/users.db?mode=rwc", self.dir.display()),
                ),
                ("SWITCHYARD__DATA_SYNC_QUEUE", self.data_sync_queue.clone()),
            ],
        )
    }

    pub(crate) fn user_service_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc_port)
    }

    pub(crate) fn task_worker(&self) -> Service {
        let mut env = vec![
            ("USER_SERVICE_URL", self.user_service_url()),
            ("SWITCHYARD__QUEUE", self.task_queue.clone()),
            ("SWITCHYARD__DATA_SYNC_QUEUE", self.data_sync_queue.clone()),
        ];
        env.push(("OPS_ADDR", format!("127.0.0.1:{}", self.worker_ops_port)));
        self.spawn("task-worker", None, env)
    }

    pub(crate) fn alert_subscriber(&self) -> Service {
        // Thresholds below the simulated temperature (about 25 °C), so the
        // first reading of every sensor raises a critical alert.
        let config = format!(
            r#"
subject_prefix = "e2e.{id}.sensor.data"
alert_subject_prefix = "e2e.{id}.sensor.alert"
queue_group = "e2e-{id}-alerts"
task_queue = "{queue}"

[rules.temperature]
warning = 10.0
critical = 20.0
direction = "above"
hysteresis = 1.0
"#,
            id = self.id,
            queue = self.task_queue
        );
        self.spawn("alert-subscriber", Some(&config), vec![])
    }

    pub(crate) fn sensor_publisher(&self, owner: &str, readings: u64) -> Service {
        let config = format!(
            r#"
subject_prefix = "e2e.{id}.sensor.data"
rate_per_sec = 5.0
count = {readings}

[fleet]
sensors = 1
kinds = ["temperature"]
owners = ["{owner}"]
id_prefix = "e2e-{id}-"
spike_probability = 0.0
"#,
            id = self.id,
        );
        self.spawn("sensor-publisher", Some(&config), vec![])
    }
}

impl Drop for Run {
    /// Deletes every queue this run's services declared, and its files, even
    /// when the test failed half way.
    fn drop(&mut self) {
        let mut queues = Topology::new(self.task_queue.clone()).queue_names();
        queues.push(self.data_sync_queue.clone());
        queues.push(format!("{}.dlq", self.data_sync_queue));
        testkit::delete_queues_on_drop(amqp_url(), queues);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The services that exported spans with `trace_id`.
pub(crate) fn services_in(spans: &[CollectedSpan], trace_id: &str) -> BTreeSet<String> {
    spans
        .iter()
        .filter(|span| span.trace_id == trace_id)
        .map(|span| span.service.clone())
        .collect()
}

/// `true` when some span of `child_service` in the trace has a parent span
/// exported by `parent_service`: the context crossed from one to the other.
pub(crate) fn crosses(
    spans: &[CollectedSpan],
    trace_id: &str,
    parent_service: &str,
    child_service: &str,
) -> bool {
    let trace: Vec<&CollectedSpan> = spans.iter().filter(|s| s.trace_id == trace_id).collect();
    trace
        .iter()
        .filter(|s| s.service == child_service)
        .any(|child| {
            trace.iter().any(|parent| {
                parent.service == parent_service && parent.span_id == child.parent_span_id
            })
        })
}

/// Text of the worker's `/metrics`.
pub(crate) async fn metrics_text(port: u16) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    let request =
        format!("GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    Some(response)
}
