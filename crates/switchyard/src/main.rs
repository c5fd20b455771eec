//! `switchyard`: the long-running switchyard services in one binary, so the
//! container image ships their shared dependencies (tokio, tonic, lapin,
//! async-nats, sqlx, OpenTelemetry, ...) once instead of once per service.
//!
//! ```text
//! switchyard task-worker --config worker.toml     the service named first
//! task-worker --config worker.toml                a link named after the service
//! switchyard --help                               the services it runs
//! ```
//!
//! Each service runs exactly as its own binary runs it: its crate's library
//! entry (`Config`, `ENV_KEYS`, `run`) through `common::service` (command line,
//! telemetry, layered config, shutdown on SIGTERM or Ctrl-C), under its own
//! name in logs and traces. The services' own binaries stay what `cargo run`
//! and the tests use.

use std::{
    ffi::{OsStr, OsString},
    future::Future,
    path::Path,
    process::ExitCode,
};

use clap::{Args as _, FromArgMatches as _};
use common::{
    config::Validate,
    service::{self, ConfigArgs},
    shutdown::Shutdown,
};
use serde::{Serialize, de::DeserializeOwned};

/// The services this binary runs, with the `about` of their `--help`.
const SERVICES: [(&str, &str); 4] = [
    (
        "sensor-publisher",
        "Simulates a fleet of sensors and publishes their readings on NATS.",
    ),
    (
        "monitor-subscriber",
        "Sees every sensor reading on NATS and serves per-sensor statistics.",
    ),
    (
        "user-service",
        "The user directory over gRPC and JSON/HTTP.",
    ),
    (
        "task-worker",
        "Consumes tasks from the RabbitMQ work queue.",
    ),
];

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let Some((service, args)) = select(std::env::args_os().collect()) else {
        return Ok(usage());
    };
    match service {
        "sensor-publisher" => {
            serve(
                service,
                args,
                sensor_publisher::ENV_KEYS,
                sensor_publisher::run,
            )
            .await?;
        }
        "monitor-subscriber" => {
            serve(
                service,
                args,
                monitor_subscriber::ENV_KEYS,
                monitor_subscriber::run,
            )
            .await?;
        }
        "user-service" => {
            serve(service, args, &user_service::ENV_KEYS, user_service::run).await?;
        }
        "task-worker" => serve(service, args, task_worker::ENV_KEYS, task_worker::run).await?,
        _ => unreachable!("select returns a name of SERVICES"),
    }
    Ok(ExitCode::SUCCESS)
}

/// The service a command line asks for and that service's command line
/// (its name first): the name the binary was called by when it is a
/// service's (a link), else the first argument.
fn select(args: Vec<OsString>) -> Option<(&'static str, Vec<OsString>)> {
    let called = args
        .first()
        .map(Path::new)
        .and_then(Path::file_name)
        .and_then(service_named);
    if let Some(service) = called {
        return Some((service, args));
    }
    let service = args.get(1).and_then(|arg| service_named(arg))?;
    let mut rest = args;
    rest.remove(0);
    Some((service, rest))
}

fn service_named(name: &OsStr) -> Option<&'static str> {
    SERVICES
        .iter()
        .map(|(service, _)| *service)
        .find(|service| OsStr::new(service) == name)
}

/// `switchyard`, `switchyard --help` or an unknown service: what it runs.
fn usage() -> ExitCode {
    let asked = std::env::args_os()
        .nth(1)
        .is_some_and(|arg| arg == "--help" || arg == "-h" || arg == "help");
    let mut text = format!(
        "{}\n\nUsage: switchyard <SERVICE> [ARGS]...  (or a link named after the service)\n\nServices:\n",
        env!("CARGO_PKG_DESCRIPTION")
    );
    for (service, about) in SERVICES {
        text.push_str(&format!("  {service:<20} {about}\n"));
    }
    text.push_str("\n`switchyard <SERVICE> --help` shows a service's options.");
    if asked {
        println!("{text}");
        ExitCode::SUCCESS
    } else {
        eprintln!("{text}");
        ExitCode::from(2)
    }
}

/// Runs one service as its own binary does: `--config` from `args`, then
/// `common::service` with the crate's `ENV_KEYS` and `run`.
async fn serve<T, F, Fut>(
    name: &'static str,
    args: Vec<OsString>,
    env_keys: &[(&'static str, &'static str)],
    run: F,
) -> anyhow::Result<()>
where
    T: Default + Serialize + DeserializeOwned + Validate + std::fmt::Debug,
    F: FnOnce(T, Shutdown) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let about = SERVICES
        .iter()
        .find_map(|(service, about)| (*service == name).then_some(*about))
        .unwrap_or_default();
    // About after `augment_args`, which would describe the command with
    // ConfigArgs' doc comment.
    let command = ConfigArgs::augment_args(clap::Command::new(name))
        .version(env!("CARGO_PKG_VERSION"))
        .about(about);
    let matches = command.get_matches_from(args);
    let config = ConfigArgs::from_arg_matches(&matches).unwrap_or_else(|error| error.exit());
    service::start_with::<T>(name, &config, env_keys)?
        .run(run)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(words: &[&str]) -> Vec<OsString> {
        words.iter().map(OsString::from).collect()
    }

    #[test]
    fn a_link_named_after_a_service_runs_it_with_every_argument() {
        let (service, rest) =
            select(args(&["/usr/local/bin/task-worker", "--config", "w.toml"])).unwrap();
        assert_eq!(service, "task-worker");
        assert_eq!(
            rest,
            args(&["/usr/local/bin/task-worker", "--config", "w.toml"])
        );
    }

    #[test]
    fn the_first_argument_names_the_service_and_becomes_its_name() {
        let (service, rest) = select(args(&["switchyard", "user-service", "--help"])).unwrap();
        assert_eq!(service, "user-service");
        assert_eq!(rest, args(&["user-service", "--help"]));
    }

    #[test]
    fn no_or_an_unknown_service_selects_nothing() {
        assert!(select(args(&["switchyard"])).is_none());
        assert!(select(args(&["switchyard", "--help"])).is_none());
        assert!(select(args(&["switchyard", "no-such-service"])).is_none());
        assert!(select(args(&[])).is_none());
    }

    #[test]
    fn every_service_parses_its_config_option_and_keeps_its_about() {
        for (service, about) in SERVICES {
            let mut command = ConfigArgs::augment_args(clap::Command::new(service)).about(about);
            assert_eq!(
                command.render_help().to_string().lines().next(),
                Some(about)
            );
            let matches = command
                .try_get_matches_from([service, "--config", "/etc/x.toml"])
                .unwrap();
            let config = ConfigArgs::from_arg_matches(&matches).unwrap();
            assert_eq!(config.config.as_deref(), Some(Path::new("/etc/x.toml")));
        }
    }
}
