//! Logs and traces, set up once per process.
//!
//! - Logs: `tracing-subscriber`, filtered by `RUST_LOG` (default `info`; the
//!   NATS client's own lines are off unless `RUST_LOG` names `async_nats`),
//!   formatted by `LOG_FORMAT`: `pretty` (default, for a terminal) or `json`
//!   (one object per line, for a log pipeline).
//! - Traces: exported over OTLP/gRPC only when `OTEL_EXPORTER_OTLP_ENDPOINT`
//!   is set. Without it nothing is exported and nothing complains.
//!
//! [`init`] returns a [`TelemetryGuard`]; dropping it (at the end of `main`)
//! flushes the spans still buffered. Tests call [`init_for_tests`], which sets
//! up logging once and prints only when `TEST_LOG` is set.

use std::{str::FromStr, sync::OnceLock};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::{Resource, trace::SdkTracerProvider};
use tracing_subscriber::{
    EnvFilter, Layer, Registry, fmt::MakeWriter, layer::SubscriberExt, util::SubscriberInitExt,
};

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable, coloured when the output is a terminal.
    #[default]
    Pretty,
    /// One JSON object per line.
    Json,
}

impl FromStr for LogFormat {
    type Err = TelemetryError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "pretty" | "text" | "" => Ok(LogFormat::Pretty),
            "json" => Ok(LogFormat::Json),
            other => Err(TelemetryError::LogFormat(other.to_string())),
        }
    }
}

/// Why telemetry could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// `LOG_FORMAT` is neither `json` nor `pretty`.
    #[error("LOG_FORMAT={0:?} is not valid, expected \"json\" or \"pretty\"")]
    LogFormat(String),
    /// `RUST_LOG` does not parse as a filter.
    #[error("RUST_LOG is not a valid filter: {0}")]
    Filter(String),
    /// The OTLP exporter could not be built.
    #[error("cannot build the otlp exporter: {0}")]
    Exporter(String),
    /// A global subscriber was already installed.
    #[error("a tracing subscriber is already installed: {0}")]
    AlreadyInstalled(String),
}

/// Telemetry settings, read from the environment by [`TelemetryConfig::from_env`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TelemetryConfig {
    /// `service.name` of exported spans and the name in log lines.
    pub service_name: String,
    /// `LOG_FORMAT`.
    pub log_format: LogFormat,
    /// `RUST_LOG`; `info` when unset.
    pub filter: Option<String>,
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`; traces are exported only when set.
    pub otlp_endpoint: Option<String>,
}

impl TelemetryConfig {
    /// Reads `LOG_FORMAT`, `RUST_LOG` and `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub fn from_env(service_name: &str) -> Result<Self, TelemetryError> {
        Self::from_lookup(service_name, |name| std::env::var(name).ok())
    }

    /// Like [`TelemetryConfig::from_env`] with any variable source (for tests).
    pub fn from_lookup(
        service_name: &str,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, TelemetryError> {
        let non_empty = |name: &str| lookup(name).filter(|value| !value.trim().is_empty());
        Ok(TelemetryConfig {
            service_name: service_name.to_string(),
            log_format: non_empty("LOG_FORMAT")
                .map(|value| value.parse())
                .transpose()?
                .unwrap_or_default(),
            filter: non_empty("RUST_LOG"),
            otlp_endpoint: non_empty("OTEL_EXPORTER_OTLP_ENDPOINT"),
        })
    }
}

/// Keeps the trace exporter alive; dropping it flushes and shuts it down.
#[derive(Debug)]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl TelemetryGuard {
    /// `true` when spans are exported over OTLP.
    pub fn exports_traces(&self) -> bool {
        self.provider.is_some()
    }

    /// A guard with nothing to flush, for tests that need one.
    #[cfg(test)]
    pub(crate) fn inert() -> Self {
        TelemetryGuard { provider: None }
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(error) = provider.shutdown()
        {
            // The subscriber may be gone already; stderr always works.
            eprintln!("cannot flush traces: {error}");
        }
    }
}

/// Sets up logs and (when configured) trace export for the whole process,
/// from the environment. Call once, first thing in `main`, inside a runtime.
pub fn init(service_name: &str) -> Result<TelemetryGuard, TelemetryError> {
    init_with(&TelemetryConfig::from_env(service_name)?, std::io::stdout)
}

/// Sets up telemetry from `config`, writing logs to `sink`.
pub fn init_with<W>(config: &TelemetryConfig, sink: W) -> Result<TelemetryGuard, TelemetryError>
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let provider = config
        .otlp_endpoint
        .as_ref()
        .map(|_| tracer_provider(&config.service_name))
        .transpose()?;
    let subscriber = subscriber(config, sink, provider.as_ref())?;
    subscriber
        .try_init()
        .map_err(|error| TelemetryError::AlreadyInstalled(error.to_string()))?;
    if let Some(provider) = &provider {
        opentelemetry::global::set_tracer_provider(provider.clone());
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
        tracing::info!(
            endpoint = config.otlp_endpoint.as_deref(),
            "exporting traces over otlp"
        );
    }
    Ok(TelemetryGuard { provider })
}

