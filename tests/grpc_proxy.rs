//! Through the real binary, over h2c gRPC, against mock Triton servers: routing
//! by the request message's model name, unary and streaming calls, large
//! messages, compression, and errors as trailers-only responses.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use tonic::codec::CompressionEncoding;
use tonic::Code;
use trident::protocol::kserve::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_calls_are_routed_by_the_model_in_the_message() {
    let (a, b, trident) = two_pools().await;
    let mut via = client(trident.grpc_url()).await;
    let mut direct_b = client(b.grpc_url()).await;

    let request = infer_request("m_b", "req-1", Bytes::from_static(b"\x01\x02\x03\x04"));
    let response = via.model_infer(request.clone()).await.expect("infer");
    assert_eq!(backend(&response), "b1");
    assert_eq!(
        response.into_inner(),
        direct_b.model_infer(request).await.unwrap().into_inner()
    );

    let ready = via
        .model_ready(ModelReadyRequest {
            name: "m_b".into(),
            version: String::new(),
        })
        .await
        .unwrap();
    assert_eq!(backend(&ready), "b1");
    let metadata = via
        .model_metadata(ModelMetadataRequest {
            name: "m_a".into(),
            version: String::new(),
        })
        .await
        .unwrap();
    assert_eq!(backend(&metadata), "a1");
    let config = via
        .model_config(ModelConfigRequest {
            name: "m_b".into(),
            version: String::new(),
        })
        .await
        .unwrap();
    assert_eq!(backend(&config), "b1");

    // Server-level calls go to the default route.
    let live = via.server_live(ServerLiveRequest {}).await.unwrap();
    assert_eq!(
        (backend(&live), live.get_ref().live),
        ("a1".to_owned(), true)
    );
    let server = via.server_metadata(ServerMetadataRequest {}).await.unwrap();
    assert_eq!(backend(&server), "a1");
    let mut direct_a = client(a.grpc_url()).await;
    assert_eq!(
        server.into_inner(),
        direct_a
            .server_metadata(ServerMetadataRequest {})
            .await
            .unwrap()
            .into_inner()
    );

    // An unknown model reaches the default route's Triton, whose error comes back unchanged.
    let via_error = via
        .model_infer(infer_request("nope", "x", Bytes::new()))
        .await
        .unwrap_err();
    let direct_error = direct_a
        .model_infer(infer_request("nope", "x", Bytes::new()))
        .await
        .unwrap_err();
    assert_eq!(
        (via_error.code(), via_error.message()),
        (direct_error.code(), direct_error.message())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bidirectional_streams_are_routed_and_kept_in_order() {
    let (_a, _b, trident) = two_pools().await;
    let mut via = client(trident.grpc_url()).await;
    let requests: Vec<_> = (0..5)
        .map(|i| infer_request("m_b", &format!("s{i}"), Bytes::from(vec![i as u8; 100])))
        .collect();
    let response = via
        .model_stream_infer(tokio_stream::iter(requests.clone()))
        .await
        .expect("stream");
    assert_eq!(backend(&response), "b1");
    let mut stream = response.into_inner();
    let mut ids = Vec::new();
    while let Some(message) = stream.message().await.expect("stream message") {
        assert_eq!(message.error_message, "");
        let infer = message.infer_response.expect("infer response");
        assert_eq!(
            infer.raw_output_contents,
            requests[ids.len()].raw_input_contents
        );
        ids.push(infer.id);
    }
    assert_eq!(ids, ["s0", "s1", "s2", "s3", "s4"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_and_compressed_messages_pass_through() {
    let (_a, b, trident) = two_pools().await;
    let mut via = client(trident.grpc_url()).await;
    for size in [8 << 20, 64 << 20] {
        let raw: Bytes = (0..size)
            .map(|i: usize| (i % 251) as u8)
            .collect::<Vec<_>>()
            .into();
        let response = via
            .model_infer(infer_request("m_b", "big", raw.clone()))
            .await
            .expect("large infer");
        assert_eq!(backend(&response), "b1");
        assert!(
            response.get_ref().raw_output_contents[0] == raw,
            "{size} bytes came back different"
        );
    }
    let mut compressed = client(trident.grpc_url())
        .await
        .send_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Gzip);
    let raw = Bytes::from(vec![7u8; 256 << 10]);
    let response = compressed
        .model_infer(infer_request("m_b", "gz", raw.clone()))
        .await
        .expect("gzip infer");
    assert_eq!(
        backend(&response),
        "b1",
        "routed by the name inside the compressed message"
    );
    assert_eq!(response.get_ref().raw_output_contents[0], raw);
    let _ = b;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_grpc_statuses() {
    let a = mock("a1", &["m_a", "fail"]).await;
    let slow = mock("slow", &["slow"]).await;
    let dead = free_port();
    let trident = Trident::start(&format!(
        "[[pools]]\nname = \"a\"\nendpoints = [ {} ]\n[[pools]]\nname = \"slow\"\nendpoints = [ {} ]\nread_timeout_ms = 300\n\
         [[pools]]\nname = \"dead\"\nendpoints = [ {{ grpc = \"{dead}\" }} ]\n[[pools]]\nname = \"http_only\"\nendpoints = [ {{ http = \"{dead}\" }} ]\n\
         [[routes]]\nmodel = \"m_a\"\npool = \"a\"\n[[routes]]\nmodel = \"fail\"\npool = \"a\"\n[[routes]]\nmodel = \"slow\"\npool = \"slow\"\n\
         [[routes]]\nmodel = \"gone\"\npool = \"dead\"\n[[routes]]\nmodel = \"h\"\npool = \"http_only\"\n[[routes]]\nmodel = \"*\"\npool = \"a\"\n",
        endpoint(&a),
        endpoint(&slow)
    ))
    .await;
    let _ = trident.stdout.lock().unwrap().len();
    let mut via = client(trident.grpc_url()).await;

    let status = via
        .model_infer(infer_request("fail", "f", Bytes::new()))
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (Code::Internal, "mock failure"),
        "backend status from trailers"
    );

    let status = via
        .model_infer(infer_request("gone", "g", Bytes::new()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(
        status.message(),
        format!("cannot connect to upstream {dead} in pool 'dead'")
    );

    let status = via
        .model_infer(infer_request("h", "h", Bytes::new()))
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (Code::Unavailable, "pool 'http_only' has no grpc endpoint")
    );

    let mut sleepy = infer_request("slow", "s", Bytes::new());
    sleepy
        .parameters
        .insert("mock_sleep_ms".into(), InferParameter::int64(3000));
    let started = std::time::Instant::now();
    let status = via.model_infer(sleepy).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(3));

    let metrics = trident.metrics().await;
    for (series, value) in [
        (
            r#"trident_requests_total{model="fail",protocol="grpc",status="INTERNAL"}"#,
            1.0,
        ),
        (
            r#"trident_requests_total{model="gone",protocol="grpc",status="UNAVAILABLE"}"#,
            1.0,
        ),
        (
            r#"trident_requests_total{model="slow",protocol="grpc",status="DEADLINE_EXCEEDED"}"#,
            1.0,
        ),
        (
            r#"trident_upstream_errors_total{kind="connect_error",pool="dead"}"#,
            1.0,
        ),
    ] {
        assert_eq!(metric(&metrics, series), value, "{series}\n{metrics}");
    }
}

/// Raw h2c requests, to see the exact response shape: trailers-only means one
/// HEADERS frame carrying `grpc-status`, no body, no trailers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trident_errors_are_trailers_only() {
    let a = mock("a1", &["m_a"]).await;
    let trident = Trident::start(&format!(
        "[[pools]]\nname = \"a\"\nendpoints = [ {} ]\n[[routes]]\nmodel = \"m_a\"\npool = \"a\"\n",
        endpoint(&a)
    ))
    .await;
    let h2 = h2c_client();
    let url = format!(
        "{}/inference.GRPCInferenceService/ModelInfer",
        trident.grpc_url()
    );
    let grpc_headers = [("content-type", "application/grpc"), ("te", "trailers")];
    let frame = |message: &[u8]| {
        let mut body = vec![0u8];
        body.extend_from_slice(&(message.len() as u32).to_be_bytes());
        body.extend_from_slice(message);
        body
    };

    // No route for the model.
    let (status, headers, body) = post(&h2, &url, &grpc_headers, frame(b"\x0a\x05other")).await;
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "grpc-status"), "5");
    assert_eq!(
        header(&headers, "grpc-message"),
        "Request for unknown model: 'other' has no route in Trident"
    );
    assert_eq!(header(&headers, "content-type"), "application/grpc");
    assert!(body.is_empty());

    // Not a protobuf message at all.
    for garbage in [
        frame(b"\x0a\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff"),
        vec![7, 0, 0],
        frame(b"\x0f"),
    ] {
        let (status, headers, body) = post(&h2, &url, &grpc_headers, garbage.clone()).await;
        assert_eq!(status, 200);
        assert_eq!(header(&headers, "grpc-status"), "3", "{garbage:?}");
        assert!(header(&headers, "grpc-message").starts_with("malformed gRPC request"));
        assert!(body.is_empty());
    }
    let metrics = trident.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            r#"trident_requests_total{model="_unrouted",protocol="grpc",status="NOT_FOUND"}"#
        ),
        1.0
    );
    assert_eq!(
        metric(
            &metrics,
            r#"trident_requests_total{model="_unrouted",protocol="grpc",status="INVALID_ARGUMENT"}"#
        ),
        3.0
    );

    // The routed model still works on the same connection.
    let (_, headers, _) = post(&h2, &url, &grpc_headers, frame(b"\x0a\x03m_a")).await;
    assert_eq!(header(&headers, "x-mock-backend"), "a1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_share_one_multiplexed_upstream_connection() {
    let b = mock("b1", &["m_b"]).await;
    // One worker thread: Pingora keeps an upstream connection pool per thread.
    let trident = Trident::start_with_threads(
        &format!("[[pools]]\nname = \"b\"\nendpoints = [ {} ]\n[[routes]]\nmodel = \"*\"\npool = \"b\"\n", endpoint(&b)),
        1,
    )
    .await;
    let mut via = client(trident.grpc_url()).await;
    // Pingora does not coalesce connects: calls that all arrive before the first upstream
    // connection is up each open one. Once one is pooled, every call shares it.
    via.model_infer(infer_request("m_b", "warm-up", Bytes::new()))
        .await
        .expect("warm-up");
    let started = std::time::Instant::now();
    let calls: Vec<_> = (0..32)
        .map(|i| {
            let mut via = via.clone();
            let mut request = infer_request("m_b", &format!("c{i}"), Bytes::from_static(b"x"));
            request
                .parameters
                .insert("mock_sleep_ms".into(), InferParameter::int64(300));
            tokio::spawn(async move { via.model_infer(request).await.map(|r| r.into_inner().id) })
        })
        .collect();
    for (i, call) in calls.into_iter().enumerate() {
        assert_eq!(call.await.unwrap().expect("infer"), format!("c{i}"));
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the calls ran concurrently"
    );
    assert_eq!(
        b.connections_accepted().1,
        1,
        "32 concurrent calls over one upstream h2 connection"
    );
}
