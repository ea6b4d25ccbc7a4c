//! The load harness: one machine, one in-process mock Triton as the backend,
//! and five paths to it: `direct`, `pingora` (stock Pingora as a bare
//! pass-through: the floor under Trident), `trident`, `nginx` and `haproxy`.
//! Every proxy runs in each of a list of settings in turn (see
//! [`peers::Setting`]): `lean` (1 worker, access logs off), `lean-cpus`
//! (workers = CPUs, logs off), `logged` (1 worker, logs on) and `defaults`
//! (workers = CPUs, logs on, Trident's config leaving both to its defaults);
//! on request, `tls` (as `lean`, every proxy's listeners speaking TLS 1.3 with
//! one ECDSA P-256 certificate made at run time, [`tls`]), which adds full
//! handshakes per second to the kept-alive runs (see [`tools::handshakes`]); and
//! `tracing` (as `lean`, Trident tracing every request to an OTLP sink, [`trace_sink`]).
//! Each path is driven by real load tools: `wrk` (HTTP/1.1 JSON infer, closed
//! loop), `h2load` (gRPC `ModelInfer`, closed loop) and `oha` (HTTP at fixed
//! rates, latencies corrected for coordinated omission); `strace -c -f`
//! counts each proxy's system calls per request over a short run of its own.
//!
//! ```text
//! cargo bench --bench load                      # the full run; updates benches/results/
//! cargo bench --bench load -- --smoke           # seconds; CI's gross-regression check
//! cargo bench --bench load -- --settings lean --paths pingora,trident --protocols http --secs 5
//! cargo bench --bench load -- --settings tls --paths trident,nginx,haproxy --secs 5 --out /tmp/tls-load
//! cargo bench --bench load -- --settings lean,tracing --paths trident --rates "" --out /tmp/tracing-load
//! ```
//!
//! Options: `--settings` (lean,lean-cpus,logged,defaults,tls,tracing,tracing-unsampled; `lean` in smoke
//! mode; `tls` and `tracing` only when listed), `--secs` per run (10), `--warmup` secs
//! discarded first (2),
//! `--repeats` (3), `--connections` for wrk and oha (32), `--grpc-connections`
//! (4) × `--grpc-streams` (8) for h2load, `--rates` (2000,5000), run in one
//! setting, `--rate-setting` (`defaults`, or the last setting listed without
//! it), `--paths` (direct,pingora,trident,nginx,haproxy), `--protocols`
//! (http,grpc), `--no-syscalls` (no strace runs; smoke mode has none),
//! `--no-memory`, `--handshake-clients` (32) per `h2load` batch and
//! `--handshake-loaders` (2) batches at once in the `tls` setting,
//! `--interleave-settings` (closed loops only: every setting's proxies run at
//! once and are measured in turn within each repeat, so that settings compare
//! without the machine's drift between them; plaintext settings), `--pace`
//! req/s (the closed-loop runs held to that rate: settings compared at one
//! load rather than each at its saturation), `--out`
//! (benches/results; `target/load-smoke` in smoke mode). In `tls`, `direct`
//! is left out (the backend is plaintext), and so is memory (the harness's
//! idle connections are plaintext). The environment's `TRIDENT_BIN` runs another build of Trident
//! instead of this one.
//!
//! Within a setting, repeats are interleaved (every path once, then again), so
//! a noisy moment on a shared machine spreads over all paths instead of one
//! (across settings too with `--interleave-settings`).
//! Paths whose program is not installed are skipped with a note. Under
//! `cargo test` (no `--bench` argument) it runs the smoke mode against the
//! debug build. The `pingora` path is this binary itself, started again with
//! an environment variable that makes it serve (see [`pingora`]).

#[path = "../common/grpc.rs"]
mod grpc_call;
#[path = "../common/grpc_client.rs"]
mod grpc_client;
mod peers;
mod pingora;
#[path = "../common/process.rs"]
mod process;
mod report;
#[path = "../common/system.rs"]
mod system;
mod tls;
mod tools;
mod trace_sink;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use peers::{Backend, Path, Running, Setting};
use report::{ClosedRun, HandshakeRun, Memory, RateRun, Report, SyscallRun, TlsSeen, PROTOCOLS};
use tools::{Call, SyscallCount, Target, Throughput};
use trident::mock::{MockConfig, MockTriton};

