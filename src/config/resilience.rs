//! A pool's routing and resilience sections: `[pools.balancer]`, `[pools.load_metrics]`,
//! `[pools.outlier]`, `[pools.health]`, `[pools.retry]`, `[pools.sequences]` and
//! `[pools.circuit_breaker]`.
//! Every key is optional; its default is in [`super::file`], following Envoy's where it has one.

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

/// A duration in milliseconds that must not be zero.
pub(super) fn millis(path: &str, key: &str, value: u64, errors: &mut Errors) -> Duration {
    Duration::from_millis(at_least_one(path, key, value, errors))
}

/// Key `key` of the table at `path`, which must not be zero.
pub(super) fn at_least_one<T: Copy + PartialEq + From<u8>>(
    path: &str,
    key: &str,
    value: T,
    errors: &mut Errors,
) -> T {
    super::at_least_one(&format!("{path}.{key}"), value, errors)
}

pub(super) fn balance(pool_path: &str, pool: &PoolFile, errors: &mut Errors) -> BalanceSettings {
    let file = &pool.balancer;
    let path = format!("{pool_path}.balancer");
    let mut settings = BalanceSettings {
        strategy: match file.strategy {
            StrategyFile::PeakEwma => Strategy::PeakEwma,
            StrategyFile::LeastRequest => Strategy::LeastRequest,
            StrategyFile::RoundRobin => Strategy::RoundRobin,
        },
        half_life: millis(&path, "half_life_ms", file.half_life_ms, errors),
        default_rtt: millis(&path, "default_rtt_ms", file.default_rtt_ms, errors),
        failure_penalty: millis(&path, "failure_penalty_ms", file.failure_penalty_ms, errors),
        ..BalanceSettings::default()
    };
    if let Some(metrics) = &pool.load_metrics {
        settings.backend_load_stale_after = millis(
            &format!("{pool_path}.load_metrics"),
            "stale_after_ms",
            metrics
                .stale_after_ms
                .unwrap_or(3 * metrics.interval_ms.max(1)),
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
        interval: millis(&path, "interval_ms", file.interval_ms, errors),
        timeout: millis(&path, "timeout_ms", file.timeout_ms, errors),
    })
}

pub(super) fn outlier(path: &str, file: &OutlierFile, errors: &mut Errors) -> OutlierSettings {
    let path = format!("{path}.outlier");
    if file.max_ejection_percent > 100 {
        errors.push(
            &format!("{path}.max_ejection_percent"),
            "must be at most 100",
        );
    }
    let base_ejection = millis(&path, "base_ejection_ms", file.base_ejection_ms, errors);
    let max_ejection = millis(&path, "max_ejection_ms", file.max_ejection_ms, errors);
    if max_ejection < base_ejection {
        errors.push(
            &format!("{path}.max_ejection_ms"),
            "must not be shorter than base_ejection_ms",
        );
    }
    let success_rate = Some(&file.success_rate).filter(|f| f.enabled).map(|f| {
        let sub = format!("{path}.success_rate");
        if !(f.stdev_factor.is_finite() && f.stdev_factor > 0.0) {
            errors.push(&format!("{sub}.stdev_factor"), "must be a positive number");
        }
        SuccessRateSettings {
            min_hosts: at_least_one(&sub, "min_hosts", f.min_hosts, errors),
            request_volume: at_least_one(&sub, "request_volume", f.request_volume, errors),
            stdev_factor: f.stdev_factor,
        }
    });
    let failure_percentage = file
        .failure_percentage
        .as_ref()
        .filter(|f| f.enabled)
        .map(|f| {
            let sub = format!("{path}.failure_percentage");
            if f.threshold_percent > 100 {
                errors.push(&format!("{sub}.threshold_percent"), "must be at most 100");
            }
            FailurePercentageSettings {
                threshold_percent: f.threshold_percent,
                min_hosts: at_least_one(&sub, "min_hosts", f.min_hosts, errors),
                request_volume: at_least_one(&sub, "request_volume", f.request_volume, errors),
            }
        });
    OutlierSettings {
        consecutive_failures: file.consecutive_failures,
        interval: millis(&path, "interval_ms", file.interval_ms, errors),
        base_ejection,
        max_ejection,
        max_ejection_percent: file.max_ejection_percent.min(100),
        success_rate,
        failure_percentage,
    }
}

