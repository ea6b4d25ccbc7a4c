//! Test harness: mock Triton servers on port 0, and the real `trident` binary
//! started on free loopback ports with a generated config.
#![allow(dead_code)] // each test file uses a different part of the harness

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tonic::transport::Channel;
pub use trident::mock::{MockConfig, MockTriton};
use trident::protocol::kserve::grpc_inference_service_client::GrpcInferenceServiceClient;
use trident::protocol::kserve::model_infer_request::InferInputTensor;
use trident::protocol::kserve::{InferParameter, ModelInferRequest};

pub mod otlp;
pub mod tls;

pub type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

/// A free loopback port (bound and released: the test then binds it).
pub fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
}

pub async fn mock(name: &str, models: &[&str]) -> MockTriton {
    MockTriton::start(MockConfig {
        name: name.to_owned(),
        models: models.iter().map(|m| m.to_string()).collect(),
    })
    .await
    .expect("mock starts")
}

/// `{ http = "...", grpc = "..." }` for a mock.
pub fn endpoint(mock: &MockTriton) -> String {
    format!(
        "{{ http = \"{}\", grpc = \"{}\" }}",
        mock.http_addr, mock.grpc_addr
    )
}

/// Mocks `a1` (models m_a, fail) in pool `a` and `b1` (m_b) in pool `b`, behind a
/// Trident routing `m_b` to b and everything else (`*`) to a.
pub async fn two_pools() -> (MockTriton, MockTriton, Trident) {
    let a = mock("a1", &["m_a", "fail"]).await;
    let b = mock("b1", &["m_b"]).await;
    let trident = Trident::start(&format!(
        "[[pools]]\nname = \"a\"\nendpoints = [ {} ]\n[[pools]]\nname = \"b\"\nendpoints = [ {} ]\n\
         [[routes]]\nmodel = \"m_b\"\npool = \"b\"\n[[routes]]\nmodel = \"*\"\npool = \"a\"\n",
        endpoint(&a),
        endpoint(&b)
    ))
    .await;
    (a, b, trident)
}

