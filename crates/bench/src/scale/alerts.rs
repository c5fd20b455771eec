//! The alert-subscriber curve: N instances of the partitioned consumer group
//! (JetStream, 16 partitions) working through a backlog of readings in
//! stream `SENSORS`.
//!
//! The run has a private nats-server with the deployments' partition
//! mapping (testkit) and one backlog on it, written once by
//! sensor-publisher (core mode, unpaced, stored by the stream) before any
//! instance runs: a publisher racing live consumers would be the bottleneck
//! (one instance keeps up with it). Each measurement starts a consumer
//! group of its own name over that same backlog, so every group reads it
//! from the first reading; the `notify` task queue is one of the run's own
//! on the shared RabbitMQ. The readings stay below every threshold: the
//! curve is the group's intake and evaluation (lanes, ordered consumers,
//! rules, checkpoints), not RabbitMQ's hand-off, which the workqueue
//! scenarios measure.
//!
//! The group must be settled before anything is timed: members that join
//! take lanes from the others, and a lane handed over pauses. The
//! benchmark waits until the members' `/partitions` views agree (every
//! member sees all N, holds exactly its assignment, releases nothing; every
//! lane is held once). What they evaluated meanwhile is not timed. From
//! there the members' `messages_received_total` is read until
//! [`TIMED_SHARE`] of what was left has been evaluated: throughput =
//! readings evaluated / elapsed. The last readings are not timed: the
//! partitions do not hold exactly as many sensors each, so the members run
//! dry at slightly different moments. Then every reading of the backlog must
//! have been evaluated.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use testkit::NatsServer;
use workqueue::topology::Topology;

use super::{
    curve::Point,
    ops,
    processes::{Pool, RunDir},
};

/// The share of the backlog left after the group settled that is timed.
const TIMED_SHARE: f64 = 0.8;
/// Less than this share of the backlog left once settled is too little to
/// time: `--readings` must grow.
const LEAST_LEFT: f64 = 0.3;
/// How often the members' counters are read.
const POLL: Duration = Duration::from_millis(100);
/// The stream and subjects alert-subscriber reads (its defaults, and the
/// deployments' partition mapping's).
const STREAM: &str = "SENSORS";
const SUBJECT_PREFIX: &str = "sensor.data";

/// What the measurements need.
#[derive(Debug)]
pub(crate) struct Setup<'a> {
    pub(crate) amqp_url: &'a str,
    pub(crate) run_id: &'a str,
    pub(crate) dir: &'a RunDir,
    /// Readings in the backlog.
    pub(crate) readings: u64,
    /// Simulated sensors the readings are spread over.
    pub(crate) sensors: usize,
    pub(crate) timeout: Duration,
}

/// The private server and the backlog in its stream.
#[derive(Debug)]
pub(crate) struct Backlog {
    server: NatsServer,
    readings: u64,
}

