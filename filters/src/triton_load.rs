//! Load as Triton itself reports it, read from its Prometheus metrics endpoint
//! (port 8002, `/metrics`): requests waiting per model right now, and how long
//! recent requests queued. The proxy's own in-flight counts miss load from
//! other clients and other proxies; Triton's numbers include it.

use std::borrow::Cow;
use std::collections::HashMap;

/// The Triton metrics this module reads; everything else in a scrape is skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Metric {
    Pending,
    QueueDuration,
    Success,
    Failure,
}

impl Metric {
    fn from_name(name: &str) -> Option<Metric> {
        match name {
            "nv_inference_pending_request_count" => Some(Metric::Pending),
            "nv_inference_queue_duration_us" => Some(Metric::QueueDuration),
            "nv_inference_request_success" => Some(Metric::Success),
            "nv_inference_request_failure" => Some(Metric::Failure),
            _ => None,
        }
    }
}

/// One model's counters in one scrape, summed over its versions and any other
/// labels (such as the failure `reason`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ModelCounters {
    /// Requests waiting to execute now (`nv_inference_pending_request_count`).
    pub pending: f64,
    /// Cumulative microseconds requests spent queued (`nv_inference_queue_duration_us`).
    pub queue_us: f64,
    /// Cumulative finished requests: `nv_inference_request_success` plus
    /// `nv_inference_request_failure`.
    pub requests: f64,
}

/// Parses a Prometheus text scrape from Triton into counters per model.
///
/// Tolerant, and never panics: comments, metrics it does not use, samples
/// without a `model` label, malformed lines, and values that are not finite
/// non-negative numbers (NaN, ±Inf) are skipped. Label values may contain the
/// escapes `\"`, `\\` and `\n`.
pub fn parse(text: &str) -> HashMap<String, ModelCounters> {
    let mut models: HashMap<String, ModelCounters> = HashMap::new();
    for line in text.lines() {
        let Some((metric, model, value)) = parse_sample(line) else {
            continue;
        };
        // Look up by `&str` first: allocating the name only for a new model.
        let counters = match models.get_mut(model.as_ref()) {
            Some(counters) => counters,
            None => models.entry(model.into_owned()).or_default(),
        };
        match metric {
            Metric::Pending => counters.pending += value,
            Metric::QueueDuration => counters.queue_us += value,
            Metric::Success | Metric::Failure => counters.requests += value,
        }
    }
    models
}

/// One sample line: `name{label="value",...} value [timestamp]`, if it is a
/// metric this module reads and carries a model label.
fn parse_sample(line: &str) -> Option<(Metric, Cow<'_, str>, f64)> {
    let line = line.trim_start();
    let name_end = line
        .find(|c: char| c == '{' || c.is_ascii_whitespace())
        .unwrap_or(line.len());
    let metric = Metric::from_name(&line[..name_end])?;
    let rest = line[name_end..].trim_start();
    let (model, rest) = parse_labels(rest.strip_prefix('{')?)?;
    // What follows the value is an optional timestamp, which is not needed.
    let value: f64 = rest.split_ascii_whitespace().next()?.parse().ok()?;
    if !(value.is_finite() && value >= 0.0) {
        return None;
    }
    Some((metric, model?, value))
}

/// Reads labels up to the closing brace: the `model` label's value, if any,
/// and the text after the brace. `None` if the labels are malformed.
fn parse_labels(mut rest: &str) -> Option<(Option<Cow<'_, str>>, &str)> {
    let mut model = None;
    loop {
        rest = rest.trim_start();
        if let Some(after) = rest.strip_prefix('}') {
            return Some((model, after));
        }
        let (name, after_name) = rest.split_once('=')?;
        let after_quote = after_name.trim_start().strip_prefix('"')?;
        let (raw_value, after_value) = split_quoted(after_quote)?;
        if name.trim() == "model" {
            model = Some(unescape(raw_value));
        }
        rest = after_value.trim_start();
        if let Some(after_comma) = rest.strip_prefix(',') {
            rest = after_comma;
        } else if !rest.starts_with('}') {
            return None;
        }
    }
}

/// Splits `value"rest` at the first quote not escaped by a backslash.
fn split_quoted(text: &str) -> Option<(&str, &str)> {
    let bytes = text.as_bytes();
    let mut index = 0;
    while let Some(&byte) = bytes.get(index) {
        match byte {
            // Skipping the escaped byte is safe even before a multi-byte
            // character: continuation bytes are never `"` or `\`.
            b'\\' => index += 2,
            b'"' => return Some((text.get(..index)?, text.get(index + 1..)?)),
            _ => index += 1,
        }
    }
    None
}

