//! [`Outliers`] as a whole, on a fake clock; the detectors' statistics and
//! the gate, backoff and budget are tested in their own modules.

use super::*;

const SECOND: u64 = 1_000_000_000;
/// A clock that does not start at zero, so no test leans on zero being special.
const START: u64 = 1_000 * SECOND;

fn settings() -> OutlierSettings {
    OutlierSettings {
        success_rate: None,
        ..OutlierSettings::default()
    }
}

fn interval_only(
    success_rate: Option<SuccessRateSettings>,
    failure_percentage: Option<FailurePercentageSettings>,
) -> OutlierSettings {
    OutlierSettings {
        consecutive_failures: 0,
        success_rate,
        failure_percentage,
        ..OutlierSettings::default()
    }
}

fn ejected(endpoint: usize, ejections: u32, seconds: u64, reason: EjectReason) -> Transition {
    Transition::Ejected {
        endpoint,
        ejections,
        duration: Duration::from_secs(seconds),
        reason,
    }
}

/// Records `n` outcomes, returning the transitions they caused.
fn record_n(outliers: &Outliers, i: usize, success: bool, n: u32, now: u64) -> Vec<Transition> {
    (0..n)
        .filter_map(|_| outliers.record(i, success, now))
        .collect()
}

/// Ejects endpoint `i` with a run of consecutive failures.
fn fail_out(outliers: &Outliers, i: usize, now: u64) -> Vec<Transition> {
    record_n(outliers, i, false, 5, now)
}

/// Records `successes` and `failures` for endpoint `i`, interleaved so that
/// no run of failures is long.
fn traffic(outliers: &Outliers, i: usize, successes: u32, failures: u32, now: u64) {
    for k in 0..successes.max(failures) {
        if k < failures {
            outliers.record(i, false, now);
        }
        if k < successes {
            outliers.record(i, true, now);
        }
    }
}

#[test]
fn five_consecutive_failures_eject() {
    let outliers = Outliers::new(3, &settings());
    assert!(record_n(&outliers, 1, false, 4, START).is_empty());
    assert!(outliers.admit(1, START));
    assert_eq!(
        outliers.record(1, false, START),
        Some(ejected(1, 1, 30, EjectReason::ConsecutiveFailures))
    );
    assert!(!outliers.admit(1, START));
    assert!(outliers.is_ejected(1, START));
    assert!(outliers.admit(0, START));
    assert_eq!(outliers.ejected_count(START), 1);
}

#[test]
fn an_ejection_reports_its_reason_and_end_until_a_probe_returns_the_endpoint() {
    let outliers = Outliers::new(3, &settings());
    assert_eq!(outliers.ejection(1, START), None);
    fail_out(&outliers, 1, START);
    let end = START + 30 * SECOND;
    assert_eq!(
        outliers.ejection(1, START),
        Some((EjectReason::ConsecutiveFailures, end))
    );
    assert_eq!(outliers.ejection(0, START), None);
    assert!(outliers.admit(1, end), "the probe");
    assert_eq!(
        outliers.record(1, false, end),
        Some(ejected(1, 2, 60, EjectReason::ProbeFailed))
    );
    assert_eq!(
        outliers.ejection(1, end).map(|(reason, _)| reason),
        Some(EjectReason::ProbeFailed)
    );
}

#[test]
fn a_success_resets_the_run() {
    let outliers = Outliers::new(3, &settings());
    assert!(record_n(&outliers, 0, false, 4, START).is_empty());
    assert_eq!(outliers.record(0, true, START), None);
    assert!(record_n(&outliers, 0, false, 4, START).is_empty());
    assert!(!outliers.is_ejected(0, START));
    assert_eq!(fail_out(&outliers, 0, START).len(), 1);
}

#[test]
fn zero_consecutive_failures_disables_the_detector() {
    let outliers = Outliers::new(
        3,
        &OutlierSettings {
            consecutive_failures: 0,
            ..settings()
        },
    );
    assert!(record_n(&outliers, 0, false, 1000, START).is_empty());
    assert!(outliers.admit(0, START));
}

#[test]
fn one_probe_after_the_ejection_and_success_returns() {
    let outliers = Outliers::new(3, &settings());
    fail_out(&outliers, 2, START);
    let end = START + 30 * SECOND;
    assert!(!outliers.admit(2, end - 1));
    assert!(outliers.is_ejected(2, end - 1));
    // Over, but no probe out yet: the next caller may go.
    assert!(!outliers.is_ejected(2, end));
    assert!(outliers.admit(2, end));
    assert!(!outliers.admit(2, end));
    assert!(!outliers.admit(2, end + SECOND));
    assert!(outliers.is_ejected(2, end + SECOND));
    assert_eq!(
        outliers.record(2, true, end + SECOND),
        Some(Transition::Returned { endpoint: 2 })
    );
    assert!(outliers.admit(2, end + SECOND));
    assert!(outliers.admit(2, end + SECOND));
    assert!(!outliers.is_ejected(2, end + SECOND));
    assert_eq!(outliers.ejected_count(end + SECOND), 0);
}

