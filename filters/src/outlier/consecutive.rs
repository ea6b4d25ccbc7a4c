//! Envoy's consecutive-failure detector: an endpoint whose last `threshold`
//! outcomes all failed is ejected, whatever its long-run success rate.

use std::sync::atomic::{AtomicU32, Ordering};

/// The current run of failures of one endpoint, counted without a lock.
#[derive(Debug, Default)]
pub(super) struct FailureRun(AtomicU32);

impl FailureRun {
    /// Counts one outcome; true when the run has reached `threshold`
    /// (never when `threshold` is 0, which disables the detector).
    ///
    /// Every failure past the threshold answers true again, so that an
    /// ejection refused for lack of budget is retried while the endpoint keeps
    /// failing, rather than forgotten until the next full run.
    pub(super) fn record(&self, success: bool, threshold: u32) -> bool {
        if success {
            self.0.store(0, Ordering::Relaxed);
            return false;
        }
        // Wrapping after 2^32 failures in a row only delays one retry by a run.
        let run = self.0.fetch_add(1, Ordering::Relaxed).saturating_add(1);
        threshold > 0 && run >= threshold
    }

    pub(super) fn reset(&self) {
        self.0.store(0, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trips(run: &FailureRun, outcomes: &[bool], threshold: u32) -> Vec<bool> {
        outcomes
            .iter()
            .map(|&ok| run.record(ok, threshold))
            .collect()
    }

    #[test]
    fn a_full_run_trips_and_a_success_resets_it() {
        let run = FailureRun::default();
        assert_eq!(
            trips(&run, &[false, false, true, false, false, false], 3),
            [false, false, false, false, false, true]
        );
        assert!(run.record(false, 3));
        run.reset();
        assert!(!run.record(false, 3));
    }

    #[test]
    fn zero_threshold_never_trips() {
        let run = FailureRun::default();
        assert!(trips(&run, &[false; 10], 0).iter().all(|&t| !t));
    }
}