const MODEL: &str = "bench";
/// A small FP32 tensor: the proxy's own cost dominates, as it should here.
const JSON_BODY: &str = r#"{"inputs":[{"name":"INPUT0","shape":[1,16],"datatype":"FP32","data":[1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16]}]}"#;
/// Open connections for the memory measurement.
const MEMORY_CONNECTIONS: usize = 1000;
/// The run under `strace`, per proxy, setting and protocol: long enough for
/// thousands of requests even at the few thousand per second a traced proxy
/// manages, short since its throughput says nothing.
const SYSCALL_RUN: Duration = Duration::from_secs(3);

struct Options {
    smoke: bool,
    settings: Vec<Setting>,
    secs: u64,
    warmup: u64,
    repeats: usize,
    connections: usize,
    grpc_connections: usize,
    grpc_streams: usize,
    rates: Vec<u64>,
    rate_setting: Setting,
    paths: Vec<Path>,
    protocols: Vec<&'static str>,
    syscalls: bool,
    memory: bool,
    handshake_clients: usize,
    handshake_loaders: usize,
    /// Closed loops only, every setting's proxies running at once and measured in
    /// turn within each repeat: settings compared without the machine's drift between them.
    interleave_settings: bool,
    /// Requests per second the closed-loop runs are held to (oha for HTTP, h2load
    /// `--rps` for gRPC) instead of as many as the proxy answers: settings compared
    /// at one load. Saturated, a setting that costs more can leave the load tool
    /// and the backend idle more often, and on a VM waking an idle CPU costs the
    /// waker microseconds, which a saturated comparison charges to the setting.
    pace: Option<u64>,
    out: PathBuf,
}

impl Options {
    fn parse() -> Options {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let value = |name: &str| {
            args.iter()
                .position(|a| a == name)
                .and_then(|i| args.get(i + 1).cloned())
        };
        let number = |name: &str, default: u64| {
            value(name).map_or(default, |v| {
                v.parse()
                    .unwrap_or_else(|_| panic!("{name}: not a number: {v}"))
            })
        };
        let list = |name: &str, default: &str| -> Vec<String> {
            value(name)
                .unwrap_or_else(|| default.to_owned())
                .split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        };
        let setting =
            |name: &str| Setting::parse(name).unwrap_or_else(|| panic!("unknown setting {name}"));
        let flag = |name: &str| args.iter().any(|a| a == name);
        // `cargo bench` passes `--bench`; `cargo test` runs the target bare.
        let smoke = flag("--smoke") || !flag("--bench");
        let settings: Vec<Setting> = list(
            "--settings",
            if smoke {
                "lean"
            } else {
                "lean,lean-cpus,logged,defaults"
            },
        )
        .iter()
        .map(|s| setting(s))
        .collect();
        let rate_setting = match value("--rate-setting") {
            Some(name) => setting(&name),
            None if settings.contains(&Setting::Defaults) => Setting::Defaults,
            None => *settings.last().expect("--settings: none given"),
        };
        assert!(
            settings.contains(&rate_setting),
            "--rate-setting {} is not among --settings",
            rate_setting.name()
        );
        let paths = list("--paths", "direct,pingora,trident,nginx,haproxy")
            .iter()
            .map(|p| Path::parse(p).unwrap_or_else(|| panic!("--paths: unknown path {p}")))
            .collect();
        let rates = if smoke { "" } else { "2000,5000" };
        Options {
            smoke,
            settings,
            secs: number("--secs", if smoke { 1 } else { 10 }),
            warmup: number("--warmup", if smoke { 1 } else { 2 }),
            repeats: number("--repeats", if smoke { 1 } else { 3 }) as usize,
            connections: number("--connections", 32) as usize,
            grpc_connections: number("--grpc-connections", 4) as usize,
            grpc_streams: number("--grpc-streams", 8) as usize,
            rates: list("--rates", rates)
                .iter()
                .map(|r| r.parse().unwrap_or_else(|_| panic!("--rates: {r}")))
                .collect(),
            rate_setting,
            paths,
            protocols: list("--protocols", "http,grpc")
                .iter()
                .map(|p| {
                    PROTOCOLS
                        .into_iter()
                        .find(|&known| known == p)
                        .unwrap_or_else(|| panic!("--protocols: unknown protocol {p}"))
                })
                .collect(),
            syscalls: !smoke && !flag("--no-syscalls"),
            memory: !flag("--no-memory"),
            handshake_clients: number("--handshake-clients", 32) as usize,
            handshake_loaders: number("--handshake-loaders", 2) as usize,
            interleave_settings: flag("--interleave-settings"),
            pace: value("--pace").map(|r| {
                r.parse()
                    .unwrap_or_else(|_| panic!("--pace: not a number: {r}"))
            }),
            out: value("--out").map_or_else(
                || {
                    PathBuf::from(if smoke {
                        "target/load-smoke"
                    } else {
                        "benches/results"
                    })
                },
                PathBuf::from,
            ),
        }
    }

