//! Prometheus metrics, shaped so that the hot path touches only atomics.
//!
//! `prometheus`'s `with_label_values` takes a read lock on a map shared by
//! every thread; per request we instead go through [`RouteMetrics`], resolved
//! once per route and protocol, whose per-status counters are created on first
//! use and then read without any lock.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus::core::Collector;
use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::config;
use crate::protocol::Protocol;

/// Seconds; inference spans sub-millisecond identity models to minute-long generations.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// The `pool` label of requests Trident answered before choosing a pool.
const NO_POOL: &str = "none";

/// Label values of per-pool counters, registered at 0 when a pool is built so that
/// dashboards show 0 rather than no data before the first event.
/// `kind` of `trident_upstream_errors_total`: what `proxy::error_reply` reports.
const UPSTREAM_ERROR_KINDS: [&str; 6] = [
    "connect_timeout",
    "connect_error",
    "tls_error",
    "timeout",
    "broken_response",
    "internal",
];
/// `reason` of `trident_retries_total` (`proxy::tries::RetryReason`).
const RETRY_REASONS: [&str; 4] = [
    "connect_error",
    "refused_stream",
    "status",
    "split_fallback",
];
/// `kind` of `trident_overflow_total`: the circuit breaker's two caps.
const OVERFLOW_KINDS: [&str; 2] = ["requests", "pending"];
/// `reason` of `trident_outlier_ejections_total` (`filters::outlier::EjectReason`).
const EJECTION_REASONS: [&str; 4] = [
    "consecutive_failures",
    "success_rate",
    "failure_percentage",
    "probe_failed",
];

/// What a request ended with, as the `status` label shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// An HTTP status code (for HTTP requests).
    Http(u16),
    /// A gRPC status code, from headers or trailers (for gRPC requests).
    Grpc(u8),
    /// No response reached the client (it went away, or the connection broke).
    NoResponse,
}

use crate::protocol::grpc::CODE_NAMES as GRPC_CODES;
const HTTP_SLOTS: usize = 600;
const SLOTS: usize = HTTP_SLOTS + GRPC_CODES.len() + 1;

impl Outcome {
    fn slot(self) -> usize {
        match self {
            Outcome::Http(code) if (code as usize) < HTTP_SLOTS => code as usize,
            Outcome::Grpc(code) if (code as usize) < GRPC_CODES.len() => HTTP_SLOTS + code as usize,
            _ => SLOTS - 1,
        }
    }

    /// The `status` label value: `200`, `UNAVAILABLE`, or `none`.
    pub fn label(self) -> String {
        match self {
            Outcome::Http(code) if (code as usize) < HTTP_SLOTS => code.to_string(),
            Outcome::Grpc(code) if (code as usize) < GRPC_CODES.len() => {
                GRPC_CODES[code as usize].to_owned()
            }
            _ => "none".to_owned(),
        }
    }
}

