//! An in-process mock of NVIDIA Triton Inference Server speaking the KServe v2 protocol
//! over HTTP/REST (HTTP/1.1 and h2c) and gRPC.
//!
//! Every served model is an identity ("echo") model: each input comes back as an output
//! with the same datatype, shape and data, its name's leading `INPUT` replaced by `OUTPUT`.
//! Test hooks:
//! - a model named `fail` answers HTTP 500 / gRPC `INTERNAL` with the message `mock failure`;
//! - the request parameter `mock_sleep_ms` delays the answer by that many milliseconds;
//! - every response carries `x-mock-backend: <name>`, and a request's `x-request-id` is
//!   echoed back as `x-mock-request-id`;
//! - a request header `x-mock-echo: a, b` asks for the request's headers `a` and `b`
//!   back as `x-mock-echo-a` and `x-mock-echo-b` (absent when the request had none);
//! - [`MockTriton::control`] switches faults on and off while it runs: added latency,
//!   failing or hanging inference calls, an unready server or model, and the pending
//!   count its Triton-style `GET /metrics` (on the HTTP port) reports.
//!
//! ```ignore
//! # async fn demo() -> std::io::Result<()> {
//! use trident::mock::{MockConfig, MockTriton};
//! let mock = MockTriton::start(MockConfig::new("b1", ["simple"])).await?;
//! println!("http on {}, grpc on {}", mock.http_addr, mock.grpc_addr);
//! mock.stop().await;
//! # Ok(()) }
//! ```

mod compress;
mod grpc;
mod http;
mod tensor;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ::http::HeaderValue;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};
use tokio::task::{JoinHandle, JoinSet};

/// Server version reported by the metadata endpoints (Triton 24.10).
pub const TRITON_VERSION: &str = "2.51.0";
/// Response header naming the mock that served a request.
pub const BACKEND_HEADER: &str = "x-mock-backend";
/// Response header echoing the request's `x-request-id`.
pub const REQUEST_ID_ECHO_HEADER: &str = "x-mock-request-id";
/// Request header listing request headers to echo back (see [`echo_headers`]).
pub const ECHO_HEADER: &str = "x-mock-echo";

/// The response headers that echo the request headers named in `x-mock-echo`.
pub fn echo_headers(request: &::http::HeaderMap) -> Vec<(::http::HeaderName, ::http::HeaderValue)> {
    let Some(names) = request.get(ECHO_HEADER).and_then(|v| v.to_str().ok()) else {
        return Vec::new();
    };
    names
        .split(',')
        .map(str::trim)
        .filter_map(|name| {
            let value = request.get(name)?.clone();
            let echo = ::http::HeaderName::try_from(format!("{ECHO_HEADER}-{name}")).ok()?;
            Some((echo, value))
        })
        .collect()
}

/// Model name that always fails with `mock failure`.
pub const FAIL_MODEL: &str = "fail";
/// Request parameter (milliseconds) that delays the answer.
pub const SLEEP_PARAM: &str = "mock_sleep_ms";
/// The only model version the mock serves.
pub const MODEL_VERSION: &str = "1";
/// Backend (and metadata platform) reported for every echo model, after Triton's
/// `identity` backend.
pub const ECHO_BACKEND: &str = "identity";

const REQUEST_ID_HEADER: &str = "x-request-id";
const EXTENSIONS: [&str; 13] = [
    "classification",
    "sequence",
    "model_repository",
    "model_repository(unload_dependents)",
    "schedule_policy",
    "model_configuration",
    "system_shared_memory",
    "cuda_shared_memory",
    "binary_tensor_data",
    "parameters",
    "statistics",
    "trace",
    "logging",
];
// Triton's own default gRPC message limit (INT32_MAX); large tensors must pass.
const GRPC_MAX_MESSAGE: usize = i32::MAX as usize;
// Large h2 windows and frames keep loopback throughput for multi-MiB tensors high.
const H2_STREAM_WINDOW: u32 = 8 << 20;
const H2_CONN_WINDOW: u32 = 16 << 20;
const H2_MAX_FRAME: u32 = 1 << 20;
const H2_SEND_BUF: usize = 8 << 20;

