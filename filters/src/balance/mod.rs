//! Load balancing among the endpoints of one pool for one model.
//!
//! One [`Balancer`] per (pool, model) holds each endpoint's static weight,
//! requests in flight, Peak-EWMA round-trip time and the load Triton last
//! reported for it, and picks an endpoint by one of three [`Strategy`]s:
//! Peak-EWMA or least-request [power of two choices](p2c), or
//! [weighted round robin](weighted_round_robin). Every method takes `&self`:
//! counters are atomics and each endpoint's latency state has its own small
//! lock, so worker threads share one balancer with no global lock.

pub mod p2c;
pub mod peak_ewma;
pub mod weighted_round_robin;

#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fastrand::Rng;
use parking_lot::Mutex;

use peak_ewma::{Decay, PeakEwma};
use weighted_round_robin::WeightedRoundRobin;

/// How a [`Balancer`] chooses among eligible endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// Power of two choices on `rtt × (load + 1) / weight`, with a
    /// peak-sensitive RTT average (linkerd2-proxy, Finagle).
    PeakEwma,
    /// Power of two choices on `(in_flight + 1) / weight` (Envoy's least_request).
    LeastRequest,
    /// Weighted round robin: each endpoint in turn, as often as its weight.
    RoundRobin,
}

/// Tuning for a [`Balancer`].
#[derive(Debug, Clone, PartialEq)]
pub struct BalanceSettings {
    /// How endpoints are chosen. Default: [`Strategy::PeakEwma`].
    pub strategy: Strategy,
    /// How long until an old RTT sample counts half as much. Default: 10 s.
    pub half_life: Duration,
    /// The RTT assumed for an endpoint before its first sample. Default: 30 ms.
    pub default_rtt: Duration,
    /// The RTT recorded for a failed or throttled (429) request. Default: 1 s.
    pub failure_penalty: Duration,
    /// Load reported by Triton longer ago than this is ignored. Default: 5 s.
    pub backend_load_stale_after: Duration,
}

impl Default for BalanceSettings {
    fn default() -> Self {
        BalanceSettings {
            strategy: Strategy::PeakEwma,
            half_life: Duration::from_secs(10),
            default_rtt: Duration::from_millis(30),
            failure_penalty: Duration::from_secs(1),
            backend_load_stale_after: Duration::from_secs(5),
        }
    }
}

/// What Triton's metrics said about one endpoint, and when.
#[derive(Debug, Clone, Copy)]
struct BackendLoad {
    pending: u32,
    queue_ns: u64,
    reported_ns: u64,
}

#[derive(Debug)]
struct Latency {
    rtt: PeakEwma,
    backend: Option<BackendLoad>,
}

/// One endpoint's load. Aligned to two cache lines (the pair an x86 or ARM
/// prefetcher pulls in together) so that threads updating neighbouring
/// endpoints do not contend on one line. Shared with the balancer a config
/// reload builds ([`Balancer::carried_over`]), so requests started on either
/// count in both.
#[derive(Debug)]
#[repr(align(128))]
struct Load {
    in_flight: AtomicU32,
    latency: Mutex<Latency>,
}

#[derive(Debug)]
struct Endpoint {
    weight: f64,
    load: Arc<Load>,
}

impl std::ops::Deref for Endpoint {
    type Target = Load;

    fn deref(&self) -> &Load {
        &self.load
    }
}

/// The strategy, with whatever state it needs beyond the endpoints'.
#[derive(Debug)]
enum Picker {
    PeakEwma,
    LeastRequest,
    RoundRobin(WeightedRoundRobin),
}

/// Chooses endpoints of one pool for one model and tracks their load.
///
/// Endpoints are indices `0..len()`. Methods given an index out of range do
/// nothing, and report zero (or an infinite cost), rather than panic. Time is
/// nanoseconds on the caller's monotonic clock.
#[derive(Debug)]
pub struct Balancer {
    picker: Picker,
    decay: Decay,
    failure_penalty_ns: u64,
    backend_stale_after_ns: u64,
    endpoints: Box<[Endpoint]>,
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

impl Balancer {
    /// A balancer over `weights.len()` endpoints, endpoint `i` weighing
    /// `weights[i]` (a weight of 0 counts as 1).
    pub fn new(settings: &BalanceSettings, weights: &[u32]) -> Self {
        Self::carried_over(settings, weights, None, &[])
    }

