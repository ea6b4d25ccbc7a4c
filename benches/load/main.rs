//! The load harness: one machine, one in-process mock Triton as the backend,
//! and four paths to it: `direct`, `trident`, `nginx` and `haproxy`, every proxy
//! with the same number of worker threads. Each path is driven in turn by
//! real load tools: `wrk` (HTTP/1.1 JSON infer, closed loop), `h2load` (gRPC
//! `ModelInfer`, closed loop) and `oha` (HTTP at fixed rates, latencies
//! corrected for coordinated omission).
//!
//! ```text
//! cargo bench --bench load                      # the full run; updates benches/results/
//! cargo bench --bench load -- --smoke           # seconds; CI's gross-regression check
//! cargo bench --bench load -- --paths trident,haproxy --protocols http --secs 5
//! ```
//!
//! Options: `--secs` per run (10), `--warmup` secs discarded first (2),
//! `--repeats` (3), `--threads` per proxy (1), `--connections` for wrk and oha
//! (32), `--grpc-connections` (4) × `--grpc-streams` (8) for h2load, `--rates`
//! (2000,5000,20000), `--paths`, `--protocols` (http,grpc), `--no-memory`,
//! `--out` (benches/results; `target/load-smoke` in smoke mode). The
//! environment's `TRIDENT_BIN` runs another build of Trident instead of this one.
//!
//! Repeats are interleaved (every path once, then again), so a noisy moment
//! on a shared machine spreads over all paths instead of one. Paths whose
//! program is not installed are skipped with a note. Under `cargo test` (no
//! `--bench` argument) it runs the smoke mode against the debug build.

#[path = "../common/grpc.rs"]
mod grpc_call;
#[path = "../common/grpc_client.rs"]
mod grpc_client;
mod peers;
#[path = "../common/process.rs"]
mod process;
mod report;
#[path = "../common/system.rs"]
mod system;
mod tools;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use peers::{Backend, Path, Running};
use report::{ClosedRun, Memory, RateRun, Report};
use trident::mock::{MockConfig, MockTriton};

const MODEL: &str = "bench";
/// A small FP32 tensor: the proxy's own cost dominates, as it should here.
const JSON_BODY: &str = r#"{"inputs":[{"name":"INPUT0","shape":[1,16],"datatype":"FP32","data":[1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16]}]}"#;
/// Open connections for the memory measurement.
const MEMORY_CONNECTIONS: usize = 1000;

