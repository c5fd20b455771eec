//! The effective configuration: what a running service is configured with,
//! where each value came from, and when it was last (re)loaded. It is what
//! `GET /config` on the ops port answers (see [`crate::ops`]).
//!
//! How it travels, without any process-wide state (tests run several
//! services in one process):
//!
//! 1. [`ConfigSource::load_traced`](crate::config::ConfigSource::load_traced)
//!    returns the config with its [`Provenance`]: the origin of every key
//!    (`default`, `file`, `env`, `env-file`).
//! 2. [`crate::service`] runs the service's future inside
//!    [`EffectiveConfig::scope`], a task-local visible only to that future.
//! 3. The service hands its final config to `OpsServer::start`, which takes
//!    the scope's [`EffectiveConfig`] and settles it on that config
//!    ([`EffectiveConfig::in_force`]): a value the program changed after
//!    loading (a command-line flag) is `given`. A service built directly
//!    (tests) has no scope: its values are `default` where they equal the
//!    defaults and `given` elsewhere.
//! 4. [`crate::config::watch_file`], called inside the scope, updates the
//!    reloaded part and the load time whenever a reload is applied.
//!
//! What is shown is redacted ([`EffectiveConfig::report`]): a URL shows only
//! `scheme://***@host:port/path`, its user and password replaced, and query
//! parameters that look like credentials masked; a key named like a secret
//! (`password`, `token`, ...) or read from a `_FILE` shows `***`.

use std::{
    cell::RefCell,
    collections::BTreeMap,
    future::Future,
    path::PathBuf,
    sync::{Arc, Mutex, MutexGuard},
    time::{SystemTime, UNIX_EPOCH},
};

use serde::Serialize;
use serde_json::{Map, Value};

/// Where one setting's value came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "source", rename_all = "kebab-case")]
pub enum Origin {
    /// The service's built-in default.
    Default,
    /// The TOML config file.
    File {
        /// The file.
        path: PathBuf,
    },
    /// An environment variable (a standard one or `SWITCHYARD__...`).
    Env {
        /// The variable's name.
        variable: String,
    },
    /// A file named by `<NAME>_FILE`: a mounted Kubernetes or Docker secret.
    EnvFile {
        /// The `_FILE` variable's name.
        variable: String,
        /// The file it names.
        path: PathBuf,
    },
    /// Set by the program rather than by a source: a command-line flag, or
    /// a config handed to the service directly.
    Given,
}

/// What a [`crate::config::ConfigSource`] loaded and where each key came from.
#[derive(Debug, Clone, Default)]
pub struct Provenance {
    /// The loaded config as JSON, in clear: redacted only when shown.
    values: Value,
    /// The dotted keys that did not come from the defaults, with their origin.
    overrides: BTreeMap<String, Origin>,
    /// The config file, if any.
    file: Option<PathBuf>,
}

impl Provenance {
    /// A load's provenance: `values` is the loaded config, `overrides` the
    /// origin of each key a file or variable set (dotted, lowercase).
    pub(crate) fn new(
        values: Value,
        overrides: BTreeMap<String, Origin>,
        file: Option<PathBuf>,
    ) -> Self {
        Provenance {
            values,
            overrides,
            file,
        }
    }

    /// Where `key` (dotted) came from: the source that set it or a table
    /// holding it, else the defaults.
    pub fn origin(&self, key: &str) -> Origin {
        let mut prefix = key;
        loop {
            if let Some(origin) = self.overrides.get(prefix) {
                return origin.clone();
            }
            match prefix.rsplit_once('.') {
                Some((parent, _)) => prefix = parent,
                None => return Origin::Default,
            }
        }
    }

    /// Every setting (dotted leaf key) of the loaded config with its origin.
    fn origins(&self) -> BTreeMap<String, Origin> {
        leaves(&self.values)
            .into_iter()
            .map(|(key, _)| {
                let origin = self.origin(&key);
                (key, origin)
            })
            .collect()
    }
}

tokio::task_local! {
    /// The effective configuration of the service this future runs.
    static CURRENT: EffectiveConfig;
    /// Set while [`capture_load`] runs: the provenance of the load inside it.
    static CAPTURED: RefCell<Option<Provenance>>;
}

