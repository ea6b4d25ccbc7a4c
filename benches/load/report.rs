//! Results: one JSON line per run, and the markdown tables of medians with
//! their min–max over the repeats.

use std::fmt::Write as _;
use std::io::Write as _;

use serde_json::json;

use crate::peers::Path;
use crate::tools::{Latency, Throughput};

/// A closed-loop run of one path and protocol.
pub struct ClosedRun {
    pub path: Path,
    pub protocol: &'static str,
    pub throughput: Throughput,
    /// CPU time of the proxy's processes per request, in µs; none for `direct`.
    pub cpu_us_per_request: Option<f64>,
}

/// A fixed-rate run of one path.
pub struct RateRun {
    pub path: Path,
    pub rate: u64,
    pub latency: Latency,
}

/// Resident memory of one proxy, in KiB.
pub struct Memory {
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
    pub settings: String,
    pub closed: Vec<ClosedRun>,
    pub rates: Vec<RateRun>,
    pub memory: Vec<Memory>,
}

impl Report {
    /// One JSON object per run, for appending to a log kept across commits.
    pub fn json_lines(&self, unix_time: u64) -> String {
        let common = json!({
            "time": unix_time,
            "commit": self.commit,
            "machine": self.machine,
            "settings": self.settings,
        });
        let with_common = |mut line: serde_json::Value| {
            if let (Some(line), Some(common)) = (line.as_object_mut(), common.as_object()) {
                line.extend(common.clone());
            }
            line.to_string() + "\n"
        };
        let closed = self.closed.iter().map(|run| {
            with_common(json!({
                "kind": "closed_loop",
                "path": run.path.name(),
                "protocol": run.protocol,
                "requests": run.throughput.requests,
                "requests_per_sec": run.throughput.requests_per_sec,
                "errors": run.throughput.errors,
                "cpu_us_per_request": run.cpu_us_per_request,
            }))
        });
        let rates = self.rates.iter().map(|run| {
            with_common(json!({
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
            }))
        });
        let memory = self.memory.iter().map(|m| {
            with_common(json!({
                "kind": "memory",
                "path": m.path.name(),
                "idle_rss_kib": m.idle_kib,
                "open_connections": m.connections,
                "rss_with_connections_kib": m.with_connections_kib,
            }))
        });
        closed.chain(rates).chain(memory).collect()
    }

    /// Median throughput of `path` over `protocol`'s runs.
    pub fn median_rps(&self, path: Path, protocol: &str) -> Option<f64> {
        Spread::of(self.closed_values(path, protocol, |r| Some(r.throughput.requests_per_sec)))
            .map(|s| s.median)
    }

