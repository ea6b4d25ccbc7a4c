//! The TOML file format, as operators write it. Nothing here is validated
//! beyond types: [`super::validate`] turns it into the [`super::model`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `[server]`
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerFile {
    /// HTTP/1.1 and h2c listener for `tritonclient.http` (Triton's port 8000).
    pub http_listen: Option<String>,
    /// h2c listener for `tritonclient.grpc` (Triton's port 8001).
    pub grpc_listen: Option<String>,
    /// `/metrics`, `/live`, `/ready`.
    pub admin_listen: Option<String>,
    /// Worker threads, each serving every listener; default: the number of CPUs.
    pub threads: Option<usize>,
    /// Seconds listeners keep accepting after SIGTERM, while `/ready` answers 503, so
    /// that load balancers (Kubernetes endpoints) stop sending first; responses meanwhile
    /// close HTTP/1 connections and h2 clients get GOAWAY, so they reconnect. Default 5.
    #[serde(default = "default::server_drain_delay_secs")]
    pub drain_delay_secs: u64,
    /// Seconds in-flight requests and streams may take to finish once listeners are
    /// closed; those still running then are cut, logged and counted. Default 30.
    #[serde(default = "default::server_shutdown_timeout_secs")]
    pub shutdown_timeout_secs: u64,
    /// The Unix socket where SIGQUIT hands the listening sockets to a new
    /// `trident run --upgrade` process. Its directory must be private (owned by
    /// Trident's user, no group or other access). Default:
    /// `$XDG_RUNTIME_DIR/trident/upgrade.sock`, or `/tmp/trident-UID/upgrade.sock`.
    pub upgrade_socket: Option<String>,
    /// Seconds between resolutions of the endpoint host names: every address a name
    /// has becomes an endpoint (a Kubernetes headless Service: one per pod), and an
    /// address that stays keeps its state (latency, ejection, sequences). Default 30;
    /// 0: resolved once, at start and at each reload.
    #[serde(default = "default::server_resolve_interval_secs")]
    pub resolve_interval_secs: u64,
    /// The access log, one JSON line per request: where it goes as a string ("stdout",
    /// the default, "stderr", "off" or a file path), or a table ([`AccessLogFile`]).
    #[serde(default, deserialize_with = "string_or_table")]
    pub access_log: AccessLogFile,
    /// Names of `[filters.*]` every request runs, before its route's own; default none.
    #[serde(default)]
    pub filters: Vec<String>,
    /// Longest a client may take to send a whole request header: from connection start
    /// (or, on a kept-alive connection, from the request's first byte) to its end, however
    /// the bytes trickle in; for h2c, the connection preface and handshake. Like haproxy's
    /// `timeout http-request`. Default 10000.
    #[serde(default = "default::server_header_read_timeout_ms")]
    pub header_read_timeout_ms: u64,
    /// How long a client connection may sit with no request: between HTTP/1 keep-alive
    /// requests, or with no open h2 stream. Like nginx's `keepalive_timeout`. Default 60000.
    #[serde(default = "default::server_idle_timeout_ms")]
    pub idle_timeout_ms: u64,
    /// Client connections open at once over both listeners; one more is closed at once
    /// and counted in `trident_downstream_connections_refused_total`. Default 4096.
    #[serde(default = "default::server_max_connections")]
    pub max_connections: u32,
    /// Seconds a client connection may be silent before the kernel probes it (TCP
    /// keepalive, then 5 probes 10 s apart), so dead peers free their connection. Default 60;
    /// 0 disables.
    #[serde(default = "default::server_tcp_keepalive_secs")]
    pub tcp_keepalive_secs: u64,
    /// Most request body bytes Trident reads and drops to keep an HTTP/1.1 connection
    /// open after answering a request itself (a filter's 401 or 429, no route…); a
    /// longer body closes the connection (`Connection: close`). Default 1048576 (1 MiB);
    /// 0 closes after every such answer to a request with a body.
    #[serde(default = "default::server_discard_body_bytes")]
    pub discard_body_bytes: usize,
    /// How long Trident reads and drops such a body: before answering, to keep the
    /// connection; past `discard_body_bytes`, after answering, so that closing does not
    /// reset the connection before the client read the answer. Default 2000.
    #[serde(default = "default::server_discard_body_timeout_ms")]
    pub discard_body_timeout_ms: u64,
    // -- Overload (issue 13 §5) --
    /// Request body bytes all mirror copies together may hold while their mirror
    /// lags; a copy that would go past it is dropped (`result="dropped_budget"`).
    /// Default 67108864 (64 MiB).
    #[serde(default = "default::server_mirror_body_budget_bytes")]
    pub mirror_body_budget_bytes: usize,
    /// TLS on the proxy listeners (`[server.tls]`); without it they speak plain HTTP/1.1 and h2c.
    pub tls: Option<ServerTlsFile>,
    // -- Edge limits and headers (issue 18) --
    /// Most bytes of a request header (request line or pseudo-headers, names and values);
    /// larger: 431 / RESOURCE_EXHAUSTED. Default 65536 (64 KiB), at most 1048575 (Pingora's
    /// own HTTP/1 limit; h2 clients are held to 64 KiB of header list by the h2 settings).
    #[serde(default = "default::server_max_request_header_bytes")]
    pub max_request_header_bytes: usize,
    /// Default of the routes' `max_request_bytes`: 268435456 (256 MiB).
    #[serde(default = "default::server_max_request_bytes")]
    pub max_request_bytes: u64,
    /// Default of the routes' `max_grpc_message_bytes`: 268435456 (256 MiB).
    #[serde(default = "default::server_max_request_bytes")]
    pub max_grpc_message_bytes: u64,
    /// A response header naming the endpoint (`host:port` as configured) that answered;
    /// not on Trident's own answers. Default: none.
    pub served_by_header: Option<String>,
    /// `[server.repository]`: model repository calls Trident fans out to a pool.
    #[serde(default)]
    pub repository: RepositoryFile,
    /// `[server.admin_auth]`: who may use the admin listener; absent: anyone who reaches it.
    pub admin_auth: Option<AdminAuthFile>,
}

