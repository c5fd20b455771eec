//! The fan-out curve: one sensor-publisher at a fixed offered rate, N
//! monitor-subscriber processes each receiving every reading (plain
//! subscribers, no queue group).
//!
//! Throughput is the readings delivered per second summed over the
//! subscribers; the ideal is N × what one subscriber receives. At a fixed
//! offered rate that one subscriber takes whole, efficiency below 1 means
//! the machine (the NATS server copying each reading N times, N decoders,
//! the publisher) no longer keeps up, and the table shows where: the
//! publisher's own rate and the readings the subscribers dropped.
//!
//! One measurement: N monitors started and ready; the publisher started
//! (its readings on a subject prefix of the run's own, on the shared NATS);
//! once every monitor has received a reading, a warm-up, then the
//! monitors' `messages_received_total` and the publisher's
//! `messages_published_total` read at the start and the end of a fixed
//! window.

use std::time::{Duration, Instant};

use super::{
    curve::Point,
    ops,
    processes::{Pool, RunDir},
};

/// What one measurement needs.
#[derive(Debug)]
pub(crate) struct Setup<'a> {
    pub(crate) nats_url: &'a str,
    pub(crate) run_id: &'a str,
    pub(crate) dir: &'a RunDir,
    /// Readings per second the publisher offers.
    pub(crate) rate: f64,
    /// Simulated sensors the readings are spread over.
    pub(crate) sensors: usize,
    pub(crate) warmup: Duration,
    pub(crate) window: Duration,
}

/// Measures `subscribers` monitor-subscriber processes; `label` makes the
/// subjects unique within the run.
pub(crate) async fn measure(
    setup: &Setup<'_>,
    subscribers: usize,
    label: &str,
) -> anyhow::Result<Point> {
    let base = format!("bench.scale.{}.fanout.{label}", setup.run_id);
    let prefix = format!("{base}.data");
    let logs = setup.dir.path().join(format!("fanout-{label}"));
    let mut monitors = Pool::spawn(
        "monitor-subscriber",
        subscribers,
        &[],
        &[
            ("NATS_URL", setup.nats_url.to_string()),
            ("SWITCHYARD__SUBJECT_PREFIX", prefix.clone()),
            // Its own stats subject: a monitor of a system on the same
            // server must not get our answers, nor we its requests.
            ("SWITCHYARD__STATS_SUBJECT", format!("{base}.stats")),
            ("RUST_LOG", "info".into()),
        ],
        &logs,
    )?;
    ops::wait_ready(&monitors.ops_addrs(), Duration::from_secs(30)).await?;

    // Long enough never to run out within the measurement; stopped after.
    let seconds = 60.0 + (setup.warmup + setup.window).as_secs_f64();
    let count = (setup.rate * seconds).ceil() as u64;
    let config = logs.join("sensor-publisher.toml");
    std::fs::write(
        &config,
        format!(
            "subject_prefix = \"{prefix}\"\nrate_per_sec = {rate:?}\ncount = {count}\n\n\
             [fleet]\nsensors = {sensors}\nkinds = [\"temperature\"]\nid_prefix = \"scale-\"\n\
             spike_probability = 0.0\n",
            rate = setup.rate,
            sensors = setup.sensors,
        ),
    )?;
    let config = config.display().to_string();
    let mut publisher = Pool::spawn(
        "sensor-publisher",
        1,
        &["--config", &config],
        &[
            ("NATS_URL", setup.nats_url.to_string()),
            ("RUST_LOG", "info".into()),
        ],
        &logs,
    )?;

    let subscriber_addrs = monitors.ops_addrs();
    let publisher_addrs = publisher.ops_addrs();
    let deadline = Instant::now() + Duration::from_secs(30);
    for addr in &subscriber_addrs {
        while ops::scrape(*addr, "messages_received_total", None)
            .await
            .unwrap_or(0.0)
            == 0.0
        {
            monitors.check_running()?;
            publisher.check_running()?;
            anyhow::ensure!(
                Instant::now() < deadline,
                "a monitor-subscriber received nothing within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    tokio::time::sleep(setup.warmup).await;

    let start = Instant::now();
    let received_before = ops::total(&subscriber_addrs, "messages_received_total", None).await?;
    let published_before = ops::total(&publisher_addrs, "messages_published_total", None).await?;
    tokio::time::sleep(setup.window).await;
    let elapsed = start.elapsed().as_secs_f64();
    let received = ops::total(&subscriber_addrs, "messages_received_total", None).await?;
    let published = ops::total(&publisher_addrs, "messages_published_total", None).await?;
    let dropped = ops::total(&subscriber_addrs, "messages_dropped_total", None).await?;
    monitors.check_running()?;
    publisher.check_running()?;
    publisher.stop().await;
    monitors.stop().await;

    let offered = (published - published_before) / elapsed;
    Ok(Point {
        rate: (received - received_before) / elapsed,
        note: format!("publisher {offered:.0}/s, {dropped:.0} dropped"),
    })
}
