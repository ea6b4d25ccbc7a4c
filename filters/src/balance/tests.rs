use std::cmp::Reverse;
use std::collections::BinaryHeap;

use super::*;

const MS: u64 = 1_000_000;
const SECOND: u64 = 1_000_000_000;
/// Clocks in tests start well past zero, as a monotonic clock would.
const T0: u64 = 1_000 * SECOND;

fn balancer(strategy: Strategy, weights: &[u32]) -> Balancer {
    let settings = BalanceSettings {
        strategy,
        ..BalanceSettings::default()
    };
    Balancer::new(&settings, weights)
}

fn share(counts: &[usize], i: usize) -> f64 {
    counts[i] as f64 / counts.iter().sum::<usize>() as f64
}

/// An open-loop simulation: one request every `gap_ns`; endpoint `i` answers
/// each in `rtt_ns[i]`, whereupon its RTT is observed and it is finished.
/// Returns how many requests each endpoint was given.
fn simulate(
    balancer: &Balancer,
    rtt_ns: &[u64],
    requests: u64,
    gap_ns: u64,
    seed: u64,
) -> Vec<usize> {
    let mut rng = Rng::with_seed(seed);
    let mut outstanding = BinaryHeap::new();
    let mut counts = vec![0; balancer.len()];
    for r in 0..requests {
        let now = T0 + r * gap_ns;
        while let Some(&Reverse((done, i, sent))) = outstanding.peek() {
            if done > now {
                break;
            }
            outstanding.pop();
            balancer.observe_rtt(i, done - sent, done);
            balancer.finish(i);
        }
        let i = balancer
            .pick_with(now, &mut rng, |_| true)
            .expect("an endpoint");
        balancer.start(i);
        outstanding.push(Reverse((now + rtt_ns[i], i, now)));
        counts[i] += 1;
    }
    counts
}

#[test]
fn balancer_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Balancer>();
}

#[test]
fn settings_defaults() {
    let settings = BalanceSettings::default();
    assert_eq!(settings.strategy, Strategy::PeakEwma);
    assert_eq!(settings.half_life, Duration::from_secs(10));
    assert_eq!(settings.default_rtt, Duration::from_millis(30));
    assert_eq!(settings.failure_penalty, Duration::from_secs(1));
    assert_eq!(settings.backend_load_stale_after, Duration::from_secs(5));
}

#[test]
fn default_rtt_before_any_sample() {
    let b = balancer(Strategy::PeakEwma, &[1, 1]);
    assert_eq!(b.rtt_estimate_ns(0, T0), 30 * MS);
    assert_eq!(b.cost(0, T0), (30 * MS) as f64);
    assert_eq!(b.in_flight(0), 0);
}

#[test]
fn a_spike_is_followed_at_once_and_decays_by_half_each_half_life() {
    let b = balancer(Strategy::PeakEwma, &[1]);
    b.observe_rtt(0, 20 * MS, T0);
    assert_eq!(b.rtt_estimate_ns(0, T0), 20 * MS);
    b.observe_rtt(0, 820 * MS, T0 + MS);
    assert_eq!(b.rtt_estimate_ns(0, T0 + MS), 820 * MS);
    // One half-life later a 20 ms sample halves the 800 ms excess.
    let later = T0 + MS + 10 * SECOND;
    b.observe_rtt(0, 20 * MS, later);
    let estimate = b.rtt_estimate_ns(0, later);
    assert!(estimate.abs_diff(420 * MS) < MS / 100, "{estimate}");
}

#[test]
fn a_failure_steers_traffic_away() {
    let b = balancer(Strategy::PeakEwma, &[1, 1, 1]);
    for i in 0..3 {
        b.observe_rtt(i, 20 * MS, T0);
    }
    b.observe_failure(1, T0 + MS);
    assert_eq!(b.rtt_estimate_ns(1, T0 + MS), SECOND);
    assert!(b.cost(1, T0 + MS) > 40.0 * b.cost(0, T0 + MS));
    let mut rng = Rng::with_seed(7);
    let mut counts = [0usize; 3];
    for _ in 0..3_000 {
        counts[b.pick_with(T0 + 2 * MS, &mut rng, |_| true).unwrap()] += 1;
    }
    assert_eq!(counts[1], 0, "{counts:?}");
    assert!(counts[0] > 1_200 && counts[2] > 1_200, "{counts:?}");
}