/// Configuration of one mock server.
#[derive(Clone, Debug, Default)]
pub struct MockConfig {
    /// Backend name, sent in the `x-mock-backend` header of every response.
    pub name: String,
    /// Names of the (echo) models it serves, all at version `1`.
    pub models: Vec<String>,
}

impl MockConfig {
    /// A config serving `models` under the backend name `name`.
    pub fn new<I, S>(name: impl Into<String>, models: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        MockConfig {
            name: name.into(),
            models: models.into_iter().map(Into::into).collect(),
        }
    }
}

/// A running mock Triton server with one HTTP and one gRPC listener on 127.0.0.1.
///
/// Dropping it (or calling [`shutdown`](Self::shutdown)) stops accepting and closes every
/// open connection; [`stop`](Self::stop) additionally waits until that has happened.
#[derive(Debug)]
pub struct MockTriton {
    /// Backend name from the config.
    pub name: String,
    /// Address of the HTTP/REST listener (HTTP/1.1 and h2c).
    pub http_addr: SocketAddr,
    /// Address of the gRPC listener (h2c).
    pub grpc_addr: SocketAddr,
    /// TCP connections accepted so far by the HTTP and the gRPC listener.
    http_connections: Arc<AtomicUsize>,
    grpc_connections: Arc<AtomicUsize>,
    shared: Arc<Shared>,
    stop_tx: Option<watch::Sender<()>>,
    tasks: Vec<JoinHandle<()>>,
}

/// How inference calls (HTTP `/infer`, gRPC `ModelInfer` / `ModelStreamInfer`) fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Answer normally.
    None = 0,
    /// HTTP 503, or a trailers-only gRPC `UNAVAILABLE`.
    Unavailable = 1,
    /// HTTP 503, or a gRPC response whose headers say 200 and whose trailers carry
    /// `UNAVAILABLE`: only a proxy reading trailers sees the failure.
    UnavailableInTrailers = 2,
    /// Never answer (a black hole); the connection stays open.
    Hang = 3,
}

/// Run-time switches for one mock, shared by its HTTP and gRPC front ends.
#[derive(Debug, Default)]
pub struct MockControl {
    fault: AtomicU8,
    latency_ms: AtomicU64,
    server_unready: AtomicBool,
    unready_models: Mutex<Vec<String>>,
    fault_model: Mutex<Option<String>>,
    infer_calls: AtomicUsize,
    pending: AtomicU64,
    /// Bits of the f64 added to floating-point outputs.
    output_offset: AtomicU64,
    /// Model versions served besides [`MODEL_VERSION`].
    extra_versions: Mutex<Vec<String>>,
    /// Wakes every open connection to be reset (see [`MockControl::reset_connections`]).
    resets: Notify,
    /// Served models unloaded through the repository API.
    unloaded: Mutex<Vec<String>>,
    /// Repository loads and unloads received, as `"load m"` / `"unload m"`.
    repository_calls: Mutex<Vec<String>>,
}

impl MockControl {
    pub fn set_fault(&self, fault: Fault) {
        self.fault.store(fault as u8, Ordering::Relaxed);
    }

    /// Limits the fault to HTTP calls of one model (`None`: every call). gRPC calls
    /// are judged before their message is read, so only an unlimited fault hits them.
    pub fn set_fault_model(&self, model: Option<&str>) {
        *self
            .fault_model
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = model.map(str::to_owned);
    }

    /// Delay added to every inference call.
    pub fn set_latency(&self, latency: Duration) {
        let ms = u64::try_from(latency.as_millis()).unwrap_or(u64::MAX);
        self.latency_ms.store(ms, Ordering::Relaxed);
    }