impl Default for ServerFile {
    /// An absent `[server]` is an empty one: every key at its serde default.
    fn default() -> Self {
        ServerFile::deserialize(toml::Value::Table(toml::Table::new()))
            .expect("every key of [server] is optional")
    }
}

/// The defaults of keys that have one regardless of others: `check --print`
/// shows them, and validation reads them from here only.
mod default {
    pub fn endpoint_weight() -> u32 {
        1
    }
    pub fn route_access_log() -> bool {
        true
    }
    pub fn server_drain_delay_secs() -> u64 {
        5
    }
    pub fn server_shutdown_timeout_secs() -> u64 {
        30
    }
    pub fn server_resolve_interval_secs() -> u64 {
        30
    }
    pub fn server_header_read_timeout_ms() -> u64 {
        10_000
    }
    pub fn server_idle_timeout_ms() -> u64 {
        60_000
    }
    pub fn server_max_connections() -> u32 {
        4096
    }
    pub fn server_tcp_keepalive_secs() -> u64 {
        60
    }
    pub fn server_discard_body_bytes() -> usize {
        crate::config::DEFAULT_DISCARD_BODY_BYTES
    }
    pub fn server_discard_body_timeout_ms() -> u64 {
        2_000
    }
    pub fn server_mirror_body_budget_bytes() -> usize {
        crate::config::DEFAULT_MIRROR_BODY_BUDGET
    }
    pub fn server_max_request_header_bytes() -> usize {
        crate::config::edge::DEFAULT_MAX_REQUEST_HEADER_BYTES
    }
    pub fn server_max_request_bytes() -> u64 {
        crate::config::edge::DEFAULT_MAX_REQUEST_BYTES
    }
    pub fn pool_connect_timeout_ms() -> u64 {
        2_000
    }
    pub fn pool_read_timeout_ms() -> u64 {
        60_000
    }
    pub fn pool_idle_timeout_ms() -> u64 {
        60_000
    }
    pub fn pool_max_h2_streams() -> usize {
        128
    }
    pub fn pool_max_wildcard_models() -> usize {
        64
    }
    pub fn yes() -> bool {
        true
    }
    pub fn mirror_absolute_tolerance() -> f64 {
        1e-6
    }
    pub fn mirror_relative_tolerance() -> f64 {
        1e-4
    }
    pub fn mirror_max_concurrent() -> usize {
        16
    }
    pub fn mirror_queue() -> usize {
        64
    }
    pub fn mirror_buffer_bytes() -> usize {
        8 << 20
    }
    pub fn mirror_max_response_bytes() -> usize {
        64 << 20
    }
    pub fn mirror_timeout_ms() -> u64 {
        10_000
    }
    pub fn mirror_log_mismatches_per_minute() -> u32 {
        6
    }
    pub fn jwt_jwks_refresh_secs() -> u64 {
        300
    }
    pub fn jwt_jwks_min_refresh_secs() -> u64 {
        10
    }
    pub fn jwt_jwks_timeout_ms() -> u64 {
        2_000
    }
    pub fn jwt_leeway_secs() -> u64 {
        30
    }
    pub fn jwt_required_claims() -> Vec<String> {
        vec!["exp".to_owned()]
    }
    pub fn jwt_header() -> String {
        "authorization".to_owned()
    }
    pub fn jwt_cache_capacity() -> usize {
        10_000
    }
    pub fn api_key_header() -> String {
        "x-api-key".to_owned()
    }
    pub fn rate_limit_fleet_size() -> u32 {
        1
    }
    pub fn rate_limit_max_keys() -> usize {
        100_000
    }
    pub fn tls_min_version() -> String {
        "1.2".to_owned()
    }
    pub fn tls_watch_interval_ms() -> u64 {
        5_000
    }
    pub fn pool_tls_protocols() -> Vec<String> {
        vec!["http".to_owned(), "grpc".to_owned()]
    }
    pub fn tracing_protocol() -> String {
        "grpc".to_owned()
    }
    pub fn tracing_sample_ratio() -> f64 {
        crate::config::tracing::DEFAULT_SAMPLE_RATIO
    }
    pub fn tracing_service_name() -> String {
        "trident".to_owned()
    }
    pub fn tracing_queue_spans() -> usize {
        crate::config::tracing::DEFAULT_QUEUE_SPANS
    }
    pub fn tracing_batch_spans() -> usize {
        crate::config::tracing::DEFAULT_BATCH_SPANS
    }
    pub fn tracing_batch_bytes() -> usize {
        crate::config::tracing::DEFAULT_BATCH_BYTES
    }
    pub fn tracing_attribute_value_bytes() -> usize {
        crate::config::tracing::DEFAULT_ATTRIBUTE_VALUE_BYTES
    }
    pub fn tracing_export_interval_ms() -> u64 {
        crate::config::tracing::DEFAULT_EXPORT_INTERVAL_MS
    }
    pub fn tracing_export_timeout_ms() -> u64 {
        crate::config::tracing::DEFAULT_EXPORT_TIMEOUT_MS
    }
}

/// `[server.repository]`
#[derive(Debug, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct RepositoryFile {
    /// Most request body bytes of a repository call Trident fans out (a load may carry a
    /// config override and model files); a longer one is refused with 413 /
    /// RESOURCE_EXHAUSTED. The most an endpoint's answer may have too.
    #[serde(default = "default_repository_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Endpoints one fanned-out call asks at once.
    #[serde(default = "default_repository_concurrency")]
    pub concurrency: usize,
}

