//! The load tools, run as child processes, and what their reports say:
//! `wrk` (HTTP/1.1, closed loop), `h2load` (gRPC `ModelInfer` over h2c, closed
//! loop), `oha` (HTTP/1.1 at a fixed rate, latencies corrected for
//! coordinated omission), and `strace -c` counting a proxy's system calls.
//! Each speaks TLS when its target does (`https://`, the certificate not
//! verified). For TLS handshakes, batches of fresh `h2load` processes whose
//! every client makes one connection and one call (see [`handshakes`]).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Lines};
use std::net::SocketAddr;
use std::path::{Path as FsPath, PathBuf};
use std::process::{Child, ChildStderr, Command, Stdio};
use std::time::{Duration, Instant};

/// Where a load tool sends its requests: an address, over TLS or not.
#[derive(Clone, Copy, Debug)]
pub struct Target {
    pub addr: SocketAddr,
    pub tls: bool,
}

impl Target {
    pub fn url(self, path: &str) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}{path}", self.addr)
    }
}

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
    /// Calls answered with a 2xx status.
    pub requests: u64,
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
    target: Target,
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
        .arg(target.url(path)));
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
    target: Target,
    body_file: &FsPath,
    connections: usize,
    streams: usize,
    rate: Option<u64>,
    duration: Duration,
) -> Throughput {
    // `--rps` paces each client (connection): the rate is shared among them.
    let per_client = rate.map(|r| format!("--rps={}", r.div_ceil(connections.max(1) as u64)));
    let report = run(Command::new("h2load")
        .args(["-t1", &format!("-c{connections}"), &format!("-m{streams}")])
        .args(per_client)
        .arg(format!("--duration={}", duration.as_secs().max(1)))
        .arg("-d")
        .arg(body_file)
        .args(GRPC_HEADERS)
        .arg(target.url(GRPC_INFER)));
    parse_h2load(&report)
}

/// The gRPC method every gRPC run calls, and the headers of its calls.
pub const GRPC_INFER: &str = "/inference.GRPCInferenceService/ModelInfer";
const GRPC_HEADERS: [&str; 4] = ["-H", "content-type: application/grpc", "-H", "te: trailers"];

/// One call, as the load sends it: over HTTP/1.1 (a JSON infer) or h2 (a gRPC
/// `ModelInfer`), with its body in `body`. `h2load` makes every TLS call.
#[derive(Clone, Copy)]
pub struct Call<'a> {
    pub h1: bool,
    pub path: &'a str,
    pub body: Option<&'a FsPath>,
}

impl Call<'_> {
    fn h2load(&self, target: Target) -> Command {
        let mut command = Command::new("h2load");
        command.arg("-t1");
        if self.h1 {
            command.arg("--h1");
        }
        if let Some(body) = self.body {
            command.arg("-d").arg(body);
            if self.h1 {
                command.args(["-H", "content-type: application/json"]);
            } else {
                command.args(GRPC_HEADERS);
            }
        }
        command.arg(target.url(self.path));
        command
    }
}

/// What a TLS client saw of a server's handshake, as `h2load` reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsSession {
    /// "TLSv1.3"
    pub protocol: String,
    /// "TLS_AES_128_GCM_SHA256"
    pub cipher: String,
    /// The key exchange, "X25519 253 bits".
    pub key_exchange: String,
    /// The ALPN protocol chosen, "h2" or "http/1.1".
    pub alpn: String,
}

impl TlsSession {
    pub fn describe(&self) -> String {
        let group = self.key_exchange.split_whitespace().next().unwrap_or("?");
        format!("{} {} {group} {}", self.protocol, self.cipher, self.alpn)
    }
}

/// One `call` over TLS to `target`: the session it had, or why it failed.
pub fn tls_probe(target: Target, call: Call) -> Result<TlsSession, String> {
    let output = call
        .h2load(target)
        .args(["-c1", "-n1"])
        .output()
        .map_err(|e| format!("running h2load: {e}"))?;
    let report = String::from_utf8_lossy(&output.stdout);
    let result = parse_h2load(&report);
    let field = |label: &str| {
        report
            .lines()
            .find_map(|l| l.strip_prefix(label))
            .map_or_else(String::new, |v| v.trim().to_owned())
    };
    let session = TlsSession {
        protocol: field("TLS Protocol:"),
        cipher: field("Cipher:"),
        key_exchange: field("Server Temp Key:"),
        alpn: field("Application protocol:"),
    };
    if result.requests == 1 && result.errors == 0 && !session.protocol.is_empty() {
        Ok(session)
    } else {
        Err(format!(
            "{}{}",
            report.trim(),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// Full TLS handshakes for `duration`, as fast as they go: `loaders` loops,
/// each starting `h2load` again and again with `clients` clients that make one
/// connection and one `call` each. A fresh `h2load` holds no session to
/// resume, so every connection is a full handshake (certificate, signature
/// and key exchange), where `wrk` and `oha` with connections closed, or
/// `h2load` reconnecting, resume their previous session instead. The result
/// counts the calls that succeeded (= handshakes), over the wall time of all
/// batches, and every client whose call failed as an error.
pub fn handshakes(
    target: Target,
    call: Call,
    clients: usize,
    loaders: usize,
    duration: Duration,
) -> Throughput {
    let start = Instant::now();
    let deadline = start + duration;
    let batches: Vec<Throughput> = std::thread::scope(|scope| {
        let loops: Vec<_> = (0..loaders)
            .map(|_| {
                scope.spawn(move || {
                    let mut done = Throughput::default();
                    let n = clients.to_string();
                    while Instant::now() < deadline {
                        let mut command = call.h2load(target);
                        command.args(["-c", &n, "-n", &n]);
                        let output = command
                            .output()
                            .unwrap_or_else(|e| panic!("running {command:?}: {e}"));
                        // Every client whose call did not succeed is an error,
                        // a batch that could not start at all as much as any.
                        let batch = parse_h2load(&String::from_utf8_lossy(&output.stdout));
                        let succeeded = batch.requests.min(clients as u64);
                        done.requests += succeeded;
                        done.errors += clients as u64 - succeeded;
                    }
                    done
                })
            })
            .collect();
        loops
            .into_iter()
            .map(|l| l.join().expect("a handshake loop panicked"))
            .collect()
    });
    let elapsed = start.elapsed().as_secs_f64();
    let requests: u64 = batches.iter().map(|b| b.requests).sum();
    Throughput {
        requests,
        requests_per_sec: requests as f64 / elapsed,
        errors: batches.iter().map(|b| b.errors).sum(),
    }
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
    target: Target,
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
        .args(target.tls.then_some("--insecure"))
        .arg(target.url(path)));
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
        requests: count(&json["statusCodeDistribution"]) - non_2xx,
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
        let said: Vec<String> = self
            .messages
            .by_ref()
            .map_while(Result::ok)
            .filter(|l| !l.contains(" detached"))
            .collect();
        let _ = self.strace.wait();
        let summary = std::fs::read_to_string(&self.summary)
            .unwrap_or_else(|e| panic!("strace's summary {}: {e}", self.summary.display()));
        let calls = parse_strace_summary(&summary);
        if calls.is_empty() {
            eprintln!("load: strace counted no calls: {said:?}; its summary: {summary:?}");
        }
        calls
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
