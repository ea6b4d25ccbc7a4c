//! A pool's routing and resilience sections: `[pools.balancer]`, `[pools.load_metrics]`,
//! `[pools.outlier]`, `[pools.health]`, `[pools.retry]`, `[pools.sequences]` and
//! `[pools.circuit_breaker]`.
//! Every key is optional; defaults follow Envoy's where it has one.

use std::time::Duration;

use filters::balance::{BalanceSettings, Strategy};
use filters::outlier::{FailurePercentageSettings, OutlierSettings, SuccessRateSettings};

use super::file::{
    CircuitBreakerFile, HealthFile, OutlierFile, PoolFile, RetryFile, SequencesFile, StrategyFile,
};
use super::{CircuitBreaker, Errors, HealthChecks, LoadMetrics, RetryPolicy, Sequences};
use crate::protocol::grpc::code_from_name;

/// Pingora keeps at most this much of a request body for replaying it to another endpoint.
pub const RETRY_BUFFER_LIMIT: usize = 64 << 10;

/// A duration in milliseconds that must not be zero, or `default`.
pub(super) fn millis(
    path: &str,
    key: &str,
    value: Option<u64>,
    default: u64,
    errors: &mut Errors,
) -> Duration {
    if value == Some(0) {
        errors.push(&format!("{path}.{key}"), "must be at least 1");
    }
    Duration::from_millis(value.unwrap_or(default).max(1))
}

pub(super) fn at_least_one(
    path: &str,
    key: &str,
    value: Option<u32>,
    default: u32,
    errors: &mut Errors,
) -> u32 {
    if value == Some(0) {
        errors.push(&format!("{path}.{key}"), "must be at least 1");
    }
    value.unwrap_or(default).max(1)
}

pub(super) fn balance(pool_path: &str, pool: &PoolFile, errors: &mut Errors) -> BalanceSettings {
    let defaults = BalanceSettings::default();
    let file = pool.balancer.as_ref();
    let path = format!("{pool_path}.balancer");
    let get = |key: fn(&super::file::BalancerFile) -> Option<u64>| file.and_then(key);
    let ms = |d: Duration| d.as_millis() as u64;
    let mut settings = BalanceSettings {
        strategy: match file.and_then(|f| f.strategy) {
            None | Some(StrategyFile::PeakEwma) => Strategy::PeakEwma,
            Some(StrategyFile::LeastRequest) => Strategy::LeastRequest,
            Some(StrategyFile::RoundRobin) => Strategy::RoundRobin,
        },
        half_life: millis(
            &path,
            "half_life_ms",
            get(|f| f.half_life_ms),
            ms(defaults.half_life),
            errors,
        ),
        default_rtt: millis(
            &path,
            "default_rtt_ms",
            get(|f| f.default_rtt_ms),
            ms(defaults.default_rtt),
            errors,
        ),
        failure_penalty: millis(
            &path,
            "failure_penalty_ms",
            get(|f| f.failure_penalty_ms),
            ms(defaults.failure_penalty),
            errors,
        ),
        ..defaults
    };
    if let Some(metrics) = &pool.load_metrics {
        let interval = metrics.interval_ms.unwrap_or(1_000).max(1);
        settings.backend_load_stale_after = millis(
            &format!("{pool_path}.load_metrics"),
            "stale_after_ms",
            metrics.stale_after_ms,
            3 * interval,
            errors,
        );
    }
    settings
}

pub(super) fn load_metrics(
    path: &str,
    pool: &PoolFile,
    errors: &mut Errors,
) -> Option<LoadMetrics> {
    let file = pool.load_metrics.as_ref()?;
    let path = format!("{path}.load_metrics");
    if pool.endpoints.iter().all(|e| e.metrics.is_none()) {
        errors.push(
            &path,
            "no endpoint has a `metrics` address (Triton's metrics port, e.g. \"10.0.0.1:8002\") to scrape",
        );
    }
    Some(LoadMetrics {
        interval: millis(&path, "interval_ms", file.interval_ms, 1_000, errors),
        timeout: millis(&path, "timeout_ms", file.timeout_ms, 500, errors),
    })
}

