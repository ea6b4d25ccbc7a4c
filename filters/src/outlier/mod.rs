//! Outlier detection: which endpoints (the servers of a pool, or one model on
//! them) to take out of rotation for a while. Modelled on Envoy's outlier
//! detection, with linkerd-style probation on the way back.
//!
//! Three detectors eject an endpoint: a run of consecutive failures, seen as
//! outcomes are [recorded](Outliers::record), and, once per interval over the
//! requests counted since the last [check](Outliers::check_interval), a
//! success rate far below the endpoint's peers' ([`SuccessRateSettings`]) or a
//! failure percentage above a threshold ([`FailurePercentageSettings`]).
//!
//! An ejection lasts `base_ejection` times the endpoint's recent ejection
//! count, capped at `max_ejection`; each interval the endpoint stays healthy
//! works one ejection off. At most `max_ejection_percent` of the endpoints are
//! out at once, so that a pool-wide failure cannot empty the pool.
//!
//! When an ejection ends the endpoint is on probation: one request, the probe,
//! is [admitted](Outliers::admit), and its outcome returns the endpoint or
//! ejects it again, for longer. Outcomes carry no request identity, so the
//! first outcome recorded after a probe is admitted is taken as the probe's.
//!
//! Admitting and counting are lock-free; ejecting, returning and the interval
//! check take only the lock of the endpoint they change.

mod consecutive;
mod ejection;
mod failure_percentage;
mod success_rate;
#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use consecutive::FailureRun;
use ejection::{Backoff, EjectionBudget, Gate};
pub use failure_percentage::FailurePercentageSettings;
pub use success_rate::SuccessRateSettings;

/// How outliers are detected and for how long they are ejected.
#[derive(Debug, Clone, PartialEq)]
pub struct OutlierSettings {
    /// Failures in a row that eject an endpoint; 0 disables the detector.
    pub consecutive_failures: u32,
    /// How often the caller runs [`Outliers::check_interval`], and how long a
    /// probe may stay unanswered before another is admitted. A zero interval
    /// lets every caller through as a probe once an ejection is over.
    pub interval: Duration,
    /// The first ejection's duration, and the step by which repeated ones grow.
    pub base_ejection: Duration,
    /// The longest an ejection lasts.
    pub max_ejection: Duration,
    /// The share of endpoints that may be out at once, rounded down; while it
    /// is above 0, one endpoint may always be ejected.
    pub max_ejection_percent: u32,
    /// The success-rate detector; `None` disables it.
    pub success_rate: Option<SuccessRateSettings>,
    /// The failure-percentage detector; `None` disables it.
    pub failure_percentage: Option<FailurePercentageSettings>,
}

impl Default for OutlierSettings {
    /// Envoy's defaults: consecutive failures and success rate on, failure percentage off.
    fn default() -> Self {
        OutlierSettings {
            consecutive_failures: 5,
            interval: Duration::from_secs(10),
            base_ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(300),
            max_ejection_percent: 50,
            success_rate: Some(SuccessRateSettings::default()),
            failure_percentage: None,
        }
    }
}

/// Which detector ejected an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EjectReason {
    /// `consecutive_failures` failures in a row.
    ConsecutiveFailures,
    /// A success rate far below the other endpoints' in one interval.
    SuccessRate,
    /// A failure percentage at or above the threshold in one interval.
    FailurePercentage,
    /// The probe sent on probation failed.
    ProbeFailed,
}

impl EjectReason {
    const ALL: [EjectReason; 4] = [
        EjectReason::ConsecutiveFailures,
        EjectReason::SuccessRate,
        EjectReason::FailurePercentage,
        EjectReason::ProbeFailed,
    ];

    /// A short snake_case name, for logs and metric labels.
    pub fn label(&self) -> &'static str {
        match self {
            EjectReason::ConsecutiveFailures => "consecutive_failures",
            EjectReason::SuccessRate => "success_rate",
            EjectReason::FailurePercentage => "failure_percentage",
            EjectReason::ProbeFailed => "probe_failed",
        }
    }
}

/// A change of an endpoint's state, for the caller to log and count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// The endpoint takes no requests for `duration`.
    Ejected {
        /// The endpoint's index.
        endpoint: usize,
        /// Its recent ejections, counting this one, which set `duration`.
        /// It stops growing once `duration` reaches `max_ejection`.
        ejections: u32,
        /// How long until the endpoint is on probation.
        duration: Duration,
        /// The detector that ejected it.
        reason: EjectReason,
    },
    /// The endpoint's probe succeeded: it takes requests again.
    Returned {
        /// The endpoint's index.
        endpoint: usize,
    },
}

/// One endpoint's requests over the last interval, as the interval detectors see them.
#[derive(Debug, Clone, Copy)]
struct Sample {
    endpoint: usize,
    successes: u64,
    failures: u64,
}

