//! Buckets by key, sharded so takes on different keys never contend, and
//! bounded: full buckets (indistinguishable from new ones) are evicted when the
//! table fills, and keys that still find no room share one overflow bucket.

use std::hash::BuildHasherDefault;

use dashmap::DashMap;

use super::gcra::{Bucket, Decision, Quota};
use crate::prehashed::PrehashedKey;

/// Token buckets for many keys, all with the same quota.
pub struct KeyedBuckets {
    quota: Quota,
    buckets: DashMap<u64, Bucket, BuildHasherDefault<PrehashedKey>>,
    max_keys: usize,
    /// Shared by new keys while the table is full of partly drained buckets.
    overflow: Bucket,
}

impl KeyedBuckets {
    pub fn new(quota: Quota, max_keys: usize) -> Self {
        KeyedBuckets {
            quota,
            buckets: DashMap::default(),
            max_keys: max_keys.max(1),
            overflow: Bucket::default(),
        }
    }

    pub fn quota(&self) -> &Quota {
        &self.quota
    }

    /// Takes `cost` tokens from `key`'s bucket at `now_ns`.
    pub fn take(&self, key: u64, now_ns: u64, cost: u32) -> Decision {
        if let Some(bucket) = self.buckets.get(&key) {
            return bucket.take(&self.quota, now_ns, cost);
        }
        if self.buckets.len() >= self.max_keys {
            self.buckets.retain(|_, bucket| !bucket.is_full(now_ns));
            if self.buckets.len() >= self.max_keys {
                return self.overflow.take(&self.quota, now_ns, cost);
            }
        }
        self.buckets
            .entry(key)
            .or_default()
            .take(&self.quota, now_ns, cost)
    }

    /// Keys currently tracked.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000_000;

    fn allowed(decision: Decision) -> bool {
        matches!(decision, Decision::Allowed { .. })
    }

    #[test]
    fn keys_have_separate_buckets() {
        let buckets = KeyedBuckets::new(Quota::new(1.0, 2).unwrap(), 100);
        assert!(allowed(buckets.take(1, 0, 2)));
        assert!(!allowed(buckets.take(1, 0, 1)));
        assert!(allowed(buckets.take(2, 0, 2)));
        assert_eq!(buckets.len(), 2);
    }

    #[test]
    fn full_buckets_are_evicted_when_the_table_fills() {
        let buckets = KeyedBuckets::new(Quota::new(10.0, 1).unwrap(), 3);
        for key in 0..3 {
            assert!(allowed(buckets.take(key, 0, 1)));
        }
        // All three are drained: a fourth key shares the overflow bucket.
        assert!(allowed(buckets.take(3, 0, 1)));
        assert!(!allowed(buckets.take(4, 0, 1)));
        assert_eq!(buckets.len(), 3);
        // Once they have refilled they are forgotten and new keys get their own.
        assert!(allowed(buckets.take(4, SECOND, 1)));
        assert_eq!(buckets.len(), 1);
        // A forgotten key starts full, as it would have been anyway.
        assert!(allowed(buckets.take(0, SECOND, 1)));
    }

    #[test]
    fn table_never_grows_past_max_keys() {
        let buckets = KeyedBuckets::new(Quota::new(1.0, 5).unwrap(), 64);
        for key in 0..10_000u64 {
            buckets.take(key.wrapping_mul(0x9e37_79b9_7f4a_7c15), key, 1);
            assert!(buckets.len() <= 64);
        }
    }

    #[test]
    fn concurrent_takes_on_one_key_admit_exactly_the_burst() {
        let buckets = KeyedBuckets::new(Quota::new(0.5, 500).unwrap(), 10);
        let total: usize = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    scope.spawn(|| {
                        (0..400)
                            .filter(|_| allowed(buckets.take(7, SECOND, 1)))
                            .count()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(total, 500);
    }
}
