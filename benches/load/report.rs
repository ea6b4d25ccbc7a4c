//! Results: one JSON line per run, and the markdown tables of medians with
//! their min–max over the repeats, per setting and protocol, then what follows
//! from them: Trident against each path, what an access log costs, how CPU per
//! request changes with threads, and which system calls each proxy makes; in
//! the `tls` setting, full handshakes per second too, and Trident's ratios to
//! nginx and haproxy over TLS.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;

use serde_json::json;

use crate::peers::{Path, Setting};
use crate::tools::{Latency, Throughput, TlsSession};

pub const PROTOCOLS: [&str; 2] = ["http", "grpc"];

/// A closed-loop run of one path and protocol.
pub struct ClosedRun {
    pub setting: Setting,
    pub path: Path,
    pub protocol: &'static str,
    pub throughput: Throughput,
    /// CPU time of the proxy's processes per request, in µs; none for `direct`.
    pub cpu_us_per_request: Option<f64>,
    /// TCP connections the backend accepted during the run, on the protocol's
    /// listener (for `direct`: the load tool's own).
    pub upstream_connects: u64,
}

impl ClosedRun {
    fn upstream_connects_per_10k(&self) -> Option<f64> {
        (self.throughput.requests > 0)
            .then(|| self.upstream_connects as f64 * 1e4 / self.throughput.requests as f64)
    }
}

/// The system calls one proxy made over a run of its own (see
/// [`crate::tools::SyscallCount`]), by name, and the requests of that run.
pub struct SyscallRun {
    pub setting: Setting,
    pub path: Path,
    pub protocol: &'static str,
    pub requests: u64,
    pub calls: BTreeMap<String, u64>,
}

impl SyscallRun {
    fn per_request(&self, calls: u64) -> Option<f64> {
        (self.requests > 0).then(|| calls as f64 / self.requests as f64)
    }

    pub fn total(&self) -> u64 {
        self.calls.values().sum()
    }
}

/// A fixed-rate run of one path.
pub struct RateRun {
    pub setting: Setting,
    pub path: Path,
    pub rate: u64,
    pub latency: Latency,
}

/// A run of full TLS handshakes (a new connection per call) against one path.
pub struct HandshakeRun {
    pub setting: Setting,
    pub path: Path,
    pub protocol: &'static str,
    /// Calls that succeeded, each on a connection of its own.
    pub throughput: Throughput,
    /// CPU time of the proxy's processes per handshake (and its call), in µs.
    pub cpu_us_per_handshake: Option<f64>,
}

/// The TLS session a client had with one path's listener for `protocol`.
pub struct TlsSeen {
    pub setting: Setting,
    pub path: Path,
    pub protocol: &'static str,
    pub session: TlsSession,
}

/// Resident memory of one proxy, in KiB.
pub struct Memory {
    pub setting: Setting,
    pub path: Path,
    pub idle_kib: u64,
    pub connections: usize,
    pub with_connections_kib: u64,
}

/// Everything one invocation measured, and how.
pub struct Report {
    pub commit: String,
    pub machine: String,
    pub command: String,
    /// The load tools' parameters, the same in every setting.
    pub load: String,
    /// The settings run, in order.
    pub settings: Vec<Setting>,
    pub closed: Vec<ClosedRun>,
    pub syscalls: Vec<SyscallRun>,
    pub rates: Vec<RateRun>,
    pub memory: Vec<Memory>,
    pub handshakes: Vec<HandshakeRun>,
    pub tls_sessions: Vec<TlsSeen>,
    /// Paths left out of a setting, with why.
    pub notes: Vec<String>,
}

