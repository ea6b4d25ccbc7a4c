//! The validated configuration the proxy runs on.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::tls::{ServerTls, UpstreamTls};

#[derive(Debug)]
pub struct Config {
    pub server: Server,
    /// `[log]`: the error log.
    pub log: LogSettings,
    pub pools: Vec<Pool>,
    pub routes: Routes,
    /// Every `[filters.*]` section, in file order; routes refer to them by [`FilterId`].
    pub filters: Vec<FilterDef>,
    /// What is worth saying but does not stop the config: host names that do not resolve now.
    pub warnings: Vec<super::ConfigError>,
    /// Host names endpoints use: resolved again every `server.resolve_interval`.
    pub host_names: Vec<String>,
    /// `[tracing]`; `None`: tracing is off.
    pub tracing: Option<super::Tracing>,
    /// The file as loaded, defaults filled in and secrets redacted: the admin `GET /config`.
    pub printed: String,
}

/// Index into [`Config::filters`].
pub type FilterId = usize;

/// A named filter instance.
pub struct FilterDef {
    pub name: String,
    pub spec: FilterSpec,
    /// Equal across two loads when the section and the files it names are:
    /// a reload then keeps the running filter.
    pub fingerprint: u64,
}

impl std::fmt::Debug for FilterDef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.spec {
            FilterSpec::Jwt(_) => "jwt",
            FilterSpec::Claims(_) => "claims",
            FilterSpec::ApiKey(_) => "api_key",
            FilterSpec::RateLimit(_) => "rate_limit",
            FilterSpec::Cors(_) => "cors",
        };
        write!(f, "{} ({kind})", self.name)
    }
}

/// A filter's validated settings; the proxy builds the running filter from them.
pub enum FilterSpec {
    Jwt(filters::jwt::JwtSettings),
    Claims(filters::claims::ClaimsFilter),
    ApiKey(filters::api_key::ApiKeySettings),
    RateLimit(filters::rate_limit::RateLimitSettings),
    Cors(std::sync::Arc<filters::cors::Cors>),
}

#[derive(Debug, Clone)]
pub struct Server {
    pub http_listen: Option<SocketAddr>,
    pub grpc_listen: Option<SocketAddr>,
    pub admin_listen: Option<SocketAddr>,
    pub threads: usize,
    /// After SIGTERM: how long listeners keep accepting while `/ready` says 503.
    pub drain_delay: Duration,
    /// Then: how long in-flight requests and streams may take to finish.
    pub shutdown_timeout: Duration,
    /// Where listening sockets are handed to `trident run --upgrade`; `None`:
    /// the default in a private directory ([`crate::upgrade::socket_path`]).
    pub upgrade_socket: Option<PathBuf>,
    /// How often endpoint host names are resolved again; `None`: never.
    pub resolve_interval: Option<Duration>,
    pub access_log: AccessLogSettings,
    /// Body bytes all mirror copies together may hold.
    pub mirror_body_budget_bytes: usize,
    pub connections: ConnectionLimits,
    /// Client-facing TLS; `None`: plain HTTP/1.1 and h2c.
    pub tls: Option<ServerTls>,
    /// Most bytes of a request header; larger: 431 / RESOURCE_EXHAUSTED.
    pub max_request_header_bytes: usize,
    /// The routes' default body limits.
    pub body_limits: BodyLimits,
    /// The response header naming the endpoint that answered; `None`: not sent.
    pub served_by_header: Option<http::HeaderName>,
    pub repository: RepositorySettings,
    /// The admin listener's protection; `None`: open to whoever reaches it.
    pub admin_auth: Option<super::admin_auth::AdminAuth>,
}

impl Server {
    /// Whether the admin listener asks for a token or a client network (on the paths
    /// that are not open), for warnings about an exposed admin listener.
    pub fn admin_is_protected(&self) -> bool {
        self.admin_auth
            .as_ref()
            .is_some_and(|auth| auth.token.is_some() || !auth.allow_networks.is_empty())
    }
}

