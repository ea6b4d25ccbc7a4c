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
    let level = file.level;
    if let Err(e) = env_filter::Builder::new().try_parse(&level) {
        errors.push("log.level", format!("{level:?}: {e}"));
    }
    let format = match file.format.as_str() {
        "text" => LogFormat::Text,
        "json" => LogFormat::Json,
        other => {
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
    file: AccessLogFile,
    base: &Path,
    errors: &mut Errors,
) -> AccessLogSettings {
    let target = match file.output.as_str() {
        "stdout" => AccessLogTarget::Stdout,
        "stderr" => AccessLogTarget::Stderr,
        "off" => AccessLogTarget::Off,
        "" => {
            errors.push(
                "server.access_log",
                "expected \"stdout\", \"stderr\", \"off\" or a file path, found \"\"",
            );
            AccessLogTarget::Off
        }
        path => AccessLogTarget::File(base.join(path)),
    };
    let sample_ratio = file.sample_ratio;
    if !(0.0..=1.0).contains(&sample_ratio) {
        errors.push(
            "server.access_log.sample_ratio",
            format!("must be between 0 and 1, found {sample_ratio}"),
        );
    }
    AccessLogSettings {
        target,
        sample_ratio,
        sample_errors: file.sample_errors,
    }
}
