//! One token bucket as a generic cell rate algorithm (GCRA): the whole state is
//! one atomic "theoretical arrival time", updated with compare-and-swap, so
//! concurrent takes never lock and never admit more than `rate·t + burst`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A bucket's size and refill speed, in whole nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// Time to earn one token. Rounded up from `1/rate`, so rounding never over-admits.
    interval_ns: u64,
    burst: u32,
}

/// The longest a bucket may take to refill; keeps every product below `u64::MAX`.
const MAX_REFILL_NS: u64 = 1 << 62;

impl Quota {
    /// `rate` tokens per second, holding at most `burst` tokens.
    pub fn new(rate_per_second: f64, burst: u32) -> Result<Quota, String> {
        if !(rate_per_second.is_finite() && rate_per_second > 0.0) {
            return Err(format!(
                "rate must be a positive number, got {rate_per_second}"
            ));
        }
        if burst == 0 {
            return Err("burst must be at least 1".to_owned());
        }
        let interval_ns = (1e9 / rate_per_second).ceil().max(1.0);
        if interval_ns * f64::from(burst) > MAX_REFILL_NS as f64 {
            return Err(format!(
                "rate {rate_per_second}/s with burst {burst} takes too long to refill"
            ));
        }
        Ok(Quota {
            interval_ns: interval_ns as u64,
            burst,
        })
    }

    pub fn burst(&self) -> u32 {
        self.burst
    }

    fn tolerance_ns(&self) -> u64 {
        self.interval_ns * u64::from(self.burst)
    }
}

/// The answer to one take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Admitted: tokens left, and how long until the bucket is full again.
    Allowed { remaining: u32, full_in: Duration },
    /// Not enough tokens yet: when to try again.
    Denied { retry_after: Duration },
    /// The cost exceeds the bucket's size; waiting cannot help.
    TooCostly,
}

/// One bucket. Time is nanoseconds on the owner's monotonic clock.
#[derive(Debug, Default)]
pub struct Bucket {
    /// When the bucket would be full again if nothing more were taken.
    theoretical_arrival_ns: AtomicU64,
}

