//! Envoy's failure-percentage detector: among the endpoints with enough
//! requests in an interval, those failing at least a fixed share of them are
//! outliers, however their peers fare.

use super::Sample;

/// When the failure-percentage detector judges, and from what share of failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailurePercentageSettings {
    /// Outliers fail at least this percentage of their requests.
    pub threshold_percent: u32,
    /// Fewest endpoints with `request_volume` requests for the detector to judge.
    pub min_hosts: u32,
    /// Fewest requests in an interval for an endpoint to take part.
    pub request_volume: u32,
}

impl Default for FailurePercentageSettings {
    /// Envoy's defaults.
    fn default() -> Self {
        FailurePercentageSettings {
            threshold_percent: 85,
            min_hosts: 5,
            request_volume: 50,
        }
    }
}

/// The endpoints of `samples` that are failure-percentage outliers.
pub(super) fn outliers(samples: &[Sample], settings: &FailurePercentageSettings) -> Vec<usize> {
    // At least one request: an idle endpoint has no failure percentage.
    let volume = u64::from(settings.request_volume).max(1);
    let judged: Vec<&Sample> = samples
        .iter()
        .filter(|sample| sample.total() >= volume)
        .collect();
    if judged.len() < settings.min_hosts as usize {
        return Vec::new();
    }
    // Exact in integers: no rounding decides an ejection at the threshold.
    judged
        .into_iter()
        .filter(|sample| {
            u128::from(sample.failures) * 100
                >= u128::from(settings.threshold_percent) * u128::from(sample.total())
        })
        .map(|sample| sample.endpoint)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outlier::samples;

    #[test]
    fn failing_at_least_the_threshold_is_an_outlier() {
        let settings = FailurePercentageSettings::default();
        let found = outliers(
            &samples(&[(50, 0), (15, 85), (16, 84), (0, 60), (50, 0)]),
            &settings,
        );
        assert_eq!(found, [1, 3]);
    }

    #[test]
    fn too_few_busy_endpoints_are_not_judged() {
        let settings = FailurePercentageSettings::default();
        // Endpoint 4 fails everything but has too few requests to count.
        let found = outliers(
            &samples(&[(50, 0), (0, 50), (50, 0), (50, 0), (0, 49)]),
            &settings,
        );
        assert!(found.is_empty());
        let found = outliers(
            &samples(&[(50, 0), (0, 50), (50, 0), (50, 0), (0, 49), (50, 0)]),
            &settings,
        );
        assert_eq!(found, [1]);
    }

    #[test]
    fn a_pool_wide_failure_ejects_everyone_it_judges() {
        let found = outliers(
            &samples(&[(0, 50); 5]),
            &FailurePercentageSettings::default(),
        );
        assert_eq!(found, [0, 1, 2, 3, 4]);
    }

    #[test]
    fn extreme_counts_do_not_overflow() {
        let settings = FailurePercentageSettings {
            threshold_percent: u32::MAX,
            min_hosts: 0,
            request_volume: 0,
        };
        assert!(outliers(&samples(&[(0, u64::MAX), (0, 0)]), &settings).is_empty());
        let settings = FailurePercentageSettings {
            threshold_percent: 100,
            ..settings
        };
        assert_eq!(outliers(&samples(&[(0, u64::MAX), (0, 0)]), &settings), [0]);
    }
}
