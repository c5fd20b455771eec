//! `bench pubsub`: publish-subscribe throughput on NATS, ours beside the raw
//! client in the same run.
//!
//! - Core: the real sensor-publisher (Protobuf, `Content-Type` and
//!   `traceparent` headers, as fast as possible) into the real
//!   monitor-subscriber. The baseline is a bare async-nats publisher and
//!   subscriber moving the same bytes (same payload, same headers) with
//!   nothing done per message. On both sides the subscriber runs on a tokio
//!   runtime of its own, as it would in a process of its own: on one shared
//!   runtime a busy publisher's tasks hold the subscriber's up, and what is
//!   measured is the scheduler, not the subscriber.
//! - Each round makes `--raw-runs` unpaced runs of each. Raw: the best
//!   delivered rate (an overrun raw subscriber drops, and its delivered
//!   rate falls with what it lost). Ours: the best run with **zero** seq
//!   gaps; when every unpaced run lost readings, the zero-gap rate is
//!   searched by pacing (bisection between the highest clean pace and the
//!   lowest lossy one, `--attempts` runs at most). Two cores shared by the
//!   server, the publisher and the subscriber make single runs swing by
//!   tens of percent, so `--rounds` rounds alternate the two and each
//!   side's median round is reported.
//! - JetStream: the sensor-publisher in JetStream mode (PubAck window,
//!   `Nats-Msg-Id`) against a raw JetStream publisher with the same window
//!   and the same headers (`Nats-Msg-Id` included), in `--jetstream-rounds`
//!   rounds of alternating order (the first publisher on a fresh stream is
//!   slower); the medians are reported.
//!
//! Every stream and subject is the run's own; the stream is deleted after.
//!
//! `--cluster` runs the same figures (named `pubsub.cluster*`) on a private
//! 3-node NATS cluster (testkit's [`NatsCluster`]): publishers on node 0,
//! subscribers on node 1 (every reading crosses a route), the JetStream
//! stream with 3 replicas; ours and raw alike.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use std::future::IntoFuture as _;

use anyhow::Context as _;
use bench::report::{Figure, number, table};
use common::{
    codec::{CONTENT_TYPE_HEADER, Codec, ContentType},
    config::SecretUrl,
    nats::DeliveryMode,
    propagation::TRACEPARENT,
    proto::sensor::v1::SensorReading,
    shutdown::Shutdown,
};
use futures::StreamExt;
use testkit::NatsCluster;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

/// Options of the pubsub scenario.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// NATS server.
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
    /// Readings per core run.
    #[arg(long, default_value_t = 500_000)]
    messages: u64,
    /// Simulated sensors (readings are spread over them).
    #[arg(long, default_value_t = 100)]
    sensors: usize,
    /// Core rounds (raw and ours); each side's median round is reported.
    #[arg(long, default_value_t = 5)]
    rounds: u32,
    /// Unpaced runs per round, raw and ours; the best is the round's (for
    /// ours the best without gaps).
    #[arg(long, default_value_t = 2)]
    raw_runs: u32,
    /// Paced runs of ours per round at most, searching the zero-gap rate
    /// when no unpaced run was clean.
    #[arg(long, default_value_t = 4)]
    attempts: u32,
    /// Readings per JetStream run.
    #[arg(long, default_value_t = 100_000)]
    jetstream_messages: u64,
    /// JetStream rounds (ours and raw, order alternating); medians are reported.
    #[arg(long, default_value_t = 5)]
    jetstream_rounds: u32,
    /// PubAcks awaited at once in JetStream mode (ours and the raw client's).
    #[arg(long, default_value_t = 256)]
    ack_window: usize,
    /// Start a private 3-node NATS cluster and measure on it instead of
    /// `--nats-url`.
    #[arg(long)]
    cluster: bool,
    /// Run only one part, to profile it (e.g. under callgrind): the core
    /// rounds, the JetStream rounds, or one JetStream side (the other side
    /// then reads 0).
    #[arg(long, value_enum)]
    only: Option<Only>,
    /// Where subscribers connect (`--cluster`: another node than the
    /// publishers'); `--nats-url` otherwise.
    #[arg(skip)]
    subscriber_url: Option<String>,
    /// Replicas of the JetStream stream (`--cluster`: 3).
    #[arg(skip = 1usize)]
    replicas: usize,
}

