//! Which requests are traced: parent-based, so a trace is whole or absent
//! across services. A request with a valid `traceparent` follows its sampled
//! flag; one without (a root) is sampled with probability `sample_ratio`.

use super::context::SpanContext;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sampler {
    /// A root is sampled when a uniform random `u64` is below this; `None`: always.
    threshold: Option<u64>,
}

impl Sampler {
    /// `ratio` in 0.0..=1.0 (checked by the config).
    pub fn new(ratio: f64) -> Sampler {
        let threshold = (ratio < 1.0).then(|| (ratio.max(0.0) * u64::MAX as f64) as u64);
        Sampler { threshold }
    }

    /// Whether a request with `parent` (its valid `traceparent`, if any) is recorded.
    pub fn sample(&self, parent: Option<&SpanContext>) -> bool {
        self.decide(parent, fastrand::u64(..))
    }

    fn decide(&self, parent: Option<&SpanContext>, roll: u64) -> bool {
        match (parent, self.threshold) {
            (Some(parent), _) => parent.sampled(),
            (None, None) => true,
            (None, Some(threshold)) => roll < threshold,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parent(flags: u8) -> SpanContext {
        SpanContext {
            trace_id: 1,
            span_id: 1,
            flags,
        }
    }

    #[test]
    fn a_parent_decides_whatever_the_ratio() {
        for ratio in [0.0, 0.5, 1.0] {
            let sampler = Sampler::new(ratio);
            assert!(sampler.decide(Some(&parent(0x01)), u64::MAX));
            assert!(!sampler.decide(Some(&parent(0x00)), 0));
            assert!(
                !sampler.decide(Some(&parent(0x02)), 0),
                "only bit 0 samples"
            );
        }
    }

    #[test]
    fn roots_follow_the_ratio() {
        assert!(Sampler::new(1.0).decide(None, u64::MAX));
        assert!(!Sampler::new(0.0).decide(None, 0));
        let half = Sampler::new(0.5);
        assert!(half.decide(None, u64::MAX / 2 - 1));
        assert!(!half.decide(None, u64::MAX / 2 + 1));
    }

    #[test]
    fn a_ratio_samples_about_that_share() {
        let sampler = Sampler::new(0.25);
        let sampled = (0..40_000).filter(|_| sampler.sample(None)).count();
        assert!((8_000..12_000).contains(&sampled), "{sampled}");
    }
}