impl Default for RepositoryFile {
    fn default() -> Self {
        RepositoryFile {
            max_body_bytes: default_repository_max_body_bytes(),
            concurrency: default_repository_concurrency(),
        }
    }
}

fn default_repository_max_body_bytes() -> usize {
    16 << 20
}

fn default_repository_concurrency() -> usize {
    16
}

/// `[server.admin_auth]`: the admin listener's protection. With both `token_file` and
/// `allow_networks`, a request needs both.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdminAuthFile {
    /// A file holding the bearer token requests must send (`Authorization: Bearer
    /// <token>`), read at start and at each reload; a trailing newline is ignored.
    /// A path, not the secret: printing it reveals nothing.
    pub token_file: Option<String>,
    /// Client networks (CIDR, or one address) allowed to connect, by the TCP peer
    /// address; default: empty, any network.
    #[serde(default)]
    pub allow_networks: Vec<String>,
    /// Paths answered without either check: the probes and the scrape, so that
    /// kubelets and Prometheus need no secret. Default `["/live", "/ready", "/metrics"]`.
    #[serde(default = "default_admin_open_paths")]
    pub open_paths: Vec<String>,
}

fn default_admin_open_paths() -> Vec<String> {
    ["/live", "/ready", "/metrics"].map(String::from).to_vec()
}

/// `server.access_log` as a table; the string form is its `output` alone.
#[derive(Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AccessLogFile {
    /// "stdout" (default), "stderr", "off", or a file path (relative to the config
    /// file's directory), appended to and reopened on SIGUSR1.
    pub output: String,
    /// Share of the requests that succeed which are logged, 0–1; default 1.
    pub sample_ratio: f64,
    /// Whether failed requests are sampled too; default false: every failure is logged.
    pub sample_errors: bool,
}

impl Default for AccessLogFile {
    fn default() -> Self {
        AccessLogFile {
            output: "stdout".to_owned(),
            sample_ratio: 1.0,
            sample_errors: false,
        }
    }
}

/// Reads `server.access_log`: a string is the table's `output` alone.
fn string_or_table<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<AccessLogFile, D::Error> {
    struct StringOrTable;
    impl<'de> serde::de::Visitor<'de> for StringOrTable {
        type Value = AccessLogFile;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("\"stdout\", \"stderr\", \"off\", a file path, or a table")
        }
        fn visit_str<E: serde::de::Error>(self, output: &str) -> Result<AccessLogFile, E> {
            Ok(AccessLogFile {
                output: output.to_owned(),
                ..AccessLogFile::default()
            })
        }
        fn visit_map<M: serde::de::MapAccess<'de>>(
            self,
            map: M,
        ) -> Result<AccessLogFile, M::Error> {
            AccessLogFile::deserialize(serde::de::value::MapAccessDeserializer::new(map))
        }
    }
    deserializer.deserialize_any(StringOrTable)
}

/// `[log]`: Trident's own messages (the error log), on stderr.
#[derive(Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogFile {
    /// Which messages are written, in `RUST_LOG` syntax (`"info"`, `"warn,trident=debug"`);
    /// default `"info,pingora_core=warn,rustls=error"`. `RUST_LOG`, when set, takes its place.
    pub level: String,
    /// "text" (default) or "json": one object per line.
    pub format: String,
}

impl Default for LogFile {
    fn default() -> Self {
        LogFile {
            level: super::DEFAULT_LOG_LEVEL.to_owned(),
            format: "text".to_owned(),
        }
    }
}

/// `[tracing]`: OTLP export of request spans (issue 17); absent: tracing is off.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TracingFile {
    /// The collector: `http://host:port` (OTLP/gRPC, usually port 4317), or for
    /// http/protobuf the base URL spans are posted to at `/v1/traces` (usually port 4318;
    /// a URL with a path is used as it is). https is not supported yet.
    pub endpoint: String,
    /// "grpc" (default) or "http/protobuf".
    #[serde(default = "default::tracing_protocol")]
    pub protocol: String,
    /// Share of requests without a `traceparent` that are traced, 0.0 to 1.0; a request
    /// with one follows its sampled flag. Default 0.01.
    #[serde(default = "default::tracing_sample_ratio")]
    pub sample_ratio: f64,
    /// The `service.name` of Trident's spans. Default "trident".
    #[serde(default = "default::tracing_service_name")]
    pub service_name: String,
    /// Finished spans waiting for export, besides the up to 64 each request thread
    /// gathers before handing them over; past it new spans are dropped and counted
    /// (`trident_trace_spans_dropped_total{reason="queue_full"}`). Default 2048.
    #[serde(default = "default::tracing_queue_spans")]
    pub queue_spans: usize,
    /// Spans per export request, at most (and at most `queue_spans`). Default 512.
    #[serde(default = "default::tracing_batch_spans")]
    pub batch_spans: usize,
    /// Bytes per export request, at most (64 KiB to 64 MiB): under what the collector
    /// takes (OTLP/gRPC receivers refuse messages over 4 MiB by default). Default 1048576.
    #[serde(default = "default::tracing_batch_bytes")]
    pub batch_bytes: usize,
    /// The longest text attribute value, in bytes (16 to 65536): longer ones (a path, a
    /// user agent: the client chooses them) are cut. Default 256.
    #[serde(default = "default::tracing_attribute_value_bytes")]
    pub attribute_value_bytes: usize,
    /// The longest a finished span waits for its batch to fill. Default 1000.
    #[serde(default = "default::tracing_export_interval_ms")]
    pub export_interval_ms: u64,
    /// The longest one export request may take; its spans are dropped past it. Default 5000.
    #[serde(default = "default::tracing_export_timeout_ms")]
    pub export_timeout_ms: u64,
    /// Extra request headers (gRPC metadata) sent to the collector, e.g. authorization.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// `[server.tls]`: client-facing TLS.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTlsFile {
    /// PEM certificate chain, leaf first: the certificate for clients whose server
    /// name (SNI) no `[[server.tls.sni]]` entry names, or that send none.
    pub cert_file: String,
    /// PEM private key of `cert_file` (PKCS#8, PKCS#1 or SEC1).
    pub key_file: String,
    /// Oldest TLS version accepted: "1.2" (default) or "1.3".
    #[serde(default = "default::tls_min_version")]
    pub min_version: String,
    /// Which proxy listeners speak TLS: "http", "grpc"; default both (those set).
    pub listeners: Option<Vec<String>>,
    /// PEM CA certificates client certificates are verified against (mutual TLS).
    pub client_ca_file: Option<String>,
    /// Whether a client must present a certificate; default true when `client_ca_file` is set.
    /// When false, a presented certificate is still verified.
    pub require_client_cert: Option<bool>,
    /// A request header set to the verified client certificate's identity (its first URI
    /// or DNS subject alternative name, else its subject common name) before filters run
    /// and sent upstream; any copy the client sent is removed.
    pub client_identity_header: Option<String>,
    /// How often the certificate, key and CA files are checked for changes, in ms; changed
    /// files are loaded for new connections, a bad change keeps the certificates in use
    /// (and is logged). Default 5000; 0: only at a reload.
    #[serde(default = "default::tls_watch_interval_ms")]
    pub watch_interval_ms: u64,
    /// More certificates, chosen by the server name clients ask for (SNI).
    pub sni: Option<Vec<SniFile>>,
}

