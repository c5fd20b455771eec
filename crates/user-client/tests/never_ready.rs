//! Connections that never become ready still end every call within its
//! deadline: a blackholed address (the TCP connect never completes), a
//! server that accepts but never speaks HTTP/2, the same over TLS (the
//! handshake never completes), each with calls in flight at once (they
//! queue on the one channel while it connects).

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use common::{circuit_breaker::BreakerConfig, retry::RetryPolicy};
use tokio::{
    io::AsyncReadExt as _,
    net::{TcpListener, TcpSocket, TcpStream},
};
use user_client::{ClientConfig, ClientError, UserClient};

/// Every call's deadline.
const DEADLINE: Duration = Duration::from_millis(600);

/// What a call may take beyond its deadline: scheduling on a busy machine.
const SLACK: Duration = Duration::from_millis(400);

/// Calls in flight at once.
const CONCURRENT: usize = 8;

/// Retries until the deadline ends the call, a breaker that never opens:
/// only the deadline may end these calls.
fn client(url: String) -> UserClient {
    UserClient::connect_lazy(ClientConfig {
        url,
        timeout: DEADLINE,
        retry: RetryPolicy {
            base_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(100),
            max_attempts: u32::MAX,
            max_elapsed: None,
        },
        breaker: BreakerConfig {
            failure_threshold: u32::MAX,
            ..BreakerConfig::default()
        },
        ..ClientConfig::default()
    })
    .expect("a valid url")
}

/// Runs [`CONCURRENT`] calls at once, twice (a fresh channel, then one
/// that has failed before); each must fail within its deadline.
async fn every_call_ends_within_its_deadline(client: &UserClient) {
    for round in 0..2 {
        let calls = (0..CONCURRENT).map(|n| {
            let client = client.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                let outcome = client.get_user(&format!("u-{n}")).await;
                (started.elapsed(), outcome)
            })
        });
        for call in calls.collect::<Vec<_>>() {
            let (took, outcome) = tokio::time::timeout(Duration::from_secs(30), call)
                .await
                .expect("the call ended at all")
                .unwrap();
            let error = outcome.expect_err("nothing can answer");
            assert!(
                matches!(
                    error,
                    ClientError::DeadlineExceeded(_) | ClientError::Unavailable(_)
                ),
                "round {round}: {error}"
            );
            assert!(
                took <= DEADLINE + SLACK,
                "round {round}: a call took {took:?} with a deadline of {DEADLINE:?}: {error}"
            );
        }
    }
}

/// A listener whose accept queue is full: further connects are not
/// answered (the kernel drops their SYN), as with a blackholed address.
/// Returns its address, and the listener and the connections that fill its
/// queue, to keep until the test ends (never accepted, never closed).
async fn blackhole() -> (SocketAddr, (TcpListener, Vec<TcpStream>)) {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(1).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut filling = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => filling.push(stream),
            Ok(Err(error)) => panic!("connect to the full listener: {error}"),
            // The queue is full: this connect hangs, as every later one will.
            Err(_) => break,
        }
        assert!(filling.len() < 64, "the accept queue never filled up");
    }
    (addr, (listener, filling))
}

/// A server that accepts connections and reads, but never writes a byte:
/// neither an HTTP/2 preface nor a TLS handshake ever comes back.
async fn silent_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut sink = [0u8; 4096];
                while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blackholed_address_fails_every_call_within_its_deadline() {
    let (addr, _full) = blackhole().await;
    every_call_ends_within_its_deadline(&client(format!("http://{addr}"))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_never_speaks_http2_fails_every_call_within_its_deadline() {
    let addr = silent_server().await;
    every_call_ends_within_its_deadline(&client(format!("http://{addr}"))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_handshake_that_never_completes_fails_every_call_within_its_deadline() {
    let addr = silent_server().await;
    every_call_ends_within_its_deadline(&client(format!("https://{addr}"))).await;
}