pub(super) fn outlier(
    path: &str,
    file: Option<&OutlierFile>,
    errors: &mut Errors,
) -> OutlierSettings {
    let defaults = OutlierSettings::default();
    let Some(file) = file else { return defaults };
    let path = format!("{path}.outlier");
    let ms = |d: Duration| d.as_millis() as u64;
    if file.max_ejection_percent.is_some_and(|p| p > 100) {
        errors.push(
            &format!("{path}.max_ejection_percent"),
            "must be at most 100",
        );
    }
    let base_ejection = millis(
        &path,
        "base_ejection_ms",
        file.base_ejection_ms,
        ms(defaults.base_ejection),
        errors,
    );
    let max_ejection = millis(
        &path,
        "max_ejection_ms",
        file.max_ejection_ms,
        ms(defaults.max_ejection),
        errors,
    );
    if max_ejection < base_ejection {
        errors.push(
            &format!("{path}.max_ejection_ms"),
            "must not be shorter than base_ejection_ms",
        );
    }
    let success_rate = match &file.success_rate {
        None => defaults.success_rate,
        Some(f) if f.enabled == Some(false) => None,
        Some(f) => {
            let d = SuccessRateSettings::default();
            let sub = format!("{path}.success_rate");
            if f.stdev_factor.is_some_and(|x| !(x.is_finite() && x > 0.0)) {
                errors.push(&format!("{sub}.stdev_factor"), "must be a positive number");
            }
            Some(SuccessRateSettings {
                min_hosts: at_least_one(&sub, "min_hosts", f.min_hosts, d.min_hosts, errors),
                request_volume: at_least_one(
                    &sub,
                    "request_volume",
                    f.request_volume,
                    d.request_volume,
                    errors,
                ),
                stdev_factor: f.stdev_factor.unwrap_or(d.stdev_factor),
            })
        }
    };
    let failure_percentage = match &file.failure_percentage {
        None => None,
        Some(f) if f.enabled == Some(false) => None,
        Some(f) => {
            let d = FailurePercentageSettings::default();
            let sub = format!("{path}.failure_percentage");
            if f.threshold_percent.is_some_and(|p| p > 100) {
                errors.push(&format!("{sub}.threshold_percent"), "must be at most 100");
            }
            Some(FailurePercentageSettings {
                threshold_percent: f.threshold_percent.unwrap_or(d.threshold_percent),
                min_hosts: at_least_one(&sub, "min_hosts", f.min_hosts, d.min_hosts, errors),
                request_volume: at_least_one(
                    &sub,
                    "request_volume",
                    f.request_volume,
                    d.request_volume,
                    errors,
                ),
            })
        }
    };
    OutlierSettings {
        consecutive_failures: file
            .consecutive_failures
            .unwrap_or(defaults.consecutive_failures),
        interval: millis(
            &path,
            "interval_ms",
            file.interval_ms,
            ms(defaults.interval),
            errors,
        ),
        base_ejection,
        max_ejection,
        max_ejection_percent: file
            .max_ejection_percent
            .unwrap_or(defaults.max_ejection_percent)
            .min(100),
        success_rate,
        failure_percentage,
    }
}

pub(super) fn health(
    path: &str,
    file: Option<&HealthFile>,
    errors: &mut Errors,
) -> Option<HealthChecks> {
    let empty = HealthFile::default();
    let file = file.unwrap_or(&empty);
    if file.enabled == Some(false) {
        return None;
    }
    let path = format!("{path}.health");
    let interval = millis(&path, "interval_ms", file.interval_ms, 5_000, errors);
    let unhealthy_interval = millis(
        &path,
        "unhealthy_interval_ms",
        file.unhealthy_interval_ms,
        1_000,
        errors,
    );
    let timeout = millis(&path, "timeout_ms", file.timeout_ms, 1_000, errors);
    if timeout > interval {
        errors.push(
            &format!("{path}.timeout_ms"),
            "must not be longer than interval_ms",
        );
    }
    Some(HealthChecks {
        interval,
        unhealthy_interval: unhealthy_interval.min(interval),
        timeout,
        unhealthy_threshold: at_least_one(
            &path,
            "unhealthy_threshold",
            file.unhealthy_threshold,
            2,
            errors,
        ),
        healthy_threshold: at_least_one(
            &path,
            "healthy_threshold",
            file.healthy_threshold,
            1,
            errors,
        ),
        models: file.models.unwrap_or(true),
    })
}