/// How long and how many client connections may be held (`[server]` keys).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: u32,
    /// TCP keepalive idle time on accepted connections; `None`: off.
    pub tcp_keepalive: Option<Duration>,
    /// Request body bytes read and dropped to keep a connection after a local answer.
    pub discard_body_bytes: usize,
    /// How long such a body is read and dropped.
    pub discard_body_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLogTarget {
    Stdout,
    Stderr,
    Off,
    /// Appended to; reopened on SIGUSR1 (after logrotate renamed it).
    File(PathBuf),
}

/// `server.access_log`.
#[derive(Debug, Clone, PartialEq)]
pub struct AccessLogSettings {
    pub target: AccessLogTarget,
    /// Share of successful requests logged, 0–1.
    pub sample_ratio: f64,
    /// Whether failed requests are sampled too (else every one is logged).
    pub sample_errors: bool,
}

/// `[log]`: Trident's own messages, on stderr.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSettings {
    /// An env_logger filter (`RUST_LOG` syntax), checked.
    pub level: String,
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// env_logger's: `[2026-01-01T00:00:00Z WARN target] message`.
    Text,
    /// One JSON object per line: `ts`, `level`, `target`, `message`.
    Json,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Pool {
    pub name: String,
    pub endpoints: Vec<Endpoint>,
    pub connect_timeout: Duration,
    pub read_timeout: Option<Duration>,
    pub idle_timeout: Duration,
    pub max_h2_streams: usize,
    /// Wildcard-routed models given their own state (see `PoolFile::max_wildcard_models`).
    pub max_wildcard_models: usize,
    pub balance: filters::balance::BalanceSettings,
    /// Scraping endpoints' Triton metrics into the balancer's cost; `None`: off.
    pub load_metrics: Option<LoadMetrics>,
    pub outlier: filters::outlier::OutlierSettings,
    /// Active readiness checks; `None`: off.
    pub health: Option<HealthChecks>,
    pub retry: RetryPolicy,
    pub sequences: Sequences,
    pub circuit_breaker: CircuitBreaker,
    /// TLS to the endpoints; `None`: plain text.
    pub tls: Option<UpstreamTls>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The host name the addresses were resolved from; `None`: written as IP addresses.
    pub host: Option<String>,
    pub http: Option<SocketAddr>,
    pub grpc: Option<SocketAddr>,
    /// Triton's metrics port.
    pub metrics: Option<SocketAddr>,
    pub weight: u32,
}

impl Endpoint {
    /// How the endpoint is named in metrics and errors: its first address.
    pub fn label(&self) -> String {
        self.http
            .or(self.grpc)
            .map_or_else(|| "-".to_owned(), |a| a.to_string())
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct LoadMetrics {
    pub interval: Duration,
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HealthChecks {
    pub interval: Duration,
    /// How often failing endpoints are checked again; at most `interval`.
    pub unhealthy_interval: Duration,
    pub timeout: Duration,
    pub unhealthy_threshold: u32,
    pub healthy_threshold: u32,
    /// Check each routed model's readiness too.
    pub models: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Further tries after the first.
    pub max_retries: u32,
    pub on_status: Vec<u16>,
    /// gRPC codes of trailers-only answers that are retried.
    pub on_grpc_status: Vec<u8>,
    pub budget_ratio: f64,
    pub budget_min_per_second: u32,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// Requests with a larger body are only retried when nothing reached the endpoint.
    pub max_body_bytes: usize,
}

/// Caps past which a pool refuses requests at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CircuitBreaker {
    pub max_requests: usize,
    pub max_pending: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Sequences {
    pub enabled: bool,
    pub idle_timeout: Duration,
    pub max_sequences: usize,
    pub placement: super::file::PlacementFile,
}

/// Index into [`Config::pools`].
pub type PoolId = usize;

/// Index into [`Routes::targets`].
pub type RouteId = usize;

/// Where a route sends requests, and the name it is known by in metrics and logs.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteTarget {
    /// The route's `model` key: a model name, `"*"`, or `"_server"` for server-level calls.
    pub key: std::sync::Arc<str>,
    pub pool: PoolId,
    /// The whole chain, in order: `server.filters`, then the route's own.
    pub filters: Vec<FilterId>,
    /// Longest a request may take, retries included.
    pub timeout: Option<Duration>,
    /// Other sides taking a share of the requests; `None`: all go to `pool`.
    pub split: Option<RouteSplit>,
    pub mirror: Option<Mirror>,
    /// Whether the route's requests are in the access log.
    pub access_log: bool,
    pub limits: BodyLimits,
    pub headers: HeaderRules,
    /// The Triton APIs the route's clients may call.
    pub apis: crate::protocol::api::ApiSet,
    pub repository: RepositoryMode,
}

/// How much of a request body a route takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyLimits {
    /// The whole body (a gRPC call's stream of messages included).
    pub max_request_bytes: u64,
    /// One gRPC message, as its length prefix declares it.
    pub max_grpc_message_bytes: u64,
}

/// `[routes.headers]`, checked and ready to insert.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HeaderRules {
    pub request_set: Vec<(http::HeaderName, http::HeaderValue)>,
    pub request_remove: Vec<http::HeaderName>,
    pub response_set: Vec<(http::HeaderName, http::HeaderValue)>,
    pub response_remove: Vec<http::HeaderName>,
}

