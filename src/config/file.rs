//! The TOML file format, as operators write it. Nothing here is validated
//! beyond types: [`super::validate`] turns it into the [`super::model`].

use serde::Deserialize;

/// `[server]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerFile {
    /// HTTP/1.1 and h2c listener for `tritonclient.http` (Triton's port 8000).
    pub http_listen: Option<String>,
    /// h2c listener for `tritonclient.grpc` (Triton's port 8001).
    pub grpc_listen: Option<String>,
    /// `/metrics`, `/live`, `/ready`.
    pub admin_listen: Option<String>,
    /// Worker threads per listener; default: the number of CPUs.
    pub threads: Option<usize>,
    /// Seconds to keep serving after SIGTERM before draining; default 5.
    pub shutdown_grace_period_secs: Option<u64>,
    /// Seconds allowed for in-flight requests to finish after the grace period; default 30.
    pub shutdown_timeout_secs: Option<u64>,
    /// Where to write one JSON line per request: "stdout" (default), "stderr" or "off".
    pub access_log: Option<String>,
}

/// `[[pools]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolFile {
    pub name: String,
    pub endpoints: Vec<EndpointFile>,
    /// TCP connect timeout; default 2000.
    pub connect_timeout_ms: Option<u64>,
    /// Longest wait for any upstream read (response headers, each body chunk); 0 disables.
    /// Default 60000.
    pub read_timeout_ms: Option<u64>,
    /// How long an idle upstream connection is kept for reuse; default 60000.
    pub idle_timeout_ms: Option<u64>,
    /// Concurrent gRPC streams per upstream h2 connection; default 128.
    pub max_h2_streams: Option<usize>,
}

/// One Triton server: its HTTP and/or gRPC address.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointFile {
    pub http: Option<String>,
    pub grpc: Option<String>,
}

/// `[[routes]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteFile {
    /// An exact model name, or "*" for the default route.
    pub model: String,
    pub pool: String,
}
