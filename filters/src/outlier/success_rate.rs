//! Envoy's success-rate detector: among the endpoints with enough requests
//! in an interval, those whose success rate falls well below their peers'
//! mean are outliers. Relative, so a pool-wide failure ejects nobody.

use super::Sample;

/// When the success-rate detector judges, and how far below the mean is too far.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SuccessRateSettings {
    /// Fewest endpoints with `request_volume` requests for the statistics to count.
    pub min_hosts: u32,
    /// Fewest requests in an interval for an endpoint to take part.
    pub request_volume: u32,
    /// Outliers have a success rate below `mean − stdev_factor × stdev`.
    pub stdev_factor: f64,
}

impl Default for SuccessRateSettings {
    /// Envoy's defaults.
    fn default() -> Self {
        SuccessRateSettings {
            min_hosts: 5,
            request_volume: 100,
            stdev_factor: 1.9,
        }
    }
}

/// The endpoints of `samples` that are success-rate outliers.
pub(super) fn outliers(samples: &[Sample], settings: &SuccessRateSettings) -> Vec<usize> {
    // At least one request, so that every rate is a number.
    let volume = u64::from(settings.request_volume).max(1);
    let rated: Vec<(usize, f64)> = samples
        .iter()
        .filter(|sample| sample.total() >= volume)
        .map(|sample| (sample.endpoint, sample.success_percent()))
        .collect();
    if rated.is_empty() || rated.len() < settings.min_hosts as usize {
        return Vec::new();
    }
    let count = rated.len() as f64;
    let mean = rated.iter().map(|&(_, rate)| rate).sum::<f64>() / count;
    let variance = rated
        .iter()
        .map(|&(_, rate)| (rate - mean) * (rate - mean))
        .sum::<f64>()
        / count;
    let threshold = mean - settings.stdev_factor * variance.sqrt();
    rated
        .into_iter()
        .filter(|&(_, rate)| rate < threshold)
        .map(|(endpoint, _)| endpoint)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outlier::samples;

    #[test]
    fn the_one_far_below_the_mean_is_an_outlier() {
        // Rates 100, 100, 100, 100, 50: mean 90, stdev 20, threshold 52.
        let settings = SuccessRateSettings::default();
        let found = outliers(
            &samples(&[(100, 0), (100, 0), (100, 0), (100, 0), (50, 50)]),
            &settings,
        );
        assert_eq!(found, [4]);
        // Rates 100, 98, 96, 94, 90: mean 95.6, stdev 3.44, threshold 89.06.
        let found = outliers(
            &samples(&[(100, 0), (98, 2), (96, 4), (94, 6), (90, 10)]),
            &settings,
        );
        assert!(found.is_empty());
    }

    #[test]
    fn equal_rates_have_no_outlier() {
        let equal = samples(&[(99, 1); 7]);
        assert!(outliers(&equal, &SuccessRateSettings::default()).is_empty());
        let failing = samples(&[(0, 100); 7]);
        assert!(outliers(&failing, &SuccessRateSettings::default()).is_empty());
    }

    #[test]
    fn low_volume_endpoints_neither_count_nor_get_ejected() {
        let settings = SuccessRateSettings::default();
        // Four endpoints with enough requests are too few to judge.
        let few = samples(&[(100, 0), (100, 0), (100, 0), (50, 50), (0, 99)]);
        assert!(outliers(&few, &settings).is_empty());
        // With five, the low-volume one still stays out of it.
        let five = samples(&[(100, 0), (100, 0), (100, 0), (100, 0), (50, 50), (0, 99)]);
        assert_eq!(outliers(&five, &settings), [4]);
    }

    #[test]
    fn degenerate_settings_do_not_panic() {
        let settings = SuccessRateSettings {
            min_hosts: 0,
            request_volume: 0,
            stdev_factor: f64::NAN,
        };
        assert!(outliers(&samples(&[(0, 0), (1, 0), (0, 1)]), &settings).is_empty());
        assert!(outliers(&[], &settings).is_empty());
        let settings = SuccessRateSettings {
            stdev_factor: 0.0,
            ..settings
        };
        assert_eq!(
            outliers(&samples(&[(0, 0), (1, 0), (0, 1)]), &settings),
            [2]
        );
    }
}