    /// What `/v2/health/ready` and gRPC `ServerReady` say.
    pub fn set_server_ready(&self, ready: bool) {
        self.server_unready.store(!ready, Ordering::Relaxed);
    }

    /// What `/v2/models/{model}/ready` and gRPC `ModelReady` say for a served model.
    pub fn set_model_ready(&self, model: &str, ready: bool) {
        let mut unready = self
            .unready_models
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        unready.retain(|m| m != model);
        if !ready {
            unready.push(model.to_owned());
        }
    }

    /// The `nv_inference_pending_request_count` its `/metrics` reports for every model,
    /// as a busy Triton shared with other clients would.
    pub fn set_pending(&self, pending: u64) {
        self.pending.store(pending, Ordering::Relaxed);
    }

    /// Adds `offset` to every FP32 / FP64 output element: answers that differ
    /// from a mock without it, as a canary's might.
    pub fn set_output_offset(&self, offset: f64) {
        self.output_offset
            .store(offset.to_bits(), Ordering::Relaxed);
    }

    pub(crate) fn output_offset(&self) -> f64 {
        f64::from_bits(self.output_offset.load(Ordering::Relaxed))
    }

    /// Serves `version` of every model too (answering with that version), as a
    /// Triton with a second version in its repository.
    pub fn serve_version(&self, version: &str) {
        self.extra_versions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(version.to_owned());
    }

    fn serves_version(&self, version: &str) -> bool {
        version.is_empty()
            || version == MODEL_VERSION
            || self
                .extra_versions
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .any(|v| v == version)
    }

    /// Resets every connection open now, HTTP and gRPC (a TCP RST: zero linger), as
    /// a crashed process or a middlebox dropping its state would. The listeners stay up.
    pub fn reset_connections(&self) {
        self.resets.notify_waiters();
    }

    /// Inference calls received so far, failed ones included.
    pub fn infer_calls(&self) -> usize {
        self.infer_calls.load(Ordering::Relaxed)
    }

    /// Repository loads and unloads received so far, as `"load m"` / `"unload m"`.
    pub fn repository_calls(&self) -> Vec<String> {
        self.repository_calls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn is_unloaded(&self, model: &str) -> bool {
        self.unloaded
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .any(|m| m == model)
    }

    fn server_ready(&self) -> bool {
        !self.server_unready.load(Ordering::Relaxed)
    }

    fn model_ready(&self, model: &str) -> bool {
        let unready = self
            .unready_models
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        !unready.iter().any(|m| m == model)
    }

    /// Counts an inference call of `model` (`None`: not known yet), waits the added
    /// latency, and says how it must fail (never returning for [`Fault::Hang`]).
    async fn before_infer(&self, model: Option<&str>) -> Fault {
        self.infer_calls.fetch_add(1, Ordering::Relaxed);
        let latency = self.latency_ms.load(Ordering::Relaxed);
        if latency > 0 {
            tokio::time::sleep(Duration::from_millis(latency)).await;
        }
        let targeted = {
            let only = self
                .fault_model
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            only.as_deref().is_none_or(|m| Some(m) == model)
        };
        if !targeted {
            return Fault::None;
        }
        match self.fault.load(Ordering::Relaxed) {
            1 => Fault::Unavailable,
            2 => Fault::UnavailableInTrailers,
            3 => std::future::pending().await,
            _ => Fault::None,
        }
    }
}

impl MockTriton {
    /// Binds 127.0.0.1:0 for HTTP and gRPC and serves on the current tokio runtime.
    pub async fn start(config: MockConfig) -> std::io::Result<MockTriton> {
        let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
        MockTriton::start_at(config, any_port, any_port).await
    }