    /// The load, the same in every setting.
    fn load(&self, grpc_frame_len: usize) -> String {
        let handshakes = if self.settings.iter().any(|s| s.tls()) {
            format!(
                "; TLS handshakes: {} loop(s) of fresh `h2load -t1 -c{c} -n{c}` (one connection \
                 and one call per client)",
                self.handshake_loaders,
                c = self.handshake_clients,
            )
        } else {
            String::new()
        };
        let paced = self.pace.map_or_else(String::new, |rate| {
            format!(
                "; closed-loop runs paced at {rate} req/s (HTTP by oha instead of wrk, gRPC by \
                 h2load --rps)"
            )
        });
        format!(
            "wrk -t1 -c{c}, oha -c{c}; h2load -t1 -c{} -m{}{handshakes}{paced}; {} s per run \
             after {} s of warm-up, {} repeat(s); a {} B JSON / {} B gRPC FP32[1,16] infer",
            self.grpc_connections,
            self.grpc_streams,
            self.secs,
            self.warmup,
            self.repeats,
            JSON_BODY.len(),
            grpc_frame_len,
            c = self.connections,
        )
    }
}

/// One `ModelInfer` call as a length-prefixed gRPC message.
fn grpc_frame() -> Vec<u8> {
    let values = (1..=16)
        .flat_map(|v: u8| f32::from(v).to_le_bytes())
        .collect();
    grpc_call::fp32_infer_frame(MODEL, "", vec![1, 16], values)
}

fn main() {
    pingora::serve_if_asked();
    let options = Options::parse();
    let missing: Vec<&str> = ["wrk", "h2load"]
        .into_iter()
        .chain((!options.rates.is_empty()).then_some("oha"))
        .chain(options.syscalls.then_some("strace"))
        .chain(
            options
                .settings
                .iter()
                .any(|s| s.tls())
                .then_some("openssl"),
        )
        .filter(|tool| !tools::installed(tool))
        .collect();
    assert!(
        missing.is_empty(),
        "the load harness needs {missing:?}: `scripts/setup.sh --bench` installs them"
    );
    let paths: Vec<Path> = options
        .paths
        .iter()
        .copied()
        .filter(|p| match p.program() {
            Some(program) if !tools::installed(program) => {
                eprintln!("load: skipping {}: `{program}` is not installed", p.name());
                false
            }
            _ => true,
        })
        .collect();

    let bench = Bench::start(&options);
    let mut report = Report {
        commit: system::commit(),
        machine: system::machine(),
        command: std::iter::once("cargo bench --bench load --".to_owned())
            .chain(std::env::args().skip(1).filter(|a| a != "--bench"))
            .collect::<Vec<_>>()
            .join(" "),
        load: options.load(bench.frame.len()),
        settings: options.settings.clone(),
        closed: Vec::new(),
        syscalls: Vec::new(),
        rates: Vec::new(),
        memory: Vec::new(),
        handshakes: Vec::new(),
        tls_sessions: Vec::new(),
        notes: Vec::new(),
    };
    if options.interleave_settings {
        bench.measure_interleaved(&paths, &mut report);
    } else {
        for &setting in &options.settings {
            bench.measure(setting, &paths, &mut report);
        }
    }

    system::publish(
        &report.markdown(),
        &options.out,
        "load: wrote latest.md and appended to runs.jsonl",
        |out, now| report.write(out, now),
    );
    if options.smoke {
        check_smoke(&report);
    }
}

