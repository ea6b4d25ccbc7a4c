//! The validated configuration the proxy runs on.

use std::net::SocketAddr;
use std::time::Duration;

#[derive(Debug)]
pub struct Config {
    pub server: Server,
    pub pools: Vec<Pool>,
    pub routes: Routes,
    /// Every `[filters.*]` section, in file order; routes refer to them by [`FilterId`].
    pub filters: Vec<FilterDef>,
}

/// Index into [`Config::filters`].
pub type FilterId = usize;

/// A named filter instance.
pub struct FilterDef {
    pub name: String,
    pub spec: FilterSpec,
}

impl std::fmt::Debug for FilterDef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.spec {
            FilterSpec::Jwt(_) => "jwt",
            FilterSpec::Claims(_) => "claims",
            FilterSpec::ApiKey(_) => "api_key",
            FilterSpec::RateLimit(_) => "rate_limit",
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
}

#[derive(Debug, Clone)]
pub struct Server {
    pub http_listen: Option<SocketAddr>,
    pub grpc_listen: Option<SocketAddr>,
    pub admin_listen: Option<SocketAddr>,
    pub threads: usize,
    pub shutdown_grace_period: Duration,
    pub shutdown_timeout: Duration,
    pub access_log: AccessLogTarget,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessLogTarget {
    Stdout,
    Stderr,
    Off,
}

#[derive(Debug, Clone)]
pub struct Pool {
    pub name: String,
    pub endpoints: Vec<Endpoint>,
    pub connect_timeout: Duration,
    pub read_timeout: Option<Duration>,
    pub idle_timeout: Duration,
    pub max_h2_streams: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub http: Option<SocketAddr>,
    pub grpc: Option<SocketAddr>,
}

/// Index into [`Config::pools`].
pub type PoolId = usize;

/// Index into [`Routes::targets`].
pub type RouteId = usize;

/// Where a route sends requests, and the name it is known by in metrics and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteTarget {
    /// The route's `model` key: a model name, `"*"`, or `"_server"` for server-level calls.
    pub key: String,
    pub pool: PoolId,
    /// The whole chain, in order: `server.filters`, then the route's own.
    pub filters: Vec<FilterId>,
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
