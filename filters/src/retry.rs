//! A retry budget in the style of Finagle and linkerd, and jittered backoff.
//!
//! Retrying every failure turns a struggling backend into a dead one: each
//! retry is more load exactly when there is least capacity. A budget caps
//! retries at a fraction of the original requests seen recently, plus a small
//! allowance so that a quiet service can still retry at all.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

const NANOS_PER_SECOND: u64 = 1_000_000_000;

/// Longer windows would only cost memory: one slot per second.
const MAX_WINDOW_SECONDS: u64 = 3600;

/// A budget letting retries outnumber requests tenfold is already no budget.
const MAX_RATIO: f64 = 10.0;

/// The ratio is kept in millionths so that `ratio × requests` is exact integer
/// arithmetic: 0.57 × 100 as floats is 56.99…, which would lose a retry.
const RATIO_SCALE: u64 = 1_000_000;

/// A count for one second, packed with the second it belongs to (truncated to
/// 32 bits) so that a slot left over from an earlier lap of the ring reads as
/// zero and is reset by the first writer that needs it, in one compare-and-swap.
#[derive(Debug, Default)]
struct TaggedCounter(AtomicU64);

impl TaggedCounter {
    fn tag(packed: u64) -> u32 {
        (packed >> 32) as u32
    }

    fn count(packed: u64) -> u32 {
        packed as u32
    }

    fn pack(tag: u32, count: u32) -> u64 {
        (u64::from(tag) << 32) | u64::from(count)
    }

    /// Seconds from the slot's second to `now_tag`, negative when the slot's
    /// second is later (written by a caller whose clock is a little ahead).
    fn age(packed: u64, now_tag: u32) -> i64 {
        i64::from(now_tag.wrapping_sub(Self::tag(packed)) as i32)
    }

    /// What the slot holds for `now_tag`'s second.
    fn current(packed: u64, now_tag: u32) -> u32 {
        if Self::tag(packed) == now_tag {
            Self::count(packed)
        } else {
            0
        }
    }

    /// The slot after counting one more event at `now_tag`; `None` once the
    /// count can no longer grow, so the caller can refuse instead of losing it.
    fn incremented(packed: u64, now_tag: u32) -> Option<u64> {
        let count = Self::current(packed, now_tag).checked_add(1)?;
        Some(Self::pack(now_tag, count))
    }

    /// The slot's count if its second lies within `window_secs` of `now_tag`:
    /// behind it, or ahead of it for a caller whose clock lags a little.
    fn in_window(&self, now_tag: u32, window_secs: u32) -> u64 {
        let packed = self.0.load(Ordering::Acquire);
        if Self::age(packed, now_tag).unsigned_abs() < u64::from(window_secs) {
            u64::from(Self::count(packed))
        } else {
            0
        }
    }
}

/// The requests and retries of one second.
#[derive(Debug, Default)]
struct Slot {
    requests: TaggedCounter,
    retries: TaggedCounter,
}

/// Allows retries while those in the last `window` stay below
/// `min_per_second × window_secs + ratio × requests in the window`.
///
/// Lock-free: a ring of one-second slots of atomic counters, so deposits and
/// withdrawals from many threads never wait on one another. Withdrawals at the
/// same second never overdraw the budget; callers whose clocks disagree by
/// whole seconds may see slightly different windows, and one lagging a whole
/// window behind the others resets the newer second it shares a slot with.
#[derive(Debug)]
pub struct RetryBudget {
    slots: Box<[Slot]>,
    window_secs: u32,
    ratio_millionths: u64,
    min_in_window: u64,
}

impl RetryBudget {
    /// A budget of `ratio` retries per request plus `min_per_second` retries
    /// per second, both over `window` (typically ten seconds).
    ///
    /// The window is counted in whole seconds, at least one and at most an
    /// hour; a negative or NaN ratio means no retries beyond the minimum, and
    /// ratios above 10 are capped there.
    pub fn new(ratio: f64, min_per_second: u32, window: Duration) -> Self {
        let window_secs = window.as_secs().clamp(1, MAX_WINDOW_SECONDS) as u32;
        let ratio = if ratio.is_nan() {
            0.0
        } else {
            ratio.clamp(0.0, MAX_RATIO)
        };
        RetryBudget {
            slots: (0..window_secs).map(|_| Slot::default()).collect(),
            window_secs,
            ratio_millionths: (ratio * RATIO_SCALE as f64).round() as u64,
            min_in_window: u64::from(min_per_second) * u64::from(window_secs),
        }
    }

