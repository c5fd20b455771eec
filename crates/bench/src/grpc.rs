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
//! - A cache miss: `GetUser` with the service's read cache off (a second
//!   instance on the same database: every call reads the database).
//! - PostgreSQL: the same two instances on a PostgreSQL database of their
//!   own, created on `--postgres-url`'s server and dropped afterwards
//!   (`--no-postgres` leaves them out).
//! - Also shown: `GetUser` through the bare generated client (the client
//!   library's cost is the difference) and `Health/Check` on user-service
//!   itself (the raw call plus our call layer, without the database).
//!
//! Each case runs at concurrency 1 and 32 (`--concurrency`) over one shared
//! HTTP/2 channel, `--requests` timed calls after `--warmup` untimed ones;
//! latencies go into an HDR histogram (µs). `--rounds` rounds run every case
//! in turn; each figure is the median round (the machine is shared), its
//! `SPREAD` line the range of the per-round ratios to raw.
//! RESULT lines, each against raw Health/Check at the same concurrency: p99
//! per concurrency; at the highest concurrency `grpc.getuser.nocache`,
//! `grpc.getuser.postgres` and `grpc.getuser.postgres.nocache` (req/s);
//! then requests/s per concurrency, the highest last.

use std::{net::SocketAddr, pin::Pin, sync::Arc, time::Duration};

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
use sqlx::Connection as _;
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
    /// The PostgreSQL server (any database on it) the PostgreSQL cases
    /// create their database on (and drop it afterwards).
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/test")]
    postgres_url: String,
    /// Leave out the PostgreSQL cases.
    #[arg(long)]
    no_postgres: bool,
    /// RabbitMQ for the service's outbox relay (the seeded users' events go
    /// to a queue of their own, deleted afterwards).
    #[arg(
        long,
        env = "AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    amqp_url: String,
}

/// One round's figures of one case.
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
    let postgres = if args.no_postgres {
        None
    } else {
        Some(ScratchPostgres::create(&args.postgres_url).await?)
    };

    let outcome = async {
        let pair = ServicePair::start(&args, &database_url, &queue).await?;
        let postgres_pair = match &postgres {
            Some(db) => Some(ServicePair::start(&args, &db.url, &queue).await?),
            None => None,
        };
        let raw = RawHealthServer::start().await?;
        let outcome = compare(&args, &pair, postgres_pair.as_ref(), &raw).await;
        raw.stop().await;
        if let Some(postgres_pair) = postgres_pair {
            postgres_pair.stop().await;
        }
        pair.stop().await;
        outcome
    }
    .await;

    if let Some(db) = postgres {
        db.drop_database().await;
    }
    delete_queue(&args.amqp_url, &queue).await;
    let _ = std::fs::remove_dir_all(&scratch);
    outcome
}

/// One call of a case: `call(n)` is the `n`th call of a load.
type Call =
    Arc<dyn Fn(u32) -> Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>> + Send + Sync>;

fn call<F, Fut>(f: F) -> Call
where
    F: Fn(u32) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    Arc::new(move |n| Box::pin(f(n)))
}

/// One call measured: its row in the table and, when it has a `RESULT`
/// line of its own, that line's scenario.
struct Case {
    label: &'static str,
    /// The `RESULT` scenario of its requests/s at the highest concurrency.
    scenario: Option<&'static str>,
    call: Call,
}

/// Where [`cases`] puts raw Health/Check and GetUser via UserClient.
const RAW: usize = 0;
const OURS: usize = 1;

