//! Layered, validated configuration with secrets that never print, and hot reload.
//!
//! Precedence, lowest first (docs/ARCHITECTURE.md):
//! 1. the service's `Default`,
//! 2. a TOML file: `--config PATH` or `CONFIG_FILE`,
//! 3. the environment: the standard variables of docs/ARCHITECTURE.md (`NATS_URL`,
//!    `AMQP_URL`, …), each mapped by the service to a key, plus any key as
//!    `SWITCHYARD__SECTION__KEY` (double underscores separate sections).
//!
//! The merged value is deserialized (unknown keys in the file are errors
//! when the service's struct says `deny_unknown_fields`) and then checked by
//! [`Validate`]; every error names the key and the bad value.
//!
//! URLs with credentials are [`SecretUrl`]s: their `Debug` and `Display`
//! print `amqp://guest:***@host`, so a config can be logged whole.
//!
//! Every standard variable can instead be given as `<NAME>_FILE`, the path
//! of a file holding the value (`AMQP_URL_FILE=/run/secrets/amqp_url`): the
//! convention of Kubernetes and Docker secrets, so a secret never has to sit
//! in the environment. One trailing newline is dropped; both forms set at
//! once, or a file that cannot be read, is an error naming the variable and
//! the path (never the content).
//!
//! [`ConfigSource::load_traced`] also says where each key came from
//! ([`Provenance`]), for `GET /config` (see [`crate::effective_config`]).
//!
//! [`watch_file`] follows the file's directory (so the symlink swap of a
//! Kubernetes ConfigMap update is seen), reloads and validates, and hands
//! changed values to the running service; an invalid edit is logged and the
//! old values stay.

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    path::{Path, PathBuf},
    time::Duration,
};

use notify::{RecursiveMode, Watcher};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::effective_config::{self, EffectiveConfig, Origin, Provenance};

/// Environment prefix for keys without a standard variable:
/// `SWITCHYARD__OPS__ADDR=0.0.0.0:9102` sets `ops.addr`.
pub const ENV_PREFIX: &str = "SWITCHYARD";

/// The variable naming the config file when `--config` is not given.
pub const CONFIG_FILE_VAR: &str = "CONFIG_FILE";

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A value is present but not acceptable.
    #[error("invalid config: {key} = {value:?}: {reason}")]
    Invalid {
        /// Dotted key, e.g. `rules.temperature.critical`.
        key: String,
        /// The offending value, redacted when it is a secret.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A key of the retired unit-in-the-name convention (`*_ms`, `*_secs`).
    #[error("config key {key} is no longer read: write {replacement} (durations carry their unit)")]
    Renamed {
        /// The old key, dotted.
        key: String,
        /// What to write instead, e.g. `lease_ttl = "5s"`.
        replacement: String,
    },
    /// The config file named by `--config` or `CONFIG_FILE` does not exist.
    #[error("config file {0} does not exist")]
    MissingFile(PathBuf),
    /// The sources could not be merged or deserialized (bad TOML, wrong type,
    /// unknown key); config-rs names the key.
    #[error("cannot load config: {0}")]
    Load(String),
    /// A standard variable is set both directly and as `<NAME>_FILE`.
    #[error("both {variable} and {file_variable} are set: give the value one way")]
    BothSet {
        /// The variable, e.g. `AMQP_URL`.
        variable: String,
        /// Its file form, e.g. `AMQP_URL_FILE`.
        file_variable: String,
    },
    /// The file named by a `<NAME>_FILE` variable cannot be read or is empty.
    #[error("cannot read {file_variable}={}: {reason}", path.display())]
    SecretFile {
        /// The `_FILE` variable, e.g. `AMQP_URL_FILE`.
        file_variable: String,
        /// The file it names.
        path: PathBuf,
        /// Why (the I/O error, or "the file is empty"); never the content.
        reason: String,
    },
    /// The config file cannot be watched.
    #[error("cannot watch {path}: {reason}")]
    Watch {
        /// The watched path.
        path: PathBuf,
        /// The watcher's error.
        reason: String,
    },
}

impl From<config::ConfigError> for ConfigError {
    fn from(error: config::ConfigError) -> Self {
        ConfigError::Load(error.to_string())
    }
}

impl ConfigError {
    /// Shorthand for [`ConfigError::Invalid`].
    pub fn invalid(
        key: impl Into<String>,
        value: impl fmt::Display,
        reason: impl Into<String>,
    ) -> Self {
        ConfigError::Invalid {
            key: key.into(),
            value: value.to_string(),
            reason: reason.into(),
        }
    }

    /// For [`ConfigError::Renamed`], the old key and what to write instead,
    /// e.g. `("lease_ttl_ms", "lease_ttl = \"5s\"")`; `None` for any other error.
    pub fn renamed(&self) -> Option<(&str, &str)> {
        match self {
            ConfigError::Renamed { key, replacement } => Some((key, replacement)),
            _ => None,
        }
    }
}

/// A check run on a freshly loaded config, before the service uses it.
pub trait Validate {
    /// `Err` naming the first bad key and value.
    fn validate(&self) -> Result<(), ConfigError>;
}

/// Where a service's configuration comes from.
#[derive(Debug, Clone, Default)]
pub struct ConfigSource {
    /// The TOML file, if any.
    pub file: Option<PathBuf>,
    /// Standard variables and the keys they set, e.g. `("NATS_URL", "nats_url")`.
    pub env_keys: Vec<(&'static str, &'static str)>,
    /// The environment; `None` reads the process environment. Tests pass a map.
    pub env: Option<HashMap<String, String>>,
}

