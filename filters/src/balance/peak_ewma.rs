//! A peak-sensitive exponentially weighted moving average of round-trip times,
//! as in Finagle and linkerd2-proxy: a slowdown is believed at once, a
//! recovery only gradually, so a struggling endpoint sheds traffic quickly and
//! earns it back over a few half-lives.

use std::time::Duration;

/// How fast old samples lose weight: `w = exp(-elapsed / tau)` with
/// `tau = half_life / ln 2`, so a sample's weight halves every half-life.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decay {
    tau_ns: f64,
}

impl Decay {
    /// Old samples count half as much after each `half_life`. A zero half-life
    /// keeps no memory: every sample replaces the estimate.
    pub fn from_half_life(half_life: Duration) -> Self {
        Decay {
            tau_ns: half_life.as_nanos() as f64 / std::f64::consts::LN_2,
        }
    }

    /// The weight the old estimate keeps after `elapsed_ns`.
    fn retained(&self, elapsed_ns: u64) -> f64 {
        // Guards 0/0 (NaN) when the half-life is zero and no time has passed.
        if self.tau_ns > 0.0 {
            (-(elapsed_ns as f64) / self.tau_ns).exp()
        } else {
            0.0
        }
    }
}

/// One endpoint's RTT estimate. Time is nanoseconds on the owner's monotonic clock.
#[derive(Debug, Clone, PartialEq)]
pub struct PeakEwma {
    estimate_ns: f64,
    /// When the last sample arrived; `None` while the estimate is still the default.
    updated_ns: Option<u64>,
}

impl PeakEwma {
    /// An estimate of `initial_ns` until the first sample.
    pub fn new(initial_ns: u64) -> Self {
        PeakEwma {
            estimate_ns: initial_ns as f64,
            updated_ns: None,
        }
    }

    /// Folds in one RTT sample taken at `now_ns`.
    pub fn observe(&mut self, sample_ns: u64, now_ns: u64, decay: Decay) {
        let sample = sample_ns as f64;
        self.estimate_ns = match self.updated_ns {
            // The default is a guess, not a measurement: it gets no weight.
            None => sample,
            Some(_) if sample > self.estimate_ns => sample,
            Some(updated_ns) => {
                // A sample stamped before the last one (racing threads) decays nothing.
                let retained = decay.retained(now_ns.saturating_sub(updated_ns));
                self.estimate_ns * retained + sample * (1.0 - retained)
            }
        };
        self.updated_ns = Some(self.updated_ns.map_or(now_ns, |u| u.max(now_ns)));
    }

    /// The estimate at `now_ns`, in nanoseconds: it decays toward zero while no
    /// sample arrives (as in Finagle and tower), so an endpoint that stopped getting
    /// traffic after a penalty is tried again instead of being shunned for ever.
    pub fn estimate_ns(&self, now_ns: u64, decay: Decay) -> f64 {
        match self.updated_ns {
            None => self.estimate_ns,
            Some(updated_ns) if now_ns > updated_ns => {
                self.estimate_ns * decay.retained(now_ns - updated_ns)
            }
            Some(_) => self.estimate_ns,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;
    const SECOND: u64 = 1_000_000_000;

    fn decay() -> Decay {
        Decay::from_half_life(Duration::from_secs(10))
    }

    #[test]
    fn starts_at_the_default_and_the_first_sample_replaces_it() {
        let mut ewma = PeakEwma::new(30 * MS);
        assert_eq!(ewma.estimate_ns(100 * SECOND, decay()), (30 * MS) as f64);
        ewma.observe(2 * MS, SECOND, decay());
        assert_eq!(ewma.estimate_ns(SECOND, decay()), (2 * MS) as f64);
    }

    #[test]
    fn a_peak_is_taken_at_once() {
        let mut ewma = PeakEwma::new(30 * MS);
        ewma.observe(20 * MS, SECOND, decay());
        ewma.observe(500 * MS, SECOND + MS, decay());
        assert_eq!(ewma.estimate_ns(SECOND + MS, decay()), (500 * MS) as f64);
    }

    #[test]
    fn the_excess_halves_each_half_life() {
        let mut ewma = PeakEwma::new(30 * MS);
        ewma.observe(SECOND, 5 * SECOND, decay());
        ewma.observe(10 * MS, 15 * SECOND, decay());
        // Excess over the new sample was 990 ms; one half-life later it is 495 ms.
        let expected = (10 * MS + 495 * MS) as f64;
        assert!(
            (ewma.estimate_ns(15 * SECOND, decay()) - expected).abs() < 1_000.0,
            "{ewma:?}"
        );
        ewma.observe(10 * MS, 25 * SECOND, decay());
        let expected = (10 * MS) as f64 + 247.5 * MS as f64;
        assert!(
            (ewma.estimate_ns(25 * SECOND, decay()) - expected).abs() < 1_000.0,
            "{ewma:?}"
        );
    }

    #[test]
    fn samples_at_the_same_instant_or_out_of_order_do_not_lower_it() {
        let mut ewma = PeakEwma::new(30 * MS);
        ewma.observe(100 * MS, 10 * SECOND, decay());
        ewma.observe(MS, 10 * SECOND, decay());
        ewma.observe(MS, 9 * SECOND, decay());
        assert_eq!(ewma.estimate_ns(10 * SECOND, decay()), (100 * MS) as f64);
    }

    #[test]
    fn a_zero_half_life_follows_every_sample() {
        let none = Decay::from_half_life(Duration::ZERO);
        let mut ewma = PeakEwma::new(30 * MS);
        ewma.observe(100 * MS, SECOND, none);
        ewma.observe(5 * MS, SECOND, none);
        assert_eq!(ewma.estimate_ns(SECOND, none), (5 * MS) as f64);
    }

    #[test]
    fn an_idle_estimate_decays_so_a_penalised_endpoint_is_tried_again() {
        let mut ewma = PeakEwma::new(30 * MS);
        ewma.observe(SECOND, 0, decay());
        assert_eq!(ewma.estimate_ns(0, decay()), SECOND as f64);
        let later = ewma.estimate_ns(10 * SECOND, decay());
        assert!((later - 0.5 * SECOND as f64).abs() < 1_000.0, "{later}");
        assert!(ewma.estimate_ns(60 * SECOND, decay()) < (30 * MS) as f64);
    }
}
