//! A private Prometheus (Debian's `prometheus` package) on a free port,
//! scraping one target every second, killed on `Drop`; and its HTTP query
//! API. The machine's own Prometheus, if any, is never used.

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use serde_json::Value;

/// Where the binary is: `PROMETHEUS` if set, else `prometheus` on PATH,
/// else (as root, with apt-get) installed by scripts/lib.sh's
/// `ensure_prometheus`, as scripts/check-deploy.sh does. `None` only when
/// it is missing and cannot be installed.
pub(crate) fn binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("PROMETHEUS") {
        return Some(PathBuf::from(path));
    }
    let on_path = || {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join("prometheus"))
                .find(|candidate| candidate.is_file())
        })
    };
    if let Some(found) = on_path() {
        return Some(found);
    }
    let lib = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/lib.sh");
    let installed = Command::new("bash")
        .arg("-c")
        .arg(format!(". '{}' && ensure_prometheus >&2", lib.display()))
        .status()
        .is_ok_and(|status| status.success());
    if installed { on_path() } else { None }
}

/// A running Prometheus; killed (with its temporary directory removed) on drop.
#[derive(Debug)]
pub(crate) struct Prometheus {
    child: Child,
    /// Its HTTP API.
    pub(crate) addr: SocketAddr,
    _dir: tempfile::TempDir,
    http: reqwest::Client,
}

impl Prometheus {
    /// Starts `binary` scraping `target`'s `/metrics` every second, with
    /// `labels` added to every series as a Kubernetes scrape config adds the
    /// pod's namespace and labels; returns once it is ready.
    pub(crate) async fn start(
        binary: &std::path::Path,
        target: SocketAddr,
        labels: &[(&str, &str)],
    ) -> Prometheus {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let labels: String = labels
            .iter()
            .map(|(name, value)| format!("          {name}: \"{value}\"\n"))
            .collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: user-service\n    static_configs:\n\
             \x20     - targets: [\"{target}\"]\n        labels:\n{labels}"
        );
        let config_file = dir.path().join("prometheus.yml");
        std::fs::write(&config_file, config).unwrap();
        let addr = testkit::free_addr();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start {}: {error}", binary.display()));
        let prometheus = Prometheus {
            child,
            addr,
            _dir: dir,
            http: reqwest::Client::new(),
        };
        testkit::eventually(
            "the private prometheus to be ready",
            Duration::from_secs(30),
            || async {
                let ready = prometheus
                    .http
                    .get(format!("http://{addr}/-/ready"))
                    .send()
                    .await
                    .is_ok_and(|response| response.status().is_success());
                ready.then_some(())
            },
        )
        .await;
        prometheus
    }

    /// What Prometheus logged so far (for failure messages).
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// Evaluates `query` now: the value of the first sample of the instant
    /// vector (Argo Rollouts' `result[0]`), `None` when the vector is empty.
    pub(crate) async fn first_sample(&self, query: &str) -> Option<f64> {
        let response: Value = self
            .http
            .post(format!("http://{}/api/v1/query", self.addr))
            .form(&[("query", query)])
            .send()
            .await
            .expect("prometheus answers")
            .json()
            .await
            .expect("a JSON answer");
        assert_eq!(
            response["status"], "success",
            "query {query} failed: {response}"
        );
        let data = &response["data"];
        match data["resultType"].as_str() {
            Some("vector") => data["result"][0]["value"][1]
                .as_str()
                .map(|value| value.parse().expect("a float sample")),
            Some("scalar") => data["result"][1]
                .as_str()
                .map(|value| value.parse().expect("a float sample")),
            other => panic!("query {query}: unexpected result type {other:?}: {response}"),
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