#[test]
fn concurrent_admits_let_exactly_one_probe_through() {
    let outliers = Outliers::new(2, &settings());
    fail_out(&outliers, 0, START);
    let end = START + 30 * SECOND;
    let admitted: usize = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..4)
            .map(|_| scope.spawn(|| (0..10_000).filter(|_| outliers.admit(0, end)).count()))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    assert_eq!(admitted, 1);
}

#[test]
fn a_failed_probe_ejects_again_for_longer_up_to_the_cap() {
    let outliers = Outliers::new(
        2,
        &OutlierSettings {
            max_ejection: Duration::from_secs(100),
            ..settings()
        },
    );
    assert_eq!(
        fail_out(&outliers, 0, START),
        [ejected(0, 1, 30, EjectReason::ConsecutiveFailures)]
    );
    let mut now = START + 30 * SECOND;
    let mut seen = Vec::new();
    for _ in 0..4 {
        assert!(outliers.admit(0, now));
        let transition = outliers.record(0, false, now);
        let Some(Transition::Ejected { duration, .. }) = transition else {
            panic!("probe failure did not eject: {transition:?}");
        };
        assert!(!outliers.admit(0, now + nanos(duration) - 1));
        seen.push(transition);
        now += nanos(duration);
    }
    assert_eq!(
        seen,
        [
            Some(ejected(0, 2, 60, EjectReason::ProbeFailed)),
            Some(ejected(0, 3, 90, EjectReason::ProbeFailed)),
            Some(ejected(0, 4, 100, EjectReason::ProbeFailed)),
            Some(ejected(0, 4, 100, EjectReason::ProbeFailed)),
        ]
    );
}

#[test]
fn a_lost_probe_is_replaced_after_an_interval() {
    let outliers = Outliers::new(2, &settings());
    fail_out(&outliers, 1, START);
    let probe = START + 30 * SECOND;
    assert!(outliers.admit(1, probe));
    let timeout = probe + 10 * SECOND;
    assert!(!outliers.admit(1, timeout - 1));
    assert!(outliers.is_ejected(1, timeout - 1));
    assert!(!outliers.is_ejected(1, timeout));
    assert!(outliers.admit(1, timeout));
    assert!(!outliers.admit(1, timeout));
    assert_eq!(
        outliers.record(1, true, timeout + SECOND),
        Some(Transition::Returned { endpoint: 1 })
    );
    // The first probe's late answer is an ordinary outcome now.
    assert_eq!(outliers.record(1, false, timeout + SECOND), None);
    assert!(outliers.admit(1, timeout + SECOND));
}

#[test]
fn late_answers_during_an_ejection_are_ignored() {
    let outliers = Outliers::new(
        5,
        &interval_only(None, Some(FailurePercentageSettings::default())),
    );
    traffic(&outliers, 0, 0, 60, START);
    for i in 1..5 {
        traffic(&outliers, i, 60, 0, START);
    }
    assert_eq!(outliers.check_interval(START).len(), 1);
    // Answers to requests sent before the ejection: not a probe, not counted.
    for success in [true, false] {
        assert_eq!(outliers.record(0, success, START + SECOND), None);
    }
    assert!(outliers.is_ejected(0, START + SECOND));
    let end = START + 30 * SECOND;
    assert!(outliers.admit(0, end));
    assert_eq!(
        outliers.record(0, true, end),
        Some(Transition::Returned { endpoint: 0 })
    );
    // The interval's counts start after the return: 49 requests are too few.
    traffic(&outliers, 0, 0, 49, end);
    for i in 1..5 {
        traffic(&outliers, i, 60, 0, end);
    }
    assert!(outliers.check_interval(end + SECOND).is_empty());
}

#[test]
fn max_ejection_percent_refuses_ejections_beyond_it() {
    let outliers = Outliers::new(4, &settings());
    assert_eq!(fail_out(&outliers, 0, START).len(), 1);
    assert_eq!(fail_out(&outliers, 1, START).len(), 1);
    assert!(fail_out(&outliers, 2, START).is_empty());
    assert!(outliers.admit(2, START));
    assert_eq!(outliers.ejected_count(START), 2);
    // Once endpoint 0 is back, endpoint 2's next failure ejects it.
    let end = START + 30 * SECOND;
    assert!(outliers.admit(0, end));
    assert_eq!(
        outliers.record(0, true, end),
        Some(Transition::Returned { endpoint: 0 })
    );
    assert_eq!(
        outliers.record(2, false, end),
        Some(ejected(2, 1, 30, EjectReason::ConsecutiveFailures))
    );
}