/// The parts of the scenario `--only` can select.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Only {
    Core,
    Jetstream,
    JetstreamOurs,
    JetstreamRaw,
}

impl Args {
    /// Whether the core rounds run.
    fn runs_core(&self) -> bool {
        matches!(self.only, None | Some(Only::Core))
    }

    /// Whether the JetStream rounds run ours (`.0`) and raw (`.1`).
    fn runs_jetstream(&self) -> (bool, bool) {
        match self.only {
            None | Some(Only::Jetstream) => (true, true),
            Some(Only::JetstreamOurs) => (true, false),
            Some(Only::JetstreamRaw) => (false, true),
            Some(Only::Core) => (false, false),
        }
    }

    fn subscriber_url(&self) -> &str {
        self.subscriber_url.as_deref().unwrap_or(&self.nats_url)
    }
}

/// One core run of ours.
struct CoreRun {
    rate: f64,
    /// Readings/s the publisher handed to the client.
    offered: f64,
    received: u64,
    gaps: u64,
    drops: u64,
    paced_at: Option<f64>,
}

pub(crate) async fn run(mut args: Args) -> anyhow::Result<()> {
    // Kept until the end of the run: dropping it kills the nodes.
    let mut _cluster = None;
    let mut name = "pubsub";
    if args.cluster {
        println!("starting a private 3-node NATS cluster");
        let cluster = NatsCluster::start(3).await;
        args.nats_url = cluster.node_url(0);
        args.subscriber_url = Some(cluster.node_url(1));
        args.replicas = 3;
        name = "pubsub.cluster";
        _cluster = Some(cluster);
    }
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..10].to_string();
    let sample = sample_message();
    println!(
        "message: {} payload bytes + {} header bytes (Content-Type, traceparent), {} sensors",
        sample.payload.len(),
        sample.header_bytes,
        args.sensors
    );

    let mut raw_rates = Vec::new();
    let mut our_rates = Vec::new();
    let core_rounds = if args.runs_core() { args.rounds } else { 0 };
    for round in 1..=core_rounds {
        println!("core round {round}:");
        let mut raw_best: f64 = 0.0;
        for run in 1..=args.raw_runs {
            let (rate, received) =
                raw_core(&args, &format!("{run_id}.raw{round}{run}"), &sample).await?;
            println!(
                "  raw run {run}: {rate:.0} msg/s delivered ({received} of {} received)",
                args.messages
            );
            raw_best = raw_best.max(rate);
        }
        raw_rates.push(raw_best);
        let clean = our_round(&args, &format!("{run_id}.{round}")).await?;
        println!("  ours: {clean:.0} msg/s without gaps");
        our_rates.push(clean);
    }
    let core = Figure::from_rounds(name, "msg/s", &our_rates, &raw_rates);
    let (raw_rate, best_clean) = (core.baseline, core.value);

    let mut js_ours = Vec::new();
    let mut js_raw = Vec::new();
    let jetstream_rounds = match args.runs_jetstream() {
        (false, false) => 0,
        _ => args.jetstream_rounds,
    };
    for round in 1..=jetstream_rounds {
        println!("jetstream round {round}:");
        let (ours, raw) =
            jetstream(&args, &format!("{run_id}_{round}"), &sample, round % 2 == 0).await?;
        js_ours.push(ours);
        js_raw.push(raw);
    }
    let jetstream = Figure::from_rounds(format!("{name}.jetstream"), "msg/s", &js_ours, &js_raw);
    let (js_ours, js_raw) = (jetstream.value, jetstream.baseline);

    let mut rows = vec![vec!["path".to_string(), "msg/s".into(), "note".into()]];
    rows.push(vec![
        "raw async-nats pub -> sub".into(),
        number(raw_rate.round()),
        "median round (best of its runs); same bytes, nothing done per message".into(),
    ]);
    rows.push(vec![
        "sensor-publisher -> monitor-subscriber".into(),
        number(best_clean.round()),
        "median round; zero seq gaps (0 = no clean run)".into(),
    ]);
    rows.push(vec![
        "raw jetstream publish".into(),
        number(js_raw.round()),
        format!(
            "PubAck window {}, Nats-Msg-Id; median round",
            args.ack_window
        ),
    ]);
    rows.push(vec![
        "sensor-publisher jetstream".into(),
        number(js_ours.round()),
        format!(
            "PubAck window {}, Nats-Msg-Id; median round",
            args.ack_window
        ),
    ]);
    print!("{}", table(&rows));

    println!("{}", core.report_lines());
    println!("{}", jetstream.report_lines());
    Ok(())
}