/// The backend and what the load tools send, the same for every setting.
struct Bench<'a> {
    options: &'a Options,
    // Dropped before the runtime it runs on.
    mock: MockTriton,
    runtime: tokio::runtime::Runtime,
    frame: Bytes,
    infer_path: String,
    json_body: PathBuf,
    grpc_body: PathBuf,
    wrk_script: PathBuf,
    /// The Trident binary to run.
    trident: String,
    /// What every proxy serves in the `tls` setting, when it is run.
    certificate: Option<tls::Certificate>,
    /// Where Trident exports spans in the `tracing` setting, when it is run.
    trace_sink: Option<std::net::SocketAddr>,
    /// The request bodies, the wrk script and strace's summaries.
    files: tempfile::TempDir,
}

impl<'a> Bench<'a> {
    fn start(options: &'a Options) -> Bench<'a> {
        // The backend gets the runtime's two threads to itself while load runs:
        // the harness's own thread only waits for the load tools.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("backend runtime");
        let mock = runtime
            .block_on(MockTriton::start(MockConfig::new("backend", [MODEL])))
            .expect("mock backend");
        let files = tempfile::tempdir().expect("tempdir");
        let json_body = files.path().join("infer.json");
        let grpc_body = files.path().join("infer.grpc");
        std::fs::write(&json_body, JSON_BODY).expect("write body");
        let frame = Bytes::from(grpc_frame());
        std::fs::write(&grpc_body, &frame).expect("write body");
        let trace_sink = options
            .settings
            .iter()
            .any(|s| s.traced())
            .then(trace_sink::start);
        Bench {
            options,
            mock,
            runtime,
            frame,
            infer_path: format!("/v2/models/{MODEL}/infer"),
            wrk_script: tools::wrk_script(&json_body),
            json_body,
            grpc_body,
            // `TRIDENT_BIN` compares another build (say, main's) against the peers.
            trident: std::env::var("TRIDENT_BIN")
                .unwrap_or_else(|_| env!("CARGO_BIN_EXE_trident").to_owned()),
            certificate: options
                .settings
                .iter()
                .any(|s| s.tls())
                .then(|| tls::Certificate::generate(files.path())),
            trace_sink,
            files,
        }
    }

    /// Every path started in `setting`, measured, and stopped again.
    fn measure(&self, setting: Setting, paths: &[Path], report: &mut Report) {
        if setting.tls() {
            let left_out: Vec<String> = paths
                .iter()
                .filter_map(|p| Some(format!("{} ({})", p.name(), p.no_tls()?)))
                .collect();
            let note = format!(
                "`{}` leaves out {}memory (the harness's idle connections are plaintext)",
                setting.name(),
                left_out
                    .iter()
                    .map(|p| p.clone() + ", ")
                    .collect::<String>()
            );
            eprintln!("load: {note}");
            report.notes.push(note);
        }
        let paths: Vec<Path> = paths
            .iter()
            .copied()
            .filter(|p| !setting.tls() || p.no_tls().is_none())
            .collect();
        let running = self.start_paths(setting, &paths);
        if setting.tls() {
            for r in &running {
                for protocol in PROTOCOLS {
                    let (target, call) = self.tls_call(r, protocol);
                    let session = tools::tls_probe(target, call).unwrap_or_else(|e| {
                        panic!("{}: a {protocol} call over TLS failed: {e}", r.path.name())
                    });
                    eprintln!(
                        "load: {} {protocol} over TLS: {}",
                        r.path.name(),
                        session.describe()
                    );
                    report.tls_sessions.push(TlsSeen {
                        setting,
                        path: r.path,
                        protocol,
                        session,
                    });
                }
            }
        } else {
            self.check_grpc(&running);
        }
        std::thread::sleep(Duration::from_secs(1));
        let idle_rss: Vec<u64> = running.iter().map(|r| system::rss_kib(&r.pids())).collect();

        for &protocol in &self.options.protocols {
            let runs: Vec<(Setting, &Running)> = running.iter().map(|r| (setting, r)).collect();
            self.closed_loops(protocol, &runs, report);
        }
        if setting.tls() {
            for &protocol in &self.options.protocols {
                self.handshake_runs(setting, protocol, &running, report);
            }
        }
        if self.options.syscalls {
            for &protocol in &self.options.protocols {
                for r in running.iter().filter(|r| r.path != Path::Direct) {
                    let run = self.count_syscalls(setting, protocol, r);
                    // An empty summary (strace failed to trace: seen once on a
                    // busy machine) is no figure: the table shows a dash instead.
                    if run.total() > 0 {
                        report.syscalls.push(run);
                    }
                }
            }
        }
        if setting == self.options.rate_setting {
            for &rate in &self.options.rates {
                self.fixed_rate(setting, rate, &running, report);
            }
        }
        if self.options.memory && !setting.tls() {
            for (r, idle_kib) in running.iter().zip(idle_rss) {
                if r.path == Path::Direct {
                    continue;
                }
                let connections = open_connections(r.http, MEMORY_CONNECTIONS);
                report.memory.push(Memory {
                    setting,
                    path: r.path,
                    idle_kib,
                    connections: connections.len(),
                    with_connections_kib: system::rss_kib(&r.pids()),
                });
            }
        }
    }

    fn closed_loop(&self, r: &Running, protocol: &str, duration: Duration) -> Throughput {
        let options = self.options;
        match (protocol, options.pace) {
            ("http", None) => tools::wrk(
                r.http_target(),
                &self.infer_path,
                &self.wrk_script,
                options.connections,
                duration,
            ),
            ("http", Some(rate)) => {
                let paced = self.oha(r, rate, duration);
                Throughput {
                    requests: paced.requests,
                    requests_per_sec: paced.requests_per_sec,
                    errors: paced.errors,
                }
            }
            (_, pace) => tools::h2load(
                r.grpc_target(),
                &self.grpc_body,
                options.grpc_connections,
                options.grpc_streams,
                pace,
                duration,
            ),
        }
    }

    /// `oha` sending the JSON infer to `r` at `rate` for `duration`.
    fn oha(&self, r: &Running, rate: u64, duration: Duration) -> tools::Latency {
        tools::oha(
            r.http_target(),
            &self.infer_path,
            &self.json_body,
            self.options.connections,
            rate,
            duration,
        )
    }

    /// TCP connections the backend has accepted so far on `protocol`'s listener.
    fn backend_connects(&self, protocol: &str) -> u64 {
        let (http, grpc) = self.mock.connections_accepted();
        (if protocol == "http" { http } else { grpc }) as u64
    }

    /// Every path of every setting (plaintext ones) started at once; closed loops only,
    /// interleaved across settings and paths.
    fn measure_interleaved(&self, paths: &[Path], report: &mut Report) {
        let settings = &self.options.settings;
        assert!(
            settings.iter().all(|s| !s.tls()),
            "--interleave-settings: TLS settings are measured on their own"
        );
        let running: Vec<(Setting, Running)> = settings
            .iter()
            .flat_map(|&setting| {
                self.start_paths(setting, paths)
                    .into_iter()
                    .map(move |r| (setting, r))
            })
            .collect();
        for (_, r) in &running {
            self.check_grpc(std::slice::from_ref(r));
        }
        std::thread::sleep(Duration::from_secs(1));
        let note = "settings interleaved: every setting's proxies ran at once, closed loops \
                    measured in turn within each repeat (no syscall, rate or memory runs)";
        eprintln!("load: {note}");
        report.notes.push(note.to_owned());
        let runs: Vec<(Setting, &Running)> = running.iter().map(|(s, r)| (*s, r)).collect();
        for &protocol in &self.options.protocols {
            self.closed_loops(protocol, &runs, report);
        }
    }

    /// `setting`'s proxies on `paths`, started.
    fn start_paths(&self, setting: Setting, paths: &[Path]) -> Vec<Running> {
        let backend = Backend {
            http: self.mock.http_addr,
            grpc: self.mock.grpc_addr,
        };
        paths
            .iter()
            .map(|&p| {
                peers::start(
                    p,
                    backend,
                    setting,
                    &self.trident,
                    self.certificate.as_ref(),
                    self.trace_sink,
                )
            })
            .collect()
    }

    /// One gRPC `ModelInfer` through each of `running`: each proxy works before it is measured.
    fn check_grpc(&self, running: &[Running]) {
        let grpc_client = grpc_client::h2_client();
        for r in running {
            self.runtime
                .block_on(grpc_client::model_infer(
                    &grpc_client,
                    r.grpc,
                    self.frame.clone(),
                ))
                .unwrap_or_else(|e| {
                    panic!("{}: a gRPC ModelInfer call failed: {e}", r.path.name())
                });
        }
    }

    /// A warm-up of every path, then the timed repeats, interleaved.
    fn closed_loops(
        &self,
        protocol: &'static str,
        runs: &[(Setting, &Running)],
        report: &mut Report,
    ) {
        let options = self.options;
        if options.warmup > 0 {
            for (_, r) in runs {
                self.closed_loop(r, protocol, Duration::from_secs(options.warmup));
            }
        }
        for repeat in 0..options.repeats {
            for &(setting, r) in runs {
                let pids = r.pids();
                let cpu_before = system::cpu_time(&pids);
                let connects_before = self.backend_connects(protocol);
                let throughput = self.closed_loop(r, protocol, Duration::from_secs(options.secs));
                let upstream_connects = self.backend_connects(protocol) - connects_before;
                let cpu = system::cpu_time(&pids) - cpu_before;
                let cpu_us_per_request = (!pids.is_empty() && throughput.requests > 0)
                    .then(|| cpu.as_secs_f64() * 1e6 / throughput.requests as f64);
                eprintln!(
                    "load: {} {protocol} {} #{repeat}: {:.0} req/s, {} errors, {} µs CPU/req, \
                     {upstream_connects} upstream connects",
                    setting.name(),
                    r.path.name(),
                    throughput.requests_per_sec,
                    throughput.errors,
                    cpu_us_per_request.map_or("–".to_owned(), |c| format!("{c:.1}")),
                );
                report.closed.push(ClosedRun {
                    setting,
                    path: r.path,
                    protocol,
                    throughput,
                    cpu_us_per_request,
                    upstream_connects,
                });
            }
        }
    }

    /// The call a TLS probe or handshake run makes over `protocol`: the same
    /// JSON infer (HTTP/1.1) or gRPC `ModelInfer` (h2) as the closed loops.
    fn tls_call<'b>(&'b self, r: &Running, protocol: &str) -> (Target, Call<'b>) {
        match protocol {
            "http" => (
                r.http_target(),
                Call {
                    h1: true,
                    path: &self.infer_path,
                    body: Some(&self.json_body),
                },
            ),
            _ => (
                r.grpc_target(),
                Call {
                    h1: false,
                    path: tools::GRPC_INFER,
                    body: Some(&self.grpc_body),
                },
            ),
        }
    }

