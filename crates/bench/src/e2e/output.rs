//! What `bench e2e` prints: the raw hops, each phase's latency and where
//! it goes, then the `RESULT` lines — each phase's p50 and p99 against the
//! sum of the raw hops' p50s and p99s at that phase's pace, and the high
//! phase's notifications per second against the alerts it raised per
//! second.

use bench::report::{Figure, number, table};

use super::{PhaseRun, latency::Spread, raw::RawHops};

/// The hops in path order, named for the tables.
fn hops(raw: &RawHops) -> [(&'static str, Spread); 3] {
    [
        ("NATS publish → receive (async-nats)", Spread::of(&raw.nats)),
        (
            "AMQP confirmed publish → consume (lapin)",
            Spread::of(&raw.amqp),
        ),
        ("gRPC unary Health/Check (tonic)", Spread::of(&raw.grpc)),
    ]
}

/// The sums of the hops' p50s and p99s, µs.
fn sums(raw: &RawHops) -> (u64, u64) {
    hops(raw)
        .iter()
        .fold((0, 0), |(p50, p99), (_, s)| (p50 + s.p50, p99 + s.p99))
}

/// µs as ms with 3 decimals.
fn ms(micros: u64) -> String {
    number(micros as f64 / 1000.0)
}

/// `p50 / p99` in ms.
fn both(spread: &Spread) -> String {
    format!("{} / {}", ms(spread.p50), ms(spread.p99))
}

fn row(cells: &[&str]) -> Vec<String> {
    cells.iter().map(|cell| cell.to_string()).collect()
}

/// Prints the run's tables and its `RESULT` lines (last).
pub(super) fn print(mode: &str, back_to_back: &RawHops, runs: &[PhaseRun]) {
    println!(
        "\nbench e2e ({mode} mode): one task-worker at prefetch 1, one alert-subscriber, user-service on SQLite"
    );

    println!("\nraw hops, one message at a time, p50 / p99 (ms)");
    let mut header = vec!["hop".to_string(), "back to back".to_string()];
    header.extend(runs.iter().map(|run| {
        format!(
            "{} pace ({} ms apart)",
            run.phase.name,
            number(run.gap.as_secs_f64() * 1000.0)
        )
    }));
    let mut rows = vec![header];
    let paced: Vec<[(&str, Spread); 3]> = runs.iter().map(|run| hops(&run.raw)).collect();
    for (i, (name, spread)) in hops(back_to_back).iter().enumerate() {
        let mut cells = vec![name.to_string(), both(spread)];
        cells.extend(paced.iter().map(|hops| both(&hops[i].1)));
        rows.push(cells);
    }
    let mut sum_row = vec!["sum".to_string()];
    for raw in std::iter::once(back_to_back).chain(runs.iter().map(|run| &run.raw)) {
        let (p50, p99) = sums(raw);
        sum_row.push(format!("{} / {}", ms(p50), ms(p99)));
    }
    rows.push(sum_row);
    print!("{}", table(&rows));

    println!(
        "\nreading timestamp → \"notification sent\" (ms; the reading's timestamp is whole ms: up to 1 ms more)"
    );
    let mut rows = vec![row(&[
        "phase",
        "readings/s",
        "alerts/s",
        "alerts",
        "notified",
        "repeated",
        "p50",
        "p99",
        "max",
        "raw sum at its pace",
        "notified/s",
    ])];
    for run in runs {
        let latency = &run.latency;
        let (p50, p99) = sums(&run.raw);
        rows.push(vec![
            run.phase.name.to_string(),
            number(run.phase.rate_per_sec),
            number(run.phase.alert_rate()),
            latency.expected.to_string(),
            latency.notified.to_string(),
            latency.repeated.to_string(),
            ms(latency.total.p50),
            ms(latency.total.p99),
            ms(latency.total.max),
            format!("{} / {}", ms(p50), ms(p99)),
            number(latency.notified_per_sec),
        ]);
    }
    print!("{}", table(&rows));

    println!("\nwhere the time goes, p50 / p99 (ms)");
    let mut rows = vec![row(&[
        "phase",
        "publish (ts → NATS delivery)",
        "evaluate (→ alert raised)",
        "hand on (→ notification sent)",
        "NATS delivery → notification",
    ])];
    for run in runs {
        let latency = &run.latency;
        rows.push(vec![
            run.phase.name.to_string(),
            both(&latency.publish),
            both(&latency.evaluate),
            both(&latency.hand_on),
            both(&latency.from_delivery),
        ]);
    }
    print!("{}", table(&rows));

    for run in runs.iter().filter(|run| !run.stages.is_empty()) {
        println!(
            "\n{} phase, hand on split by the services' spans (--spans; ms)",
            run.phase.name
        );
        let mut rows = vec![row(&["stage", "alerts", "p50", "p99", "max"])];
        for (stage, spread) in &run.stages {
            rows.push(vec![
                stage.to_string(),
                spread.count.to_string(),
                ms(spread.p50),
                ms(spread.p99),
                ms(spread.max),
            ]);
        }
        print!("{}", table(&rows));
    }

    let (hot_p50, hot_p99) = sums(back_to_back);
    println!(
        "\nagainst the raw hops back to back (sum {} / {} ms):",
        ms(hot_p50),
        ms(hot_p99)
    );
    for run in runs {
        let ratio = |ours: u64, raw: u64| number(ours as f64 / raw.max(1) as f64);
        println!(
            "  {}: p50 {}x, p99 {}x",
            run.phase.name,
            ratio(run.latency.total.p50, hot_p50),
            ratio(run.latency.total.p99, hot_p99)
        );
    }
    println!();

    for figure in figures(mode, runs) {
        println!("{}", figure.report_lines());
    }
}

/// The `RESULT` figures: `e2e[.<mode>].<phase>.p50|p99` in ms against the
/// raw sum at the phase's pace, and `.high.notified`.
fn figures(mode: &str, runs: &[PhaseRun]) -> Vec<Figure> {
    let name = |figure: String| match mode {
        "core" => format!("e2e.{figure}"),
        mode => format!("e2e.{mode}.{figure}"),
    };
    let ms = |micros: u64| micros as f64 / 1000.0;
    let mut figures = Vec::new();
    for run in runs {
        let (p50, p99) = sums(&run.raw);
        let phase = run.phase.name;
        figures.push(Figure::new(
            name(format!("{phase}.p50")),
            ms(run.latency.total.p50),
            "ms",
            ms(p50),
        ));
        figures.push(Figure::new(
            name(format!("{phase}.p99")),
            ms(run.latency.total.p99),
            "ms",
            ms(p99),
        ));
    }
    if let Some(high) = runs.iter().find(|run| run.phase.name == "high") {
        figures.push(Figure::new(
            name("high.notified".into()),
            high.latency.notified_per_sec,
            "alerts/s",
            high.phase.alert_rate(),
        ));
    }
    figures
}