    /// Serves on the given addresses: a mock restarted where a stopped one was.
    pub async fn start_at(
        config: MockConfig,
        http_addr: SocketAddr,
        grpc_addr: SocketAddr,
    ) -> std::io::Result<MockTriton> {
        let http_listener = TcpListener::bind(http_addr).await?;
        let grpc_listener = TcpListener::bind(grpc_addr).await?;
        let http_addr = http_listener.local_addr()?;
        let grpc_addr = grpc_listener.local_addr()?;
        let shared = Arc::new(Shared::new(&config));
        let (stop_tx, stop_rx) = watch::channel(());
        let http_connections = Arc::new(AtomicUsize::new(0));
        let grpc_connections = Arc::new(AtomicUsize::new(0));

        let http_shared = shared.clone();
        let http_task = spawn_accept_loop(
            http_listener,
            stop_rx.clone(),
            http_connections.clone(),
            shared.clone(),
            move |stream| http::serve_connection(http_shared.clone(), stream),
        );
        let grpc_service = grpc::service(shared.clone());
        let grpc_task = spawn_accept_loop(
            grpc_listener,
            stop_rx,
            grpc_connections.clone(),
            shared.clone(),
            move |stream| grpc::serve_connection(grpc_service.clone(), stream),
        );
        log::debug!(
            "mock triton '{}' serving http={http_addr} grpc={grpc_addr}",
            config.name
        );
        Ok(MockTriton {
            name: config.name,
            http_addr,
            grpc_addr,
            stop_tx: Some(stop_tx),
            http_connections,
            grpc_connections,
            shared,
            tasks: vec![http_task, grpc_task],
        })
    }

    /// The switches for faults, latency and readiness.
    pub fn control(&self) -> &MockControl {
        &self.shared.control
    }

    /// Base URL of the HTTP listener, e.g. `http://127.0.0.1:1234`.
    pub fn http_url(&self) -> String {
        format!("http://{}", self.http_addr)
    }

    /// Base URL of the gRPC listener, e.g. `http://127.0.0.1:1235`.
    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.grpc_addr)
    }

    /// TCP connections accepted so far: (HTTP listener, gRPC listener).
    pub fn connections_accepted(&self) -> (usize, usize) {
        (
            self.http_connections.load(Ordering::Relaxed),
            self.grpc_connections.load(Ordering::Relaxed),
        )
    }

    /// Stops serving; the listeners and open connections close shortly after.
    pub fn shutdown(self) {}

    /// Stops serving and waits until both listeners and all connections are closed.
    pub async fn stop(mut self) {
        self.stop_tx.take();
        for task in std::mem::take(&mut self.tasks) {
            // A join error only means the task panicked or was cancelled: either way it is gone.
            let _ = task.await;
        }
    }
}

/// `stream` to serve, and a future that ends when the mock's connections are
/// reset, leaving a duplicate of the socket set to close with a TCP RST once the
/// server has dropped its own (the serving future owns the stream, so the reset
/// needs a second handle on the socket).
fn resettable(
    stream: TcpStream,
    shared: Arc<Shared>,
) -> std::io::Result<(TcpStream, impl Future<Output = ()> + Send + 'static)> {
    let stream = stream.into_std()?;
    let duplicate = stream.try_clone()?;
    let stream = TcpStream::from_std(stream)?;
    let reset = async move {
        shared.control.resets.notified().await;
        match TcpStream::from_std(duplicate) {
            Ok(socket) => {
                if let Err(e) = socket.set_zero_linger() {
                    log::debug!("mock: cannot set zero linger: {e}");
                }
            }
            Err(e) => log::debug!("mock: cannot reset a connection: {e}"),
        }
    };
    Ok((stream, reset))
}

impl Drop for MockTriton {
    fn drop(&mut self) {
        // Dropping the sender wakes every accept loop, which then aborts its connections.
        self.stop_tx.take();
    }
}

