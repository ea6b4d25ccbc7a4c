//! Rate limiting of repeated identical log lines: a failure that repeats in a
//! tight loop (an accept loop on a dead reactor, a broken upstream under load)
//! must not fill the disk. Each identical (level, target, message) warning or
//! error passes [`LINES_PER_INTERVAL`] times per [`INTERVAL`]; the rest are
//! counted and summed up in one `… repeated N more times` line.
//!
//! Lines are tracked in a fixed table of [`SLOTS`] slots, each behind its own
//! lock and chosen by the line's hash: memory is bounded, and only lines with
//! the same slot ever wait for each other. Debug and info lines pass untouched.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::time::{Duration, Instant};

use log::{Level, Log, Metadata, Record};
use parking_lot::Mutex;

/// Identical lines written per interval before the rest are only counted.
pub const LINES_PER_INTERVAL: u32 = 10;
/// The window [`LINES_PER_INTERVAL`] applies to.
pub const INTERVAL: Duration = Duration::from_secs(10);
/// Distinct lines tracked at once; a new line takes over its slot.
const SLOTS: usize = 256;
/// The most characters of a line quoted in its summary.
const SUMMARY_CHARS: usize = 200;

/// A line held back `repeated` times since it was last written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub level: Level,
    pub target: String,
    pub line: String,
    pub repeated: u64,
}

#[derive(Default)]
struct Slot {
    hash: u64,
    window_start_ms: u64,
    written: u32,
    held_back: u64,
    /// Level, target and (cut) text, for the summary.
    origin: Option<(Level, String, String)>,
}

impl Slot {
    /// The summary of the lines held back, resetting the count.
    fn take_summary(&mut self) -> Option<Summary> {
        let repeated = std::mem::take(&mut self.held_back);
        let (level, target, line) = self.origin.clone()?;
        (repeated > 0).then_some(Summary {
            level,
            target,
            line,
            repeated,
        })
    }
}

/// Whether to write a line, and the summary of held-back lines to write first.
#[derive(Debug, PartialEq, Eq)]
pub struct Decision {
    pub write: bool,
    pub summary: Option<Summary>,
}

/// The counting core, on a clock in milliseconds given by the caller.
pub struct Limiter {
    slots: Box<[Mutex<Slot>]>,
    per_interval: u32,
    interval_ms: u64,
}

impl Limiter {
    pub fn new(per_interval: u32, interval: Duration) -> Self {
        Limiter {
            slots: (0..SLOTS).map(|_| Mutex::new(Slot::default())).collect(),
            per_interval,
            interval_ms: u64::try_from(interval.as_millis()).unwrap_or(u64::MAX),
        }
    }

    pub fn check(&self, level: Level, target: &str, line: &str, now_ms: u64) -> Decision {
        let mut hasher = DefaultHasher::new();
        (level, target, line).hash(&mut hasher);
        let hash = hasher.finish();
        let mut slot = self.slots[(hash % SLOTS as u64) as usize].lock();
        if slot.origin.is_none() || slot.hash != hash {
            let summary = slot.take_summary();
            let cut: String = line.chars().take(SUMMARY_CHARS).collect();
            *slot = Slot {
                hash,
                window_start_ms: now_ms,
                written: 1,
                held_back: 0,
                origin: Some((level, target.to_owned(), cut)),
            };
            return Decision {
                write: true,
                summary,
            };
        }
        if now_ms.saturating_sub(slot.window_start_ms) >= self.interval_ms {
            slot.window_start_ms = now_ms;
            slot.written = 1;
            return Decision {
                write: true,
                summary: slot.take_summary(),
            };
        }
        if slot.written < self.per_interval {
            slot.written += 1;
            return Decision {
                write: true,
                summary: None,
            };
        }
        slot.held_back += 1;
        Decision {
            write: false,
            summary: None,
        }
    }

    /// Summaries of every line held back so far.
    pub fn drain(&self) -> Vec<Summary> {
        self.slots
            .iter()
            .filter_map(|slot| slot.lock().take_summary())
            .collect()
    }
}

/// A [`Log`] that rate-limits repeated warnings and errors before `inner`.
pub struct RateLimitedLog<L> {
    inner: L,
    limiter: Limiter,
    started: Instant,
}

impl<L: Log> RateLimitedLog<L> {
    pub fn new(inner: L) -> Self {
        RateLimitedLog {
            inner,
            limiter: Limiter::new(LINES_PER_INTERVAL, INTERVAL),
            started: Instant::now(),
        }
    }