/// How a route serves model repository load / unload calls (`repository`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RepositoryMode {
    /// Sent to every endpoint of the pool; success only when all succeed.
    #[default]
    FanOut,
    /// Sent to one endpoint, as any other call.
    One,
    /// Refused with 403 / PERMISSION_DENIED.
    Deny,
}

/// `[server.repository]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RepositorySettings {
    pub max_body_bytes: usize,
    pub concurrency: usize,
}

impl RouteTarget {
    /// Whether a request routed here is sent and authorised as one routed to `other`
    /// would be: the same pool through the same filters, neither route split nor
    /// mirrored. A gRPC stream opened for one may carry requests for the other.
    pub fn serves_like(&self, other: &RouteTarget) -> bool {
        self.pool == other.pool
            && self.filters == other.filters
            && self.limits == other.limits
            && self.headers == other.headers
            && [self, other]
                .iter()
                .all(|route| route.split.is_none() && route.mirror.is_none())
    }

    /// Every pool the route sends requests to (not its mirror).
    pub fn pools(&self) -> impl Iterator<Item = PoolId> + '_ {
        std::iter::once(self.pool).chain(
            self.split
                .iter()
                .flat_map(|s| s.sides.iter().map(|side| side.pool)),
        )
    }
}

/// A route's canary split: `choose` picks an index into `sides`, or the route's own pool.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteSplit {
    pub choose: filters::split::Split,
    pub sides: Vec<Side>,
}

/// Where one side of a split sends requests.
#[derive(Debug, Clone, PartialEq)]
pub struct Side {
    pub pool: PoolId,
    /// The model version requests are rewritten to.
    pub version: Option<std::sync::Arc<str>>,
    /// How the side is named in metrics: its pool, and `@version` when it has one.
    pub label: std::sync::Arc<str>,
}

/// Where a route's mirror copies go, which requests are copied, and how answers are compared.
#[derive(Debug, Clone, PartialEq)]
pub struct Mirror {
    pub pool: PoolId,
    pub version: Option<String>,
    pub select: filters::split::Selector,
    /// `None`: answers are not compared.
    pub compare: Option<filters::mirror::compare::Tolerance>,
    pub max_concurrent: usize,
    pub queue: usize,
    pub buffer_bytes: usize,
    pub max_response_bytes: usize,
    pub timeout: Duration,
    pub log_mismatches_per_minute: u32,
}

/// Model name → route, the default route for other models, and where server-level calls go.
#[derive(Debug, Clone, Default)]
pub struct Routes {
    pub targets: Vec<RouteTarget>,
    pub exact: std::collections::HashMap<String, RouteId>,
    /// The `"*"` route. Without it, a model with no route of its own is refused.
    pub default: Option<RouteId>,
    /// Health, server metadata and other calls that name no model: the default
    /// route's pool, or the one pool all routes share.
    pub server: RouteId,
}

impl Routes {
    /// The route for a call naming `model` (`None`: a server-level call), or
    /// `None` when that model has no route.
    pub fn lookup(&self, model: Option<&str>) -> Option<RouteId> {
        match model {
            None => Some(self.server),
            Some(model) => self.exact.get(model).copied().or(self.default),
        }
    }

    pub fn target(&self, route: RouteId) -> &RouteTarget {
        &self.targets[route]
    }
}