/// Every call measured, raw first ([`RAW`], [`OURS`]); seeds the users
/// `ids` on both databases first.
async fn cases(
    ids: &Arc<Vec<String>>,
    pair: &ServicePair,
    postgres: Option<&ServicePair>,
    raw: &RawHealthServer,
) -> anyhow::Result<Vec<Case>> {
    let client = pair.seed(ids).await?;
    let health = HealthClient::new(channel(raw.addr)?);

    let mut cases = vec![
        Case {
            label: "raw tonic Health/Check",
            scenario: None,
            call: call(move |_| check_health(health.clone())),
        },
        Case {
            label: "GetUser via UserClient",
            scenario: None,
            call: get_users(client, ids),
        },
        Case {
            label: "GetUser via UserClient, read cache off",
            scenario: Some("grpc.getuser.nocache"),
            call: get_users(pair.uncached_client()?, ids),
        },
    ];
    if let Some(postgres) = postgres {
        let cached = postgres.seed(ids).await?;
        cases.push(Case {
            label: "GetUser via UserClient, PostgreSQL",
            scenario: Some("grpc.getuser.postgres"),
            call: get_users(cached, ids),
        });
        cases.push(Case {
            label: "GetUser via UserClient, PostgreSQL, read cache off",
            scenario: Some("grpc.getuser.postgres.nocache"),
            call: get_users(postgres.uncached_client()?, ids),
        });
    }
    // The same call through the bare generated client: the client
    // library's own cost is the difference to `ours`.
    let grpc = UserServiceClient::new(channel(pair.cached.grpc_addr)?);
    let plain_ids = ids.clone();
    cases.push(Case {
        label: "GetUser via generated client",
        scenario: None,
        call: call(move |n| {
            let mut grpc = grpc.clone();
            let id = plain_ids[n as usize % plain_ids.len()].clone();
            async move {
                grpc.get_user(GetUserRequest { user_id: id })
                    .await
                    .map(|_| ())
                    .map_err(anyhow::Error::from)
            }
        }),
    });
    // Health/Check on user-service itself: the raw call plus our call layer
    // (trace context, deadline, metrics), without the database.
    let layered = HealthClient::new(channel(pair.cached.grpc_addr)?);
    cases.push(Case {
        label: "Health/Check on user-service",
        scenario: None,
        call: call(move |_| check_health(layered.clone())),
    });
    Ok(cases)
}

async fn compare(
    args: &Args,
    pair: &ServicePair,
    postgres: Option<&ServicePair>,
    raw: &RawHealthServer,
) -> anyhow::Result<()> {
    let ids: Arc<Vec<String>> = Arc::new((0..args.users).map(|n| format!("u-{n:05}")).collect());
    let cases = cases(&ids, pair, postgres, raw).await?;

    let mut rows = vec![vec![
        "call".to_string(),
        "concurrency".into(),
        "requests/s".into(),
        "p50 µs".into(),
        "p99 µs".into(),
    ]];
    // Per concurrency, per case, its rounds.
    let mut measured: Vec<(u32, Vec<Vec<Measured>>)> = Vec::new();
    for &concurrency in &args.concurrency {
        // Each round runs every case in turn, so a change in the machine's
        // load touches all of them; each figure is the median round.
        let mut rounds: Vec<Vec<Measured>> = vec![Vec::new(); cases.len()];
        for _ in 0..args.rounds.max(1) {
            for (case, rounds) in cases.iter().zip(&mut rounds) {
                rounds.push(load(args, concurrency, case.call.clone()).await?);
            }
        }
        for (case, rounds) in cases.iter().zip(&rounds) {
            rows.push(vec![
                case.label.to_string(),
                concurrency.to_string(),
                format!("{:.0}", median(rounds.iter().map(|m| m.requests_per_s))),
                median_us(rounds, |m| m.p50_us).to_string(),
                median_us(rounds, |m| m.p99_us).to_string(),
            ]);
        }
        measured.push((concurrency, rounds));
    }

    println!(
        "gRPC request-reply: median of {} rounds of {} timed calls per case over one HTTP/2 channel, database {}{}",
        args.rounds,
        args.requests,
        SecretUrl::new(pair.cached.database_url.clone()),
        match postgres {
            Some(postgres) => format!(
                "; PostgreSQL cases on {}",
                SecretUrl::new(postgres.cached.database_url.clone())
            ),
            None => String::new(),
        }
    );
    print!("{}", table(&rows));
    let Some(highest) = measured.iter().max_by_key(|(concurrency, _)| *concurrency) else {
        return Ok(());
    };
    let (concurrency, rounds) = highest;
    let p99 = |case: usize| median_us(&rounds[case], |m| m.p99_us) as f64;
    println!(
        "at concurrency {concurrency}: GetUser p99 is {}x the raw p99 (target: at most 2x)",
        number(p99(OURS) / p99(RAW).max(1.0))
    );

    let mut figures = Vec::new();
    for (concurrency, rounds) in &measured {
        figures.push(Figure::from_rounds(
            format!("grpc.getuser.c{concurrency}.p99"),
            "us",
            &rounds[OURS]
                .iter()
                .map(|m| m.p99_us as f64)
                .collect::<Vec<_>>(),
            &rounds[RAW]
                .iter()
                .map(|m| m.p99_us as f64)
                .collect::<Vec<_>>(),
        ));
    }
    for (case, case_rounds) in cases.iter().zip(rounds) {
        if let Some(scenario) = case.scenario {
            figures.push(requests_per_s(scenario, case_rounds, &rounds[RAW]));
        }
    }
    // Throughput lines last, the highest concurrency at the very end.
    let mut by_concurrency: Vec<&(u32, Vec<Vec<Measured>>)> = measured.iter().collect();
    by_concurrency.sort_by_key(|(concurrency, _)| *concurrency);
    for (concurrency, rounds) in by_concurrency {
        figures.push(requests_per_s(
            &format!("grpc.getuser.c{concurrency}"),
            &rounds[OURS],
            &rounds[RAW],
        ));
    }
    for figure in figures {
        println!("{}", figure.report_lines());
    }
    Ok(())
}