/// Label values of an endpoint's pre-registered ejection and readiness-check series.
type EndpointSeries<'a> = ([[&'a str; 4]; 4], [[&'a str; 4]; 2]);

/// Every Trident metric, in one registry served on the admin listener.
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    request_bytes: IntCounterVec,
    response_bytes: IntCounterVec,
    upstream_errors: IntCounterVec,
    filter_denials: IntCounterVec,
    jwks_fetches: IntCounterVec,
    repository_calls: IntCounterVec,
    pub access_log_dropped: IntCounter,
    retries: IntCounterVec,
    retry_budget_exhausted: IntCounterVec,
    overflows: IntCounterVec,
    ejections: IntCounterVec,
    health_checks: IntCounterVec,
    split_requests: IntCounterVec,
    mirror_requests: IntCounterVec,
    mirror_comparisons: IntCounterVec,
    mirror_max_error: GaugeVec,
    pub downstream_connections: IntGauge,
    downstream_accepted: IntCounterVec,
    downstream_refused: IntCounterVec,
    downstream_timeouts: IntCounterVec,
    downstream_tls_failures: IntCounterVec,
    /// Client-facing certificate loads after a file changed, by `result`: `success` or `failure`.
    pub tls_certificate_reloads: IntCounterVec,
    /// Config reloads by `result`: `success` or `failure`.
    pub config_reloads: IntCounterVec,
    /// Unix time of the last config loaded or reloaded successfully.
    pub config_last_reload_success: Gauge,
    /// Requests still running when the shutdown timeout ended, and cut.
    pub requests_cut: IntCounter,
    /// Spans the collector accepted.
    pub trace_spans_exported: IntCounter,
    /// Spans lost: the export queue was full, or their export failed.
    pub trace_spans_dropped_queue_full: IntCounter,
    pub trace_spans_dropped_export_failed: IntCounter,
}

/// One listener's client-connection counters, resolved once at start.
#[derive(Clone, Debug)]
pub struct DownstreamMetrics {
    /// Connections taken in (those refused at once are not counted here).
    pub accepted: IntCounter,
    /// Connections closed at once because `max_connections` were open.
    pub refused: IntCounter,
    /// Connections closed because a request header took longer than `header_read_timeout_ms`.
    pub header_timeouts: IntCounter,
    /// Connections closed after `idle_timeout_ms` without a request.
    pub idle_timeouts: IntCounter,
    /// TLS handshakes that failed (a bad or missing client certificate, no common
    /// version, cipher or protocol, not TLS at all).
    pub tls_failures: IntCounter,
}

/// The comparison counters and error gauges of one route's mirror, for one model and version.
pub struct ComparisonMetrics {
    pub matched: IntCounter,
    pub mismatched: IntCounter,
    /// Answers that could not be compared (undecodable, too large, the primary failed).
    pub uncomparable: IntCounter,
    pub max_abs_error: Gauge,
    pub max_rel_error: Gauge,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "trident_requests_total",
                "Requests answered, by route model, protocol and status",
            ),
            &["model", "protocol", "status"],
        )
        .expect("static metric definition");
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "trident_request_duration_seconds",
                "Time from request start to the end of the response, by route model, \
                 protocol, status and the pool that served it (none: answered by Trident first)",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["model", "protocol", "status", "pool"],
        )
        .expect("static metric definition");
        let body_bytes = |name, help| {
            IntCounterVec::new(Opts::new(name, help), &["model", "protocol"])
                .expect("static metric definition")
        };
        let request_bytes = body_bytes(
            "trident_request_bytes_total",
            "Request body bytes read from clients, by route model and protocol",
        );
        let response_bytes = body_bytes(
            "trident_response_bytes_total",
            "Response body bytes sent to clients, by route model and protocol",
        );
        let build_info = IntGaugeVec::new(
            Opts::new(
                "trident_build_info",
                "1, labelled with the version and git commit Trident was built from",
            ),
            &["version", "commit"],
        )
        .expect("static metric definition");
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION"), env!("TRIDENT_COMMIT")])
            .set(1);
        let upstream_errors = IntCounterVec::new(
            Opts::new(
                "trident_upstream_errors_total",
                "Failures talking to an upstream Triton, by pool and kind",
            ),
            &["pool", "kind"],
        )
        .expect("static metric definition");
        let access_log_dropped = IntCounter::new(
            "trident_access_log_dropped_total",
            "Access log lines dropped because the writer could not keep up",
        )
        .expect("static metric definition");
        let filter_denials = IntCounterVec::new(
            Opts::new(
                "trident_filter_denials_total",
                "Requests refused by a filter, by filter name and reason",
            ),
            &["filter", "reason"],
        )
        .expect("static metric definition");
        let repository_calls = IntCounterVec::new(
            Opts::new(
                "trident_repository_calls_total",
                "Model repository calls Trident sent to every endpoint of a pool, by action \
                 (load, unload, index) and result (ok: every endpoint succeeded)",
            ),
            &["pool", "action", "result"],
        )
        .expect("static metric definition");
        let jwks_fetches = IntCounterVec::new(
            Opts::new(
                "trident_jwks_fetches_total",
                "JWKS URL fetches by a jwt filter, by result (ok: keys installed)",
            ),
            &["filter", "result"],
        )
        .expect("static metric definition");
        let retries = IntCounterVec::new(
            Opts::new(
                "trident_retries_total",
                "Requests tried again on another endpoint, by pool and reason",
            ),
            &["pool", "reason"],
        )
        .expect("static metric definition");
        let retry_budget_exhausted = IntCounterVec::new(
            Opts::new(
                "trident_retry_budget_exhausted_total",
                "Retryable answers passed to the client because the pool's retry budget was spent",
            ),
            &["pool"],
        )
        .expect("static metric definition");
        let overflows = IntCounterVec::new(
            Opts::new(
                "trident_overflow_total",
                "Requests refused by a pool's circuit breaker, by the cap they hit (requests|pending)",
            ),
            &["pool", "kind"],
        )
        .expect("static metric definition");
        let ejections = IntCounterVec::new(
            Opts::new(
                "trident_outlier_ejections_total",
                "Endpoints ejected by outlier detection, by model (_all: every model) and detector",
            ),
            &["pool", "endpoint", "model", "reason"],
        )
        .expect("static metric definition");
        let health_checks = IntCounterVec::new(
            Opts::new(
                "trident_health_checks_total",
                "Active readiness checks, by result (model _all: the server's own readiness)",
            ),
            &["pool", "endpoint", "model", "result"],
        )
        .expect("static metric definition");
        let split_requests = IntCounterVec::new(
            Opts::new(
                "trident_split_requests_total",
                "Requests of a split route, by the side that took them (pool, or pool@version)",
            ),
            &["route", "side"],
        )
        .expect("static metric definition");
        let mirror_requests = IntCounterVec::new(
            Opts::new(
                "trident_mirror_requests_total",
                "Mirror copies by result: answered, or why they were dropped or failed",
            ),
            &["route", "pool", "result"],
        )
        .expect("static metric definition");
        let mirror_comparisons = IntCounterVec::new(
            Opts::new(
                "trident_mirror_comparisons_total",
                "Mirror answers compared with the primary's, by model, mirror model version and result",
            ),
            &["route", "model", "version", "result"],
        )
        .expect("static metric definition");
        let mirror_max_error = GaugeVec::new(
            Opts::new(
                "trident_mirror_max_error",
                "Largest tensor value difference seen between mirror and primary (kind: abs or rel)",
            ),
            &["route", "model", "version", "kind"],
        )
        .expect("static metric definition");
        let downstream_connections = IntGauge::new(
            "trident_downstream_connections",
            "Client connections open, over all listeners",
        )
        .expect("static metric definition");
        let downstream_accepted = IntCounterVec::new(
            Opts::new(
                "trident_downstream_connections_accepted_total",
                "Client connections taken in (not refused for max_connections), by listener",
            ),
            &["listener"],
        )
        .expect("static metric definition");
        let downstream_refused = IntCounterVec::new(
            Opts::new(
                "trident_downstream_connections_refused_total",
                "Client connections closed on arrival because max_connections were open",
            ),
            &["listener"],
        )
        .expect("static metric definition");
        let downstream_timeouts = IntCounterVec::new(
            Opts::new(
                "trident_downstream_timeouts_total",
                "Client connections closed by a timeout (header: request header too slow, \
                 idle: no request in time)",
            ),
            &["listener", "kind"],
        )
        .expect("static metric definition");
        let downstream_tls_failures = IntCounterVec::new(
            Opts::new(
                "trident_downstream_tls_handshake_failures_total",
                "Client TLS handshakes that failed (refused or missing client certificate, no \
                 common version, cipher or protocol, not TLS)",
            ),
            &["listener"],
        )
        .expect("static metric definition");
        let tls_certificate_reloads = IntCounterVec::new(
            Opts::new(
                "trident_tls_certificate_reloads_total",
                "Loads of changed client-facing certificate, key or CA files, by result: success \
                 or failure (the certificates in use are kept)",
            ),
            &["result"],
        )
        .expect("static metric definition");
        let config_reloads = IntCounterVec::new(
            Opts::new(
                "trident_config_reloads_total",
                "Config reloads (SIGHUP, POST /reload) by result: success or failure",
            ),
            &["result"],
        )
        .expect("static metric definition");
        let config_last_reload_success = Gauge::new(
            "trident_config_last_reload_success_timestamp_seconds",
            "Unix time of the last config loaded (at start) or reloaded successfully",
        )
        .expect("static metric definition");
        let requests_cut = IntCounter::new(
            "trident_requests_cut_total",
            "Requests still running when shutdown_timeout_secs ended after SIGTERM, and cut",
        )
        .expect("static metric definition");
        let trace_spans_exported = IntCounter::new(
            "trident_trace_spans_exported_total",
            "Trace spans the OTLP collector accepted",
        )
        .expect("static metric definition");
        let trace_spans_dropped = IntCounterVec::new(
            Opts::new(
                "trident_trace_spans_dropped_total",
                "Trace spans lost, by reason: queue_full (the export queue was full) or \
                 export_failed (the collector failed, timed out or rejected them)",
            ),
            &["reason"],
        )
        .expect("static metric definition");
        for collector in [
            Box::new(config_reloads.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(config_last_reload_success.clone()),
            Box::new(requests_cut.clone()),
            Box::new(requests.clone()),
            Box::new(downstream_connections.clone()),
            Box::new(downstream_accepted.clone()),
            Box::new(downstream_refused.clone()),
            Box::new(downstream_timeouts.clone()),
            Box::new(downstream_tls_failures.clone()),
            Box::new(tls_certificate_reloads.clone()),
            Box::new(split_requests.clone()),
            Box::new(mirror_requests.clone()),
            Box::new(mirror_comparisons.clone()),
            Box::new(mirror_max_error.clone()),
            Box::new(retries.clone()),
            Box::new(retry_budget_exhausted.clone()),
            Box::new(overflows.clone()),
            Box::new(ejections.clone()),
            Box::new(health_checks.clone()),
            Box::new(latency.clone()),
            Box::new(request_bytes.clone()),
            Box::new(response_bytes.clone()),
            Box::new(build_info),
            Box::new(upstream_errors.clone()),
            Box::new(filter_denials.clone()),
            Box::new(jwks_fetches.clone()),
            Box::new(repository_calls.clone()),
            Box::new(access_log_dropped.clone()),
            Box::new(trace_spans_exported.clone()),
            Box::new(trace_spans_dropped.clone()),
        ] {
            registry
                .register(collector)
                .expect("metric names are unique");
        }
        for result in ["success", "failure"] {
            config_reloads.with_label_values(&[result]);
            tls_certificate_reloads.with_label_values(&[result]);
        }
        Metrics {
            registry,
            requests,
            latency,
            request_bytes,
            response_bytes,
            upstream_errors,
            filter_denials,
            jwks_fetches,
            repository_calls,
            access_log_dropped,
            retries,
            retry_budget_exhausted,
            overflows,
            ejections,
            health_checks,
            split_requests,
            mirror_requests,
            mirror_comparisons,
            mirror_max_error,
            downstream_connections,
            downstream_accepted,
            downstream_refused,
            downstream_timeouts,
            downstream_tls_failures,
            tls_certificate_reloads,
            config_reloads,
            config_last_reload_success,
            requests_cut,
            trace_spans_exported,
            trace_spans_dropped_queue_full: trace_spans_dropped.with_label_values(&["queue_full"]),
            trace_spans_dropped_export_failed: trace_spans_dropped
                .with_label_values(&["export_failed"]),
        }
    }

    /// The client-connection counters of listener `listener` (`http`, `grpc`).
    pub fn downstream(&self, listener: &str) -> DownstreamMetrics {
        let timeouts = |kind| {
            self.downstream_timeouts
                .with_label_values(&[listener, kind])
        };
        DownstreamMetrics {
            accepted: self.downstream_accepted.with_label_values(&[listener]),
            refused: self.downstream_refused.with_label_values(&[listener]),
            header_timeouts: timeouts("header"),
            idle_timeouts: timeouts("idle"),
            tls_failures: self.downstream_tls_failures.with_label_values(&[listener]),
        }
    }

    /// The counter of one side of a split route, resolved once at start.
    pub fn split_side(&self, route: &str, side: &str) -> IntCounter {
        self.split_requests.with_label_values(&[route, side])
    }

    /// The counter of one mirror result, resolved once at start.
    pub fn mirror_result(&self, route: &str, pool: &str, result: &str) -> IntCounter {
        self.mirror_requests
            .with_label_values(&[route, pool, result])
    }

    /// The comparison metrics of a route's mirror for one model and version.
    pub fn mirror_comparison(&self, route: &str, model: &str, version: &str) -> ComparisonMetrics {
        let counter = |result| {
            self.mirror_comparisons
                .with_label_values(&[route, model, version, result])
        };
        let gauge = |kind| {
            self.mirror_max_error
                .with_label_values(&[route, model, version, kind])
        };
        ComparisonMetrics {
            matched: counter("match"),
            mismatched: counter("mismatch"),
            uncomparable: counter("error"),
            max_abs_error: gauge("abs"),
            max_rel_error: gauge("rel"),
        }
    }

    /// Counts a retry; retries are rare, so a labelled lookup is fine.
    pub fn retry(&self, pool: &str, reason: &str) {
        self.retries.with_label_values(&[pool, reason]).inc();
    }

    pub fn retry_budget_exhausted(&self, pool: &str) {
        self.retry_budget_exhausted.with_label_values(&[pool]).inc();
    }

    pub fn ejection(&self, pool: &str, endpoint: &str, model: &str, reason: &str) {
        self.ejections
            .with_label_values(&[pool, endpoint, model, reason])
            .inc();
    }

    pub fn health_check(&self, pool: &str, endpoint: &str, model: &str, passed: bool) {
        let result = if passed { "passed" } else { "failed" };
        self.health_checks
            .with_label_values(&[pool, endpoint, model, result])
            .inc();
    }

    /// The denial counter of one filter and reason, resolved once at start.
    pub fn filter_denials(&self, filter: &str, reason: &str) -> IntCounter {
        self.filter_denials.with_label_values(&[filter, reason])
    }

    /// Counts a fanned-out repository call; they are rare, so a labelled lookup is fine.
    pub fn repository_call(&self, pool: &str, action: &str, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.repository_calls
            .with_label_values(&[pool, action, result])
            .inc();
    }

    /// Counts a JWKS fetch of the jwt filter `filter`; called from its refresh thread.
    pub fn jwks_fetch_counter(&self, filter: &str) -> impl Fn(bool) + Send + Sync + 'static {
        let ok = self.jwks_fetches.with_label_values(&[filter, "ok"]);
        let failed = self.jwks_fetches.with_label_values(&[filter, "error"]);
        move |fetched| if fetched { ok.inc() } else { failed.inc() }
    }

    /// Counters and histograms for one route (`model` label) and protocol; `pools`:
    /// the names of the config's pools, by [`config::PoolId`].
    pub fn route(&self, model: &str, protocol: Protocol, pools: &Arc<[String]>) -> RouteMetrics {
        let labels = [model, protocol.label()];
        RouteMetrics {
            model: model.to_owned(),
            protocol,
            pools: pools.clone(),
            requests: self.requests.clone(),
            latency: self.latency.clone(),
            request_bytes: self.request_bytes.with_label_values(&labels),
            response_bytes: self.response_bytes.with_label_values(&labels),
            by_outcome: (0..SLOTS).map(|_| OnceLock::new()).collect(),
        }
    }

    /// Registers at 0 the counters of `pool` that would otherwise appear only with
    /// their first event. Per endpoint only the endpoint-wide ejections and checks
    /// (model `_all`): per-model ones would multiply the series by the routed models.
    /// The endpoints of `previous` (the pool before a reload or re-resolution) that
    /// are gone lose those series, as they lose their `trident_endpoint_*` ones.
    pub fn register_pool(&self, pool: &config::Pool, previous: Option<&config::Pool>) {
        let name = pool.name.as_str();
        for kind in UPSTREAM_ERROR_KINDS {
            self.upstream_errors.with_label_values(&[name, kind]);
        }
        for reason in RETRY_REASONS {
            self.retries.with_label_values(&[name, reason]);
        }
        for kind in OVERFLOW_KINDS {
            self.overflows.with_label_values(&[name, kind]);
        }
        self.retry_budget_exhausted.with_label_values(&[name]);
        let labels = |pool: &config::Pool| -> Vec<String> {
            pool.endpoints.iter().map(config::Endpoint::label).collect()
        };
        let current = labels(pool);
        /// The label values of one endpoint's ejection and check series.
        fn endpoint_series<'a>(pool: &'a str, endpoint: &'a str) -> EndpointSeries<'a> {
            let ejections = EJECTION_REASONS.map(|reason| [pool, endpoint, "_all", reason]);
            let checks = ["passed", "failed"].map(|result| [pool, endpoint, "_all", result]);
            (ejections, checks)
        }
        for gone in previous.iter().flat_map(|p| labels(p)) {
            if current.contains(&gone) {
                continue;
            }
            let (ejections, checks) = endpoint_series(name, &gone);
            // Absent series (never registered) are fine to remove: nothing happens.
            for labels in ejections {
                let _ = self.ejections.remove_label_values(&labels);
            }
            for labels in checks {
                let _ = self.health_checks.remove_label_values(&labels);
            }
        }
        for endpoint in &current {
            let (ejections, checks) = endpoint_series(name, endpoint);
            for labels in ejections {
                self.ejections.with_label_values(&labels);
            }
            for labels in checks.iter().filter(|_| pool.health.is_some()) {
                self.health_checks.with_label_values(labels);
            }
        }
    }

    /// Counts an upstream failure; off the hot path, so a labelled lookup is fine.
    /// A request refused by a pool's circuit breaker; `kind`: `requests` or `pending`.
    pub fn overflow(&self, pool: &str, kind: &str) {
        self.overflows.with_label_values(&[pool, kind]).inc();
    }

    pub fn upstream_error(&self, pool: &str, kind: &str) {
        self.upstream_errors.with_label_values(&[pool, kind]).inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail on I/O; a metric family error would be our bug.
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            log::error!("encoding metrics: {e}");
        }
        super::process::render(&mut out);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The metrics of one route and protocol.