    /// Records one original request at `now_ns`, earning `ratio` of a retry.
    pub fn deposit(&self, now_ns: u64) {
        let (slot, now_tag) = self.slot_at(now_ns);
        // A second with four billion requests has earned enough retries already:
        // dropping the count then is harmless, and never panics.
        let _ = slot
            .requests
            .0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |packed| {
                TaggedCounter::incremented(packed, now_tag)
            });
    }

    /// Asks for one retry at `now_ns`: true, and counted, if the budget allows it.
    pub fn try_withdraw(&self, now_ns: u64) -> bool {
        let (own, now_tag) = self.slot_at(now_ns);
        let mut requests = 0;
        let mut other_seconds_retries = 0;
        for slot in self.slots.iter() {
            requests += slot.requests.in_window(now_tag, self.window_secs);
            if !std::ptr::eq(slot, own) {
                other_seconds_retries += slot.retries.in_window(now_tag, self.window_secs);
            }
        }
        // Only the current second's retries can grow under us, so checking and
        // counting them in one compare-and-swap keeps concurrent callers within
        // the budget.
        let mut packed = own.retries.0.load(Ordering::Acquire);
        loop {
            let retries =
                other_seconds_retries + u64::from(TaggedCounter::current(packed, now_tag));
            if !self.allows(retries, requests) {
                return false;
            }
            let Some(next) = TaggedCounter::incremented(packed, now_tag) else {
                return false;
            };
            match own.retries.0.compare_exchange_weak(
                packed,
                next,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return true,
                Err(actual) => packed = actual,
            }
        }
    }

    fn slot_at(&self, now_ns: u64) -> (&Slot, u32) {
        let second = now_ns / NANOS_PER_SECOND;
        // The ring has exactly `window_secs` slots, so the index is in range.
        let index = (second % u64::from(self.window_secs)) as usize;
        (&self.slots[index], second as u32)
    }

    /// Whether one more retry fits: `retries < min + ratio × requests`, in
    /// millionths so that no rounding creeps in.
    fn allows(&self, retries: u64, requests: u64) -> bool {
        let scale = u128::from(RATIO_SCALE);
        u128::from(retries) * scale
            < u128::from(self.min_in_window) * scale
                + u128::from(self.ratio_millionths) * u128::from(requests)
    }
}

