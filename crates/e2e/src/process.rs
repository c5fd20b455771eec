//! The workspace's binaries as child processes of a test.
//!
//! `cargo test --workspace` builds every binary before it runs any test, so
//! they sit next to the test executable's `deps/` folder. A [`Service`] is
//! stopped with SIGTERM (the graceful path the services implement) when it
//! is dropped, and killed if it does not exit within a few seconds. Its
//! resident memory is read from `/proc` ([`Service::rss_bytes`]).

use std::{
    fs::File,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::Context as _;

/// Path of a workspace binary built by cargo beside the running test (or
/// beside the running binary, for a tool such as `chaos`).
pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // target/<profile>/deps/<test> -> target/<profile>/<name>; a binary
    // sits in target/<profile> itself.
    let mut dir = exe.parent().context("the executable has no directory")?;
    if dir.ends_with("deps") {
        dir = dir
            .parent()
            .context("test executable has no target directory")?;
    }
    let path = dir.join(name);
    anyhow::ensure!(
        path.exists(),
        "binary {} not found: build the workspace first (cargo test --workspace builds it)",
        path.display()
    );
    Ok(path)
}

/// A free TCP port on 127.0.0.1 (free when asked; bind soon).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A running binary; stopped on drop.
#[derive(Debug)]
pub struct Service {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Service {
    /// Starts binary `name` with `args` and `env` (added to this process's
    /// environment), its output going to `<log_dir>/<name>.log`.
    pub fn spawn(
        name: &str,
        args: &[&str],
        env: &[(&str, String)],
        log_dir: &Path,
    ) -> anyhow::Result<Self> {
        Self::spawn_as(name, name, args, env, log_dir)
    }

    /// Like [`Service::spawn`], for one of several instances of a binary:
    /// named `instance` in messages, its output in `<log_dir>/<instance>.log`.
    pub fn spawn_as(
        name: &str,
        instance: &str,
        args: &[&str],
        env: &[(&str, String)],
        log_dir: &Path,
    ) -> anyhow::Result<Self> {
        Self::spawn_program(&binary(name)?, instance, args, env, log_dir)
    }

    /// Like [`Service::spawn_as`], for a program given by its path (another
    /// build of a service, say).
    pub fn spawn_program(
        program: &Path,
        instance: &str,
        args: &[&str],
        env: &[(&str, String)],
        log_dir: &Path,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(log_dir)?;
        let log = log_dir.join(format!("{instance}.log"));
        let out = File::create(&log)?;
        let child = Command::new(program)
            .args(args)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .env("LOG_FORMAT", "json")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("cannot start {}", program.display()))?;
        Ok(Service {
            name: instance.to_string(),
            child,
            log,
        })
    }

    /// What the service logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `true` while the process runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Resident memory now (`VmRSS` of `/proc/<pid>/status`), in bytes.
    pub fn rss_bytes(&self) -> anyhow::Result<u64> {
        proc_status_bytes(self.child.id(), "VmRSS:")
    }

    /// The highest resident memory since the process started (`VmHWM`), in
    /// bytes.
    pub fn peak_rss_bytes(&self) -> anyhow::Result<u64> {
        proc_status_bytes(self.child.id(), "VmHWM:")
    }

    /// SIGKILL: a crash, nothing drained.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits up to `grace` for a clean exit, then kills.
    pub fn stop(&mut self, grace: Duration) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if !self.is_running() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("{} did not stop within {grace:?}, killing it", self.name);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One `<field> <n> kB` line of `/proc/<pid>/status`, in bytes (Linux only).
fn proc_status_bytes(pid: u32, field: &str) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.trim().strip_suffix("kB"))
        .with_context(|| format!("no {field} in {path}"))?
        .trim()
        .parse()?;
    Ok(kib * 1024)
}

impl Drop for Service {
    fn drop(&mut self) {
        if self.is_running() {
            self.stop(Duration::from_secs(10));
        }
    }
}
