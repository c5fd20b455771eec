//! Inputs the fuzzer (fuzz/fuzz_targets/config_file.rs) found to crash the
//! config loader, each kept as a test that it now fails with a `ConfigError`.

use std::path::PathBuf;

use alert_subscriber::config::{Config, ENV_KEYS};
use common::config::ConfigSource;

/// Loads `toml` as alert-subscriber's config file, as `--config` does at
/// start and on every reload.
fn load(name: &str, toml: &str) -> Result<Config, String> {
    let dir: PathBuf = std::env::temp_dir().join(format!(
        "alert-fuzz-regression-{name}-{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("alert-subscriber.toml");
    std::fs::write(&file, toml).unwrap();
    let result = ConfigSource::isolated(Some(file), ENV_KEYS, &[])
        .load::<Config>()
        .map_err(|error| error.to_string());
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// `lease_ttl` is checked against three heartbeats; a heartbeat near the
/// largest duration overflowed that product and panicked the loader (and
/// with it a hot reload) instead of rejecting the file.
#[test]
fn a_huge_heartbeat_is_rejected_not_a_panic() {
    for heartbeat in [
        "18446744073709551615s",
        "5124095576030431h",
        "6148914691236517206s",
    ] {
        let error = load("heartbeat", &format!("heartbeat = \"{heartbeat}\"\n")).unwrap_err();
        assert!(error.contains("lease_ttl"), "{heartbeat}: {error}");
    }
    // The bound itself is unchanged: exactly three heartbeats is enough.
    let config = load(
        "heartbeat-bound",
        "heartbeat = \"1s\"\nlease_ttl = \"3s\"\n",
    )
    .unwrap();
    assert_eq!(config.lease_ttl, config.heartbeat * 3);
    // Not a nanosecond off where milliseconds do not divide by three.
    load(
        "heartbeat-odd",
        "heartbeat = \"334ms\"\nlease_ttl = \"1002ms\"\n",
    )
    .unwrap();
    let error = load(
        "heartbeat-short",
        "heartbeat = \"1s\"\nlease_ttl = \"2999ms\"\n",
    )
    .unwrap_err();
    assert!(error.contains("lease_ttl"), "{error}");
}