impl Bucket {
    /// Takes `cost` tokens at time `now_ns`, or says when they will be there.
    pub fn take(&self, quota: &Quota, now_ns: u64, cost: u32) -> Decision {
        if cost > quota.burst {
            return Decision::TooCostly;
        }
        let increment = quota.interval_ns * u64::from(cost);
        let tolerance = quota.tolerance_ns();
        let mut current = self.theoretical_arrival_ns.load(Ordering::Acquire);
        loop {
            let next = current.max(now_ns) + increment;
            let debt = next - now_ns;
            if debt > tolerance {
                return Decision::Denied {
                    retry_after: Duration::from_nanos(debt - tolerance),
                };
            }
            match self.theoretical_arrival_ns.compare_exchange_weak(
                current,
                next,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    return Decision::Allowed {
                        remaining: ((tolerance - debt) / quota.interval_ns) as u32,
                        full_in: Duration::from_nanos(debt),
                    }
                }
                Err(actual) => current = actual,
            }
        }
    }

    /// A full bucket behaves exactly like a new one, so it can be forgotten.
    pub fn is_full(&self, now_ns: u64) -> bool {
        self.theoretical_arrival_ns.load(Ordering::Acquire) <= now_ns
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000_000;

    fn admitted(bucket: &Bucket, quota: &Quota, now: u64, cost: u32) -> bool {
        matches!(bucket.take(quota, now, cost), Decision::Allowed { .. })
    }

    #[test]
    fn burst_then_refill_at_rate() {
        let quota = Quota::new(10.0, 5).unwrap();
        let bucket = Bucket::default();
        let start = 100 * SECOND;
        for i in 0..5 {
            assert_eq!(
                bucket.take(&quota, start, 1),
                Decision::Allowed {
                    remaining: 4 - i,
                    full_in: Duration::from_millis(100 * (u64::from(i) + 1)),
                }
            );
        }
        assert_eq!(
            bucket.take(&quota, start, 1),
            Decision::Denied {
                retry_after: Duration::from_millis(100)
            }
        );
        // One token per 100 ms.
        assert!(!admitted(&bucket, &quota, start + 99_999_999, 1));
        assert!(admitted(&bucket, &quota, start + 100_000_000, 1));
        assert!(!admitted(&bucket, &quota, start + 100_000_000, 1));
        // After a full refill period the whole burst is back, no more.
        let later = start + 10 * SECOND;
        assert!(bucket.is_full(later));
        for _ in 0..5 {
            assert!(admitted(&bucket, &quota, later, 1));
        }
        assert!(!admitted(&bucket, &quota, later, 1));
    }

    #[test]
    fn cost_takes_several_tokens_and_denials_take_nothing() {
        let quota = Quota::new(1.0, 8).unwrap();
        let bucket = Bucket::default();
        assert!(admitted(&bucket, &quota, 0, 6));
        assert_eq!(
            bucket.take(&quota, 0, 4),
            Decision::Denied {
                retry_after: Duration::from_secs(2)
            }
        );
        // The denied take left the two tokens in place.
        assert!(admitted(&bucket, &quota, 0, 2));
        assert_eq!(bucket.take(&quota, 0, 9), Decision::TooCostly);
    }

    #[test]
    fn fractional_rates_round_towards_fewer_tokens() {
        let quota = Quota::new(3.0, 1).unwrap();
        let bucket = Bucket::default();
        assert!(admitted(&bucket, &quota, 0, 1));
        // 1/3 s is 333_333_333.3 ns: a token is not back before 333_333_334 ns.
        assert!(!admitted(&bucket, &quota, 333_333_333, 1));
        assert!(admitted(&bucket, &quota, 333_333_334, 1));
    }

    #[test]
    fn invalid_quotas_are_refused() {
        assert!(Quota::new(0.0, 1).is_err());
        assert!(Quota::new(-1.0, 1).is_err());
        assert!(Quota::new(f64::NAN, 1).is_err());
        assert!(Quota::new(f64::INFINITY, 1).is_err());
        assert!(Quota::new(1.0, 0).is_err());
        assert!(Quota::new(1e-12, u32::MAX).is_err());
        assert!(Quota::new(1e12, u32::MAX).is_ok());
    }

    /// A small deterministic generator: the property runs the same everywhere.
    struct XorShift(u64);
    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    /// For any rate, burst and arrival pattern, what is admitted over any time
    /// span `t` since the start never exceeds `rate·t + burst`.
    #[test]
    fn admitted_never_exceeds_rate_times_elapsed_plus_burst() {
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        for _ in 0..300 {
            let rate = 1.0 + (rng.next() % 10_000) as f64 / 7.0;
            let burst = 1 + (rng.next() % 50) as u32;
            let quota = Quota::new(rate, burst).unwrap();
            let bucket = Bucket::default();
            let start = rng.next() % (1000 * SECOND);
            let mut now = start;
            let mut tokens = 0u64;
            for _ in 0..2_000 {
                now += rng.next() % (3 * quota.interval_ns);
                let cost = 1 + (rng.next() % u64::from(burst.min(4))) as u32;
                if admitted(&bucket, &quota, now, cost) {
                    tokens += u64::from(cost);
                }
                let elapsed = (now - start) as f64 / 1e9;
                assert!(
                    tokens as f64 <= rate * elapsed + f64::from(burst),
                    "rate {rate} burst {burst}: {tokens} tokens in {elapsed}s"
                );
            }
        }
    }

    #[test]
    fn concurrent_takes_admit_exactly_the_burst() {
        let quota = Quota::new(1.0, 1000).unwrap();
        let bucket = Bucket::default();
        let admitted_total: u32 = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    scope.spawn(|| {
                        (0..1000)
                            .filter(|_| admitted(&bucket, &quota, SECOND, 1))
                            .count() as u32
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(admitted_total, 1000);
    }
}