impl ConfigSource {
    /// Reads from the process environment; the file is `cli_file`, else `CONFIG_FILE`.
    pub fn new(cli_file: Option<PathBuf>, env_keys: &[(&'static str, &'static str)]) -> Self {
        let file = cli_file.or_else(|| {
            std::env::var_os(CONFIG_FILE_VAR)
                .filter(|value| !value.is_empty())
                .map(PathBuf::from)
        });
        ConfigSource {
            file,
            env_keys: env_keys.to_vec(),
            env: None,
        }
    }

    /// Reads only `file` and the variables in `env`, never the process
    /// environment (nor `CONFIG_FILE`): for tests and checks.
    pub fn isolated(
        file: Option<PathBuf>,
        env_keys: &[(&'static str, &'static str)],
        env: &[(&str, &str)],
    ) -> Self {
        ConfigSource {
            file,
            env_keys: env_keys.to_vec(),
            env: Some(
                env.iter()
                    .map(|(name, value)| (name.to_string(), value.to_string()))
                    .collect(),
            ),
        }
    }

    /// Loads, merges, deserializes and validates.
    pub fn load<T>(&self) -> Result<T, ConfigError>
    where
        T: Default + Serialize + DeserializeOwned + Validate,
    {
        self.load_traced().map(|(value, _)| value)
    }

    /// As [`ConfigSource::load`], and where each key came from.
    pub fn load_traced<T>(&self) -> Result<(T, Provenance), ConfigError>
    where
        T: Default + Serialize + DeserializeOwned + Validate,
    {
        let env = match &self.env {
            Some(env) => env.clone(),
            None => std::env::vars().collect(),
        };
        // The keys each layer sets, later layers overwriting earlier ones.
        let mut overrides = BTreeMap::new();
        let mut builder =
            config::Config::builder().add_source(config::Config::try_from(&T::default())?);
        if let Some(file) = &self.file {
            if !file.exists() {
                return Err(ConfigError::MissingFile(file.clone()));
            }
            let source = config::File::from(file.as_path()).format(config::FileFormat::Toml);
            let in_file: serde_json::Value = config::Config::builder()
                .add_source(source.clone())
                .build()?
                .try_deserialize()?;
            for (key, _) in effective_config::leaves(&in_file) {
                overrides.insert(key, Origin::File { path: file.clone() });
            }
            builder = builder.add_source(source);
        }
        // Only variables with the prefix are offered to config-rs: PATH, HOME
        // and the like must not become keys.
        let prefix = format!("{ENV_PREFIX}__");
        let prefixed: config::Map<String, String> = env
            .iter()
            .filter(|(name, _)| name.starts_with(&prefix))
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect();
        for name in prefixed.keys() {
            // As config-rs maps it: `SWITCHYARD__LIMITS__CRITICAL` → `limits.critical`.
            let key = name[prefix.len()..].to_lowercase().replace("__", ".");
            overrides.insert(
                key,
                Origin::Env {
                    variable: name.clone(),
                },
            );
        }
        builder = builder.add_source(
            config::Environment::with_prefix(ENV_PREFIX)
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                .source(Some(prefixed)),
        );
        for (variable, key) in &self.env_keys {
            if let Some((value, origin)) = standard_variable(&env, variable)? {
                builder = builder.set_override(*key, value)?;
                overrides.insert(key.to_string(), origin);
            }
        }
        let merged = builder.build()?;
        reject_retired_keys("", &merged.clone().try_deserialize()?)?;
        let value: T = merged.try_deserialize()?;
        value.validate()?;
        let provenance = Provenance::new(
            serde_json::to_value(&value).unwrap_or_default(),
            overrides,
            self.file.clone(),
        );
        effective_config::record_load(&provenance);
        Ok((value, provenance))
    }
}

/// The value of the standard variable `variable` and where it came from:
/// the variable itself, or the file its `<NAME>_FILE` form names. `None`
/// when neither is set (an empty value counts as unset).
fn standard_variable(
    env: &HashMap<String, String>,
    variable: &str,
) -> Result<Option<(String, Origin)>, ConfigError> {
    let file_variable = format!("{variable}_FILE");
    let set = |name: &str| env.get(name).filter(|value| !value.is_empty());
    match (set(variable), set(&file_variable)) {
        (Some(_), Some(_)) => Err(ConfigError::BothSet {
            variable: variable.to_string(),
            file_variable,
        }),
        (Some(value), None) => Ok(Some((
            value.clone(),
            Origin::Env {
                variable: variable.to_string(),
            },
        ))),
        (None, Some(path)) => {
            let path = PathBuf::from(path);
            let unreadable = |reason: String| ConfigError::SecretFile {
                file_variable: file_variable.clone(),
                path: path.clone(),
                reason,
            };
            let text = std::fs::read_to_string(&path).map_err(|e| unreadable(e.to_string()))?;
            // `echo secret > file` and editors end the file with a newline
            // that is not part of the secret.
            let value = text.trim_end_matches(['\n', '\r']);
            if value.is_empty() {
                return Err(unreadable("the file is empty".into()));
            }
            Ok(Some((
                value.to_string(),
                Origin::EnvFile {
                    variable: file_variable.clone(),
                    path: path.clone(),
                },
            )))
        }
        (None, None) => Ok(None),
    }
}

/// A URL that may hold a password. Prints with the password replaced by `***`.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SecretUrl(String);

impl SecretUrl {
    /// Wraps a URL.
    pub fn new(url: impl Into<String>) -> Self {
        SecretUrl(url.into())
    }

    /// The real URL, to connect with. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The scheme (`nats`, `amqp`, `postgres`, …), lowercase; empty when absent.
    pub fn scheme(&self) -> String {
        self.0
            .split_once("://")
            .map(|(scheme, _)| scheme.to_ascii_lowercase())
            .unwrap_or_default()
    }
}

