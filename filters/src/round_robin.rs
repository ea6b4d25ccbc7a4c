//! Round-robin choice among `n` endpoints: one relaxed atomic increment per
//! pick, shared by every worker thread without a lock.

use std::sync::atomic::{AtomicUsize, Ordering};

#[derive(Debug)]
pub struct RoundRobin {
    next: AtomicUsize,
    len: usize,
}

impl RoundRobin {
    pub fn new(len: usize) -> Self {
        RoundRobin {
            next: AtomicUsize::new(0),
            len,
        }
    }

    /// The next index in `0..len`, or `None` when there is nothing to pick from.
    pub fn pick(&self) -> Option<usize> {
        if self.len == 0 {
            return None;
        }
        // Wrapping at usize::MAX only skews one turn in 2^64: not worth a CAS loop.
        Some(self.next.fetch_add(1, Ordering::Relaxed) % self.len)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn empty_picks_nothing() {
        assert_eq!(RoundRobin::new(0).pick(), None);
    }

    #[test]
    fn cycles_in_order() {
        let rr = RoundRobin::new(3);
        let picks: Vec<_> = (0..7).map(|_| rr.pick().unwrap()).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2, 0]);
    }

    #[test]
    fn shares_evenly_across_threads() {
        let rr = Arc::new(RoundRobin::new(4));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let rr = rr.clone();
                std::thread::spawn(move || {
                    let mut counts = [0usize; 4];
                    for _ in 0..10_000 {
                        counts[rr.pick().unwrap()] += 1;
                    }
                    counts
                })
            })
            .collect();
        let mut total = [0usize; 4];
        for t in threads {
            for (sum, n) in total.iter_mut().zip(t.join().unwrap()) {
                *sum += n;
            }
        }
        assert_eq!(total, [10_000; 4]);
    }
}
