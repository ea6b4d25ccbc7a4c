//! Prometheus metrics, the JSON access log, and rate limiting of the error log.

pub mod access_log;
pub mod log_limit;
pub mod metrics;
pub mod process;
pub mod request_id;