    /// A balancer as [`new`](Self::new) builds it, where endpoint `i` shares the
    /// in-flight count, RTT estimate and reported load of `previous`'s endpoint
    /// `from[i]` (when `Some`): a config reload keeps what it knows of the
    /// endpoints it did not change, and requests still running on the old
    /// balancer are counted by the new one until they finish.
    pub fn carried_over(
        settings: &BalanceSettings,
        weights: &[u32],
        previous: Option<&Balancer>,
        from: &[Option<usize>],
    ) -> Self {
        let default_rtt_ns = nanos(settings.default_rtt);
        let endpoints = weights
            .iter()
            .enumerate()
            .map(|(i, &weight)| Endpoint {
                weight: f64::from(weight.max(1)),
                load: from
                    .get(i)
                    .copied()
                    .flatten()
                    .and_then(|old| previous?.endpoints.get(old))
                    .map_or_else(
                        || {
                            Arc::new(Load {
                                in_flight: AtomicU32::new(0),
                                latency: Mutex::new(Latency {
                                    rtt: PeakEwma::new(default_rtt_ns),
                                    backend: None,
                                }),
                            })
                        },
                        |old| old.load.clone(),
                    ),
            })
            .collect();
        let picker = match settings.strategy {
            Strategy::PeakEwma => Picker::PeakEwma,
            Strategy::LeastRequest => Picker::LeastRequest,
            Strategy::RoundRobin => Picker::RoundRobin(WeightedRoundRobin::new(weights)),
        };
        Balancer {
            picker,
            decay: Decay::from_half_life(settings.half_life),
            failure_penalty_ns: nanos(settings.failure_penalty),
            backend_stale_after_ns: nanos(settings.backend_load_stale_after),
            endpoints,
        }
    }

    /// The number of endpoints.
    pub fn len(&self) -> usize {
        self.endpoints.len()
    }

    /// Whether there are no endpoints at all.
    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }

    /// The strategy this balancer was built with.
    pub fn strategy(&self) -> Strategy {
        match self.picker {
            Picker::PeakEwma => Strategy::PeakEwma,
            Picker::LeastRequest => Strategy::LeastRequest,
            Picker::RoundRobin(_) => Strategy::RoundRobin,
        }
    }

    /// Chooses among endpoints for which `eligible(i)` is true; `None` if none
    /// is. Draws randomness from a generator forked off the thread's own.
    pub fn pick(&self, now_ns: u64, eligible: impl Fn(usize) -> bool) -> Option<usize> {
        self.pick_with(now_ns, &mut Rng::new(), eligible)
    }

    /// [`pick`](Self::pick) with the caller's generator, for reproducible
    /// tests and simulations. Round robin draws nothing from it.
    pub fn pick_with(
        &self,
        now_ns: u64,
        rng: &mut Rng,
        eligible: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        let len = self.endpoints.len();
        match &self.picker {
            Picker::PeakEwma => p2c::choose(len, rng, eligible, |i| self.peak_ewma_cost(i, now_ns)),
            Picker::LeastRequest => p2c::choose(len, rng, eligible, |i| self.least_request_cost(i)),
            Picker::RoundRobin(rotation) => rotation.pick(eligible),
        }
    }