struct Options {
    smoke: bool,
    secs: u64,
    warmup: u64,
    repeats: usize,
    threads: usize,
    connections: usize,
    grpc_connections: usize,
    grpc_streams: usize,
    rates: Vec<u64>,
    paths: Vec<Path>,
    protocols: Vec<&'static str>,
    memory: bool,
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
        // `cargo bench` passes `--bench`; `cargo test` runs the target bare.
        let smoke = args.iter().any(|a| a == "--smoke") || !args.iter().any(|a| a == "--bench");
        let paths = list("--paths", "direct,trident,nginx,haproxy")
            .iter()
            .map(|p| Path::parse(p).unwrap_or_else(|| panic!("--paths: unknown path {p}")))
            .collect();
        let rates = if smoke { "" } else { "2000,5000,20000" };
        Options {
            smoke,
            secs: number("--secs", if smoke { 1 } else { 10 }),
            warmup: number("--warmup", if smoke { 1 } else { 2 }),
            repeats: number("--repeats", if smoke { 1 } else { 3 }) as usize,
            threads: number("--threads", 1) as usize,
            connections: number("--connections", 32) as usize,
            grpc_connections: number("--grpc-connections", 4) as usize,
            grpc_streams: number("--grpc-streams", 8) as usize,
            rates: list("--rates", rates)
                .iter()
                .map(|r| r.parse().unwrap_or_else(|_| panic!("--rates: {r}")))
                .collect(),
            paths,
            protocols: list("--protocols", "http,grpc")
                .iter()
                .map(|p| match p.as_str() {
                    "http" => "http",
                    "grpc" => "grpc",
                    other => panic!("--protocols: unknown protocol {other}"),
                })
                .collect(),
            memory: !args.iter().any(|a| a == "--no-memory"),
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

    fn settings(&self, grpc_frame_len: usize) -> String {
        format!(
            "{} worker thread(s) per proxy; wrk -t1 -c{c}, oha -c{c}; h2load -t1 -c{} -m{}; \
             {} s per run after {} s of warm-up, {} repeat(s); a {} B JSON / {} B gRPC FP32[1,16] infer",
            self.threads,
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
    let options = Options::parse();
    let missing: Vec<&str> = ["wrk", "h2load"]
        .into_iter()
        .chain((!options.rates.is_empty()).then_some("oha"))
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
    let backend = Backend {
        http: mock.http_addr,
        grpc: mock.grpc_addr,
    };
    let files = tempfile::tempdir().expect("tempdir");
    let json_body = files.path().join("infer.json");
    let grpc_body = files.path().join("infer.grpc");
    std::fs::write(&json_body, JSON_BODY).expect("write body");
    let frame = bytes::Bytes::from(grpc_frame());
    std::fs::write(&grpc_body, &frame).expect("write body");
    let wrk_script = tools::wrk_script(&json_body);

    // `TRIDENT_BIN` compares another build (say, main's) against the peers.
    let trident =
        std::env::var("TRIDENT_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_trident").to_owned());
    let running: Vec<Running> = paths
        .iter()
        .map(|&p| peers::start(p, backend, options.threads, &trident))
        .collect();
    let grpc_client = grpc_client::h2_client();
    for r in &running {
        runtime
            .block_on(grpc_client::model_infer(
                &grpc_client,
                r.grpc,
                frame.clone(),
            ))
            .unwrap_or_else(|e| panic!("{}: a gRPC ModelInfer call failed: {e}", r.path.name()));
    }
    std::thread::sleep(Duration::from_secs(1));
    let idle_rss: Vec<u64> = running.iter().map(|r| system::rss_kib(&r.pids())).collect();

    let infer_path = format!("/v2/models/{MODEL}/infer");
    let closed_loop = |r: &Running, protocol: &str, duration: Duration| match protocol {
        "http" => tools::wrk(
            r.http,
            &infer_path,
            &wrk_script,
            options.connections,
            duration,
        ),
        _ => tools::h2load(
            r.grpc,
            &grpc_body,
            options.grpc_connections,
            options.grpc_streams,
            duration,
        ),
    };
    let mut report = Report {
        commit: system::commit(),
        machine: system::machine(),
        command: std::iter::once("cargo bench --bench load --".to_owned())
            .chain(std::env::args().skip(1).filter(|a| a != "--bench"))
            .collect::<Vec<_>>()
            .join(" "),
        settings: options.settings(frame.len()),
        closed: Vec::new(),
        rates: Vec::new(),
        memory: Vec::new(),
    };
    let (secs, warmup) = (
        Duration::from_secs(options.secs),
        Duration::from_secs(options.warmup),
    );
    for &protocol in &options.protocols {
        for r in &running {
            if options.warmup > 0 {
                closed_loop(r, protocol, warmup);
            }
        }
        for repeat in 0..options.repeats {
            for r in &running {
                let pids = r.pids();
                let cpu_before = system::cpu_time(&pids);
                let throughput = closed_loop(r, protocol, secs);
                let cpu = system::cpu_time(&pids) - cpu_before;
                let cpu_us_per_request = (!pids.is_empty() && throughput.requests > 0)
                    .then(|| cpu.as_secs_f64() * 1e6 / throughput.requests as f64);
                eprintln!(
                    "load: {protocol} {} #{repeat}: {:.0} req/s, {} errors, {} µs CPU/req",
                    r.path.name(),
                    throughput.requests_per_sec,
                    throughput.errors,
                    cpu_us_per_request.map_or("–".to_owned(), |c| format!("{c:.1}")),
                );
                report.closed.push(ClosedRun {
                    path: r.path,
                    protocol,
                    throughput,
                    cpu_us_per_request,
                });
            }
        }
    }
    for &rate in &options.rates {
        for r in &running {
            tools::oha(
                r.http,
                &infer_path,
                &json_body,
                options.connections,
                rate,
                warmup.max(Duration::from_secs(1)),
            );
        }
        for repeat in 0..options.repeats {
            for r in &running {
                let latency = tools::oha(
                    r.http,
                    &infer_path,
                    &json_body,
                    options.connections,
                    rate,
                    secs,
                );
                eprintln!(
                    "load: {rate}/s {} #{repeat}: p50 {:.2} p99 {:.2} p99.9 {:.2} ms, {} errors",
                    r.path.name(),
                    latency.p50,
                    latency.p99,
                    latency.p99_9,
                    latency.errors
                );
                report.rates.push(RateRun {
                    path: r.path,
                    rate,
                    latency,
                });
            }
        }
    }
    if options.memory {
        for (r, idle_kib) in running.iter().zip(idle_rss) {
            if r.path == Path::Direct {
                continue;
            }
            let connections = open_connections(r.http, MEMORY_CONNECTIONS);
            report.memory.push(Memory {
                path: r.path,
                idle_kib,
                connections: connections.len(),
                with_connections_kib: system::rss_kib(&r.pids()),
            });
        }
    }
    drop(running);

    let markdown = report.markdown();
    println!("{markdown}");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    report
        .write(&options.out, now)
        .unwrap_or_else(|e| panic!("writing to {}: {e}", options.out.display()));
    eprintln!(
        "load: wrote {0}/latest.md and appended to {0}/runs.jsonl",
        options.out.display()
    );
    if options.smoke {
        check_smoke(&report);
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
            "{} over {}: {} requests, {} errors",
            run.path.name(),
            run.protocol,
            run.throughput.requests,
            run.throughput.errors
        );
    }
    if cfg!(debug_assertions) {
        return;
    }
    const FLOOR: f64 = 0.3;
    for protocol in ["http", "grpc"] {
        let Some(ours) = report.median_rps(Path::Trident, protocol) else {
            continue;
        };
        for peer in [Path::Nginx, Path::Haproxy] {
            if let Some(theirs) = report.median_rps(peer, protocol) {
                assert!(
                    ours >= FLOOR * theirs,
                    "{protocol}: trident {ours:.0} req/s is under {FLOOR} × {}'s {theirs:.0}",
                    peer.name()
                );
            }
        }
    }
}
