//! Envoy-style circuit breakers: caps on a pool's requests in flight and on
//! those waiting for an upstream connection. Past a cap a request is refused
//! at once, so an overloaded pool sheds load instead of queueing it without
//! bound. Each admitted request holds a [`Permit`], released when dropped, so
//! every path out (answer, error, retry, client gone) gives it back.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// A cap on concurrent holders: one atomic, no lock.
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
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                (held < self.max).then_some(held + 1)
            })
            .ok()
            .map(|_| Permit(self.clone()))
    }

    /// Permits held now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }

    pub fn max(&self) -> usize {
        self.max
    }
}

/// One admitted holder of a [`Limit`]; gives its place back when dropped.
#[derive(Debug)]
pub struct Permit(Arc<Limit>);

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.held.fetch_sub(1, Ordering::AcqRel);
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