    /// Full TLS handshakes against every path: a warm-up, then the timed
    /// repeats, interleaved.
    fn handshake_runs(
        &self,
        setting: Setting,
        protocol: &'static str,
        running: &[Running],
        report: &mut Report,
    ) {
        let options = self.options;
        let run = |r: &Running, duration: Duration| {
            let (target, call) = self.tls_call(r, protocol);
            tools::handshakes(
                target,
                call,
                options.handshake_clients,
                options.handshake_loaders,
                duration,
            )
        };
        if options.warmup > 0 {
            for r in running {
                run(r, Duration::from_secs(options.warmup));
            }
        }
        for repeat in 0..options.repeats {
            for r in running {
                let pids = r.pids();
                let cpu_before = system::cpu_time(&pids);
                let throughput = run(r, Duration::from_secs(options.secs));
                let cpu = system::cpu_time(&pids) - cpu_before;
                let cpu_us_per_handshake = (throughput.requests > 0)
                    .then(|| cpu.as_secs_f64() * 1e6 / throughput.requests as f64);
                eprintln!(
                    "load: {} {protocol} handshakes {} #{repeat}: {:.0}/s, {} errors, {} µs CPU \
                     per handshake",
                    setting.name(),
                    r.path.name(),
                    throughput.requests_per_sec,
                    throughput.errors,
                    cpu_us_per_handshake.map_or("–".to_owned(), |c| format!("{c:.1}")),
                );
                report.handshakes.push(HandshakeRun {
                    setting,
                    path: r.path,
                    protocol,
                    throughput,
                    cpu_us_per_handshake,
                });
            }
        }
    }

