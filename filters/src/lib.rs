//! Trident's request filters and routing algorithms. Each module is one
//! algorithm with a small, pure core, tested on its own; the proxy in the
//! `trident` crate adapts them to request phases.
#![forbid(unsafe_code)]

pub mod round_robin;