/// Exponential backoff with full jitter: a delay uniform in
/// `[0, min(max, base × 2^(attempt − 1))]`, picked by `random` (any 64-bit
/// random number). Attempt 1 is the first retry; attempt 0 counts as 1.
///
/// Full jitter spreads clients that failed together, so their retries do not
/// arrive together again. Ceilings beyond `u64::MAX` nanoseconds (about 584
/// years) are capped there, and huge attempts never overflow.
pub fn backoff(attempt: u32, base: Duration, max: Duration, random: u64) -> Duration {
    let doublings = attempt.saturating_sub(1).min(127);
    let grown = base.as_nanos().saturating_mul(1u128 << doublings);
    let ceiling = grown.min(max.as_nanos()).min(u128::from(u64::MAX));
    // Scaling instead of `%` avoids modulo bias; `random = u64::MAX` reaches
    // the ceiling itself, and the product stays below 2^128.
    let delay = (u128::from(random) * (ceiling + 1)) >> 64;
    Duration::from_nanos(delay as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = NANOS_PER_SECOND;
    const WINDOW: Duration = Duration::from_secs(10);

    fn drain(budget: &RetryBudget, now_ns: u64) -> u64 {
        let mut granted = 0;
        while budget.try_withdraw(now_ns) {
            granted += 1;
            assert!(granted <= 1_000_000, "the budget never runs out");
        }
        granted
    }

    #[test]
    fn retries_are_a_ratio_of_requests_plus_the_minimum() {
        let budget = RetryBudget::new(0.2, 1, WINDOW);
        let start = 1_000 * SECOND;
        // 1000 requests spread over the whole window.
        for i in 0..1000 {
            budget.deposit(start + i * (SECOND / 100));
        }
        let end = start + 9 * SECOND + SECOND / 2;
        assert_eq!(drain(&budget, end), 200 + 10);
    }

    #[test]
    fn retries_spent_earlier_in_the_window_count() {
        let budget = RetryBudget::new(0.5, 0, WINDOW);
        for _ in 0..100 {
            budget.deposit(0);
        }
        assert_eq!(drain(&budget, 0), 50);
        // Two more requests later in the window earn one more retry, no more.
        budget.deposit(5 * SECOND);
        budget.deposit(5 * SECOND);
        assert_eq!(drain(&budget, 5 * SECOND), 1);
    }

    #[test]
    fn ratio_is_exact_for_awkward_fractions() {
        let budget = RetryBudget::new(0.57, 0, WINDOW);
        for _ in 0..100 {
            budget.deposit(0);
        }
        assert_eq!(drain(&budget, 0), 57);
    }

    #[test]
    fn minimum_allows_retries_without_traffic() {
        let budget = RetryBudget::new(0.2, 3, WINDOW);
        assert_eq!(drain(&budget, 42 * SECOND), 30);
        let none = RetryBudget::new(0.2, 0, WINDOW);
        assert!(!none.try_withdraw(42 * SECOND));
    }

    #[test]
    fn old_slots_expire_after_the_window() {
        // Seconds are tagged in 32 bits: clocks past 2³¹ s and across 2³² s
        // must behave like small ones.
        let starts = [
            7 * SECOND,
            ((1 << 31) + 7) * SECOND,
            ((1 << 32) - 3) * SECOND,
            (u64::MAX / SECOND - 20_000) * SECOND,
        ];
        for start in starts {
            let budget = RetryBudget::new(1.0, 1, WINDOW);
            for _ in 0..50 {
                budget.deposit(start);
            }
            assert_eq!(drain(&budget, start), 60, "at {start}");
            // Just inside the window: the spent retries still count.
            assert!(!budget.try_withdraw(start + 10 * SECOND - 1), "at {start}");
            // The second of the deposits and retries has left the window: only
            // the minimum is back.
            assert_eq!(drain(&budget, start + 10 * SECOND), 10, "at {start}");
            // Much later, the ring has lapped many times; stale slots read as empty.
            let later = start + 12_345 * SECOND;
            budget.deposit(later);
            assert_eq!(drain(&budget, later), 11, "at {start}");
        }
    }

    #[test]
    fn a_caller_with_a_lagging_clock_sees_later_counts() {
        let budget = RetryBudget::new(1.0, 0, WINDOW);
        budget.deposit(20 * SECOND);
        budget.deposit(20 * SECOND);
        // Read its clock at 15 s, then was descheduled while others went on.
        assert!(budget.try_withdraw(15 * SECOND));
        assert_eq!(drain(&budget, 20 * SECOND), 1);
    }

    #[test]
    fn silly_parameters_are_clamped() {
        let nan = RetryBudget::new(f64::NAN, 0, Duration::ZERO);
        nan.deposit(0);
        assert!(!nan.try_withdraw(0));
        let negative = RetryBudget::new(-3.0, 1, Duration::from_millis(1500));
        negative.deposit(0);
        // A one-second window: only the minimum of one.
        assert_eq!(drain(&negative, 0), 1);
        let huge = RetryBudget::new(f64::INFINITY, 0, Duration::MAX);
        huge.deposit(0);
        assert_eq!(drain(&huge, 0), 10);
        assert_eq!(huge.slots.len(), MAX_WINDOW_SECONDS as usize);
        let extreme = RetryBudget::new(1.0, u32::MAX, WINDOW);
        assert!(extreme.try_withdraw(u64::MAX));
    }

    #[test]
    fn concurrent_withdrawals_never_exceed_the_budget() {
        let budget = RetryBudget::new(0.5, 2, WINDOW);
        let now = 3 * SECOND;
        let granted: u64 = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    scope.spawn(|| {
                        let mut granted = 0;
                        for _ in 0..1000 {
                            budget.deposit(now);
                            granted += u64::from(budget.try_withdraw(now));
                            granted += u64::from(budget.try_withdraw(now));
                        }
                        granted
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        // 4000 requests at 0.5 plus 2 × 10: whatever was granted under
        // contention and what is left add up to exactly the budget.
        assert!(granted <= 2020);
        assert_eq!(granted + drain(&budget, now), 2020);
    }

    #[test]
    fn backoff_stays_within_the_growing_ceiling() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(10);
        for attempt in 1..=7u32 {
            let ceiling = base * 2u32.pow(attempt - 1);
            assert_eq!(backoff(attempt, base, max, 0), Duration::ZERO);
            assert_eq!(backoff(attempt, base, max, u64::MAX), ceiling);
            let middle = backoff(attempt, base, max, u64::MAX / 2);
            assert!(middle.abs_diff(ceiling / 2) <= Duration::from_nanos(1));
        }
        assert_eq!(backoff(0, base, max, u64::MAX), base);
    }

    #[test]
    fn backoff_is_capped_at_max() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(5);
        assert_eq!(backoff(7, base, max, u64::MAX), max);
        assert_eq!(backoff(40, base, max, u64::MAX), max);
        assert_eq!(backoff(1, Duration::from_secs(60), max, u64::MAX), max);
        assert_eq!(backoff(3, Duration::ZERO, max, u64::MAX), Duration::ZERO);
    }

    #[test]
    fn backoff_never_overflows() {
        for attempt in [64, 127, 128, 1000, u32::MAX] {
            for random in [0, 1, u64::MAX / 3, u64::MAX] {
                let delay = backoff(attempt, Duration::MAX, Duration::MAX, random);
                assert!(delay <= Duration::from_nanos(u64::MAX));
                let capped = backoff(
                    attempt,
                    Duration::from_secs(1),
                    Duration::from_secs(30),
                    random,
                );
                assert!(capped <= Duration::from_secs(30));
            }
        }
        assert_eq!(
            backoff(u32::MAX, Duration::from_nanos(1), Duration::MAX, u64::MAX),
            Duration::from_nanos(u64::MAX)
        );
    }
}
