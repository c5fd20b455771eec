//! `bench grpc`: request-reply over gRPC against a raw tonic call, same run.
//!
//! - Ours: `GetUser` on the real user-service, started in-process (its
//!   tracing/deadline/metrics layer, validation, a SQLite file or the
//!   PostgreSQL of `--database-url`) with its default read cache, called
//!   through [`UserClient`] (per-call deadline, retry policy, circuit
//!   breaker, trace injection), as task-worker calls it. `--users` users
//!   looked up round-robin, so after the first pass every call is a hit.
//! - Raw: `grpc.health.v1.Health/Check` on a bare tonic server with nothing
//!   but the health service, called through the generated client: the cost
//!   of one unary tonic call that does no work.
//!
//! - Also shown: `GetUser` with the service's read cache off (a second
//!   instance on the same database: every call reads the database),
//!   `GetUser` through the bare generated client (the client library's cost
//!   is the difference) and `Health/Check` on user-service itself (the raw
//!   call plus our call layer, without the database).
//!
//! Each case runs at concurrency 1 and 32 (`--concurrency`) over one shared
//! HTTP/2 channel, `--requests` timed calls after `--warmup` untimed ones;
//! latencies go into an HDR histogram (µs). `--rounds` rounds alternate raw
//! and ours; each figure is the median round (the machine is shared).
//! RESULT lines: requests/s and p99 per concurrency; the requests/s ratio at
//! the highest concurrency comes last.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use bench::report::{Figure, median, number, table};
use common::{
    circuit_breaker::BreakerConfig,
    config::SecretUrl,
    proto::user::v1::{CreateUserRequest, GetUserRequest, user_service_client::UserServiceClient},
    retry::RetryPolicy,
    shutdown::Shutdown,
};
use hdrhistogram::Histogram;
use tokio::{net::TcpListener, task::JoinHandle, time::Instant};
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint, server::TcpIncoming};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use user_client::{ClientConfig, UserClient};
use user_service::{Application, Config as UserServiceConfig};

/// Options of the grpc scenario.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Args {
    /// Timed calls per case and round.
    #[arg(long, default_value_t = 10_000)]
    requests: u32,
    /// Rounds per case (raw and ours alternating); the median is reported.
    #[arg(long, default_value_t = 5)]
    rounds: u32,
    /// Untimed calls before each round.
    #[arg(long, default_value_t = 1_000)]
    warmup: u32,
    /// Concurrency levels (calls in flight at once).
    #[arg(long, value_delimiter = ',', default_value = "1,32")]
    concurrency: Vec<u32>,
    /// Users seeded and looked up round-robin.
    #[arg(long, default_value_t = 100)]
    users: u32,
    /// The service's database; a fresh SQLite file in a temp directory when absent.
    #[arg(long)]
    database_url: Option<String>,
    /// The service's database pool size.
    #[arg(long, default_value_t = 10)]
    db_max_connections: u32,
    /// RabbitMQ for the service's outbox relay (the seeded users' events go
    /// to a queue of their own, deleted afterwards).
    #[arg(
        long,
        env = "AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    amqp_url: String,
}

/// The median of each figure over rounds.
fn median_of(rounds: &[Measured]) -> Measured {
    Measured {
        requests_per_s: median(rounds.iter().map(|m| m.requests_per_s)),
        p50_us: median(rounds.iter().map(|m| m.p50_us)),
        p99_us: median(rounds.iter().map(|m| m.p99_us)),
    }
}

/// One case's figures.
#[derive(Debug, Clone, Copy)]
struct Measured {
    requests_per_s: f64,
    p50_us: u64,
    p99_us: u64,
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    // The load runs in spawned tasks, so every call crosses the runtime's
    // worker threads as it would in a service.
    tokio::spawn(measure_all(args)).await?
}

