//! The load tools, run as child processes, and what their reports say:
//! `wrk` (HTTP/1.1, closed loop), `h2load` (gRPC `ModelInfer` over h2c, closed
//! loop), `oha` (HTTP/1.1 at a fixed rate, latencies corrected for
//! coordinated omission), and `strace -c` counting a proxy's system calls.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Lines};
use std::net::SocketAddr;
use std::path::{Path as FsPath, PathBuf};
use std::process::{Child, ChildStderr, Command, Stdio};
use std::time::Duration;

/// What one closed-loop run reports.
#[derive(Debug, Default)]
pub struct Throughput {
    pub requests: u64,
    pub requests_per_sec: f64,
    pub errors: u64,
}

/// What one fixed-rate run reports, latencies in milliseconds.
#[derive(Debug, Default)]
pub struct Latency {
    pub requests_per_sec: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p99_9: f64,
    pub errors: u64,
}

pub fn installed(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success() || !o.stdout.is_empty() || !o.stderr.is_empty())
}

fn run(command: &mut Command) -> String {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("running {command:?}: {e}"));
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{command:?} failed: {text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    text
}

/// The number after `label` on the first line that has it.
fn number_after(text: &str, label: &str) -> Option<f64> {
    let rest = &text[text.find(label)? + label.len()..];
    let digits: String = rest
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    digits.parse().ok()
}

/// A `wrk` script posting the JSON in `body_file`, written beside it.
pub fn wrk_script(body_file: &FsPath) -> PathBuf {
    let script = body_file.with_extension("lua");
    let lua = format!(
        "local f = io.open(\"{}\", \"rb\")\nwrk.method = \"POST\"\nwrk.body = f:read(\"*a\")\nf:close()\n\
         wrk.headers[\"Content-Type\"] = \"application/json\"\n",
        body_file.display()
    );
    std::fs::write(&script, lua).expect("write the wrk script");
    script
}

/// `wrk` running `script` (see [`wrk_script`]) for `duration`.
pub fn wrk(
    addr: SocketAddr,
    path: &str,
    script: &FsPath,
    connections: usize,
    duration: Duration,
) -> Throughput {
    let report = run(Command::new("wrk")
        .args(["-t1", &format!("-c{connections}")])
        .arg(format!("-d{}s", duration.as_secs().max(1)))
        .arg("-s")
        .arg(script)
        .arg(format!("http://{addr}{path}")));
    parse_wrk(&report)
}

fn parse_wrk(report: &str) -> Throughput {
    let socket_errors: f64 = ["connect ", "read ", "write ", "timeout "]
        .iter()
        .filter_map(|label| {
            let line = report.lines().find(|l| l.contains("Socket errors"))?;
            number_after(line, label)
        })
        .sum();
    Throughput {
        requests: report
            .lines()
            .find(|l| l.contains("requests in"))
            .and_then(|l| number_after(l, ""))
            .unwrap_or(0.0) as u64,
        requests_per_sec: number_after(report, "Requests/sec:").unwrap_or(0.0),
        errors: (number_after(report, "Non-2xx or 3xx responses:").unwrap_or(0.0) + socket_errors)
            as u64,
    }
}

/// `h2load` sending the gRPC frame in `body_file` as `ModelInfer` calls.
pub fn h2load(
    addr: SocketAddr,
    body_file: &FsPath,
    connections: usize,
    streams: usize,
    duration: Duration,
) -> Throughput {
    let report = run(Command::new("h2load")
        .args(["-t1", &format!("-c{connections}"), &format!("-m{streams}")])
        .arg(format!("--duration={}", duration.as_secs().max(1)))
        .arg("-d")
        .arg(body_file)
        .args(["-H", "content-type: application/grpc", "-H", "te: trailers"])
        .arg(format!(
            "http://{addr}/inference.GRPCInferenceService/ModelInfer"
        )));
    parse_h2load(&report)
}

fn parse_h2load(report: &str) -> Throughput {
    let requests_line = report
        .lines()
        .find(|l| l.starts_with("requests:"))
        .unwrap_or("");
    let field = |label: &str| {
        requests_line
            .split(',')
            .find(|part| part.trim_end().ends_with(label))
            .and_then(|part| number_after(part, ""))
            .unwrap_or(0.0) as u64
    };
    let status_2xx = report
        .lines()
        .find(|l| l.starts_with("status codes:"))
        .and_then(|l| number_after(l, "status codes:"))
        .unwrap_or(0.0) as u64;
    let done = field("done");
    let finished = report
        .lines()
        .find(|l| l.starts_with("finished in"))
        .unwrap_or("");
    Throughput {
        requests: status_2xx,
        requests_per_sec: number_after(finished, ",").unwrap_or(0.0),
        errors: field("failed")
            + field("errored")
            + field("timeout")
            + done.saturating_sub(status_2xx),
    }
}

