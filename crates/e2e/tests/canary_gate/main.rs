//! The canary gates of deploy/prometheus/canary-gates, evaluated for real:
//! a user-service on a PostgreSQL database of its own, a private Prometheus
//! scraping its `/metrics` every second with the labels a Kubernetes scrape
//! adds to a canary pod, GetUser traffic through `user_client`, and the
//! gates' exact PromQL asked of Prometheus' query API while the traffic is
//! healthy (both pass), slowed down by a lock on the users table (the
//! latency gate fails, the success gate still passes) and failing because
//! the database refuses the service (the success gate fails).
//!
//! Needs Debian's `prometheus` (installed by scripts/lib.sh when missing, as
//! root); without it, and when it cannot be installed, the test says so and
//! passes, except under CI (`CI` set), where it fails.

mod database;
mod gates;
mod prometheus;

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use common::{
    circuit_breaker::BreakerConfig, config::SecretUrl, proto::user::v1::CreateUserRequest,
    retry::RetryPolicy, shutdown::Shutdown,
};
use database::TestDatabase;
use gates::Gate;
use prometheus::Prometheus;
use tokio_util::sync::CancellationToken;
use user_client::{ClientConfig, ClientError, UserClient};
use user_service::{Application, Config};

/// Concurrent callers of GetUser.
const CALLERS: usize = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_canary_gates_pass_healthy_traffic_and_fail_slow_or_failing_traffic() {
    let Some(binary) = prometheus::binary() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "prometheus is not installed and could not be installed (apt-get install prometheus)"
        );
        eprintln!(
            "SKIPPED: no prometheus binary and it could not be installed \
             (apt-get install prometheus, or set PROMETHEUS=/path/to/prometheus)"
        );
        return;
    };
    common::telemetry::init_for_tests();

    // Arrange: the service (read cache off, so every GetUser reads the
    // database), its user, Prometheus, and callers that keep calling.
    let gates = gates::load();
    let success = gate(&gates, "success-rate");
    let latency = gate(&gates, "p99-latency");
    let id = testkit::unique();
    let db = TestDatabase::create(&format!("canary_gate_{id}")).await;
    let data_sync_queue = format!("data_sync.canary-gate.{id}");
    // data_sync and its dead-letter queue, deleted when the test ends.
    let _queues = testkit::delete_queues_later(
        testkit::amqp_url(),
        vec![data_sync_queue.clone(), format!("{data_sync_queue}.dlq")],
    );
    let application = Application::build(Config {
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        http_addr: "127.0.0.1:0".parse().unwrap(),
        ops_addr: "127.0.0.1:0".parse().unwrap(),
        database_url: SecretUrl::new(&db.url),
        amqp_url: SecretUrl::new(testkit::amqp_url()),
        data_sync_queue,
        read_cache_capacity: 0,
        db_acquire_timeout: Duration::from_secs(1),
        drain_delay: Duration::ZERO,
        shutdown_grace: Duration::from_secs(5),
        ..Config::default()
    })
    .await
    .expect("user-service builds");
    let grpc_url = format!("http://{}", application.grpc_addr());
    let ops_addr = application.ops_addr();
    let shutdown = Shutdown::new();
    let service = tokio::spawn(application.run_until_stopped(shutdown.clone()));
    let client = Arc::new(
        UserClient::connect_lazy(ClientConfig {
            url: grpc_url,
            timeout: Duration::from_secs(5),
            // Every call reaches the server once: the gates count what the
            // server answered, and a breaker would stop the calls.
            retry: RetryPolicy {
                max_attempts: 1,
                ..RetryPolicy::rpc()
            },
            breaker: BreakerConfig {
                failure_threshold: u32::MAX,
                ..BreakerConfig::default()
            },
            ..ClientConfig::default()
        })
        .unwrap(),
    );
    let user_id = format!("u-gate-{id}");
    create_user(&client, &user_id).await;
    let hash = format!("gate{id}");
    let namespace = format!("canary-gate-{id}");
    let prometheus = Prometheus::start(
        &binary,
        ops_addr,
        &[
            ("namespace", namespace.as_str()),
            ("rollouts_pod_template_hash", hash.as_str()),
        ],
    )
    .await;
    let args = [
        ("namespace", namespace.as_str()),
        ("canary-hash", hash.as_str()),
    ];
    let traffic = Traffic::start(client.clone(), &user_id);

    // Act and assert 1: healthy traffic passes both gates.
    let healthy_rate = verdict(&prometheus, success, &args, true).await;
    let healthy_p99 = verdict(&prometheus, latency, &args, true).await;
    assert!(
        traffic.answered() > 0 && traffic.failed() == 0,
        "healthy calls failed: {traffic:?}"
    );

    // 2: calls that wait behind another client's lock on the users table:
    // slow but answered, so only the latency gate fails.
    let lock = db.hold_users_lock_repeatedly(Duration::from_millis(1200));
    let slow_p99 = verdict(&prometheus, latency, &args, false).await;
    let slow_rate = measure(&prometheus, success, &args).await;
    assert!(
        slow_rate.is_some_and(|rate| success.condition.passes(rate)),
        "slow but successful calls must not fail the success gate: {slow_rate:?} ({traffic:?})"
    );
    lock.release().await;

    // 3: the database refuses the service: UNAVAILABLE / INTERNAL answers.
    db.refuse_connections().await;
    let failing_rate = verdict(&prometheus, success, &args, false).await;
    assert!(traffic.failed() > 0, "no call failed: {traffic:?}");

    eprintln!(
        "gates: healthy success rate {healthy_rate}, p99 {healthy_p99}s; \
         slow p99 {slow_p99}s; failing success rate {failing_rate}; {traffic:?}"
    );
    traffic.stop().await;
    db.accept_connections().await;
    shutdown.trigger();
    let _ = tokio::time::timeout(Duration::from_secs(20), service).await;
}

