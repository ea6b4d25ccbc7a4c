//! Config reload, on SIGHUP or `POST /reload` at the admin listener.
//!
//! The file is read and validated whole first; on any mistake the running
//! config stays, and every error is logged with its key path and reported.
//! Otherwise a new [`Shared`] is built and swapped in at once: a request sees
//! the old config or the new one, never a mix, and requests and gRPC streams
//! already running finish on the one they started with (they hold it).
//!
//! What the reload leaves alone keeps its state: a pool whose settings are
//! unchanged is the same pool; a changed pool keeps, for each endpoint whose
//! addresses are unchanged, its readiness, latency estimate, in-flight count,
//! ejection and sequences ([`crate::upstream::Pool::carried_over`]); a filter
//! whose section and files are unchanged is the same instance, buckets, JWT
//! cache and key set included. Listener addresses cannot change without a
//! restart (or an upgrade): such a reload is refused.
//!
//! Endpoint host names are resolved again every `server.resolve_interval_secs`
//! from the config text last loaded; when the addresses change, the pools are
//! rebuilt the same way, so an address that stays keeps its state.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use serde_json::json;

use crate::config::{self, Config, ConfigErrors};
use crate::proxy::Shared;
use crate::telemetry::access_log::AccessLog;
use crate::telemetry::metrics::Metrics;
use crate::tls::downstream::DownstreamTls;
use crate::upstream::Background;

/// The config Trident serves now, replaced whole by a reload.
pub struct Live {
    current: ArcSwap<Shared>,
    /// Client-facing TLS: certificates follow their files and each reload.
    pub tls: Arc<DownstreamTls>,
    /// The file reloads read; `None` for `trident demo`, which has none.
    path: Option<PathBuf>,
    background: Background,
    metrics: Arc<Metrics>,
    access_log: AccessLog,
    /// Held through a reload, so that two never interleave; also keeps the
    /// last reload's report, for `GET /reload`.
    last: Mutex<serde_json::Value>,
    /// The text of the config running now, resolved again on the interval.
    source: Mutex<Option<String>>,
    /// The last addresses each endpoint host name resolved to: a name that
    /// fails to resolve for a moment keeps them rather than empty its pool.
    resolved: Mutex<HashMap<String, Vec<IpAddr>>>,
}

/// Why new addresses of host names wait for a reload: rebuilding from the text
/// last loaded would also pick up files edited since.
const FILES_CHANGED: &str =
    "resolving host names again: files the config names changed; reload to apply";

/// How often the resolver looks again when host names are not re-resolved (the
/// interval may be set by a reload).
const RESOLVE_IDLE_CHECK: Duration = Duration::from_secs(5);

/// Why a reload left the running config in place.
#[derive(Debug)]
pub enum ReloadError {
    /// Trident runs without a config file (`trident demo`).
    NoFile,
    /// The file is unreadable or invalid: every mistake, with its key path.
    Invalid(ConfigErrors),
}

impl std::fmt::Display for ReloadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReloadError::NoFile => f.write_str("Trident runs without a config file to reload"),
            ReloadError::Invalid(errors) => write!(f, "{errors}"),
        }
    }
}

impl Live {
    /// Starts serving `config`, read from `path` (reloads read it again).
    pub fn start(
        config: Config,
        path: Option<PathBuf>,
        metrics: Arc<Metrics>,
        access_log: AccessLog,
    ) -> std::io::Result<Arc<Live>> {
        for warning in &config.warnings {
            log::warn!("config: {warning}");
        }
        let tls = DownstreamTls::start(
            config.server.tls.as_ref(),
            metrics.tls_certificate_reloads.clone(),
        )
        .map_err(std::io::Error::other)?;
        let source = path.as_deref().and_then(|p| config::read_file(p).ok());
        let shared = Arc::new(Shared::new(
            config,
            metrics.clone(),
            access_log.clone(),
            None,
        ));
        let background = Background::start(metrics.clone())?;
        background.serve(&shared.pools);
        metrics.config_last_reload_success.set(unix_now());
        let live = Arc::new(Live {
            current: ArcSwap::new(shared),
            tls,
            path,
            background,
            metrics,
            access_log,
            last: Mutex::new(json!({ "reloaded": false, "reason": "no reload yet" })),
            source: Mutex::new(source),
            resolved: Mutex::new(HashMap::new()),
        });
        let resolver = live.clone();
        std::thread::Builder::new()
            .name("trident-resolve".into())
            .spawn(move || loop {
                let interval = resolver.current().config.server.resolve_interval;
                std::thread::sleep(interval.unwrap_or(RESOLVE_IDLE_CHECK));
                if interval.is_some() {
                    resolver.resolve_again();
                }
            })?;
        Ok(live)
    }