pub(super) fn retry(path: &str, file: Option<&RetryFile>, errors: &mut Errors) -> RetryPolicy {
    let empty = RetryFile::default();
    let file = file.unwrap_or(&empty);
    let path = format!("{path}.retry");
    for (i, status) in file.on_status.iter().flatten().enumerate() {
        if !(500..600).contains(status) && *status != 429 {
            errors.push(
                &format!("{path}.on_status[{i}]"),
                format!("{status} is not retryable: use 429 or a 5xx status"),
            );
        }
    }
    let on_grpc_status = match &file.on_grpc_status {
        None => vec![crate::protocol::grpc::GrpcCode::Unavailable as u8],
        Some(names) => names
            .iter()
            .enumerate()
            .filter_map(|(i, name)| {
                let code = code_from_name(name);
                if code.is_none_or(|c| c == 0) {
                    errors.push(
                        &format!("{path}.on_grpc_status[{i}]"),
                        format!("{name:?} is not a gRPC error code name (e.g. \"UNAVAILABLE\")"),
                    );
                }
                code
            })
            .collect(),
    };
    let ratio = file.budget_ratio.unwrap_or(0.2);
    if !(ratio.is_finite() && (0.0..=10.0).contains(&ratio)) {
        errors.push(
            &format!("{path}.budget_ratio"),
            "must be a number from 0 to 10",
        );
    }
    let max_body_bytes = file.max_body_bytes.unwrap_or(RETRY_BUFFER_LIMIT);
    if max_body_bytes > RETRY_BUFFER_LIMIT {
        errors.push(
            &format!("{path}.max_body_bytes"),
            format!("at most {RETRY_BUFFER_LIMIT}: that is all of a body Pingora keeps for replaying it"),
        );
    }
    let backoff_base = millis(&path, "backoff_base_ms", file.backoff_base_ms, 25, errors);
    let backoff_max = millis(&path, "backoff_max_ms", file.backoff_max_ms, 250, errors);
    RetryPolicy {
        max_retries: file.max_retries.unwrap_or(2),
        on_status: file.on_status.clone().unwrap_or_else(|| vec![503]),
        on_grpc_status,
        budget_ratio: if ratio.is_finite() {
            ratio.clamp(0.0, 10.0)
        } else {
            0.2
        },
        budget_min_per_second: file.budget_min_per_second.unwrap_or(10),
        backoff_base,
        backoff_max: backoff_max.max(backoff_base),
        max_body_bytes: max_body_bytes.min(RETRY_BUFFER_LIMIT),
    }
}

pub(super) fn sequences(
    path: &str,
    file: Option<&SequencesFile>,
    errors: &mut Errors,
) -> Sequences {
    let empty = SequencesFile::default();
    let file = file.unwrap_or(&empty);
    let path = format!("{path}.sequences");
    if file.idle_timeout_secs == Some(0) {
        errors.push(&format!("{path}.idle_timeout_secs"), "must be at least 1");
    }
    if file.max_sequences == Some(0) {
        errors.push(&format!("{path}.max_sequences"), "must be at least 1");
    }
    Sequences {
        enabled: file.enabled.unwrap_or(true),
        idle_timeout: Duration::from_secs(file.idle_timeout_secs.unwrap_or(600).max(1)),
        max_sequences: file.max_sequences.unwrap_or(100_000).max(1),
        placement: file.placement,
    }
}

/// Envoy's defaults: high enough never to bind a healthy pool.
const DEFAULT_MAX_REQUESTS: usize = 1024;
const DEFAULT_MAX_PENDING: usize = 1024;

pub(super) fn circuit_breaker(
    path: &str,
    file: Option<&CircuitBreakerFile>,
    errors: &mut Errors,
) -> CircuitBreaker {
    let empty = CircuitBreakerFile::default();
    let file = file.unwrap_or(&empty);
    let path = format!("{path}.circuit_breaker");
    let cap = |key: &str, value: Option<usize>, default: usize, errors: &mut Errors| {
        if value == Some(0) {
            errors.push(&format!("{path}.{key}"), "must be at least 1");
        }
        value.unwrap_or(default).max(1)
    };
    CircuitBreaker {
        max_requests: cap(
            "max_requests",
            file.max_requests,
            DEFAULT_MAX_REQUESTS,
            errors,
        ),
        max_pending: cap("max_pending", file.max_pending, DEFAULT_MAX_PENDING, errors),
    }
}
