//! `[log]` and `server.access_log`.

use std::path::Path;

use super::file::{AccessLogFile, LogFile};
use super::{AccessLogSettings, AccessLogTarget, Errors, LogFormat, LogSettings};

/// The error log's filter when `[log] level` is not set: start-up, reload and
/// ejection lines, never one per request. Pingora's own info lines
/// (bootstrap, service start) add nothing to Trident's; rustls warns about
/// clients' protocol quirks once per connection (an IP address sent as SNI,
/// as `wrk` does): the client's doing, and a flood.
pub const DEFAULT_LOG_LEVEL: &str = "info,pingora_core=warn,rustls=error";

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            level: DEFAULT_LOG_LEVEL.to_owned(),
            format: LogFormat::Text,
        }
    }
}

pub(super) fn log(file: Option<LogFile>, errors: &mut Errors) -> LogSettings {
    let file = file.unwrap_or_default();
    let level = file.level.unwrap_or_else(|| LogSettings::default().level);
    if let Err(e) = env_filter::Builder::new().try_parse(&level) {
        errors.push("log.level", format!("{level:?}: {e}"));
    }
    let format = match file.format.as_deref() {
        None | Some("text") => LogFormat::Text,
        Some("json") => LogFormat::Json,
        Some(other) => {
            errors.push(
                "log.format",
                format!("expected \"text\" or \"json\", found {other:?}"),
            );
            LogFormat::Text
        }
    };
    LogSettings { level, format }
}

pub(super) fn access_log(
    file: Option<AccessLogFile>,
    base: &Path,
    errors: &mut Errors,
) -> AccessLogSettings {
    let file = file.unwrap_or_default();
    let target = match file.output.as_deref() {
        None | Some("stdout") => AccessLogTarget::Stdout,
        Some("stderr") => AccessLogTarget::Stderr,
        Some("off") => AccessLogTarget::Off,
        Some("") => {
            errors.push(
                "server.access_log",
                "expected \"stdout\", \"stderr\", \"off\" or a file path, found \"\"",
            );
            AccessLogTarget::Off
        }
        Some(path) => AccessLogTarget::File(base.join(path)),
    };
    let sample_ratio = file.sample_ratio.unwrap_or(1.0);
    if !(0.0..=1.0).contains(&sample_ratio) {
        errors.push(
            "server.access_log.sample_ratio",
            format!("must be between 0 and 1, found {sample_ratio}"),
        );
    }
    AccessLogSettings {
        target,
        sample_ratio,
        sample_errors: file.sample_errors.unwrap_or(false),
    }
}