/// `[[server.tls.sni]]`
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SniFile {
    /// Names this certificate is for: exact (`a.example.com`) or one wildcard label
    /// (`*.example.com`, which does not match `example.com` itself).
    pub server_names: Vec<String>,
    pub cert_file: String,
    pub key_file: String,
}

/// `[pools.tls]`: TLS to the pool's endpoints.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PoolTlsFile {
    /// PEM CA certificates endpoints' certificates are verified against; default: the
    /// system's roots.
    pub ca_file: Option<String>,
    /// The name sent as SNI and verified in endpoints' certificates; default: the
    /// endpoint's host as written (a name or an IP address).
    pub server_name: Option<String>,
    /// PEM certificate chain Trident presents to endpoints (mutual TLS); with `client_key_file`.
    pub client_cert_file: Option<String>,
    pub client_key_file: Option<String>,
    /// Accept any endpoint certificate: for tests only; logged as a warning at start.
    #[serde(default)]
    pub insecure_skip_verify: bool,
    /// Which endpoint addresses speak TLS: any of "http", "grpc", "metrics"; default
    /// ["http", "grpc"]. (Triton itself serves TLS on gRPC only.)
    #[serde(default = "default::pool_tls_protocols")]
    pub protocols: Vec<String>,
}

/// `[[pools]]`
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PoolFile {
    pub name: String,
    pub endpoints: Vec<EndpointFile>,
    /// TCP connect timeout; default 2000.
    #[serde(default = "default::pool_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Longest wait for any upstream read (response headers, each body chunk); 0 disables.
    /// Default 60000.
    #[serde(default = "default::pool_read_timeout_ms")]
    pub read_timeout_ms: u64,
    /// How long an idle upstream connection is kept for reuse; default 60000.
    #[serde(default = "default::pool_idle_timeout_ms")]
    pub idle_timeout_ms: u64,
    /// Concurrent gRPC streams per upstream h2 connection; default 128.
    #[serde(default = "default::pool_max_h2_streams")]
    pub max_h2_streams: usize,
    /// Models reaching the pool only through the `*` route that get their own balancing,
    /// ejection and readiness state and metric series, once they answered successfully;
    /// default 64, at most 4096. Others share one state, labelled `model="_other"`.
    #[serde(default = "default::pool_max_wildcard_models")]
    pub max_wildcard_models: usize,
    /// `[pools.balancer]`: how an endpoint is chosen.
    #[serde(default)]
    pub balancer: BalancerFile,
    /// `[pools.load_metrics]`: blend Triton's own queue metrics into the balancer's cost.
    pub load_metrics: Option<LoadMetricsFile>,
    /// `[pools.outlier]`: passive ejection of failing endpoints.
    #[serde(default)]
    pub outlier: OutlierFile,
    /// `[pools.health]`: active readiness checks.
    #[serde(default)]
    pub health: HealthFile,
    /// `[pools.retry]`: which failed requests are tried again on another endpoint.
    #[serde(default)]
    pub retry: RetryFile,
    /// `[pools.sequences]`: sequence affinity for stateful models.
    #[serde(default)]
    pub sequences: SequencesFile,
    /// `[pools.circuit_breaker]`: caps on requests in flight and waiting for a connection.
    #[serde(default)]
    pub circuit_breaker: CircuitBreakerFile,
    /// `[pools.tls]`: TLS to the endpoints; without it they are spoken to in plain text.
    pub tls: Option<PoolTlsFile>,
}

/// `[pools.balancer]`
#[derive(Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct BalancerFile {
    /// "peak_ewma" (default), "least_request" or "round_robin".
    pub strategy: StrategyFile,
    /// How fast the latency estimate forgets a slow answer; default 10000.
    pub half_life_ms: u64,
    /// Latency assumed for an endpoint (and model) before its first answer; default 30.
    pub default_rtt_ms: u64,
    /// Latency recorded for a failure or a 429 / RESOURCE_EXHAUSTED; default 1000.
    pub failure_penalty_ms: u64,
}

