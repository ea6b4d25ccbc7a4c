//! Through the real binary, over HTTP/1.1 and h2c, against mock Triton servers:
//! routing, byte-for-byte pass-through, large bodies, errors, ids and telemetry.

mod common;

use common::*;
use serde_json::json;

const JSON_INFER: &str = r#"{"id":"r1","inputs":[{"name":"INPUT0","datatype":"FP32","shape":[1,4],"data":[1.0,2.5,3.0,4.0]}]}"#;

/// A binary-tensor request: JSON header then raw little-endian FP32 bytes.
fn binary_infer_body(elements: usize) -> (String, Vec<u8>) {
    let header = json!({
        "inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, elements], "parameters": {"binary_data_size": elements * 4}}],
        "outputs": [{"name": "OUTPUT0", "parameters": {"binary_data": true}}]
    })
    .to_string();
    let mut body = header.clone().into_bytes();
    body.extend((0..elements).flat_map(|i| (i as f32).to_le_bytes()));
    (header.len().to_string(), body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_model_and_sends_server_calls_to_the_default_route() {
    let (a, b, trident) = two_pools().await;
    let client = http1_client();
    for (path, backend) in [
        ("/v2/models/m_b", "b1"),
        ("/v2/models/m_b/versions/1/ready", "b1"),
        ("/v2/models/m_a/config", "a1"),
        ("/v2/health/ready", "a1"),
        ("/v2", "a1"),
    ] {
        let (status, headers, body) = get(&client, &trident.http_url(path)).await;
        assert_eq!(header(&headers, "x-mock-backend"), backend, "{path}");
        // Byte-for-byte what the backend says directly.
        let direct = if backend == "b1" {
            b.http_addr
        } else {
            a.http_addr
        };
        let (direct_status, _, direct_body) = get(&client, &format!("http://{direct}{path}")).await;
        assert_eq!((status, &body), (direct_status, &direct_body), "{path}");
    }
    // An unknown model goes to the default route, and Triton's own error comes back unchanged.
    let (status, _, body) = post(
        &client,
        &trident.http_url("/v2/models/nope/infer"),
        &[],
        JSON_INFER,
    )
    .await;
    let (direct_status, _, direct_body) = post(
        &client,
        &format!("http://{}/v2/models/nope/infer", a.http_addr),
        &[],
        JSON_INFER,
    )
    .await;
    assert_eq!((status, body), (direct_status, direct_body));
    assert_eq!(status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_binary_and_compressed_infer_pass_through_unchanged() {
    let (_a, b, trident) = two_pools().await;
    for client in [http1_client(), h2c_client()] {
        let direct = format!("http://{}/v2/models/m_b/infer", b.http_addr);
        let proxied = trident.http_url("/v2/models/m_b/infer");

        let via = post(&client, &proxied, &[], JSON_INFER).await;
        let straight = post(&client, &direct, &[], JSON_INFER).await;
        assert_eq!(via.0, 200);
        assert_eq!((via.0, &via.2), (straight.0, &straight.2));

        let (header_len, body) = binary_infer_body(1024);
        let headers = [
            ("inference-header-content-length", header_len.as_str()),
            ("content-type", "application/octet-stream"),
        ];
        let via = post(&client, &proxied, &headers, body.clone()).await;
        let straight = post(&client, &direct, &headers, body).await;
        assert_eq!(via.0, 200, "{:?}", String::from_utf8_lossy(&via.2));
        assert_eq!(via.2, straight.2);
        assert_eq!(
            header(&via.1, "inference-header-content-length"),
            header(&straight.1, "inference-header-content-length")
        );
        assert!(!header(&via.1, "inference-header-content-length").is_empty());

        let gzipped = {
            use std::io::Write;
            let mut encoder =
                flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            encoder.write_all(JSON_INFER.as_bytes()).unwrap();
            encoder.finish().unwrap()
        };
        let headers = [("content-encoding", "gzip")];
        let via = post(&client, &proxied, &headers, gzipped.clone()).await;
        let straight = post(&client, &direct, &headers, gzipped).await;
        assert_eq!(via.0, 200, "{:?}", String::from_utf8_lossy(&via.2));
        assert_eq!((via.0, via.2), (straight.0, straight.2));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_64_mib_request_streams_through() {
    let (_a, b, trident) = two_pools().await;
    let elements = 16 * 1024 * 1024; // 64 MiB of FP32
    let (header_len, body) = binary_infer_body(elements);
    assert!(body.len() > 64 << 20);
    let headers = [("inference-header-content-length", header_len.as_str())];
    for client in [http1_client(), h2c_client()] {
        let via = post(
            &client,
            &trident.http_url("/v2/models/m_b/infer"),
            &headers,
            body.clone(),
        )
        .await;
        let straight = post(
            &client,
            &format!("http://{}/v2/models/m_b/infer", b.http_addr),
            &headers,
            body.clone(),
        )
        .await;
        assert_eq!(via.0, 200);
        assert!(via.2.len() > 64 << 20);
        assert!(
            via.2 == straight.2,
            "64 MiB response differs from the direct one"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_without_a_route_is_refused_in_triton_shape() {
    let a = mock("a1", &["m_a"]).await;
    let trident = Trident::start(&format!(
        "[[pools]]\nname = \"a\"\nendpoints = [ {} ]\n[[routes]]\nmodel = \"m_a\"\npool = \"a\"\n",
        endpoint(&a)
    ))
    .await;
    let client = http1_client();
    let (status, headers, body) = post(
        &client,
        &trident.http_url("/v2/models/other/infer"),
        &[],
        JSON_INFER,
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(header(&headers, "content-type"), "application/json");
    let body: serde_json::Value = serde_json::from_slice(&body).expect("JSON error body");
    assert_eq!(
        body["error"],
        "Request for unknown model: 'other' has no route in Trident"
    );
    // Server-level calls still reach the only pool.
    let (status, headers, _) = get(&client, &trident.http_url("/v2/health/live")).await;
    assert_eq!(
        (status.as_u16(), header(&headers, "x-mock-backend")),
        (200, "a1")
    );
    let unrouted = r#"trident_requests_total{model="_unrouted",protocol="http",status="404"}"#;
    assert!(wait_metric(&trident, unrouted, 1.0).await);
    let server = r#"trident_requests_total{model="_server",protocol="http",status="200"}"#;
    assert!(wait_metric(&trident, server, 1.0).await);
    let metrics = trident.metrics().await;
    assert_eq!(metric(&metrics, unrouted), 1.0);
    assert_eq!(metric(&metrics, server), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_failures_become_json_errors() {
    let slow = mock("slow", &["m"]).await;
    let dead = free_port();
    let trident = Trident::start(&format!(
        "[[pools]]\nname = \"dead\"\nendpoints = [ {{ http = \"{dead}\", grpc = \"{dead}\" }} ]\n\
         [[pools]]\nname = \"slow\"\nendpoints = [ {} ]\nread_timeout_ms = 300\n\
         [[pools]]\nname = \"grpc_only\"\nendpoints = [ {{ grpc = \"{dead}\" }} ]\n\
         [[routes]]\nmodel = \"m\"\npool = \"slow\"\n[[routes]]\nmodel = \"g\"\npool = \"grpc_only\"\n\
         [[routes]]\nmodel = \"*\"\npool = \"dead\"\n",
        endpoint(&slow)
    ))
    .await;
    let client = http1_client();
    let error = |body: &[u8]| {
        serde_json::from_slice::<serde_json::Value>(body).expect("JSON error")["error"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };

    let (status, _, body) = post(
        &client,
        &trident.http_url("/v2/models/x/infer"),
        &[],
        JSON_INFER,
    )
    .await;
    assert_eq!(status, 502);
    assert_eq!(
        error(&body),
        format!("cannot connect to upstream {dead} in pool 'dead'")
    );

    let sleepy = r#"{"parameters":{"mock_sleep_ms":3000},"inputs":[{"name":"INPUT0","datatype":"INT32","shape":[1],"data":[1]}]}"#;
    let started = std::time::Instant::now();
    let (status, _, body) = post(
        &client,
        &trident.http_url("/v2/models/m/infer"),
        &[],
        sleepy,
    )
    .await;
    assert_eq!(status, 504);
    assert!(error(&body).contains("timed out"), "{}", error(&body));
    assert!(started.elapsed() < std::time::Duration::from_secs(3));

    let (status, _, body) = get(&client, &trident.http_url("/v2/models/g/ready")).await;
    assert_eq!(status, 503);
    assert_eq!(error(&body), "pool 'grpc_only' has no http endpoint");

    let metrics = trident.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            r#"trident_upstream_errors_total{kind="connect_error",pool="dead"}"#
        ),
        1.0
    );
    assert_eq!(
        metric(
            &metrics,
            r#"trident_upstream_errors_total{kind="timeout",pool="slow"}"#
        ),
        1.0
    );
    assert_eq!(
        metric(
            &metrics,
            r#"trident_requests_total{model="*",protocol="http",status="502"}"#
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_errors_pass_through_and_are_counted() {
    let (a, _b, trident) = two_pools().await;
    let client = http1_client();
    let via = post(
        &client,
        &trident.http_url("/v2/models/fail/infer"),
        &[],
        JSON_INFER,
    )
    .await;
    let straight = post(
        &client,
        &format!("http://{}/v2/models/fail/infer", a.http_addr),
        &[],
        JSON_INFER,
    )
    .await;
    assert_eq!(via.0, 500);
    assert_eq!((via.0, via.2), (straight.0, straight.2));
    // The request is counted just after its answer is written: wait for that first.
    let counted = r#"trident_requests_total{model="*",protocol="http",status="500"}"#;
    assert!(
        wait_metric(&trident, counted, 1.0).await,
        "the 500 is counted"
    );
    let metrics = trident.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            r#"trident_requests_total{model="*",protocol="http",status="500"}"#
        ),
        1.0
    );
    assert_eq!(
        metric(
            &metrics,
            r#"trident_request_duration_seconds_count{model="*",pool="a",protocol="http",status="500"}"#
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_are_propagated_or_created_and_logged() {
    let (_a, _b, trident) = two_pools().await;
    let client = http1_client();
    let (_, headers, _) = post(
        &client,
        &trident.http_url("/v2/models/m_b/infer"),
        &[("x-request-id", "client-id-7")],
        JSON_INFER,
    )
    .await;
    assert_eq!(header(&headers, "x-request-id"), "client-id-7");
    assert_eq!(
        header(&headers, "x-mock-request-id"),
        "client-id-7",
        "sent upstream"
    );

    let (_, headers, _) = post(
        &client,
        &trident.http_url("/v2/models/m_b/infer"),
        &[],
        JSON_INFER,
    )
    .await;
    let created = header(&headers, "x-request-id").to_owned();
    assert!(!created.is_empty());
    assert_eq!(header(&headers, "x-mock-request-id"), created);

    let line = trident.access_log_line("client-id-7").await;
    assert_eq!(line["protocol"], "http");
    assert_eq!(line["method"], "POST");
    assert_eq!(line["path"], "/v2/models/m_b/infer");
    assert_eq!(line["model"], "m_b");
    assert_eq!(line["route"], "m_b");
    assert_eq!(line["pool"], "b");
    assert_eq!(line["status"], 200);
    assert!(line["duration_us"].as_u64().is_some());
    trident.access_log_line(&created).await;
}
