//! The dashboard (`deploy/grafana/`) and the alert rules (`deploy/prometheus/`) name
//! only metrics Trident exports: a Trident whose config uses what the dashboard shows
//! (retries, ejection, circuit breaker, health checks, split, mirror, API-key, rate-limit
//! and JWT filters) serves HTTP and gRPC requests, reloads its config, and its
//! `/metrics` scrape must hold every metric name the two files mention and pass
//! `promtool check metrics`. (tests/deploy/ checks their PromQL with promtool.)

mod common;

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use serde_json::json;
use trident::mock::Fault;

const DEPLOY_FILES: [&str; 2] = [
    "deploy/grafana/trident-dashboard.json",
    "deploy/prometheus/trident-alerts.yaml",
];

/// The API key of tenant `ci`.
const API_KEY: &str = "ci-key";

/// Every `trident_…` and `process_…` word of the dashboard and the alert rules.
fn named_metrics() -> BTreeSet<String> {
    DEPLOY_FILES
        .iter()
        .flat_map(|file| {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
            let text = std::fs::read_to_string(&path).expect("deploy file");
            text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|word| word.starts_with("trident_") || word.starts_with("process_"))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Metric families of a scrape, from its `# TYPE name kind` lines.
fn families(scrape: &str) -> Vec<(&str, &str)> {
    scrape
        .lines()
        .filter_map(|line| {
            let mut words = line.strip_prefix("# TYPE ")?.split_whitespace();
            Some((words.next()?, words.next()?))
        })
        .collect()
}

/// Whether `name` is a family of the scrape, or a series of one of its histograms.
fn exported(families: &[(&str, &str)], name: &str) -> bool {
    families.iter().any(|&(family, kind)| {
        family == name
            || (kind == "histogram"
                && ["_bucket", "_sum", "_count"]
                    .iter()
                    .any(|suffix| name.strip_suffix(suffix) == Some(family)))
    })
}

fn infer_json(parameters: serde_json::Value) -> String {
    json!({
        "inputs": [{ "name": "INPUT0", "shape": [1, 2], "datatype": "FP32", "data": [1.0, 2.0] }],
        "parameters": parameters,
    })
    .to_string()
}

/// The status of an infer call without parameters.
async fn infer_status(http: &HttpClient, url: &str, headers: &[(&str, &str)]) -> u16 {
    post(http, url, headers, infer_json(json!({})))
        .await
        .0
        .as_u16()
}

/// A config that exercises what the dashboard shows. `prod` holds a live endpoint and
/// a closed port (a retry, an ejection); `narrow` admits one request at a time and has
/// no retry budget; `gone` is only a closed port (upstream errors); `canary` is
/// health-checked, takes half of route `m` (split) and a copy of all of it (mirror).
fn config(prod: &MockTriton, narrow: &MockTriton, canary: &MockTriton) -> String {
    let closed = free_port();
    let jwks_closed = free_port();
    format!(
        r#"[filters.keys]
kind = "api_key"
keys = [ {{ tenant = "ci", key = "{API_KEY}" }} ]

[filters.limit]
kind = "rate_limit"
# One call, then none for 1,000 s.
rate_per_second = 0.001
burst = 1
key = ["tenant"]

[filters.sso]
kind = "jwt"
jwks_url = "http://{jwks_closed}/jwks.json"

[[pools]]
name = "prod"
endpoints = [ {prod}, {{ http = "{closed}", grpc = "{closed}" }} ]
[pools.balancer]
strategy = "round_robin"
[pools.health]
enabled = false
[pools.retry]
max_retries = 1
[pools.outlier]
consecutive_failures = 1

[[pools]]
name = "narrow"
endpoints = [ {narrow} ]
[pools.retry]
max_retries = 1
budget_ratio = 0.0
budget_min_per_second = 0
[pools.circuit_breaker]
max_requests = 1

[[pools]]
name = "gone"
endpoints = [ {{ http = "{closed}", grpc = "{closed}" }} ]
[pools.health]
enabled = false

[[pools]]
name = "canary"
endpoints = [ {canary} ]
[pools.health]
enabled = true

[[routes]]
model = "m"
pool = "prod"
[[routes.splits]]
pool = "canary"
percent = 50
[routes.mirror]
pool = "canary"

# The default route: `limited` and server-level calls.
[[routes]]
model = "*"
pool = "prod"
filters = ["keys", "limit"]

[[routes]]
model = "secure"
pool = "prod"
filters = ["sso"]

[[routes]]
model = "slow"
pool = "narrow"

[[routes]]
model = "gone"
pool = "gone"
"#,
        prod = endpoint(prod),
        narrow = endpoint(narrow),
        canary = endpoint(canary),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_of_the_dashboard_and_alerts_is_exported() {
    let prod = mock("prod-1", &["m", "limited", "secure"]).await;
    let narrow = mock("narrow-1", &["slow"]).await;
    let canary = mock("canary-1", &["m"]).await;
    let trident = Trident::start(&config(&prod, &narrow, &canary)).await;
    let http = http1_client();
    let infer = |model: &str| trident.http_url(&format!("/v2/models/{model}/infer"));

    // Until the closed port of `prod` was tried (and retried) and ejected.
    for _ in 0..50 {
        assert_eq!(infer_status(&http, &infer("m"), &[]).await, 200);
        if trident
            .metrics()
            .await
            .contains("trident_outlier_ejections_total{")
        {
            break;
        }
    }
    let mut grpc = client(trident.grpc_url()).await;
    grpc.model_infer(infer_request("m", "grpc-1", Bytes::from_static(&[1, 2])))
        .await
        .expect("gRPC infer");

    // Filters: a rate-limited second call, a missing key, a missing token.
    let keyed = [("x-api-key", API_KEY)];
    assert_eq!(infer_status(&http, &infer("limited"), &keyed).await, 200);
    assert_eq!(infer_status(&http, &infer("limited"), &keyed).await, 429);
    assert_eq!(infer_status(&http, &infer("limited"), &[]).await, 401);
    assert_eq!(infer_status(&http, &infer("secure"), &[]).await, 401);

    // Circuit breaker: a call while a slow one (arrived at the mock) holds `narrow`'s
    // only slot.
    let slow_url = infer("slow");
    let holder = tokio::spawn({
        let (http, url) = (http.clone(), slow_url.clone());
        async move {
            post(
                &http,
                &url,
                &[],
                infer_json(json!({ "mock_sleep_ms": 2000 })),
            )
            .await
        }
    });
    assert!(
        eventually(Duration::from_secs(10), || async {
            narrow.control().infer_calls() == 1
        })
        .await
    );
    assert_eq!(infer_status(&http, &slow_url, &[]).await, 503);
    assert_eq!(holder.await.expect("slow call").0, 200);
    // No retry budget: a 503 answer is not tried again.
    narrow.control().set_fault(Fault::Unavailable);
    assert_eq!(infer_status(&http, &slow_url, &[]).await, 503);
    assert_eq!(infer_status(&http, &infer("gone"), &[]).await, 502);

    assert!(trident.reload_by_signal("success", 1.0).await);

    let scrape = trident.metrics().await;
    let families = families(&scrape);
    let missing: Vec<String> = named_metrics()
        .into_iter()
        .filter(|name| !exported(&families, name))
        .collect();
    assert!(
        missing.is_empty(),
        "named in {DEPLOY_FILES:?} but not in the scrape: {missing:?}\n{scrape}"
    );
    check_with_promtool(&scrape);
}

/// `promtool check metrics`: the exposition parses and follows Prometheus' naming rules.
fn check_with_promtool(scrape: &str) {
    use std::io::Write;
    let mut promtool = match Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(e) => {
            eprintln!("SKIPPED promtool check metrics: cannot run promtool ({e}); scripts/setup.sh --tests installs it");
            return;
        }
    };
    promtool
        .stdin
        .take()
        .expect("stdin")
        .write_all(scrape.as_bytes())
        .expect("write the scrape to promtool");
    let output = promtool.wait_with_output().expect("promtool runs");
    assert!(
        output.status.success(),
        "promtool check metrics:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