pub struct RouteMetrics {
    model: String,
    protocol: Protocol,
    /// Pool names by [`config::PoolId`].
    pools: Arc<[String]>,
    requests: IntCounterVec,
    latency: HistogramVec,
    request_bytes: IntCounter,
    response_bytes: IntCounter,
    /// By [`Outcome::slot`], resolved on first use: a route sees a handful of statuses.
    by_outcome: Box<[OnceLock<Box<OutcomeMetrics>>]>,
}

/// The series of one route, protocol and status.
struct OutcomeMetrics {
    requests: IntCounter,
    /// By [`config::PoolId`], then [`NO_POOL`]; resolved on first use.
    latency: Box<[OnceLock<Histogram>]>,
}

impl RouteMetrics {
    /// Counts a finished request: `pool` served it (`None`: Trident answered before
    /// choosing one); `bytes`: its request and response body bytes.
    pub fn record(
        &self,
        outcome: Outcome,
        pool: Option<config::PoolId>,
        elapsed: Duration,
        (request_bytes, response_bytes): (usize, usize),
    ) {
        let status = self.by_outcome[outcome.slot()].get_or_init(|| {
            let label = outcome.label();
            Box::new(OutcomeMetrics {
                requests: self.requests.with_label_values(&[
                    &self.model,
                    self.protocol.label(),
                    &label,
                ]),
                latency: (0..=self.pools.len()).map(|_| OnceLock::new()).collect(),
            })
        });
        status.requests.inc();
        let pool = pool.filter(|&p| p < self.pools.len());
        let slot = pool.unwrap_or(self.pools.len());
        status.latency[slot]
            .get_or_init(|| {
                let pool = pool.map_or(NO_POOL, |p| &self.pools[p]);
                self.latency.with_label_values(&[
                    &self.model,
                    self.protocol.label(),
                    &outcome.label(),
                    pool,
                ])
            })
            .observe(elapsed.as_secs_f64());
        self.request_bytes.inc_by(request_bytes as u64);
        self.response_bytes.inc_by(response_bytes as u64);
    }
}