async fn measure_all(args: Args) -> anyhow::Result<()> {
    let scratch =
        std::env::temp_dir().join(format!("bench-grpc-{}", uuid::Uuid::new_v4().simple()));
    let database_url = args
        .database_url
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}/users.db", scratch.display()));
    let queue = format!("bench.data_sync.{}", uuid::Uuid::new_v4().simple());

    let service = UserServiceUnderTest::start(
        &database_url,
        args.db_max_connections,
        &args.amqp_url,
        &queue,
        true,
    )
    .await?;
    // A second instance on the same database with the read cache off: what
    // every GetUser costs when it goes to the database.
    let uncached = UserServiceUnderTest::start(
        &database_url,
        args.db_max_connections,
        &args.amqp_url,
        &queue,
        false,
    )
    .await?;
    let raw = RawHealthServer::start().await?;
    let outcome = compare(&args, &service, &uncached, &raw).await;

    raw.stop().await;
    uncached.stop().await;
    service.stop().await;
    delete_queue(&args.amqp_url, &queue).await;
    let _ = std::fs::remove_dir_all(&scratch);
    outcome
}

async fn compare(
    args: &Args,
    service: &UserServiceUnderTest,
    uncached: &UserServiceUnderTest,
    raw: &RawHealthServer,
) -> anyhow::Result<()> {
    let client = UserClient::connect_lazy(client_config(service))?;
    let ids: Arc<Vec<String>> = Arc::new((0..args.users).map(|n| format!("u-{n:05}")).collect());
    for id in ids.iter() {
        client
            .create_user(CreateUserRequest {
                user_id: id.clone(),
                name: format!("User {id}"),
                age: 30,
                email: format!("{id}@example.com"),
            })
            .await
            .with_context(|| format!("cannot seed user {id}"))?;
    }
    let health = HealthClient::new(channel(raw.addr)?);

    let mut rows = vec![vec![
        "call".to_string(),
        "concurrency".into(),
        "requests/s".into(),
        "p50 µs".into(),
        "p99 µs".into(),
    ]];
    let mut results = Vec::new();
    let raw_call = move |_: u32| check_health(health.clone());
    let our_call = {
        let (client, ids) = (client.clone(), ids.clone());
        move |n: u32| get_nth_user(client.clone(), ids.clone(), n)
    };
    let uncached_call = {
        let client = UserClient::connect_lazy(ClientConfig {
            url: format!("http://{}", uncached.grpc_addr),
            ..client_config(service)
        })?;
        let ids = ids.clone();
        move |n: u32| get_nth_user(client.clone(), ids.clone(), n)
    };
    // The same call through the bare generated client: the client
    // library's own cost is the difference to `ours`.
    let plain_call = {
        let grpc = UserServiceClient::new(channel(service.grpc_addr)?);
        let ids = ids.clone();
        move |n: u32| {
            let mut grpc = grpc.clone();
            let ids = ids.clone();
            async move {
                let id = ids[n as usize % ids.len()].clone();
                grpc.get_user(GetUserRequest { user_id: id })
                    .await
                    .map(|_| ())
                    .map_err(anyhow::Error::from)
            }
        }
    };
    // Health/Check on user-service itself: the raw call plus our call layer
    // (trace context, deadline, metrics), without the database.
    let layered_call = {
        let health = HealthClient::new(channel(service.grpc_addr)?);
        move |_: u32| check_health(health.clone())
    };
    for &concurrency in &args.concurrency {
        // Rounds alternate the three calls, so a change in the machine's
        // load touches all of them; each figure is the median round.
        let (mut raws, mut ourss, mut uncacheds, mut plains, mut layereds) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..args.rounds.max(1) {
            raws.push(load(args, concurrency, raw_call.clone()).await?);
            ourss.push(load(args, concurrency, our_call.clone()).await?);
            uncacheds.push(load(args, concurrency, uncached_call.clone()).await?);
            plains.push(load(args, concurrency, plain_call.clone()).await?);
            layereds.push(load(args, concurrency, layered_call.clone()).await?);
        }
        let (raw_measured, ours, uncached, plain, layered) = (
            median_of(&raws),
            median_of(&ourss),
            median_of(&uncacheds),
            median_of(&plains),
            median_of(&layereds),
        );
        for (call, m) in [
            ("raw tonic Health/Check", raw_measured),
            ("GetUser via UserClient", ours),
            ("GetUser via UserClient, read cache off", uncached),
            ("GetUser via generated client", plain),
            ("Health/Check on user-service", layered),
        ] {
            rows.push(vec![
                call.to_string(),
                concurrency.to_string(),
                format!("{:.0}", m.requests_per_s),
                m.p50_us.to_string(),
                m.p99_us.to_string(),
            ]);
        }
        results.push((concurrency, ours, raw_measured));
    }

    println!(
        "gRPC request-reply: median of {} rounds of {} timed calls per case over one HTTP/2 channel, database {}",
        args.rounds,
        args.requests,
        SecretUrl::new(service.database_url.clone())
    );
    print!("{}", table(&rows));
    if let Some((concurrency, ours, raw)) = results.last() {
        println!(
            "at concurrency {concurrency}: GetUser p99 is {}x the raw p99 (target: at most 2x)",
            number(ours.p99_us as f64 / raw.p99_us.max(1) as f64)
        );
    }

    let mut lines = Vec::new();
    for (concurrency, ours, raw) in &results {
        lines.push(Figure::new(
            format!("grpc.getuser.c{concurrency}.p99"),
            ours.p99_us as f64,
            "us",
            raw.p99_us as f64,
        ));
    }
    // Throughput lines last, the highest concurrency at the very end.
    for (concurrency, ours, raw) in &results {
        lines.push(Figure::new(
            format!("grpc.getuser.c{concurrency}"),
            ours.requests_per_s,
            "req/s",
            raw.requests_per_s,
        ));
    }
    for line in lines {
        println!("{}", line.result_line());
    }
    Ok(())
}