#[test]
fn a_tenfold_slower_endpoint_gets_a_small_share() {
    let b = balancer(Strategy::PeakEwma, &[1, 1, 1]);
    let counts = simulate(&b, &[10 * MS, 10 * MS, 100 * MS], 20_000, 2 * MS, 11);
    assert!(share(&counts, 2) < 0.05, "{counts:?}");
    assert!(
        share(&counts, 0) > 0.45 && share(&counts, 1) > 0.45,
        "{counts:?}"
    );
    // Everything sent was finished or is still out: the counts add up.
    let in_flight: u32 = (0..3).map(|i| b.in_flight(i)).sum();
    assert!(in_flight < 20, "{in_flight}");
}

#[test]
fn in_flight_requests_raise_the_cost() {
    for strategy in [Strategy::PeakEwma, Strategy::LeastRequest] {
        let b = balancer(strategy, &[1, 1]);
        for _ in 0..3 {
            b.start(0);
        }
        assert_eq!(b.in_flight(0), 3);
        assert_eq!(b.cost(0, T0), 4.0 * b.cost(1, T0), "{strategy:?}");
        let mut rng = Rng::with_seed(5);
        // With two endpoints both are always drawn: the idle one wins.
        for _ in 0..100 {
            assert_eq!(b.pick_with(T0, &mut rng, |_| true), Some(1), "{strategy:?}");
        }
        b.finish(0);
        assert_eq!(b.in_flight(0), 2);
    }
}

#[test]
fn least_request_cost_ignores_rtt_and_divides_by_weight() {
    let b = balancer(Strategy::LeastRequest, &[1, 4]);
    b.observe_failure(0, T0);
    b.start(1);
    b.start(1);
    assert_eq!(b.cost(0, T0), 1.0);
    assert_eq!(b.cost(1, T0), 0.75);
}

#[test]
fn round_robin_gives_exact_proportions_over_full_cycles() {
    let b = balancer(Strategy::RoundRobin, &[1, 2, 3]);
    let mut rng = Rng::with_seed(0);
    let mut counts = [0usize; 3];
    for _ in 0..600 {
        counts[b.pick_with(T0, &mut rng, |_| true).unwrap()] += 1;
    }
    assert_eq!(counts, [100, 200, 300]);
}

#[test]
fn load_aware_strategies_respect_weights_approximately() {
    for strategy in [Strategy::PeakEwma, Strategy::LeastRequest] {
        let b = balancer(strategy, &[1, 2, 3]);
        // About 50 requests in flight, so shares follow (load + 1) ∝ weight.
        let counts = simulate(&b, &[50 * MS; 3], 30_000, MS, 21);
        for (i, expected) in [1.0 / 6.0, 2.0 / 6.0, 3.0 / 6.0].into_iter().enumerate() {
            let actual = share(&counts, i);
            assert!((actual - expected).abs() < 0.04, "{strategy:?} {counts:?}");
        }
    }
}

#[test]
fn ineligible_endpoints_are_never_picked() {
    for strategy in [
        Strategy::PeakEwma,
        Strategy::LeastRequest,
        Strategy::RoundRobin,
    ] {
        let b = balancer(strategy, &[1, 5, 1, 1]);
        let mut rng = Rng::with_seed(3);
        let mut counts = [0usize; 4];
        for _ in 0..1_000 {
            counts[b.pick_with(T0, &mut rng, |i| i != 1).unwrap()] += 1;
        }
        assert_eq!(counts[1], 0, "{strategy:?}");
        assert!(
            counts.iter().filter(|&&n| n > 0).count() == 3,
            "{strategy:?} {counts:?}"
        );
        assert_eq!(
            b.pick_with(T0, &mut rng, |i| i == 2),
            Some(2),
            "{strategy:?}"
        );
        assert_eq!(b.pick_with(T0, &mut rng, |_| false), None, "{strategy:?}");
        assert_eq!(b.pick(T0, |_| false), None, "{strategy:?}");
        // Indices out of range are never offered to the predicate.
        assert!(b.pick(T0, |i| i < 4).is_some_and(|i| i < 4), "{strategy:?}");
    }
}

