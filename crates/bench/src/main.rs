//! `bench <scenario>`: load for every switchyard pattern, each beside the raw
//! client doing the same work in the same run. Every scenario ends with
//! `RESULT scenario=<name> value=<x> unit=<u> baseline=<y> ratio=<x/y>` lines.
//! Run release builds: `cargo run --release -p bench -- <scenario>`.

mod codec;
mod e2e;
mod grpc;
mod memory;
mod pubsub;
mod scale;
mod workqueue;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(about = "switchyard benchmarks, each against the raw client in the same run")]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// JSON vs Protobuf: size and encode/decode time of SensorReading and the design guide's User.
    Codec(codec::Args),
    /// RabbitMQ work queue: confirmed publishes, consume+ack at prefetch 1 and 100, fairness.
    Workqueue(workqueue::Args),
    /// NATS pub-sub: sensor-publisher -> monitor-subscriber vs raw async-nats; JetStream publishing.
    Pubsub(pubsub::Args),
    /// gRPC request-reply: user-service GetUser vs a raw tonic Health/Check, at concurrency 1 and 32.
    Grpc(grpc::Args),
    /// End-to-end alert latency, services as processes: reading -> notification vs the raw hops' sum.
    E2e(e2e::Args),
    /// Resident memory of every service binary, idle and under load, against the 30 MiB idle goal.
    Memory(memory::Args),
    /// Throughput with 1..8 instances against the ideal line: work queue, fan-out, alert group.
    Scale(scale::Args),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().scenario {
        Scenario::Codec(args) => codec::run(args).await,
        Scenario::Workqueue(args) => workqueue::run(args).await,
        Scenario::Pubsub(args) => pubsub::run(args).await,
        Scenario::Grpc(args) => grpc::run(args).await,
        Scenario::E2e(args) => e2e::run(args).await,
        Scenario::Memory(args) => memory::run(args).await,
        Scenario::Scale(args) => scale::run(args).await,
    }
}