/// `oha` posting `body_file` at `rate` per second for `duration`.
pub fn oha(
    addr: SocketAddr,
    path: &str,
    body_file: &FsPath,
    connections: usize,
    rate: u64,
    duration: Duration,
) -> Latency {
    let report = run(Command::new("oha")
        .args([
            "--no-tui",
            "--output-format",
            "json",
            "--latency-correction",
            // Calls in flight at the deadline finish and count, instead of failing.
            "--wait-ongoing-requests-after-deadline",
        ])
        .args(["-c", &connections.to_string(), "-q", &rate.to_string()])
        .arg("-z")
        .arg(format!("{}s", duration.as_secs().max(1)))
        .args(["-m", "POST", "-T", "application/json", "-D"])
        .arg(body_file)
        .arg(format!("http://{addr}{path}")));
    parse_oha(&report)
}

fn parse_oha(report: &str) -> Latency {
    let json: serde_json::Value =
        serde_json::from_str(report).unwrap_or_else(|e| panic!("oha's report: {e}: {report}"));
    let ms = |key: &str| json["latencyPercentiles"][key].as_f64().unwrap_or(f64::NAN) * 1e3;
    let count = |v: &serde_json::Value| {
        v.as_object()
            .map_or(0, |m| m.values().filter_map(|n| n.as_u64()).sum::<u64>())
    };
    let non_2xx = json["statusCodeDistribution"]
        .as_object()
        .map_or(0, |codes| {
            codes
                .iter()
                .filter(|(code, _)| !code.starts_with('2'))
                .filter_map(|(_, n)| n.as_u64())
                .sum::<u64>()
        });
    Latency {
        requests_per_sec: json["summary"]["requestsPerSec"].as_f64().unwrap_or(0.0),
        p50: ms("p50"),
        p90: ms("p90"),
        p99: ms("p99"),
        p99_9: ms("p99.9"),
        errors: count(&json["errorDistribution"]) + non_2xx,
    }
}

/// `strace -c -f` attached to a proxy's processes and all their threads: how
/// many system calls of each kind they make while it runs. Tracing slows the
/// proxy down several times over, so what runs meanwhile is not timed.
pub struct SyscallCount {
    strace: Child,
    /// strace's messages, read to their end before it exits (closing them
    /// early would kill it with SIGPIPE before it writes its summary).
    messages: Lines<BufReader<ChildStderr>>,
    summary: PathBuf,
}

impl SyscallCount {
    /// Attaches to `pids`, writing the summary to `summary` once finished;
    /// returns when every pid is traced.
    pub fn attach(pids: &[u32], summary: PathBuf) -> SyscallCount {
        let mut command = Command::new("strace");
        command.args(["-c", "-f", "-o"]).arg(&summary);
        for pid in pids {
            command.args(["-p", &pid.to_string()]);
        }
        let mut strace = command
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("running {command:?}: {e}"));
        let stderr = strace.stderr.take().expect("strace's stderr is piped");
        let mut messages = BufReader::new(stderr).lines();
        // One "Process N attached" (… "with T threads") per pid, once it is traced.
        let mut attached = 0;
        let mut said = Vec::new();
        while attached < pids.len() {
            match messages.next() {
                Some(Ok(line)) if line.contains(" attached") => attached += 1,
                Some(Ok(line)) => said.push(line),
                _ => panic!(
                    "{command:?} ended before attaching to every process: {}",
                    said.join("; ")
                ),
            }
        }
        SyscallCount {
            strace,
            messages,
            summary,
        }
    }

    /// Detaches (SIGINT, as a user's ^C) and returns the calls made, by name.
    pub fn finish(mut self) -> BTreeMap<String, u64> {
        let _ = Command::new("kill")
            .args(["-INT", &self.strace.id().to_string()])
            .status();
        for _ in self.messages.by_ref() {}
        let _ = self.strace.wait();
        let summary = std::fs::read_to_string(&self.summary)
            .unwrap_or_else(|e| panic!("strace's summary {}: {e}", self.summary.display()));
        parse_strace_summary(&summary)
    }
}

/// The calls column of `strace -c`'s table, by system call, without its total.
fn parse_strace_summary(summary: &str) -> BTreeMap<String, u64> {
    summary
        .lines()
        .filter_map(|line| {
            // % time, seconds, usecs/call, calls, errors (when any), syscall.
            let fields: Vec<&str> = line.split_whitespace().collect();
            let name = *fields.last()?;
            let calls = fields.get(3)?.parse().ok()?;
            (fields[0].parse::<f64>().is_ok() && name != "total").then(|| (name.to_owned(), calls))
        })
        .collect()
}