impl Report {
    /// One JSON object per run, for appending to a log kept across commits.
    pub fn json_lines(&self, unix_time: u64) -> String {
        let common = json!({
            "time": unix_time,
            "commit": self.commit,
            "machine": self.machine,
            // Under the key earlier lines used for it.
            "settings": self.load,
        });
        let with_common = |setting: Setting, mut line: serde_json::Value| {
            if let (Some(line), Some(common)) = (line.as_object_mut(), common.as_object()) {
                line.extend(common.clone());
                line.insert("setting".to_owned(), setting.name().into());
            }
            line.to_string() + "\n"
        };
        let closed = self.closed.iter().map(|run| {
            with_common(
                run.setting,
                json!({
                    "kind": "closed_loop",
                    "path": run.path.name(),
                    "protocol": run.protocol,
                    "requests": run.throughput.requests,
                    "requests_per_sec": run.throughput.requests_per_sec,
                    "errors": run.throughput.errors,
                    "cpu_us_per_request": run.cpu_us_per_request,
                    "upstream_connects": run.upstream_connects,
                }),
            )
        });
        let syscalls = self.syscalls.iter().map(|run| {
            with_common(
                run.setting,
                json!({
                    "kind": "syscalls",
                    "path": run.path.name(),
                    "protocol": run.protocol,
                    "requests": run.requests,
                    "calls": run.calls,
                }),
            )
        });
        let rates = self.rates.iter().map(|run| {
            with_common(
                run.setting,
                json!({
                    "kind": "fixed_rate",
                    "path": run.path.name(),
                    "protocol": "http",
                    "rate": run.rate,
                    "requests_per_sec": run.latency.requests_per_sec,
                    "p50_ms": run.latency.p50,
                    "p90_ms": run.latency.p90,
                    "p99_ms": run.latency.p99,
                    "p99_9_ms": run.latency.p99_9,
                    "errors": run.latency.errors,
                }),
            )
        });
        let memory = self.memory.iter().map(|m| {
            with_common(
                m.setting,
                json!({
                    "kind": "memory",
                    "path": m.path.name(),
                    "idle_rss_kib": m.idle_kib,
                    "open_connections": m.connections,
                    "rss_with_connections_kib": m.with_connections_kib,
                }),
            )
        });
        let handshakes = self.handshakes.iter().map(|run| {
            with_common(
                run.setting,
                json!({
                    "kind": "tls_handshakes",
                    "path": run.path.name(),
                    "protocol": run.protocol,
                    "handshakes": run.throughput.requests,
                    "handshakes_per_sec": run.throughput.requests_per_sec,
                    "errors": run.throughput.errors,
                    "cpu_us_per_handshake": run.cpu_us_per_handshake,
                    "tls": self.tls_session(run.setting, run.path, run.protocol)
                        .map(TlsSession::describe),
                }),
            )
        });
        closed
            .chain(syscalls)
            .chain(rates)
            .chain(memory)
            .chain(handshakes)
            .collect()
    }

    fn tls_session(&self, setting: Setting, path: Path, protocol: &str) -> Option<&TlsSession> {
        self.tls_sessions
            .iter()
            .find(|t| t.setting == setting && t.path == path && t.protocol == protocol)
            .map(|t| &t.session)
    }

    fn handshake_spread(
        &self,
        setting: Setting,
        path: Path,
        protocol: &str,
        value: impl Fn(&HandshakeRun) -> Option<f64>,
    ) -> Option<Spread> {
        Spread::of(
            self.handshakes
                .iter()
                .filter(|r| r.setting == setting && r.path == path && r.protocol == protocol)
                .filter_map(value)
                .collect(),
        )
    }

    /// Median throughput of `path` over `protocol`'s runs in `setting`.
    pub fn median_rps(&self, setting: Setting, path: Path, protocol: &str) -> Option<f64> {
        self.closed_spread(setting, path, protocol, |r| {
            Some(r.throughput.requests_per_sec)
        })
        .map(|s| s.median)
    }

    fn median_cpu(&self, setting: Setting, path: Path, protocol: &str) -> Option<f64> {
        self.closed_spread(setting, path, protocol, |r| r.cpu_us_per_request)
            .map(|s| s.median)
    }

