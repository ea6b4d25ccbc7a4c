//! The admin API through the real binary: `GET /pools`, draining endpoints on
//! both protocols (sequences finish where they are, the drain outlives a
//! reload), `HEAD` wherever `GET` is, and `[server.admin_auth]`.

mod common;

use std::collections::BTreeSet;

use bytes::Bytes;
use common::*;
use http_body_util::Full;
use trident::mock::Fault;

/// A pool `p` over `mocks`, round robin, with `extra` pool sections, routing model
/// `m` by name (so it has its own state) and everything else to `p` too.
async fn pool_of(mocks: &[&MockTriton], server: &str, extra: &str) -> Trident {
    let endpoints: Vec<String> = mocks.iter().map(|m| endpoint(m)).collect();
    Trident::start(&format!(
        "{server}\n[[pools]]\nname = \"p\"\nendpoints = [ {} ]\n[pools.balancer]\n\
         strategy = \"round_robin\"\n{extra}\n[[routes]]\nmodel = \"m\"\npool = \"p\"\n\
         [[routes]]\nmodel = \"*\"\npool = \"p\"\n",
        endpoints.join(", ")
    ))
    .await
}

/// An admin request: `method` on `path`, with `Authorization: Bearer <token>` when given.
async fn admin(trident: &Trident, method: &str, path: &str, token: Option<&str>) -> Response {
    let mut request = http::Request::builder()
        .method(method)
        .uri(format!("http://{}{path}", trident.admin));
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    send(&http1_client(), request.body(Full::default()).unwrap()).await
}

/// The status of an admin request (see [`admin`]).
async fn status_of(trident: &Trident, method: &str, path: &str, token: Option<&str>) -> u16 {
    admin(trident, method, path, token).await.0.as_u16()
}

async fn admin_json(trident: &Trident, method: &str, path: &str) -> (u16, serde_json::Value) {
    let (status, _, body) = admin(trident, method, path, None).await;
    let json = serde_json::from_slice(&body).unwrap_or_else(|e| panic!("{path}: {e}"));
    (status.as_u16(), json)
}

/// The endpoint named `address` in `GET /pools/p`.
async fn endpoint_report(trident: &Trident, address: &str) -> serde_json::Value {
    let (status, pool) = admin_json(trident, "GET", "/pools/p").await;
    assert_eq!(status, 200);
    pool["endpoints"]
        .as_array()
        .expect("endpoints")
        .iter()
        .find(|e| e["address"] == address)
        .cloned()
        .unwrap_or_else(|| panic!("{address} in {pool}"))
}