/// How task-worker configures its client, aimed at `service`.
fn client_config(service: &UserServiceUnderTest) -> ClientConfig {
    ClientConfig {
        url: format!("http://{}", service.grpc_addr),
        timeout: Duration::from_secs(5),
        retry: RetryPolicy::rpc(),
        breaker: BreakerConfig::default(),
        ..ClientConfig::default()
    }
}

/// One `grpc.health.v1.Health/Check` of the whole server.
async fn check_health(mut health: HealthClient<Channel>) -> anyhow::Result<()> {
    health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await?;
    Ok(())
}

/// Looks up user `ids[n % len]` through `client` (call `n` of a load).
async fn get_nth_user(client: UserClient, ids: Arc<Vec<String>>, n: u32) -> anyhow::Result<()> {
    let id = &ids[n as usize % ids.len()];
    client.get_user(id).await?;
    Ok(())
}

/// Runs `warmup` then `requests` calls of `call(n)` with `concurrency`
/// workers; returns throughput and latency percentiles of the timed part.
async fn load<F, Fut>(args: &Args, concurrency: u32, call: F) -> anyhow::Result<Measured>
where
    F: Fn(u32) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    run_workers(args.warmup, concurrency, call.clone()).await?;
    let started = Instant::now();
    let histogram = run_workers(args.requests, concurrency, call).await?;
    let elapsed = started.elapsed();
    Ok(Measured {
        requests_per_s: f64::from(args.requests) / elapsed.as_secs_f64(),
        p50_us: histogram.value_at_quantile(0.50),
        p99_us: histogram.value_at_quantile(0.99),
    })
}