#[test]
fn one_endpoint_may_always_be_ejected() {
    let tiny = OutlierSettings {
        max_ejection_percent: 10,
        ..settings()
    };
    let outliers = Outliers::new(2, &tiny);
    assert_eq!(fail_out(&outliers, 0, START).len(), 1);
    assert!(fail_out(&outliers, 1, START).is_empty());
    let none = OutlierSettings {
        max_ejection_percent: 0,
        ..settings()
    };
    let outliers = Outliers::new(2, &none);
    assert!(fail_out(&outliers, 0, START).is_empty());
}

#[test]
fn a_probe_failure_is_not_refused_by_the_budget() {
    let outliers = Outliers::new(2, &settings());
    fail_out(&outliers, 0, START);
    let end = START + 30 * SECOND;
    assert!(outliers.admit(0, end));
    assert_eq!(
        outliers.record(0, false, end),
        Some(ejected(0, 2, 60, EjectReason::ProbeFailed))
    );
}

#[test]
fn success_rate_ejects_the_bad_endpoint_and_ignores_low_volume() {
    let outliers = Outliers::new(
        7,
        &interval_only(Some(SuccessRateSettings::default()), None),
    );
    for i in 0..4 {
        traffic(&outliers, i, 100, 0, START);
    }
    traffic(&outliers, 4, 50, 50, START);
    // Too few requests to judge, however bad.
    traffic(&outliers, 5, 0, 99, START);
    traffic(&outliers, 6, 10, 0, START);
    let now = START + 10 * SECOND;
    assert_eq!(
        outliers.check_interval(now),
        [ejected(4, 1, 30, EjectReason::SuccessRate)]
    );
    assert!(outliers.is_ejected(4, now));
    assert!(!outliers.is_ejected(5, now));
    // The counts were reset: the next interval has nothing to judge.
    assert!(outliers.check_interval(now + 10 * SECOND).is_empty());
}

#[test]
fn success_rate_needs_min_hosts() {
    let outliers = Outliers::new(
        5,
        &interval_only(Some(SuccessRateSettings::default()), None),
    );
    for i in 0..3 {
        traffic(&outliers, i, 100, 0, START);
    }
    traffic(&outliers, 3, 50, 50, START);
    traffic(&outliers, 4, 50, 49, START);
    assert!(outliers.check_interval(START).is_empty());
}

#[test]
fn failure_percentage_ejects_at_the_threshold() {
    let outliers = Outliers::new(
        6,
        &interval_only(None, Some(FailurePercentageSettings::default())),
    );
    for i in 0..3 {
        traffic(&outliers, i, 50, 0, START);
    }
    traffic(&outliers, 3, 15, 85, START);
    traffic(&outliers, 4, 16, 84, START);
    traffic(&outliers, 5, 0, 49, START);
    assert_eq!(
        outliers.check_interval(START),
        [ejected(3, 1, 30, EjectReason::FailurePercentage)]
    );
}

#[test]
fn both_detectors_eject_an_endpoint_once() {
    let outliers = Outliers::new(
        5,
        &interval_only(
            Some(SuccessRateSettings {
                request_volume: 50,
                ..SuccessRateSettings::default()
            }),
            Some(FailurePercentageSettings::default()),
        ),
    );
    for i in 0..4 {
        traffic(&outliers, i, 50, 0, START);
    }
    traffic(&outliers, 4, 0, 50, START);
    assert_eq!(
        outliers.check_interval(START),
        [ejected(4, 1, 30, EjectReason::SuccessRate)]
    );
}

#[test]
fn interval_ejections_respect_the_budget() {
    let outliers = Outliers::new(
        5,
        &interval_only(None, Some(FailurePercentageSettings::default())),
    );
    for i in 0..5 {
        traffic(&outliers, i, 0, 50, START);
    }
    assert_eq!(outliers.check_interval(START).len(), 2);
    assert_eq!(outliers.ejected_count(START), 2);
}