    /// A closed-loop run of `r` under `strace -c -f`.
    fn count_syscalls(&self, setting: Setting, protocol: &'static str, r: &Running) -> SyscallRun {
        let summary = self.files.path().join(format!(
            "strace-{}-{}-{protocol}.txt",
            setting.name(),
            r.path.name()
        ));
        let count = SyscallCount::attach(&r.pids(), summary);
        let throughput = self.closed_loop(r, protocol, SYSCALL_RUN);
        let calls = count.finish();
        let run = SyscallRun {
            setting,
            path: r.path,
            protocol,
            requests: throughput.requests,
            calls,
        };
        eprintln!(
            "load: {} {protocol} {} under strace: {} requests, {} system calls",
            setting.name(),
            r.path.name(),
            run.requests,
            run.total(),
        );
        run
    }

    /// A warm-up of every path at `rate`, then the timed repeats, interleaved.
    fn fixed_rate(&self, setting: Setting, rate: u64, running: &[Running], report: &mut Report) {
        let options = self.options;
        let oha = |r: &Running, duration: Duration| self.oha(r, rate, duration);
        for r in running {
            oha(r, Duration::from_secs(options.warmup.max(1)));
        }
        for repeat in 0..options.repeats {
            for r in running {
                let latency = oha(r, Duration::from_secs(options.secs));
                eprintln!(
                    "load: {} {rate}/s {} #{repeat}: p50 {:.2} p99 {:.2} p99.9 {:.2} ms, {} errors",
                    setting.name(),
                    r.path.name(),
                    latency.p50,
                    latency.p99,
                    latency.p99_9,
                    latency.errors
                );
                report.rates.push(RateRun {
                    setting,
                    path: r.path,
                    rate,
                    latency,
                });
            }
        }
    }
}