/// The credentials a URL carries in its userinfo, taken out of it by
/// [`SecretUrl::split_credentials`]. `Debug` never prints them.
#[derive(Clone, PartialEq, Eq)]
pub enum UrlCredentials {
    /// `scheme://user:password@host`.
    UserPassword {
        /// The user.
        user: String,
        /// The password.
        password: String,
    },
    /// `scheme://secret@host`: NATS reads a bare userinfo as a token.
    Token(String),
}

impl fmt::Debug for UrlCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UrlCredentials::UserPassword { user, .. } => {
                write!(f, "UserPassword {{ user: {user:?}, password: *** }}")
            }
            UrlCredentials::Token(_) => f.write_str("Token(***)"),
        }
    }
}

impl SecretUrl {
    /// The URL (or comma-separated URLs) without credentials, and the
    /// credentials of the first URL that has some, percent-decoded: for a
    /// client that logs the URL it connects to (async-nats does, at debug
    /// level, password included), so the credentials can be handed to it
    /// apart from the URL.
    pub fn split_credentials(&self) -> (String, Option<UrlCredentials>) {
        let mut credentials = None;
        let urls = self
            .0
            .split(',')
            .map(|one| {
                let one = one.trim();
                let (scheme, rest) = match one.split_once("://") {
                    Some((scheme, rest)) => (format!("{scheme}://"), rest),
                    None => (String::new(), one),
                };
                let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
                let (authority, path) = rest.split_at(authority_end);
                let Some((userinfo, host)) = authority.rsplit_once('@') else {
                    return one.to_string();
                };
                if credentials.is_none() {
                    credentials = Some(match userinfo.split_once(':') {
                        Some((user, password)) => UrlCredentials::UserPassword {
                            user: percent_decoded(user),
                            password: percent_decoded(password),
                        },
                        None => UrlCredentials::Token(percent_decoded(userinfo)),
                    });
                }
                format!("{scheme}{host}{path}")
            })
            .collect::<Vec<_>>()
            .join(",");
        (urls, credentials)
    }
}

/// `%40` → `@` and so on; a `%` not followed by two hex digits stays as is.
fn percent_decoded(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |at: usize| bytes.get(at).and_then(|byte| (*byte as char).to_digit(16));
        match (bytes[i], hex(i + 1), hex(i + 2)) {
            (b'%', Some(high), Some(low)) => {
                out.push((high * 16 + low) as u8);
                i += 3;
            }
            (byte, _, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", redact_url(&self.0))
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact_url(&self.0))
    }
}

impl From<&str> for SecretUrl {
    fn from(url: &str) -> Self {
        SecretUrl::new(url)
    }
}

/// Replaces the password of `scheme://user:password@host/...` with `***`.
/// Works on comma-separated lists of URLs (NATS server lists) too.
pub fn redact_url(url: &str) -> String {
    url.split(',')
        .map(|one| {
            let (scheme, rest) = match one.split_once("://") {
                Some((scheme, rest)) => (Some(scheme), rest),
                None => (None, one),
            };
            let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
            let (authority, path) = rest.split_at(authority_end);
            let redacted_authority = match authority.rsplit_once('@') {
                Some((userinfo, host)) => match userinfo.split_once(':') {
                    Some((user, _password)) => format!("{user}:***@{host}"),
                    // A bare token (nats://token@host) is a secret too.
                    None if scheme.is_some_and(|s| s.starts_with("nats")) => format!("***@{host}"),
                    None => authority.to_string(),
                },
                None => authority.to_string(),
            };
            match scheme {
                Some(scheme) => format!("{scheme}://{redacted_authority}{path}"),
                None => format!("{redacted_authority}{path}"),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Serde for a [`Duration`] written the way people write one: `"250ms"`,
/// `"30s"`, `"5m"`, `"1h"`, or a sum such as `"1m30s"`; `"0"` (or `0`) is
/// zero. The one duration convention of every config file and variable:
/// key names carry no unit (`lease_ttl = "5s"`, never `lease_ttl_ms`).
///
/// A bare number other than 0 is refused rather than guessed at: `30` could
/// mean seconds or milliseconds, and a wrong guess is off by a factor of 1000.
pub mod duration {
    use std::{fmt, time::Duration};

    use serde::{Deserializer, Serializer, de};

    /// Writes the shortest exact form: `"250ms"`, `"30s"`, `"5m"`, `"2h"`, `"1500ms"`.
    pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format(*value))
    }

    /// Reads `"<number><unit>"` groups (units `ms`, `s`, `m`, `h`).
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        deserializer.deserialize_any(DurationVisitor)
    }

    /// The text form of `value`, as [`serialize`] writes it.
    pub fn format(value: Duration) -> String {
        let millis = value.as_millis();
        if millis == 0 {
            return "0s".into();
        }
        for (unit, size) in [("h", 3_600_000), ("m", 60_000), ("s", 1_000)] {
            if millis.is_multiple_of(size) {
                return format!("{}{unit}", millis / size);
            }
        }
        format!("{millis}ms")
    }

    /// Parses `"250ms"`, `"30s"`, `"5m"`, `"1h"`, `"1m30s"`, `"0"`.
    pub fn parse(text: &str) -> Result<Duration, String> {
        let text = text.trim();
        if text == "0" {
            return Ok(Duration::ZERO);
        }
        if text.is_empty() {
            return Err(
                "an empty duration: write it with a unit, e.g. \"250ms\" or \"30s\"".into(),
            );
        }
        let mut total = Duration::ZERO;
        let mut rest = text;
        while !rest.is_empty() {
            let digits = rest
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len());
            if digits == 0 {
                return Err(format!(
                    "{text:?} is not a duration: write a number and a unit (ms, s, m, h), e.g. \"250ms\""
                ));
            }
            let number: u64 = rest[..digits]
                .parse()
                .map_err(|_| format!("{text:?}: the number is too large"))?;
            rest = &rest[digits..];
            let unit_len = rest
                .find(|c: char| c.is_ascii_digit())
                .unwrap_or(rest.len());
            let unit = &rest[..unit_len];
            rest = &rest[unit_len..];
            let part = match unit {
                "ms" => Duration::from_millis(number),
                "s" => Duration::from_secs(number),
                "m" => number
                    .checked_mul(60)
                    .map(Duration::from_secs)
                    .ok_or("too large")?,
                "h" => number
                    .checked_mul(3600)
                    .map(Duration::from_secs)
                    .ok_or("too large")?,
                "" => {
                    return Err(format!(
                        "{text:?} has no unit: write e.g. \"{number}ms\" or \"{number}s\""
                    ));
                }
                other => {
                    return Err(format!(
                        "{text:?}: unknown unit {other:?} (use ms, s, m or h)"
                    ));
                }
            };
            total = total
                .checked_add(part)
                .ok_or_else(|| format!("{text:?} is too large"))?;
        }
        Ok(total)
    }

    struct DurationVisitor;

    impl de::Visitor<'_> for DurationVisitor {
        type Value = Duration;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a duration with a unit, such as \"250ms\", \"30s\" or \"5m\"")
        }

        fn visit_str<E: de::Error>(self, text: &str) -> Result<Duration, E> {
            parse(text).map_err(E::custom)
        }

        fn visit_u64<E: de::Error>(self, number: u64) -> Result<Duration, E> {
            // The environment layer parses "0" into a number before we see it.
            if number == 0 {
                return Ok(Duration::ZERO);
            }
            Err(E::custom(format!(
                "{number} has no unit: write e.g. \"{number}ms\" or \"{number}s\""
            )))
        }

        fn visit_i64<E: de::Error>(self, number: i64) -> Result<Duration, E> {
            match u64::try_from(number) {
                Ok(number) => self.visit_u64(number),
                Err(_) => Err(E::custom(format!(
                    "{number}: a duration cannot be negative"
                ))),
            }
        }
    }
}

