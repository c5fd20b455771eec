//! A listening socket that hands its server only connections that finished
//! the TLS handshake.
//!
//! The handshakes run in tasks of their own, each bounded by
//! [`HANDSHAKE_TIMEOUT`]: a client that connects and says nothing, speaks
//! plaintext, or presents no (or a wrong) client certificate costs the
//! server a task for a moment and a count in
//! `tls_handshake_failures_total{server}`, never a stalled accept loop. Each
//! handshake takes the configuration in service when it starts, so a
//! rotated certificate reaches every connection made after the reload.
//!
//! The same [`TlsListener`] feeds tonic (as a stream of connections) and
//! axum (as a [`axum::serve::Listener`]).

use std::{io, net::SocketAddr, sync::Arc, time::Duration};

use futures::Stream;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::mpsc,
    task::JoinSet,
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tokio_util::sync::CancellationToken;

use crate::{
    metrics::TLS_HANDSHAKE_FAILURES,
    tls::{Protocol, ServerTls},
};

/// Longest a client may take to finish its handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Finished handshakes waiting for the server to take them.
const READY_CONNECTIONS: usize = 64;

/// How long a refused connection is drained before it is closed (see
/// [`close_gently`]).
const REFUSAL_LINGER: Duration = Duration::from_secs(1);

/// Connections that completed the TLS handshake, in the order they did.
#[derive(Debug)]
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local_addr: SocketAddr,
}

impl TlsListener {
    /// Accepts on `listener` and shakes hands with `tls`'s configuration for
    /// `protocol`, until `stop` fires (the socket closes then).
    pub fn start(
        listener: TcpListener,
        tls: Arc<ServerTls>,
        protocol: Protocol,
        stop: CancellationToken,
    ) -> io::Result<Self> {
        let local_addr = listener.local_addr()?;
        let (ready_tx, ready) = mpsc::channel(READY_CONNECTIONS);
        tokio::spawn(accept_loop(listener, tls, protocol, ready_tx, stop));
        Ok(TlsListener { ready, local_addr })
    }

    /// The connections as the stream tonic's `serve_with_incoming` takes.
    pub fn into_stream(mut self) -> impl Stream<Item = io::Result<TlsStream<TcpStream>>> {
        futures::stream::poll_fn(move |cx| {
            self.ready
                .poll_recv(cx)
                .map(|ready| ready.map(|(stream, _peer)| Ok(stream)))
        })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(connection) => connection,
            // The accept loop stopped: so is the server, by the same token.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local_addr)
    }
}

async fn accept_loop(
    listener: TcpListener,
    tls: Arc<ServerTls>,
    protocol: Protocol,
    ready: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
    stop: CancellationToken,
) {
    // Dropped with the loop: handshakes still running end with it.
    let mut handshakes = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            Some(_) = handshakes.join_next(), if !handshakes.is_empty() => continue,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors and the like: wait, do not spin.
                tracing::warn!(server = protocol.server(), %error, "cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let acceptor = TlsAcceptor::from(tls.config(protocol));
        let ready = ready.clone();
        handshakes.spawn(async move {
            let handshake = acceptor.accept(stream).into_fallible();
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
                Ok(Ok(connection)) => {
                    let _ = ready.send((connection, peer)).await;
                }
                Ok(Err((error, stream))) => {
                    handshake_failed(protocol, peer, &error.to_string());
                    close_gently(stream).await;
                }
                Err(_elapsed) => handshake_failed(protocol, peer, "timed out"),
            }
        });
    }
}

/// Closes a refused connection so that the client reads why.
///
/// With TLS 1.3 a client has finished its side of the handshake, and
/// already sent its first request, by the time the server checks the
/// client certificate and answers with an alert. Closing a socket with that
/// request unread makes the kernel send a reset, which can overtake the
/// alert: the client would see "connection reset" instead of "certificate
/// required". So: end our side (the alert is already written), then read
/// and discard what the client sent until it closes, for a moment at most.
async fn close_gently(mut stream: TcpStream) {
    let _ = stream.shutdown().await;
    let mut discard = [0u8; 4096];
    let drain = async {
        while let Ok(read) = stream.read(&mut discard).await {
            if read == 0 {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(REFUSAL_LINGER, drain).await;
}

/// Debug level: scanners and misconfigured clients must not flood the log;
/// the counter shows that it happens, the debug log says who and why.
fn handshake_failed(protocol: Protocol, peer: SocketAddr, reason: &str) {
    metrics::counter!(TLS_HANDSHAKE_FAILURES, "server" => protocol.server()).increment(1);
    tracing::debug!(server = protocol.server(), %peer, reason, "tls handshake failed");
}