    fn write_summary(&self, summary: &Summary) {
        self.inner.log(
            &Record::builder()
                .level(summary.level)
                .target(&summary.target)
                .args(format_args!(
                    "… repeated {} more times: {}",
                    summary.repeated, summary.line
                ))
                .build(),
        );
    }
}

impl<L: Log> Log for RateLimitedLog<L> {
    fn enabled(&self, metadata: &Metadata) -> bool {
        self.inner.enabled(metadata)
    }

    fn log(&self, record: &Record) {
        if !self.inner.enabled(record.metadata()) {
            return;
        }
        if record.level() > Level::Warn {
            return self.inner.log(record);
        }
        let line = record.args().to_string();
        let now_ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let decision = self
            .limiter
            .check(record.level(), record.target(), &line, now_ms);
        if let Some(summary) = &decision.summary {
            self.write_summary(summary);
        }
        if decision.write {
            self.inner.log(record);
        }
    }

    fn flush(&self) {
        for summary in self.limiter.drain() {
            self.write_summary(&summary);
        }
        self.inner.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1000;

    fn limiter() -> Limiter {
        Limiter::new(3, Duration::from_secs(10))
    }

    fn writes(limiter: &Limiter, line: &str, now_ms: u64) -> bool {
        limiter.check(Level::Error, "t", line, now_ms).write
    }

    #[test]
    fn identical_lines_pass_up_to_the_limit_then_are_summed_up_in_the_next_window() {
        let limiter = limiter();
        let written = (0..1000)
            .filter(|i| writes(&limiter, "Accept() failed", *i))
            .count();
        assert_eq!(written, 3);
        let next = limiter.check(Level::Error, "t", "Accept() failed", 10 * SECOND);
        assert!(next.write);
        assert_eq!(
            next.summary,
            Some(Summary {
                level: Level::Error,
                target: "t".to_owned(),
                line: "Accept() failed".to_owned(),
                repeated: 997,
            })
        );
    }

    #[test]
    fn different_lines_levels_and_targets_are_counted_apart() {
        let limiter = limiter();
        for _ in 0..3 {
            assert!(writes(&limiter, "a", 0));
        }
        assert!(!writes(&limiter, "a", 1));
        assert!(writes(&limiter, "b", 1));
        assert!(limiter.check(Level::Warn, "t", "a", 1).write);
        assert!(limiter.check(Level::Error, "other", "a", 1).write);
    }

    #[test]
    fn drain_reports_what_was_held_back_once() {
        let limiter = limiter();
        for i in 0..10 {
            writes(&limiter, "x", i);
        }
        let drained = limiter.drain();
        assert_eq!(drained.len(), 1);
        assert_eq!(drained[0].repeated, 7);
        assert!(limiter.drain().is_empty());
    }

    #[test]
    fn memory_stays_bounded_by_the_table_and_a_long_line_is_cut() {
        let limiter = limiter();
        for i in 0..10 * SLOTS {
            assert!(writes(&limiter, &format!("line {i}"), 0));
        }
        let long = "y".repeat(1 << 20);
        for _ in 0..5 {
            writes(&limiter, &long, 0);
        }
        let summary = limiter.drain().pop().expect("held back");
        assert_eq!(summary.line.chars().count(), SUMMARY_CHARS);
    }

    /// The wrapper writes through `inner`: captured here.
    #[derive(Default)]
    struct Capture(Mutex<Vec<String>>);

    impl Log for Capture {
        fn enabled(&self, _: &Metadata) -> bool {
            true
        }
        fn log(&self, record: &Record) {
            self.0
                .lock()
                .push(format!("{} {}", record.level(), record.args()));
        }
        fn flush(&self) {}
    }

    #[test]
    fn the_logger_holds_back_floods_and_flush_sums_them_up() {
        let log = RateLimitedLog::new(Capture::default());
        let error = |text: &str| {
            log.log(
                &Record::builder()
                    .level(Level::Error)
                    .target("t")
                    .args(format_args!("{text}"))
                    .build(),
            )
        };
        for _ in 0..100 {
            error("flood");
        }
        for _ in 0..20 {
            log.log(
                &Record::builder()
                    .level(Level::Debug)
                    .args(format_args!("debug"))
                    .build(),
            );
        }
        log.flush();
        let lines = log.inner.0.lock().clone();
        let floods = lines.iter().filter(|l| *l == "ERROR flood").count();
        assert_eq!(floods, LINES_PER_INTERVAL as usize);
        assert_eq!(lines.iter().filter(|l| *l == "DEBUG debug").count(), 20);
        assert!(lines.contains(&format!(
            "ERROR … repeated {} more times: flood",
            100 - LINES_PER_INTERVAL
        )));
    }
}
