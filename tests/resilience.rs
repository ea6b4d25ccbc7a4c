//! Routing and resilience through the real binary: ejection and recovery of
//! killed, black-holed and failing endpoints (seen in `/metrics`), retries and
//! what they may not repeat, active readiness checks, deadlines, and sequence
//! affinity on both protocols.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use serde_json::json;
use tonic::Code;
use trident::mock::Fault;

fn infer_json() -> String {
    json!({ "inputs": [{ "name": "INPUT0", "shape": [1, 1], "datatype": "FP32", "data": [1.0] }] })
        .to_string()
}

/// A pool `p` over `mocks` with the extra pool sections `sections` (TOML after the
/// `[[pools]]` keys), routing every model to it.
async fn pool_of(mocks: &[&MockTriton], sections: &str) -> Trident {
    let endpoints: Vec<String> = mocks.iter().map(|m| endpoint(m)).collect();
    Trident::start(&format!(
        "[[pools]]\nname = \"p\"\nendpoints = [ {} ]\n{sections}\n[[routes]]\nmodel = \"*\"\npool = \"p\"\n",
        endpoints.join(", ")
    ))
    .await
}

async fn infer(trident: &Trident, client: &HttpClient, model: &str) -> Response {
    let url = trident.http_url(&format!("/v2/models/{model}/infer"));
    post(
        client,
        &url,
        &[("content-type", "application/json")],
        infer_json(),
    )
    .await
}

/// A model reached through the `*` route gets its own balancing and ejection state
/// once it has been served (until then it shares `_other`'s): one call gives it that.
async fn serve_once(trident: &Trident, model: &str) {
    let (status, _, _) = infer(trident, &http1_client(), model).await;
    assert_eq!(status, 200);
}

fn series(family: &str, mock: &MockTriton, model: &str) -> String {
    format!(
        "{family}{{pool=\"p\",endpoint=\"{}\",model=\"{model}\"}}",
        mock.http_addr
    )
}

fn ejections(mock: &MockTriton, model: &str, reason: &str) -> String {
    format!(
        "trident_outlier_ejections_total{{endpoint=\"{}\",model=\"{model}\",pool=\"p\",reason=\"{reason}\"}}",
        mock.http_addr
    )
}

