//! `sensor-publisher`: not implemented yet.
//!
//! The service is filled in by its pattern issue (see DESIGN.md); until then the
//! library only reports that it does not exist yet, so nothing pretends to work.

/// Starts the service. Always fails until the service is implemented.
pub async fn run() -> anyhow::Result<()> {
    anyhow::bail!("sensor-publisher is not implemented yet")
}
