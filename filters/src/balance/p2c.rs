//! Power of two choices (Mitzenmacher): draw two distinct endpoints at random
//! and keep the cheaper. Nearly as good as scanning for the cheapest, without
//! the herd that follows whichever endpoint looked cheapest a moment ago.

use fastrand::Rng;

/// Random draws tried before falling back to a scan; with half the endpoints
/// ineligible a draw misses all of them one time in 256.
const DRAW_ATTEMPTS: usize = 8;

/// Chooses the cheaper of two distinct random indices in `0..len` for which
/// `eligible` holds; the only one if just one does; `None` if none does.
/// `cost` is asked about at most two indices. Allocates nothing.
pub fn choose(
    len: usize,
    rng: &mut Rng,
    eligible: impl Fn(usize) -> bool,
    cost: impl Fn(usize) -> f64,
) -> Option<usize> {
    let (first, second) = candidates(len, rng, &eligible)?;
    let Some(second) = second else {
        return Some(first);
    };
    let (first_cost, second_cost) = (cost(first), cost(second));
    Some(if second_cost < first_cost {
        second
    } else if first_cost < second_cost {
        first
    } else if rng.bool() {
        // A scan returns candidates in index order: a fixed tie-break would favour low indices.
        first
    } else {
        second
    })
}

fn candidates(
    len: usize,
    rng: &mut Rng,
    eligible: &impl Fn(usize) -> bool,
) -> Option<(usize, Option<usize>)> {
    if len < 2 {
        return (len == 1 && eligible(0)).then_some((0, None));
    }
    for _ in 0..DRAW_ATTEMPTS {
        let first = rng.usize(..len);
        if !eligible(first) {
            continue;
        }
        for _ in 0..DRAW_ATTEMPTS {
            // Drawing from the other `len - 1` indices keeps the pair distinct.
            let mut second = rng.usize(..len - 1);
            if second >= first {
                second += 1;
            }
            if eligible(second) {
                return Some((first, Some(second)));
            }
        }
        // Perhaps `first` is the only eligible one: only a scan can tell.
        break;
    }
    sample_two_by_scan(len, rng, eligible)
}

/// Reservoir sampling of two: one pass, each pair of eligible indices equally
/// likely, no buffer however many endpoints there are.
fn sample_two_by_scan(
    len: usize,
    rng: &mut Rng,
    eligible: &impl Fn(usize) -> bool,
) -> Option<(usize, Option<usize>)> {
    let mut kept = [None; 2];
    for (seen, index) in (0..len).filter(|&i| eligible(i)).enumerate() {
        let slot = if seen < 2 { seen } else { rng.usize(..=seen) };
        if let Some(kept_slot) = kept.get_mut(slot) {
            *kept_slot = Some(index);
        }
    }
    let [first, second] = kept;
    first.map(|first| (first, second))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn by_index(i: usize) -> f64 {
        i as f64
    }

    #[test]
    fn nothing_to_choose_from() {
        let mut rng = Rng::with_seed(1);
        assert_eq!(choose(0, &mut rng, |_| true, by_index), None);
        assert_eq!(choose(1, &mut rng, |_| false, by_index), None);
        assert_eq!(choose(50, &mut rng, |_| false, by_index), None);
    }

    #[test]
    fn a_single_eligible_index_is_chosen() {
        let mut rng = Rng::with_seed(2);
        assert_eq!(choose(1, &mut rng, |_| true, by_index), Some(0));
        for _ in 0..100 {
            assert_eq!(choose(1000, &mut rng, |i| i == 777, by_index), Some(777));
        }
    }

    #[test]
    fn the_cheaper_of_two_distinct_wins() {
        let mut rng = Rng::with_seed(3);
        let mut counts = [0usize; 2];
        for _ in 0..1000 {
            counts[choose(2, &mut rng, |_| true, by_index).unwrap()] += 1;
        }
        assert_eq!(counts, [1000, 0]);
        // Among many, the most expensive is never chosen: it cannot be the cheaper of two.
        for _ in 0..1000 {
            assert_ne!(choose(10, &mut rng, |_| true, by_index), Some(9));
        }
    }

    #[test]
    fn sparse_eligibility_still_picks_pairs_uniformly() {
        let mut rng = Rng::with_seed(4);
        let eligible = |i: usize| i % 50 == 0;
        let mut counts = [0usize; 200];
        for _ in 0..30_000 {
            counts[choose(200, &mut rng, eligible, |_| 1.0).unwrap()] += 1;
        }
        for (i, &n) in counts.iter().enumerate() {
            if eligible(i) {
                assert!((6_500..8_500).contains(&n), "index {i}: {n}");
            } else {
                assert_eq!(n, 0, "index {i}");
            }
        }
    }
}