    /// Resolves `host`, remembering the answer; on failure, the last good one.
    fn resolve(&self, host: &str) -> std::io::Result<Vec<IpAddr>> {
        let mut known = self.resolved.lock().unwrap_or_else(|e| e.into_inner());
        match config::system_resolve(host) {
            Ok(addresses) if !addresses.is_empty() => {
                known.insert(host.to_owned(), addresses.clone());
                Ok(addresses)
            }
            failed => {
                match known.get(host) {
                    Some(addresses) => {
                        log::warn!(
                        "host name {host:?} does not resolve now ({}); keeping its last addresses",
                        failed.err().map_or("no address".to_owned(), |e| e.to_string())
                    );
                        Ok(addresses.clone())
                    }
                    None => failed,
                }
            }
        }
    }

    fn parse(&self, text: &str, path: &Path) -> Result<Config, config::ConfigErrors> {
        let base = path.parent().unwrap_or(Path::new("."));
        config::parse_resolving(text, base, &|host| self.resolve(host))
    }

    /// Resolves the endpoint host names of the running config again; when an
    /// address came or went, rebuilds its pools (the rest carries over).
    fn resolve_again(&self) {
        let _serial = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let running = self.current();
        if running.config.host_names.is_empty() {
            return;
        }
        let (Some(path), Some(text)) = (
            self.path.as_deref(),
            self.source
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        ) else {
            return;
        };
        let Ok(config) = self.parse(&text, path) else {
            log::warn!("{FILES_CHANGED}");
            return;
        };
        // The same text names the same pools: only their endpoints can differ.
        let changed: Vec<String> = config
            .pools
            .iter()
            .filter(|p| {
                running
                    .config
                    .pools
                    .iter()
                    .find(|old| old.name == p.name)
                    .is_none_or(|old| old.endpoints != p.endpoints)
            })
            .map(|p| {
                let labels: Vec<String> = p.endpoints.iter().map(|e| e.label()).collect();
                format!("pool '{}': [{}]", p.name, labels.join(", "))
            })
            .collect();
        if changed.is_empty() {
            return;
        }
        let next = self.build(config, &running);
        if !next.keeps_every_filter_of(&running) {
            log::warn!("{FILES_CHANGED}");
            return;
        }
        log::warn!(
            "host names resolve to new addresses: {}",
            changed.join("; ")
        );
        self.install(next);
    }

    /// The state for `config`, carrying over what it leaves alone of `running`.
    fn build(&self, config: Config, running: &Shared) -> Arc<Shared> {
        Arc::new(Shared::new(
            config,
            self.metrics.clone(),
            self.access_log.clone(),
            Some(running),
        ))
    }

    /// Serves `next` from now on: its pools' background work, then its requests.
    fn install(&self, next: Arc<Shared>) {
        self.background.serve(&next.pools);
        self.current.store(next);
    }

    /// The config a request starting now runs on.
    pub fn current(&self) -> Arc<Shared> {
        self.current.load_full()
    }

    /// The last reload's report (what [`reload`](Self::reload) returned or why it failed).
    pub fn last_report(&self) -> serde_json::Value {
        self.last
            .lock()
            .map_or_else(|e| e.into_inner().clone(), |r| r.clone())
    }

    /// Reads, validates and applies the config file; blocking (it reads files
    /// and may wait for a new JWT filter's first JWKS fetch). Returns what
    /// changed; on an error the running config stays and the error says why.
    pub fn reload(&self) -> Result<serde_json::Value, ReloadError> {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let result = self.apply();
        let outcome = if result.is_ok() { "success" } else { "failure" };
        self.metrics
            .config_reloads
            .with_label_values(&[outcome])
            .inc();
        *last = match &result {
            Ok(report) => {
                self.metrics.config_last_reload_success.set(unix_now());
                log::warn!("config reloaded: {report}");
                report.clone()
            }
            Err(e) => {
                let errors = e.to_string();
                log::error!("config reload failed; the running config stays:");
                for line in errors.lines() {
                    log::error!("  {line}");
                }
                json!({ "reloaded": false, "errors": errors.lines().collect::<Vec<_>>() })
            }
        };
        result
    }