impl Backlog {
    /// Starts the server and writes the backlog: `readings` readings that
    /// raise no alert (every value 25 °C, below the default rules).
    pub(crate) async fn write(setup: &Setup<'_>) -> anyhow::Result<Self> {
        let server = NatsServer::with_partitions().await;
        let client = async_nats::connect(server.url())
            .await
            .context("cannot connect to the private nats-server")?;
        let js = async_nats::jetstream::new(client);
        common::nats::ensure_sensor_stream(&js, STREAM, SUBJECT_PREFIX)
            .await
            .context("cannot create the readings stream")?;
        let logs = setup.dir.path().join("alerts-backlog");
        std::fs::create_dir_all(&logs)?;
        let config = logs.join("sensor-publisher.toml");
        std::fs::write(
            &config,
            format!(
                "rate_per_sec = 0.0\ncount = {count}\n\n[fleet]\nsensors = {sensors}\n\
                 kinds = [\"temperature\"]\nid_prefix = \"scale-\"\nspike_probability = 0.0\n\
                 script = [25.0]\n",
                count = setup.readings,
                sensors = setup.sensors,
            ),
        )?;
        let config = config.display().to_string();
        let started = Instant::now();
        let mut publisher = Pool::spawn(
            "sensor-publisher",
            1,
            &["--config", &config],
            &[("NATS_URL", server.url()), ("RUST_LOG", "info".into())],
            &logs,
        )?;
        // It stops by itself once it published `count` readings.
        while publisher.all_running() {
            anyhow::ensure!(
                started.elapsed() < setup.timeout,
                "sensor-publisher did not publish the backlog within {:?}",
                setup.timeout
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let stream = js.get_stream(STREAM).await?;
        wait_for_stream(stream, setup.readings).await?;
        println!(
            "alert-subscriber backlog: {} readings of {} sensors stored in {:.1} s",
            setup.readings,
            setup.sensors,
            started.elapsed().as_secs_f64()
        );
        Ok(Backlog {
            server,
            readings: setup.readings,
        })
    }
}

/// Measures `instances` alert-subscriber processes, a consumer group named
/// after `label`, on the backlog.
pub(crate) async fn measure(
    setup: &Setup<'_>,
    backlog: &Backlog,
    instances: usize,
    label: &str,
) -> anyhow::Result<Point> {
    let task_queue = format!("bench.scale.{}.alerts.{label}", setup.run_id);
    // Deleted when this returns, failed or not.
    let _queues = testkit::delete_queues_later(
        setup.amqp_url.to_string(),
        Topology::new(task_queue.clone()).queue_names(),
    );
    let logs = setup.dir.path().join(format!("alerts-{label}"));
    let mut group = Pool::spawn(
        "alert-subscriber",
        instances,
        &[],
        &[
            ("NATS_URL", backlog.server.url()),
            ("AMQP_URL", setup.amqp_url.to_string()),
            ("SWITCHYARD__MODE", "jetstream".into()),
            // A group of its own reads the backlog from its first reading.
            ("SWITCHYARD__GROUP", format!("scale_{label}")),
            ("SWITCHYARD__TASK_QUEUE", task_queue),
            ("RUST_LOG", "info".into()),
        ],
        &logs,
    )?;
    let members = group.ops_addrs();
    ops::wait_ready(&members, Duration::from_secs(60)).await?;
    wait_until_settled(&members, &mut group, Duration::from_secs(60)).await?;

    let started = Instant::now();
    let readings = backlog.readings as f64;
    let before = ops::total(&members, "messages_received_total", None).await?;
    let left = readings - before;
    anyhow::ensure!(
        left >= LEAST_LEFT * readings,
        "{instances} instances evaluated {before} of {readings} readings before the group \
         settled: raise --readings"
    );
    let target = before + TIMED_SHARE * left;
    let mut evaluated = before;
    while evaluated < target {
        anyhow::ensure!(
            started.elapsed() < setup.timeout,
            "{instances} instances evaluated {evaluated} of {readings} readings in {:?}",
            setup.timeout
        );
        group.check_running()?;
        tokio::time::sleep(POLL).await;
        evaluated = ops::total(&members, "messages_received_total", None).await?;
    }
    let rate = (evaluated - before) / started.elapsed().as_secs_f64();
    // Every reading is evaluated in the end: none was lost on the way.
    while ops::total(&members, "messages_received_total", None).await? < readings {
        anyhow::ensure!(
            started.elapsed() < setup.timeout,
            "{instances} instances did not evaluate every reading within {:?}",
            setup.timeout
        );
        group.check_running()?;
        tokio::time::sleep(POLL).await;
    }
    group.stop().await;
    Ok(Point {
        rate,
        note: format!(
            "{:.0} % of the backlog left once settled",
            100.0 * left / readings
        ),
    })
}

/// Waits until every member sees all the others, holds exactly the lanes
/// the assignment gives it and releases none, and every lane is held once.
async fn wait_until_settled(
    members: &[SocketAddr],
    group: &mut Pool,
    within: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    loop {
        if settled(members).await {
            return Ok(());
        }
        group.check_running()?;
        anyhow::ensure!(
            Instant::now() < deadline,
            "the group of {} did not settle within {within:?}",
            members.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The lane names in a JSON array, sorted.
fn lanes(value: &serde_json::Value) -> Vec<String> {
    let mut lanes: Vec<String> = value
        .as_array()
        .map(|lanes| {
            lanes
                .iter()
                .filter_map(|lane| lane.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    lanes.sort();
    lanes
}

async fn settled(members: &[SocketAddr]) -> bool {
    let mut views = Vec::new();
    for member in members {
        let Ok((200, body)) = ops::get(*member, "/partitions").await else {
            return false;
        };
        let Ok(view) = serde_json::from_str::<serde_json::Value>(&body) else {
            return false;
        };
        views.push(view);
    }
    agree(&views)
}

/// `true` when the members' `/partitions` views describe a settled group.
fn agree(views: &[serde_json::Value]) -> bool {
    let mut held = Vec::new();
    let mut assigned = None;
    for view in views {
        let Some(me) = view["member_id"].as_str() else {
            return false;
        };
        let owned = lanes(&view["owned"]);
        let settled = view["members"].as_array().map(Vec::len) == Some(views.len())
            && owned == lanes(&view["assignment"][me])
            && lanes(&view["releasing"]).is_empty()
            && !owned.is_empty();
        if !settled {
            return false;
        }
        let all: usize = view["assignment"]
            .as_object()
            .map(|all| {
                all.values()
                    .map(|lanes| lanes.as_array().map_or(0, Vec::len))
                    .sum()
            })
            .unwrap_or(0);
        if assigned.is_some_and(|assigned| assigned != all) {
            return false;
        }
        assigned = Some(all);
        held.extend(owned);
    }
    let count = held.len();
    held.sort();
    held.dedup();
    held.len() == count && Some(count) == assigned
}

/// Waits until `stream` holds `readings` messages; fails once it stopped
/// growing short of them.
async fn wait_for_stream(
    stream: async_nats::jetstream::stream::Stream,
    readings: u64,
) -> anyhow::Result<()> {
    let mut stored = 0;
    let mut last_change = Instant::now();
    loop {
        let now = stream.get_info().await?.state.messages;
        if now >= readings {
            return Ok(());
        }
        if now != stored {
            stored = now;
            last_change = Instant::now();
        }
        anyhow::ensure!(
            last_change.elapsed() < Duration::from_secs(5),
            "the stream holds {stored} of {readings} readings: the publisher lost some \
             (see its log)"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn view(
        me: &str,
        members: &[&str],
        owned: &[&str],
        assignment: serde_json::Value,
    ) -> serde_json::Value {
        json!({
            "member_id": me,
            "members": members,
            "owned": owned,
            "releasing": [],
            "assignment": assignment,
        })
    }

    #[test]
    fn a_group_is_settled_when_every_lane_is_held_once_as_assigned() {
        let assignment = json!({"a": ["p0", "p2"], "b": ["p1", "unmapped"]});
        let a = view("a", &["a", "b"], &["p2", "p0"], assignment.clone());
        let b = view("b", &["a", "b"], &["p1", "unmapped"], assignment.clone());
        assert!(agree(&[a.clone(), b.clone()]));

        // b still holds a lane it was told to give up.
        let b_late = view(
            "b",
            &["a", "b"],
            &["p1", "unmapped", "p2"],
            assignment.clone(),
        );
        assert!(!agree(&[a.clone(), b_late]));
        // a does not see b yet.
        let a_alone = view("a", &["a"], &["p0", "p2"], assignment.clone());
        assert!(!agree(&[a_alone, b.clone()]));
        // A lane being released.
        let mut releasing = a.clone();
        releasing["releasing"] = json!(["p2"]);
        assert!(!agree(&[releasing, b]));
    }
}
