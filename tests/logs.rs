//! Logs through the real binary: the error log's level and format (`[log]`),
//! the start-up lines, and the access log's fields, outputs (a file reopened
//! on SIGUSR1), sampling and per-route switch.

mod common;

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use serde_json::{json, Value};
use tonic::Code;

fn infer_json() -> String {
    json!({ "inputs": [{ "name": "INPUT0", "shape": [1, 1], "datatype": "FP32", "data": [1.0] }] })
        .to_string()
}

/// One pool `p` over `a`, every model routed to it; `server` keys land in `[server]`.
fn one_pool(server: &str, a: &MockTriton) -> String {
    format!(
        "{server}\n[[pools]]\nname = \"p\"\nendpoints = [ {} ]\n[[routes]]\nmodel = \"*\"\npool = \"p\"\n",
        endpoint(a)
    )
}

async fn infer(trident: &Trident, model: &str, headers: &[(&str, &str)]) -> Response {
    post(
        &http1_client(),
        &trident.http_url(&format!("/v2/models/{model}/infer")),
        headers,
        infer_json(),
    )
    .await
}

/// Opens a connection to `addr`, sends HTTP/2's connection preface followed by
/// bytes that are no frame, and waits for Trident to close it.
async fn broken_h2_handshake(addr: std::net::SocketAddr) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\nnot a settings frame")
        .await
        .unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_level_says_the_version_and_listeners_and_nothing_per_request() {
    let a = mock("a1", &["m"]).await;
    let trident = Trident::start(&one_pool("", &a)).await;
    let version = format!("trident {} starting", env!("CARGO_PKG_VERSION"));
    trident.error_log_line(&version).await;
    for (name, addr) in [
        ("http", trident.http),
        ("grpc", trident.grpc),
        ("admin", trident.admin),
    ] {
        let line = trident
            .error_log_line(&format!("listening on {name} {addr}"))
            .await;
        assert!(
            line.contains("INFO") && line.contains("(plain text)"),
            "{line}"
        );
    }
    let before = trident.stderr.lock().unwrap().len();
    broken_h2_handshake(trident.grpc).await;
    for _ in 0..5 {
        assert_eq!(infer(&trident, "m", &[]).await.0, 200);
    }
    assert_eq!(infer(&trident, "unknown", &[]).await.0, 400);
    trident.access_log_line("/v2/models/unknown/infer").await;
    let after = trident.stderr.lock().unwrap()[before..].to_vec();
    assert!(
        after.is_empty(),
        "logged per request or connection: {after:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_level_comes_from_the_log_table() {
    let a = mock("a1", &["m"]).await;
    let trident = Trident::start(&one_pool(
        "[log]\nlevel = \"warn,trident::connection=debug\"",
        &a,
    ))
    .await;
    broken_h2_handshake(trident.grpc).await;
    trident.error_log_line("h2 client connection ended").await;
    let lines = trident.stderr.lock().unwrap().clone();
    assert!(
        !lines.iter().any(|l| l.contains("listening on")),
        "info lines are below the level: {lines:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_json_error_log_writes_one_object_per_line() {
    let a = mock("a1", &["m"]).await;
    let trident = Trident::start(&one_pool("[log]\nformat = \"json\"", &a)).await;
    let listening = format!("listening on http {}", trident.http);
    trident.error_log_line(&listening).await;
    // A warning from a signal, once the process runs.
    trident.signal("USR2");
    trident.error_log_line("SIGUSR2 received and ignored").await;
    for line in trident.stderr.lock().unwrap().iter() {
        let object: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        let keys: Vec<&str> = object
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(keys, ["level", "message", "target", "ts"], "{line}");
        let ts = object["ts"].as_str().unwrap();
        assert!(
            ts.len() == 24 && ts.ends_with('Z'),
            "RFC 3339 with ms: {ts}"
        );
        if object["message"].as_str().unwrap().contains(&listening) {
            assert_eq!(object["level"], "INFO");
            assert_eq!(object["target"], "trident::server");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_lines_carry_bytes_user_agent_tries_and_numeric_status() {
    let a = mock("a1", &["m"]).await;
    let trident = Trident::start(&one_pool("", &a)).await;
    let (status, _, body) = infer(
        &trident,
        "m",
        &[
            ("user-agent", "logs-test/1.0"),
            ("x-request-id", "req-bytes"),
        ],
    )
    .await;
    assert_eq!(status, 200);
    let line = trident.access_log_line("req-bytes").await;
    assert_eq!(line["status"], 200);
    assert_eq!(line["grpc_status"], Value::Null);
    assert_eq!(line["user_agent"], "logs-test/1.0");
    assert_eq!(line["request_bytes"], infer_json().len());
    assert_eq!(line["response_bytes"], body.len());
    assert_eq!(line["tries"], 1);
    let upstream_us = line["upstream_us"].as_u64().expect("upstream_us");
    assert!(
        upstream_us <= line["duration_us"].as_u64().unwrap(),
        "{line}"
    );
    assert!(line.as_object().unwrap().contains_key("trace_id"));
    assert_eq!(line["trace_id"], Value::Null);
    assert_eq!(line["error"], Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_lines_carry_the_numeric_grpc_status() {
    let a = mock("a1", &["m"]).await;
    let trident = Trident::start(&one_pool("", &a)).await;
    let mut grpc = client(trident.grpc_url()).await;
    grpc.model_infer(infer_request("m", "grpc-ok", Bytes::new()))
        .await
        .expect("infer");
    let line = trident.access_log_line("\"grpc_status\":0").await;
    assert_eq!(line["status"], 200);
    assert_eq!(line["protocol"], "grpc");
    assert_eq!(line["tries"], 1);
    assert!(line["request_bytes"].as_u64().unwrap() > 0);
    assert!(line["response_bytes"].as_u64().unwrap() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_request_says_two_tries() {
    let a = mock("a1", &["m"]).await;
    let b = mock("b1", &["m"]).await;
    let trident = Trident::start(&format!(
        "[[pools]]\nname = \"p\"\nendpoints = [ {}, {} ]\n[pools.balancer]\nstrategy = \"round_robin\"\n\
         [[routes]]\nmodel = \"*\"\npool = \"p\"\n",
        endpoint(&a),
        endpoint(&b)
    ))
    .await;
    a.stop().await;
    // Round robin: one of two requests goes to the stopped endpoint first.
    for _ in 0..2 {
        assert_eq!(infer(&trident, "m", &[]).await.0, 200);
    }
    let line = trident.access_log_line("\"tries\":2").await;
    assert_eq!(line["status"], 200);
    assert_eq!(line["upstream"], b.http_addr.to_string());
    assert!(line["upstream_us"].as_u64().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denials_say_which_filter_refused_in_error() {
    let (_triton, trident) = keyed_and_limited_proxy().await;
    assert_eq!(infer(&trident, "m", &[("x-api-key", "wrong")]).await.0, 401);
    let line = trident.access_log_line("\"status\":401").await;
    let error = line["error"].as_str().expect("error");
    assert!(
        error.contains("filter 'keys'") && error.contains("invalid API key"),
        "{error}"
    );
    assert_eq!(line["tries"], 0);
    assert_eq!(line["upstream_us"], Value::Null);

    let keyed = [("x-api-key", "acme-key"), ("x-user", "alice")];
    assert_eq!(infer(&trident, "m", &keyed).await.0, 200);
    assert_eq!(infer(&trident, "m", &keyed).await.0, 429);
    let line = trident.access_log_line("\"status\":429").await;
    let error = line["error"].as_str().expect("error");
    assert!(
        error.contains("filter 'limit'") && error.contains("rate limit"),
        "{error}"
    );

    let mut grpc = client(trident.grpc_url()).await;
    let refused = grpc
        .model_infer(infer_request("m", "1", Bytes::new()))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    let line = trident.access_log_line("\"grpc_status\":16").await;
    assert_eq!(line["status"], 200, "gRPC errors travel in a 200 response");
    assert!(line["error"].as_str().unwrap().contains("filter 'keys'"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_endpoint_says_why_in_error() {
    let a = mock("a1", &["m"]).await;
    let trident = Trident::start(&format!(
        "[[pools]]\nname = \"grpc_only\"\nendpoints = [ {{ grpc = \"{}\" }} ]\n\
         [[routes]]\nmodel = \"*\"\npool = \"grpc_only\"\n",
        a.grpc_addr
    ))
    .await;
    assert_eq!(infer(&trident, "m", &[]).await.0, 503);
    let line = trident.access_log_line("\"status\":503").await;
    let error = line["error"].as_str().expect("error");
    assert!(
        error.contains("pool 'grpc_only' has no http endpoint"),
        "{error}"
    );
    assert_eq!(line["tries"], 0);
}

fn lines_of(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_log_is_reopened_on_sigusr1_and_loses_no_line() {
    let a = mock("a1", &["m"]).await;
    let trident = Trident::start(&one_pool("access_log = \"access.log\"", &a)).await;
    let path = trident.config_path().with_file_name("access.log");
    for i in 0..5 {
        infer(&trident, "m", &[("x-request-id", &format!("before-{i}"))]).await;
    }
    assert!(
        eventually(Duration::from_secs(5), || async {
            lines_of(&path).len() == 5
        })
        .await,
        "lines reach the file"
    );
    let rotated = path.with_file_name("access.log.1");
    std::fs::rename(&path, &rotated).unwrap();
    // Still written to the renamed file until the signal.
    infer(&trident, "m", &[("x-request-id", "before-5")]).await;
    trident.signal("USR1");
    trident.error_log_line("access.log reopened").await;
    for i in 0..5 {
        infer(&trident, "m", &[("x-request-id", &format!("after-{i}"))]).await;
    }
    // `before-5` may be logged after its answer reached the client, so into either file.
    assert!(
        eventually(Duration::from_secs(5), || async {
            lines_of(&rotated).len() + lines_of(&path).len() == 11
        })
        .await,
        "every line reaches one file or the other"
    );
    let old = lines_of(&rotated);
    let new = lines_of(&path);
    for i in 0..5 {
        assert!(old.iter().any(|l| l.contains(&format!("\"before-{i}\""))));
        assert!(new.iter().any(|l| l.contains(&format!("\"after-{i}\""))));
    }
    assert!(trident.stdout.lock().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_file_that_cannot_be_opened_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("trident.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nhttp_listen = \"{}\"\naccess_log = \"missing/access.log\"\n\
             [[pools]]\nname = \"p\"\nendpoints = [ {{ http = \"127.0.0.1:1\" }} ]\n\
             [[routes]]\nmodel = \"*\"\npool = \"p\"\n",
            free_port()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_trident"))
        .args(["run", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("server.access_log: cannot open") && stderr.contains("missing/access.log"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampling_zero_logs_failures_only() {
    let a = mock("a1", &["m"]).await;
    let trident = Trident::start(&one_pool("access_log = { sample_ratio = 0.0 }", &a)).await;
    for _ in 0..5 {
        assert_eq!(infer(&trident, "m", &[]).await.0, 200);
    }
    assert_eq!(infer(&trident, "unknown", &[]).await.0, 400);
    // Lines are written in order: once the failure's is out, any success's would be.
    trident.access_log_line("/v2/models/unknown/infer").await;
    let lines = trident.stdout.lock().unwrap().clone();
    assert_eq!(lines.len(), 1, "{lines:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_can_turn_its_access_log_off() {
    let a = mock("a1", &["quiet", "loud"]).await;
    let trident = Trident::start(&format!(
        "[[pools]]\nname = \"p\"\nendpoints = [ {} ]\n\
         [[routes]]\nmodel = \"quiet\"\npool = \"p\"\naccess_log = false\n\
         [[routes]]\nmodel = \"*\"\npool = \"p\"\n",
        endpoint(&a)
    ))
    .await;
    assert_eq!(infer(&trident, "quiet", &[]).await.0, 200);
    assert_eq!(infer(&trident, "loud", &[]).await.0, 200);
    trident.access_log_line("/v2/models/loud/infer").await;
    let lines = trident.stdout.lock().unwrap().clone();
    assert!(!lines.iter().any(|l| l.contains("quiet")), "{lines:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_log_takes_the_place_of_the_configured_level() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("trident.toml");
    let http = free_port();
    std::fs::write(
        &config,
        format!(
            "[log]\nlevel = \"error\"\n[server]\nhttp_listen = \"{http}\"\naccess_log = \"off\"\n\
             [[pools]]\nname = \"p\"\nendpoints = [ {{ http = \"127.0.0.1:1\" }} ]\n\
             [[routes]]\nmodel = \"*\"\npool = \"p\"\n"
        ),
    )
    .unwrap();
    /// Killed however the test ends.
    struct Running(std::process::Child);
    impl Drop for Running {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_trident"))
        .args(["run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = collect_lines(child.stderr.take().unwrap(), true);
    let _running = Running(child);
    wait_for_line(&stderr, &format!("listening on http {http}"), "error log").await;
}

/// The context switches so far of process `pid`'s thread named `name`.
fn context_switches(pid: u32, name: &str) -> u64 {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("the process's threads");
    tasks
        .flatten()
        .filter(|task| {
            std::fs::read_to_string(task.path().join("comm")).is_ok_and(|comm| comm.trim() == name)
        })
        .map(|task| {
            let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
            status
                .lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().last()?.parse::<u64>().ok())
                .sum::<u64>()
        })
        .sum()
}

/// An idle proxy's access-log writer sleeps (it polled 100 times a second),
/// and wakes for the next line at once: the line is written without a wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_access_log_writer_sleeps_until_a_line_comes() {
    let a = mock("a1", &["m"]).await;
    let trident = Trident::start(&one_pool("", &a)).await;
    infer(&trident, "m", &[("x-request-id", "first")]).await;
    trident.access_log_line("\"first\"").await;
    let before = context_switches(trident.pid(), "access-log");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let woken = context_switches(trident.pid(), "access-log") - before;
    assert!(woken <= 4, "woken {woken} times in 2 s of no traffic");
    let asked = std::time::Instant::now();
    infer(&trident, "m", &[("x-request-id", "second")]).await;
    trident.access_log_line("\"second\"").await;
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "written without waiting for a poll: {:?}",
        asked.elapsed()
    );
}
