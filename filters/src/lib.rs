//! Trident's request filters and routing algorithms. Each module is one
//! algorithm or filter with a small, pure core, tested on its own, and (for
//! filters) a thin [`chain::Filter`] adapter the proxy runs per request.
#![forbid(unsafe_code)]

pub mod affinity;
pub mod api_key;
pub mod balance;
pub mod chain;
pub mod circuit_breaker;
pub mod claims;
pub mod cors;
pub mod jwt;
pub mod mirror;
pub mod outlier;
mod prehashed;
pub mod rate_limit;
pub mod retry;
pub mod split;
pub mod tensor;
pub mod triton_load;

#[cfg(test)]
mod testing;