/// One round of ours: `--raw-runs` unpaced runs like the raw client's, the
/// best clean one counting. Only when every one lost readings is the
/// zero-gap rate searched for by pacing: bisection between the highest clean
/// pace and the lowest pace that lost readings, `--attempts` runs at most.
/// 0 when no run was clean.
async fn our_round(args: &Args, round_id: &str) -> anyhow::Result<f64> {
    let mut best_clean: f64 = 0.0;
    let mut clean_pace: f64 = 0.0;
    let mut lossy_pace = f64::INFINITY;
    let mut lowest_delivered = f64::INFINITY;
    for attempt in 1..=args.raw_runs + args.attempts {
        let searching = attempt > args.raw_runs;
        if searching && best_clean > 0.0 && clean_pace == 0.0 {
            // An unpaced run was clean: the monitor kept up with all the
            // publisher could send.
            break;
        }
        let pace = searching.then(|| {
            if clean_pace == 0.0 {
                // Nothing clean yet: just under what got through.
                lossy_pace.min(lowest_delivered) * 0.9
            } else if lossy_pace.is_infinite() {
                clean_pace * 1.1
            } else {
                (clean_pace + lossy_pace) / 2.0
            }
        });
        let prefix = format!("bench.{round_id}.{attempt}.sensor.data");
        let run = ours_core(args, &prefix, pace).await?;
        println!(
            "  ours run {attempt} ({}): {:.0} msg/s, {} received, {} seq gaps, {} slow-consumer drops",
            run.paced_at
                .map(|rate| format!("paced at {rate:.0}/s"))
                .unwrap_or_else(|| "unpaced".into()),
            run.rate,
            run.received,
            run.gaps,
            run.drops
        );
        if run.gaps == 0 && run.received == args.messages {
            best_clean = best_clean.max(run.rate);
            clean_pace = clean_pace.max(pace.unwrap_or(0.0));
        } else {
            lossy_pace = lossy_pace.min(pace.unwrap_or(run.offered));
            lowest_delivered = lowest_delivered.min(run.rate);
        }
        if clean_pace > 0.0 && (lossy_pace - clean_pace) / lossy_pace < 0.02 {
            break;
        }
    }
    Ok(best_clean)
}

/// The bytes every path sends: an encoded reading and the headers ours adds.
struct Sample {
    payload: bytes::Bytes,
    headers: async_nats::HeaderMap,
    header_bytes: usize,
}