impl Default for BalancerFile {
    /// The balancer's own defaults.
    fn default() -> Self {
        let settings = filters::balance::BalanceSettings::default();
        BalancerFile {
            strategy: StrategyFile::PeakEwma,
            half_life_ms: millis(settings.half_life),
            default_rtt_ms: millis(settings.default_rtt),
            failure_penalty_ms: millis(settings.failure_penalty),
        }
    }
}

fn millis(duration: std::time::Duration) -> u64 {
    duration.as_millis() as u64
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StrategyFile {
    PeakEwma,
    LeastRequest,
    RoundRobin,
}

/// `[pools.load_metrics]`: scrapes each endpoint's `metrics` address.
#[derive(Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoadMetricsFile {
    /// Default 1000.
    pub interval_ms: u64,
    /// Figures older than this are ignored; default 3 × interval.
    pub stale_after_ms: Option<u64>,
    /// Default 500.
    pub timeout_ms: u64,
}

impl Default for LoadMetricsFile {
    fn default() -> Self {
        LoadMetricsFile {
            interval_ms: 1_000,
            stale_after_ms: None,
            timeout_ms: 500,
        }
    }
}

/// `[pools.outlier]`; absent: every key at its default (ejection stays on).
#[derive(Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutlierFile {
    /// Failures in a row that eject an endpoint (for one model, or for all on connect
    /// failures); default 5, 0 disables.
    pub consecutive_failures: u32,
    /// How often the success-rate and failure-percentage detectors run; default 10000.
    pub interval_ms: u64,
    /// First ejection; each further one lasts one more multiple. Default 30000.
    pub base_ejection_ms: u64,
    /// Default 300000.
    pub max_ejection_ms: u64,
    /// Default 50; one endpoint may always be ejected.
    pub max_ejection_percent: u32,
    /// Eject endpoints whose success rate is far below the others'; on by default.
    pub success_rate: SuccessRateFile,
    /// Eject endpoints failing more than a fixed share of requests; off by default.
    pub failure_percentage: Option<FailurePercentageFile>,
}

impl Default for OutlierFile {
    /// The detectors' own defaults (Envoy's).
    fn default() -> Self {
        let settings = filters::outlier::OutlierSettings::default();
        OutlierFile {
            consecutive_failures: settings.consecutive_failures,
            interval_ms: millis(settings.interval),
            base_ejection_ms: millis(settings.base_ejection),
            max_ejection_ms: millis(settings.max_ejection),
            max_ejection_percent: settings.max_ejection_percent,
            success_rate: SuccessRateFile::default(),
            failure_percentage: None,
        }
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SuccessRateFile {
    /// Default true.
    pub enabled: bool,
    /// Default 5.
    pub min_hosts: u32,
    /// Requests an endpoint needs in an interval to be judged; default 100.
    pub request_volume: u32,
    /// Ejected below mean − factor × stdev; default 1.9.
    pub stdev_factor: f64,
}

impl Default for SuccessRateFile {
    fn default() -> Self {
        let settings = filters::outlier::SuccessRateSettings::default();
        SuccessRateFile {
            enabled: true,
            min_hosts: settings.min_hosts,
            request_volume: settings.request_volume,
            stdev_factor: settings.stdev_factor,
        }
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct FailurePercentageFile {
    /// Default true once the table is present.
    pub enabled: bool,
    /// Default 85.
    pub threshold_percent: u32,
    /// Default 5.
    pub min_hosts: u32,
    /// Default 50.
    pub request_volume: u32,
}

impl Default for FailurePercentageFile {
    fn default() -> Self {
        let settings = filters::outlier::FailurePercentageSettings::default();
        FailurePercentageFile {
            enabled: true,
            threshold_percent: settings.threshold_percent,
            min_hosts: settings.min_hosts,
            request_volume: settings.request_volume,
        }
    }
}

/// `[pools.health]`: GET `/v2/health/ready` and `/v2/models/{m}/ready` (or the gRPC
/// ServerReady / ModelReady calls for gRPC-only endpoints). Absent: on, every key at
/// its default.
#[derive(Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthFile {
    /// Default true.
    pub enabled: bool,
    /// Default 5000.
    pub interval_ms: u64,
    /// How often an endpoint (or a model on it) that failed its checks is checked
    /// again, so a recovered server rejoins quickly; default 1000, at most `interval_ms`
    /// (Envoy's `unhealthy_interval`).
    pub unhealthy_interval_ms: u64,
    /// Default 1000.
    pub timeout_ms: u64,
    /// Failed checks in a row that take an endpoint (or a model on it) out; default 2.
    pub unhealthy_threshold: u32,
    /// Passed checks in a row that bring it back; default 1.
    pub healthy_threshold: u32,
    /// Also check each routed model's readiness; default true.
    pub models: bool,
}

impl Default for HealthFile {
    fn default() -> Self {
        HealthFile {
            enabled: true,
            interval_ms: 5_000,
            unhealthy_interval_ms: 1_000,
            timeout_ms: 1_000,
            unhealthy_threshold: 2,
            healthy_threshold: 1,
            models: true,
        }
    }
}

/// `[pools.retry]`
#[derive(Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryFile {
    /// Further tries after the first; default 2, 0 disables retries.
    pub max_retries: u32,
    /// HTTP statuses retried on another endpoint; default [503].
    pub on_status: Vec<u16>,
    /// gRPC codes (names like "UNAVAILABLE") of trailers-only answers retried; default ["UNAVAILABLE"].
    pub on_grpc_status: Vec<String>,
    /// Retries allowed as a share of requests (over 10 s); default 0.2.
    pub budget_ratio: f64,
    /// Retries always allowed per second on top of the ratio; default 10.
    pub budget_min_per_second: u32,
    /// Default 25.
    pub backoff_base_ms: u64,
    /// Default 250.
    pub backoff_max_ms: u64,
    /// Largest request body kept for a retry after a response; default and most 65536.
    pub max_body_bytes: usize,
}

impl Default for RetryFile {
    fn default() -> Self {
        RetryFile {
            max_retries: 2,
            on_status: vec![503],
            on_grpc_status: vec!["UNAVAILABLE".to_owned()],
            budget_ratio: 0.2,
            budget_min_per_second: 10,
            backoff_base_ms: 25,
            backoff_max_ms: 250,
            max_body_bytes: super::resilience::RETRY_BUFFER_LIMIT,
        }
    }
}

/// `[pools.sequences]`
#[derive(Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SequencesFile {
    /// Read the sequence control of infer requests; default true. Off saves reading
    /// the start of every infer body for pools without stateful models.
    pub enabled: bool,
    /// A sequence with no request for this long is forgotten; default 600.
    pub idle_timeout_secs: u64,
    /// Most sequences tracked; default 100000.
    pub max_sequences: usize,
    /// How a sequence's endpoint is chosen at `sequence_start`; default "table".
    pub placement: PlacementFile,
}

impl Default for SequencesFile {
    fn default() -> Self {
        SequencesFile {
            enabled: true,
            idle_timeout_secs: 600,
            max_sequences: 100_000,
            placement: PlacementFile::default(),
        }
    }
}

/// `sequences.placement`
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PlacementFile {
    /// The balancer picks, and this proxy's sequence table remembers: a fleet of
    /// proxies sends a sequence where the one that saw its start did, only if the
    /// clients stick to that proxy.
    #[default]
    Table,
    /// Rendezvous hashing of (model, sequence id) over the pool's usable endpoints:
    /// every proxy of a fleet picks the same endpoint with no shared state.
    Hash,
}

/// `[pools.circuit_breaker]`: past a cap, a request is refused at once with
/// 503 + `Retry-After` / `UNAVAILABLE` (Envoy's circuit breakers). The defaults are
/// Envoy's: high enough never to bind a healthy pool.
#[derive(Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct CircuitBreakerFile {
    /// Requests in flight to the pool (retries included: a retry is the same request);
    /// default 1024.
    pub max_requests: usize,
    /// Requests waiting for an upstream connection; default 1024.
    pub max_pending: usize,
}

