//! Ejection bookkeeping: the admission gate of one endpoint, its ejection
//! backoff, and the budget that caps how many endpoints are out at once.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// The gate word of an endpoint that takes requests.
const OPEN: u64 = u64::MAX;
/// The low bit of a closed gate word: a probe was admitted and its outcome is awaited.
const PROBE_OUT: u64 = 1;
/// Deadlines are clamped here, so that no closed word reads as [`OPEN`]
/// (about 146 years of a monotonic clock).
const LATEST_NS: u64 = (u64::MAX >> 1) - 1;

fn closed(until_ns: u64, probe_out: bool) -> u64 {
    (until_ns.min(LATEST_NS) << 1) | u64::from(probe_out)
}

fn until_ns(word: u64) -> u64 {
    word >> 1
}

/// Whether an endpoint takes requests. Deadline and probe flag share one
/// atomic word, so that admitting the single probe is one compare-and-swap
/// and never needs the endpoint's lock.
///
/// The word is [`OPEN`], or `until_ns << 1 | probe_out`: no request before
/// `until_ns`; from then on the next caller is admitted as a probe and moves
/// `until_ns` one probe timeout ahead, so a lost probe is replaced.
///
/// Only [`Gate::admit`] writes without holding the endpoint's lock, and it
/// only ever writes closed words with the probe flag set.
#[derive(Debug)]
pub(super) struct Gate(AtomicU64);

impl Default for Gate {
    fn default() -> Self {
        Gate(AtomicU64::new(OPEN))
    }
}

impl Gate {
    pub(super) fn is_open(&self) -> bool {
        self.0.load(Ordering::Acquire) == OPEN
    }

    /// Closed, and `now_ns` is before the ejection's end or the outstanding probe's timeout.
    pub(super) fn is_blocking(&self, now_ns: u64) -> bool {
        self.blocking_until(now_ns).is_some()
    }

    /// While [blocking](Self::is_blocking): the end of the ejection, or of the probe's timeout.
    pub(super) fn blocking_until(&self, now_ns: u64) -> Option<u64> {
        let word = self.0.load(Ordering::Acquire);
        (word != OPEN && now_ns < until_ns(word)).then(|| until_ns(word))
    }

    /// Whether a request may go through now; past the deadline of a closed
    /// gate, only the caller whose compare-and-swap wins becomes the probe.
    pub(super) fn admit(&self, now_ns: u64, probe_timeout_ns: u64) -> bool {
        let mut word = self.0.load(Ordering::Acquire);
        loop {
            if word == OPEN {
                return true;
            }
            if now_ns < until_ns(word) {
                return false;
            }
            let probing = closed(now_ns.saturating_add(probe_timeout_ns), true);
            match self
                .0
                .compare_exchange_weak(word, probing, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return true,
                Err(actual) => word = actual,
            }
        }
    }

    /// Closes an open gate until `until_ns`. A plain store suffices: the
    /// caller holds the endpoint's lock, and `admit` never writes over `OPEN`.
    pub(super) fn close(&self, until_ns: u64) {
        self.0.store(closed(until_ns, false), Ordering::Release);
    }

    /// Ends an ejection early: from `now_ns` the next caller is the probe. False
    /// when the gate is open, already past its deadline, or a probe is out.
    pub(super) fn probe_from(&self, now_ns: u64) -> bool {
        self.0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |word| {
                (word != OPEN && word & PROBE_OUT == 0 && now_ns < until_ns(word))
                    .then_some(closed(now_ns, false))
            })
            .is_ok()
    }

    /// Opens the gate if a probe is out; false if none is.
    pub(super) fn reopen_after_probe(&self) -> bool {
        self.settle_probe(OPEN)
    }

    /// Closes the gate again until `until_ns` if a probe is out; false if none is.
    pub(super) fn reclose_after_probe(&self, until_ns: u64) -> bool {
        self.settle_probe(closed(until_ns, false))
    }

    /// A loop rather than one compare-and-swap: a concurrent `admit` may
    /// replace a timed-out probe, which moves the deadline but keeps the flag.
    fn settle_probe(&self, next: u64) -> bool {
        self.0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |word| {
                (word != OPEN && word & PROBE_OUT != 0).then_some(next)
            })
            .is_ok()
    }
}

/// How long an endpoint's next ejection lasts. Guarded by the endpoint's lock.
#[derive(Debug, Default)]
pub(super) struct Backoff {
    /// Recent ejections not yet worked off by healthy intervals.
    ejections: u32,
    /// Ejected or returned since the last interval check: that interval was not healthy throughout.
    disturbed: bool,
}

impl Backoff {
    /// The ejection count and duration the next ejection would have. The
    /// count stops growing once the duration reaches `max`, so that decay
    /// after a long outage does not take more healthy intervals than needed.
    pub(super) fn next_ejection(&self, base: Duration, max: Duration) -> (u32, Duration) {
        let ejections = if self.ejections == 0 || base.saturating_mul(self.ejections) < max {
            self.ejections.saturating_add(1)
        } else {
            self.ejections
        };
        (ejections, base.saturating_mul(ejections).min(max))
    }