    fn closed_runs<'a>(
        &'a self,
        setting: Setting,
        path: Path,
        protocol: &'a str,
    ) -> impl Iterator<Item = &'a ClosedRun> {
        self.closed
            .iter()
            .filter(move |r| r.setting == setting && r.path == path && r.protocol == protocol)
    }

    fn closed_spread(
        &self,
        setting: Setting,
        path: Path,
        protocol: &str,
        value: impl Fn(&ClosedRun) -> Option<f64>,
    ) -> Option<Spread> {
        Spread::of(
            self.closed_runs(setting, path, protocol)
                .filter_map(value)
                .collect(),
        )
    }

    fn syscall_run(&self, setting: Setting, path: Path, protocol: &str) -> Option<&SyscallRun> {
        self.syscalls
            .iter()
            .find(|r| r.setting == setting && r.path == path && r.protocol == protocol)
    }

    fn rate_values(&self, path: Path, rate: u64, value: impl Fn(&Latency) -> f64) -> Vec<f64> {
        self.rates
            .iter()
            .filter(|r| r.path == path && r.rate == rate)
            .map(|r| value(&r.latency))
            .collect()
    }

    pub fn markdown(&self) -> String {
        let mut md = String::new();
        let _ = writeln!(
            md,
            "# Load: Trident against direct, stock Pingora, nginx and haproxy\n"
        );
        let _ = writeln!(md, "- Commit: `{}`", self.commit);
        let _ = writeln!(md, "- Machine: {}", self.machine);
        let _ = writeln!(md, "- Command: `{}`", self.command);
        let _ = writeln!(md, "- Load: {}", self.load);
        let settings: Vec<String> = self
            .settings
            .iter()
            .map(|s| format!("`{}`: {}", s.name(), s.describe()))
            .collect();
        let _ = writeln!(md, "- Settings: {}", settings.join("; "));
        for note in &self.notes {
            let _ = writeln!(md, "- {note}");
        }
        let _ = writeln!(
            md,
            "- Cells are medians over the repeats, with (min–max). CPU is the proxy's processes' \
             user + system time per request, from their CPU clocks. Upstream connects are the TCP \
             connections the backend accepted during a run, per 10,000 requests (for `direct`, \
             the load tool's own).{}",
            if self.syscalls.is_empty() {
                ""
            } else {
                " System calls are counted by `strace -c -f` on the proxy's processes over a \
                 separate, untimed run."
            }
        );
        for &setting in &self.settings {
            let _ = writeln!(md, "\n## `{}`: {}", setting.name(), setting.describe());
            for protocol in PROTOCOLS {
                md.push_str(&self.closed_table(setting, protocol));
            }
            for protocol in PROTOCOLS {
                md.push_str(&self.handshake_table(setting, protocol));
            }
        }
        md.push_str(&self.tls_standing());
        md.push_str(&self.standing());
        md.push_str(&self.access_log_cost());
        md.push_str(&self.tracing_cost());
        md.push_str(&self.thread_scaling());
        md.push_str(&self.syscall_tables());
        md.push_str(&self.latency_table());
        md.push_str(&self.memory_table());
        md
    }

    fn closed_table(&self, setting: Setting, protocol: &str) -> String {
        let mut md = String::new();
        let paths: Vec<Path> = Path::ALL
            .into_iter()
            .filter(|&p| self.closed_runs(setting, p, protocol).next().is_some())
            .collect();
        if paths.is_empty() {
            return md;
        }
        let _ = writeln!(md, "\n### {}\n", title(protocol, setting.tls()));
        let _ = writeln!(
            md,
            "| path | requests/s | × direct | CPU µs / request | upstream connects / 10k requests | \
             system calls / request | errors |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|---|");
        let direct = self.median_rps(setting, Path::Direct, protocol);
        for path in paths {
            let spread = |value: &dyn Fn(&ClosedRun) -> Option<f64>, decimals: usize| {
                self.closed_spread(setting, path, protocol, value)
                    .map_or("–".to_owned(), |s| s.show(decimals))
            };
            let rps = self
                .closed_spread(setting, path, protocol, |r| {
                    Some(r.throughput.requests_per_sec)
                })
                .map(|s| s.median);
            let syscalls = self
                .syscall_run(setting, path, protocol)
                .and_then(|r| r.per_request(r.total()));
            let errors: u64 = self
                .closed_runs(setting, path, protocol)
                .map(|r| r.throughput.errors)
                .sum();
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {errors} |",
                path.name(),
                spread(&|r| Some(r.throughput.requests_per_sec), 0),
                or_dash(ratio(rps, direct), 2, ""),
                spread(&|r| r.cpu_us_per_request, 1),
                spread(&ClosedRun::upstream_connects_per_10k, 1),
                or_dash(syscalls, 2, ""),
            );
        }
        md
    }

    /// Full TLS handshakes of `setting` over `protocol`, per path.
    fn handshake_table(&self, setting: Setting, protocol: &str) -> String {
        let mut md = String::new();
        let paths: Vec<Path> = Path::ALL
            .into_iter()
            .filter(|&p| {
                self.handshake_spread(setting, p, protocol, |_| Some(0.0))
                    .is_some()
            })
            .collect();
        if paths.is_empty() {
            return md;
        }
        let _ = writeln!(
            md,
            "\n### Full TLS handshakes: a new connection per {} (`h2load`, fresh clients)\n",
            match protocol {
                "http" => "HTTP/1.1 JSON infer",
                _ => "gRPC ModelInfer (h2)",
            }
        );
        let _ = writeln!(
            md,
            "| path | handshakes/s | CPU µs / handshake | session (version, cipher, group, ALPN) | errors |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|");
        for path in paths {
            let spread = |value: &dyn Fn(&HandshakeRun) -> Option<f64>, decimals: usize| {
                self.handshake_spread(setting, path, protocol, value)
                    .map_or("–".to_owned(), |s| s.show(decimals))
            };
            let errors: u64 = self
                .handshakes
                .iter()
                .filter(|r| r.setting == setting && r.path == path && r.protocol == protocol)
                .map(|r| r.throughput.errors)
                .sum();
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {errors} |",
                path.name(),
                spread(&|r| Some(r.throughput.requests_per_sec), 0),
                spread(&|r| r.cpu_us_per_handshake, 1),
                self.tls_session(setting, path, protocol)
                    .map_or("–".to_owned(), TlsSession::describe),
            );
        }
        md
    }

    /// Over TLS, Trident ÷ nginx and ÷ haproxy: kept-alive throughput and CPU
    /// per request, handshakes per second and CPU per handshake.
    fn tls_standing(&self) -> String {
        let mut md = String::new();
        let Some(setting) = self.settings.iter().copied().find(|s| s.tls()) else {
            return md;
        };
        let peers = [Path::Nginx, Path::Haproxy];
        let _ = writeln!(
            md,
            "\n## TLS: Trident ÷ nginx and ÷ haproxy (`{}`, this run's medians)\n",
            setting.name()
        );
        let _ = writeln!(
            md,
            "Each ratio is Trident's figure ÷ the peer's: for requests and handshakes per second \
             above 1 means Trident does more; for CPU µs above 1 means Trident spends more.\n"
        );
        let _ = writeln!(
            md,
            "| measure | protocol | trident | nginx | haproxy | trident ÷ nginx | trident ÷ haproxy |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|---|");
        type Median<'a> = Box<dyn Fn(Path, &str) -> Option<f64> + 'a>;
        let measures: [(&str, usize, Median); 4] = [
            (
                "kept-alive requests/s",
                0,
                Box::new(move |p, protocol| self.median_rps(setting, p, protocol)),
            ),
            (
                "kept-alive CPU µs / request",
                1,
                Box::new(move |p, protocol| self.median_cpu(setting, p, protocol)),
            ),
            (
                "handshakes/s",
                0,
                Box::new(move |p, protocol| {
                    self.handshake_spread(setting, p, protocol, |r| {
                        Some(r.throughput.requests_per_sec)
                    })
                    .map(|s| s.median)
                }),
            ),
            (
                "CPU µs / handshake",
                1,
                Box::new(move |p, protocol| {
                    self.handshake_spread(setting, p, protocol, |r| r.cpu_us_per_handshake)
                        .map(|s| s.median)
                }),
            ),
        ];
        for (measure, decimals, median) in &measures {
            for protocol in PROTOCOLS {
                let ours = median(Path::Trident, protocol);
                let theirs = peers.map(|p| median(p, protocol));
                if ours.is_none() && theirs.iter().all(Option::is_none) {
                    continue;
                }
                let _ = writeln!(
                    md,
                    "| {measure} | {} | {} | {} | {} | {} | {} |",
                    match protocol {
                        "http" => "HTTP/1.1",
                        _ => "gRPC (h2)",
                    },
                    or_dash(ours, *decimals, ""),
                    or_dash(theirs[0], *decimals, ""),
                    or_dash(theirs[1], *decimals, ""),
                    or_dash(ratio(ours, theirs[0]), 2, "×"),
                    or_dash(ratio(ours, theirs[1]), 2, "×"),
                );
            }
        }
        md
    }

    /// Trident's ratios to every other proxy, setting by setting.
    fn standing(&self) -> String {
        let mut md = String::new();
        let peers = [Path::Pingora, Path::Nginx, Path::Haproxy];
        if !self.closed.iter().any(|r| r.path == Path::Trident) {
            return md;
        }
        let _ = writeln!(md, "\n## Trident against each proxy (this run's medians)\n");
        let _ = writeln!(
            md,
            "Throughput: ours ÷ theirs. CPU: their µs per request ÷ ours (above 1: Trident is cheaper).\n"
        );
        let _ = writeln!(
            md,
            "| setting | protocol | throughput vs pingora | vs nginx | vs haproxy | \
             CPU vs pingora | vs nginx | vs haproxy |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|---|---|");
        for &setting in &self.settings {
            for protocol in PROTOCOLS {
                if self.median_rps(setting, Path::Trident, protocol).is_none() {
                    continue;
                }
                let throughput = peers.map(|peer| {
                    let ours = self.median_rps(setting, Path::Trident, protocol);
                    or_dash(
                        ratio(ours, self.median_rps(setting, peer, protocol)),
                        2,
                        "×",
                    )
                });
                let cpu = peers.map(|peer| {
                    let ours = self.median_cpu(setting, Path::Trident, protocol);
                    or_dash(
                        ratio(self.median_cpu(setting, peer, protocol), ours),
                        2,
                        "×",
                    )
                });
                let _ = writeln!(
                    md,
                    "| `{}` | {} | {} | {} |",
                    setting.name(),
                    short_title(protocol),
                    throughput.join(" | "),
                    cpu.join(" | "),
                );
            }
        }
        md
    }

    /// CPU per request of `setting` against `base`, per proxy and protocol,
    /// as `combine(setting's median, base's median)`; empty unless both ran.
    fn derived_table(
        &self,
        heading: &str,
        (setting, base): (Setting, Setting),
        combine: impl Fn(f64, f64) -> String,
    ) -> String {
        let mut md = String::new();
        if !(self.settings.contains(&setting) && self.settings.contains(&base)) {
            return md;
        }
        let _ = writeln!(md, "\n## {heading}\n");
        protocols_table_head(&mut md, "path");
        for path in Path::ALL {
            let cells = PROTOCOLS.map(|protocol| {
                match (
                    self.median_cpu(setting, path, protocol),
                    self.median_cpu(base, path, protocol),
                ) {
                    (Some(ours), Some(base)) => combine(ours, base),
                    _ => "–".to_owned(),
                }
            });
            if cells.iter().any(|c| c != "–") {
                let _ = writeln!(md, "| {} | {} |", path.name(), cells.join(" | "));
            }
        }
        md
    }

    fn access_log_cost(&self) -> String {
        self.derived_table(
            "Access-log cost: CPU µs / request, `logged` − `lean` (pingora logs in neither: its \
             difference is the noise)",
            (Setting::Logged, Setting::Lean),
            |logged, lean| format!("{:+.1}", logged - lean),
        )
    }

    /// What tracing costs Trident: each tracing setting's CPU per request less
    /// `lean`'s in the same repeat (with `--interleave-settings` the two ran
    /// seconds apart, so the machine's drift mostly cancels), as the median of
    /// those differences and its 95% confidence interval.
    fn tracing_cost(&self) -> String {
        let mut md = String::new();
        let settings = [Setting::TracingUnsampled, Setting::Tracing];
        if !self.settings.contains(&Setting::Lean) {
            return md;
        }
        let rows: Vec<(Setting, [String; 2])> = settings
            .into_iter()
            .filter(|s| self.settings.contains(s))
            .map(|setting| {
                let cells = PROTOCOLS.map(|protocol| {
                    let cpu = |s| {
                        self.closed_runs(s, Path::Trident, protocol)
                            .filter_map(|r| r.cpu_us_per_request)
                            .collect::<Vec<f64>>()
                    };
                    let differences = cpu(setting)
                        .iter()
                        .zip(cpu(Setting::Lean))
                        .map(|(traced, lean)| traced - lean)
                        .collect();
                    PairedDifference::of(differences).map_or("–".to_owned(), |d| d.show())
                });
                (setting, cells)
            })
            .collect();
        if rows.is_empty() {
            return md;
        }
        let _ = writeln!(
            md,
            "\n## Tracing cost: Trident's CPU µs / request, less `lean`'s in the same repeat\n\n\
             Median of the differences, [95% confidence interval] (from their order \
             statistics: no assumption on how they are spread), repeats.\n"
        );
        protocols_table_head(&mut md, "setting");
        for (setting, cells) in rows {
            let _ = writeln!(md, "| `{}` | {} |", setting.name(), cells.join(" | "));
        }
        md
    }

    fn thread_scaling(&self) -> String {
        self.derived_table(
            "Thread scaling: CPU µs / request, `lean-cpus` ÷ `lean` (1.00: no cost to more threads)",
            (Setting::LeanCpus, Setting::Lean),
            |cpus, one| format!("{:.2}", cpus / one),
        )
    }

    /// Per setting and protocol, each proxy's calls per request: all, the most
    /// frequent ones over the table, and the rest.
    fn syscall_tables(&self) -> String {
        const SHOWN: usize = 8;
        let mut md = String::new();
        if self.syscalls.is_empty() {
            return md;
        }
        let _ = writeln!(md, "\n## System calls per request (`strace -c -f`)");
        for &setting in &self.settings {
            for protocol in PROTOCOLS {
                let runs: Vec<&SyscallRun> = Path::ALL
                    .into_iter()
                    .filter_map(|p| self.syscall_run(setting, p, protocol))
                    .collect();
                if runs.is_empty() {
                    continue;
                }
                let mut by_call: BTreeMap<&str, f64> = BTreeMap::new();
                for run in &runs {
                    for (call, &n) in &run.calls {
                        *by_call.entry(call).or_default() += run.per_request(n).unwrap_or(0.0);
                    }
                }
                let mut calls: Vec<(&str, f64)> = by_call.into_iter().collect();
                calls.sort_by(|a, b| b.1.total_cmp(&a.1));
                let shown: Vec<&str> = calls.iter().take(SHOWN).map(|&(c, _)| c).collect();
                let _ = writeln!(
                    md,
                    "\n### `{}`, {}\n",
                    setting.name(),
                    short_title(protocol)
                );
                let _ = writeln!(md, "| path | all | {} | other |", shown.join(" | "));
                let _ = writeln!(md, "|---|---|{}---|", "---|".repeat(shown.len()));
                for run in runs {
                    let per_request = |calls: u64| or_dash(run.per_request(calls), 2, "");
                    let shown_calls: Vec<u64> = shown
                        .iter()
                        .map(|&c| run.calls.get(c).copied().unwrap_or(0))
                        .collect();
                    let other = run.total() - shown_calls.iter().sum::<u64>();
                    let cells: Vec<String> = shown_calls.into_iter().map(per_request).collect();
                    let _ = writeln!(
                        md,
                        "| {} | {} | {} | {} |",
                        run.path.name(),
                        per_request(run.total()),
                        cells.join(" | "),
                        per_request(other),
                    );
                }
            }
        }
        md
    }

    fn latency_table(&self) -> String {
        let mut md = String::new();
        let Some(setting) = self.rates.first().map(|r| r.setting) else {
            return md;
        };
        let mut rates: Vec<u64> = self.rates.iter().map(|r| r.rate).collect();
        rates.sort_unstable();
        rates.dedup();
        let _ = writeln!(
            md,
            "\n## Latency at fixed rates, `{}`, HTTP/1.1 JSON infer (`oha --latency-correction`), ms\n",
            setting.name()
        );
        let _ = writeln!(
            md,
            "| rate | path | p50 | p90 | p99 | p99.9 | added p99 | achieved/s | errors |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|");
        for &rate in &rates {
            let direct_p99 =
                Spread::of(self.rate_values(Path::Direct, rate, |l| l.p99)).map(|s| s.median);
            for path in Path::ALL {
                let spread =
                    |value: fn(&Latency) -> f64| Spread::of(self.rate_values(path, rate, value));
                let Some(p99) = spread(|l| l.p99) else {
                    continue;
                };
                let show = |s: Option<Spread>| s.map_or("–".to_owned(), |s| s.show(2));
                let added = match (path, direct_p99) {
                    (Path::Direct, _) | (_, None) => "–".to_owned(),
                    (_, Some(direct)) => format!("{:.2}", p99.median - direct),
                };
                let errors: f64 = self
                    .rate_values(path, rate, |l| l.errors as f64)
                    .iter()
                    .sum();
                let _ = writeln!(
                    md,
                    "| {rate} | {} | {} | {} | {} | {} | {added} | {} | {errors} |",
                    path.name(),
                    show(spread(|l| l.p50)),
                    show(spread(|l| l.p90)),
                    p99.show(2),
                    show(spread(|l| l.p99_9)),
                    spread(|l| l.requests_per_sec).map_or("–".to_owned(), |s| s.show(0)),
                );
            }
        }
        md
    }

    fn memory_table(&self) -> String {
        let mut md = String::new();
        if self.memory.is_empty() {
            return md;
        }
        let _ = writeln!(
            md,
            "\n## Resident memory (RSS, all of the proxy's processes), MiB\n"
        );
        let _ = writeln!(
            md,
            "| setting | path | idle | with open keep-alive connections |"
        );
        let _ = writeln!(md, "|---|---|---|---|");
        for m in &self.memory {
            let _ = writeln!(
                md,
                "| `{}` | {} | {:.1} | {:.1} ({} connections) |",
                m.setting.name(),
                m.path.name(),
                m.idle_kib as f64 / 1024.0,
                m.with_connections_kib as f64 / 1024.0,
                m.connections
            );
        }
        md
    }

    pub fn write(&self, dir: &std::path::Path, unix_time: u64) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("runs.jsonl"))?
            .write_all(self.json_lines(unix_time).as_bytes())?;
        std::fs::write(dir.join("latest.md"), self.markdown())
    }
}