impl Default for CircuitBreakerFile {
    fn default() -> Self {
        CircuitBreakerFile {
            max_requests: 1024,
            max_pending: 1024,
        }
    }
}

/// One Triton server: its HTTP and/or gRPC address.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointFile {
    pub http: Option<String>,
    pub grpc: Option<String>,
    /// Triton's metrics port (`host:8002`), scraped when `[pools.load_metrics]` is set.
    pub metrics: Option<String>,
    /// Share of traffic relative to the pool's other endpoints; default 1.
    #[serde(default = "default::endpoint_weight")]
    pub weight: u32,
}

/// `[[routes]]`
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteFile {
    /// An exact model name, or "*" for the default route.
    pub model: String,
    pub pool: String,
    /// Names of `[filters.*]` this route's requests run, after `server.filters`; default
    /// none.
    #[serde(default)]
    pub filters: Vec<String>,
    /// Longest a request may take, retries included, to the end of its answer however
    /// slowly the upstream sends it; a gRPC `grpc-timeout` shortens it. A streaming call
    /// (`ModelStreamInfer`, `generate_stream`) is bound by it only until its answer starts.
    /// Default: none (the pool's `read_timeout_ms` still applies).
    pub timeout_ms: Option<u64>,
    /// `[[routes.splits]]`: other sides (pools or model versions) that take a share of
    /// this route's requests; the rest go to `pool`.
    pub splits: Option<Vec<SplitFile>>,
    /// `[routes.mirror]`: copies of a sample of this route's infer requests, sent to a
    /// mirror pool and compared with the primary's answers.
    pub mirror: Option<MirrorFile>,
    /// Whether this route's requests are in the access log; default true.
    #[serde(default = "default::route_access_log")]
    pub access_log: bool,
    /// The Triton APIs this route's clients may call; others get 403 / PERMISSION_DENIED.
    /// Default: every one. The default route's list also governs server-level calls.
    pub apis: Option<Vec<crate::protocol::api::Api>>,
    /// How repository load / unload calls are served; default `fan_out`.
    #[serde(default)]
    pub repository: super::RepositoryMode,
    /// Most bytes of an HTTP request body: a larger `Content-Length` is answered 413 before
    /// anything is forwarded, a chunked body is cut (413) once past it. gRPC calls are held
    /// to `max_grpc_message_bytes` per message instead (a stream may run for hours).
    /// Default: `server.max_request_bytes`.
    pub max_request_bytes: Option<u64>,
    /// Most bytes of one gRPC message; a larger one ends the call with RESOURCE_EXHAUSTED.
    /// Default: `server.max_grpc_message_bytes`.
    pub max_grpc_message_bytes: Option<u64>,
    /// `[routes.headers]`: headers set or removed on the way up and down.
    pub headers: Option<HeadersFile>,
}

/// `[routes.headers]`: applied to every request of the route (after its filters) and to
/// every answer from upstream (not to Trident's own error answers, nor to gRPC trailers).
#[derive(Debug, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct HeadersFile {
    /// Header → value set on the request sent upstream (replacing the client's).
    #[serde(default)]
    pub request_set: BTreeMap<String, String>,
    /// Headers removed from the request sent upstream.
    #[serde(default)]
    pub request_remove: Vec<String>,
    /// Header → value set on the answer to the client (replacing upstream's).
    #[serde(default)]
    pub response_set: BTreeMap<String, String>,
    /// Headers removed from the answer to the client.
    #[serde(default)]
    pub response_remove: Vec<String>,
}

