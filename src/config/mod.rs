//! Configuration: the TOML [`file`] format, checked into the [`model`] the proxy runs on.
//!
//! Loading never stops at the first mistake: every section, pool, endpoint
//! and route is checked on its own, and every error is reported with its key
//! path (`pools[1].endpoints[0].http: invalid address "x"`).

pub mod admin_auth;
mod canary;
mod edge;
pub mod file;
mod filters;
mod lint;
mod logs;
pub mod model;
mod print;
mod report;
mod resilience;
mod tls;
mod tracing;

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;

use crate::protocol::api::ApiSet;

use file::{EndpointFile, LogFile, PoolFile, RouteFile, ServerFile, TracingFile};
pub use logs::DEFAULT_LOG_LEVEL;
pub use model::*;
pub use print::{effective, Secrets, REDACTED};
pub use resilience::RETRY_BUFFER_LIMIT;
pub use tls::{CertFiles, ClientAuth, ClientCert, ServerTls, SniCert, TlsVersion, UpstreamTls};
pub use tracing::{OtlpProtocol, Tracing};

/// The model name of the default route.
pub const DEFAULT_ROUTE: &str = "*";
/// The name server-level calls (no model) are known by in metrics and logs.
pub const SERVER_ROUTE: &str = "_server";

/// The largest config file Trident reads. Real configs are a few KiB; a file
/// past this is the wrong file (a log, a tensor dump), refused before parsing
/// so that `check` stays small in memory and output.
pub const MAX_CONFIG_BYTES: u64 = 4 << 20;
/// The most characters of one error's key path or message kept: parser
/// messages quote the offending input, which can be a whole multi-MiB line.
const MAX_ERROR_CHARS: usize = 240;
/// Body bytes mirror copies may hold together by default: 8 copies at the
/// per-copy default `buffer_bytes`.
const DEFAULT_MIRROR_BODY_BUDGET: usize = 64 << 20;
/// `server.discard_body_bytes`: 1 MiB, the request body nginx reads by default (`client_max_body_size`).
const DEFAULT_DISCARD_BODY_BYTES: usize = 1 << 20;
/// Errors listed in full; the rest are counted.
const MAX_LISTED_ERRORS: usize = 50;
/// The most `max_wildcard_models` a pool may set: each costs a balancer slot, readiness
/// checks and a few metric series per endpoint.
const MAX_WILDCARD_MODELS: usize = 4096;

/// One mistake in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Where: `pools[1].endpoints[0].http`, or empty for the whole file.
    pub path: String,
    pub message: String,
    /// The file line of the deepest key of `path` the file has, set once the whole file is checked.
    pub line: Option<usize>,
}

impl ConfigError {
    /// `file:line: path: message`, the way compilers and `haproxy -c` point at a mistake.
    pub fn in_file<'a>(&'a self, file: &'a Path) -> impl fmt::Display + 'a {
        InFile(self, file, "")
    }

    /// `file:line: warning: path: message`.
    pub fn warning_in_file<'a>(&'a self, file: &'a Path) -> impl fmt::Display + 'a {
        InFile(self, file, "warning: ")
    }
}

/// An error or warning with its file, line and kind (`"warning: "`, or nothing for an error).
struct InFile<'a>(&'a ConfigError, &'a Path, &'static str);

impl fmt::Display for InFile<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let InFile(error, file, kind) = self;
        match error.line {
            Some(line) => write!(f, "{}:{line}: {kind}{error}", file.display()),
            None => write!(f, "{}: {kind}{error}", file.display()),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every mistake found in one config file.
#[derive(Debug)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().take(MAX_LISTED_ERRORS).enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            if let Some(line) = error.line {
                write!(f, "line {line}: ")?;
            }
            write!(f, "{error}")?;
        }
        match self.0.len().checked_sub(MAX_LISTED_ERRORS) {
            Some(more) if more > 0 => write!(f, "\n… and {more} more"),
            _ => Ok(()),
        }
    }
}

impl std::error::Error for ConfigErrors {}