fn title(protocol: &str, tls: bool) -> &'static str {
    match (protocol, tls) {
        ("http", false) => "HTTP/1.1 JSON infer, closed loop (`wrk`)",
        ("http", true) => {
            "HTTP/1.1 JSON infer over TLS, kept-alive connections, closed loop (`wrk`)"
        }
        (_, false) => "gRPC ModelInfer over h2c, closed loop (`h2load`)",
        (_, true) => {
            "gRPC ModelInfer over TLS (h2), kept-alive connections, closed loop (`h2load`)"
        }
    }
}

fn short_title(protocol: &str) -> &'static str {
    match protocol {
        "http" => "HTTP/1.1",
        _ => "gRPC",
    }
}

/// The head of a table with a column per protocol after `first`.
fn protocols_table_head(md: &mut String, first: &str) {
    let _ = writeln!(
        md,
        "| {first} | {} | {} |",
        short_title("http"),
        short_title("grpc")
    );
    let _ = writeln!(md, "|---|---|---|");
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    Some(a? / b?)
}

/// `value` to `decimals` places followed by `unit`, or a dash when it is missing.
fn or_dash(value: Option<f64>, decimals: usize, unit: &str) -> String {
    value.map_or("–".to_owned(), |v| format!("{v:.decimals$}{unit}"))
}