fn sample_message() -> Sample {
    let reading = SensorReading {
        sensor_id: "temp-001".into(),
        kind: "temperature".into(),
        value: 25.31,
        unit: "celsius".into(),
        timestamp: 1_700_000_000_000,
        seq: 123_456,
        site: None,
        owner_id: Some("u-1001".into()),
    };
    let payload = Codec::default()
        .encode(&reading, ContentType::Protobuf)
        .expect("a reading encodes");
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(CONTENT_TYPE_HEADER, ContentType::Protobuf.mime());
    headers.insert(
        TRACEPARENT,
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    );
    let header_bytes = "NATS/1.0\r\n".len()
        + headers
            .iter()
            .map(|(name, values)| {
                values
                    .iter()
                    .map(|value| name.to_string().len() + 2 + value.as_str().len() + 2)
                    .sum::<usize>()
            })
            .sum::<usize>()
        + 2;
    Sample {
        payload,
        headers,
        header_bytes,
    }
}

/// Waits until `count()` reaches `target`, or stops moving for `idle`.
/// Returns the count and when it last moved.
async fn wait_for_count(
    count: impl Fn() -> u64,
    target: u64,
    started: Instant,
    publishing_done: &AtomicU64,
) -> (u64, Duration) {
    let idle = Duration::from_secs(2);
    let mut last = 0;
    let mut last_change = Instant::now();
    let mut last_change_at = Duration::ZERO;
    loop {
        let now = count();
        if now != last {
            last = now;
            last_change = Instant::now();
            last_change_at = started.elapsed();
        }
        if now >= target {
            return (now, started.elapsed());
        }
        if publishing_done.load(Ordering::Relaxed) == 1 && last_change.elapsed() > idle {
            return (now, last_change_at);
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Raw async-nats: publish `messages` copies of the sample, count them in a
/// subscriber on a runtime of its own. Returns (msg/s, received).
async fn raw_core(args: &Args, run_id: &str, sample: &Sample) -> anyhow::Result<(f64, u64)> {
    let subject = format!("bench.{run_id}.raw.sensor.data.temp-001");
    let publisher_client = async_nats::connect(&args.nats_url).await?;
    let received = Arc::new(AtomicU64::new(0));
    let stop = CancellationToken::new();
    let (subscribed, mut counting) = {
        let (url, subject, counter, stop) = (
            args.subscriber_url().to_string(),
            subject.clone(),
            received.clone(),
            stop.clone(),
        );
        on_own_runtime(move |subscribed| async move {
            let client = async_nats::ConnectOptions::new()
                .subscription_capacity(65_536)
                .connect(&url)
                .await
                .context("cannot connect to nats")?;
            let mut subscription = client.subscribe(subject).await?;
            client.flush().await?;
            let _ = subscribed.send(());
            loop {
                tokio::select! {
                    message = subscription.next() => match message {
                        Some(_) => counter.fetch_add(1, Ordering::Relaxed),
                        None => break,
                    },
                    () = stop.cancelled() => break,
                };
            }
            anyhow::Ok(())
        })
    };
    if subscribed.await.is_err() {
        counting.await??;
        anyhow::bail!("the raw subscriber stopped before it subscribed");
    }
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let publishing = {
        let done = done.clone();
        let payload = sample.payload.clone();
        let headers = sample.headers.clone();
        let messages = args.messages;
        tokio::spawn(async move {
            for _ in 0..messages {
                publisher_client
                    .publish_with_headers(subject.clone(), headers.clone(), payload.clone())
                    .await?;
            }
            publisher_client.flush().await?;
            done.store(1, Ordering::Relaxed);
            println!(
                "  publisher side: {:.0} msg/s handed to the client",
                messages as f64 / started.elapsed().as_secs_f64()
            );
            anyhow::Ok(())
        })
    };
    let (got, elapsed) = wait_for_count(
        || received.load(Ordering::Relaxed),
        args.messages,
        started,
        &done,
    )
    .await;
    publishing.await??;
    stop.cancel();
    (&mut counting).await??;
    Ok((got as f64 / elapsed.as_secs_f64(), got))
}

/// The sensor-publisher into the monitor-subscriber, which runs on a
/// runtime of its own (as in a process of its own).
async fn ours_core(args: &Args, prefix: &str, pace: Option<f64>) -> anyhow::Result<CoreRun> {
    let config = monitor_subscriber::Config {
        nats_url: SecretUrl::new(args.subscriber_url()),
        ops_addr: "127.0.0.1:0".parse()?,
        subject_prefix: prefix.to_string(),
        stats_subject: format!("{prefix}.stats"),
        summary_interval: Duration::ZERO,
        ..Default::default()
    };
    let monitor_stop = Shutdown::new();
    let (subscribed, monitor_task) = {
        let stop = monitor_stop.clone();
        on_own_runtime(move |subscribed| async move {
            let monitor = monitor_subscriber::Application::build(config).await?;
            monitor.wait_until_subscribed().await;
            let _ = subscribed.send(monitor.stats());
            monitor.run_until_stopped(stop).await
        })
    };
    let stats = match subscribed.await {
        Ok(stats) => stats,
        Err(_) => {
            monitor_task.await??;
            anyhow::bail!("the monitor stopped before it subscribed");
        }
    };

    let publisher = sensor_publisher::Application::build(sensor_publisher::Config {
        nats_url: SecretUrl::new(&args.nats_url),
        ops_addr: "127.0.0.1:0".parse()?,
        subject_prefix: prefix.to_string(),
        mode: DeliveryMode::Core,
        content_type: ContentType::Protobuf,
        rate_per_sec: pace.unwrap_or(0.0),
        count: args.messages,
        fleet: sensor_publisher::FleetConfig {
            sensors: args.sensors,
            seed: Some(1),
            ..Default::default()
        },
        ..Default::default()
    })
    .await?;
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let publishing = {
        let done = done.clone();
        tokio::spawn(async move {
            let summary = publisher.run_until_stopped(Shutdown::new()).await;
            done.store(1, Ordering::Relaxed);
            summary.map(|summary| (summary, started.elapsed()))
        })
    };
    let (received, elapsed) =
        wait_for_count(|| stats.readings(), args.messages, started, &done).await;
    let (summary, publish_time) = publishing.await??;
    println!(
        "  publisher side: {:.0} msg/s handed to the client",
        summary.published as f64 / publish_time.as_secs_f64()
    );
    monitor_stop.trigger();
    monitor_task.await??;
    let report = stats.report();
    // Readings never seen at the end of a sensor's sequence are lost too.
    let tail_lost = summary
        .published
        .saturating_sub(received + report.totals.seq_gaps);
    Ok(CoreRun {
        rate: received as f64 / elapsed.as_secs_f64(),
        offered: summary.published as f64 / publish_time.as_secs_f64(),
        received,
        gaps: report.totals.seq_gaps + tail_lost,
        drops: report.totals.slow_consumer_drops,
        paced_at: pace,
    })
}

/// Runs the future `start` makes on a new two-worker runtime in threads of
/// its own, the way a separate process would run it: the publisher's tasks
/// cannot hold up its tasks on a shared worker. `start` gets a sender to say
/// it is ready (what it sends comes out of the first receiver); the second
/// receiver gets its result.
fn on_own_runtime<T, R, F, Fut>(
    start: F,
) -> (oneshot::Receiver<R>, oneshot::Receiver<anyhow::Result<T>>)
where
    T: Send + 'static,
    R: Send + 'static,
    F: FnOnce(oneshot::Sender<R>) -> Fut + Send + 'static,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let (ready, ready_rx) = oneshot::channel();
    let (done, done_rx) = oneshot::channel();
    std::thread::spawn(move || {
        let result = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|runtime| runtime.block_on(start(ready)));
        let _ = done.send(result);
    });
    (ready_rx, done_rx)
}

/// JetStream publishing, ours and the raw client with the same window, on a
/// stream of their own (deleted after); `raw_first` alternates the order
/// between rounds. Returns (ours msg/s, raw msg/s).
async fn jetstream(
    args: &Args,
    run_id: &str,
    sample: &Sample,
    raw_first: bool,
) -> anyhow::Result<(f64, f64)> {
    let stream = format!("BENCH_{run_id}");
    let prefix = format!("bench.{run_id}.js.sensor.data");
    let client = async_nats::connect(&args.nats_url).await?;
    let js = async_nats::jetstream::new(client.clone());
    common::nats::ensure_replicated_sensor_stream(&js, &stream, &prefix, args.replicas)
        .await
        .context("cannot create the bench stream")?;
    let (run_ours, run_raw) = args.runs_jetstream();
    let result = async {
        let raw = async {
            if run_raw {
                jetstream_raw(args, &client, &prefix, run_id, sample).await
            } else {
                Ok(0.0)
            }
        };
        let ours = async {
            if run_ours {
                jetstream_ours(args, &stream, &prefix).await
            } else {
                Ok(0.0)
            }
        };
        let (ours, raw) = if raw_first {
            let raw = raw.await?;
            (ours.await?, raw)
        } else {
            let ours = ours.await?;
            (ours, raw.await?)
        };
        anyhow::Ok((ours, raw))
    }
    .await;
    if let Err(error) = js.delete_stream(&stream).await {
        eprintln!("cannot delete the bench stream {stream}: {error}");
    }
    result
}

/// The sensor-publisher in JetStream mode; msg/s acknowledged.
async fn jetstream_ours(args: &Args, stream: &str, prefix: &str) -> anyhow::Result<f64> {
    let publisher = sensor_publisher::Application::build(sensor_publisher::Config {
        nats_url: SecretUrl::new(&args.nats_url),
        ops_addr: "127.0.0.1:0".parse()?,
        subject_prefix: prefix.to_string(),
        stream: stream.to_string(),
        stream_replicas: args.replicas,
        mode: DeliveryMode::Jetstream,
        ack_window: args.ack_window,
        rate_per_sec: 0.0,
        count: args.jetstream_messages,
        fleet: sensor_publisher::FleetConfig {
            sensors: args.sensors,
            seed: Some(1),
            ..Default::default()
        },
        ..Default::default()
    })
    .await?;
    let started = Instant::now();
    let summary = publisher.run_until_stopped(Shutdown::new()).await?;
    let ours = summary.published as f64 / started.elapsed().as_secs_f64();
    println!(
        "  ours jetstream: {ours:.0} msg/s ({} acknowledged, {} retried, {} unsent)",
        summary.published, summary.retried, summary.unsent
    );
    Ok(ours)
}

/// Raw async-nats JetStream publishing, the same bytes and window; msg/s.
async fn jetstream_raw(
    args: &Args,
    client: &async_nats::Client,
    prefix: &str,
    run_id: &str,
    sample: &Sample,
) -> anyhow::Result<f64> {
    let raw_js = async_nats::jetstream::ContextBuilder::new()
        .max_ack_inflight(args.ack_window)
        .backpressure_on_inflight(true)
        .build(client.clone());
    let mut acks = futures::stream::FuturesUnordered::new();
    let started = Instant::now();
    let mut acked = 0u64;
    for i in 0..args.jetstream_messages {
        // The same headers as ours, de-duplication id included: the
        // server's duplicate tracking is part of the price of the mode.
        let mut headers = sample.headers.clone();
        headers.insert(
            async_nats::header::NATS_MESSAGE_ID,
            format!("raw-{run_id}-{i}").as_str(),
        );
        let ack = raw_js
            .publish_with_headers(
                format!("{prefix}.raw-{}", i % args.sensors as u64),
                headers,
                sample.payload.clone(),
            )
            .await?;
        acks.push(ack.into_future());
        while acks.len() >= args.ack_window {
            if let Some(ack) = acks.next().await {
                ack?;
                acked += 1;
            }
        }
    }
    while let Some(ack) = acks.next().await {
        ack?;
        acked += 1;
    }
    let raw = acked as f64 / started.elapsed().as_secs_f64();
    println!("  raw jetstream: {raw:.0} msg/s ({acked} acknowledged)");
    Ok(raw)
}