/// `total` calls shared by `concurrency` tasks, each recording its
/// latencies (µs); the merged histogram.
async fn run_workers<F, Fut>(
    total: u32,
    concurrency: u32,
    call: F,
) -> anyhow::Result<Histogram<u64>>
where
    F: Fn(u32) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let concurrency = concurrency.max(1);
    let next = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let mut workers: Vec<JoinHandle<anyhow::Result<Histogram<u64>>>> = Vec::new();
    for _ in 0..concurrency {
        let call = call.clone();
        let next = next.clone();
        workers.push(tokio::spawn(async move {
            let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
            loop {
                let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if n >= total {
                    return Ok(histogram);
                }
                let started = Instant::now();
                call(n).await?;
                histogram.saturating_record(started.elapsed().as_micros().max(1) as u64);
            }
        }));
    }
    let mut merged = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for worker in workers {
        merged.add(worker.await??)?;
    }
    Ok(merged)
}

fn channel(addr: SocketAddr) -> anyhow::Result<Channel> {
    Ok(Endpoint::from_shared(format!("http://{addr}"))?
        .tcp_nodelay(true)
        .connect_lazy())
}

/// The real user-service, in-process on port 0.
struct UserServiceUnderTest {
    grpc_addr: SocketAddr,
    database_url: String,
    shutdown: Shutdown,
    running: JoinHandle<anyhow::Result<()>>,
}

impl UserServiceUnderTest {
    async fn start(
        database_url: &str,
        db_max_connections: u32,
        amqp_url: &str,
        queue: &str,
        read_cache: bool,
    ) -> anyhow::Result<Self> {
        let defaults = UserServiceConfig::default();
        let config = UserServiceConfig {
            read_cache_capacity: if read_cache {
                defaults.read_cache_capacity
            } else {
                0
            },
            grpc_addr: "127.0.0.1:0".parse()?,
            http_addr: "127.0.0.1:0".parse()?,
            ops_addr: "127.0.0.1:0".parse()?,
            database_url: SecretUrl::new(database_url),
            amqp_url: SecretUrl::new(amqp_url),
            data_sync_queue: queue.to_string(),
            drain_delay: Duration::ZERO,
            db_max_connections,
            ..defaults
        };
        let application = Application::build(config).await?;
        let grpc_addr = application.grpc_addr();
        let shutdown = Shutdown::new();
        let running = tokio::spawn(application.run_until_stopped(shutdown.clone()));
        // Serving once the database is migrated.
        let mut health = HealthClient::new(channel(grpc_addr)?);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let status = health
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .map(|response| response.into_inner().status);
            if status.is_ok_and(|s| {
                s == tonic_health::pb::health_check_response::ServingStatus::Serving as i32
            }) {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "user-service not serving after 30 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(UserServiceUnderTest {
            grpc_addr,
            database_url: database_url.to_string(),
            shutdown,
            running,
        })
    }

    async fn stop(self) {
        self.shutdown.trigger();
        match self.running.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => eprintln!("user-service stopped with an error: {error:#}"),
            Err(error) => eprintln!("user-service task failed: {error}"),
        }
    }
}

/// A bare tonic server with only the health service: the raw baseline.
struct RawHealthServer {
    addr: SocketAddr,
    stop: CancellationToken,
    running: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl RawHealthServer {
    async fn start() -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (_reporter, health) = tonic_health::server::health_reporter();
        let stop = CancellationToken::new();
        let running = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(health)
                .serve_with_incoming_shutdown(
                    TcpIncoming::from(listener).with_nodelay(Some(true)),
                    stop.clone().cancelled_owned(),
                ),
        );
        Ok(RawHealthServer {
            addr,
            stop,
            running,
        })
    }

    async fn stop(self) {
        self.stop.cancel();
        let _ = self.running.await;
    }
}

/// Removes the queue that received the seeded users' events.
async fn delete_queue(amqp_url: &str, queue: &str) {
    use lapin::{Connection, ConnectionProperties, options::QueueDeleteOptions};
    let Ok(connection) = Connection::connect(amqp_url, ConnectionProperties::default()).await
    else {
        return;
    };
    if let Ok(channel) = connection.create_channel().await {
        let _ = channel
            .queue_delete(queue.into(), QueueDeleteOptions::default())
            .await;
    }
    let _ = connection.close(200, "bench done".into()).await;
}