/// Polls `/ready` until 200 (true), or until `exited()` says the process is gone or
/// 20 s pass (false).
pub async fn poll_ready(admin: SocketAddr, mut exited: impl FnMut() -> bool) -> bool {
    let client = http1_client();
    let deadline = Instant::now() + Duration::from_secs(20);
    let uri: http::Uri = format!("http://{admin}/ready").parse().unwrap();
    while Instant::now() < deadline && !exited() {
        if let Ok(response) = client.get(uri.clone()).await {
            if response.status() == 200 {
                return true;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// Runs `start` until the Trident process it starts comes up, at most three
/// times: a port `free_port` released can be taken (by another test, or by a
/// client's ephemeral port) before Trident binds it, and Trident then exits at
/// once. Each call of `start` tries on new ports and gives the process if it came up.
pub async fn on_new_ports<T>(mut start: impl AsyncFnMut() -> Option<T>) -> Option<T> {
    for _ in 0..3 {
        if let Some(up) = start().await {
            return Some(up);
        }
    }
    None
}

/// `[server]` keys of test processes: stop at once on SIGTERM.
pub const FAST_STOP: &str = "drain_delay_secs = 0\nshutdown_timeout_secs = 0";

/// A running `trident run` process; killed on drop.
pub struct Trident {
    child: Child,
    pub http: SocketAddr,
    pub grpc: SocketAddr,
    pub admin: SocketAddr,
    /// Lines the process wrote to stdout (the access log).
    pub stdout: Arc<Mutex<Vec<String>>>,
    /// Lines the process wrote to stderr (the error log), also passed on to the test's.
    pub stderr: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

impl Trident {
    /// Starts Trident with `[[pools]]`/`[[routes]]` TOML `body`, adding a `[server]` section
    /// on free ports, and waits until the admin `/ready` answers 200. Keys before the
    /// body's first table header extend that `[server]` section.
    pub async fn start(body: &str) -> Trident {
        Self::start_with_threads(body, 2).await
    }

    pub async fn start_with_threads(body: &str, threads: usize) -> Trident {
        Self::start_with_lifecycle(body, threads, FAST_STOP).await
    }

    /// As [`start`](Self::start), with `lifecycle` (`[server]` keys such as
    /// `drain_delay_secs`) in place of [`FAST_STOP`].
    pub async fn start_with_lifecycle(body: &str, threads: usize, lifecycle: &str) -> Trident {
        on_new_ports(async || {
            let mut trident = Self::spawn(body, threads, lifecycle);
            let ready = poll_ready(trident.admin, || {
                !matches!(trident.child.try_wait(), Ok(None))
            })
            .await;
            ready.then_some(trident)
        })
        .await
        .expect("trident did not become ready")
    }

    /// Starts Trident like [`Trident::start`], but waits only until `/live` answers:
    /// for configs whose backends are not up yet, so `/ready` is 503.
    pub async fn start_live(body: &str) -> Trident {
        on_new_ports(async || {
            let mut trident = Self::spawn(body, 2, FAST_STOP);
            let client = http1_client();
            let uri: http::Uri = format!("http://{}/live", trident.admin).parse().unwrap();
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline && matches!(trident.child.try_wait(), Ok(None)) {
                if matches!(client.get(uri.clone()).await, Ok(r) if r.status() == 200) {
                    return Some(trident);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            None
        })
        .await
        .expect("trident did not become live")
    }

    /// `/ready`: its status and JSON.
    pub async fn readiness(&self) -> (u16, serde_json::Value) {
        let (status, _, body) = get(&http1_client(), &format!("http://{}/ready", self.admin)).await;
        let json = serde_json::from_slice(&body).expect("/ready answers JSON");
        (status.as_u16(), json)
    }

    fn spawn(body: &str, threads: usize, lifecycle: &str) -> Trident {
        let (http, grpc, admin) = (free_port(), free_port(), free_port());
        let config = format!(
            "[server]\nhttp_listen = \"{http}\"\ngrpc_listen = \"{grpc}\"\nadmin_listen = \"{admin}\"\nthreads = {threads}\n\
             {lifecycle}\n\n{body}"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("trident.toml");
        std::fs::File::create(&path)
            .and_then(|mut f| f.write_all(config.as_bytes()))
            .expect("write config");
        let mut child = Command::new(env!("CARGO_BIN_EXE_trident"))
            .args(["run", "--config"])
            .arg(&path)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn trident");
        let stdout = collect_lines(child.stdout.take().expect("stdout"), false);
        let stderr = collect_lines(child.stderr.take().expect("stderr"), true);
        Trident {
            child,
            http,
            grpc,
            admin,
            stdout,
            stderr,
            _dir: dir,
        }
    }

    /// The config file it runs (rewrite it, then [`signal`](Self::signal) `HUP`, to reload).
    pub fn config_path(&self) -> std::path::PathBuf {
        self._dir.path().join("trident.toml")
    }

    /// Sends the process `signal` (`TERM`, `HUP`, ...).
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal}");
    }

    /// Sends SIGHUP; whether `trident_config_reloads_total{result}` then reaches `count`.
    pub async fn reload_by_signal(&self, result: &str, count: f64) -> bool {
        self.signal("HUP");
        let series = format!("trident_config_reloads_total{{result=\"{result}\"}}");
        wait_metric(self, &series, count).await
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status, once the process has ended.
    pub fn try_exit(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.grpc)
    }

    /// The Prometheus text from `/metrics`.
    pub async fn metrics(&self) -> String {
        let (_, _, body) = get(&http1_client(), &format!("http://{}/metrics", self.admin)).await;
        String::from_utf8(body.to_vec()).expect("utf-8 metrics")
    }

    /// Waits for an access-log line containing `needle` and returns it parsed.
    pub async fn access_log_line(&self, needle: &str) -> serde_json::Value {
        let line = wait_for_line(&self.stdout, needle, "access log").await;
        serde_json::from_str(&line).expect("access log lines are JSON")
    }

    /// Waits for an error-log line containing `needle` and returns it.
    pub async fn error_log_line(&self, needle: &str) -> String {
        wait_for_line(&self.stderr, needle, "error log").await
    }
}

/// Reads `pipe`'s lines into a list, from a thread of its own; `echo`: passes
/// them on to the test's stderr.
pub fn collect_lines(
    pipe: impl std::io::Read + Send + 'static,
    echo: bool,
) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let collected = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            if echo {
                eprintln!("{line}");
            }
            collected.lock().unwrap().push(line);
        }
    });
    lines
}

/// Waits, at most 5 s, for a line of `lines` containing `needle`.
pub async fn wait_for_line(lines: &Mutex<Vec<String>>, needle: &str, what: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(line) = lines.lock().unwrap().iter().find(|l| l.contains(needle)) {
            return line.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no {what} line containing {needle}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl Drop for Trident {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `condition` every 20 ms until it holds (true) or `within` passes (false).
pub async fn eventually<F: std::future::Future<Output = bool>>(
    within: Duration,
    mut condition: impl FnMut() -> F,
) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if condition().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// Waits until `/metrics` shows `series` at `value` or more, for up to 10 s:
/// a request is counted just after its answer is written, so a client may look first.
pub async fn wait_metric(trident: &Trident, series: &str, value: f64) -> bool {
    eventually(Duration::from_secs(10), || async {
        metric(&trident.metrics().await, series) >= value
    })
    .await
}

/// The value of a metric sample line `name{labels}`, or 0 when absent.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.trim().parse().ok())
        })
        .unwrap_or(0.0)
}

pub fn http1_client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// An HTTP/2 prior-knowledge (h2c) client.
pub fn h2c_client() -> HttpClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

pub type Response = (http::StatusCode, http::HeaderMap, Bytes);

pub async fn send(client: &HttpClient, request: http::Request<Full<Bytes>>) -> Response {
    let response = client.request(request).await.expect("response");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    (parts.status, parts.headers, body)
}

pub async fn get(client: &HttpClient, url: &str) -> Response {
    send(
        client,
        http::Request::get(url).body(Full::default()).unwrap(),
    )
    .await
}

pub async fn post(
    client: &HttpClient,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Response {
    let mut request = http::Request::post(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    send(client, request.body(Full::new(body.into())).unwrap()).await
}

pub fn header<'a>(headers: &'a http::HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

/// A gRPC client for Triton's inference service, without message size limits.
pub type GrpcClient = GrpcInferenceServiceClient<Channel>;

pub async fn client(url: String) -> GrpcClient {
    let channel = Channel::from_shared(url)
        .expect("url")
        .connect()
        .await
        .expect("connect");
    GrpcInferenceServiceClient::new(channel)
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX)
}

pub fn infer_request(model: &str, id: &str, raw: Bytes) -> ModelInferRequest {
    ModelInferRequest {
        model_name: model.to_owned(),
        id: id.to_owned(),
        inputs: vec![InferInputTensor {
            name: "INPUT0".into(),
            datatype: "UINT8".into(),
            shape: vec![1, raw.len() as i64],
            ..Default::default()
        }],
        raw_input_contents: vec![raw],
        ..Default::default()
    }
}

/// An HTTP infer body of sequence `id` with its control flags.
pub fn sequence_json(id: u64, start: bool, end: bool) -> String {
    serde_json::json!({
        "parameters": { "sequence_id": id, "sequence_start": start, "sequence_end": end },
        "inputs": [{ "name": "INPUT0", "shape": [1, 1], "datatype": "FP32", "data": [1.0] }]
    })
    .to_string()
}

/// A gRPC infer request of model `m`'s sequence `id` with its control flags.
pub fn grpc_sequence(id: i64, start: bool, end: bool) -> ModelInferRequest {
    let mut request = infer_request("m", "s", Bytes::from_static(b"x"));
    request
        .parameters
        .insert("sequence_id".into(), InferParameter::int64(id));
    request
        .parameters
        .insert("sequence_start".into(), InferParameter::bool(start));
    request
        .parameters
        .insert("sequence_end".into(), InferParameter::bool(end));
    request
}

pub fn backend<T>(response: &tonic::Response<T>) -> String {
    response
        .metadata()
        .get("x-mock-backend")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// A gRPC length-prefixed message; `flag` 1 marks it compressed.
pub fn grpc_frame(flag: u8, message: &[u8]) -> Vec<u8> {
    let mut frame = vec![flag];
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(message);
    frame
}

/// A mock `t1` (model m) behind a Trident whose every route runs an `api_key`
/// filter `keys` (key `acme-key`), then a `rate_limit` filter `limit` by the
/// `x-user` header (one request, then next to none).
pub async fn keyed_and_limited_proxy() -> (MockTriton, Trident) {
    let triton = mock("t1", &["m"]).await;
    let trident = Trident::start(&format!(
        r#"
[filters.keys]
kind = "api_key"
keys = [ {{ tenant = "acme", key = "acme-key" }} ]

[filters.limit]
kind = "rate_limit"
rate_per_second = 0.001
burst = 1
key = ["header:x-user"]

[[pools]]
name = "p"
endpoints = [ {} ]

[[routes]]
model = "*"
pool = "p"
filters = ["keys", "limit"]
"#,
        endpoint(&triton)
    ))
    .await;
    (triton, trident)
}