    /// Counts a request sent to endpoint `i`.
    pub fn start(&self, i: usize) {
        if let Some(endpoint) = self.endpoints.get(i) {
            endpoint.in_flight.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts a request to endpoint `i` as over, whatever its outcome. An
    /// unmatched call leaves the count at zero rather than wrapping.
    pub fn finish(&self, i: usize) {
        if let Some(endpoint) = self.endpoints.get(i) {
            // Err only means the count was already zero.
            let _ = endpoint
                .in_flight
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        }
    }

    /// Records a round-trip time of `rtt_ns` measured on endpoint `i` at `now_ns`.
    pub fn observe_rtt(&self, i: usize, rtt_ns: u64, now_ns: u64) {
        if let Some(endpoint) = self.endpoints.get(i) {
            endpoint
                .latency
                .lock()
                .rtt
                .observe(rtt_ns, now_ns, self.decay);
        }
    }

    /// Records a failed or throttled request on endpoint `i` as an RTT sample
    /// of `failure_penalty`, so that traffic moves away from it at once.
    pub fn observe_failure(&self, i: usize, now_ns: u64) {
        self.observe_rtt(i, self.failure_penalty_ns, now_ns);
    }

    /// Records the load Triton's metrics report for endpoint `i`: requests
    /// `pending` in its queues and the time `queue_ns` they wait there.
    /// Replaces any earlier report; ignored once `backend_load_stale_after` old.
    pub fn set_backend_load(&self, i: usize, pending: u32, queue_ns: u64, now_ns: u64) {
        if let Some(endpoint) = self.endpoints.get(i) {
            endpoint.latency.lock().backend = Some(BackendLoad {
                pending,
                queue_ns,
                reported_ns: now_ns,
            });
        }
    }

    /// What endpoint `i` costs under this balancer's strategy at `now_ns`;
    /// lower is better. For [`Strategy::LeastRequest`] it is
    /// `(in_flight + 1) / weight`; otherwise the Peak-EWMA cost
    /// `rtt × (load + 1) / weight` (round robin does not use it, but it is
    /// still worth reporting). Infinite for an index out of range.
    pub fn cost(&self, i: usize, now_ns: u64) -> f64 {
        match self.picker {
            Picker::LeastRequest => self.least_request_cost(i),
            Picker::PeakEwma | Picker::RoundRobin(_) => self.peak_ewma_cost(i, now_ns),
        }
    }

    /// Requests sent to endpoint `i` and not yet finished.
    pub fn in_flight(&self, i: usize) -> u32 {
        self.endpoints
            .get(i)
            .map_or(0, |endpoint| endpoint.in_flight.load(Ordering::Relaxed))
    }

    /// The round-trip time the Peak-EWMA cost uses for endpoint `i` at
    /// `now_ns`: the RTT estimate as of its last sample, or Triton's reported
    /// queue time if that is fresh and larger. Zero for an index out of range.
    pub fn rtt_estimate_ns(&self, i: usize, now_ns: u64) -> u64 {
        self.endpoints.get(i).map_or(0, |endpoint| {
            let (rtt_ns, _) = self.rtt_and_load(endpoint, now_ns);
            rtt_ns as u64
        })
    }

    /// The RTT and load that enter the Peak-EWMA cost. Triton counts our own
    /// in-flight requests among its pending ones, and its queue time is part
    /// of our RTT, so each pair is combined with `max`, not added.
    fn rtt_and_load(&self, endpoint: &Load, now_ns: u64) -> (f64, u32) {
        let in_flight = endpoint.in_flight.load(Ordering::Relaxed);
        let latency = endpoint.latency.lock();
        let estimate_ns = latency.rtt.estimate_ns(now_ns, self.decay);
        match self.fresh(latency.backend, now_ns) {
            Some(backend) => (
                estimate_ns.max(backend.queue_ns as f64),
                in_flight.max(backend.pending),
            ),
            None => (estimate_ns, in_flight),
        }
    }

    /// Triton's last report for endpoint `i`, unless it is stale at `now_ns`:
    /// requests pending in its queues, and the time they wait there.
    pub fn backend_load(&self, i: usize, now_ns: u64) -> Option<(u32, u64)> {
        let endpoint = self.endpoints.get(i)?;
        let backend = endpoint.latency.lock().backend;
        self.fresh(backend, now_ns)
            .map(|backend| (backend.pending, backend.queue_ns))
    }

    fn fresh(&self, backend: Option<BackendLoad>, now_ns: u64) -> Option<BackendLoad> {
        backend.filter(|backend| {
            now_ns.saturating_sub(backend.reported_ns) <= self.backend_stale_after_ns
        })
    }

    fn peak_ewma_cost(&self, i: usize, now_ns: u64) -> f64 {
        self.endpoints.get(i).map_or(f64::INFINITY, |endpoint| {
            let (rtt_ns, load) = self.rtt_and_load(endpoint, now_ns);
            rtt_ns * (f64::from(load) + 1.0) / endpoint.weight
        })
    }

    fn least_request_cost(&self, i: usize) -> f64 {
        self.endpoints.get(i).map_or(f64::INFINITY, |endpoint| {
            (f64::from(endpoint.in_flight.load(Ordering::Relaxed)) + 1.0) / endpoint.weight
        })
    }
}
