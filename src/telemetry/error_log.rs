//! Trident's own messages (the error log), on stderr as `[log]` says: the
//! level filter (`RUST_LOG`, when set, in its place) and text or JSON lines,
//! rate limited either way ([`RateLimitedLog`]).

use std::io::Write;

use log::Record;
use serde::Serialize;

use super::log_limit::RateLimitedLog;
use crate::config::{LogFormat, LogSettings};

/// The variable that overrides `[log] level`.
pub const LEVEL_VARIABLE: &str = "RUST_LOG";

/// Installs the process's logger. Read once: a reload does not change it.
pub fn install(settings: &LogSettings) {
    let level = std::env::var(LEVEL_VARIABLE)
        .ok()
        .filter(|level| !level.is_empty())
        .unwrap_or_else(|| settings.level.clone());
    let mut builder = env_logger::Builder::new();
    builder.parse_filters(&level);
    if settings.format == LogFormat::Json {
        builder.format(|out, record| {
            let ts = out.timestamp_millis().to_string();
            writeln!(out, "{}", json_line(&ts, record))
        });
    }
    let logger = builder.build();
    let max_level = logger.filter();
    if log::set_boxed_logger(Box::new(RateLimitedLog::new(logger))).is_ok() {
        log::set_max_level(max_level);
    }
}

/// One `format = "json"` line.
#[derive(Serialize)]
struct JsonLine<'a> {
    /// RFC 3339, UTC, milliseconds: `2026-01-01T00:00:00.000Z`.
    ts: &'a str,
    level: &'a str,
    target: &'a str,
    message: String,
}

fn json_line(ts: &str, record: &Record) -> String {
    let line = JsonLine {
        ts,
        level: record.level().as_str(),
        target: record.target(),
        message: record.args().to_string(),
    };
    serde_json::to_string(&line).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use log::Level;

    use super::*;

    #[test]
    fn a_json_line_is_one_object_with_the_message_escaped() {
        let line = json_line(
            "2026-01-01T00:00:00.000Z",
            &Record::builder()
                .level(Level::Warn)
                .target("trident::reload")
                .args(format_args!("bad \"value\"\nsecond line"))
                .build(),
        );
        assert!(!line.contains('\n'));
        let parsed: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(
            parsed,
            serde_json::json!({
                "ts": "2026-01-01T00:00:00.000Z",
                "level": "WARN",
                "target": "trident::reload",
                "message": "bad \"value\"\nsecond line",
            })
        );
    }
}