/// The mocks that served `n` plain HTTP and `n` gRPC infer calls (sequence id 0
/// is no sequence).
async fn served_by(trident: &Trident, n: usize) -> BTreeSet<String> {
    let client = http1_client();
    let url = trident.http_url("/v2/models/m/infer");
    let mut grpc = common::client(trident.grpc_url()).await;
    let mut backends = BTreeSet::new();
    for _ in 0..n {
        let (status, headers, _) = post(&client, &url, &[], sequence_json(0, false, false)).await;
        assert_eq!(status, 200);
        backends.insert(header(&headers, "x-mock-backend").to_owned());
        let response = grpc
            .model_infer(infer_request("m", "plain", Bytes::from_static(b"x")))
            .await
            .expect("gRPC infer");
        backends.insert(backend(&response));
    }
    backends
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pools_report_traffic_and_ejections_and_head_answers_wherever_get_does() {
    let (a, b) = (mock("a1", &["m"]).await, mock("b1", &["m"]).await);
    let trident = pool_of(&[&a, &b], "", "[pools.outlier]\nconsecutive_failures = 1\n").await;
    served_by(&trident, 4).await;
    let (status, all) = admin_json(&trident, "GET", "/pools").await;
    assert_eq!(status, 200);
    assert_eq!(all["pools"][0]["name"], "p");
    assert_eq!(all["pools"][0]["sequence_placement"], "table");
    let address = a.http_addr.to_string();
    let report = endpoint_report(&trident, &address).await;
    assert_eq!(report["http"], address);
    assert_eq!(report["grpc"], a.grpc_addr.to_string());
    assert_eq!(report["ready"], true);
    assert_eq!(report["drained"], false);
    assert_eq!(report["sequences"], 0);
    let model = &report["models"]["m"];
    assert_eq!(model["in_flight"], 0);
    assert_eq!(model["ejected"], false);
    assert!(model["requests"].as_u64() > Some(0), "{model}");
    assert!(model["latency_estimate_ms"].as_f64() > Some(0.0), "{model}");
    assert!(report["models"]["_all"].is_object());

    // One failure ejects a1 for model m (the request is retried on b1).
    a.control().set_fault(Fault::Unavailable);
    let client = http1_client();
    let url = trident.http_url("/v2/models/m/infer");
    for _ in 0..4 {
        let (status, _, _) = post(&client, &url, &[], sequence_json(0, false, false)).await;
        assert_eq!(status, 200);
    }
    let model = &endpoint_report(&trident, &address).await["models"]["m"];
    assert_eq!(model["ejected"], true, "{model}");
    assert_eq!(model["ejection"]["reason"], "consecutive_failures");
    assert!(
        model["ejection"]["remaining_ms"].as_f64() > Some(1000.0),
        "{model}"
    );

    for path in [
        "/pools", "/pools/p", "/metrics", "/live", "/ready", "/reload",
    ] {
        let (get_status, get_headers, get_body) = admin(&trident, "GET", path, None).await;
        let (status, headers, body) = admin(&trident, "HEAD", path, None).await;
        assert_eq!(status, get_status, "{path}");
        assert!(body.is_empty(), "{path}");
        assert_eq!(
            header(&headers, "content-type"),
            header(&get_headers, "content-type"),
            "{path}"
        );
        // Metrics and pool state (latency estimates, ejection time left) change
        // between two requests; the others do not.
        assert!(header(&headers, "content-length").parse::<usize>().unwrap() > 0);
        if !path.starts_with("/pools") && path != "/metrics" {
            assert_eq!(
                header(&headers, "content-length"),
                get_body.len().to_string(),
                "{path}"
            );
        }
    }
    let (status, body) = admin_json(&trident, "GET", "/pools/nope").await;
    assert_eq!((status, body["error"].is_string()), (404, true));
    let (status, headers, _) = admin(&trident, "DELETE", "/pools", None).await;
    assert_eq!(status, 405);
    assert_eq!(header(&headers, "allow"), "GET, HEAD");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_endpoint_takes_no_new_requests_while_its_sequences_finish() {
    let (a, b) = (mock("a1", &["m"]).await, mock("b1", &["m"]).await);
    let trident = pool_of(&[&a, &b], "", "").await;
    let both: BTreeSet<String> = ["a1", "b1"].map(String::from).into();
    assert_eq!(served_by(&trident, 4).await, both);

    // A sequence on each protocol, both started on a1.
    let client = http1_client();
    let url = trident.http_url("/v2/models/m/infer");
    let mut grpc = common::client(trident.grpc_url()).await;
    let mut http_id = 0;
    for id in 1..20 {
        let (_, headers, _) = post(&client, &url, &[], sequence_json(id, true, false)).await;
        if header(&headers, "x-mock-backend") == "a1" {
            http_id = id;
            break;
        }
        post(&client, &url, &[], sequence_json(id, false, true)).await;
    }
    assert_ne!(http_id, 0, "round robin reaches a1");
    let mut grpc_id = 0;
    for id in 100..120 {
        let response = grpc.model_infer(grpc_sequence(id, true, false)).await;
        if backend(&response.expect("start")) == "a1" {
            grpc_id = id;
            break;
        }
        grpc.model_infer(grpc_sequence(id, false, true)).await.ok();
    }
    assert_ne!(grpc_id, 0, "round robin reaches a1");

    let drain = format!("/pools/p/endpoints/{}/drain", a.http_addr);
    let (status, body) = admin_json(&trident, "POST", &drain).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["endpoints"][0], a.http_addr.to_string());
    trident
        .error_log_line(&format!("endpoint {} drained", a.http_addr))
        .await;
    let series = format!(
        "trident_endpoint_drained{{pool=\"p\",endpoint=\"{}\"}}",
        a.http_addr
    );
    assert_eq!(metric(&trident.metrics().await, &series), 1.0);
    let only_b: BTreeSet<String> = ["b1".to_owned()].into();
    assert_eq!(served_by(&trident, 6).await, only_b);
    for step in 0..3 {
        let end = step == 2;
        let (status, headers, _) =
            post(&client, &url, &[], sequence_json(http_id, false, end)).await;
        assert_eq!(status, 200);
        assert_eq!(header(&headers, "x-mock-backend"), "a1", "HTTP step {step}");
        let response = grpc
            .model_infer(grpc_sequence(grpc_id, false, end))
            .await
            .expect("gRPC sequence");
        assert_eq!(backend(&response), "a1", "gRPC step {step}");
    }
    // Ended, the sequences are gone; a new one avoids a1.
    let (_, headers, _) = post(&client, &url, &[], sequence_json(http_id, true, true)).await;
    assert_eq!(header(&headers, "x-mock-backend"), "b1");

    // The drain outlives a reload that rebuilds the pool and keeps the endpoint.
    let config = std::fs::read_to_string(trident.config_path()).expect("config");
    let changed = config.replace(
        "strategy = \"round_robin\"",
        "strategy = \"round_robin\"\nhalf_life_ms = 5000",
    );
    std::fs::write(trident.config_path(), changed).expect("rewrite config");
    assert!(trident.reload_by_signal("success", 1.0).await);
    assert_eq!(
        endpoint_report(&trident, &a.http_addr.to_string()).await["drained"],
        true
    );
    assert_eq!(served_by(&trident, 4).await, only_b);

    let undrain = format!("/pools/p/endpoints/{}/undrain", a.http_addr);
    let (status, body) = admin_json(&trident, "POST", &undrain).await;
    assert_eq!((status, &body["drained"]), (200, &serde_json::json!(false)));
    assert_eq!(metric(&trident.metrics().await, &series), 0.0);
    assert_eq!(served_by(&trident, 4).await, both);

    // Every endpoint drained: the pool is not ready, and requests get a clear 503.
    for m in [&a, &b] {
        let path = format!("/pools/p/endpoints/{}/drain", m.grpc_addr);
        assert_eq!(admin_json(&trident, "POST", &path).await.0, 200);
    }
    assert_eq!(trident.readiness().await.0, 503);
    let (status, _, body) = post(&client, &url, &[], sequence_json(0, false, false)).await;
    assert_eq!(status, 503);
    assert!(String::from_utf8_lossy(&body).contains("drained"));

    for (method, path, want) in [
        ("POST", "/pools/nope/endpoints/127.0.0.1:1/drain", 404),
        ("POST", "/pools/p/endpoints/127.0.0.1:1/drain", 404),
        ("GET", drain.as_str(), 405),
    ] {
        let (status, body) = admin_json(&trident, method, path).await;
        assert_eq!(status, want, "{method} {path}: {body}");
        assert!(body["error"].is_string());
    }
}

/// A token file in a directory of its own (kept alive by the returned guard).
fn token_file(token: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("admin-token");
    std::fs::write(&path, format!("{token}\n")).expect("write token");
    (dir, path.display().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_protects_the_admin_api_but_not_the_probes_and_the_scrape() {
    let a = mock("a1", &["m"]).await;
    let (_dir, path) = token_file("s3cret-token");
    let trident = pool_of(
        &[&a],
        &format!("[server.admin_auth]\ntoken_file = \"{path}\""),
        "",
    )
    .await;
    for token in [None, Some("wrong"), Some("s3cret-token-and-more")] {
        let (status, headers, body) = admin(&trident, "GET", "/pools", token).await;
        assert_eq!(status, 401, "{token:?}");
        assert!(header(&headers, "www-authenticate").starts_with("Bearer"));
        let body: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
        assert!(body["error"].is_string());
    }
    let drain = format!("/pools/p/endpoints/{}/drain", a.http_addr);
    let token = Some("s3cret-token");
    for (method, at, token, want) in [
        ("POST", "/reload", None, 401),
        ("POST", drain.as_str(), Some("wrong"), 401),
        ("GET", "/pools", token, 200),
        ("HEAD", "/pools", token, 200),
        ("HEAD", "/pools", None, 401),
        ("GET", "/live", None, 200),
        ("GET", "/ready", None, 200),
        ("GET", "/metrics", None, 200),
    ] {
        let got = status_of(&trident, method, at, token).await;
        assert_eq!(got, want, "{method} {at} with {token:?}");
    }
    // A reload reads the token file again.
    std::fs::write(&path, "rotated\n").expect("rotate token");
    assert!(trident.reload_by_signal("success", 1.0).await);
    assert_eq!(status_of(&trident, "GET", "/pools", token).await, 401);
    assert_eq!(
        status_of(&trident, "GET", "/pools", Some("rotated")).await,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_networks_limit_the_admin_api_together_with_the_token() {
    let a = mock("a1", &["m"]).await;
    let elsewhere = pool_of(
        &[&a],
        "[server.admin_auth]\nallow_networks = [\"10.0.0.0/8\", \"fd00::/8\"]",
        "",
    )
    .await;
    let (status, _, body) = admin(&elsewhere, "GET", "/pools", None).await;
    assert_eq!(status, 403);
    assert!(String::from_utf8_lossy(&body).contains("network"));
    assert_eq!(status_of(&elsewhere, "GET", "/ready", None).await, 200);

    let (_dir, path) = token_file("t0ken");
    let loopback = pool_of(
        &[&a],
        &format!(
            "[server.admin_auth]\nallow_networks = [\"127.0.0.0/8\"]\ntoken_file = \"{path}\"\n\
             open_paths = [\"/live\", \"/ready\"]"
        ),
        "",
    )
    .await;
    assert_eq!(status_of(&loopback, "GET", "/pools", None).await, 401);
    assert_eq!(status_of(&loopback, "GET", "/metrics", None).await, 401);
    assert_eq!(
        status_of(&loopback, "GET", "/pools", Some("t0ken")).await,
        200
    );
    assert_eq!(status_of(&loopback, "GET", "/live", None).await, 200);
}
