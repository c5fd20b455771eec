//! The start every service binary shares: the command line (`--config
//! PATH`), telemetry, the layered config, a `starting <name>` log line,
//! then the service until SIGTERM or Ctrl-C.
//!
//! A binary whose only option is `--config` hands [`start`] its command as
//! Cargo.toml describes it (`clap::command!()`: name, version, about), may
//! adjust [`Service::config`] (e.g. from [`Service::source`]), and passes
//! its `run` to [`Service::run`]:
//!
//! ```no_run
//! use common::{
//!     config::{ConfigError, Validate},
//!     service,
//!     shutdown::Shutdown,
//! };
//!
//! #[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
//! struct Config {
//!     greeting: String,
//! }
//!
//! impl Validate for Config {
//!     fn validate(&self) -> Result<(), ConfigError> {
//!         Ok(())
//!     }
//! }
//!
//! async fn run(config: Config, shutdown: Shutdown) -> Result<(), ConfigError> {
//!     println!("{}", config.greeting);
//!     shutdown.cancelled().await;
//!     Ok(())
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let service = service::start::<Config>(clap::command!(), &[("GREETING", "greeting")])?;
//!     Ok(service.run(run).await?)
//! }
//! ```
//!
//! A binary with options of its own flattens [`ConfigArgs`] into its clap
//! arguments and calls [`start_with`].
//!
//! The service runs inside an [`EffectiveConfig::scope`] holding where each
//! value of its config came from: its ops server finds it there and serves
//! it as `GET /config`, without a parameter threaded through every `run`.

use std::{fmt, future::Future, path::PathBuf};

use clap::{
    Args as _, FromArgMatches as _,
    builder::{Resettable, StyledStr},
};
use serde::{Serialize, de::DeserializeOwned};

use crate::{
    config::{ConfigError, ConfigSource, Validate},
    effective_config::{EffectiveConfig, Provenance},
    shutdown::Shutdown,
    telemetry::{self, TelemetryError, TelemetryGuard},
};

/// The `--config PATH` option of every service, to `#[command(flatten)]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
pub struct ConfigArgs {
    /// TOML config file (else `CONFIG_FILE`, else defaults); the environment overrides it.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

impl ConfigArgs {
    /// Reads the command line of a binary whose only option is `--config`,
    /// described by `command` (its name, version and about); like
    /// `Parser::parse`, prints `--help`, `--version` or the usage error and
    /// exits when that is what the command line asks for.
    pub fn parse_with(command: clap::Command) -> Self {
        let matches = Self::add_to(command).get_matches();
        Self::from_arg_matches(&matches).unwrap_or_else(|error| error.exit())
    }

    /// `command` with `--config`, and still its own about: `augment_args`
    /// alone would describe the command with this struct's doc comment.
    fn add_to(command: clap::Command) -> clap::Command {
        let kept =
            |text: Option<&StyledStr>| text.cloned().map_or(Resettable::Reset, Resettable::Value);
        let about = kept(command.get_about());
        let long_about = kept(command.get_long_about());
        Self::augment_args(command)
            .about(about)
            .long_about(long_about)
    }