#[test]
fn healthy_intervals_work_off_ejections() {
    let outliers = Outliers::new(2, &settings());
    let return_probe = |at: u64| {
        assert!(outliers.admit(0, at));
        assert_eq!(
            outliers.record(0, true, at),
            Some(Transition::Returned { endpoint: 0 })
        );
    };
    assert_eq!(
        fail_out(&outliers, 0, START),
        [ejected(0, 1, 30, EjectReason::ConsecutiveFailures)]
    );
    // Intervals the endpoint spent ejected, wholly or partly, do not count.
    outliers.check_interval(START + 10 * SECOND);
    outliers.check_interval(START + 20 * SECOND);
    let back = START + 30 * SECOND;
    return_probe(back);
    outliers.check_interval(START + 31 * SECOND);
    assert_eq!(
        fail_out(&outliers, 0, START + 32 * SECOND),
        [ejected(0, 2, 60, EjectReason::ConsecutiveFailures)]
    );
    let back = START + 92 * SECOND;
    return_probe(back);
    outliers.check_interval(back + SECOND);
    // Two healthy intervals: back to the first ejection's length.
    outliers.check_interval(back + 11 * SECOND);
    outliers.check_interval(back + 21 * SECOND);
    assert_eq!(
        fail_out(&outliers, 0, back + 22 * SECOND),
        [ejected(0, 1, 30, EjectReason::ConsecutiveFailures)]
    );
}

#[test]
fn out_of_range_and_empty_do_not_panic() {
    let empty = Outliers::new(0, &OutlierSettings::default());
    assert!(empty.is_empty());
    assert_eq!(empty.len(), 0);
    assert!(empty.admit(0, START));
    assert_eq!(empty.record(0, false, START), None);
    assert!(!empty.is_ejected(0, START));
    assert_eq!(empty.ejected_count(START), 0);
    assert!(empty.check_interval(START).is_empty());

    let outliers = Outliers::new(3, &OutlierSettings::default());
    assert_eq!(outliers.len(), 3);
    assert!(outliers.admit(usize::MAX, START));
    assert!(record_n(&outliers, 3, false, 10, START).is_empty());
    assert!(!outliers.is_ejected(3, START));
}

#[test]
fn extreme_settings_and_times_do_not_panic() {
    let extreme = OutlierSettings {
        consecutive_failures: 1,
        interval: Duration::ZERO,
        base_ejection: Duration::MAX,
        max_ejection: Duration::MAX,
        max_ejection_percent: u32::MAX,
        success_rate: Some(SuccessRateSettings {
            min_hosts: 0,
            request_volume: 0,
            stdev_factor: f64::INFINITY,
        }),
        failure_percentage: Some(FailurePercentageSettings {
            threshold_percent: 0,
            min_hosts: 0,
            request_volume: 0,
        }),
    };
    let outliers = Outliers::new(2, &extreme);
    for now in [0, u64::MAX] {
        outliers.record(0, false, now);
        outliers.record(1, true, now);
        outliers.admit(0, now);
        outliers.record(0, false, now);
        outliers.check_interval(now);
        outliers.ejected_count(now);
    }
    let zero = OutlierSettings {
        base_ejection: Duration::ZERO,
        max_ejection: Duration::ZERO,
        ..extreme
    };
    let outliers = Outliers::new(1, &zero);
    assert!(outliers.record(0, false, 0).is_some());
    assert!(outliers.admit(0, 0));
    assert!(outliers.record(0, false, 0).is_some());
}

#[test]
fn outliers_are_shared_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Outliers>();
}

#[test]
fn reasons_have_labels() {
    assert_eq!(
        EjectReason::ConsecutiveFailures.label(),
        "consecutive_failures"
    );
    assert_eq!(EjectReason::SuccessRate.label(), "success_rate");
    assert_eq!(EjectReason::FailurePercentage.label(), "failure_percentage");
    assert_eq!(EjectReason::ProbeFailed.label(), "probe_failed");
}

#[test]
fn a_carried_over_endpoint_stays_ejected_and_holds_its_budget_slot() {
    let old = Outliers::new(2, &settings());
    assert!(!fail_out(&old, 0, 0).is_empty());
    let new = Outliers::carried_over(3, &settings(), Some(&old), &[None, Some(0), Some(1)]);
    assert!(!new.is_ejected(0, 0));
    assert!(new.is_ejected(1, 0));
    assert!(!new.is_ejected(2, 0));
    assert_eq!(new.ejected_count(0), 1);
}

#[test]
fn probe_now_cuts_an_ejection_short_for_one_probe() {
    let outliers = Outliers::new(2, &settings());
    assert!(!outliers.probe_now(0, START), "nothing to cut short");
    assert_eq!(
        fail_out(&outliers, 0, START),
        vec![ejected(0, 1, 30, EjectReason::ConsecutiveFailures)]
    );
    let later = START + SECOND;
    assert!(outliers.is_ejected(0, later));
    assert!(outliers.probe_now(0, later));
    assert!(!outliers.is_ejected(0, later));
    assert!(outliers.admit(0, later), "the probe");
    assert!(!outliers.admit(0, later), "only one");
    assert!(!outliers.probe_now(0, later), "a probe is out");
    assert_eq!(
        outliers.record(0, true, later),
        Some(Transition::Returned { endpoint: 0 })
    );
    assert!(outliers.admit(0, later));
}