impl ConfigErrors {
    /// Every error as `file:line: path: message`, one a line, bounded like [`Display`](fmt::Display).
    pub fn in_file<'a>(&'a self, file: &'a Path) -> impl fmt::Display + 'a {
        struct Listed<'a>(&'a ConfigErrors, &'a Path);
        impl fmt::Display for Listed<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let Listed(errors, file) = self;
                for (i, error) in errors.0.iter().take(MAX_LISTED_ERRORS).enumerate() {
                    if i > 0 {
                        f.write_str("\n")?;
                    }
                    write!(f, "{}", error.in_file(file))?;
                }
                match errors.0.len().checked_sub(MAX_LISTED_ERRORS) {
                    Some(more) if more > 0 => write!(f, "\n… and {more} more"),
                    _ => Ok(()),
                }
            }
        }
        Listed(self, file)
    }
}

/// Reads and validates the config file at `path`.
pub fn load_file(path: &Path) -> Result<Config, ConfigErrors> {
    let text = read_file(path)?;
    parse(&text, path.parent().unwrap_or(Path::new(".")))
}

/// The text of the config file at `path`, bounded by [`MAX_CONFIG_BYTES`].
pub fn read_file(path: &Path) -> Result<String, ConfigErrors> {
    let whole_file = |message: String| {
        ConfigErrors(vec![ConfigError {
            path: String::new(),
            message,
            line: None,
        }])
    };
    let text = read_bounded(path, MAX_CONFIG_BYTES)
        .map_err(|e| whole_file(format!("cannot read {}: {e}", path.display())))?
        .ok_or_else(|| {
            whole_file(format!(
                "{} is larger than {MAX_CONFIG_BYTES} bytes, the most a config file may be",
                path.display()
            ))
        })?;
    Ok(text)
}

/// Resolves a host name to every address it has now.
pub type Resolve<'a> = &'a dyn Fn(&str) -> std::io::Result<Vec<IpAddr>>;

/// The system resolver (`/etc/hosts`, DNS).
pub fn system_resolve(host: &str) -> std::io::Result<Vec<IpAddr>> {
    Ok((host, 0).to_socket_addrs()?.map(|a| a.ip()).collect())
}

/// The UTF-8 text of the file at `path`, or `None` when it is longer than
/// `limit` bytes (read no further, so pipes and devices are bounded too).
fn read_bounded(path: &Path, limit: u64) -> std::io::Result<Option<String>> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)?
        .take(limit + 1)
        .read_to_string(&mut text)?;
    Ok((text.len() as u64 <= limit).then_some(text))
}