/// A histogram of one endpoint's tries (`trident_upstream_request_duration_seconds`),
/// kept by the endpoint and rendered with it: an endpoint a reload or re-resolution
/// removes takes its series along, as the `trident_endpoint_*` gauges do.
pub fn upstream_latency(pool: &str, endpoint: &str) -> Histogram {
    Histogram::with_opts(
        HistogramOpts::new(
            "trident_upstream_request_duration_seconds",
            "Upstream tries, from choosing the endpoint (connecting included) to the end of \
             the answer relayed to the client, or the try's failure",
        )
        .const_label("pool", pool)
        .const_label("endpoint", endpoint)
        .buckets(LATENCY_BUCKETS.to_vec()),
    )
    .expect("static metric definition")
}

/// The Prometheus text of `histograms` (from [`upstream_latency`]), as one family.
pub fn render_upstream_latency<'a>(
    histograms: impl Iterator<Item = &'a Histogram>,
    out: &mut Vec<u8>,
) {
    let mut family: Option<prometheus::proto::MetricFamily> = None;
    for collected in histograms.flat_map(|h| h.collect()) {
        match family.as_mut() {
            None => family = Some(collected),
            Some(family) => family
                .mut_metric()
                .extend(collected.get_metric().iter().cloned()),
        }
    }
    if let Some(family) = family {
        if let Err(e) = TextEncoder::new().encode(&[family], out) {
            log::error!("encoding metrics: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_are_counted_by_label() {
        let metrics = Metrics::new();
        let pools: Arc<[String]> = ["a".to_owned()].into();
        let route = metrics.route("resnet50", Protocol::Grpc, &pools);
        let ms = Duration::from_millis;
        route.record(Outcome::Grpc(0), Some(0), ms(3), (10, 20));
        route.record(Outcome::Grpc(14), Some(0), ms(3), (10, 0));
        route.record(Outcome::Grpc(14), None, ms(3), (10, 0));
        route.record(Outcome::Grpc(200), Some(7), ms(3), (0, 0));
        metrics
            .route("*", Protocol::Http, &pools)
            .record(Outcome::Http(404), None, ms(1), (5, 6));
        metrics.upstream_error("a", "connect_refused");
        let text = String::from_utf8(metrics.render()).unwrap();
        for line in [
            r#"trident_requests_total{model="resnet50",protocol="grpc",status="OK"} 1"#,
            r#"trident_requests_total{model="resnet50",protocol="grpc",status="UNAVAILABLE"} 2"#,
            r#"trident_requests_total{model="resnet50",protocol="grpc",status="none"} 1"#,
            r#"trident_requests_total{model="*",protocol="http",status="404"} 1"#,
            r#"trident_request_duration_seconds_count{model="resnet50",pool="a",protocol="grpc",status="OK"} 1"#,
            r#"trident_request_duration_seconds_count{model="resnet50",pool="a",protocol="grpc",status="UNAVAILABLE"} 1"#,
            r#"trident_request_duration_seconds_count{model="resnet50",pool="none",protocol="grpc",status="UNAVAILABLE"} 1"#,
            // A pool id outside the config's (cannot happen) is labelled as none.
            r#"trident_request_duration_seconds_count{model="resnet50",pool="none",protocol="grpc",status="none"} 1"#,
            r#"trident_request_bytes_total{model="resnet50",protocol="grpc"} 30"#,
            r#"trident_response_bytes_total{model="resnet50",protocol="grpc"} 20"#,
            r#"trident_response_bytes_total{model="*",protocol="http"} 6"#,
            r#"trident_upstream_errors_total{kind="connect_refused",pool="a"} 1"#,
            r#"trident_config_reloads_total{result="failure"} 0"#,
            r#"trident_tls_certificate_reloads_total{result="success"} 0"#,
            "process_open_fds ",
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
    }

    #[test]
    fn endpoint_histograms_render_as_one_family() {
        let a = upstream_latency("p", "10.0.0.1:80");
        let b = upstream_latency("p", "10.0.0.2:80");
        a.observe(0.002);
        let mut out = Vec::new();
        render_upstream_latency([&a, &b].into_iter(), &mut out);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.matches("# TYPE").count(), 1, "{text}");
        for line in [
            r#"trident_upstream_request_duration_seconds_count{endpoint="10.0.0.1:80",pool="p"} 1"#,
            r#"trident_upstream_request_duration_seconds_count{endpoint="10.0.0.2:80",pool="p"} 0"#,
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
    }
}