    pub(super) fn ejected(&mut self, ejections: u32) {
        self.ejections = ejections;
        self.disturbed = true;
    }

    pub(super) fn returned(&mut self) {
        self.disturbed = true;
    }

    /// At an interval check: one ejection is worked off if the endpoint took
    /// requests throughout the interval.
    pub(super) fn end_interval(&mut self, open_now: bool) {
        if open_now && !self.disturbed {
            self.ejections = self.ejections.saturating_sub(1);
        }
        self.disturbed = false;
    }
}

/// How many endpoints may be out at once, and how many are: every closed
/// gate holds one slot, from its ejection until a probe returns it.
#[derive(Debug)]
pub(super) struct EjectionBudget {
    ejected: AtomicUsize,
    max: usize,
}

impl EjectionBudget {
    /// `percent` of `endpoints`, rounded down but at least one when
    /// `percent > 0`, so that outlier detection still works in small pools;
    /// `ejected` of them already taken.
    pub(super) fn new(endpoints: usize, percent: u32, ejected: usize) -> Self {
        let max = if percent == 0 {
            0
        } else {
            let share = endpoints as u128 * u128::from(percent.min(100)) / 100;
            usize::try_from(share).unwrap_or(usize::MAX).max(1)
        };
        EjectionBudget {
            ejected: AtomicUsize::new(ejected),
            max,
        }
    }

    /// Takes a slot, or false when all are taken.
    pub(super) fn reserve(&self) -> bool {
        self.ejected
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |ejected| {
                (ejected < self.max).then_some(ejected + 1)
            })
            .is_ok()
    }

    pub(super) fn release(&self) {
        // Saturating: a release never outnumbers its reservation, but an
        // underflow must not wrap into a budget that refuses every ejection.
        let _ = self
            .ejected
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |ejected| {
                ejected.checked_sub(1)
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gate_admits_one_probe_per_timeout() {
        let gate = Gate::default();
        assert!(gate.admit(0, 10));
        gate.close(100);
        assert!(gate.is_blocking(99));
        assert!(!gate.admit(99, 10));
        assert!(gate.admit(100, 10));
        assert!(!gate.admit(109, 10));
        assert!(gate.is_blocking(109));
        assert!(gate.admit(110, 10));
        assert!(gate.reopen_after_probe());
        assert!(gate.is_open());
        assert!(!gate.reopen_after_probe());
    }

    #[test]
    fn gate_settles_only_an_outstanding_probe() {
        let gate = Gate::default();
        gate.close(100);
        assert!(!gate.reclose_after_probe(500));
        assert!(gate.admit(100, 10));
        assert!(gate.reclose_after_probe(500));
        assert!(!gate.admit(499, 10));
        assert!(!gate.reclose_after_probe(900));
    }

    #[test]
    fn gate_survives_extreme_times() {
        let gate = Gate::default();
        gate.close(u64::MAX);
        assert!(!gate.is_open());
        assert!(gate.admit(u64::MAX, u64::MAX));
        assert!(gate.reopen_after_probe());
        assert!(gate.is_open());
    }

    #[test]
    fn backoff_grows_to_the_cap_and_decays() {
        let base = Duration::from_secs(30);
        let max = Duration::from_secs(100);
        let mut backoff = Backoff::default();
        let mut seen = Vec::new();
        for _ in 0..6 {
            let (ejections, duration) = backoff.next_ejection(base, max);
            backoff.ejected(ejections);
            seen.push((ejections, duration.as_secs()));
        }
        assert_eq!(
            seen,
            [(1, 30), (2, 60), (3, 90), (4, 100), (4, 100), (4, 100)]
        );
        backoff.end_interval(true);
        assert_eq!(backoff.next_ejection(base, max).0, 4);
        backoff.end_interval(false);
        assert_eq!(backoff.next_ejection(base, max).0, 4);
        backoff.end_interval(true);
        assert_eq!(backoff.next_ejection(base, max), (4, max));
        backoff.end_interval(true);
        assert_eq!(
            backoff.next_ejection(base, max),
            (3, Duration::from_secs(90))
        );
    }

    #[test]
    fn backoff_with_base_above_cap_uses_the_cap() {
        let backoff = Backoff::default();
        assert_eq!(
            backoff.next_ejection(Duration::from_secs(60), Duration::from_secs(10)),
            (1, Duration::from_secs(10))
        );
    }

    #[test]
    fn budget_is_a_floored_share_but_at_least_one() {
        let slots = |n, percent| {
            let budget = EjectionBudget::new(n, percent, 0);
            (0..n + 2).take_while(|_| budget.reserve()).count()
        };
        assert_eq!(slots(4, 50), 2);
        assert_eq!(slots(5, 50), 2);
        assert_eq!(slots(2, 10), 1);
        assert_eq!(slots(3, 0), 0);
        assert_eq!(slots(3, 250), 3);
        let budget = EjectionBudget::new(1, 100, 0);
        budget.release();
        assert!(budget.reserve());
        assert!(!budget.reserve());
        budget.release();
        assert!(budget.reserve());
    }
}