/// Serde for an optional [`Duration`] in the [`duration`] format; absent means `None`.
pub mod opt_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes the [`super::duration`] text, or nothing.
    pub fn serialize<S: Serializer>(
        value: &Option<Duration>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(value) => serializer.serialize_some(&super::duration::format(*value)),
            None => serializer.serialize_none(),
        }
    }

    /// Reads the [`super::duration`] text, or nothing.
    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Duration>, D::Error> {
        #[derive(Deserialize)]
        struct Wrapped(#[serde(with = "super::duration")] Duration);
        Option::<Wrapped>::deserialize(deserializer).map(|value| value.map(|Wrapped(d)| d))
    }
}

/// Key suffixes of the old unit-in-the-name convention, and what replaced them.
const RETIRED_UNIT_SUFFIXES: [(&str, &str); 3] =
    [("_ms", "250ms"), ("_secs", "60s"), ("_seconds", "60s")];

/// Retired keys whose replacement is not just the key without its unit:
/// the pub-sub services' `drain_grace_ms` became `shutdown_grace`, the name
/// every service uses for the same thing.
const RENAMED_STEMS: [(&str, &str); 1] = [("drain_grace", "shutdown_grace")];

/// Fails on a key written in the retired unit-in-the-name convention
/// (`lease_ttl_ms = 5000`, `window_secs = 60`), naming the key to write
/// instead, so an old config file fails at start instead of being half-read.
fn reject_retired_keys(
    prefix: &str,
    table: &config::Map<String, config::Value>,
) -> Result<(), ConfigError> {
    for (key, value) in table {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        if let Some((suffix, example)) = RETIRED_UNIT_SUFFIXES
            .iter()
            .find(|(suffix, _)| key.len() > suffix.len() && key.ends_with(suffix))
        {
            let stem = &key[..key.len() - suffix.len()];
            let replacement = RENAMED_STEMS
                .iter()
                .find(|(old, _)| *old == stem)
                .map_or(stem, |(_, new)| new);
            return Err(ConfigError::Renamed {
                key: path,
                replacement: format!("{replacement} = \"{example}\""),
            });
        }
        if let config::ValueKind::Table(inner) = &value.kind {
            reject_retired_keys(&path, inner)?;
        }
    }
    Ok(())
}

/// How long the watcher waits for a burst of file events to settle: editors
/// and ConfigMap updates write in several steps.
const RELOAD_DEBOUNCE: Duration = Duration::from_millis(250);

