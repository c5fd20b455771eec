//! The service processes of one measurement: started from the workspace's
//! binaries beside the running `bench` (the release build, with
//! scripts/bench.sh), each with an ops port of its own, their logs in the
//! run's directory, and stopped together.
//!
//! Dropping a [`Pool`] stops its processes, so a measurement that fails
//! half way (or is interrupted) leaves nothing running.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use ::e2e::process::{Service, binary, free_port};
use anyhow::Context as _;

/// How long a stopped service gets to exit cleanly before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(15);

/// Where a run's logs and config files go; removed at the end unless kept.
#[derive(Debug)]
pub(crate) struct RunDir {
    path: PathBuf,
    keep: bool,
}

impl RunDir {
    /// A fresh directory under the system's temp dir.
    pub(crate) fn new(id: &str, keep: bool) -> anyhow::Result<Self> {
        let path = std::env::temp_dir().join(format!("switchyard-bench-scale-{id}"));
        std::fs::create_dir_all(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        Ok(RunDir { path, keep })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Keeps the directory (its logs explain a failed run).
    pub(crate) fn keep(&mut self) {
        self.keep = true;
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if self.keep {
            eprintln!("scale: logs kept in {}", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Checks that `names` were built beside the running benchmark.
pub(crate) fn check_binaries(names: &[&str]) -> anyhow::Result<()> {
    for name in names {
        binary(name).context(
            "bench scale runs the services' binaries: build them with the bench \
             (cargo build --release --workspace --bins, as scripts/bench.sh does)",
        )?;
    }
    Ok(())
}

/// Running instances of one binary.
#[derive(Debug, Default)]
pub(crate) struct Pool {
    services: Vec<(Service, SocketAddr)>,
}

impl Pool {
    /// Starts `count` instances of `binary`, named `<binary>-<i>`, each with
    /// `OPS_ADDR` on a free port, `args` and `env`.
    pub(crate) fn spawn(
        binary: &str,
        count: usize,
        args: &[&str],
        env: &[(&str, String)],
        logs: &Path,
    ) -> anyhow::Result<Self> {
        let mut pool = Pool::default();
        for i in 1..=count {
            pool.spawn_one(binary, &format!("{binary}-{i}"), args, env, logs)?;
        }
        Ok(pool)
    }

    /// Starts one more instance, named `instance`.
    pub(crate) fn spawn_one(
        &mut self,
        binary: &str,
        instance: &str,
        args: &[&str],
        env: &[(&str, String)],
        logs: &Path,
    ) -> anyhow::Result<SocketAddr> {
        let ops = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let mut env = env.to_vec();
        env.push(("OPS_ADDR", ops.to_string()));
        let service = Service::spawn_as(binary, instance, args, &env, logs)?;
        self.services.push((service, ops));
        Ok(ops)
    }

    /// The ops addresses, in start order.
    pub(crate) fn ops_addrs(&self) -> Vec<SocketAddr> {
        self.services.iter().map(|(_, addr)| *addr).collect()
    }

    /// Fails naming the first instance that exited, with its last log lines.
    pub(crate) fn check_running(&mut self) -> anyhow::Result<()> {
        for (service, _) in &mut self.services {
            if !service.is_running() {
                let log = service.log();
                let tail: Vec<&str> = log.lines().rev().take(5).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                anyhow::bail!("a service exited early; its log ends:\n{}", tail.join("\n"));
            }
        }
        Ok(())
    }

    /// `true` while every instance runs.
    pub(crate) fn all_running(&mut self) -> bool {
        self.services
            .iter_mut()
            .all(|(service, _)| service.is_running())
    }

    /// Stops every instance at once (SIGTERM, then SIGKILL after a grace)
    /// and waits for them.
    pub(crate) async fn stop(mut self) {
        let services: Vec<Service> = self
            .services
            .drain(..)
            .map(|(service, _)| service)
            .collect();
        let _ = tokio::task::spawn_blocking(move || stop_all(services)).await;
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        stop_all(
            self.services
                .drain(..)
                .map(|(service, _)| service)
                .collect(),
        );
    }
}

/// SIGTERM to all, each waited for on a thread of its own: eight workers
/// stop in the time of the slowest, not of their sum.
fn stop_all(services: Vec<Service>) {
    std::thread::scope(|scope| {
        for mut service in services {
            scope.spawn(move || {
                if service.is_running() {
                    service.stop(STOP_GRACE);
                }
            });
        }
    });
}