/// Accepts connections until `stop` fires, then aborts them all before returning, so that
/// awaiting the returned handle means the port and its connections are really closed.
fn spawn_accept_loop<F, Fut>(
    listener: TcpListener,
    mut stop: watch::Receiver<()>,
    accepted_count: Arc<AtomicUsize>,
    shared: Arc<Shared>,
    on_conn: F,
) -> JoinHandle<()>
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        let mut conns = JoinSet::new();
        loop {
            while conns.try_join_next().is_some() {}
            tokio::select! {
                _ = stop.changed() => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        accepted_count.fetch_add(1, Ordering::Relaxed);
                        if let Err(e) = stream.set_nodelay(true) {
                            log::debug!("mock: set_nodelay failed: {e}");
                        }
                        match resettable(stream, shared.clone()) {
                            Ok((stream, reset)) => {
                                let serve = on_conn(stream);
                                conns.spawn(async move {
                                    tokio::select! {
                                        () = serve => {}
                                        () = reset => {}
                                    }
                                });
                            }
                            Err(e) => log::warn!("mock: cannot serve a connection: {e}"),
                        }
                    }
                    Err(e) => {
                        // Typically EMFILE; back off instead of spinning.
                        log::warn!("mock: accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                },
            }
        }
        drop(listener);
        conns.shutdown().await;
    })
}

/// Error kinds with Triton's mapping to HTTP status and gRPC code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ErrorKind {
    InvalidArg,
    NotFound,
    Internal,
}

#[derive(Clone, Debug)]
struct MockError {
    kind: ErrorKind,
    message: String,
}

impl MockError {
    fn invalid(message: impl Into<String>) -> Self {
        MockError {
            kind: ErrorKind::InvalidArg,
            message: message.into(),
        }
    }

    fn not_found(message: impl Into<String>) -> Self {
        MockError {
            kind: ErrorKind::NotFound,
            message: message.into(),
        }
    }

