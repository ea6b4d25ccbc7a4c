//! The soak's summary: calls and their failures per fault window, expected or
//! not, and Trident's resident memory per round of idle connections; as
//! markdown (`soak.md`) and as JSON lines appended to `soak-runs.jsonl`.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;
use std::time::Duration;

use serde_json::json;

use crate::load::Call;
use crate::{mib, Fault, FAILOVER_GRACE, GOAL_AFTER_CLOSE_KIB, GOAL_WITH_CONNECTIONS_KIB};

/// One round's fault: on which endpoint, when (from the soak's start), and the
/// load's calls and Trident's CPU time per call over the whole round.
pub struct FaultWindow {
    pub round: usize,
    pub fault: Fault,
    pub endpoint: usize,
    pub start: Duration,
    pub end: Duration,
    pub calls: usize,
    pub cpu_us_per_call: Option<f64>,
}

impl FaultWindow {
    /// Whether `call` overlapped the fault, or the failover after it.
    fn covers(&self, call: &Call) -> bool {
        call.start <= self.end + FAILOVER_GRACE && call.end >= self.start
    }
}

/// Trident's RSS in one round: idle before, with the connections open, and
/// `--settle-secs` after closing them.
pub struct RoundMemory {
    pub round: usize,
    pub before_kib: u64,
    pub opened: usize,
    pub open_errors: Vec<String>,
    pub with_kib: u64,
    pub after_kib: u64,
}

pub struct Report {
    pub commit: String,
    pub machine: String,
    pub command: String,
    pub settings: String,
    pub started_kib: u64,
    pub idle_kib: u64,
    pub windows: Vec<FaultWindow>,
    pub calls: Vec<Call>,
    pub memory: Vec<RoundMemory>,
    pub connections: usize,
}

impl Report {
    fn failures(&self) -> impl Iterator<Item = &Call> {
        self.calls.iter().filter(|c| c.error.is_some())
    }

    /// Failed calls during `window` (or its failover).
    pub fn failures_in(&self, window: &FaultWindow) -> usize {
        self.failures().filter(|c| window.covers(c)).count()
    }

