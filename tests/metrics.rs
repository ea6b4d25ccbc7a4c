//! `/metrics` as a scraper sees it: bounded series whatever model names clients
//! send, counters present at 0 from the start, process and build metrics, and HEAD.

mod common;

use common::*;

const JSON_INFER: &str =
    r#"{"inputs":[{"name":"INPUT0","datatype":"FP32","shape":[1,4],"data":[1.0,2.5,3.0,4.0]}]}"#;

/// Pool `a` (one mock serving `routed` and `models`) behind a route for `routed`
/// and the `*` route, with `extra` pool keys.
async fn start(models: &[&str], extra: &str) -> (MockTriton, Trident) {
    let mut served = vec!["routed"];
    served.extend_from_slice(models);
    let a = mock("a1", &served).await;
    let trident = Trident::start(&format!(
        "[[pools]]\nname = \"a\"\nendpoints = [ {} ]\n{extra}\n\
         [[routes]]\nmodel = \"routed\"\npool = \"a\"\n[[routes]]\nmodel = \"*\"\npool = \"a\"\n",
        endpoint(&a)
    ))
    .await;
    (a, trident)
}

async fn infer(trident: &Trident, model: &str) -> u16 {
    let url = trident.http_url(&format!("/v2/models/{model}/infer"));
    post(&http1_client(), &url, &[], JSON_INFER)
        .await
        .0
        .as_u16()
}

/// One successful call of the routed model, once counted.
async fn infer_routed(trident: &Trident) {
    assert_eq!(infer(trident, "routed").await, 200);
    let done = r#"trident_requests_total{model="routed",protocol="http",status="200"}"#;
    assert!(wait_metric(trident, done, 1.0).await);
}

