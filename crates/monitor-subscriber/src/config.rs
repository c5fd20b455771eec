//! The monitor-subscriber's settings: defaults, the keys of its TOML file
//! and environment, and the checks they must pass before the service starts.
//!
//! Durations are written as text (`window = "60s"`); a key of the retired
//! unit-in-the-name convention (`window_secs`, `summary_interval_ms`) is
//! refused at load time, naming the key to write instead.

use std::{net::SocketAddr, time::Duration};

use common::{
    codec::{DEFAULT_MAX_PAYLOAD, validate_max_message_bytes},
    config::{ConfigError, SecretUrl, Validate},
    nats::NatsAuth,
    tls::TlsFiles,
};
use serde::{Deserialize, Serialize};

/// Standard environment variables and the keys they set.
pub const ENV_KEYS: &[(&str, &str)] = &[
    ("NATS_URL", "nats_url"),
    ("OPS_ADDR", "ops_addr"),
    ("NATS_CREDS_FILE", "nats_auth.creds_file"),
    ("NATS_NKEY_FILE", "nats_auth.nkey_file"),
    ("NATS_TLS_CA", "nats_tls.ca"),
    ("NATS_TLS_CERT", "nats_tls.cert"),
    ("NATS_TLS_KEY", "nats_tls.key"),
];

/// The longest statistics window: a day of one-second buckets per sensor.
const MAX_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// Configuration of the monitor-subscriber (TOML keys are the field names).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// NATS server URL(s) (`NATS_URL`).
    pub nats_url: SecretUrl,
    /// Ops HTTP address: `/healthz`, `/readyz`, `/metrics`, `/stats` (`OPS_ADDR`).
    pub ops_addr: SocketAddr,
    /// Readings are read from `<subject_prefix>` and `<subject_prefix>.>`.
    pub subject_prefix: String,
    /// Request-reply subject answered with the stats JSON.
    pub stats_subject: String,
    /// Length of the statistics window, in whole seconds (the statistics
    /// keep one bucket per second).
    #[serde(with = "common::config::duration")]
    pub window: Duration,
    /// How often the one-line summary is logged; `"0s"` turns it off.
    #[serde(with = "common::config::duration")]
    pub summary_interval: Duration,
    /// Messages buffered per subscription before the client drops (slow consumer).
    pub subscription_capacity: usize,
    /// On shutdown, how long buffered readings may take to be counted.
    #[serde(with = "common::config::duration")]
    pub shutdown_grace: Duration,
    /// How the service authenticates to NATS besides `nats_url`'s own
    /// credentials: a `.creds` file (`NATS_CREDS_FILE`) or an NKey seed file
    /// (`NATS_NKEY_FILE`).
    pub nats_auth: NatsAuth,
    /// CA and client certificate for NATS (`NATS_TLS_CA`, `NATS_TLS_CERT`,
    /// `NATS_TLS_KEY`); any of them set means TLS is required.
    pub nats_tls: TlsFiles,
    /// Largest reading or stats request in bytes; a bigger one is rejected
    /// unread (`messages_rejected_total{reason="too_large"}`).
    pub max_message_bytes: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            nats_url: SecretUrl::new("nats://127.0.0.1:4222"),
            ops_addr: SocketAddr::from(([0, 0, 0, 0], 9103)),
            subject_prefix: "sensor.data".into(),
            stats_subject: "sensor.stats".into(),
            window: Duration::from_secs(60),
            summary_interval: Duration::from_secs(5),
            subscription_capacity: 65_536,
            shutdown_grace: Duration::from_secs(10),
            nats_auth: NatsAuth::default(),
            nats_tls: TlsFiles::default(),
            max_message_bytes: DEFAULT_MAX_PAYLOAD,
        }
    }
}

/// `true` for dot-separated, non-empty tokens without wildcards or spaces.
fn is_literal_subject(subject: &str) -> bool {
    subject.split('.').all(|token| {
        !token.is_empty()
            && !token
                .chars()
                .any(|c| c == '*' || c == '>' || c.is_whitespace())
    })
}

