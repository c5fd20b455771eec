//! `bench codec`: the design guide's JSON-vs-Protobuf table, measured.
//!
//! For a [`SensorReading`] and the design guide's `User` message: encoded size and
//! encode/decode time per message with each codec, through the same
//! [`Codec`] the services use. The guide claims Protobuf is "~60% smaller"
//! and parses "3x faster"; the table prints our numbers beside the claim.
//! The RESULT line is Protobuf decode time of a reading (value) against
//! JSON decode time (baseline).

use std::{hint::black_box, time::Instant};

use bench::{
    report::{Figure, median, number, table},
    samples,
};
use common::codec::{Codec, ContentType, WireMessage};

/// Options of the codec scenario.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Encode/decode calls per timed round.
    #[arg(long, default_value_t = 200_000)]
    iterations: u32,
    /// Timed rounds; the median round is reported.
    #[arg(long, default_value_t = 7)]
    rounds: u32,
}

/// Size and timings of one message in one encoding.
struct Measured {
    size: usize,
    encode_ns: f64,
    decode_ns: f64,
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    let reading = samples::sensor_reading();
    let user = samples::guide_user();

    let mut rows = vec![vec![
        "message".to_string(),
        "codec".into(),
        "bytes".into(),
        "encode ns".into(),
        "decode ns".into(),
    ]];
    let mut summary = vec![vec![
        "message".to_string(),
        "protobuf size vs json".into(),
        "guide's claim".into(),
        "protobuf parse speed-up".into(),
        "guide's claim".into(),
    ]];
    let mut reading_decode = (0.0, 0.0);
    for (name, json, proto) in [
        (
            "SensorReading",
            measure(&reading, ContentType::Json, &args)?,
            measure(&reading, ContentType::Protobuf, &args)?,
        ),
        (
            "User (guide)",
            measure(&user, ContentType::Json, &args)?,
            measure(&user, ContentType::Protobuf, &args)?,
        ),
    ] {
        for (codec, m) in [("json", &json), ("protobuf", &proto)] {
            rows.push(vec![
                name.to_string(),
                codec.into(),
                m.size.to_string(),
                number(m.encode_ns),
                number(m.decode_ns),
            ]);
        }
        summary.push(vec![
            name.to_string(),
            format!(
                "{:.0}% smaller",
                100.0 * (1.0 - proto.size as f64 / json.size as f64)
            ),
            "~60% smaller".into(),
            format!("{:.1}x faster", json.decode_ns / proto.decode_ns),
            "3x faster".into(),
        ]);
        if name == "SensorReading" {
            reading_decode = (proto.decode_ns, json.decode_ns);
        }
    }

    println!("{}", table(&rows));
    println!("{}", table(&summary));
    println!(
        "median of {} rounds of {} calls each, release build expected (cargo run --release -p bench -- codec)",
        args.rounds, args.iterations
    );
    println!(
        "{}",
        Figure::new("codec", reading_decode.0, "ns", reading_decode.1).result_line()
    );
    Ok(())
}

fn measure<M: WireMessage>(
    message: &M,
    content_type: ContentType,
    args: &Args,
) -> anyhow::Result<Measured> {
    let codec = Codec::default();
    let encoded = codec.encode(message, content_type)?;
    // Check the round trip once outside the timed loops: a benchmark of a
    // decoder that fails would measure the error path.
    codec.decode::<M>(&encoded, content_type)?;

    let encode_ns = median_ns(args, || {
        black_box(codec.encode(black_box(message), content_type).ok());
    });
    let decode_ns = median_ns(args, || {
        black_box(codec.decode::<M>(black_box(&encoded), content_type).ok());
    });
    Ok(Measured {
        size: encoded.len(),
        encode_ns,
        decode_ns,
    })
}

/// Median over the rounds of the mean time per call, in nanoseconds.
fn median_ns(args: &Args, mut call: impl FnMut()) -> f64 {
    // Warm caches and the allocator before timing.
    for _ in 0..args.iterations / 10 {
        call();
    }
    let rounds: Vec<f64> = (0..args.rounds.max(1))
        .map(|_| {
            let started = Instant::now();
            for _ in 0..args.iterations {
                call();
            }
            started.elapsed().as_nanos() as f64 / f64::from(args.iterations.max(1))
        })
        .collect();
    median(rounds)
}