/// The models named in `trident_endpoint_requests_total` series.
fn endpoint_models(metrics: &str) -> Vec<String> {
    metrics
        .lines()
        .filter(|l| l.starts_with("trident_endpoint_requests_total{"))
        .filter_map(|l| Some(l.split("model=\"").nth(1)?.split('"').next()?.to_owned()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_names_clients_invent_do_not_grow_the_metrics() {
    let (_a, trident) = start(&[], "").await;
    infer_routed(&trident).await;
    let before = trident.metrics().await.lines().count();
    // Triton answers an unknown model with 400 (gRPC: NOT_FOUND).
    for i in 0..200 {
        assert_eq!(infer(&trident, &format!("junk{i}")).await, 400);
    }
    let junk = r#"trident_requests_total{model="*",protocol="http",status="400"}"#;
    assert!(wait_metric(&trident, junk, 200.0).await);
    let metrics = trident.metrics().await;
    // The `*` route's 400 series (count, duration histogram, bytes) are new; no
    // series per name.
    let grown = metrics.lines().count() - before;
    assert!(
        grown < 40,
        "{grown} lines more after 200 junk names:\n{metrics}"
    );
    assert!(!metrics.contains("junk"), "{metrics}");
    let models = endpoint_models(&metrics);
    assert!(models.contains(&"routed".to_owned()), "{models:?}");
    assert!(models.contains(&"_other".to_owned()), "{models:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcard_models_that_answer_get_their_own_series_up_to_the_bound() {
    let real = ["real0", "real1", "real2", "real3", "real4"];
    let (_a, trident) = start(&real, "max_wildcard_models = 3").await;
    for _ in 0..2 {
        for model in real {
            assert_eq!(infer(&trident, model).await, 200);
        }
    }
    let done = r#"trident_requests_total{model="*",protocol="http",status="200"}"#;
    assert!(wait_metric(&trident, done, 10.0).await);
    let models = endpoint_models(&trident.metrics().await);
    let own = models.iter().filter(|m| m.starts_with("real")).count();
    assert_eq!(own, 3, "{models:?}");
    for always in ["routed", "_other", "_all"] {
        assert!(models.iter().any(|m| m == always), "{models:?}");
    }
    // Their share of the tries: the second call of each admitted model ran on its own state.
    let metrics = trident.metrics().await;
    let own_tries: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("trident_endpoint_requests_total{") && l.contains("real"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(own_tries, 3.0, "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_are_present_at_zero_from_the_start() {
    let health = "[pools.health]\ninterval_ms = 60000";
    let (a, trident) = start(&[], health).await;
    let metrics = trident.metrics().await;
    let endpoint = a.http_addr.to_string();
    let zero = [
        r#"trident_upstream_errors_total{kind="connect_error",pool="a"}"#.to_owned(),
        r#"trident_upstream_errors_total{kind="timeout",pool="a"}"#.to_owned(),
        r#"trident_retries_total{pool="a",reason="status"}"#.to_owned(),
        r#"trident_retry_budget_exhausted_total{pool="a"}"#.to_owned(),
        r#"trident_overflow_total{kind="pending",pool="a"}"#.to_owned(),
        format!(
            r#"trident_outlier_ejections_total{{endpoint="{endpoint}",model="_all",pool="a",reason="consecutive_failures"}}"#
        ),
        format!(
            r#"trident_health_checks_total{{endpoint="{endpoint}",model="_all",pool="a",result="failed"}}"#
        ),
        r#"trident_config_reloads_total{result="failure"}"#.to_owned(),
        r#"trident_tls_certificate_reloads_total{result="failure"}"#.to_owned(),
        format!(
            r#"trident_upstream_request_duration_seconds_count{{endpoint="{endpoint}",pool="a"}}"#
        ),
    ];
    for series in zero {
        assert!(
            metrics.lines().any(|l| l == format!("{series} 0")),
            "no {series} 0 in\n{metrics}"
        );
    }
    let version = env!("CARGO_PKG_VERSION");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("trident_build_info{commit=\"")
                && l.ends_with(&format!("version=\"{version}\"}} 1"))),
        "{metrics}"
    );
    for family in [
        "process_cpu_seconds_total ",
        "process_resident_memory_bytes ",
        "process_virtual_memory_bytes ",
        "process_open_fds ",
        "process_max_fds ",
        "process_start_time_seconds ",
    ] {
        assert!(metric(&metrics, family) > 0.0, "{family} in\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_measured_in_bytes_tries_and_by_pool() {
    let (a, trident) = start(&[], "").await;
    infer_routed(&trident).await;
    let metrics = trident.metrics().await;
    let sent = metric(
        &metrics,
        r#"trident_request_bytes_total{model="routed",protocol="http"}"#,
    );
    assert_eq!(sent, JSON_INFER.len() as f64);
    let received = r#"trident_response_bytes_total{model="routed",protocol="http"}"#;
    assert!(metric(&metrics, received) > 0.0, "{metrics}");
    let served = r#"trident_request_duration_seconds_count{model="routed",pool="a",protocol="http",status="200"}"#;
    assert_eq!(metric(&metrics, served), 1.0, "{metrics}");
    let tries = format!(
        r#"trident_upstream_request_duration_seconds_count{{endpoint="{}",pool="a"}}"#,
        a.http_addr
    );
    assert_eq!(metric(&metrics, &tries), 1.0, "{metrics}");
    let accepted = r#"trident_downstream_connections_accepted_total{listener="http"}"#;
    assert!(metric(&metrics, accepted) >= 1.0, "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_metrics_has_the_headers_of_get_and_no_body() {
    let (_a, trident) = start(&[], "").await;
    let url = format!("http://{}/metrics", trident.admin);
    let client = http1_client();
    let (status, headers, body) = send(
        &client,
        http::Request::head(&url)
            .body(http_body_util::Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    assert!(body.is_empty());
    assert_eq!(
        header(&headers, "content-type"),
        "text/plain; version=0.0.4"
    );
    let length: usize = header(&headers, "content-length")
        .parse()
        .expect("a length");
    assert!(length > 1000, "{length}");
}