const DETERMINISTIC: &str = "[pools.balancer]\nstrategy = \"round_robin\"\n\
    [pools.outlier]\nconsecutive_failures = 3\nbase_ejection_ms = 400\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_endpoint_is_retried_around_and_ejected() {
    let a = mock("a1", &["m"]).await;
    let b = mock("b1", &["m"]).await;
    let trident = pool_of(&[&a, &b], DETERMINISTIC).await;
    let dead = a.http_addr;
    a.stop().await;
    let client = http1_client();
    for _ in 0..12 {
        let (status, headers, _) = infer(&trident, &client, "m").await;
        assert_eq!(
            status, 200,
            "connect failures are retried on the live endpoint"
        );
        assert_eq!(header(&headers, "x-mock-backend"), "b1");
    }
    let text = trident.metrics().await;
    let ejected = format!(
        "trident_outlier_ejections_total{{endpoint=\"{dead}\",model=\"_all\",pool=\"p\",reason=\"consecutive_failures\"}}"
    );
    assert!(metric(&text, &ejected) >= 1.0, "{text}");
    assert!(
        metric(
            &text,
            "trident_retries_total{pool=\"p\",reason=\"connect_error\"}"
        ) >= 3.0
    );
    let gauge =
        format!("trident_endpoint_ejected{{pool=\"p\",endpoint=\"{dead}\",model=\"_all\"}}");
    assert_eq!(metric(&text, &gauge), 1.0, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_answering_503_is_retried_ejected_and_recovers() {
    let a = mock("a1", &["m"]).await;
    let b = mock("b1", &["m"]).await;
    let trident = pool_of(&[&a, &b], DETERMINISTIC).await;
    a.control().set_fault(Fault::Unavailable);
    let client = http1_client();
    for _ in 0..10 {
        let (status, headers, _) = infer(&trident, &client, "m").await;
        assert_eq!(status, 200, "a 503 is retried on the other endpoint");
        assert_eq!(header(&headers, "x-mock-backend"), "b1");
    }
    let text = trident.metrics().await;
    assert!(
        metric(&text, &ejections(&a, "m", "consecutive_failures")) >= 1.0,
        "{text}"
    );
    assert!(metric(&text, "trident_retries_total{pool=\"p\",reason=\"status\"}") >= 3.0);
    // Each request reached a1 at most once: retries never go back to a tried endpoint.
    assert!(a.control().infer_calls() <= 10);

    a.control().set_fault(Fault::None);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut served_by_a = 0;
    for _ in 0..10 {
        let (status, headers, _) = infer(&trident, &client, "m").await;
        assert_eq!(status, 200);
        served_by_a += usize::from(header(&headers, "x-mock-backend") == "a1");
    }
    assert!(
        served_by_a >= 3,
        "a1 is back in rotation after its ejection: {served_by_a}"
    );
    assert_eq!(
        metric(
            &trident.metrics().await,
            &series("trident_endpoint_ejected", &a, "m")
        ),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn black_holed_endpoint_times_out_then_is_ejected() {
    let a = mock("a1", &["m"]).await;
    let b = mock("b1", &["m"]).await;
    let trident = pool_of(
        &[&a, &b],
        &format!("read_timeout_ms = 300\n{DETERMINISTIC}"),
    )
    .await;
    serve_once(&trident, "m").await;
    a.control().set_fault(Fault::Hang);
    let client = http1_client();
    let mut timeouts = 0;
    for _ in 0..12 {
        let (status, _, body) = infer(&trident, &client, "m").await;
        match status.as_u16() {
            200 => {}
            504 => {
                timeouts += 1;
                assert!(String::from_utf8_lossy(&body).contains("timed out"));
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!(
        timeouts, 3,
        "a request that reached the endpoint is not retried; 3 eject it"
    );
    let text = trident.metrics().await;
    assert!(
        metric(&text, &ejections(&a, "m", "consecutive_failures")) >= 1.0,
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_unavailable_in_trailers_ejects_the_endpoint_for_that_model() {
    let a = mock("a1", &["m"]).await;
    let b = mock("b1", &["m"]).await;
    let trident = pool_of(&[&a, &b], DETERMINISTIC).await;
    serve_once(&trident, "m").await;
    a.control().set_fault(Fault::UnavailableInTrailers);
    let mut grpc = client(trident.grpc_url()).await;
    let mut failures = 0;
    for i in 0..12 {
        let request = infer_request("m", &format!("r{i}"), Bytes::from_static(b"x"));
        match grpc.model_infer(request).await {
            Ok(response) => assert_eq!(backend(&response), "b1"),
            Err(status) => {
                assert_eq!(status.code(), Code::Unavailable);
                failures += 1;
            }
        }
    }
    assert_eq!(
        failures, 3,
        "trailers arrive after the answer started: not retried, counted"
    );
    assert!(wait_metric(&trident, &ejections(&a, "m", "consecutive_failures"), 1.0).await);
    let requests = trident.metrics().await;
    assert!(
        metric(
            &requests,
            "trident_requests_total{model=\"*\",protocol=\"grpc\",status=\"UNAVAILABLE\"}"
        ) >= 3.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_failing_one_model_keeps_serving_the_others() {
    let a = mock("a1", &["good", "bad"]).await;
    let b = mock("b1", &["good", "bad"]).await;
    let trident = pool_of(
        &[&a, &b],
        &format!("{DETERMINISTIC}[pools.retry]\nmax_retries = 0\n"),
    )
    .await;
    serve_once(&trident, "good").await;
    serve_once(&trident, "bad").await;
    a.control().set_fault(Fault::Unavailable);
    a.control().set_fault_model(Some("bad"));
    let client = http1_client();
    for _ in 0..8 {
        infer(&trident, &client, "bad").await;
    }
    // The last failure is recorded once its answer is written.
    assert!(
        wait_metric(
            &trident,
            &series("trident_endpoint_ejected", &a, "bad"),
            1.0
        )
        .await
    );
    let text = trident.metrics().await;
    assert_eq!(
        metric(&text, &series("trident_endpoint_ejected", &a, "good")),
        0.0
    );
    let mut good_on_a = 0;
    for _ in 0..6 {
        let (status, headers, _) = infer(&trident, &client, "good").await;
        assert_eq!(status, 200);
        good_on_a += usize::from(header(&headers, "x-mock-backend") == "a1");
    }
    assert_eq!(good_on_a, 3, "round robin still sends half of `good` to a1");
    for _ in 0..4 {
        let (status, headers, _) = infer(&trident, &client, "bad").await;
        assert_eq!(
            (status.as_u16(), header(&headers, "x-mock-backend")),
            (200, "b1")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_respect_the_body_limit_the_budget_and_sequences() {
    let a = mock("a1", &["m"]).await;
    let b = mock("b1", &["m"]).await;
    let trident = pool_of(
        &[&a, &b],
        "[pools.balancer]\nstrategy = \"round_robin\"\n[pools.outlier]\nconsecutive_failures = 0\n\
         [pools.outlier.success_rate]\nenabled = false\n\
         [pools.retry]\nmax_body_bytes = 1000\nbudget_ratio = 0.0\nbudget_min_per_second = 1\n",
    )
    .await;
    a.control().set_fault(Fault::Unavailable);
    let client = http1_client();
    let url = trident.http_url("/v2/models/m/infer");
    // A body over max_body_bytes is not kept for a replay: the 503 reaches the client.
    let big = json!({ "inputs": [{ "name": "INPUT0", "shape": [1, 400], "datatype": "FP32",
                                    "data": vec![1.5; 400] }] })
    .to_string();
    let mut big_503 = 0;
    for _ in 0..2 {
        let (status, _, _) = post(
            &client,
            &url,
            &[("content-type", "application/json")],
            big.clone(),
        )
        .await;
        big_503 += usize::from(status == 503);
    }
    assert_eq!(big_503, 1, "the request sent to a1 came back as 503");
    // Sequence requests are never retried.
    let calls = a.control().infer_calls();
    let mut sequence_503 = 0;
    for id in 1..=2 {
        let (status, _, _) = post(&client, &url, &[], sequence_json(id, true, false)).await;
        sequence_503 += usize::from(status == 503);
    }
    assert_eq!(sequence_503, 1);
    assert_eq!(a.control().infer_calls(), calls + 1);
    // The budget (1 retry per second over a 10 s window, no ratio) runs out under a burst
    // that would need 15.
    let mut passed_through = 0;
    for _ in 0..30 {
        let (status, _, _) = infer(&trident, &client, "m").await;
        passed_through += usize::from(status == 503);
    }
    assert!(
        passed_through >= 1,
        "budget exhausted, 503s reach the client"
    );
    let text = trident.metrics().await;
    assert!(
        metric(&text, "trident_retry_budget_exhausted_total{pool=\"p\"}") >= 1.0,
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_checks_steer_traffic_and_admin_ready_reports_routes() {
    let a = mock("a1", &["m"]).await;
    let b = mock("b1", &["m"]).await;
    let endpoints = format!("{}, {}", endpoint(&a), endpoint(&b));
    let trident = Trident::start(&format!(
        "[[pools]]\nname = \"p\"\nendpoints = [ {endpoints} ]\n\
         [pools.health]\ninterval_ms = 100\ntimeout_ms = 100\nunhealthy_threshold = 1\n\
         [[routes]]\nmodel = \"m\"\npool = \"p\"\n[[routes]]\nmodel = \"*\"\npool = \"p\"\n"
    ))
    .await;
    a.control().set_model_ready("m", false);
    assert!(wait_metric(&trident, &format!("trident_health_checks_total{{endpoint=\"{}\",model=\"m\",pool=\"p\",result=\"failed\"}}", a.http_addr), 1.0).await);
    tokio::time::sleep(Duration::from_millis(150)).await;
    let client = http1_client();
    for _ in 0..8 {
        let (status, headers, _) = infer(&trident, &client, "m").await;
        assert_eq!(
            (status.as_u16(), header(&headers, "x-mock-backend")),
            (200, "b1")
        );
    }
    a.control().set_server_ready(false);
    b.control().set_server_ready(false);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (status, _, body) = get(&client, &format!("http://{}/ready", trident.admin)).await;
    assert_eq!(status, 503);
    let ready: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(ready["ready"], false);
    assert_eq!(ready["routes"][0]["route"], "m");
    assert_eq!(ready["routes"][0]["usable_endpoints"], 0);
    // Panic routing: with no endpoint passing its server check, requests are still
    // tried rather than refused (the model's readiness still steers them), and counted.
    let (status, headers, _) = infer(&trident, &client, "m").await;
    assert_eq!(
        (status.as_u16(), header(&headers, "x-mock-backend")),
        (200, "b1")
    );
    let mut grpc = client_for(&trident).await;
    let answer = grpc
        .model_infer(infer_request("m", "x", Bytes::from_static(b"x")))
        .await
        .expect("tried in panic mode");
    assert_eq!(backend(&answer), "b1");
    assert_eq!(
        metric(
            &trident.metrics().await,
            "trident_panic_picks_total{pool=\"p\"}"
        ),
        2.0
    );

    a.control().set_server_ready(true);
    a.control().set_model_ready("m", true);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (status, _, _) = get(&client, &format!("http://{}/ready", trident.admin)).await;
    assert_eq!(status, 200);
}

async fn client_for(trident: &Trident) -> GrpcClient {
    client(trident.grpc_url()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_timeout_and_grpc_timeout_give_deadline_exceeded() {
    let a = mock("a1", &["m"]).await;
    let trident = Trident::start(&format!(
        "[[pools]]\nname = \"p\"\nendpoints = [ {} ]\n[[routes]]\nmodel = \"*\"\npool = \"p\"\ntimeout_ms = 300\n",
        endpoint(&a)
    ))
    .await;
    a.control().set_latency(Duration::from_millis(2000));
    let client = http1_client();
    let started = Instant::now();
    let (status, _, body) = infer(&trident, &client, "m").await;
    assert_eq!(status, 504);
    assert!(started.elapsed() < Duration::from_millis(1500));
    assert!(serde_json::from_slice::<serde_json::Value>(&body).unwrap()["error"].is_string());
    let mut grpc = client_for(&trident).await;
    let started = Instant::now();
    let err = grpc
        .model_infer(infer_request("m", "x", Bytes::from_static(b"x")))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded);
    assert!(started.elapsed() < Duration::from_millis(1500));
    // A shorter grpc-timeout wins over the route's; sent raw, as tonic's own client would
    // also enforce it and answer CANCELLED itself.
    let mut frame = vec![0u8; 5];
    let message = prost::Message::encode_to_vec(&infer_request("m", "y", Bytes::from_static(b"x")));
    frame[1..5].copy_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend(message);
    let started = Instant::now();
    let (status, headers, _) = post(
        &h2c_client(),
        &format!(
            "{}/inference.GRPCInferenceService/ModelInfer",
            trident.grpc_url()
        ),
        &[
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            ("grpc-timeout", "100m"),
        ],
        frame,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "grpc-status"), "4", "DEADLINE_EXCEEDED");
    assert!(
        started.elapsed() < Duration::from_millis(290),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequences_stick_to_their_endpoint_on_both_protocols() {
    let mocks = [
        mock("a1", &["m"]).await,
        mock("b1", &["m"]).await,
        mock("c1", &["m"]).await,
    ];
    let trident = pool_of(
        &[&mocks[0], &mocks[1], &mocks[2]],
        "[pools.balancer]\nstrategy = \"round_robin\"\n",
    )
    .await;
    let client = http1_client();
    let url = trident.http_url("/v2/models/m/infer");
    for id in [7u64, 8, 9] {
        let (status, headers, _) = post(&client, &url, &[], sequence_json(id, true, false)).await;
        assert_eq!(status, 200);
        let home = header(&headers, "x-mock-backend").to_owned();
        for step in 0..6 {
            let end = step == 5;
            let (status, headers, _) =
                post(&client, &url, &[], sequence_json(id, false, end)).await;
            assert_eq!(status, 200);
            assert_eq!(
                header(&headers, "x-mock-backend"),
                home,
                "sequence {id} step {step}"
            );
        }
    }
    let mut grpc = client_for(&trident).await;
    for id in [70i64, 71, 72] {
        let home = backend(
            &grpc
                .model_infer(grpc_sequence(id, true, false))
                .await
                .unwrap(),
        );
        for step in 0..6 {
            let response = grpc
                .model_infer(grpc_sequence(id, false, step == 5))
                .await
                .unwrap();
            assert_eq!(backend(&response), home, "gRPC sequence {id} step {step}");
        }
    }
    assert_eq!(
        metric(
            &trident.metrics().await,
            "trident_sequences_active{pool=\"p\"}"
        ),
        0.0
    );

    // A sequence whose endpoint died gets a clear error, not a silent move.
    let (_, headers, _) = post(&client, &url, &[], sequence_json(99, true, false)).await;
    let home = header(&headers, "x-mock-backend").to_owned();
    let [a, b, c] = mocks;
    let (dead, _alive): (Vec<_>, Vec<_>) = [a, b, c].into_iter().partition(|m| m.name == home);
    for m in dead {
        m.control().set_server_ready(false);
        m.stop().await;
    }
    // Passive detection sees the dead endpoint through another request's connect failure.
    let mut message = String::new();
    for _ in 0..10 {
        let (status, _, body) = post(&client, &url, &[], sequence_json(99, false, false)).await;
        if status == 503 {
            message = String::from_utf8_lossy(&body).into_owned();
            break;
        }
        assert_ne!(status, 200, "a sequence never moves to another endpoint");
        // Fresh requests teach the proxy the endpoint is gone.
        infer(&trident, &client, "m").await;
    }
    assert!(message.contains("start the sequence again"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn triton_reported_queues_steer_peak_ewma() {
    let a = mock("a1", &["m"]).await;
    let b = mock("b1", &["m"]).await;
    // The mock serves Triton-style metrics on its HTTP port.
    let endpoints: Vec<String> = [&a, &b]
        .iter()
        .map(|m| {
            format!(
                "{{ http = \"{0}\", grpc = \"{1}\", metrics = \"{0}\" }}",
                m.http_addr, m.grpc_addr
            )
        })
        .collect();
    let trident = Trident::start(&format!(
        "[[pools]]\nname = \"p\"\nendpoints = [ {} ]\n[pools.load_metrics]\ninterval_ms = 100\n\
         [[routes]]\nmodel = \"*\"\npool = \"p\"\n",
        endpoints.join(", ")
    ))
    .await;
    // a1's Triton is busy with other clients' requests: 50 pending.
    a.control().set_pending(50);
    let client = http1_client();
    infer(&trident, &client, "m").await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let mut on_a = 0;
    for _ in 0..20 {
        let (status, headers, _) = infer(&trident, &client, "m").await;
        assert_eq!(status, 200);
        on_a += usize::from(header(&headers, "x-mock-backend") == "a1");
    }
    assert!(on_a <= 2, "the busy Triton is avoided: {on_a} of 20");
    // Once its queue drains, it is used again.
    a.control().set_pending(0);
    b.control().set_pending(50);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let mut on_a = 0;
    for _ in 0..20 {
        let (_, headers, _) = infer(&trident, &client, "m").await;
        on_a += usize::from(header(&headers, "x-mock-backend") == "a1");
    }
    assert!(on_a >= 18, "now b1 is the busy one: {on_a} of 20 on a1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_only_endpoints_are_checked_over_grpc() {
    let a = mock("a1", &["m"]).await;
    let b = mock("b1", &["m"]).await;
    let trident = Trident::start(&format!(
        "[[pools]]\nname = \"p\"\nendpoints = [ {{ grpc = \"{}\" }}, {{ grpc = \"{}\" }} ]\n\
         [pools.balancer]\nstrategy = \"round_robin\"\n\
         [pools.health]\ninterval_ms = 100\ntimeout_ms = 100\nunhealthy_threshold = 1\n\
         [[routes]]\nmodel = \"m\"\npool = \"p\"\n[[routes]]\nmodel = \"*\"\npool = \"p\"\n",
        a.grpc_addr, b.grpc_addr
    ))
    .await;
    a.control().set_model_ready("m", false);
    let failed = format!(
        "trident_health_checks_total{{endpoint=\"{}\",model=\"m\",pool=\"p\",result=\"failed\"}}",
        a.grpc_addr
    );
    assert!(wait_metric(&trident, &failed, 1.0).await);
    tokio::time::sleep(Duration::from_millis(150)).await;
    let mut grpc = client_for(&trident).await;
    for i in 0..6 {
        let response = grpc
            .model_infer(infer_request(
                "m",
                &format!("r{i}"),
                Bytes::from_static(b"x"),
            ))
            .await
            .unwrap();
        assert_eq!(backend(&response), "b1");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailers_only_grpc_unavailable_is_retried_elsewhere() {
    let a = mock("a1", &["m"]).await;
    let b = mock("b1", &["m"]).await;
    let trident = pool_of(
        &[&a, &b],
        "[pools.balancer]\nstrategy = \"round_robin\"\n[pools.outlier]\nconsecutive_failures = 0\n",
    )
    .await;
    a.control().set_fault(Fault::Unavailable);
    let mut grpc = client_for(&trident).await;
    let mut retried = 0;
    for i in 0..6 {
        let request = infer_request("m", &format!("r{i}"), Bytes::from_static(b"x"));
        match grpc.model_infer(request).await {
            Ok(response) => {
                assert_eq!(backend(&response), "b1");
                retried += 1;
            }
            // A race in Pingora: a1 may end the stream before Trident has finished
            // sending the request; the h2 write error then surfaces first, and the call
            // is not retried. The client still gets UNAVAILABLE.
            Err(status) => assert_eq!(status.code(), Code::Unavailable),
        }
    }
    assert!(
        retried >= 3,
        "UNAVAILABLE before any message is retried on b1: {retried} of 6"
    );
    let text = trident.metrics().await;
    let retries = metric(&text, "trident_retries_total{pool=\"p\",reason=\"status\"}");
    assert!(retries >= 3.0, "{retries}");
}
