//! Through the real binary: a stop signal under load ends the process in
//! bounded time, with a bounded error log.

mod common;

use std::io::Read;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::AsyncWriteExt;

/// Grace period 0 and runtime shutdown timeout 1 s: the process must be gone
/// well within this (the rest is start-up noise on a loaded machine).
const EXIT_WITHIN: Duration = Duration::from_secs(10);
/// More than a few lines of error log at shutdown is a flood.
const MAX_STDERR_BYTES: usize = 64 << 10;

/// One round: Trident with slow calls in flight, idle keep-alive clients and
/// new connections arriving, then `signal`. Returns how long the exit took and
/// what it wrote to stderr.
async fn signal_under_load(mock: &MockTriton, signal: &str) -> (Option<Duration>, String) {
    let started = on_new_ports(async || {
        let mut started = Started::spawn(mock);
        let ready = poll_ready(started.admin, || {
            !matches!(started.child.try_wait(), Ok(None))
        })
        .await;
        if ready {
            return Some(started);
        }
        let _ = started.child.kill();
        let _ = started.child.wait();
        let (_, text) = started.stderr.join().unwrap();
        eprintln!("trident did not start: {text:.4000}");
        None
    })
    .await
    .expect("trident did not start");
    stop_under_load(started, signal).await
}

/// A Trident process of this test, on new ports with the mock as its only endpoint.
struct Started {
    child: std::process::Child,
    http: SocketAddr,
    admin: SocketAddr,
    /// Reads its stderr: the size, and the first bytes as text.
    stderr: std::thread::JoinHandle<(usize, String)>,
    /// Holds its config file.
    _dir: tempfile::TempDir,
}

impl Started {
    fn spawn(mock: &MockTriton) -> Started {
        let (http, grpc, admin) = (free_port(), free_port(), free_port());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("trident.toml");
        std::fs::write(
        &path,
        format!(
            "[server]\nhttp_listen = \"{http}\"\ngrpc_listen = \"{grpc}\"\nadmin_listen = \"{admin}\"\n\
             threads = 2\naccess_log = \"off\"\ndrain_delay_secs = 0\nshutdown_timeout_secs = 1\n\
             [[pools]]\nname = \"a\"\nendpoints = [ {} ]\n[[routes]]\nmodel = \"*\"\npool = \"a\"\n",
            endpoint(mock)
        ),
    )
    .unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_trident"))
            .args(["run", "--config"])
            .arg(&path)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn trident");
        let mut stderr_pipe = child.stderr.take().unwrap();
        // Reads at most a bounded amount, then drains, so a flood cannot fill memory.
        let stderr = std::thread::spawn(move || {
            let mut kept = Vec::new();
            let mut chunk = [0u8; 64 << 10];
            let mut total = 0usize;
            while let Ok(n) = stderr_pipe.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                total += n;
                if kept.len() < MAX_STDERR_BYTES * 2 {
                    kept.extend_from_slice(&chunk[..n]);
                }
            }
            (total, String::from_utf8_lossy(&kept).into_owned())
        });
        Started {
            child,
            http,
            admin,
            stderr,
            _dir: dir,
        }
    }
}

/// Slow calls in flight, idle keep-alive clients and new connections arriving at
/// `started`, then `signal` to it: how long it took to exit, and its stderr.
async fn stop_under_load(started: Started, signal: &str) -> (Option<Duration>, String) {
    let Started {
        mut child,
        http,
        stderr,
        ..
    } = started;
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    let client = http1_client();
    for _ in 0..20 {
        let (client, url) = (client.clone(), format!("http://{http}/v2/models/m/infer"));
        load.push(tokio::spawn(async move {
            let request = http::Request::post(url)
                .body(http_body_util::Full::new(bytes::Bytes::from_static(
                    br#"{"inputs":[{"name":"INPUT0","datatype":"FP32","shape":[1],"data":[1.0]}]}"#,
                )))
                .unwrap();
            let _ = client.request(request).await;
        }));
    }
    for _ in 0..20 {
        let stop = stop.clone();
        load.push(tokio::spawn(async move {
            // Idle keep-alive clients, and new connections until the end.
            while !stop.load(Ordering::Relaxed) {
                if let Ok(mut stream) = tokio::net::TcpStream::connect(http).await {
                    let _ = stream
                        .write_all(b"GET /v2/health/live HTTP/1.1\r\nHost: t\r\n\r\n")
                        .await;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sent = Instant::now();
    let killed = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let mut exited = None;
    while sent.elapsed() < EXIT_WITHIN {
        if let Ok(Some(_)) = child.try_wait() {
            exited = Some(sent.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
    if exited.is_none() {
        let _ = child.kill();
    }
    let _ = child.wait();
    for task in load {
        task.abort();
    }
    let (total, text) = stderr.join().unwrap();
    (exited, format!("{total} bytes: {text:.4000}"))
}

/// SIGINT (fast stop) used to hang forever here, logging `Accept() failed`
/// in a tight loop (17 MB in 10 s); SIGTERM (graceful) must stay bounded too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_signals_under_load_exit_in_bounded_time_with_a_bounded_log() {
    let mock = mock("a1", &["m"]).await;
    mock.control().set_latency(Duration::from_secs(5));
    let rounds: usize = std::env::var("TRIDENT_SHUTDOWN_ROUNDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(3);
    for round in 0..rounds {
        for signal in ["-INT", "-TERM"] {
            let (exited, stderr) = signal_under_load(&mock, signal).await;
            let bytes: usize = stderr
                .split(' ')
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(usize::MAX);
            eprintln!("round {round} {signal}: exit after {exited:?}, stderr {bytes} bytes");
            assert!(
                exited.is_some(),
                "round {round} {signal}: still running; stderr {stderr}"
            );
            assert!(
                bytes <= MAX_STDERR_BYTES,
                "round {round} {signal}: stderr {stderr}"
            );
        }
    }
}