/// Samples for endpoints 0, 1, … from (successes, failures) pairs.
#[cfg(test)]
fn samples(outcomes: &[(u64, u64)]) -> Vec<Sample> {
    outcomes
        .iter()
        .enumerate()
        .map(|(endpoint, &(successes, failures))| Sample {
            endpoint,
            successes,
            failures,
        })
        .collect()
}

impl Sample {
    fn total(&self) -> u64 {
        self.successes.saturating_add(self.failures)
    }

    /// Only called with at least one request.
    fn success_percent(&self) -> f64 {
        self.successes as f64 * 100.0 / self.total() as f64
    }
}

#[derive(Debug, Default)]
struct Endpoint {
    gate: Gate,
    failure_run: FailureRun,
    /// Outcomes since the last interval check, while the endpoint was in rotation.
    successes: AtomicU64,
    failures: AtomicU64,
    /// Taken for every change of `gate` but a probe's admission.
    backoff: Mutex<Backoff>,
    /// The [`EjectReason`] (its index in [`EjectReason::ALL`]) of the last ejection,
    /// for reports; atomic so that reading it never waits for `backoff`.
    reason: AtomicU8,
}

impl Endpoint {
    fn set_reason(&self, reason: EjectReason) {
        let index = EjectReason::ALL.iter().position(|&r| r == reason);
        self.reason
            .store(index.map_or(0, |i| i as u8), Ordering::Relaxed);
    }

    fn take_counts(&self, endpoint: usize) -> Sample {
        Sample {
            endpoint,
            successes: self.successes.swap(0, Ordering::Relaxed),
            failures: self.failures.swap(0, Ordering::Relaxed),
        }
    }
}

/// Outlier detection over `n` endpoints, numbered `0..n`. Shared by all
/// worker threads; an index out of range is treated as a healthy endpoint
/// nobody tracks.
#[derive(Debug)]
pub struct Outliers {
    /// Shared with the detector a config reload builds ([`Outliers::carried_over`]).
    endpoints: Vec<Arc<Endpoint>>,
    budget: EjectionBudget,
    settings: OutlierSettings,
    probe_timeout_ns: u64,
}

impl Outliers {
    /// `n` endpoints, all healthy.
    pub fn new(n: usize, settings: &OutlierSettings) -> Self {
        Self::carried_over(n, settings, None, &[])
    }

    /// `n` endpoints, where endpoint `i` is `previous`'s endpoint `from[i]`
    /// (when `Some`), its ejection, back-off and counts included: a config
    /// reload does not return an ejected endpoint it did not change. The others
    /// start healthy.
    pub fn carried_over(
        n: usize,
        settings: &OutlierSettings,
        previous: Option<&Outliers>,
        from: &[Option<usize>],
    ) -> Self {
        let endpoints: Vec<Arc<Endpoint>> = (0..n)
            .map(|i| {
                from.get(i)
                    .copied()
                    .flatten()
                    .and_then(|old| previous?.endpoints.get(old).cloned())
                    .unwrap_or_default()
            })
            .collect();
        let ejected = endpoints.iter().filter(|e| !e.gate.is_open()).count();
        Outliers {
            endpoints,
            budget: EjectionBudget::new(n, settings.max_ejection_percent, ejected),
            settings: settings.clone(),
            probe_timeout_ns: nanos(settings.interval),
        }
    }

    /// May endpoint `i` take a request now? Yes when it is not ejected; no
    /// while its ejection lasts. Afterwards, on probation, exactly one caller
    /// gets yes (the probe) until [`record`](Self::record) reports an outcome
    /// for `i`, or, should that never come, until `interval` has passed and
    /// another single probe is let through.
    pub fn admit(&self, i: usize, now_ns: u64) -> bool {
        self.endpoints
            .get(i)
            .is_none_or(|endpoint| endpoint.gate.admit(now_ns, self.probe_timeout_ns))
    }

