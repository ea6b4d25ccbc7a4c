//! Envoy-style circuit breakers: caps on a pool's requests in flight and on
//! those waiting for an upstream connection. Past a cap a request is refused
//! at once, so an overloaded pool sheds load instead of queueing it without
//! bound. Each admitted request holds a [`Permit`], released when dropped, so
//! every path out (answer, error, retry, client gone) gives it back. The same
//! cap, counted in bytes, bounds the body bytes mirror copies hold.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// A cap on units held at once (requests, or bytes): one atomic, no lock.
#[derive(Debug)]
pub struct Limit {
    held: AtomicUsize,
    max: usize,
}

impl Limit {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Limit {
            held: AtomicUsize::new(0),
            max,
        })
    }

    /// A permit, or `None` when `max` are already held. Never exceeds `max`,
    /// even under concurrent calls.
    pub fn try_acquire(self: &Arc<Self>) -> Option<Permit> {
        self.try_acquire_n(1)
    }

    /// A permit for `units` at once, or `None` when they would go past `max`.
    pub fn try_acquire_n(self: &Arc<Self>, units: usize) -> Option<Permit> {
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                held.checked_add(units).filter(|&total| total <= self.max)
            })
            .ok()
            .map(|_| Permit {
                limit: self.clone(),
                units,
            })
    }

    /// Permits held now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }

    pub fn max(&self) -> usize {
        self.max
    }
}

/// Units admitted under a [`Limit`]; given back when dropped.
#[derive(Debug)]
pub struct Permit {
    limit: Arc<Limit>,
    units: usize,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.limit.held.fetch_sub(self.units, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_up_to_the_cap_and_frees_a_place_per_dropped_permit() {
        let limit = Limit::new(2);
        let first = limit.try_acquire().expect("first");
        let second = limit.try_acquire().expect("second");
        assert!(limit.try_acquire().is_none());
        drop(first);
        let third = limit.try_acquire().expect("a freed place");
        assert_eq!(limit.held(), 2);
        drop((second, third));
        assert_eq!(limit.held(), 0);
    }

    #[test]
    fn units_are_admitted_while_they_fit() {
        let bytes = Limit::new(100);
        let sixty = bytes.try_acquire_n(60).expect("fits");
        assert!(bytes.try_acquire_n(41).is_none());
        let forty = bytes.try_acquire_n(40).expect("fits exactly");
        assert!(bytes.try_acquire_n(usize::MAX).is_none());
        drop((sixty, forty));
        assert_eq!(bytes.held(), 0);
    }

    #[test]
    fn concurrent_holders_never_exceed_the_cap_and_all_return() {
        let limit = Limit::new(8);
        let peak = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (limit, peak) = (limit.clone(), peak.clone());
                std::thread::spawn(move || {
                    let mut admitted = 0;
                    for _ in 0..10_000 {
                        if let Some(permit) = limit.try_acquire() {
                            peak.fetch_max(limit.held(), Ordering::Relaxed);
                            admitted += 1;
                            drop(permit);
                        }
                    }
                    admitted
                })
            })
            .collect();
        let admitted: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert!(admitted > 0);
        assert!(peak.load(Ordering::Relaxed) <= 8);
        assert_eq!(limit.held(), 0);
    }
}
