//! A private PostgreSQL server for the tests of TLS and password
//! authentication; the machine's server (127.0.0.1:5432, trust auth) is
//! never reconfigured.
//!
//! `initdb` into a temp directory, two roles and their databases made in
//! single-user mode, then `postgres` on a free port of 127.0.0.1 only, with
//! `ssl = on` (the server certificate of a [`TestPki`]) and a `pg_hba.conf`
//! that lets clients in over TLS only:
//!
//! - [`PostgresServer::password_url`]: role `switchyard` with a password of
//!   this server (SCRAM-SHA-256), owner of database `switchyard`;
//! - [`PostgresServer::certificate_url`]: role [`TestPki::CLIENT_NAME`]
//!   authenticated by its client certificate alone (`cert`: signed by the
//!   test CA, common name = role), owner of database `certified`.
//!
//! There is no `host` line, so a connection without TLS is refused
//! (`no pg_hba.conf entry … no encryption`).
//!
//! PostgreSQL will not run as root. When the tests do (CI runs them as
//! root), every PostgreSQL program runs as the `postgres` user through
//! `setpriv`, and the directory is handed to that user first.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::{TestPki, free_port, unique};

/// The role that logs in with a password.
const PASSWORD_USER: &str = "switchyard";
/// Its database.
const PASSWORD_DATABASE: &str = "switchyard";
/// The database of the role that logs in with its client certificate.
const CERTIFICATE_DATABASE: &str = "certified";
/// The user PostgreSQL runs as when the tests run as root.
const SERVER_USER: &str = "postgres";

/// A PostgreSQL server of one test, requiring TLS; stopped and its
/// directory deleted on drop (a failing test included).
#[derive(Debug)]
pub struct PostgresServer {
    /// The TCP port on 127.0.0.1.
    pub port: u16,
    dir: PathBuf,
    password: String,
    bin: PathBuf,
    child: Option<Child>,
}

impl PostgresServer {
    /// Creates the cluster and starts it with `pki`'s server certificate
    /// (trusting `pki`'s CA for client certificates); returns once it
    /// accepts connections.
    pub async fn start(pki: &TestPki) -> Self {
        let dir = std::env::temp_dir().join(format!("switchyard-postgres-{}", unique()));
        std::fs::create_dir_all(&dir).expect("create the server's directory");
        let mut server = PostgresServer {
            port: free_port(),
            password: format!("pg-{}", unique()),
            bin: bin_dir(),
            dir,
            child: None,
        };
        server.install_certificates(pki);
        server.write_hba();
        if running_as_root() {
            // initdb creates `data` inside: the directory must be the
            // server user's, and the key its own with mode 0600.
            run(Command::new("chown")
                .arg("-R")
                .arg(format!("{SERVER_USER}:{SERVER_USER}"))
                .arg(&server.dir));
        }
        let setup = server.clone_for_setup();
        tokio::task::spawn_blocking(move || setup.create_cluster())
            .await
            .expect("the cluster set-up does not panic");
        // A port taken between `free_port` and the bind makes the server
        // exit: try another one.
        for _ in 0..3 {
            if server.launch().await {
                return server;
            }
            server.port = free_port();
        }
        panic!(
            "the private postgresql did not start on three free ports; its log:\n{}",
            server.log()
        );
    }

    /// `postgres://switchyard:<password>@127.0.0.1:<port>/switchyard`:
    /// password authentication, no TLS parameters (the test adds them).
    pub fn password_url(&self) -> String {
        format!(
            "postgres://{PASSWORD_USER}:{}@127.0.0.1:{}/{PASSWORD_DATABASE}",
            self.password, self.port
        )
    }

    /// `postgres://switchyard-test-client@127.0.0.1:<port>/certified`: no
    /// password; the client certificate (`sslcert`, `sslkey`) logs in.
    pub fn certificate_url(&self) -> String {
        format!(
            "postgres://{}@127.0.0.1:{}/{CERTIFICATE_DATABASE}",
            TestPki::CLIENT_NAME,
            self.port
        )
    }

    /// The password of [`PostgresServer::password_url`]'s role: unique to
    /// this server, so a test can look for it in what a service printed.
    pub fn password(&self) -> &str {
        &self.password
    }

