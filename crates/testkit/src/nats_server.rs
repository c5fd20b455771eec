//! A private `nats-server` for tests that restart NATS or need a server
//! configuration of their own (the deployments' partition mapping).

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::{free_port, unique};

/// A `nats-server` with JetStream (storage in a temp directory) on a free
/// port; killed and its storage deleted on drop.
#[derive(Debug)]
pub struct NatsServer {
    /// The client port.
    pub port: u16,
    store: PathBuf,
    /// The configuration file, if the server was given one.
    config: Option<PathBuf>,
    child: Option<Child>,
}

/// The deployments' nats-server configuration: the partition mapping of
/// `sensor.data.<sensor_id>` (deploy/nats/partitions.conf).
pub const PARTITIONS_CONF: &str = include_str!("../../../deploy/nats/partitions.conf");

impl NatsServer {
    /// Starts a server and returns once it accepts connections.
    pub async fn start() -> Self {
        Self::start_with(None).await
    }

    /// Starts a server with the deployments' configuration
    /// ([`PARTITIONS_CONF`]).
    pub async fn with_partitions() -> Self {
        Self::start_with(Some(PARTITIONS_CONF)).await
    }

    /// Starts a server reading `config` (nats-server's format) besides the
    /// command-line flags.
    pub async fn start_with(config: Option<&str>) -> Self {
        let store = std::env::temp_dir().join(format!("switchyard-nats-{}", unique()));
        std::fs::create_dir_all(&store).expect("create the server's store");
        let config = config.map(|text| {
            let file = store.join("nats-server.conf");
            std::fs::write(&file, text).expect("write the server's configuration");
            file
        });
        let mut server = NatsServer {
            port: free_port(),
            store,
            config,
            child: None,
        };
        // A port taken by another process between `free_port` and the bind
        // makes the server exit: try another one.
        for _ in 0..3 {
            if server.launch().await {
                return server;
            }
            server.port = free_port();
        }
        panic!("the private nats-server did not start on three free ports");
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// `tls://127.0.0.1:<port>`: TLS required, for a server whose
    /// configuration has a `tls { … }` block.
    pub fn tls_url(&self) -> String {
        format!("tls://127.0.0.1:{}", self.port)
    }

    /// Kills the server (like a crash).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and storage; returns once it listens.
    pub async fn restart(&mut self) {
        let port = self.port;
        assert!(
            self.launch().await,
            "the private nats-server did not start again on port {port}"
        );
    }

    /// Starts the process; `true` once it answers as a NATS server on its
    /// port, `false` when it exited (the port was taken) or never answered.
    async fn launch(&mut self) -> bool {
        self.kill();
        let mut command = Command::new("nats-server");
        if let Some(config) = &self.config {
            command.arg("-c").arg(config);
        }
        let child = command
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(self.store.join("jetstream"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server on PATH");
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while tokio::time::Instant::now() < deadline {
            let running = matches!(self.child.as_mut().map(Child::try_wait), Some(Ok(None)));
            if !running {
                return false;
            }
            // Its own greeting, not that of whatever else may hold the port.
            if greets_as_nats(self.port).await {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }
}

/// `true` when a NATS server answers on `port` (its first line is `INFO`).
async fn greets_as_nats(port: u16) -> bool {
    use tokio::io::AsyncReadExt;
    let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    let mut greeting = [0u8; 4];
    matches!(
        tokio::time::timeout(Duration::from_secs(2), stream.read_exact(&mut greeting)).await,
        Ok(Ok(_))
    ) && &greeting == b"INFO"
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.store);
    }
}
