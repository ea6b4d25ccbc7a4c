//! Prometheus metrics, the JSON access log, rate limiting of the error log, and OTLP tracing.

pub mod access_log;
pub mod error_log;
pub mod log_limit;
pub mod metrics;
pub mod process;
pub mod request_id;
pub mod trace;