/// The 1-based line of byte `at` of `text`.
fn line_at(text: &str, at: usize) -> usize {
    text.as_bytes()[..at.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// `text` cut to [`MAX_ERROR_CHARS`] characters, marked with `…` when cut.
fn bounded(mut text: String) -> String {
    if let Some((cut, _)) = text.char_indices().nth(MAX_ERROR_CHARS) {
        text.truncate(cut);
        text.push('…');
    }
    text
}

/// Parses and validates config text; files it names are relative to `base`.
pub fn parse(text: &str, base: &Path) -> Result<Config, ConfigErrors> {
    parse_resolving(text, base, &system_resolve)
}

/// [`parse`], resolving endpoint host names with `resolve`.
pub fn parse_resolving(text: &str, base: &Path, resolve: Resolve) -> Result<Config, ConfigErrors> {
    let mut errors = Errors::default();
    let table: toml::Table = match toml::from_str(text) {
        Ok(table) => table,
        Err(e) => {
            errors.push("", format!("invalid TOML: {}", e.message().trim_end()));
            errors.0[0].line = e.span().map(|at| line_at(text, at.start));
            return Err(ConfigErrors(errors.0));
        }
    };
    let mut server = None;
    let mut log = None;
    let mut pools = Vec::new();
    let mut routes = Vec::new();
    let mut declared_pools = Vec::new();
    let mut declared_filters = filters::Declared::default();
    let mut tracing = None;
    for (key, value) in table {
        match key.as_str() {
            "server" => server = errors.typed::<ServerFile>("server", value),
            "log" => log = errors.typed::<LogFile>("log", value),
            "pools" => {
                // Names of pools that fail to parse still count as existing, so their
                // routes are not reported a second time.
                if let Some(items) = value.as_array() {
                    declared_pools.extend(
                        items
                            .iter()
                            .filter_map(|p| p.get("name")?.as_str().map(str::to_owned)),
                    );
                }
                pools = errors.array::<PoolFile>("pools", value)
            }
            "routes" => routes = errors.array::<RouteFile>("routes", value),
            "filters" => declared_filters = filters::Declared::parse(value, base, &mut errors),
            "tracing" => {
                tracing = errors
                    .typed::<TracingFile>("tracing", value)
                    .and_then(|file| tracing::tracing(file, &mut errors))
            }
            _ => errors.push(
                &key,
                "unknown key (expected `server`, `log`, `pools`, `routes`, `filters` or `tracing`)",
            ),
        }
    }
    let mut names = Names {
        base,
        resolve,
        warnings: Vec::new(),
        hosts: Vec::new(),
    };
    let mut config = validate(
        server.unwrap_or_default(),
        &pools,
        &routes,
        &declared_pools,
        declared_filters,
        &mut names,
        &mut errors,
    );
    config.log = logs::log(log, &mut errors);
    config.warnings = names.warnings;
    config.host_names = names.hosts;
    config.tracing = tracing;
    if errors.0.is_empty() {
        lint::lint(&mut config, &pools, &routes);
        match print::effective(text, Secrets::Redacted) {
            Ok(printed) => config.printed = printed,
            Err(e) => errors.push("", format!("cannot print the effective config: {e}")),
        }
    }
    let lines = report::Lines::new(text);
    for error in errors.0.iter_mut().chain(&mut config.warnings) {
        error.line = lines.of(&error.path);
    }
    if errors.0.is_empty() {
        Ok(config)
    } else {
        Err(ConfigErrors(errors.0))
    }
}

#[derive(Default)]
struct Errors(Vec<ConfigError>);

impl Errors {
    fn push(&mut self, path: &str, message: impl Into<String>) {
        self.0.push(ConfigError {
            path: bounded(path.to_owned()),
            message: bounded(message.into()),
            line: None,
        });
    }

    /// Whether an error was reported at `path` or inside it: what validation
    /// then finds missing there is most likely that mistake, not another one.
    fn reported_at(&self, path: &str) -> bool {
        self.0.iter().any(|e| {
            e.path
                .strip_prefix(path)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
        })
    }

    /// Deserializes one table, recording every mistake in it (with the path
    /// inside it); returns what is left without the offending keys, or `None`
    /// when the table as a whole is wrong.
    fn typed<T: DeserializeOwned>(&mut self, path: &str, value: toml::Value) -> Option<T> {
        report::deserialize_all(path, value, |at, message| self.push(&at, message))
    }

    /// Deserializes each element of an array on its own, so one bad element
    /// does not hide the mistakes in the others. Bad elements are dropped.
    fn array<T: DeserializeOwned>(&mut self, path: &str, value: toml::Value) -> Vec<Option<T>> {
        match value {
            toml::Value::Array(items) => items
                .into_iter()
                .enumerate()
                .map(|(i, item)| self.typed(&format!("{path}[{i}]"), item))
                .collect(),
            other => {
                self.push(
                    path,
                    format!("expected an array of tables, found {}", other.type_str()),
                );
                Vec::new()
            }
        }
    }
}

fn validate(
    server: ServerFile,
    pools: &[Option<PoolFile>],
    routes: &[Option<RouteFile>],
    declared_pools: &[String],
    declared_filters: filters::Declared,
    names: &mut Names,
    errors: &mut Errors,
) -> Config {
    let server_chain = declared_filters.chain(&[], "server.filters", &server.filters, errors);
    let server = validate_server(server, names.base, errors);
    let mut pool_ids: HashMap<&str, PoolId> = HashMap::new();
    let mut valid_pools = Vec::new();
    if pools.is_empty() {
        errors.push("pools", "at least one pool is required");
    }
    for (i, pool) in pools.iter().enumerate() {
        let Some(pool) = pool else { continue };
        let path = format!("pools[{i}]");
        if pool.name.is_empty() {
            errors.push(&format!("{path}.name"), "must not be empty");
        } else if pool_ids.insert(&pool.name, valid_pools.len()).is_some() {
            errors.push(
                &format!("{path}.name"),
                format!("duplicate pool name {:?}", pool.name),
            );
        }
        valid_pools.push(validate_pool(&path, pool, names, errors));
    }

    let mut table = Routes::default();
    for (i, route) in routes.iter().enumerate() {
        let Some(route) = route else { continue };
        let path = format!("routes[{i}]");
        let Some(&pool) = pool_ids.get(route.pool.as_str()) else {
            if !declared_pools.contains(&route.pool) {
                errors.push(
                    &format!("{path}.pool"),
                    format!("no pool named {:?}", route.pool),
                );
            }
            continue;
        };
        if route.model.is_empty() {
            errors.push(
                &format!("{path}.model"),
                "must not be empty (use \"*\" for the default route)",
            );
            continue;
        }
        let id = table.targets.len();
        let duplicate = if route.model == DEFAULT_ROUTE {
            table.default.replace(id).is_some()
        } else {
            table.exact.insert(route.model.clone(), id).is_some()
        };
        if duplicate {
            errors.push(
                &format!("{path}.model"),
                format!("duplicate route for model {:?}", route.model),
            );
        }
        let chain = declared_filters.chain(
            &server_chain,
            &format!("{path}.filters"),
            &route.filters,
            errors,
        );
        if route.timeout_ms == Some(0) {
            errors.push(&format!("{path}.timeout_ms"), "must be at least 1");
        }
        let context = canary::Context {
            pool_ids: &pool_ids,
            declared_pools,
            verifies_jwt: declared_filters.verifies_jwt(&chain),
        };
        let split = canary::split(&path, route, pool, &context, errors);
        let mirror = route
            .mirror
            .as_ref()
            .and_then(|m| canary::mirror(&path, m, &context, errors));
        table.targets.push(RouteTarget {
            key: route.model.as_str().into(),
            pool,
            filters: chain,
            timeout: route.timeout_ms.map(Duration::from_millis),
            split,
            mirror,
            access_log: route.access_log,
            limits: edge::route_limits(&path, route, server.body_limits, errors),
            headers: edge::header_rules(&path, route.headers.as_ref(), errors),
            apis: route.apis.as_ref().map_or(ApiSet::UNRESTRICTED, |apis| {
                ApiSet::only(apis.iter().copied())
            }),
            repository: route.repository,
        });
    }
    if routes.is_empty() {
        errors.push(
            "routes",
            "at least one route is required (model = \"*\" routes every model)",
        );
    }
    let server_pool = match table.default {
        Some(route) => Some(table.targets[route].pool),
        None => {
            let mut used: Vec<PoolId> = table.targets.iter().map(|t| t.pool).collect();
            used.sort_unstable();
            used.dedup();
            if used.len() > 1 {
                errors.push(
                    "routes",
                    "no default route: add one with model = \"*\"; server-level calls (health, server \
                     metadata) need one pool to go to when routes use more than one",
                );
            }
            used.first().copied()
        }
    };
    // Server-level calls (health, server metadata, repository index, shared memory…)
    // name no model: the default route's `apis` and `repository` govern them; without
    // one, an API any route allows is allowed.
    let (apis, repository) = match table.default {
        Some(route) => {
            let target = &table.targets[route];
            (target.apis, target.repository)
        }
        None => (
            table
                .targets
                .iter()
                .map(|t| t.apis)
                .reduce(ApiSet::union)
                .unwrap_or(ApiSet::UNRESTRICTED),
            RepositoryMode::default(),
        ),
    };
    table.server = table.targets.len();
    table.targets.push(RouteTarget {
        key: SERVER_ROUTE.into(),
        pool: server_pool.unwrap_or(0),
        filters: server_chain,
        timeout: None,
        split: None,
        mirror: None,
        access_log: true,
        limits: server.body_limits,
        headers: HeaderRules::default(),
        apis,
        repository,
    });
    Config {
        server,
        log: LogSettings::default(),
        pools: valid_pools,
        routes: table,
        filters: declared_filters.defs,
        warnings: Vec::new(),
        host_names: Vec::new(),
        tracing: None,
        printed: String::new(),
    }
}

fn validate_server(file: ServerFile, base: &Path, errors: &mut Errors) -> Server {
    let listen = |key: &str, value: &Option<String>, errors: &mut Errors| {
        value
            .as_deref()
            .and_then(|v| parse_address(&format!("server.{key}"), v, errors))
    };
    let http_listen = listen("http_listen", &file.http_listen, errors);
    let grpc_listen = listen("grpc_listen", &file.grpc_listen, errors);
    let admin_listen = listen("admin_listen", &file.admin_listen, errors);
    // With a mistake in `[server]` (a listener of the wrong type, a misspelt
    // key), a missing listener is most likely that mistake.
    if file.http_listen.is_none() && file.grpc_listen.is_none() && !errors.reported_at("server") {
        errors.push("server", "set `http_listen`, `grpc_listen` or both");
    }
    let named = [
        ("http_listen", http_listen),
        ("grpc_listen", grpc_listen),
        ("admin_listen", admin_listen),
    ];
    for (i, (key, addr)) in named.iter().enumerate() {
        if let Some(addr) = addr.filter(|a| a.port() != 0) {
            if let Some((other, _)) = named[..i].iter().find(|(_, a)| *a == Some(addr)) {
                errors.push(
                    &format!("server.{key}"),
                    format!("{addr} is already used by server.{other}"),
                );
            }
        }
    }
    let threads = match file.threads {
        Some(0) => {
            errors.push("server.threads", "must be at least 1");
            1
        }
        Some(n) if n > crate::workers::MAX_WORKERS => {
            errors.push(
                "server.threads",
                format!("must be at most {}", crate::workers::MAX_WORKERS),
            );
            crate::workers::MAX_WORKERS
        }
        Some(n) => n,
        None => std::thread::available_parallelism()
            .map_or(1, |n| n.get().min(crate::workers::MAX_WORKERS)),
    };
    let max_request_header_bytes = edge::max_request_header_bytes(&file, errors);
    let body_limits = edge::server_limits(&file, errors);
    let served_by_header = edge::served_by_header(&file, errors);
    let access_log = logs::access_log(file.access_log, base, errors);
    if file.mirror_body_budget_bytes == 0 {
        errors.push("server.mirror_body_budget_bytes", "must be at least 1");
    }
    let tls = file.tls.and_then(|tls| {
        let listeners = (file.http_listen.is_some(), file.grpc_listen.is_some());
        tls::server_tls(tls, listeners, base, errors)
    });
    let repository = RepositorySettings {
        max_body_bytes: at_least_one(
            "server.repository.max_body_bytes",
            file.repository.max_body_bytes,
            errors,
        ),
        concurrency: at_least_one(
            "server.repository.concurrency",
            file.repository.concurrency,
            errors,
        ),
    };
    Server {
        admin_auth: admin_auth::admin_auth(file.admin_auth, base, errors),
        tls,
        max_request_header_bytes,
        body_limits,
        served_by_header,
        repository,
        http_listen,
        grpc_listen,
        admin_listen,
        threads,
        drain_delay: Duration::from_secs(file.drain_delay_secs),
        shutdown_timeout: Duration::from_secs(file.shutdown_timeout_secs),
        upgrade_socket: file.upgrade_socket.map(PathBuf::from),
        resolve_interval: Some(file.resolve_interval_secs)
            .filter(|&secs| secs > 0)
            .map(Duration::from_secs),
        access_log,
        connections: ConnectionLimits {
            header_read_timeout: Duration::from_millis(at_least_one(
                "server.header_read_timeout_ms",
                file.header_read_timeout_ms,
                errors,
            )),
            idle_timeout: Duration::from_millis(at_least_one(
                "server.idle_timeout_ms",
                file.idle_timeout_ms,
                errors,
            )),
            max_connections: at_least_one("server.max_connections", file.max_connections, errors),
            tcp_keepalive: match file.tcp_keepalive_secs {
                0 => None,
                secs => Some(Duration::from_secs(secs)),
            },
            discard_body_bytes: file.discard_body_bytes,
            discard_body_timeout: Duration::from_millis(at_least_one(
                "server.discard_body_timeout_ms",
                file.discard_body_timeout_ms,
                errors,
            )),
        },
        mirror_body_budget_bytes: file.mirror_body_budget_bytes,
    }
}

/// `value`, or 1 (and an error at `path`) when it is 0.
/// `value`, with a mistake reported at `path` (and 1 in its place) when it is 0.
fn at_least_one<T: Copy + PartialEq + From<u8>>(path: &str, value: T, errors: &mut Errors) -> T {
    if value == T::from(0) {
        errors.push(path, "must be at least 1");
        return T::from(1);
    }
    value
}

fn validate_pool(path: &str, pool: &PoolFile, names: &mut Names, errors: &mut Errors) -> Pool {
    if pool.endpoints.is_empty() {
        errors.push(
            &format!("{path}.endpoints"),
            "at least one endpoint is required",
        );
    }
    let endpoints = pool
        .endpoints
        .iter()
        .enumerate()
        .flat_map(|(i, endpoint)| {
            validate_endpoint(&format!("{path}.endpoints[{i}]"), endpoint, names, errors)
        })
        .collect();
    let weights_path = format!("{path}.endpoints");
    for (i, endpoint) in pool.endpoints.iter().enumerate() {
        if endpoint.weight == 0 {
            errors.push(&format!("{weights_path}[{i}].weight"), "must be at least 1");
        }
    }
    let max_h2_streams = pool.max_h2_streams;
    if max_h2_streams == 0 {
        errors.push(&format!("{path}.max_h2_streams"), "must be at least 1");
    }
    let max_wildcard_models = pool.max_wildcard_models;
    if max_wildcard_models > MAX_WILDCARD_MODELS {
        errors.push(
            &format!("{path}.max_wildcard_models"),
            format!("must be at most {MAX_WILDCARD_MODELS}"),
        );
    }
    if pool.connect_timeout_ms == 0 {
        errors.push(&format!("{path}.connect_timeout_ms"), "must be at least 1");
    }
    Pool {
        name: pool.name.clone(),
        endpoints,
        connect_timeout: Duration::from_millis(pool.connect_timeout_ms),
        read_timeout: match pool.read_timeout_ms {
            0 => None,
            ms => Some(Duration::from_millis(ms)),
        },
        idle_timeout: Duration::from_millis(pool.idle_timeout_ms),
        max_h2_streams: max_h2_streams.max(1),
        max_wildcard_models: max_wildcard_models.min(MAX_WILDCARD_MODELS),
        balance: resilience::balance(path, pool, errors),
        load_metrics: resilience::load_metrics(path, pool, errors),
        outlier: resilience::outlier(path, &pool.outlier, errors),
        health: resilience::health(path, &pool.health, errors),
        retry: resilience::retry(path, &pool.retry, errors),
        sequences: resilience::sequences(path, &pool.sequences, errors),
        circuit_breaker: resilience::circuit_breaker(path, &pool.circuit_breaker, errors),
        tls: pool.tls.as_ref().and_then(|tls| {
            let tls = tls::upstream_tls(path, tls, names.base, errors)?;
            if tls.insecure_skip_verify {
                names.warnings.push(ConfigError {
                    path: format!("{path}.tls.insecure_skip_verify"),
                    message: "endpoint certificates are not verified: anyone on the path can \
                              pose as these endpoints (for tests only)"
                        .to_owned(),
                    line: None,
                });
            }
            Some(tls)
        }),
    }
}

/// Names met while validating: endpoint host names, and the resolver they go
/// to; file names, and the directory they are relative to.
struct Names<'a> {
    /// The directory file names in the config are relative to.
    base: &'a Path,
    resolve: Resolve<'a>,
    /// Names that do not resolve now: not an error, since a config is often
    /// checked away from the cluster it is for, and names come and go.
    warnings: Vec<ConfigError>,
    /// Every host name endpoints use, once.
    hosts: Vec<String>,
}

/// An endpoint address as written: an IP address, or a host name to resolve.
enum Written {
    Ip(SocketAddr),
    Host(String, u16),
}

fn written_address(path: &str, value: &str, errors: &mut Errors) -> Option<Written> {
    if let Ok(addr) = value.parse::<SocketAddr>() {
        return Some(Written::Ip(addr));
    }
    let out_of_range = |port: &str| {
        !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) && port.parse::<u16>().is_err()
    };
    match value.rsplit_once(':') {
        Some((_, port)) if out_of_range(port) => {
            errors.push(
                path,
                format!("invalid address {value:?}: port {port} is out of range (1–65535)"),
            );
            None
        }
        Some((host, port)) if !host.is_empty() && !host.contains(['[', ']', ' ']) => {
            match port.parse::<u16>() {
                Ok(port) => Some(Written::Host(host.to_owned(), port)),
                Err(_) => {
                    errors.push(path, format!("invalid address {value:?}: bad port"));
                    None
                }
            }
        }
        _ => {
            errors.push(
                path,
                format!("invalid address {value:?}: expected host:port"),
            );
            None
        }
    }
}