fn gate<'a>(gates: &'a [Gate], name: &str) -> &'a Gate {
    gates
        .iter()
        .find(|gate| gate.name == name)
        .unwrap_or_else(|| panic!("no gate {name} in {}", gates::gates_file().display()))
}

/// The gate's query evaluated now: Argo Rollouts' `result[0]`.
async fn measure(prometheus: &Prometheus, gate: &Gate, args: &[(&str, &str)]) -> Option<f64> {
    prometheus.first_sample(&gate.query_with(args)).await
}

/// Polls the gate until it gives `pass` (at most 40 s); the value it gave.
async fn verdict(prometheus: &Prometheus, gate: &Gate, args: &[(&str, &str)], pass: bool) -> f64 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    let mut last = None;
    while tokio::time::Instant::now() < deadline {
        last = measure(prometheus, gate, args).await;
        if let Some(value) = last
            && gate.condition.passes(value) == pass
        {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!(
        "gate {} never {} within 40 s; last value {last:?}\nquery: {}\nprometheus log:\n{}",
        gate.name,
        if pass { "passed" } else { "failed" },
        gate.query_with(args),
        prometheus.log()
    );
}

/// Creates the user the callers look up, once user-service serves.
async fn create_user(client: &UserClient, user_id: &str) {
    testkit::eventually(
        "user-service to create the user",
        Duration::from_secs(60),
        || async {
            let created = client
                .create_user(CreateUserRequest {
                    user_id: user_id.to_string(),
                    name: "Gate Keeper".into(),
                    age: 40,
                    email: format!("{user_id}@example.com"),
                })
                .await;
            matches!(created, Ok(_) | Err(ClientError::AlreadyExists(_))).then_some(())
        },
    )
    .await;
}

/// GetUser callers running until stopped, counting what they got.
#[derive(Debug)]
struct Traffic {
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Traffic {
    fn start(client: Arc<UserClient>, user_id: &str) -> Traffic {
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let stop = CancellationToken::new();
        let tasks = (0..CALLERS)
            .map(|_| {
                let (client, ok, failed, stop) =
                    (client.clone(), ok.clone(), failed.clone(), stop.clone());
                let user_id = user_id.to_string();
                tokio::spawn(async move {
                    while !stop.is_cancelled() {
                        match client.get_user(&user_id).await {
                            Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                            Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                        };
                        tokio::time::sleep(Duration::from_millis(25)).await;
                    }
                })
            })
            .collect();
        Traffic {
            ok,
            failed,
            stop,
            tasks,
        }
    }

    fn answered(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    async fn stop(self) {
        self.stop.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
    }
}