pub(super) fn health(path: &str, file: &HealthFile, errors: &mut Errors) -> Option<HealthChecks> {
    if !file.enabled {
        return None;
    }
    let path = format!("{path}.health");
    let interval = millis(&path, "interval_ms", file.interval_ms, errors);
    let unhealthy_interval = millis(
        &path,
        "unhealthy_interval_ms",
        file.unhealthy_interval_ms,
        errors,
    );
    let timeout = millis(&path, "timeout_ms", file.timeout_ms, errors);
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
            errors,
        ),
        healthy_threshold: at_least_one(&path, "healthy_threshold", file.healthy_threshold, errors),
        models: file.models,
    })
}

pub(super) fn retry(path: &str, file: &RetryFile, errors: &mut Errors) -> RetryPolicy {
    let path = format!("{path}.retry");
    for (i, status) in file.on_status.iter().enumerate() {
        if !(500..600).contains(status) && *status != 429 {
            errors.push(
                &format!("{path}.on_status[{i}]"),
                format!("{status} is not retryable: use 429 or a 5xx status"),
            );
        }
    }
    let on_grpc_status = file
        .on_grpc_status
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
        .collect();
    let ratio = file.budget_ratio;
    if !(ratio.is_finite() && (0.0..=10.0).contains(&ratio)) {
        errors.push(
            &format!("{path}.budget_ratio"),
            "must be a number from 0 to 10",
        );
    }
    let max_body_bytes = file.max_body_bytes;
    if max_body_bytes > RETRY_BUFFER_LIMIT {
        errors.push(
            &format!("{path}.max_body_bytes"),
            format!("at most {RETRY_BUFFER_LIMIT}: that is all of a body Pingora keeps for replaying it"),
        );
    }
    let backoff_base = millis(&path, "backoff_base_ms", file.backoff_base_ms, errors);
    let backoff_max = millis(&path, "backoff_max_ms", file.backoff_max_ms, errors);
    RetryPolicy {
        max_retries: file.max_retries,
        on_status: file.on_status.clone(),
        on_grpc_status,
        budget_ratio: if ratio.is_finite() {
            ratio.clamp(0.0, 10.0)
        } else {
            RetryFile::default().budget_ratio
        },
        budget_min_per_second: file.budget_min_per_second,
        backoff_base,
        backoff_max: backoff_max.max(backoff_base),
        max_body_bytes: max_body_bytes.min(RETRY_BUFFER_LIMIT),
    }
}

pub(super) fn sequences(path: &str, file: &SequencesFile, errors: &mut Errors) -> Sequences {
    let path = format!("{path}.sequences");
    if file.idle_timeout_secs == 0 {
        errors.push(&format!("{path}.idle_timeout_secs"), "must be at least 1");
    }
    if file.max_sequences == 0 {
        errors.push(&format!("{path}.max_sequences"), "must be at least 1");
    }
    Sequences {
        enabled: file.enabled,
        idle_timeout: Duration::from_secs(file.idle_timeout_secs.max(1)),
        max_sequences: file.max_sequences.max(1),
        placement: file.placement,
    }
}

pub(super) fn circuit_breaker(
    path: &str,
    file: &CircuitBreakerFile,
    errors: &mut Errors,
) -> CircuitBreaker {
    let path = format!("{path}.circuit_breaker");
    let cap = |key: &str, value: usize, errors: &mut Errors| {
        if value == 0 {
            errors.push(&format!("{path}.{key}"), "must be at least 1");
        }
        value.max(1)
    };
    CircuitBreaker {
        max_requests: cap("max_requests", file.max_requests, errors),
        max_pending: cap("max_pending", file.max_pending, errors),
    }
}