/// The endpoints one `[[pools.endpoints]]` entry stands for: itself when it
/// gives IP addresses; one per address its host name resolves to when it
/// gives a name (a headless Service has one per pod), none while the name
/// does not resolve (a warning; it is resolved again later).
fn validate_endpoint(
    path: &str,
    endpoint: &EndpointFile,
    names: &mut Names,
    errors: &mut Errors,
) -> Vec<Endpoint> {
    // As for listeners: with a mistake in the endpoint, that is the missing address.
    if endpoint.http.is_none() && endpoint.grpc.is_none() && !errors.reported_at(path) {
        errors.push(path, "set `http`, `grpc` or both");
    }
    // In this order: http, grpc, metrics.
    let written: Vec<Option<Written>> = [
        ("http", &endpoint.http),
        ("grpc", &endpoint.grpc),
        ("metrics", &endpoint.metrics),
    ]
    .iter()
    .map(|(key, value)| {
        let at = format!("{path}.{key}");
        value
            .as_deref()
            .and_then(|v| written_address(&at, v, errors))
    })
    .collect();
    let weight = endpoint.weight.max(1);
    let hosts: Vec<&str> = written
        .iter()
        .filter_map(|w| match w {
            Some(Written::Host(host, _)) => Some(host.as_str()),
            _ => None,
        })
        .collect();
    let Some(&host) = hosts.first() else {
        let ip = |i: usize| match written[i] {
            Some(Written::Ip(addr)) => Some(addr),
            _ => None,
        };
        return vec![Endpoint {
            host: None,
            http: ip(0),
            grpc: ip(1),
            metrics: ip(2),
            weight,
        }];
    };
    let literal = written.iter().any(|w| matches!(w, Some(Written::Ip(_))));
    if literal || hosts.iter().any(|h| *h != host) {
        errors.push(
            path,
            "`http`, `grpc` and `metrics` name one server: give them all the same host name, \
             or all IP addresses",
        );
        return Vec::new();
    }
    if !names.hosts.iter().any(|h| h == host) {
        names.hosts.push(host.to_owned());
    }
    let mut addresses = match (names.resolve)(host) {
        Ok(addresses) if !addresses.is_empty() => addresses,
        outcome => {
            let why = outcome
                .err()
                .map_or("no address".to_owned(), |e| e.to_string());
            names.warnings.push(ConfigError {
                path: path.to_owned(),
                message: bounded(format!(
                    "host name {host:?} does not resolve now ({why}): the endpoint is left out \
                     until it does (resolved again every server.resolve_interval_secs)"
                )),
                line: None,
            });
            return Vec::new();
        }
    };
    addresses.sort();
    addresses.dedup();
    let port = |i: usize| match written[i] {
        Some(Written::Host(_, port)) => Some(port),
        _ => None,
    };
    addresses
        .into_iter()
        .map(|ip| Endpoint {
            host: Some(host.to_owned()),
            http: port(0).map(|p| SocketAddr::new(ip, p)),
            grpc: port(1).map(|p| SocketAddr::new(ip, p)),
            metrics: port(2).map(|p| SocketAddr::new(ip, p)),
            weight,
        })
        .collect()
}

/// A listener's `host:port` or `ip:port`: a host name is resolved once, to its first address.
fn parse_address(path: &str, value: &str, errors: &mut Errors) -> Option<SocketAddr> {
    let (host, port) = match written_address(path, value, errors)? {
        Written::Ip(addr) => return Some(addr),
        Written::Host(host, port) => (host, port),
    };
    let resolved = (host.as_str(), port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next());
    if resolved.is_none() {
        errors.push(
            path,
            format!("invalid address {value:?}: host name does not resolve"),
        );
    }
    resolved
}

#[cfg(test)]
mod tests;
