//! Trident: a Triton-aware L7 proxy on Pingora. The binary (`main.rs`) is a thin
//! CLI over this library, which integration tests and benchmarks use directly.
#![forbid(unsafe_code)]

pub mod admin;
pub mod config;
pub mod connection;
pub mod deadline;
pub mod demo;
pub mod mirror;
pub mod mock;
pub mod protocol;
pub mod proxy;
pub mod reload;
pub mod repository;
pub mod server;
pub mod shutdown;
pub mod telemetry;
pub mod tls;
pub mod upgrade;
pub mod upstream;
pub mod workers;
