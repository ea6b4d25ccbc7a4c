//! Micro-benchmarks of load balancing: one request's worth of balancer work
//! (pick, start, observe_rtt, finish) over 8 endpoints, for each strategy,
//! alone and with two threads sharing one balancer.
//!
//! `cargo bench --bench balance`.

mod common;

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use filters::balance::{BalanceSettings, Balancer, Strategy};

const ENDPOINTS: usize = 8;

/// One request's worth of balancer work at `now_ns`.
fn request(balancer: &Balancer, now_ns: u64) {
    let Some(i) = balancer.pick(now_ns, |_| true) else {
        return;
    };
    balancer.start(i);
    // A spread of RTTs, so that costs differ and the estimates keep moving.
    balancer.observe_rtt(i, 10_000_000 + (now_ns % 7) * 1_000_000, now_ns);
    balancer.finish(i);
    black_box(i);
}

/// `iterations` requests on each of two threads sharing one balancer: criterion
/// reports the time of one request on one thread while the other contends.
fn two_threads(balancer: &Balancer, iterations: u64) -> Duration {
    common::on_two_threads(iterations, |_, i| request(balancer, i * 1_000))
}

fn balance(c: &mut Criterion) {
    let mut group = c.benchmark_group("balance");
    let weights: Vec<u32> = (1..=ENDPOINTS as u32).collect();
    for strategy in [
        Strategy::PeakEwma,
        Strategy::LeastRequest,
        Strategy::RoundRobin,
    ] {
        let settings = BalanceSettings {
            strategy,
            ..BalanceSettings::default()
        };
        let single = Balancer::new(&settings, &weights);
        let mut now_ns = 0u64;
        group.bench_function(format!("{strategy:?}_8_endpoints"), |b| {
            b.iter(|| {
                now_ns += 1_000;
                request(&single, black_box(now_ns));
            })
        });
        let shared = Balancer::new(&settings, &weights);
        group.bench_function(format!("{strategy:?}_8_endpoints_two_threads"), |b| {
            b.iter_custom(|n| two_threads(&shared, n))
        });
    }
    group.finish();
}

criterion_group!(benches, balance);
criterion_main!(benches);