    /// What the server logged so far (connections refused, and why).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("postgres.log")).unwrap_or_default()
    }

    /// The server's copies of the certificates: PostgreSQL wants its key
    /// owned by itself and readable by nobody else, which the shared
    /// [`TestPki`] files (readable by all, for RabbitMQ) are not.
    fn install_certificates(&self, pki: &TestPki) {
        for (from, to) in [
            (pki.server_cert(), "server.pem"),
            (pki.server_key(), "server-key.pem"),
            (pki.ca(), "ca.pem"),
        ] {
            std::fs::copy(&from, self.dir.join(to)).expect("copy a certificate file");
        }
        set_mode(&self.dir.join("server-key.pem"), 0o600);
    }

    /// TLS only: a role with its password, or the client certificate's
    /// role with the certificate; the first line a connection matches
    /// decides.
    fn write_hba(&self) {
        let hba = format!(
            "# type   database  user                      address       method\n\
             hostssl  all       \"{cert_user}\"  127.0.0.1/32  cert\n\
             hostssl  all       all                       127.0.0.1/32  scram-sha-256\n",
            cert_user = TestPki::CLIENT_NAME,
        );
        std::fs::write(self.dir.join("pg_hba.conf"), hba).expect("write pg_hba.conf");
    }

    /// What the blocking set-up needs, without the child handle.
    fn clone_for_setup(&self) -> ClusterSetup {
        ClusterSetup {
            dir: self.dir.clone(),
            bin: self.bin.clone(),
            password: self.password.clone(),
        }
    }

    /// Starts `postgres`; `true` once it accepts connections, `false` when
    /// it exited (its port was taken) or never became ready.
    async fn launch(&mut self) -> bool {
        self.stop();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("postgres.log"))
            .expect("open the server's log");
        let dir = &self.dir;
        let settings = [
            "listen_addresses=127.0.0.1".to_string(),
            format!("port={}", self.port),
            // No Unix socket: nothing but TCP reaches this server.
            "unix_socket_directories=".to_string(),
            "ssl=on".to_string(),
            format!("ssl_cert_file={}", dir.join("server.pem").display()),
            format!("ssl_key_file={}", dir.join("server-key.pem").display()),
            format!("ssl_ca_file={}", dir.join("ca.pem").display()),
            format!("hba_file={}", dir.join("pg_hba.conf").display()),
            // A test's data is thrown away: no need to survive a crash.
            "fsync=off".to_string(),
            "synchronous_commit=off".to_string(),
            "full_page_writes=off".to_string(),
            "log_connections=on".to_string(),
        ];
        let mut command = as_server_user(&self.bin.join("postgres"));
        command.arg("-D").arg(dir.join("data"));
        for setting in &settings {
            command.arg("-c").arg(setting);
        }
        let child = command
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start postgres");
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while tokio::time::Instant::now() < deadline {
            let running = matches!(self.child.as_mut().map(Child::try_wait), Some(Ok(None)));
            if !running {
                return false;
            }
            if self.accepts_connections().await {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    /// `pg_isready`: the server answers a connection attempt (a refused
    /// login counts: it is up).
    async fn accepts_connections(&self) -> bool {
        let mut command = Command::new(self.bin.join("pg_isready"));
        command
            .args(["-h", "127.0.0.1", "-t", "2", "-p"])
            .arg(self.port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        tokio::task::spawn_blocking(move || command.status().is_ok_and(|s| s.success()))
            .await
            .unwrap_or(false)
    }

    /// Immediate shutdown (SIGQUIT: the server's children stop and its
    /// shared memory is released), then SIGKILL if it lingers.
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-s", "QUIT"])
            .arg(child.id().to_string())
            .status();
        for _ in 0..100 {
            if matches!(child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `initdb` and the roles, off the async runtime (they take a second).
struct ClusterSetup {
    dir: PathBuf,
    bin: PathBuf,
    password: String,
}

impl ClusterSetup {
    fn create_cluster(&self) {
        run(as_server_user(&self.bin.join("initdb"))
            .arg("-D")
            .arg(self.dir.join("data"))
            .args([
                "--username=switchyard_admin",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
                "--no-instructions",
            ])
            .current_dir(&self.dir));
        // Single-user mode reads one statement per line; each line commits
        // on its own (CREATE DATABASE cannot run in a transaction). A role
        // owning its database owns that database's `public` schema too, so
        // it can migrate it.
        let statements = format!(
            "CREATE ROLE {PASSWORD_USER} LOGIN PASSWORD '{password}';\n\
             CREATE DATABASE {PASSWORD_DATABASE} OWNER {PASSWORD_USER};\n\
             CREATE ROLE \"{cert_user}\" LOGIN;\n\
             CREATE DATABASE {CERTIFICATE_DATABASE} OWNER \"{cert_user}\";\n",
            password = self.password,
            cert_user = TestPki::CLIENT_NAME,
        );
        let mut command = as_server_user(&self.bin.join("postgres"));
        command
            .arg("--single")
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-c", "unix_socket_directories=", "postgres"])
            .current_dir(&self.dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("start postgres in single-user mode");
        {
            use std::io::Write;
            let mut stdin = child.stdin.take().expect("the backend's stdin");
            stdin
                .write_all(statements.as_bytes())
                .expect("send the statements");
        }
        let output = child.wait_with_output().expect("single-user postgres ends");
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        // The backend exits 0 even when a statement failed.
        assert!(
            output.status.success() && !said.contains("ERROR:"),
            "creating the roles failed: {said}"
        );
    }
}

/// A command for one of PostgreSQL's programs, run as [`SERVER_USER`] when
/// this process is root.
fn as_server_user(program: &Path) -> Command {
    if running_as_root() {
        let mut command = Command::new("setpriv");
        command
            .arg(format!("--reuid={SERVER_USER}"))
            .arg(format!("--regid={SERVER_USER}"))
            .arg("--init-groups")
            .arg(program);
        command
    } else {
        Command::new(program)
    }
}

/// Runs `command` to its end; panics with its output when it fails.
fn run(command: &mut Command) {
    let output = command
        .output()
        .unwrap_or_else(|error| panic!("cannot run {command:?}: {error}"));
    assert!(
        output.status.success(),
        "{command:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .expect("set a file's mode");
}

/// The effective user of this process is root (the owner of
/// `/proc/self`).
fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|meta| meta.uid() == 0)
}

/// Where `initdb` and `postgres` are: Debian keeps the server's programs
/// out of `PATH`, in `/usr/lib/postgresql/<major>/bin` (the newest major
/// wins); elsewhere they are on `PATH`.
fn bin_dir() -> PathBuf {
    let newest = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let major: u32 = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((major, bin))
        })
        .max_by_key(|(major, _)| *major);
    match newest {
        Some((_, bin)) => bin,
        None => {
            let on_path = Command::new("initdb")
                .arg("--version")
                .output()
                .is_ok_and(|out| out.status.success());
            assert!(
                on_path,
                "PostgreSQL's server programs (initdb, postgres, pg_isready) are neither in \
                 /usr/lib/postgresql/<major>/bin nor on PATH: install the postgresql package"
            );
            PathBuf::new()
        }
    }
}