/// Runs `load` and returns what it returned with the provenance of the
/// last [`crate::config::ConfigSource`] load it made, if any: how a reload
/// learns where the reloaded values came from without changing the
/// signature of the reload function.
pub(crate) fn capture_load<R>(load: impl FnOnce() -> R) -> (R, Option<Provenance>) {
    CAPTURED.sync_scope(RefCell::new(None), || {
        let result = load();
        let captured = CAPTURED.with(|cell| cell.borrow_mut().take());
        (result, captured)
    })
}

/// Called by every load: hands `provenance` to the enclosing [`capture_load`].
pub(crate) fn record_load(provenance: &Provenance) {
    let _ = CAPTURED.try_with(|cell| *cell.borrow_mut() = Some(provenance.clone()));
}

/// The effective configuration of one running service, shared between the
/// service (which settles and reloads it) and the ops server (which shows it).
#[derive(Debug, Clone)]
pub struct EffectiveConfig {
    inner: Arc<Mutex<State>>,
}

#[derive(Debug)]
struct State {
    /// The service's name, when it was started by [`crate::service`].
    service: Option<String>,
    /// The config file, if any.
    file: Option<PathBuf>,
    /// The config in force, as JSON, in clear.
    values: Value,
    /// The origin of each setting (dotted leaf key).
    origins: BTreeMap<String, Origin>,
    /// When the config in force was loaded, or last reloaded.
    loaded_at: SystemTime,
    /// Reloads applied (a changed, valid file).
    reloads_applied: u64,
    /// Reloads rejected (an invalid file; the previous values stay).
    reloads_rejected: u64,
}

impl EffectiveConfig {
    /// The configuration `service` loaded, as `provenance` describes it.
    pub fn loaded(service: impl Into<String>, provenance: Provenance) -> Self {
        let origins = provenance.origins();
        EffectiveConfig::from_state(State {
            service: Some(service.into()),
            file: provenance.file,
            values: provenance.values,
            origins,
            loaded_at: SystemTime::now(),
            reloads_applied: 0,
            reloads_rejected: 0,
        })
    }

    /// A config handed to a service directly, with no source: each value is
    /// `default` where it equals `T::default()`'s, else `given`.
    pub fn given<T: Serialize + Default>(config: &T) -> Self {
        let defaults = to_json(&T::default());
        let values = to_json(config);
        let origins = leaves(&values)
            .into_iter()
            .map(|(key, value)| {
                let origin = if at(&defaults, &key) == Some(value) {
                    Origin::Default
                } else {
                    Origin::Given
                };
                (key, origin)
            })
            .collect();
        EffectiveConfig::from_state(State {
            service: None,
            file: None,
            values,
            origins,
            loaded_at: SystemTime::now(),
            reloads_applied: 0,
            reloads_rejected: 0,
        })
    }

    /// The effective configuration for a service about to run with
    /// `config`: the one of the enclosing [`EffectiveConfig::scope`] settled
    /// on `config`, else [`EffectiveConfig::given`].
    pub fn in_force<T: Serialize + Default>(config: &T) -> Self {
        match EffectiveConfig::current() {
            Some(effective) => {
                effective.settle(config);
                effective
            }
            None => EffectiveConfig::given(config),
        }
    }

    /// The effective configuration of the enclosing [`EffectiveConfig::scope`].
    pub fn current() -> Option<Self> {
        CURRENT.try_with(Clone::clone).ok()
    }

    /// Runs `service` with `self` as its effective configuration: what
    /// [`EffectiveConfig::in_force`] and [`crate::config::watch_file`] find.
    pub async fn scope<F: Future>(self, service: F) -> F::Output {
        CURRENT.scope(self, service).await
    }

    /// Takes `config` as the values in force: a value that differs from the
    /// loaded one was set by the program (a command-line flag): `given`.
    pub fn settle<T: Serialize>(&self, config: &T) {
        let values = to_json(config);
        let mut state = self.lock();
        let origins = leaves(&values)
            .into_iter()
            .map(|(key, value)| {
                let origin = match state.origins.get(&key) {
                    Some(origin) if at(&state.values, &key) == Some(value) => origin.clone(),
                    _ => Origin::Given,
                };
                (key, origin)
            })
            .collect();
        state.origins = origins;
        state.values = values;
    }