/// `count` keep-alive connections, each having completed one readiness call
/// through the proxy, so each holds whatever per-connection state it keeps.
fn open_connections(addr: SocketAddr, count: usize) -> Vec<TcpStream> {
    let request = b"GET /v2/health/ready HTTP/1.1\r\nhost: bench\r\n\r\n";
    let connections: Vec<TcpStream> = (0..count)
        .filter_map(|_| {
            let mut stream = TcpStream::connect(addr).ok()?;
            stream.write_all(request).ok()?;
            Some(stream)
        })
        .collect();
    for mut stream in &connections {
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        // Any answer will do: it means the proxy took the connection on fully.
        let _ = stream.read(&mut [0u8; 1024]);
    }
    std::thread::sleep(Duration::from_millis(500));
    connections
}

/// CI's check: every path answered without errors, and Trident is not grossly
/// slower than the peers. The floor is far below the goal (≥ 1.15× haproxy)
/// so that a noisy machine cannot fail it; a debug build only has to answer.
fn check_smoke(report: &Report) {
    for run in &report.closed {
        assert!(
            run.throughput.requests > 0 && run.throughput.errors == 0,
            "{} over {} in {}: {} requests, {} errors",
            run.path.name(),
            run.protocol,
            run.setting.name(),
            run.throughput.requests,
            run.throughput.errors
        );
    }
    if cfg!(debug_assertions) {
        return;
    }
    const FLOOR: f64 = 0.3;
    for &setting in &report.settings {
        for protocol in PROTOCOLS {
            let Some(ours) = report.median_rps(setting, Path::Trident, protocol) else {
                continue;
            };
            for peer in [Path::Nginx, Path::Haproxy] {
                if let Some(theirs) = report.median_rps(setting, peer, protocol) {
                    assert!(
                        ours >= FLOOR * theirs,
                        "{} {protocol}: trident {ours:.0} req/s is under {FLOOR} × {}'s {theirs:.0}",
                        setting.name(),
                        peer.name()
                    );
                }
            }
        }
    }
}
