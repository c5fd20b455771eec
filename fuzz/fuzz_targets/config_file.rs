//! Config files: a TOML file through `common::config::ConfigSource`, loaded
//! into alert-subscriber's `Config` (the richest one: URLs with secrets,
//! durations, TLS and NATS auth sections, and the hot-reloaded `[rules.*]`),
//! exactly as the service loads `--config` at start and on every reload.
//!
//! Input: the file's bytes. They go through a real file because the loader
//! reads one (config-rs's TOML source, the retired-key check, the duration
//! parser, `Validate`).
//!
//! A file must load or fail with a `ConfigError`; an accepted config must
//! print (its `Debug` and `Display` redact the URLs' secrets) and split its
//! URLs' credentials out.

#![no_main]

use std::{path::PathBuf, sync::OnceLock};

use alert_subscriber::config::{Config, ENV_KEYS};
use common::config::ConfigSource;
use libfuzzer_sys::fuzz_target;

/// One file per fuzzing process, rewritten for every input.
fn config_path() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        std::env::temp_dir().join(format!(
            "switchyard-fuzz-config-{}.toml",
            std::process::id()
        ))
    })
}

fuzz_target!(|data: &[u8]| {
    let path = config_path();
    std::fs::write(path, data).expect("the fuzzer's temp file is writable");
    let source = ConfigSource::isolated(Some(path.clone()), ENV_KEYS, &[]);
    let Ok(config) = source.load::<Config>() else {
        return;
    };
    let _ = format!("{config:?} {} {}", config.nats_url, config.amqp_url);
    let _ = config.nats_url.split_credentials();
    let _ = config.amqp_url.split_credentials();
});