/// Decodes a label value's escapes, borrowing when there are none (the usual case).
fn unescape(raw: &str) -> Cow<'_, str> {
    if !raw.contains('\\') {
        return Cow::Borrowed(raw);
    }
    let mut decoded = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            decoded.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => decoded.push('\n'),
            Some('\\') => decoded.push('\\'),
            Some('"') => decoded.push('"'),
            // Not a valid escape: kept as written rather than guessed at.
            Some(other) => {
                decoded.push('\\');
                decoded.push(other);
            }
            None => decoded.push('\\'),
        }
    }
    Cow::Owned(decoded)
}

/// One model's load on one endpoint, ready to weigh in load balancing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ModelLoad {
    /// Requests waiting to execute at the time of the scrape.
    pub pending: u32,
    /// Mean nanoseconds queued by the requests finished since the previous
    /// scrape; 0 when there is nothing to compare with.
    pub queue_ns_per_request: u64,
}

/// Turns successive scrapes of one endpoint into load: Triton's counters are
/// cumulative, so queue time per request needs the previous scrape's values.
#[derive(Debug, Default)]
pub struct LoadTracker {
    previous: HashMap<String, ModelCounters>,
}

impl LoadTracker {
    /// A tracker that has seen no scrape yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Load per model from a new scrape, sorted by model name: pending
    /// requests now, and the mean queue time of the requests finished since
    /// the previous scrape.
    ///
    /// The mean is 0 when no request finished, on a model's first scrape, and
    /// when a counter went backwards: Triton restarted, so this scrape becomes
    /// the new baseline.
    pub fn update(&mut self, text: &str) -> Vec<(String, ModelLoad)> {
        let current = parse(text);
        let mut loads: Vec<(String, ModelLoad)> = current
            .iter()
            .map(|(model, now)| {
                let queue_ns_per_request = self
                    .previous
                    .get(model)
                    .map_or(0, |before| mean_queue_ns(before, now));
                let load = ModelLoad {
                    // `as` saturates, which is what a huge gauge should become.
                    pending: now.pending as u32,
                    queue_ns_per_request,
                };
                (model.clone(), load)
            })
            .collect();
        loads.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        self.previous = current;
        loads
    }
}