    fn closed_values(
        &self,
        path: Path,
        protocol: &str,
        value: impl Fn(&ClosedRun) -> Option<f64>,
    ) -> Vec<f64> {
        self.closed
            .iter()
            .filter(|r| r.path == path && r.protocol == protocol)
            .filter_map(value)
            .collect()
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
        let _ = writeln!(md, "# Load: Trident against direct, nginx and haproxy\n");
        let _ = writeln!(md, "- Commit: `{}`", self.commit);
        let _ = writeln!(md, "- Machine: {}", self.machine);
        let _ = writeln!(md, "- Command: `{}`", self.command);
        let _ = writeln!(md, "- Settings: {}", self.settings);
        let _ = writeln!(
            md,
            "- Cells are medians over the repeats, with (min–max). CPU is the proxy's processes' \
             user + system time per request, from `/proc`."
        );
        let paths = self.paths();
        for protocol in ["http", "grpc"] {
            let Some(direct) = self.median_rps(Path::Direct, protocol) else {
                continue;
            };
            let title = match protocol {
                "http" => "HTTP/1.1 JSON infer, closed loop (`wrk`)",
                _ => "gRPC ModelInfer over h2c, closed loop (`h2load`)",
            };
            let _ = writeln!(md, "\n## {title}\n");
            let _ = writeln!(
                md,
                "| path | requests/s | × direct | CPU µs / request | errors |"
            );
            let _ = writeln!(md, "|---|---|---|---|---|");
            for &path in &paths {
                let rps =
                    self.closed_values(path, protocol, |r| Some(r.throughput.requests_per_sec));
                let Some(rps) = Spread::of(rps) else { continue };
                let cpu = Spread::of(self.closed_values(path, protocol, |r| r.cpu_us_per_request));
                let errors: u64 = self
                    .closed
                    .iter()
                    .filter(|r| r.path == path && r.protocol == protocol)
                    .map(|r| r.throughput.errors)
                    .sum();
                let _ = writeln!(
                    md,
                    "| {} | {} | {:.2} | {} | {errors} |",
                    path.name(),
                    rps.show(0),
                    rps.median / direct,
                    cpu.map_or("–".to_owned(), |c| c.show(1)),
                );
            }
        }
        let mut rates: Vec<u64> = self.rates.iter().map(|r| r.rate).collect();
        rates.sort_unstable();
        rates.dedup();
        if !rates.is_empty() {
            let _ = writeln!(
                md,
                "\n## Latency at fixed rates, HTTP/1.1 JSON infer (`oha --latency-correction`), ms\n"
            );
            let _ = writeln!(
                md,
                "| rate | path | p50 | p90 | p99 | p99.9 | added p99 | achieved/s | errors |"
            );
            let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|");
            for &rate in &rates {
                let direct_p99 =
                    Spread::of(self.rate_values(Path::Direct, rate, |l| l.p99)).map(|s| s.median);
                for &path in &paths {
                    let spread = |value: fn(&Latency) -> f64| {
                        Spread::of(self.rate_values(path, rate, value))
                    };
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
        }
        if !self.memory.is_empty() {
            let _ = writeln!(
                md,
                "\n## Resident memory (RSS, all of the proxy's processes), MiB\n"
            );
            let _ = writeln!(md, "| path | idle | with open keep-alive connections |");
            let _ = writeln!(md, "|---|---|---|");
            for m in &self.memory {
                let _ = writeln!(
                    md,
                    "| {} | {:.1} | {:.1} ({} connections) |",
                    m.path.name(),
                    m.idle_kib as f64 / 1024.0,
                    m.with_connections_kib as f64 / 1024.0,
                    m.connections
                );
            }
        }
        md.push_str(&self.standing());
        md
    }

    /// Trident's ratios to each peer, from this run's medians.
    fn standing(&self) -> String {
        let mut md = String::new();
        let peers = [Path::Nginx, Path::Haproxy];
        if !self.closed.iter().any(|r| r.path == Path::Trident) {
            return md;
        }
        let _ = writeln!(md, "\n## Trident against each peer (this run's medians)\n");
        let _ = writeln!(md, "| measure | vs nginx | vs haproxy |");
        let _ = writeln!(md, "|---|---|---|");
        for protocol in ["http", "grpc"] {
            let ratio = |peer: Path, value: &dyn Fn(&ClosedRun) -> Option<f64>, invert: bool| {
                let ours = Spread::of(self.closed_values(Path::Trident, protocol, value))?.median;
                let theirs = Spread::of(self.closed_values(peer, protocol, value))?.median;
                Some(if invert { theirs / ours } else { ours / theirs })
            };
            let cells = |value: &dyn Fn(&ClosedRun) -> Option<f64>, invert: bool| {
                peers.map(|peer| {
                    ratio(peer, value, invert).map_or("–".to_owned(), |r| format!("{r:.2}×"))
                })
            };
            let [nginx, haproxy] = cells(&|r| Some(r.throughput.requests_per_sec), false);
            let _ = writeln!(md, "| {protocol} throughput | {nginx} | {haproxy} |");
            let [nginx, haproxy] = cells(&|r| r.cpu_us_per_request, true);
            let _ = writeln!(
                md,
                "| {protocol} CPU efficiency (their µs ÷ ours) | {nginx} | {haproxy} |"
            );
        }
        md
    }

    fn paths(&self) -> Vec<Path> {
        Path::ALL
            .into_iter()
            .filter(|&p| {
                self.closed.iter().any(|r| r.path == p) || self.rates.iter().any(|r| r.path == p)
            })
            .collect()
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