    /// Failed calls no fault explains: the load's, then the idle connections'.
    pub fn unexpected_failures(&self) -> impl Iterator<Item = String> + '_ {
        let load = self
            .failures()
            .filter(|c| !self.windows.iter().any(|w| w.covers(c)))
            .map(|c| {
                format!(
                    "{} call at {:.2}–{:.2} s: {}",
                    c.protocol.name(),
                    c.start.as_secs_f64(),
                    c.end.as_secs_f64(),
                    c.error.as_deref().unwrap_or_default()
                )
            });
        let idle = self.memory.iter().flat_map(|m| {
            m.open_errors
                .iter()
                .map(move |e| format!("idle connection, round {}: {e}", m.round))
        });
        load.chain(idle)
    }

    pub fn missed_goals(&self) -> Vec<String> {
        let mut missed = Vec::new();
        let unexpected = self.unexpected_failures().count();
        if unexpected > 0 {
            missed.push(format!("{unexpected} unexpected failure(s), goal 0"));
        }
        for m in &self.memory {
            if m.with_kib > GOAL_WITH_CONNECTIONS_KIB {
                missed.push(format!(
                    "round {}: {:.1} MiB with {} connections, goal ≤ {:.0}",
                    m.round,
                    mib(m.with_kib),
                    m.opened,
                    mib(GOAL_WITH_CONNECTIONS_KIB)
                ));
            }
            if m.after_kib > self.idle_kib + GOAL_AFTER_CLOSE_KIB {
                missed.push(format!(
                    "round {}: {:.1} MiB after closing them, goal ≤ idle {:.1} + {:.0}",
                    m.round,
                    mib(m.after_kib),
                    mib(self.idle_kib),
                    mib(GOAL_AFTER_CLOSE_KIB)
                ));
            }
        }
        missed
    }

    pub fn markdown(&self) -> String {
        let mut md = String::new();
        let _ = writeln!(
            md,
            "# Soak: faults under mixed load, and idle connections\n"
        );
        let _ = writeln!(md, "- commit `{}`; {}", self.commit, self.machine);
        let _ = writeln!(md, "- `{}`", self.command);
        let _ = writeln!(md, "- {}", self.settings);
        let _ = writeln!(
            md,
            "- a failed call is expected when it overlaps its round's fault or the {} s after it\n",
            FAILOVER_GRACE.as_secs()
        );

        let _ = writeln!(md, "## Calls per round\n");
        let _ = writeln!(
            md,
            "| round | fault | endpoint | window (s) | calls | failed in window | Trident CPU µs/call |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|---|");
        for w in &self.windows {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {:.1}–{:.1} | {} | {} | {} |",
                w.round,
                w.fault.name(),
                w.endpoint,
                w.start.as_secs_f64(),
                w.end.as_secs_f64(),
                w.calls,
                self.failures_in(w),
                w.cpu_us_per_call
                    .map_or("–".to_owned(), |c| format!("{c:.0}")),
            );
        }
        let unexpected: Vec<String> = self.unexpected_failures().collect();
        let _ = writeln!(
            md,
            "\n{} calls in all (warm-up included), {} failed, **{} unexpectedly** [goal 0].\n",
            self.calls.len(),
            self.failures().count(),
            unexpected.len()
        );
        for failure in unexpected.iter().take(20) {
            let _ = writeln!(md, "- {failure}");
        }

        let _ = writeln!(md, "\n## Trident's RSS per round, MiB\n");
        let _ = writeln!(
            md,
            "Idle (after a warm-up): {:.1} (at start: {:.1}).\n",
            mib(self.idle_kib),
            mib(self.started_kib)
        );
        let _ = writeln!(
            md,
            "| round | before | with {} idle connections [≤ {:.0}] | after closing them [≤ {:.1}] |",
            self.connections,
            mib(GOAL_WITH_CONNECTIONS_KIB),
            mib(self.idle_kib + GOAL_AFTER_CLOSE_KIB)
        );
        let _ = writeln!(md, "|---|---|---|---|");
        for m in &self.memory {
            let _ = writeln!(
                md,
                "| {} | {:.1} | {:.1} ({} open) | {:.1} |",
                m.round,
                mib(m.before_kib),
                mib(m.with_kib),
                m.opened,
                mib(m.after_kib)
            );
        }
        let missed = self.missed_goals();
        let _ = writeln!(md, "\n## Goals\n");
        if missed.is_empty() {
            let _ = writeln!(md, "All met.");
        }
        for goal in missed {
            let _ = writeln!(md, "- missed: {goal}");
        }
        md
    }

    /// One JSON object per run, for a log kept across commits.
    pub fn json_line(&self, unix_time: u64) -> String {
        let rounds: Vec<serde_json::Value> = self
            .windows
            .iter()
            .zip(&self.memory)
            .map(|(w, m)| {
                json!({
                    "round": w.round,
                    "fault": w.fault.name(),
                    "calls": w.calls,
                    "failed_in_window": self.failures_in(w),
                    "cpu_us_per_call": w.cpu_us_per_call,
                    "rss_before_kib": m.before_kib,
                    "connections": m.opened,
                    "rss_with_connections_kib": m.with_kib,
                    "rss_after_close_kib": m.after_kib,
                })
            })
            .collect();
        json!({
            "time": unix_time,
            "commit": self.commit,
            "machine": self.machine,
            "command": self.command,
            "settings": self.settings,
            "idle_rss_kib": self.idle_kib,
            "calls": self.calls.len(),
            "failed": self.failures().count(),
            "unexpected": self.unexpected_failures().count(),
            "rounds": rounds,
        })
        .to_string()
            + "\n"
    }

    /// Writes `soak.md` and appends to `soak-runs.jsonl` in `dir`.
    pub fn write(&self, dir: &Path, unix_time: u64) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("soak.md"), self.markdown())?;
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("soak-runs.jsonl"))?
            .write_all(self.json_line(unix_time).as_bytes())
    }
}
