//! Discrete-event simulation of a pool: four Triton-like backends, each running
//! 4 requests at a time (first come, first served), one degrading from 10 ms to
//! 80 ms half way through. Poisson arrivals at 600 requests/s are spread by each
//! strategy; the simulation reports every backend's share of traffic and the
//! latency percentiles before and after the degradation.
//!
//! Run `cargo test -p filters --test balance_simulation -- --nocapture` for the table.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use filters::balance::{BalanceSettings, Balancer, Strategy};

const MS: u64 = 1_000_000;
const SLOTS: usize = 4;
const RATE_PER_SECOND: f64 = 600.0;
const RUN_NS: u64 = 60_000 * MS;
const DEGRADE_AT_NS: u64 = RUN_NS / 2;
/// Service time of each backend before and after the degradation.
const BEFORE: [u64; 4] = [10 * MS, 10 * MS, 20 * MS, 10 * MS];
const AFTER: [u64; 4] = [10 * MS, 10 * MS, 20 * MS, 80 * MS];

#[derive(Debug)]
struct Report {
    /// Per backend: requests sent before and after the degradation.
    share_before: [f64; 4],
    share_after: [f64; 4],
    p50_after_ms: f64,
    p99_before_ms: f64,
    p99_after_ms: f64,
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(index).copied().unwrap_or(0) as f64 / MS as f64
}

fn simulate(strategy: Strategy, seed: u64) -> Report {
    let settings = BalanceSettings {
        strategy,
        ..BalanceSettings::default()
    };
    let balancer = Balancer::new(&settings, &[1, 1, 1, 1]);
    let mut rng = fastrand::Rng::with_seed(seed);
    // When each slot of each backend is next free.
    let mut free_at = [[0u64; SLOTS]; 4];
    // Completions: (time, backend, arrival time).
    let mut completions: BinaryHeap<Reverse<(u64, usize, u64)>> = BinaryHeap::new();
    let mut sent = [[0u64; 4]; 2];
    let mut latencies = [Vec::new(), Vec::new()];
    let mut now = 0u64;
    while now < RUN_NS {
        let gap = -(1.0 - rng.f64()).ln() / RATE_PER_SECOND;
        now += (gap * 1e9) as u64;
        while let Some(&Reverse((done, backend, arrived))) = completions.peek() {
            if done > now {
                break;
            }
            completions.pop();
            balancer.observe_rtt(backend, done - arrived, done);
            balancer.finish(backend);
        }
        let Some(backend) = balancer.pick_with(now, &mut rng, |_| true) else {
            unreachable!("every backend is eligible")
        };
        let phase = usize::from(now >= DEGRADE_AT_NS);
        let base = if phase == 0 { BEFORE } else { AFTER }[backend];
        // ±20% jitter around the backend's service time.
        let service = (base as f64 * (0.8 + 0.4 * rng.f64())) as u64;
        let slot = (0..SLOTS).min_by_key(|&s| free_at[backend][s]).unwrap_or(0);
        let start = free_at[backend][slot].max(now);
        let done = start + service;
        free_at[backend][slot] = done;
        balancer.start(backend);
        completions.push(Reverse((done, backend, now)));
        sent[phase][backend] += 1;
        latencies[phase].push(done - now);
    }
    for phase in &mut latencies {
        phase.sort_unstable();
    }
    let share = |counts: [u64; 4]| {
        let total: u64 = counts.iter().sum();
        counts.map(|c| c as f64 / total.max(1) as f64)
    };
    Report {
        share_before: share(sent[0]),
        share_after: share(sent[1]),
        p50_after_ms: percentile(&latencies[1], 0.50),
        p99_before_ms: percentile(&latencies[0], 0.99),
        p99_after_ms: percentile(&latencies[1], 0.99),
    }
}

fn percent(shares: [f64; 4]) -> String {
    shares
        .iter()
        .map(|s| format!("{:4.1}%", s * 100.0))
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn peak_ewma_moves_traffic_off_a_degrading_backend() {
    let strategies = [
        ("peak_ewma", Strategy::PeakEwma),
        ("least_request", Strategy::LeastRequest),
        ("round_robin", Strategy::RoundRobin),
    ];
    println!(
        "backends 10/10/20/10 ms, 4 slots each, {RATE_PER_SECOND} req/s; the 4th degrades to 80 ms at {} s",
        DEGRADE_AT_NS / 1_000_000_000
    );
    println!("| strategy | share before (b1 b2 b3 b4) | share after | p99 before | p50 after | p99 after |");
    println!("|---|---|---|---|---|---|");
    let mut reports = Vec::new();
    for (name, strategy) in strategies {
        let report = simulate(strategy, 7);
        println!(
            "| {name} | {} | {} | {:.1} ms | {:.1} ms | {:.1} ms |",
            percent(report.share_before),
            percent(report.share_after),
            report.p99_before_ms,
            report.p50_after_ms,
            report.p99_after_ms
        );
        reports.push(report);
    }
    let [ewma, least, round_robin] = [&reports[0], &reports[1], &reports[2]];
    // Round robin keeps sending a quarter to the degraded backend, whose queue grows.
    assert!((round_robin.share_after[3] - 0.25).abs() < 0.02);
    assert!(ewma.share_after[3] < 0.10, "{ewma:?}");
    assert!(
        ewma.share_after[3] < least.share_after[3],
        "{ewma:?} {least:?}"
    );
    // The 20 ms backend gets less than the 10 ms ones before the degradation.
    assert!(ewma.share_before[2] < ewma.share_before[0], "{ewma:?}");
    assert!(
        ewma.p99_after_ms * 3.0 < round_robin.p99_after_ms,
        "{ewma:?} {round_robin:?}"
    );
    assert!(
        ewma.p99_after_ms <= least.p99_after_ms * 1.1,
        "{ewma:?} {least:?}"
    );
}

#[test]
fn simulation_is_deterministic() {
    let a = simulate(Strategy::PeakEwma, 11);
    let b = simulate(Strategy::PeakEwma, 11);
    assert_eq!(a.share_after, b.share_after);
    assert_eq!(a.p99_after_ms, b.p99_after_ms);
}
