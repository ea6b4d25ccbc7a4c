//! Weighted round robin without a lock: a fixed schedule in which each endpoint
//! appears as often as its weight, its turns spread evenly over the cycle, and
//! one shared atomic cursor walking it.

use std::sync::atomic::{AtomicUsize, Ordering};

/// The longest cycle built from scaled-down weights. Longer cycles only buy
/// precision finer than 1 part in 1024, at 8 bytes a slot.
const MAX_CYCLE: u64 = 1024;

/// A weighted rotation over endpoints `0..weights.len()`.
#[derive(Debug)]
pub struct WeightedRoundRobin {
    schedule: Box<[usize]>,
    cursor: AtomicUsize,
}

impl WeightedRoundRobin {
    /// A rotation giving endpoint `i` a share of `weights[i]` turns (0 counts as 1).
    /// Weights are divided by their greatest common divisor, and scaled down
    /// (each keeping at least one turn) if they still add up to more than 1024.
    pub fn new(weights: &[u32]) -> Self {
        WeightedRoundRobin {
            schedule: schedule(&turns_per_cycle(weights)),
            cursor: AtomicUsize::new(0),
        }
    }

    /// The number of turns in one full cycle.
    pub fn cycle_len(&self) -> usize {
        self.schedule.len()
    }

    /// The next endpoint in the rotation for which `eligible` holds, or `None`
    /// if none does.
    pub fn pick(&self, eligible: impl Fn(usize) -> bool) -> Option<usize> {
        let len = self.schedule.len();
        let start = self.cursor.fetch_add(1, Ordering::Relaxed);
        for skipped in 0..len {
            let endpoint = self.schedule[start.wrapping_add(skipped) % len];
            if eligible(endpoint) {
                if skipped > 0 {
                    // Otherwise the next pick lands on the skipped slots again and the
                    // endpoint after an ineligible one takes its turns as well as its own.
                    self.cursor.fetch_add(skipped, Ordering::Relaxed);
                }
                return Some(endpoint);
            }
        }
        None
    }
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

fn turns_per_cycle(weights: &[u32]) -> Vec<u64> {
    let weights: Vec<u64> = weights.iter().map(|&w| u64::from(w.max(1))).collect();
    let divisor = weights.iter().fold(0, |g, &w| gcd(g, w)).max(1);
    let total: u64 = weights.iter().map(|w| w / divisor).sum();
    weights
        .iter()
        .map(|w| {
            let turns = w / divisor;
            if total > MAX_CYCLE {
                // `turns` is at most u32::MAX, so the product fits in a u64.
                (turns * MAX_CYCLE / total).max(1)
            } else {
                turns
            }
        })
        .collect()
}

/// Stride scheduling: endpoint `i`'s `k`-th turn sits at `(k + ½) / turns[i]`
/// of the cycle, so each endpoint's turns are evenly spaced and endpoints
/// interleave rather than run in blocks.
fn schedule(turns: &[u64]) -> Box<[usize]> {
    let mut slots: Vec<(usize, u64)> = turns
        .iter()
        .enumerate()
        .flat_map(|(endpoint, &n)| (0..n).map(move |k| (endpoint, k)))
        .collect();
    // Compares (2k+1)/(2·turns) exactly by cross-multiplying; turns ≤ 1024 after scaling.
    slots.sort_unstable_by(|&(a, ka), &(b, kb)| {
        ((2 * ka + 1) * turns[b])
            .cmp(&((2 * kb + 1) * turns[a]))
            .then(a.cmp(&b))
    });
    slots.into_iter().map(|(endpoint, _)| endpoint).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cycle(rr: &WeightedRoundRobin) -> Vec<usize> {
        (0..rr.cycle_len())
            .map(|_| rr.pick(|_| true).unwrap())
            .collect()
    }

    #[test]
    fn empty_picks_nothing() {
        let rr = WeightedRoundRobin::new(&[]);
        assert_eq!(rr.cycle_len(), 0);
        assert_eq!(rr.pick(|_| true), None);
    }

    #[test]
    fn turns_are_interleaved_in_proportion() {
        let rr = WeightedRoundRobin::new(&[3, 1]);
        assert_eq!(cycle(&rr), [0, 0, 1, 0]);
        let rr = WeightedRoundRobin::new(&[2, 2, 1]);
        assert_eq!(cycle(&rr), [0, 1, 2, 0, 1]);
    }

    #[test]
    fn weights_are_reduced_by_their_gcd_and_zero_counts_as_one() {
        assert_eq!(WeightedRoundRobin::new(&[300, 100, 200]).cycle_len(), 6);
        assert_eq!(WeightedRoundRobin::new(&[0, 0, 0]).cycle_len(), 3);
    }

    #[test]
    fn huge_weights_are_scaled_down_keeping_every_endpoint() {
        let rr = WeightedRoundRobin::new(&[u32::MAX, u32::MAX - 1, 1]);
        assert!(rr.cycle_len() <= 1024 + 3, "{}", rr.cycle_len());
        let mut counts = [0usize; 3];
        for endpoint in cycle(&rr) {
            counts[endpoint] += 1;
        }
        assert_eq!(counts, [512, 511, 1]);
    }

    #[test]
    fn ineligible_turns_are_shared_fairly_by_the_rest() {
        let rr = WeightedRoundRobin::new(&[1, 1, 1, 1]);
        let mut counts = [0usize; 4];
        for _ in 0..3000 {
            counts[rr.pick(|i| i != 1).unwrap()] += 1;
        }
        assert_eq!(counts[1], 0);
        for n in [counts[0], counts[2], counts[3]] {
            assert!((900..=1100).contains(&n), "{counts:?}");
        }
        assert_eq!(rr.pick(|_| false), None);
    }
}
