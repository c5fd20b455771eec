//! Reading the services' ops endpoints: `/readyz`, `/metrics` (Prometheus
//! text) and alert-subscriber's `/partitions`, over plain HTTP/1.1.
//!
//! The scale curves count work where the services count it themselves (a
//! worker's `tasks_processed_total`, a subscriber's
//! `messages_received_total`), so the benchmark measures the real processes
//! without a probe inside them. Every request is bounded in time: a service
//! that hangs makes the run fail, not stall.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// How long one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// `GET path` on `addr`: the status and the body.
pub(crate) async fn get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    tokio::time::timeout(REQUEST_TIMEOUT, async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await?;
        let status = response
            .get(9..12)
            .and_then(|code| code.parse().ok())
            .context("not an HTTP response")?;
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.to_string())
            .unwrap_or_default();
        anyhow::Ok((status, body))
    })
    .await
    .with_context(|| format!("GET http://{addr}{path} timed out"))?
    .with_context(|| format!("GET http://{addr}{path}"))
}

/// The sum of every series of `name` in Prometheus text whose labels
/// include `label` (`key="value"`), or of all of them without one.
pub(crate) fn sum(text: &str, name: &str, label: Option<&str>) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            let (labels, value) = match rest.chars().next()? {
                '{' => rest[1..].split_once('}')?,
                ' ' => ("", rest),
                // Another series whose name starts with `name`.
                _ => return None,
            };
            if label.is_some_and(|label| !labels.split(',').any(|pair| pair == label)) {
                return None;
            }
            value.split_whitespace().next()?.parse::<f64>().ok()
        })
        .sum()
}

/// [`sum`] of `name` on each of `addrs`, added up.
pub(crate) async fn total(
    addrs: &[SocketAddr],
    name: &str,
    label: Option<&str>,
) -> anyhow::Result<f64> {
    let mut total = 0.0;
    for addr in addrs {
        total += scrape(*addr, name, label).await?;
    }
    Ok(total)
}

/// [`sum`] of `name` on `addr`'s `/metrics`.
pub(crate) async fn scrape(
    addr: SocketAddr,
    name: &str,
    label: Option<&str>,
) -> anyhow::Result<f64> {
    Ok(sum(&metrics(addr).await?, name, label))
}

/// `addr`'s `/metrics` text.
pub(crate) async fn metrics(addr: SocketAddr) -> anyhow::Result<String> {
    let (status, body) = get(addr, "/metrics").await?;
    anyhow::ensure!(status == 200, "GET http://{addr}/metrics: {status}");
    Ok(body)
}

/// Waits until `/readyz` answers 200 on every one of `addrs`.
pub(crate) async fn wait_ready(addrs: &[SocketAddr], within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    for addr in addrs {
        loop {
            if let Ok((200, _)) = get(*addr, "/readyz").await {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "http://{addr}/readyz not ready within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
# HELP tasks_processed_total Tasks finished by a handler.
# TYPE tasks_processed_total counter
tasks_processed_total{outcome=\"ok\"} 120
tasks_processed_total{outcome=\"dead_lettered\"} 3
tasks_processed_total_extra 1000
messages_received_total{queue=\"q\",subject=\"s\"} 5
messages_received_total 2.5
";

    #[test]
    fn series_are_summed_by_name_and_label() {
        assert_eq!(sum(TEXT, "tasks_processed_total", None), 123.0);
        assert_eq!(
            sum(TEXT, "tasks_processed_total", Some("outcome=\"ok\"")),
            120.0
        );
        assert_eq!(
            sum(TEXT, "messages_received_total", Some("subject=\"s\"")),
            5.0
        );
        assert_eq!(sum(TEXT, "messages_received_total", None), 7.5);
        assert_eq!(sum(TEXT, "absent_total", None), 0.0);
    }
}