/// Requests/s over rounds, beside raw's in the same rounds.
fn requests_per_s(scenario: &str, ours: &[Measured], raw: &[Measured]) -> Figure {
    let per_round =
        |rounds: &[Measured]| rounds.iter().map(|m| m.requests_per_s).collect::<Vec<_>>();
    Figure::from_rounds(scenario, "req/s", &per_round(ours), &per_round(raw))
}

/// The median round of a latency percentile.
fn median_us(rounds: &[Measured], percentile: impl Fn(&Measured) -> u64) -> u64 {
    median(rounds.iter().map(percentile))
}

/// `GetUser` of `ids[n % len]` through `client`.
fn get_users(client: UserClient, ids: &Arc<Vec<String>>) -> Call {
    let ids = ids.clone();
    call(move |n| get_nth_user(client.clone(), ids.clone(), n))
}

/// Two instances of user-service on one database: the default read cache,
/// and the cache off (every `GetUser` reads the database).
struct ServicePair {
    cached: UserServiceUnderTest,
    uncached: UserServiceUnderTest,
}

impl ServicePair {
    async fn start(args: &Args, database_url: &str, queue: &str) -> anyhow::Result<Self> {
        let cached = UserServiceUnderTest::start(
            database_url,
            args.db_max_connections,
            &args.amqp_url,
            queue,
            true,
        )
        .await?;
        let uncached = UserServiceUnderTest::start(
            database_url,
            args.db_max_connections,
            &args.amqp_url,
            queue,
            false,
        )
        .await?;
        Ok(ServicePair { cached, uncached })
    }

    /// Creates the users `ids` (through the cached instance); its client.
    async fn seed(&self, ids: &[String]) -> anyhow::Result<UserClient> {
        let client = UserClient::connect_lazy(client_config(self.cached.grpc_addr))?;
        for id in ids {
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
        Ok(client)
    }

    fn uncached_client(&self) -> anyhow::Result<UserClient> {
        Ok(UserClient::connect_lazy(client_config(
            self.uncached.grpc_addr,
        ))?)
    }

    async fn stop(self) {
        self.uncached.stop().await;
        self.cached.stop().await;
    }
}

/// A PostgreSQL database of the benchmark's own, dropped afterwards.
struct ScratchPostgres {
    /// The server's URL the database was created through.
    admin_url: String,
    name: String,
    /// The new database's URL.
    url: String,
}

impl ScratchPostgres {
    async fn create(admin_url: &str) -> anyhow::Result<Self> {
        let name = format!("bench_grpc_{}", uuid::Uuid::new_v4().simple());
        let base = admin_url
            .rsplit_once('/')
            .map_or(admin_url, |(base, _)| base);
        let mut admin = sqlx::PgConnection::connect(admin_url)
            .await
            .with_context(|| {
                format!(
                    "cannot reach PostgreSQL at {} (--postgres-url; --no-postgres leaves its cases out)",
                    SecretUrl::new(admin_url)
                )
            })?;
        sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut admin)
            .await
            .with_context(|| format!("cannot create the database {name}"))?;
        let _ = admin.close().await;
        Ok(ScratchPostgres {
            admin_url: admin_url.to_string(),
            url: format!("{base}/{name}"),
            name,
        })
    }

    async fn drop_database(self) {
        let dropped = async {
            let mut admin = sqlx::PgConnection::connect(&self.admin_url).await?;
            sqlx::query(&format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                self.name
            ))
            .execute(&mut admin)
            .await?;
            admin.close().await
        }
        .await;
        if let Err(error) = dropped {
            eprintln!("cannot drop the database {}: {error}", self.name);
        }
    }
}

/// How task-worker configures its client, aimed at `grpc_addr`.
fn client_config(grpc_addr: SocketAddr) -> ClientConfig {
    ClientConfig {
        url: format!("http://{grpc_addr}"),
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
async fn load(args: &Args, concurrency: u32, call: Call) -> anyhow::Result<Measured> {
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
async fn run_workers(total: u32, concurrency: u32, call: Call) -> anyhow::Result<Histogram<u64>> {
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