impl Validate for Config {
    fn validate(&self) -> Result<(), ConfigError> {
        self.nats_auth.validate(&self.nats_url)?;
        self.nats_tls.validate("nats_tls")?;
        for (key, subject) in [
            ("subject_prefix", &self.subject_prefix),
            ("stats_subject", &self.stats_subject),
        ] {
            if !is_literal_subject(subject) {
                return Err(ConfigError::invalid(
                    key,
                    subject,
                    "must be a literal subject (dot-separated tokens, no wildcards)",
                ));
            }
        }
        if self.window.is_zero() || self.window > MAX_WINDOW || self.window.subsec_nanos() != 0 {
            return Err(ConfigError::invalid(
                "window",
                common::config::duration::format(self.window),
                "must be whole seconds between 1s and 24h",
            ));
        }
        if self.subscription_capacity == 0 {
            return Err(ConfigError::invalid(
                "subscription_capacity",
                0,
                "must be at least 1",
            ));
        }
        validate_max_message_bytes(self.max_message_bytes)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use common::config::ConfigSource;

    use super::*;

    /// A source reading only `file` and the variables in `env`.
    fn source(file: Option<PathBuf>, env: &[(&str, &str)]) -> ConfigSource {
        ConfigSource::isolated(file, ENV_KEYS, env)
    }

    #[test]
    fn defaults_are_valid_and_bad_values_name_their_key() {
        Config::default().validate().unwrap();
        let error = Config {
            stats_subject: "sensor.*".into(),
            ..Config::default()
        }
        .validate()
        .unwrap_err();
        assert!(error.to_string().contains("stats_subject"), "{error}");
        for window in [
            Duration::ZERO,
            Duration::from_millis(1500),
            Duration::from_secs(24 * 3600 + 1),
        ] {
            let error = Config {
                window,
                ..Config::default()
            }
            .validate()
            .unwrap_err()
            .to_string();
            assert!(error.contains("window"), "{error}");
        }
        Config {
            window: MAX_WINDOW,
            ..Config::default()
        }
        .validate()
        .unwrap();
        let error = Config {
            max_message_bytes: 10,
            ..Config::default()
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(error.contains("max_message_bytes"), "{error}");
    }

    #[test]
    fn durations_are_text_with_a_unit() {
        let config: Config = source(
            None,
            &[
                ("SWITCHYARD__WINDOW", "5m"),
                ("SWITCHYARD__SUMMARY_INTERVAL", "0"),
                ("SWITCHYARD__SHUTDOWN_GRACE", "2500ms"),
            ],
        )
        .load()
        .unwrap();
        assert_eq!(config.window, Duration::from_secs(300));
        assert_eq!(config.summary_interval, Duration::ZERO);
        assert_eq!(config.shutdown_grace, Duration::from_millis(2500));

        let error = source(None, &[("SWITCHYARD__WINDOW", "60")])
            .load::<Config>()
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("no unit"),
            "a bare number is refused: {error}"
        );
    }

    #[test]
    fn nats_credentials_and_tls_files_come_from_their_variables() {
        let config: Config = source(
            None,
            &[
                ("NATS_URL", "tls://nats:4222"),
                ("NATS_NKEY_FILE", "/run/secrets/nats.nk"),
                ("NATS_TLS_CA", "/etc/switchyard/ca.pem"),
                ("NATS_TLS_CERT", "/etc/switchyard/client.pem"),
                ("NATS_TLS_KEY", "/etc/switchyard/client-key.pem"),
            ],
        )
        .load()
        .unwrap();
        assert_eq!(
            config.nats_auth.nkey_file,
            Some(PathBuf::from("/run/secrets/nats.nk"))
        );
        assert_eq!(config.nats_auth.creds_file, None);
        assert_eq!(
            config.nats_tls.ca,
            Some(PathBuf::from("/etc/switchyard/ca.pem"))
        );
        assert_eq!(
            config.nats_tls.key,
            Some(PathBuf::from("/etc/switchyard/client-key.pem"))
        );

        // Two ways to authenticate, or a certificate without its key, are refused.
        let error = source(
            None,
            &[
                ("NATS_URL", "nats://app:pw@nats:4222"),
                ("NATS_CREDS_FILE", "/run/secrets/app.creds"),
            ],
        )
        .load::<Config>()
        .unwrap_err()
        .to_string();
        assert!(error.contains("nats_auth"), "{error}");
        assert!(!error.contains(":pw@"), "{error}");
        let error = source(None, &[("NATS_TLS_CERT", "/etc/switchyard/client.pem")])
            .load::<Config>()
            .unwrap_err()
            .to_string();
        assert!(error.contains("nats_tls.key"), "{error}");
    }
}