/// Follows `path` and sends each new valid value, different from the last,
/// on the returned channel (which starts with `initial`).
///
/// `reload` is called after changes in the file's directory; when it fails
/// the error is logged, `config_reloads_total{outcome="rejected"}` counts it,
/// and the receiver keeps the previous value. The watcher stops with `stop`.
///
/// Called inside a service's [`EffectiveConfig::scope`], an applied reload
/// also updates what `GET /config` shows and its load time: the reloaded
/// value (the whole config or one part) replaces the part of the config it
/// was taken from, with the origins of the [`ConfigSource`] load `reload` made.
pub fn watch_file<T, F>(
    path: &Path,
    initial: T,
    reload: F,
    stop: CancellationToken,
) -> Result<watch::Receiver<T>, ConfigError>
where
    T: PartialEq + Serialize + Send + Sync + 'static,
    F: Fn() -> Result<T, ConfigError> + Send + 'static,
{
    let watch_error = |error: notify::Error| ConfigError::Watch {
        path: path.to_path_buf(),
        reason: error.to_string(),
    };
    // Watch the directory, not the file: a ConfigMap update swaps a `..data`
    // symlink and an editor may replace the file, both invisible to a watch
    // on the old inode.
    let dir = path
        .parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let (event_tx, mut event_rx) = mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|event| !event.kind.is_access()) {
            let _ = event_tx.send(());
        }
    })
    .map_err(watch_error)?;
    watcher
        .watch(&dir, RecursiveMode::NonRecursive)
        .map_err(watch_error)?;

    let (value_tx, value_rx) = watch::channel(initial);
    let path = path.to_path_buf();
    // Taken here, in the service's scope: the spawned task is outside it.
    let effective = EffectiveConfig::current();
    tokio::spawn(async move {
        // Owned by the task: dropping the watcher stops the events.
        let _watcher = watcher;
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                event = event_rx.recv() => if event.is_none() { return },
            }
            tokio::time::sleep(RELOAD_DEBOUNCE).await;
            while event_rx.try_recv().is_ok() {}
            let (reloaded, loaded) = effective_config::capture_load(&reload);
            match reloaded {
                Ok(value) => {
                    let part = effective.as_ref().map(|_| serde_json::to_value(&value));
                    let changed = value_tx.send_if_modified(|current| {
                        if *current == value {
                            return false;
                        }
                        *current = value;
                        true
                    });
                    if changed {
                        if let (Some(effective), Some(Ok(part))) = (&effective, &part) {
                            effective.reloaded(part, loaded.as_ref());
                        }
                        metrics::counter!(crate::metrics::CONFIG_RELOADS, "outcome" => "applied")
                            .increment(1);
                        tracing::info!(path = %path.display(), "config reloaded");
                    }
                }
                Err(error) => {
                    if let Some(effective) = &effective {
                        effective.reload_rejected();
                    }
                    metrics::counter!(crate::metrics::CONFIG_RELOADS, "outcome" => "rejected")
                        .increment(1);
                    tracing::error!(path = %path.display(), %error, "config reload rejected, keeping the previous values");
                }
            }
        }
    });
    Ok(value_rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    struct Example {
        nats_url: SecretUrl,
        amqp_url: SecretUrl,
        workers: u32,
        #[serde(with = "duration")]
        timeout: Duration,
        #[serde(
            default,
            with = "opt_duration",
            skip_serializing_if = "Option::is_none"
        )]
        idle: Option<Duration>,
        limits: Limits,
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    struct Limits {
        warning: f64,
        critical: f64,
    }

    impl Default for Example {
        fn default() -> Self {
            Example {
                nats_url: "nats://127.0.0.1:4222".into(),
                amqp_url: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
                workers: 4,
                timeout: Duration::from_millis(500),
                idle: None,
                limits: Limits::default(),
            }
        }
    }

    impl Default for Limits {
        fn default() -> Self {
            Limits {
                warning: 30.0,
                critical: 40.0,
            }
        }
    }

    impl Validate for Example {
        fn validate(&self) -> Result<(), ConfigError> {
            if self.workers == 0 {
                return Err(ConfigError::invalid(
                    "workers",
                    self.workers,
                    "must be at least 1",
                ));
            }
            if self.limits.critical <= self.limits.warning {
                return Err(ConfigError::invalid(
                    "limits.critical",
                    self.limits.critical,
                    "must be above limits.warning",
                ));
            }
            Ok(())
        }
    }

    const ENV_KEYS: &[(&str, &str)] = &[("NATS_URL", "nats_url"), ("AMQP_URL", "amqp_url")];

    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> Self {
            let dir = std::env::temp_dir().join(format!(
                "switchyard-config-{}",
                uuid::Uuid::new_v4().simple()
            ));
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn source(file: Option<PathBuf>, env: &[(&str, &str)]) -> ConfigSource {
        ConfigSource::isolated(file, ENV_KEYS, env)
    }

    #[test]
    fn defaults_then_file_then_environment() {
        let dir = TempDir::new();
        let file = dir.0.join("service.toml");
        std::fs::write(
            &file,
            "workers = 8\nnats_url = \"nats://file:4222\"\n[limits]\nwarning = 25.0\n",
        )
        .unwrap();

        let only_defaults: Example = source(None, &[]).load().unwrap();
        assert_eq!(only_defaults, Example::default());

        let with_file: Example = source(Some(file.clone()), &[]).load().unwrap();
        assert_eq!(with_file.workers, 8);
        assert_eq!(with_file.nats_url.expose(), "nats://file:4222");
        assert_eq!(with_file.limits.warning, 25.0);
        assert_eq!(
            with_file.limits.critical, 40.0,
            "untouched keys keep their defaults"
        );

        let with_env: Example = source(
            Some(file),
            &[
                ("NATS_URL", "nats://env:4222"),
                ("SWITCHYARD__WORKERS", "16"),
                ("SWITCHYARD__LIMITS__CRITICAL", "45.5"),
                ("PATH", "/usr/bin"),
            ],
        )
        .load()
        .unwrap();
        assert_eq!(with_env.nats_url.expose(), "nats://env:4222");
        assert_eq!(with_env.workers, 16);
        assert_eq!(with_env.limits.critical, 45.5);
    }

    #[test]
    fn validation_errors_name_the_key_and_value() {
        let err = source(None, &[("SWITCHYARD__LIMITS__CRITICAL", "10")])
            .load::<Example>()
            .unwrap_err();
        let message = err.to_string();
        assert!(message.contains("limits.critical"), "{message}");
        assert!(message.contains("10"), "{message}");
    }

    #[test]
    fn durations_are_written_with_their_unit() {
        for (text, expected) in [
            ("250ms", Duration::from_millis(250)),
            ("30s", Duration::from_secs(30)),
            ("5m", Duration::from_secs(300)),
            ("1h", Duration::from_secs(3600)),
            ("1m30s", Duration::from_secs(90)),
            ("0", Duration::ZERO),
        ] {
            assert_eq!(duration::parse(text), Ok(expected), "{text}");
        }
        for value in [250, 1_500, 30_000, 300_000, 7_200_000, 0].map(Duration::from_millis) {
            assert_eq!(duration::parse(&duration::format(value)), Ok(value));
        }
        assert_eq!(duration::format(Duration::from_millis(1500)), "1500ms");
        assert_eq!(duration::format(Duration::from_secs(300)), "5m");
        for bad in ["30", "", "ms", "5 minutes", "-1s", "3d"] {
            assert!(duration::parse(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn durations_load_from_the_file_and_the_environment() {
        let dir = TempDir::new();
        let file = dir.0.join("durations.toml");
        std::fs::write(&file, "timeout = \"2s\"\nidle = \"5m\"\n").unwrap();
        let from_file: Example = source(Some(file.clone()), &[]).load().unwrap();
        assert_eq!(from_file.timeout, Duration::from_secs(2));
        assert_eq!(from_file.idle, Some(Duration::from_secs(300)));

        let from_env: Example = source(Some(file), &[("SWITCHYARD__TIMEOUT", "750ms")])
            .load()
            .unwrap();
        assert_eq!(from_env.timeout, Duration::from_millis(750));

        let err = source(None, &[("SWITCHYARD__TIMEOUT", "750")])
            .load::<Example>()
            .unwrap_err()
            .to_string();
        assert!(err.contains("timeout") && err.contains("750ms"), "{err}");
    }

    #[test]
    fn an_old_unit_suffixed_key_names_its_replacement() {
        let dir = TempDir::new();
        let file = dir.0.join("old.toml");
        std::fs::write(&file, "timeout_ms = 250\n").unwrap();
        let err = source(Some(file), &[]).load::<Example>().unwrap_err();
        assert_eq!(
            err.renamed(),
            Some(("timeout_ms", "timeout = \"250ms\"")),
            "{err}"
        );
        let message = err.to_string();
        assert!(message.contains("timeout_ms"), "{message}");
        assert!(message.contains("timeout = \"250ms\""), "{message}");

        let err = source(None, &[("SWITCHYARD__LIMITS__WINDOW_SECS", "60")])
            .load::<Example>()
            .unwrap_err();
        assert_eq!(
            err.renamed(),
            Some(("limits.window_secs", "window = \"60s\"")),
            "{err}"
        );
        assert_eq!(
            ConfigError::invalid("workers", 0, "must be at least 1").renamed(),
            None
        );
    }

    #[test]
    fn an_isolated_source_ignores_the_process_environment() {
        let source = ConfigSource::isolated(None, ENV_KEYS, &[("NATS_URL", "nats://a:4222")]);
        assert_eq!(source.file, None);
        assert_eq!(source.env_keys, ENV_KEYS);
        let env = source
            .env
            .as_ref()
            .expect("an isolated source has its own environment");
        assert_eq!(env.len(), 1);
        assert_eq!(env["NATS_URL"], "nats://a:4222");
        let loaded: Example = source.load().unwrap();
        assert_eq!(loaded.nats_url.expose(), "nats://a:4222");
    }

    #[test]
    fn a_wrong_type_names_the_key() {
        let err = source(None, &[("SWITCHYARD__WORKERS", "many")])
            .load::<Example>()
            .unwrap_err();
        assert!(err.to_string().contains("workers"), "{err}");
    }

    #[test]
    fn unknown_keys_in_the_file_are_rejected() {
        let dir = TempDir::new();
        let file = dir.0.join("typo.toml");
        std::fs::write(&file, "wokers = 3\n").unwrap();
        let err = source(Some(file), &[]).load::<Example>().unwrap_err();
        assert!(err.to_string().contains("wokers"), "{err}");
    }

    #[test]
    fn a_missing_file_is_an_error() {
        let err = source(Some(PathBuf::from("/nonexistent/switchyard.toml")), &[])
            .load::<Example>()
            .unwrap_err();
        assert!(matches!(err, ConfigError::MissingFile(_)));
    }

    #[test]
    fn passwords_never_print() {
        let config = Example::default();
        for text in [format!("{config:?}"), config.amqp_url.to_string()] {
            assert!(!text.contains("guest:guest"), "{text}");
            assert!(text.contains("guest:***@127.0.0.1:5672"), "{text}");
        }
        assert_eq!(
            config.amqp_url.expose(),
            "amqp://guest:guest@127.0.0.1:5672/%2f"
        );
        assert_eq!(
            redact_url("postgres://app:s3cret@db:5432/users?sslmode=disable"),
            "postgres://app:***@db:5432/users?sslmode=disable"
        );
        assert_eq!(
            redact_url("nats://tok3n@a:4222,nats://b:4222"),
            "nats://***@a:4222,nats://b:4222"
        );
        assert_eq!(
            redact_url("redis://:s3cret@redis:6379/0"),
            "redis://:***@redis:6379/0"
        );
        assert_eq!(
            redact_url("http://127.0.0.1:50051"),
            "http://127.0.0.1:50051"
        );
        assert_eq!(SecretUrl::new("postgres://x").scheme(), "postgres");
    }

    #[test]
    fn a_standard_variable_can_be_read_from_the_file_its_file_form_names() {
        let dir = TempDir::new();
        let secret = dir.0.join("amqp_url");
        std::fs::write(&secret, "amqp://app:s3cr3t@rabbit:5672/%2f\n").unwrap();
        let path = secret.display().to_string();
        let (loaded, provenance) = source(None, &[("AMQP_URL_FILE", path.as_str())])
            .load_traced::<Example>()
            .unwrap();
        assert_eq!(
            loaded.amqp_url.expose(),
            "amqp://app:s3cr3t@rabbit:5672/%2f",
            "the trailing newline is not part of the secret"
        );
        assert_eq!(
            provenance.origin("amqp_url"),
            Origin::EnvFile {
                variable: "AMQP_URL_FILE".into(),
                path: secret.clone(),
            }
        );
    }

    #[test]
    fn a_secret_given_twice_or_unreadable_is_an_error_naming_the_variable_and_path() {
        let dir = TempDir::new();
        let secret = dir.0.join("nats_url");
        std::fs::write(&secret, "nats://u:hunter2@a:4222").unwrap();
        let path = secret.display().to_string();
        let both = source(
            None,
            &[("NATS_URL", "nats://b:4222"), ("NATS_URL_FILE", &path)],
        )
        .load::<Example>()
        .unwrap_err()
        .to_string();
        assert_eq!(
            both,
            "both NATS_URL and NATS_URL_FILE are set: give the value one way"
        );

        let missing = dir.0.join("absent");
        let error = source(
            None,
            &[("NATS_URL_FILE", missing.display().to_string().as_str())],
        )
        .load::<Example>()
        .unwrap_err()
        .to_string();
        assert!(
            error.starts_with(&format!(
                "cannot read NATS_URL_FILE={}: ",
                missing.display()
            )),
            "{error}"
        );

        let empty = dir.0.join("empty");
        std::fs::write(&empty, "\n").unwrap();
        let error = source(
            None,
            &[("NATS_URL_FILE", empty.display().to_string().as_str())],
        )
        .load::<Example>()
        .unwrap_err()
        .to_string();
        assert!(error.ends_with("the file is empty"), "{error}");
    }

    #[test]
    fn the_provenance_names_the_default_the_file_or_the_variable_of_each_key() {
        let dir = TempDir::new();
        let file = dir.0.join("service.toml");
        std::fs::write(&file, "workers = 8\n[limits]\nwarning = 25.0\n").unwrap();
        let (_, provenance) = source(
            Some(file.clone()),
            &[
                ("NATS_URL", "nats://env:4222"),
                ("SWITCHYARD__LIMITS__CRITICAL", "45.5"),
            ],
        )
        .load_traced::<Example>()
        .unwrap();
        let file_origin = Origin::File { path: file };
        assert_eq!(provenance.origin("workers"), file_origin);
        assert_eq!(provenance.origin("limits.warning"), file_origin);
        assert_eq!(
            provenance.origin("limits.critical"),
            Origin::Env {
                variable: "SWITCHYARD__LIMITS__CRITICAL".into()
            }
        );
        assert_eq!(
            provenance.origin("nats_url"),
            Origin::Env {
                variable: "NATS_URL".into()
            }
        );
        assert_eq!(provenance.origin("timeout"), Origin::Default);

        let report = EffectiveConfig::loaded("example", provenance).report();
        let settings = &report["settings"];
        assert_eq!(settings["workers"]["value"], 8);
        assert_eq!(settings["workers"]["source"], "file");
        assert_eq!(settings["limits.critical"]["source"], "env");
        assert_eq!(
            settings["limits.critical"]["variable"],
            "SWITCHYARD__LIMITS__CRITICAL"
        );
        assert_eq!(settings["timeout"]["value"], "500ms");
        assert_eq!(settings["timeout"]["source"], "default");
        assert_eq!(
            settings["amqp_url"]["value"],
            "amqp://***@127.0.0.1:5672/%2f"
        );
        assert!(!report.to_string().contains("guest:guest"), "{report}");
    }

    #[test]
    fn a_value_the_program_changes_after_loading_is_given() {
        let (mut loaded, provenance) = source(None, &[("NATS_URL", "nats://env:4222")])
            .load_traced::<Example>()
            .unwrap();
        let effective = EffectiveConfig::loaded("example", provenance);
        loaded.workers = 9;
        effective.settle(&loaded);
        let report = effective.report();
        assert_eq!(report["settings"]["workers"]["value"], 9);
        assert_eq!(report["settings"]["workers"]["source"], "given");
        assert_eq!(report["settings"]["nats_url"]["source"], "env");
    }

    #[test]
    fn credentials_come_out_of_a_url_decoded_and_never_print() {
        let (urls, credentials) =
            SecretUrl::new("nats://app:p%40ss@a:4222, nats://app:p%40ss@b:4222/x")
                .split_credentials();
        assert_eq!(urls, "nats://a:4222,nats://b:4222/x");
        assert_eq!(
            credentials,
            Some(UrlCredentials::UserPassword {
                user: "app".into(),
                password: "p@ss".into()
            })
        );
        assert!(!format!("{credentials:?}").contains("p@ss"));
        let (url, token) = SecretUrl::new("nats://t0k3n@a:4222").split_credentials();
        assert_eq!(
            (url.as_str(), token),
            ("nats://a:4222", Some(UrlCredentials::Token("t0k3n".into())))
        );
        assert_eq!(
            SecretUrl::new("nats://a:4222").split_credentials(),
            ("nats://a:4222".to_string(), None)
        );
        assert_eq!(percent_decoded("100%"), "100%");
    }

    async fn next_value<T: Clone>(rx: &mut watch::Receiver<T>) -> T {
        tokio::time::timeout(Duration::from_secs(10), rx.changed())
            .await
            .expect("a reload within 10s")
            .unwrap();
        rx.borrow_and_update().clone()
    }

    #[tokio::test]
    async fn the_watcher_applies_valid_edits_and_keeps_the_old_values_on_bad_ones() {
        let dir = TempDir::new();
        let file = dir.0.join("rules.toml");
        std::fs::write(&file, "[limits]\nwarning = 30.0\ncritical = 40.0\n").unwrap();
        let load = source(Some(file.clone()), &[]);
        let initial: Example = load.load().unwrap();
        let stop = CancellationToken::new();
        let mut rx =
            watch_file(&file, initial, move || load.load::<Example>(), stop.clone()).unwrap();

        std::fs::write(&file, "[limits]\nwarning = 31.0\ncritical = 41.0\n").unwrap();
        assert_eq!(next_value(&mut rx).await.limits.critical, 41.0);

        // Invalid (critical below warning), then unparsable: both rejected.
        std::fs::write(&file, "[limits]\nwarning = 50.0\ncritical = 41.0\n").unwrap();
        tokio::time::sleep(Duration::from_millis(600)).await;
        std::fs::write(&file, "[limits\nwarning = ").unwrap();
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(
            !rx.has_changed().unwrap(),
            "a bad edit must not reach the service"
        );
        assert_eq!(rx.borrow().limits.critical, 41.0);

        std::fs::write(&file, "[limits]\nwarning = 32.0\ncritical = 42.0\n").unwrap();
        assert_eq!(next_value(&mut rx).await.limits.critical, 42.0);
        stop.cancel();
    }

    #[tokio::test]
    async fn an_applied_reload_moves_the_load_time_and_shows_the_new_values() {
        let dir = TempDir::new();
        let file = dir.0.join("rules.toml");
        std::fs::write(&file, "[limits]\nwarning = 30.0\ncritical = 40.0\n").unwrap();
        let load = source(Some(file.clone()), &[]);
        let (initial, provenance) = load.load_traced::<Example>().unwrap();
        let effective = EffectiveConfig::loaded("example", provenance);
        let stop = CancellationToken::new();
        // Only the limits are reloaded, as alert-subscriber reloads its rules.
        let mut rx = effective
            .clone()
            .scope(async {
                watch_file(
                    &file,
                    initial.limits.clone(),
                    move || load.load::<Example>().map(|config| config.limits),
                    stop.clone(),
                )
            })
            .await
            .unwrap();
        let first = effective.report();
        assert_eq!(first["reloads"]["applied"], 0);

        tokio::time::sleep(Duration::from_millis(20)).await;
        std::fs::write(
            &file,
            "workers = 7\n[limits]\nwarning = 31.0\ncritical = 41.0\n",
        )
        .unwrap();
        assert_eq!(next_value(&mut rx).await.critical, 41.0);
        let second = effective.report();
        assert!(
            second["loaded_at_unix_ms"].as_u64() > first["loaded_at_unix_ms"].as_u64(),
            "{first} then {second}"
        );
        assert_eq!(second["reloads"]["applied"], 1);
        let settings = &second["settings"];
        assert_eq!(settings["limits.critical"]["value"], 41.0);
        assert_eq!(settings["limits.critical"]["source"], "file");
        assert_eq!(
            (
                &settings["workers"]["value"],
                &settings["workers"]["source"]
            ),
            (&serde_json::json!(4), &serde_json::json!("default")),
            "a key outside the reloaded part keeps the value in force"
        );

        std::fs::write(&file, "[limits]\nwarning = 50.0\ncritical = 41.0\n").unwrap();
        testkit::eventually("the bad edit rejected", Duration::from_secs(10), || async {
            (effective.report()["reloads"]["rejected"] == 1).then_some(())
        })
        .await;
        assert_eq!(
            effective.report()["settings"]["limits.warning"]["value"],
            31.0
        );
        stop.cancel();
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn the_watcher_sees_a_configmap_style_symlink_swap() {
        use std::os::unix::fs::symlink;
        // Kubernetes mounts a ConfigMap as `rules.toml -> ..data/rules.toml`
        // and `..data -> ..<timestamp>`; an update swaps `..data` atomically.
        let dir = TempDir::new();
        let v1 = dir.0.join("..2026_01_01");
        std::fs::create_dir(&v1).unwrap();
        std::fs::write(v1.join("rules.toml"), "workers = 2\n").unwrap();
        symlink("..2026_01_01", dir.0.join("..data")).unwrap();
        symlink("..data/rules.toml", dir.0.join("rules.toml")).unwrap();
        let file = dir.0.join("rules.toml");

        let load = source(Some(file.clone()), &[]);
        let initial: Example = load.load().unwrap();
        assert_eq!(initial.workers, 2);
        let stop = CancellationToken::new();
        let mut rx =
            watch_file(&file, initial, move || load.load::<Example>(), stop.clone()).unwrap();

        let v2 = dir.0.join("..2026_01_02");
        std::fs::create_dir(&v2).unwrap();
        std::fs::write(v2.join("rules.toml"), "workers = 3\n").unwrap();
        symlink("..2026_01_02", dir.0.join("..data_tmp")).unwrap();
        std::fs::rename(dir.0.join("..data_tmp"), dir.0.join("..data")).unwrap();
        std::fs::remove_dir_all(&v1).unwrap();

        assert_eq!(next_value(&mut rx).await.workers, 3);
        stop.cancel();
    }
}
