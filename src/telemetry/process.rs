//! The standard `process_*` metrics of Prometheus client libraries, read from
//! `/proc/self` when scraped (the `prometheus` crate's own collector would pull in
//! `procfs` and its dependencies for these six numbers). Linux only: elsewhere the
//! files are missing and the metrics are left out.

use std::fmt::Write as _;
use std::sync::OnceLock;

/// Appends the `process_*` families to `out`.
pub fn render(out: &mut Vec<u8>) {
    let mut text = String::new();
    let stat = std::fs::read_to_string("/proc/self/stat").ok();
    // The fields after the command name, which is in parentheses and may hold spaces:
    // index 0 is field 3 of proc(5) (`state`).
    let fields: Vec<&str> = stat
        .as_deref()
        .and_then(|s| s.rsplit_once(')'))
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
    let ticks = ticks_per_second();
    if let (Some(user), Some(system)) = (field(14), field(15)) {
        let seconds = (user + system) as f64 / ticks;
        family(
            &mut text,
            "process_cpu_seconds_total",
            "counter",
            "Total user and system CPU time spent in seconds.",
            seconds,
        );
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = |key: &str| {
        status.lines().find_map(|l| {
            l.strip_prefix(key)?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse::<u64>()
                .ok()
        })
    };
    if let Some(rss) = kib("VmRSS:") {
        family(
            &mut text,
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            (rss * 1024) as f64,
        );
    }
    if let Some(size) = kib("VmSize:") {
        family(
            &mut text,
            "process_virtual_memory_bytes",
            "gauge",
            "Virtual memory size in bytes.",
            (size * 1024) as f64,
        );
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        // The directory handle reading it is one of the entries.
        let open = fds.count().saturating_sub(1);
        family(
            &mut text,
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
            open as f64,
        );
    }
    if let Some(max) = max_open_files() {
        family(
            &mut text,
            "process_max_fds",
            "gauge",
            "Maximum number of open file descriptors.",
            max,
        );
    }
    if let Some(start) = start_time(field(22), ticks) {
        family(
            &mut text,
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since unix epoch in seconds.",
            start,
        );
    }
    out.extend_from_slice(text.as_bytes());
}

fn family(text: &mut String, name: &str, kind: &str, help: &str, value: f64) {
    let _ = writeln!(
        text,
        "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
    );
}

/// The clock ticks `/proc` counts CPU time and start times in (`USER_HZ`).
fn ticks_per_second() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        match nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK) {
            Ok(Some(ticks)) if ticks > 0 => ticks as f64,
            // The value on every Linux architecture Trident builds for.
            _ => 100.0,
        }
    })
}

/// The soft limit on open files; `None` when unlimited or unreadable.
fn max_open_files() -> Option<f64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.trim_start_matches("Max open files")
        .split_whitespace()
        .next()?
        .parse::<u64>()
        .ok()
        .map(|max| max as f64)
}

/// Unix time the process started: the boot time plus its start in ticks after boot.
/// Both are fixed, so it is read once.
fn start_time(ticks_after_boot: Option<u64>, ticks: f64) -> Option<f64> {
    static START: OnceLock<Option<f64>> = OnceLock::new();
    *START.get_or_init(|| {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let boot = stat
            .lines()
            .find_map(|l| l.strip_prefix("btime")?.trim().parse::<u64>().ok())?;
        Some(boot as f64 + ticks_after_boot? as f64 / ticks)
    })
}