    /// Reports the outcome of one request to endpoint `i`. On probation the
    /// outcome settles the probe: success returns the endpoint, failure ejects
    /// it again for longer. Otherwise it counts towards the detectors, unless
    /// the endpoint is ejected (a late answer from before its ejection).
    pub fn record(&self, i: usize, success: bool, now_ns: u64) -> Option<Transition> {
        let endpoint = self.endpoints.get(i)?;
        if !endpoint.gate.is_open() {
            return self.settle_probe(i, endpoint, success, now_ns);
        }
        let counter = if success {
            &endpoint.successes
        } else {
            &endpoint.failures
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if endpoint
            .failure_run
            .record(success, self.settings.consecutive_failures)
        {
            return self.eject(i, endpoint, EjectReason::ConsecutiveFailures, now_ns);
        }
        None
    }

    /// Runs the interval detectors over the outcomes counted since the last
    /// call and starts the next interval's counts. Works off one ejection of
    /// every endpoint that stayed in rotation through the interval. The caller
    /// invokes it every `interval`.
    pub fn check_interval(&self, now_ns: u64) -> Vec<Transition> {
        let mut samples = Vec::with_capacity(self.endpoints.len());
        for (i, endpoint) in self.endpoints.iter().enumerate() {
            let sample = endpoint.take_counts(i);
            let open = {
                let mut backoff = endpoint.backoff.lock();
                let open = endpoint.gate.is_open();
                backoff.end_interval(open);
                open
            };
            // An ejected endpoint's peers are judged without it: its failures
            // would drag the mean down and shield the next worst.
            if open {
                samples.push(sample);
            }
        }
        let mut outliers = Vec::new();
        if let Some(settings) = &self.settings.success_rate {
            outliers.extend(
                success_rate::outliers(&samples, settings)
                    .into_iter()
                    .map(|i| (i, EjectReason::SuccessRate)),
            );
        }
        if let Some(settings) = &self.settings.failure_percentage {
            outliers.extend(
                failure_percentage::outliers(&samples, settings)
                    .into_iter()
                    .map(|i| (i, EjectReason::FailurePercentage)),
            );
        }
        // An endpoint both detectors found is ejected once, for the first reason.
        outliers
            .into_iter()
            .filter_map(|(i, reason)| {
                let endpoint = self.endpoints.get(i)?;
                self.eject(i, endpoint, reason, now_ns)
            })
            .collect()
    }

    /// Whether endpoint `i` is refused requests now: ejected, or on probation
    /// with its probe out.
    pub fn is_ejected(&self, i: usize, now_ns: u64) -> bool {
        self.endpoints
            .get(i)
            .is_some_and(|endpoint| endpoint.gate.is_blocking(now_ns))
    }

    /// Ends endpoint `i`'s ejection now, when another source (a passing readiness
    /// check) says it is back: the next request is its probe, which returns it or
    /// ejects it again for longer, as at the end of any ejection. False when it
    /// was not ejected (or its probe is already out).
    pub fn probe_now(&self, i: usize, now_ns: u64) -> bool {
        self.endpoints
            .get(i)
            .is_some_and(|endpoint| endpoint.gate.probe_from(now_ns))
    }

    /// Why endpoint `i` is [ejected](Self::is_ejected) now, and until when (on the
    /// caller's clock): the ejection's end, or the timeout of the probe out; `None`
    /// while it takes requests.
    pub fn ejection(&self, i: usize, now_ns: u64) -> Option<(EjectReason, u64)> {
        let endpoint = self.endpoints.get(i)?;
        let until_ns = endpoint.gate.blocking_until(now_ns)?;
        let reason = EjectReason::ALL[usize::from(endpoint.reason.load(Ordering::Relaxed))];
        Some((reason, until_ns))
    }

    /// How many endpoints [are ejected](Self::is_ejected) now.
    pub fn ejected_count(&self, now_ns: u64) -> usize {
        self.endpoints
            .iter()
            .filter(|endpoint| endpoint.gate.is_blocking(now_ns))
            .count()
    }

    /// The number of endpoints tracked.
    pub fn len(&self) -> usize {
        self.endpoints.len()
    }

    /// Whether no endpoints are tracked.
    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }

    fn eject(
        &self,
        i: usize,
        endpoint: &Endpoint,
        reason: EjectReason,
        now_ns: u64,
    ) -> Option<Transition> {
        let mut backoff = endpoint.backoff.lock();
        if !endpoint.gate.is_open() || !self.budget.reserve() {
            return None;
        }
        let (ejections, duration) =
            backoff.next_ejection(self.settings.base_ejection, self.settings.max_ejection);
        endpoint.gate.close(now_ns.saturating_add(nanos(duration)));
        endpoint.set_reason(reason);
        backoff.ejected(ejections);
        // Back in rotation, the endpoint starts from a clean slate rather
        // than from the outcomes that got it ejected.
        endpoint.failure_run.reset();
        endpoint.take_counts(i);
        Some(Transition::Ejected {
            endpoint: i,
            ejections,
            duration,
            reason,
        })
    }

    fn settle_probe(
        &self,
        i: usize,
        endpoint: &Endpoint,
        success: bool,
        now_ns: u64,
    ) -> Option<Transition> {
        let mut backoff = endpoint.backoff.lock();
        if success {
            if !endpoint.gate.reopen_after_probe() {
                return None;
            }
            self.budget.release();
            backoff.returned();
            return Some(Transition::Returned { endpoint: i });
        }
        let (ejections, duration) =
            backoff.next_ejection(self.settings.base_ejection, self.settings.max_ejection);
        if !endpoint
            .gate
            .reclose_after_probe(now_ns.saturating_add(nanos(duration)))
        {
            return None;
        }
        endpoint.set_reason(EjectReason::ProbeFailed);
        backoff.ejected(ejections);
        Some(Transition::Ejected {
            endpoint: i,
            ejections,
            duration,
            reason: EjectReason::ProbeFailed,
        })
    }
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}