/// The subscriber [`init_with`] installs, built but not installed, so tests
/// can use it with `tracing::subscriber::set_default`.
pub fn subscriber<W>(
    config: &TelemetryConfig,
    sink: W,
    provider: Option<&SdkTracerProvider>,
) -> Result<impl tracing::Subscriber + Send + Sync + 'static, TelemetryError>
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_new(with_quiet_clients(
        config.filter.as_deref().unwrap_or("info"),
    ))
    .map_err(|error| TelemetryError::Filter(error.to_string()))?;
    let fmt: Box<dyn Layer<Registry> + Send + Sync> = match config.log_format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_writer(sink)
            .boxed(),
        LogFormat::Pretty => tracing_subscriber::fmt::layer().with_writer(sink).boxed(),
    };
    let otel = provider.map(|provider| {
        tracing_opentelemetry::layer().with_tracer(provider.tracer(config.service_name.clone()))
    });
    Ok(Registry::default().with(fmt).with(otel).with(filter))
}

fn tracer_provider(service_name: &str) -> Result<SdkTracerProvider, TelemetryError> {
    // The exporter reads OTEL_EXPORTER_OTLP_ENDPOINT (and the other standard
    // OTEL_EXPORTER_OTLP_* variables) itself.
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()
        .map_err(|error| TelemetryError::Exporter(error.to_string()))?;
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            Resource::builder()
                .with_service_name(service_name.to_string())
                .build(),
        )
        .build())
}

/// Logging for tests, set up once per test binary. Silent unless `TEST_LOG`
/// is set (then at `RUST_LOG` or `debug`), so `cargo test` output stays clean.
pub fn init_for_tests() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        if std::env::var_os("TEST_LOG").is_some() {
            let config = TelemetryConfig {
                service_name: "test".into(),
                filter: Some(std::env::var("RUST_LOG").unwrap_or_else(|_| "debug".into())),
                ..TelemetryConfig::default()
            };
            if let Ok(subscriber) = subscriber(&config, std::io::stdout, None) {
                let _ = subscriber.try_init();
            }
        }
    });
}

/// `filter` with async-nats' own lines off unless it names them: the client
/// logs every reconnect attempt (an error line per refused login, forever),
/// while `common::nats` logs each change of the connection's state once.
fn with_quiet_clients(filter: &str) -> String {
    if filter.contains("async_nats") {
        filter.to_string()
    } else {
        format!("{filter},async_nats=off")
    }
}

#[cfg(test)]
mod tests {
    use std::{
        collections::HashMap,
        io::Write,
        sync::{Arc, Mutex},
    };

    use super::*;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().write(buf)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Captured {
        type Writer = Captured;
        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    fn lookup(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| vars.get(name).cloned()
    }

    #[test]
    fn defaults_are_pretty_info_and_no_export() {
        let config = TelemetryConfig::from_lookup("svc", lookup(&[])).unwrap();
        assert_eq!(config.log_format, LogFormat::Pretty);
        assert_eq!(config.filter, None);
        assert_eq!(config.otlp_endpoint, None);
    }

    #[test]
    fn a_bad_log_format_is_named_in_the_error() {
        let err =
            TelemetryConfig::from_lookup("svc", lookup(&[("LOG_FORMAT", "xml")])).unwrap_err();
        assert!(err.to_string().contains("LOG_FORMAT=\"xml\""), "{err}");
    }

    #[test]
    fn json_format_writes_one_object_per_line_and_respects_the_filter() {
        let config = TelemetryConfig::from_lookup(
            "svc",
            lookup(&[("LOG_FORMAT", "json"), ("RUST_LOG", "warn")]),
        )
        .unwrap();
        let sink = Captured::default();
        let subscriber = subscriber(&config, sink.clone(), None).unwrap();
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!("hidden by the filter");
            tracing::warn!(sensor_id = "s1", "reading rejected");
        });
        let output = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = output.lines().collect();
        assert_eq!(lines.len(), 1, "{output}");
        let line: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(line["message"], "reading rejected");
        assert_eq!(line["sensor_id"], "s1");
        assert_eq!(line["level"], "WARN");
    }

    #[test]
    fn the_nats_clients_own_lines_are_off_unless_named() {
        assert_eq!(with_quiet_clients("info"), "info,async_nats=off");
        assert_eq!(
            with_quiet_clients("info,async_nats=debug"),
            "info,async_nats=debug"
        );
    }

    #[test]
    fn a_bad_filter_is_an_error() {
        let config = TelemetryConfig {
            filter: Some("info,[".into()),
            ..TelemetryConfig::default()
        };
        assert!(matches!(
            subscriber(&config, std::io::sink, None),
            Err(TelemetryError::Filter(_))
        ));
    }

    #[tokio::test]
    async fn an_unreachable_collector_neither_fails_start_nor_hangs_shutdown() {
        // Nothing listens on the default endpoint (localhost:4317) in tests;
        // export fails in the background.
        let provider = tracer_provider("svc").unwrap();
        let config = TelemetryConfig::default();
        let subscriber = subscriber(&config, std::io::sink, Some(&provider)).unwrap();
        tracing::subscriber::with_default(subscriber, || {
            tracing::info_span!("exported span").in_scope(|| tracing::info!("inside"));
        });
        let guard = TelemetryGuard {
            provider: Some(provider),
        };
        assert!(guard.exports_traces());
        let started = std::time::Instant::now();
        tokio::task::spawn_blocking(move || drop(guard))
            .await
            .unwrap();
        assert!(started.elapsed() < std::time::Duration::from_secs(30));
    }
}