#[test]
fn fresh_backend_load_raises_the_cost_and_stale_is_ignored() {
    let b = balancer(Strategy::PeakEwma, &[1, 1]);
    b.observe_rtt(0, 20 * MS, T0);
    b.set_backend_load(0, 5, 200 * MS, T0);
    // Fresh (up to 5 s old): Triton's queue time and pending count prevail.
    let fresh = T0 + 5 * SECOND;
    assert_eq!(b.rtt_estimate_ns(0, fresh), 200 * MS);
    assert_eq!(b.cost(0, fresh), (200 * MS * 6) as f64);
    // Our own in-flight requests are among Triton's pending: the larger counts.
    b.start(0);
    b.start(0);
    assert_eq!(b.cost(0, fresh), (200 * MS * 6) as f64);
    // Stale: only our own view (refreshed, as the idle estimate decays).
    let stale = fresh + 1;
    b.observe_rtt(0, 20 * MS, stale);
    assert_eq!(b.rtt_estimate_ns(0, stale), 20 * MS);
    assert_eq!(b.cost(0, stale), (20 * MS * 3) as f64);
    // Smaller than our own view, fresh data changes nothing.
    b.set_backend_load(1, 0, MS, T0);
    assert_eq!(b.cost(1, T0), (30 * MS) as f64);
}

#[test]
fn concurrent_start_and_finish_balance_out() {
    let b = balancer(Strategy::PeakEwma, &[1; 8]);
    std::thread::scope(|scope| {
        for seed in 0..4 {
            let b = &b;
            scope.spawn(move || {
                let mut rng = Rng::with_seed(seed);
                let mut held = Vec::new();
                for step in 0..20_000u64 {
                    if held.len() < 16 && rng.bool() {
                        let i = b.pick_with(T0 + step, &mut rng, |_| true).unwrap();
                        b.start(i);
                        held.push(i);
                    } else if let Some(i) = held.pop() {
                        b.observe_rtt(i, MS, T0 + step);
                        b.finish(i);
                    }
                }
                for i in held {
                    b.finish(i);
                }
            });
        }
    });
    for i in 0..8 {
        assert_eq!(b.in_flight(i), 0, "endpoint {i}");
    }
}

#[test]
fn unmatched_finish_saturates_at_zero() {
    let b = balancer(Strategy::LeastRequest, &[1]);
    b.finish(0);
    assert_eq!(b.in_flight(0), 0);
    b.start(0);
    assert_eq!(b.in_flight(0), 1);
}

#[test]
fn zero_weights_empty_balancers_and_bad_indices_do_not_panic() {
    for strategy in [
        Strategy::PeakEwma,
        Strategy::LeastRequest,
        Strategy::RoundRobin,
    ] {
        let zero = balancer(strategy, &[0, 0]);
        assert_eq!(zero.strategy(), strategy);
        assert_eq!(zero.cost(0, T0), zero.cost(1, T0));
        assert!(zero.pick(T0, |_| true).is_some());

        let empty = balancer(strategy, &[]);
        assert!(empty.is_empty());
        assert_eq!(empty.len(), 0);
        assert_eq!(empty.pick(T0, |_| true), None);
        empty.start(0);
        empty.finish(0);
        empty.observe_rtt(0, MS, T0);
        empty.observe_failure(0, T0);
        empty.set_backend_load(0, 1, MS, T0);
        assert_eq!(empty.in_flight(0), 0);
        assert_eq!(empty.rtt_estimate_ns(0, T0), 0);
        assert_eq!(empty.cost(0, T0), f64::INFINITY);
    }
}

#[test]
fn extreme_settings_do_not_panic() {
    let settings = BalanceSettings {
        half_life: Duration::ZERO,
        default_rtt: Duration::MAX,
        failure_penalty: Duration::MAX,
        backend_load_stale_after: Duration::MAX,
        ..BalanceSettings::default()
    };
    let b = Balancer::new(&settings, &[u32::MAX, 1]);
    b.observe_failure(0, u64::MAX);
    b.observe_rtt(1, 0, 0);
    b.set_backend_load(1, u32::MAX, u64::MAX, u64::MAX);
    assert!(b.pick(0, |_| true).is_some());
    assert_eq!(b.rtt_estimate_ns(0, 0), u64::MAX);
}

#[test]
fn a_carried_over_endpoint_shares_its_load_and_new_ones_start_afresh() {
    let settings = BalanceSettings::default();
    let old = Balancer::new(&settings, &[1, 1]);
    old.start(1);
    old.observe_rtt(1, 500_000_000, 0);
    let new = Balancer::carried_over(&settings, &[1, 1], Some(&old), &[Some(1), None]);
    assert_eq!(new.in_flight(0), 1);
    assert_eq!(new.rtt_estimate_ns(0, 0), old.rtt_estimate_ns(1, 0));
    assert_eq!(new.in_flight(1), 0);
    assert_eq!(new.rtt_estimate_ns(1, 0), old.rtt_estimate_ns(0, 0));
    // A request started before the reload finishes on the old balancer.
    old.finish(1);
    assert_eq!(new.in_flight(0), 0);
}
