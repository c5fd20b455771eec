//! When each alert passed each point of the pipeline, read from what the
//! services record anyway: their JSON log lines (`timestamp` is the moment
//! the event was emitted, µs, UTC) and the alert id, which carries the
//! reading's own timestamp (`<sensor_id>-<timestamp ms>-<seq>`,
//! docs/ARCHITECTURE.md). No service is instrumented for the benchmark.

use std::collections::HashMap;

/// `alert_id` → the times (µs since the epoch) of every log line with
/// `message` that names it; more than one means the alert was repeated.
pub(crate) type Logged = HashMap<String, Vec<i64>>;

/// Every line of `log` whose `message` is `message`, by its `alert_id`.
/// Lines that are not JSON, or lack either field, are skipped.
pub(crate) fn logged(log: &str, message: &str) -> Logged {
    let mut found = Logged::new();
    // Cheap test first: most lines are other events.
    let needle = format!("\"{message}\"");
    for line in log.lines().filter(|line| line.contains(&needle)) {
        let Ok(event) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if event["message"] != message {
            continue;
        }
        let (Some(alert_id), Some(at)) = (
            event["alert_id"].as_str(),
            event["timestamp"].as_str().and_then(micros_since_epoch),
        ) else {
            continue;
        };
        found.entry(alert_id.to_string()).or_default().push(at);
    }
    found
}

/// The first time of each alert in `logged`.
pub(crate) fn first_times(logged: &Logged) -> HashMap<String, i64> {
    logged
        .iter()
        .filter_map(|(id, times)| Some((id.clone(), *times.iter().min()?)))
        .collect()
}

/// How many lines of `log` have `message` and an alert id starting with
/// `prefix`: a cheap count for polling, without parsing JSON.
pub(crate) fn count(log: &str, message: &str, prefix: &str) -> u64 {
    let message = format!("\"message\":\"{message}\"");
    let alert = format!("\"alert_id\":\"{prefix}");
    log.lines()
        .filter(|line| line.contains(&message) && line.contains(&alert))
        .count() as u64
}

/// How many lines of `log` have `message`.
pub(crate) fn count_lines(log: &str, message: &str) -> u64 {
    let message = format!("\"message\":\"{message}\"");
    log.lines().filter(|line| line.contains(&message)).count() as u64
}

/// The reading timestamp (ms since the epoch) in an alert id
/// `<sensor_id>-<timestamp>-<seq>`; the sensor id may hold dashes itself.
pub(crate) fn reading_millis(alert_id: &str) -> Option<i64> {
    let mut parts = alert_id.rsplitn(3, '-');
    let _seq: u64 = parts.next()?.parse().ok()?;
    let timestamp = parts.next()?.parse().ok()?;
    parts.next().filter(|sensor| !sensor.is_empty())?;
    Some(timestamp)
}

/// An RFC 3339 UTC time as tracing-subscriber writes it
/// (`2026-11-27T10:00:00.123456Z`; any number of fraction digits) in µs
/// since the Unix epoch.
pub(crate) fn micros_since_epoch(text: &str) -> Option<i64> {
    let text = text.strip_suffix('Z')?;
    let (date, time) = text.split_once('T')?;
    let mut date = date.splitn(3, '-');
    let year: i64 = date.next()?.parse().ok()?;
    let month: u32 = date.next()?.parse().ok()?;
    let day: u32 = date.next()?.parse().ok()?;
    let (clock, fraction) = time.split_once('.').unwrap_or((time, ""));
    let mut clock = clock.splitn(3, ':');
    let hour: i64 = clock.next()?.parse().ok()?;
    let minute: i64 = clock.next()?.parse().ok()?;
    let second: i64 = clock.next()?.parse().ok()?;
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    if !fraction.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    // The first six digits are µs; pad a shorter fraction, drop the rest.
    let micros: i64 = format!("{fraction:0<6}")[..6].parse().ok()?;
    let days = days_from_civil(year, month, day);
    Some(((days * 24 + hour) * 60 + minute) * 60_000_000 + second * 1_000_000 + micros)
}

/// Days from 1970-01-01 to a date of the proleptic Gregorian calendar
/// (Howard Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month = i64::from(month);
    let day_of_year =
        (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_timestamps_read_as_micros_since_the_epoch() {
        assert_eq!(micros_since_epoch("1970-01-01T00:00:00.000000Z"), Some(0));
        // 1_700_000_000 s is 2023-11-14T22:13:20Z.
        assert_eq!(
            micros_since_epoch("2023-11-14T22:13:20.123456Z"),
            Some(1_700_000_000_123_456)
        );
        assert_eq!(
            micros_since_epoch("2023-11-14T22:13:20.5Z"),
            Some(1_700_000_000_500_000)
        );
        assert_eq!(
            micros_since_epoch("2023-11-14T22:13:20Z"),
            Some(1_700_000_000_000_000)
        );
        // A leap day and the day after it.
        assert_eq!(
            micros_since_epoch("2024-03-01T00:00:00.000000Z").unwrap()
                - micros_since_epoch("2024-02-28T00:00:00.000000Z").unwrap(),
            2 * 86_400_000_000
        );
        for bad in [
            "2023-11-14T22:13:20.123456",
            "2023-13-14T22:13:20Z",
            "2023-11-14 22:13:20Z",
            "2023-11-14T22:13:20.12a4Z",
            "",
        ] {
            assert_eq!(micros_since_epoch(bad), None, "{bad}");
        }
    }

    #[test]
    fn an_alert_id_carries_its_readings_timestamp() {
        assert_eq!(
            reading_millis("low-temp-001-1700000000123-9"),
            Some(1_700_000_000_123)
        );
        assert_eq!(
            reading_millis("temp-1700000000123-9"),
            Some(1_700_000_000_123)
        );
        assert_eq!(reading_millis("1700000000123-9"), None);
        assert_eq!(reading_millis("low-temp-001-x-9"), None);
        assert_eq!(reading_millis("low-temp-001-1700000000123-"), None);
    }

    #[test]
    fn notifications_are_found_by_message_and_alert_id() {
        let log = concat!(
            r#"{"timestamp":"2023-11-14T22:13:20.000100Z","level":"INFO","message":"notification sent","alert_id":"low-temp-001-1700000000000-1","severity":"critical"}"#,
            "\n",
            r#"{"timestamp":"2023-11-14T22:13:20.000200Z","level":"INFO","message":"task done","task_id":"low-temp-001-1700000000000-1"}"#,
            "\nnot json, \"notification sent\"\n",
            r#"{"timestamp":"2023-11-14T22:13:21.000000Z","level":"INFO","message":"notification sent","alert_id":"low-temp-001-1700000000000-1"}"#,
            "\n",
            r#"{"timestamp":"2023-11-14T22:13:21.000000Z","level":"INFO","message":"notification sent","alert_id":"high-temp-002-1700000000000-1"}"#,
            "\n",
            r#"{"level":"INFO","message":"notification sent","alert_id":"no-time"}"#,
            "\n",
        );
        let sent = logged(log, "notification sent");
        assert_eq!(
            sent["low-temp-001-1700000000000-1"],
            [1_700_000_000_000_100, 1_700_000_001_000_000]
        );
        assert_eq!(sent.len(), 2);
        assert_eq!(count(log, "notification sent", "low-"), 2);
        assert_eq!(count(log, "notification sent", "high-"), 1);
        assert_eq!(count(log, "task done", "low-"), 0);
        assert_eq!(count_lines(log, "notification sent"), 4);
        assert_eq!(count_lines(log, "task done"), 1);
    }
}