/// `[[routes.splits]]`: one side of a canary split. A side takes the requests its
/// `header` or `claim` rule matches, and `percent` of the others.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SplitFile {
    /// Default: the route's pool (for a version split).
    pub pool: Option<String>,
    /// Send this side's requests to this model version (rewriting the HTTP path or the
    /// gRPC message); default: the version the client asked for.
    pub version: Option<String>,
    /// Share of the requests no rule took, 0–100; default 0.
    #[serde(default)]
    pub percent: f64,
    /// Requests carrying this header go to this side...
    pub header: Option<String>,
    /// ...with this value, when set.
    pub header_value: Option<String>,
    /// Requests whose verified JWT has this claim go to this side (needs a `jwt` filter)...
    pub claim: Option<String>,
    /// ...equal to (or, for an array claim, containing) this value, when set.
    pub claim_value: Option<String>,
}

/// `[routes.mirror]`
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MirrorFile {
    pub pool: String,
    /// Send the copies to this model version; default: the version the client asked for.
    pub version: Option<String>,
    /// Share of the requests copied, 0–100; default 100 without a rule, 0 with one.
    pub percent: Option<f64>,
    /// Requests carrying this header are copied...
    pub header: Option<String>,
    /// ...with this value, when set.
    pub header_value: Option<String>,
    /// Requests whose verified JWT has this claim are copied...
    pub claim: Option<String>,
    /// ...equal to (or containing) this value, when set.
    pub claim_value: Option<String>,
    /// Compare the mirror's answers with the primary's; default true.
    #[serde(default = "default::yes")]
    pub compare: bool,
    /// Tensor values match when |primary − mirror| ≤ absolute + relative × |primary|.
    /// Default 1e-6.
    #[serde(default = "default::mirror_absolute_tolerance")]
    pub absolute_tolerance: f64,
    /// Default 1e-4.
    #[serde(default = "default::mirror_relative_tolerance")]
    pub relative_tolerance: f64,
    /// Copies in flight at once; default 16.
    #[serde(default = "default::mirror_max_concurrent")]
    pub max_concurrent: usize,
    /// Copies waiting for a free slot; default 64. More are dropped.
    #[serde(default = "default::mirror_queue")]
    pub queue: usize,
    /// Request bytes held for one copy while the mirror lags the primary; default 8 MiB.
    /// A copy further behind is dropped.
    #[serde(default = "default::mirror_buffer_bytes")]
    pub buffer_bytes: usize,
    /// Largest answer (primary or mirror) compared; default 64 MiB.
    #[serde(default = "default::mirror_max_response_bytes")]
    pub max_response_bytes: usize,
    /// Longest a copy may take, from its start; default 10000.
    #[serde(default = "default::mirror_timeout_ms")]
    pub timeout_ms: u64,
    /// Mismatches logged (with request id) per minute; default 6.
    #[serde(default = "default::mirror_log_mismatches_per_minute")]
    pub log_mismatches_per_minute: u32,
}

/// `[filters.NAME]`: one filter instance, shared by every route that lists its name.
#[derive(Debug, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FilterFile {
    Jwt(Box<JwtFile>),
    Claims(ClaimsFile),
    ApiKey(ApiKeyFile),
    RateLimit(RateLimitFile),
    Cors(CorsFile),
}

/// `kind = "cors"`: Cross-Origin Resource Sharing for browsers calling the HTTP API.
/// Wherever it is in a chain, it runs before the other filters; gRPC calls ignore it.
#[derive(Debug, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct CorsFile {
    /// Origins allowed: `https://app.example.com`, `https://*.example.com`, or `*`.
    pub allow_origins: Vec<String>,
    /// Default `["GET", "POST"]` (all Triton's HTTP API uses).
    #[serde(default = "cors_default_methods")]
    pub allow_methods: Vec<String>,
    /// Request headers a page may send. Default: what tritonclient-like browser code sends
    /// (`content-type`, `content-encoding`, `inference-header-content-length`, `authorization`,
    /// `x-api-key`, `x-request-id`, `traceparent`, `tracestate`).
    #[serde(default = "cors_default_allow_headers")]
    pub allow_headers: Vec<String>,
    /// Response headers a page may read. Default `["inference-header-content-length",
    /// "x-request-id"]`.
    #[serde(default = "cors_default_expose_headers")]
    pub expose_headers: Vec<String>,
    /// How long a browser may cache a preflight's answer. Default 600.
    #[serde(default = "cors_default_max_age_s")]
    pub max_age_s: u64,
    /// Let pages send cookies / HTTP auth (`Access-Control-Allow-Credentials`); not with
    /// `*` origins. Default false.
    #[serde(default)]
    pub allow_credentials: bool,
}

fn cors_default_methods() -> Vec<String> {
    ["GET", "POST"].map(String::from).to_vec()
}

fn cors_default_allow_headers() -> Vec<String> {
    [
        "content-type",
        "content-encoding",
        "inference-header-content-length",
        "authorization",
        "x-api-key",
        "x-request-id",
        "traceparent",
        "tracestate",
    ]
    .map(String::from)
    .to_vec()
}

fn cors_default_expose_headers() -> Vec<String> {
    ["inference-header-content-length", "x-request-id"]
        .map(String::from)
        .to_vec()
}

fn cors_default_max_age_s() -> u64 {
    600
}