    /// A reload was applied: `part` (the reloaded value, the whole config
    /// or one part of it, such as alert-subscriber's rules) is now in force,
    /// loaded as `loaded` says. Moves the load time.
    pub fn reloaded(&self, part: &Value, loaded: Option<&Provenance>) {
        let mut state = self.lock();
        state.loaded_at = SystemTime::now();
        state.reloads_applied += 1;
        // Where the part sits in the config: found in the reloaded config,
        // whose subtree at that key is the part itself.
        let Some(loaded) = loaded else {
            return;
        };
        let Some(key) = key_of(&loaded.values, part) else {
            tracing::debug!("reloaded part not found in the loaded config");
            return;
        };
        state.origins.retain(|k, _| !is_within(k, &key));
        for (leaf, _) in leaves(part) {
            let full = join(&key, &leaf);
            let origin = loaded.origin(&full);
            state.origins.insert(full, origin);
        }
        set_at(&mut state.values, &key, part.clone());
    }

    /// A reload was rejected; the values in force stay.
    pub fn reload_rejected(&self) {
        self.lock().reloads_rejected += 1;
    }

    /// When the config in force was loaded, or last reloaded.
    pub fn loaded_at(&self) -> SystemTime {
        self.lock().loaded_at
    }

    /// What `GET /config` answers, secrets redacted:
    ///
    /// ```json
    /// {"service": "alert-subscriber", "file": "/etc/switchyard/alert-subscriber.toml",
    ///  "loaded_at": "2026-01-01T12:00:00.250Z", "loaded_at_unix_ms": 1767268800250,
    ///  "reloads": {"applied": 1, "rejected": 0},
    ///  "settings": {
    ///    "amqp_url": {"value": "amqp://***@rabbitmq:5672/%2f", "source": "env-file",
    ///                 "variable": "AMQP_URL_FILE", "path": "/run/secrets/amqp_url"},
    ///    "mode": {"value": "core", "source": "default"},
    ///    "rules.temperature.critical": {"value": 40.0, "source": "file",
    ///                                   "path": "/etc/switchyard/alert-subscriber.toml"}}}
    /// ```
    pub fn report(&self) -> Value {
        let state = self.lock();
        let settings: Map<String, Value> = leaves(&state.values)
            .into_iter()
            .map(|(key, value)| {
                let origin = state.origins.get(&key).cloned().unwrap_or(Origin::Given);
                let mut setting = Map::new();
                setting.insert("value".into(), shown(&key, value, &origin));
                if let Value::Object(origin) = to_json(&origin) {
                    setting.extend(origin);
                }
                (key, Value::Object(setting))
            })
            .collect();
        let unix_ms = state
            .loaded_at
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_millis() as u64);
        serde_json::json!({
            "service": state.service,
            "file": state.file,
            "loaded_at": rfc3339(unix_ms),
            "loaded_at_unix_ms": unix_ms,
            "reloads": {"applied": state.reloads_applied, "rejected": state.reloads_rejected},
            "settings": settings,
        })
    }

    fn from_state(state: State) -> Self {
        EffectiveConfig {
            inner: Arc::new(Mutex::new(state)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn to_json<T: Serialize + ?Sized>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

/// Every leaf of `value` under its dotted key; a table is not a leaf, an
/// empty table, a list or a scalar is.
pub(crate) fn leaves(value: &Value) -> Vec<(String, &Value)> {
    fn walk<'a>(prefix: &str, value: &'a Value, out: &mut Vec<(String, &'a Value)>) {
        match value {
            Value::Object(table) if !table.is_empty() => {
                for (key, inner) in table {
                    walk(&join(prefix, key), inner, out);
                }
            }
            _ if prefix.is_empty() => {}
            _ => out.push((prefix.to_string(), value)),
        }
    }
    let mut out = Vec::new();
    walk("", value, &mut out);
    out
}

fn join(prefix: &str, key: &str) -> String {
    match (prefix.is_empty(), key.is_empty()) {
        (true, _) => key.to_string(),
        (_, true) => prefix.to_string(),
        _ => format!("{prefix}.{key}"),
    }
}

/// `true` when `key` is `table` or lies inside it (`""` holds every key).
fn is_within(key: &str, table: &str) -> bool {
    table.is_empty()
        || key == table
        || key
            .strip_prefix(table)
            .is_some_and(|rest| rest.starts_with('.'))
}

/// The value at dotted `key` (`""` is the whole value).
fn at<'a>(value: &'a Value, key: &str) -> Option<&'a Value> {
    if key.is_empty() {
        return Some(value);
    }
    key.split('.')
        .try_fold(value, |value, part| value.get(part))
}

fn set_at(value: &mut Value, key: &str, new: Value) {
    if key.is_empty() {
        *value = new;
        return;
    }
    let mut current = value;
    for part in key.split('.') {
        if !current.is_object() {
            *current = Value::Object(Map::new());
        }
        current = current
            .as_object_mut()
            .expect("made an object above")
            .entry(part)
            .or_insert(Value::Null);
    }
    *current = new;
}

/// The shallowest dotted key of `tree` whose value is `part`.
fn key_of(tree: &Value, part: &Value) -> Option<String> {
    let mut level = vec![(String::new(), tree)];
    while !level.is_empty() {
        if let Some((key, _)) = level.iter().find(|(_, value)| *value == part) {
            return Some(key.clone());
        }
        level = level
            .into_iter()
            .flat_map(|(key, value)| match value {
                Value::Object(table) => table
                    .iter()
                    .map(|(inner, value)| (join(&key, inner), value))
                    .collect(),
                _ => Vec::new(),
            })
            .collect();
    }
    None
}

/// Key names whose values are secrets whatever they look like.
const SECRET_KEY_WORDS: [&str; 6] = [
    "password",
    "passwd",
    "secret",
    "token",
    "credential",
    "creds",
];

/// Query parameters of a URL whose values are secrets (`?password=`, `?sslpassword=`, `?auth_token=`).
const SECRET_QUERY_WORDS: [&str; 6] = ["pass", "secret", "token", "auth", "cred", "key"];

/// `value` as `/config` shows it for `key`.
fn shown(key: &str, value: &Value, origin: &Origin) -> Value {
    let name = key.rsplit('.').next().unwrap_or(key).to_ascii_lowercase();
    let secret_name = SECRET_KEY_WORDS.iter().any(|word| name.contains(word));
    let url_key = name.ends_with("_url") || name.ends_with("_urls");
    let from_secret_file = matches!(origin, Origin::EnvFile { .. });
    redact_value(value, secret_name, url_key, from_secret_file)
}

fn redact_value(value: &Value, secret_name: bool, url_key: bool, secret_file: bool) -> Value {
    match value {
        Value::Null => Value::Null,
        _ if secret_name => Value::String("***".into()),
        Value::String(text) if url_key || text.contains("://") => {
            Value::String(url_without_credentials(text))
        }
        Value::String(_) if secret_file => Value::String("***".into()),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|item| redact_value(item, secret_name, url_key, secret_file))
                .collect(),
        ),
        Value::Object(table) => Value::Object(
            table
                .iter()
                .map(|(key, item)| {
                    (
                        key.clone(),
                        redact_value(item, secret_name, url_key, secret_file),
                    )
                })
                .collect(),
        ),
        other => other.clone(),
    }
}