    fn internal(message: impl Into<String>) -> Self {
        MockError {
            kind: ErrorKind::Internal,
            message: message.into(),
        }
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct ModelStats {
    last_inference_ms: u64,
    success_count: u64,
    success_ns: u64,
    fail_count: u64,
    fail_ns: u64,
}

/// State shared by the HTTP and gRPC front ends of one mock.
#[derive(Debug)]
struct Shared {
    backend_header: HeaderValue,
    models: Vec<String>,
    stats: Mutex<HashMap<String, ModelStats>>,
    control: MockControl,
}

impl Shared {
    fn new(config: &MockConfig) -> Self {
        let backend_header = HeaderValue::from_str(&config.name)
            .unwrap_or_else(|_| HeaderValue::from_static("invalid-backend-name"));
        let mut models: Vec<String> = Vec::new();
        for m in &config.models {
            if !models.contains(m) {
                models.push(m.clone());
            }
        }
        Shared {
            backend_header,
            models,
            stats: Mutex::new(HashMap::new()),
            control: MockControl::default(),
        }
    }

    fn serves(&self, model: &str) -> bool {
        self.models.iter().any(|m| m == model)
    }

    /// Resolves a model and version the way Triton's model repository does.
    fn resolve(&self, model: &str, version: &str) -> Result<(), MockError> {
        if !self.serves(model) {
            // Triton >= 2.3x: INVALID_ARG, i.e. HTTP 400 and gRPC INVALID_ARGUMENT.
            return Err(MockError::invalid(format!(
                "Request for unknown model: '{model}' is not found"
            )));
        }
        if self.control.is_unloaded(model) {
            return Err(MockError::invalid(format!(
                "Request for unknown model: '{model}' has no available versions"
            )));
        }
        if !self.control.serves_version(version) {
            return Err(MockError::not_found(format!(
                "Request for unknown model: '{model}' version {version} is not found"
            )));
        }
        Ok(())
    }

    /// A repository load (`load`) or unload of `model`, as Triton in explicit
    /// model-control mode does them: a model its repository lacks fails to load.
    fn load_or_unload(&self, model: &str, load: bool) -> Result<(), MockError> {
        let action = if load { "load" } else { "unload" };
        self.control
            .repository_calls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(format!("{action} {model}"));
        if load && !self.serves(model) {
            return Err(MockError::invalid(format!(
                "failed to load '{model}', failed to poll from model repository"
            )));
        }
        let mut unloaded = self
            .control
            .unloaded
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        unloaded.retain(|m| m != model);
        if !load && self.serves(model) {
            unloaded.push(model.to_owned());
        }
        Ok(())
    }

    /// A served model's repository index state and reason.
    fn index_state(&self, model: &str) -> (&'static str, &'static str) {
        if self.control.is_unloaded(model) {
            ("UNAVAILABLE", "unloaded")
        } else {
            ("READY", "")
        }
    }

    fn is_ready(&self, model: &str, version: &str) -> bool {
        self.resolve(model, version).is_ok() && self.control.model_ready(model)
    }

    fn record(&self, model: &str, started: Instant, ok: bool) {
        let ns = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let mut stats = self.stats.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = stats.entry(model.to_string()).or_default();
        if ok {
            entry.success_count += 1;
            entry.success_ns = entry.success_ns.saturating_add(ns);
            entry.last_inference_ms = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        } else {
            entry.fail_count += 1;
            entry.fail_ns = entry.fail_ns.saturating_add(ns);
        }
    }

    /// Triton's Prometheus metrics (the part Trident reads) for every served model.
    fn metrics_text(&self) -> String {
        let pending = self.control.pending.load(Ordering::Relaxed);
        let mut text = String::from(
            "# TYPE nv_inference_pending_request_count gauge\n\
             # TYPE nv_inference_queue_duration_us counter\n\
             # TYPE nv_inference_request_success counter\n",
        );
        for model in &self.models {
            let stats = self.stats_of(model);
            let labels = format!("model=\"{model}\",version=\"{MODEL_VERSION}\"");
            text.push_str(&format!(
                "nv_inference_pending_request_count{{{labels}}} {pending}\n\
                 nv_inference_queue_duration_us{{{labels}}} 0\n\
                 nv_inference_request_success{{{labels}}} {}\n",
                stats.success_count
            ));
        }
        text
    }

    fn stats_of(&self, model: &str) -> ModelStats {
        let stats = self.stats.lock().unwrap_or_else(PoisonError::into_inner);
        stats.get(model).copied().unwrap_or_default()
    }

    /// Models selected by a stats request: one (validated) or all.
    fn stats_models(&self, model: Option<&str>, version: &str) -> Result<Vec<String>, MockError> {
        match model {
            Some(m) if !m.is_empty() => {
                self.resolve(m, version)?;
                Ok(vec![m.to_string()])
            }
            _ => Ok(self.models.clone()),
        }
    }
}

/// The identity model's output name for an input name.
fn output_name(input: &str) -> String {
    match input.strip_prefix("INPUT") {
        Some(rest) => format!("OUTPUT{rest}"),
        None => input.to_string(),
    }
}

/// Picks the inputs to echo, in answer order, honouring an explicit list of requested
/// outputs as Triton does (unknown requested names are an error).
fn select_outputs<'a>(
    model: &str,
    output_names: &[String],
    requested: impl ExactSizeIterator<Item = &'a str>,
) -> Result<Vec<usize>, MockError> {
    if requested.len() == 0 {
        return Ok((0..output_names.len()).collect());
    }
    requested
        .map(|want| {
            output_names.iter().position(|n| n == want).ok_or_else(|| {
                MockError::invalid(format!(
                    "unexpected inference output '{want}' for model '{model}'"
                ))
            })
        })
        .collect()
}

/// Clamps a requested sleep so that absurd values cannot overflow timers.
fn sleep_duration(ms: i128) -> Option<Duration> {
    let ms = u64::try_from(ms.clamp(0, i128::from(u32::MAX))).unwrap_or(0);
    (ms > 0).then(|| Duration::from_millis(ms))
}