    /// The service's config source: this file, else `CONFIG_FILE`, and the
    /// process environment with the standard variables `env_keys`.
    pub fn source(&self, env_keys: &[(&'static str, &'static str)]) -> ConfigSource {
        ConfigSource::new(self.config.clone(), env_keys)
    }
}

/// Why a service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Logs or trace export could not be set up.
    #[error("cannot set up telemetry")]
    Telemetry(#[source] TelemetryError),
    /// The config could not be loaded or is invalid.
    #[error("cannot load the configuration")]
    Config(#[source] ConfigError),
}

/// A service whose telemetry is up and whose config is loaded; [`Service::run`] runs it.
#[derive(Debug)]
pub struct Service<T> {
    /// The name in log lines and exported spans.
    pub name: String,
    /// The loaded, validated config; the binary may adjust it before [`Service::run`].
    pub config: T,
    /// Where the config came from (its file is the one to watch for reloads).
    pub source: ConfigSource,
    /// Where each value of the loaded config came from, for `/config`.
    provenance: Provenance,
    /// Flushes the buffered spans when dropped, after the service has returned.
    telemetry: TelemetryGuard,
}

/// Starts the binary `command` describes, usually `clap::command!()` (name,
/// version and about from its Cargo.toml): reads `--config` from the command
/// line ([`ConfigArgs::parse_with`]), then as [`start_with`] under the
/// command's name.
pub fn start<T>(
    command: clap::Command,
    env_keys: &[(&'static str, &'static str)],
) -> Result<Service<T>, StartError>
where
    T: Default + Serialize + DeserializeOwned + Validate,
{
    let name = command.get_name().to_owned();
    start_with(name, &ConfigArgs::parse_with(command), env_keys)
}

/// Sets up telemetry for `name` (see [`telemetry::init`]), then loads the
/// config from the file of `args` and the process environment.
pub fn start_with<T>(
    name: impl Into<String>,
    args: &ConfigArgs,
    env_keys: &[(&'static str, &'static str)],
) -> Result<Service<T>, StartError>
where
    T: Default + Serialize + DeserializeOwned + Validate,
{
    let name = name.into();
    let telemetry = telemetry::init(&name).map_err(StartError::Telemetry)?;
    let source = args.source(env_keys);
    let (config, provenance) = source.load_traced().map_err(StartError::Config)?;
    Ok(Service {
        name,
        config,
        source,
        provenance,
        telemetry,
    })
}

impl<T: fmt::Debug> Service<T> {
    /// Logs `starting <name>` with the config (secrets redacted), runs
    /// `service` with a [`Shutdown`] that fires on SIGTERM or Ctrl-C, inside
    /// the scope of its [`EffectiveConfig`], and returns what it returns
    /// once the telemetry is flushed.
    pub async fn run<F, Fut>(self, service: F) -> Fut::Output
    where
        F: FnOnce(T, Shutdown) -> Fut,
        Fut: Future,
    {
        self.run_with(Shutdown::on_signals(), service).await
    }

    async fn run_with<F, Fut>(self, shutdown: Shutdown, service: F) -> Fut::Output
    where
        F: FnOnce(T, Shutdown) -> Fut,
        Fut: Future,
    {
        let Service {
            name,
            config,
            source: _,
            provenance,
            telemetry,
        } = self;
        tracing::info!(?config, "starting {name}");
        let effective = EffectiveConfig::loaded(&name, provenance);
        let output = effective.scope(service(config, shutdown)).await;
        drop(telemetry);
        output
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use clap::{CommandFactory, Parser};

    use super::*;

    /// A binary's arguments, as the services declare them.
    #[derive(Debug, Parser)]
    struct Args {
        #[command(flatten)]
        config: ConfigArgs,
    }

    #[test]
    fn config_args_flatten_into_a_binary_s_arguments() {
        let args = Args::try_parse_from(["service", "--config", "/etc/service.toml"]).unwrap();
        assert_eq!(args.config.config, Some(PathBuf::from("/etc/service.toml")));
        let source = args.config.source(&[("NATS_URL", "nats_url")]);
        assert_eq!(source.file, Some(PathBuf::from("/etc/service.toml")));
        assert_eq!(source.env_keys, [("NATS_URL", "nats_url")]);
        assert!(
            source.env.is_none(),
            "a service reads the process environment"
        );

        let help = Args::command().render_help().to_string();
        assert!(help.contains("--config <CONFIG>"), "{help}");
        assert!(Args::try_parse_from(["service", "--config"]).is_err());
    }

    /// What `#[command(version, about)]` derives: the command line every
    /// service had before [`start`], and still has.
    #[derive(Debug, Parser)]
    #[command(version, about)]
    struct Derived {
        #[command(flatten)]
        config: ConfigArgs,
    }

    #[test]
    fn the_command_from_cargo_toml_is_the_derived_one() {
        let mut built = ConfigArgs::add_to(clap::command!());
        let mut derived = Derived::command();
        assert_eq!(built.get_name(), derived.get_name());
        assert_eq!(built.render_version(), derived.render_version());
        assert_eq!(
            built.render_help().to_string(),
            derived.render_help().to_string()
        );
        assert_eq!(
            built.render_long_help().to_string(),
            derived.render_long_help().to_string()
        );
        let mut own = ConfigArgs::add_to(clap::command!().about("Greets until stopped."));
        let help = own.render_help().to_string();
        assert!(
            help.starts_with("Greets until stopped.\n\nUsage: "),
            "{help}"
        );

        let matches = built
            .try_get_matches_from(["service", "--config", "/etc/service.toml"])
            .unwrap();
        assert_eq!(
            ConfigArgs::from_arg_matches(&matches).unwrap().config,
            Some(PathBuf::from("/etc/service.toml"))
        );
    }

    #[test]
    fn start_errors_say_what_failed_and_keep_the_cause() {
        let error = StartError::Config(ConfigError::MissingFile("/nope.toml".into()));
        assert_eq!(error.to_string(), "cannot load the configuration");
        let cause = error.source().unwrap().to_string();
        assert!(cause.contains("/nope.toml"), "{cause}");

        let error = StartError::Telemetry(TelemetryError::LogFormat("xml".into()));
        assert_eq!(error.to_string(), "cannot set up telemetry");
        assert!(error.source().unwrap().to_string().contains("xml"));
    }

    #[tokio::test]
    async fn run_hands_the_config_and_the_shutdown_to_the_service() {
        let service = Service {
            name: "test-service".into(),
            config: 7_u32,
            source: ConfigSource::default(),
            provenance: Provenance::default(),
            telemetry: TelemetryGuard::inert(),
        };
        let shutdown = Shutdown::new();
        shutdown.trigger();
        let seen = service
            .run_with(shutdown, |config, shutdown| async move {
                let report = EffectiveConfig::current().map(|effective| effective.report());
                (config, shutdown.is_triggered(), report)
            })
            .await;
        assert_eq!((seen.0, seen.1), (7, true));
        let report = seen
            .2
            .expect("the service runs in its effective config's scope");
        assert_eq!(report["service"], "test-service");
    }
}