/// Mean queue time of the requests finished between two scrapes.
fn mean_queue_ns(before: &ModelCounters, now: &ModelCounters) -> u64 {
    let finished = now.requests - before.requests;
    let queued_us = now.queue_us - before.queue_us;
    // A sum that overflowed (infinite, or NaN as infinity minus infinity)
    // says nothing about the queue; negated so that NaN fails the test too.
    if !(finished >= 1.0 && queued_us.is_finite() && queued_us >= 0.0) {
        return 0;
    }
    // `as` saturates and maps NaN to 0, so no value can panic here.
    (queued_us / finished * 1000.0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scrape shaped like Triton 2.51's, trimmed: two models, one with two
    /// versions, GPU and CPU metrics without a model label, and the summary
    /// and other metrics this module does not use.
    const SCRAPE: &str = r#"# HELP nv_inference_request_success Number of successful inference requests, all batch sizes
# TYPE nv_inference_request_success counter
nv_inference_request_success{model="densenet_onnx",version="1"} 1000
nv_inference_request_success{model="densenet_onnx",version="2"} 500
nv_inference_request_success{model="simple",version="1"} 40
# HELP nv_inference_request_failure Number of failed inference requests, all batch sizes
# TYPE nv_inference_request_failure counter
nv_inference_request_failure{model="densenet_onnx",reason="REJECTED",version="1"} 10
nv_inference_request_failure{model="densenet_onnx",reason="CANCELED",version="1"} 0
nv_inference_request_failure{model="densenet_onnx",reason="BACKEND",version="1"} 2
nv_inference_request_failure{model="densenet_onnx",reason="OTHER",version="2"} 0
nv_inference_request_failure{model="simple",reason="REJECTED",version="1"} 0
# HELP nv_inference_count Number of inferences performed (does not include cached requests)
# TYPE nv_inference_count counter
nv_inference_count{model="densenet_onnx",version="1"} 8096
nv_inference_count{model="densenet_onnx",version="2"} 4000
nv_inference_count{model="simple",version="1"} 40
# HELP nv_inference_exec_count Number of model executions performed (does not include cached requests)
# TYPE nv_inference_exec_count counter
nv_inference_exec_count{model="densenet_onnx",version="1"} 253
nv_inference_exec_count{model="densenet_onnx",version="2"} 125
nv_inference_exec_count{model="simple",version="1"} 40
# HELP nv_inference_pending_request_count Instantaneous number of pending requests awaiting execution per-model.
# TYPE nv_inference_pending_request_count gauge
nv_inference_pending_request_count{model="densenet_onnx",version="1"} 3
nv_inference_pending_request_count{model="densenet_onnx",version="2"} 1
nv_inference_pending_request_count{model="simple",version="1"} 0
# HELP nv_inference_request_duration_us Cumulative inference request duration in microseconds (includes cached requests)
# TYPE nv_inference_request_duration_us counter
nv_inference_request_duration_us{model="densenet_onnx",version="1"} 9876543
nv_inference_request_duration_us{model="densenet_onnx",version="2"} 4567890
nv_inference_request_duration_us{model="simple",version="1"} 4321
# HELP nv_inference_queue_duration_us Cumulative inference queuing duration in microseconds (includes cached requests)
# TYPE nv_inference_queue_duration_us counter
nv_inference_queue_duration_us{model="densenet_onnx",version="1"} 123456
nv_inference_queue_duration_us{model="densenet_onnx",version="2"} 65432
nv_inference_queue_duration_us{model="simple",version="1"} 800
# HELP nv_inference_compute_input_duration_us Cumulative compute input duration in microseconds (does not include cached requests)
# TYPE nv_inference_compute_input_duration_us counter
nv_inference_compute_input_duration_us{model="densenet_onnx",version="1"} 23456
nv_inference_compute_input_duration_us{model="simple",version="1"} 120
# HELP nv_inference_compute_infer_duration_us Cumulative compute inference duration in microseconds (does not include cached requests)
# TYPE nv_inference_compute_infer_duration_us counter
nv_inference_compute_infer_duration_us{model="densenet_onnx",version="1"} 7654321
nv_inference_compute_infer_duration_us{model="simple",version="1"} 2100
# HELP nv_inference_queue_summary_us Summary of inference queuing duration in microseconds (includes cached requests)
# TYPE nv_inference_queue_summary_us summary
nv_inference_queue_summary_us{model="densenet_onnx",version="1",quantile="0.5"} 98
nv_inference_queue_summary_us{model="densenet_onnx",version="1",quantile="0.99"} 450
nv_inference_queue_summary_us_count{model="densenet_onnx",version="1"} 1012
nv_inference_queue_summary_us_sum{model="densenet_onnx",version="1"} 123456
# HELP nv_cache_num_hits_per_model Number of cache hits per model
# TYPE nv_cache_num_hits_per_model counter
nv_cache_num_hits_per_model{model="densenet_onnx",version="1"} 0
# HELP nv_pinned_memory_pool_total_bytes Pinned memory pool total memory size, in bytes
# TYPE nv_pinned_memory_pool_total_bytes gauge
nv_pinned_memory_pool_total_bytes 268435456
# HELP nv_gpu_utilization GPU utilization rate [0.0 - 1.0)
# TYPE nv_gpu_utilization gauge
nv_gpu_utilization{gpu_uuid="GPU-6d5e3a1c-3c7f-2b1e-8a94-12ab34cd56ef"} 0.42
# HELP nv_gpu_memory_total_bytes GPU total memory, in bytes
# TYPE nv_gpu_memory_total_bytes gauge
nv_gpu_memory_total_bytes{gpu_uuid="GPU-6d5e3a1c-3c7f-2b1e-8a94-12ab34cd56ef"} 25769803776
# HELP nv_gpu_power_usage GPU power usage in watts
# TYPE nv_gpu_power_usage gauge
nv_gpu_power_usage{gpu_uuid="GPU-6d5e3a1c-3c7f-2b1e-8a94-12ab34cd56ef"} 71.339
# HELP nv_energy_consumption GPU energy consumption in joules since the Triton Server started
# TYPE nv_energy_consumption counter
nv_energy_consumption{gpu_uuid="GPU-6d5e3a1c-3c7f-2b1e-8a94-12ab34cd56ef"} 123456.789
# HELP nv_cpu_utilization CPU utilization rate [0.0 - 1.0]
# TYPE nv_cpu_utilization gauge
nv_cpu_utilization 0.0731
# HELP nv_cpu_memory_total_bytes CPU total memory (RAM), in bytes
# TYPE nv_cpu_memory_total_bytes gauge
nv_cpu_memory_total_bytes 67108864000
"#;

    fn counters(pending: f64, queue_us: f64, requests: f64) -> ModelCounters {
        ModelCounters {
            pending,
            queue_us,
            requests,
        }
    }

    /// The same scrape with `simple`'s counters replaced.
    fn scrape_simple(pending: u32, queue_us: u64, success: u64, failure: u64) -> String {
        format!(
            "nv_inference_pending_request_count{{model=\"simple\",version=\"1\"}} {pending}\n\
             nv_inference_queue_duration_us{{model=\"simple\",version=\"1\"}} {queue_us}\n\
             nv_inference_request_success{{model=\"simple\",version=\"1\"}} {success}\n\
             nv_inference_request_failure{{model=\"simple\",reason=\"REJECTED\",version=\"1\"}} {failure}\n"
        )
    }

    #[test]
    fn parses_a_triton_scrape_summing_versions_and_reasons() {
        let models = parse(SCRAPE);
        assert_eq!(models.len(), 2, "{models:?}");
        assert_eq!(
            models["densenet_onnx"],
            counters(4.0, 123_456.0 + 65_432.0, 1500.0 + 12.0)
        );
        assert_eq!(models["simple"], counters(0.0, 800.0, 40.0));
    }

    #[test]
    fn label_values_may_hold_escapes_commas_and_braces() {
        let text = concat!(
            r#"nv_inference_pending_request_count{version="1",model="we\"ird, \\name}\n"} 2"#,
            "\n",
            r#"nv_inference_pending_request_count{ model = "spaced" , version="1", } 5 1700000000000"#,
            "\n",
            r#"nv_inference_pending_request_count{model="ünïcode\é"} 1"#,
        );
        let models = parse(text);
        assert_eq!(models["we\"ird, \\name}\n"].pending, 2.0);
        assert_eq!(models["spaced"].pending, 5.0);
        assert_eq!(models["ünïcode\\é"].pending, 1.0);
        assert_eq!(models.len(), 3);
    }

    #[test]
    fn malformed_and_non_finite_samples_are_skipped() {
        let text = "\
nv_inference_pending_request_count{model=\"a\"} NaN
nv_inference_pending_request_count{model=\"a\"} +Inf
nv_inference_pending_request_count{model=\"a\"} -Inf
nv_inference_pending_request_count{model=\"a\"} -3
nv_inference_pending_request_count{model=\"a\"} lots
nv_inference_pending_request_count{model=\"a\"}
nv_inference_pending_request_count{model=\"a\" 4
nv_inference_pending_request_count{model=a} 4
nv_inference_pending_request_count{model=\"a\"version=\"1\"} 4
nv_inference_pending_request_count{model=\"unterminated} 4
nv_inference_pending_request_count 4
nv_inference_pending_request_count{version=\"1\"} 4
nv_inference_pending_request_count_total{model=\"a\"} 4
# nv_inference_pending_request_count{model=\"a\"} 4
nv_inference_pending_request_count{model=\"a\"} 7
";
        let models = parse(text);
        assert_eq!(models.len(), 1);
        assert_eq!(models["a"].pending, 7.0);
    }

    #[test]
    fn first_scrape_reports_pending_only() {
        let mut tracker = LoadTracker::new();
        let loads = tracker.update(SCRAPE);
        assert_eq!(
            loads,
            vec![
                (
                    "densenet_onnx".to_owned(),
                    ModelLoad {
                        pending: 4,
                        queue_ns_per_request: 0
                    }
                ),
                ("simple".to_owned(), ModelLoad::default()),
            ]
        );
    }

    #[test]
    fn queue_time_is_the_mean_over_requests_finished_between_scrapes() {
        let mut tracker = LoadTracker::new();
        tracker.update(&scrape_simple(0, 1_000, 90, 10));
        // 50 more requests (45 + 5) queued 10 ms more in total: 200 µs each.
        let loads = tracker.update(&scrape_simple(6, 11_000, 135, 15));
        assert_eq!(
            loads,
            vec![(
                "simple".to_owned(),
                ModelLoad {
                    pending: 6,
                    queue_ns_per_request: 200_000
                }
            )]
        );
        // Nothing finished since: no mean to report.
        let loads = tracker.update(&scrape_simple(7, 11_000, 135, 15));
        assert_eq!(
            loads[0].1,
            ModelLoad {
                pending: 7,
                queue_ns_per_request: 0
            }
        );
    }

    #[test]
    fn a_counter_going_backwards_starts_a_new_baseline() {
        let mut tracker = LoadTracker::new();
        tracker.update(&scrape_simple(0, 50_000, 1000, 0));
        // Triton restarted: its counters start over.
        let loads = tracker.update(&scrape_simple(2, 300, 3, 0));
        assert_eq!(
            loads[0].1,
            ModelLoad {
                pending: 2,
                queue_ns_per_request: 0
            }
        );
        // The restart's scrape is the baseline for the next one.
        let loads = tracker.update(&scrape_simple(1, 900, 5, 1));
        assert_eq!(
            loads[0].1,
            ModelLoad {
                pending: 1,
                queue_ns_per_request: 200_000
            }
        );
        // Queue time alone going backwards is a restart too.
        let loads = tracker.update(&scrape_simple(1, 100, 9, 1));
        assert_eq!(loads[0].1.queue_ns_per_request, 0);
    }

    #[test]
    fn a_model_missing_from_a_scrape_loses_its_baseline() {
        let mut tracker = LoadTracker::new();
        tracker.update(&scrape_simple(0, 1_000, 10, 0));
        assert!(tracker.update("").is_empty());
        let loads = tracker.update(&scrape_simple(0, 2_000, 20, 0));
        assert_eq!(loads[0].1.queue_ns_per_request, 0);
    }

    #[test]
    fn huge_values_saturate() {
        let mut tracker = LoadTracker::new();
        tracker.update(&scrape_simple(0, 0, 0, 0));
        let text = scrape_simple(u32::MAX, u64::MAX, 1, 0)
            + "nv_inference_pending_request_count{model=\"simple\"} 1e300\n"
            + "nv_inference_queue_duration_us{model=\"simple\"} 1.7e308\n"
            + "nv_inference_queue_duration_us{model=\"simple\"} 1.7e308\n";
        let loads = tracker.update(&text);
        assert_eq!(loads[0].1.pending, u32::MAX);
        // The queue sum overflowed to infinity: reported as nothing known.
        assert_eq!(loads[0].1.queue_ns_per_request, 0);
    }

    #[test]
    fn every_prefix_of_a_scrape_is_handled() {
        let whole = parse(SCRAPE);
        let mut tracker = LoadTracker::new();
        let mut previous: HashMap<String, ModelCounters> = HashMap::new();
        for (end, _) in SCRAPE.char_indices() {
            let models = parse(&SCRAPE[..end]);
            // A cut value is a prefix of its digits, so never more than the
            // whole value: counts only grow with the prefix, up to the full scrape's.
            for (model, counters) in &models {
                let before = previous.get(model).copied().unwrap_or_default();
                let full = whole[model];
                for (value, low, high) in [
                    (counters.pending, before.pending, full.pending),
                    (counters.queue_us, before.queue_us, full.queue_us),
                    (counters.requests, before.requests, full.requests),
                ] {
                    assert!(low <= value && value <= high, "{model} at {end}");
                }
            }
            previous = models;
            tracker.update(&SCRAPE[..end]);
        }
        assert_eq!(previous, whole);
    }

    #[test]
    fn random_input_never_panics() {
        // Seeded: the property runs the same everywhere.
        let mut rng = fastrand::Rng::with_seed(0x2545_f491_4f6c_dd1d);
        let pieces: [&str; 14] = [
            "nv_inference_pending_request_count",
            "nv_inference_request_success",
            "nv_inference_queue_duration_us",
            "{",
            "}",
            "model=",
            "\"",
            "\\",
            ",",
            " ",
            "\n",
            "1e9",
            "NaN",
            "é",
        ];
        let mut tracker = LoadTracker::new();
        for _ in 0..2_000 {
            let length = rng.u64(..) % 64;
            // Half raw bytes, half the parser's own vocabulary, which reaches
            // far deeper into it than noise does.
            let text = if rng.u64(..) % 2 == 0 {
                let bytes: Vec<u8> = (0..length * 4).map(|_| rng.u64(..) as u8).collect();
                String::from_utf8_lossy(&bytes).into_owned()
            } else {
                (0..length)
                    .map(|_| pieces[(rng.u64(..) % pieces.len() as u64) as usize])
                    .collect()
            };
            parse(&text);
            tracker.update(&text);
        }
    }
}
