//! Wall-clock time as the wire formats write it: Unix milliseconds.

/// The current time as Unix milliseconds (0 if the clock is before 1970).
pub fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}