/// A URL (or a comma-separated list, as NATS takes) as `/config` shows it:
/// `scheme://***@host:port/path`, user and password (or a bare token)
/// replaced, query parameters that look like credentials masked, no fragment.
pub fn url_without_credentials(url: &str) -> String {
    url.split(',')
        .map(|one| {
            let one = one.trim();
            let (scheme, rest) = match one.split_once("://") {
                Some((scheme, rest)) => (Some(scheme), rest),
                None => (None, one),
            };
            let rest = rest.split_once('#').map_or(rest, |(before, _)| before);
            let (before_query, query) = match rest.split_once('?') {
                Some((before, query)) => (before, Some(query)),
                None => (rest, None),
            };
            let authority_end = before_query.find('/').unwrap_or(before_query.len());
            let (authority, path) = before_query.split_at(authority_end);
            let host = match authority.rsplit_once('@') {
                Some((_credentials, host)) => format!("***@{host}"),
                None => authority.to_string(),
            };
            let mut shown = match scheme {
                Some(scheme) => format!("{scheme}://{host}{path}"),
                None => format!("{host}{path}"),
            };
            if let Some(query) = query {
                shown.push('?');
                shown.push_str(&masked_query(query));
            }
            shown
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn masked_query(query: &str) -> String {
    query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((name, _)) if is_secret_parameter(name) => format!("{name}=***"),
            _ => pair.to_string(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

fn is_secret_parameter(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    SECRET_QUERY_WORDS.iter().any(|word| name.contains(word))
}

/// Unix milliseconds as RFC 3339 in UTC with milliseconds:
/// `2026-01-01T12:00:00.250Z`.
fn rfc3339(unix_ms: u64) -> String {
    let (days, ms_of_day) = (unix_ms / 86_400_000, unix_ms % 86_400_000);
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    let seconds = ms_of_day / 1000;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        seconds / 3600,
        seconds / 60 % 60,
        seconds % 60,
        ms_of_day % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_milliseconds_print_as_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        // `date -u -d @1767268800` → Thu Jan  1 12:00:00 UTC 2026.
        assert_eq!(rfc3339(1_767_268_800_250), "2026-01-01T12:00:00.250Z");
        // A leap day and the last millisecond of a day.
        assert_eq!(rfc3339(951_868_799_999), "2000-02-29T23:59:59.999Z");
        assert_eq!(rfc3339(1_709_210_096_007), "2024-02-29T12:34:56.007Z");
    }

    #[test]
    fn urls_show_no_user_password_or_credential_parameters() {
        for (url, shown) in [
            (
                "amqp://guest:guest@127.0.0.1:5672/%2f",
                "amqp://***@127.0.0.1:5672/%2f",
            ),
            (
                "postgres://app:s3cret@db:5432/users?sslmode=require&password=p4ss#frag",
                "postgres://***@db:5432/users?sslmode=require&password=***",
            ),
            (
                "nats://tok3n@a:4222, nats://u:p@b:4222",
                "nats://***@a:4222,nats://***@b:4222",
            ),
            ("redis://:s3cret@redis:6379/0", "redis://***@redis:6379/0"),
            (
                "sqlite://data/users.db?mode=rwc",
                "sqlite://data/users.db?mode=rwc",
            ),
            ("user:pw@host:4222", "***@host:4222"),
        ] {
            assert_eq!(url_without_credentials(url), shown, "{url}");
        }
    }

    #[test]
    fn secret_names_and_secret_files_never_show_their_value() {
        let env_file = Origin::EnvFile {
            variable: "API_KEY_FILE".into(),
            path: "/run/secrets/k".into(),
        };
        let shown_of = |key, value: Value, origin: &Origin| shown(key, &value, origin);
        assert_eq!(
            shown_of("auth.password", "hunter2".into(), &Origin::Default),
            "***"
        );
        assert_eq!(
            shown_of("nats_token", "t0k".into(), &Origin::Default),
            "***"
        );
        assert_eq!(shown_of("api_key", "k3y".into(), &env_file), "***");
        assert_eq!(
            shown_of("amqp_url", "amqp://u:p@h:5672/%2f".into(), &Origin::Default),
            "amqp://***@h:5672/%2f"
        );
        assert_eq!(
            shown_of("queue", "task_queue".into(), &Origin::Default),
            "task_queue"
        );
        assert_eq!(shown_of("workers", 4.into(), &env_file), 4);
    }

    #[test]
    fn a_config_given_directly_is_default_where_it_equals_the_defaults() {
        #[derive(Debug, Default, Serialize)]
        struct Settings {
            workers: u32,
            url: String,
            limits: BTreeMap<String, f64>,
        }
        let config = Settings {
            workers: 3,
            ..Settings::default()
        };
        let report = EffectiveConfig::given(&config).report();
        let settings = &report["settings"];
        assert_eq!(settings["workers"]["value"], 3);
        assert_eq!(settings["workers"]["source"], "given");
        assert_eq!(settings["url"]["source"], "default");
        assert_eq!(
            settings["limits"]["value"],
            serde_json::json!({}),
            "an empty table is a setting too"
        );
        assert!(report["service"].is_null());
        assert!(report["loaded_at"].as_str().unwrap().ends_with('Z'));
    }

    #[test]
    fn keys_are_found_and_replaced_by_their_dotted_path() {
        let mut tree = serde_json::json!({"a": {"b": {"c": 1}, "d": [1, 2]}, "e": "x"});
        let part = serde_json::json!({"c": 1});
        assert_eq!(key_of(&tree, &part).as_deref(), Some("a.b"));
        assert_eq!(key_of(&tree, &tree.clone()).as_deref(), Some(""));
        assert_eq!(key_of(&tree, &serde_json::json!(9)), None);
        set_at(&mut tree, "a.b", serde_json::json!({"c": 2}));
        assert_eq!(at(&tree, "a.b.c"), Some(&serde_json::json!(2)));
        let keys: Vec<String> = leaves(&tree).into_iter().map(|(key, _)| key).collect();
        assert_eq!(keys, ["a.b.c", "a.d", "e"]);
        assert!(is_within("a.b.c", "a.b") && is_within("a.b", "a.b") && is_within("x", ""));
        assert!(!is_within("a.bc", "a.b"));
    }
}