/// Paired differences (one per repeat): their median, and the 95% confidence
/// interval of the median when there are enough of them (6 or more).
struct PairedDifference {
    median: f64,
    interval: Option<(f64, f64)>,
    count: usize,
}

impl PairedDifference {
    fn of(mut differences: Vec<f64>) -> Option<PairedDifference> {
        differences.retain(|v| v.is_finite());
        differences.sort_by(f64::total_cmp);
        let median = Spread::of(differences.clone())?.median;
        let count = differences.len();
        let interval =
            median_interval_rank(count).map(|k| (differences[k - 1], differences[count - k]));
        Some(PairedDifference {
            median,
            interval,
            count,
        })
    }

    fn show(&self) -> String {
        let interval = self.interval.map_or(String::new(), |(low, high)| {
            format!(" [{low:+.1}, {high:+.1}]")
        });
        format!("{:+.1}{interval}, {}", self.median, self.count)
    }
}

/// For `n` values sorted, the rank `k` such that the `k`-th smallest and
/// `k`-th largest bound a 95% (at least) confidence interval of the median:
/// the largest `k` with P(Binomial(n, ½) < k) ≤ 2.5%. `None` below 6 values.
fn median_interval_rank(n: usize) -> Option<usize> {
    let mut below = 0.0; // P(Binomial(n, ½) < k), k counting up from 1
    let mut term = 0.5f64.powi(n as i32); // P(Binomial(n, ½) = k − 1)
    let mut rank = None;
    for k in 1..=n / 2 {
        below += term;
        if below > 0.025 {
            break;
        }
        rank = Some(k);
        term *= (n - (k - 1)) as f64 / k as f64;
    }
    rank
}

/// Median and range of a few repeats.
#[derive(Clone, Copy)]
struct Spread {
    median: f64,
    min: f64,
    max: f64,
}

impl Spread {
    fn of(mut values: Vec<f64>) -> Option<Spread> {
        values.retain(|v| v.is_finite());
        values.sort_by(f64::total_cmp);
        let n = values.len();
        let median = match n {
            0 => return None,
            _ if n % 2 == 1 => values[n / 2],
            _ => (values[n / 2 - 1] + values[n / 2]) / 2.0,
        };
        Some(Spread {
            median,
            min: values[0],
            max: values[n - 1],
        })
    }

    fn show(self, decimals: usize) -> String {
        if self.min == self.max {
            return format!("{:.*}", decimals, self.median);
        }
        format!(
            "{:.*} ({:.*}–{:.*})",
            decimals, self.median, decimals, self.min, decimals, self.max
        )
    }
}