    fn apply(&self) -> Result<serde_json::Value, ReloadError> {
        let path = self.path.as_deref().ok_or(ReloadError::NoFile)?;
        let text = config::read_file(path).map_err(ReloadError::Invalid)?;
        let config = self.parse(&text, path).map_err(ReloadError::Invalid)?;
        for warning in &config.warnings {
            log::warn!("config reload: {warning}");
        }
        let running = self.current();
        let listeners = changed_listeners(&running.config.server, &config.server);
        if !listeners.is_empty() {
            return Err(ReloadError::Invalid(ConfigErrors(listeners)));
        }
        if let Err(why) = self.tls.apply(config.server.tls.as_ref()) {
            return Err(ReloadError::Invalid(ConfigErrors(vec![
                config::ConfigError {
                    path: "server.tls".to_owned(),
                    message: why,
                    line: None,
                },
            ])));
        }
        let restart_only = restart_only_changes(&running.config, &config);
        let next = self.build(config, &running);
        let report = report(&running, &next, &restart_only);
        self.install(next);
        *self.source.lock().unwrap_or_else(|e| e.into_inner()) = Some(text);
        Ok(report)
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Listener addresses that differ: sockets are bound once, so these refuse the reload.
fn changed_listeners(old: &config::Server, new: &config::Server) -> Vec<config::ConfigError> {
    [
        ("http_listen", old.http_listen, new.http_listen),
        ("grpc_listen", old.grpc_listen, new.grpc_listen),
        ("admin_listen", old.admin_listen, new.admin_listen),
    ]
    .into_iter()
    .filter(|(_, before, after)| before != after)
    .map(|(key, before, after)| {
        let show = |a: Option<std::net::SocketAddr>| a.map_or("none".to_owned(), |a| a.to_string());
        config::ConfigError {
            path: format!("server.{key}"),
            message: format!(
                "changed from {} to {}: a listener address cannot be reloaded; restart or \
                 upgrade Trident (`trident run --upgrade`) to change it",
                show(before),
                show(after)
            ),
            line: None,
        }
    })
    .collect()
}

/// Keys whose change is accepted but only takes effect at the next start: they
/// shape listeners, connections and the process, built once.
fn restart_only_changes(old: &config::Config, new: &config::Config) -> Vec<&'static str> {
    let mut keys = Vec::new();
    if old.log != new.log {
        keys.push("log");
    }
    let (old, new) = (&old.server, &new.server);
    let mut check = |key, changed: bool| {
        if changed {
            keys.push(key);
        }
    };
    check("server.threads", old.threads != new.threads);
    check(
        "server.access_log.output",
        old.access_log.target != new.access_log.target,
    );
    check(
        "server.drain_delay_secs",
        old.drain_delay != new.drain_delay,
    );
    check(
        "server.shutdown_timeout_secs",
        old.shutdown_timeout != new.shutdown_timeout,
    );
    check(
        "server.upgrade_socket",
        old.upgrade_socket != new.upgrade_socket,
    );
    check(
        "server.header_read_timeout_ms, idle_timeout_ms, max_connections, tcp_keepalive_secs",
        old.connections != new.connections,
    );
    keys
}

/// What a reload changed, for the log and `POST /reload`'s answer.
fn report(old: &Shared, new: &Shared, restart_only: &[&str]) -> serde_json::Value {
    let mut pools = serde_json::Map::new();
    for pool in new.pools.iter() {
        let state = match old.pools.iter().find(|p| p.name == pool.name) {
            Some(same) if Arc::ptr_eq(same, pool) => "unchanged",
            Some(_) => "changed",
            None => "added",
        };
        pools.insert(pool.name.to_string(), state.into());
    }
    for pool in old.pools.iter() {
        if !new.pools.iter().any(|p| p.name == pool.name) {
            pools.insert(pool.name.to_string(), "removed".into());
        }
    }
    let mut report = json!({
        "reloaded": true,
        "routes": new.config.routes.targets.len() - 1,
        "pools": pools,
        "filters_kept": new.kept_filters(old),
    });
    if !restart_only.is_empty() {
        log::warn!(
            "config reload: {} changed, which takes effect at the next restart",
            restart_only.join(", ")
        );
        report["restart_needed"] = json!(restart_only);
    }
    report
}