/// `kind = "jwt"`: verifies a JSON Web Token. Set exactly one key source.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JwtFile {
    /// A JWKS document on disk (relative paths: from the config file's folder).
    pub jwks_file: Option<String>,
    /// A JWKS document inline.
    pub jwks: Option<String>,
    /// The shared secret of HS256/384/512 tokens, at least 32 bytes.
    pub hmac_secret: Option<String>,
    /// A file holding that secret (relative paths: from the config file's folder);
    /// one trailing newline is not part of it. Read at start and at each reload.
    pub hmac_secret_file: Option<String>,
    /// An environment variable holding that secret, read at start and at each reload.
    pub hmac_secret_env: Option<String>,
    /// An `https://` (or `http://`) JWKS URL, fetched at start and refreshed in the background.
    pub jwks_url: Option<String>,
    /// PEM CA certificates trusted for `jwks_url` besides the public web roots.
    pub jwks_ca_file: Option<String>,
    /// Default 300.
    #[serde(default = "default::jwt_jwks_refresh_secs")]
    pub jwks_refresh_secs: u64,
    /// Least time between refreshes caused by unknown key ids; default 10.
    #[serde(default = "default::jwt_jwks_min_refresh_secs")]
    pub jwks_min_refresh_secs: u64,
    /// Default 2000.
    #[serde(default = "default::jwt_jwks_timeout_ms")]
    pub jwks_timeout_ms: u64,
    /// Accepted `alg`s; default empty: every algorithm the keys support.
    #[serde(default)]
    pub algorithms: Vec<String>,
    /// Accepted `iss` values; default empty: any.
    #[serde(default)]
    pub issuers: Vec<String>,
    /// Accepted `aud` values (one must match); default empty: any.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Clock skew allowed on `exp` and `nbf`; default 30.
    #[serde(default = "default::jwt_leeway_secs")]
    pub leeway_secs: u64,
    /// Claims that must be present; default `["exp"]`.
    #[serde(default = "default::jwt_required_claims")]
    pub required_claims: Vec<String>,
    /// Where the token is; default "authorization" (`Bearer <token>`).
    #[serde(default = "default::jwt_header")]
    pub header: String,
    /// Send the token upstream; default false (removed).
    #[serde(default)]
    pub forward_token: bool,
    /// Claim → upstream header. Client-sent copies of these headers are always removed.
    #[serde(default)]
    pub claims_to_headers: BTreeMap<String, String>,
    /// A string claim naming the tenant, for rate-limit keys and the access log.
    pub tenant_claim: Option<String>,
    /// Verified tokens remembered until they expire; default 10000, 0 disables.
    #[serde(default = "default::jwt_cache_capacity")]
    pub cache_capacity: usize,
}

/// `kind = "claims"`: authorises on the claims of the JWT verified before it in the chain.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimsFile {
    /// A claim listing the models the token may call ("*": all).
    pub model_claim: Option<String>,
    /// Claim → value it must equal or contain (e.g. `scope = "infer"`); default none.
    #[serde(default)]
    pub require: BTreeMap<String, String>,
}

/// `kind = "api_key"`: static keys mapped to tenants.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyFile {
    /// Default "x-api-key"; "authorization" reads `Bearer <key>`.
    #[serde(default = "default::api_key_header")]
    pub header: String,
    pub keys: Option<Vec<ApiKeyEntry>>,
    /// A TOML file of `[[keys]]` entries (relative paths: from the config file's folder).
    pub keys_file: Option<String>,
    /// Send the key upstream; default false (removed).
    #[serde(default)]
    pub forward_key: bool,
    /// Send the tenant upstream in this header.
    pub tenant_header: Option<String>,
}

/// One API key: the key itself, or better its SHA-256 (`printf %s KEY | sha256sum`).
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyEntry {
    pub tenant: String,
    pub key: Option<String>,
    pub sha256: Option<String>,
}

/// The format of an API key `keys_file`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeysFile {
    pub keys: Vec<ApiKeyEntry>,
}

/// `kind = "rate_limit"`: token buckets, one per key.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitFile {
    /// Tokens added per second (for the whole fleet when `fleet_size` is set).
    pub rate_per_second: f64,
    /// Bucket size; default: the rate rounded up.
    pub burst: Option<u32>,
    /// Bucket key parts: "client_ip", "tenant", "model", "header:NAME", "claim:NAME".
    /// Default empty: one bucket for all requests.
    #[serde(default)]
    pub key: Vec<String>,
    /// Default "request".
    #[serde(default)]
    pub cost: CostFile,
    /// Proxies sharing the rate: each enforces rate/N and burst/N (rounded up); default 1.
    #[serde(default = "default::rate_limit_fleet_size")]
    pub fleet_size: u32,
    /// Most keys tracked; default 100000.
    #[serde(default = "default::rate_limit_max_keys")]
    pub max_keys: usize,
    /// Add `x-ratelimit-*` headers to responses; default false.
    #[serde(default)]
    pub headers: bool,
}

#[derive(Debug, Default, Clone, Copy, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CostFile {
    /// One token per request.
    #[default]
    Request,
    /// The request's batch size (first dimension of the first input's shape).
    BatchSize,
}

/// A whole config file, read at once only to print it back with its
/// defaults filled in (`trident check --print`, admin `GET /config`);
/// checking reads it table by table, so that one table's mistakes do not
/// hide another's.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    #[serde(default)]
    pub server: ServerFile,
    #[serde(default)]
    pub log: LogFile,
    #[serde(default)]
    pub pools: Vec<PoolFile>,
    #[serde(default)]
    pub routes: Vec<RouteFile>,
    #[serde(default)]
    pub filters: BTreeMap<String, FilterFile>,
    pub tracing: Option<TracingFile>,
}
